// The job-queue baseline of `bench latency` and `bench burst`: graphile-worker, a mature
// LISTEN/NOTIFY job queue on PostgreSQL, doing our job shape in its own idiom.
//
// A trigger on toygres_cms.instances (src/bin/bench/jobqueue.rs) adds a `probe` job for every
// row inserted `running`, with the row's id and target in the payload. The task opens
// a new connection to the target (5 s connect bound, as our probe's), runs sql/probe.sql's
// query, closes the connection, and writes what our check writes in one statement: the
// instance row's health status and last check, a history row, and a `toygres_health`
// NOTIFY with the database's clock, which the bench reads as it reads ours. No fences: the
// job queue owns no lease.
//
// Environment: BENCH_JOBQUEUE_URL (the queue's database), BENCH_JOBQUEUE_CONCURRENCY,
// BENCH_PROBE_SQL (the probe query's file). Prints `ready` once its workers listen.
"use strict";

const fs = require("fs");
const { run, Logger } = require("graphile-worker");
const { Client } = require("pg");

const probeSql = fs.readFileSync(process.env.BENCH_PROBE_SQL, "utf8");
const concurrency = Number(process.env.BENCH_JOBQUEUE_CONCURRENCY || "10");

const WRITE = `
WITH u AS (
    UPDATE toygres_cms.instances
       SET health_status = $2::text::toygres_cms.health_status,
           last_health_check = clock_timestamp()
     WHERE id = $1
 RETURNING k8s_name, last_health_check AS at),
h AS (
    INSERT INTO toygres_cms.instance_health_checks
                (instance_id, status, postgres_version, response_time_ms, error_message, checked_at)
    SELECT $1, $2, $3, $4, $5, at FROM u)
SELECT pg_notify('toygres_health',
                 json_build_object('k8s_name', k8s_name, 'new', $2::text, 'checked_at', at)::text)
  FROM u`;

async function probe(target) {
  const started = Date.now();
  const client = new Client({
    connectionString: target,
    connectionTimeoutMillis: 5000,
    query_timeout: 5000,
  });
  try {
    await client.connect();
    const { rows } = await client.query(probeSql);
    return { status: "healthy", version: rows[0].version, error: null, ms: Date.now() - started };
  } catch (e) {
    return { status: "unhealthy", version: null, error: String(e.message), ms: Date.now() - started };
  } finally {
    client.end().catch(() => {});
  }
}

// Warnings and errors only, as the bench runs our service (`warn`).
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") {
    console.error(`${level}: ${message}`);
  }
});

async function main() {
  const runner = await run({
    connectionString: process.env.BENCH_JOBQUEUE_URL,
    concurrency,
    maxPoolSize: concurrency + 2,
    logger,
    noHandleSignals: false,
    taskList: {
      probe: async (job, helpers) => {
        const r = await probe(job.target);
        await helpers.query(WRITE, [job.id, r.status, r.version, r.ms, r.error]);
      },
    },
  });
  console.log("ready");
  await runner.promise;
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
