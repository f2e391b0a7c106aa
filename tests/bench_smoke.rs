//! The benchmark harness at a tiny size, so it cannot rot: `bench smoke` runs every scenario
//! end to end against real processes. This test checks that what it reports was measured:
//!
//! - the JSON summary line (`bench-smoke-summary: {…}`) holds every figure as a number
//!   within sane bounds — latencies above zero and below seconds, every actor started is
//!   running, staleness present for every instance, recovery converged with nothing wrong —
//!   so a scenario that measures nothing (a null), or makes a figure up (a 0), fails;
//! - the printed Markdown tables agree: every row has its six cells, no value cell reads
//!   "–", "NaN" or "not reached", and the rows a reader looks for are there.
//!
//! Targets (the `met` column) are not asserted: this machine is shared and small.

use serde_json::Value;

const SUMMARY_PREFIX: &str = "bench-smoke-summary: ";

#[test]
fn every_benchmark_scenario_measures_real_figures_at_a_tiny_size() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bench"))
        .arg("smoke")
        .env_remove("DATABASE_URL")
        .output()
        .expect("run bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench smoke failed:\n{stdout}\n{stderr}"
    );
    let summary = stdout
        .lines()
        .find_map(|l| l.strip_prefix(SUMMARY_PREFIX))
        .unwrap_or_else(|| panic!("no `{SUMMARY_PREFIX}` line:\n{stdout}"));
    let s: Value = serde_json::from_str(summary).expect("summary is JSON");
    let c = Check {
        root: &s,
        out: &stdout,
    };

    // Latency: 20 single inserts, each timed; the trade-off run has 10.
    c.eq("latency.inserts", 20);
    for q in ["notify", "first_probe", "first_row"] {
        c.eq(&format!("latency.{q}.samples"), 20);
        c.ordered(&format!("latency.{q}"), 0.0, 10.0);
    }
    c.between("latency.notify.p50", 0.0, 1.0);
    let e2a_p50 = c.between("latency.event_to_action.0", 0.0, 10.0);
    let e2a_p99 = c.between("latency.event_to_action.1", 0.0, 10.0);
    assert!(e2a_p50 <= e2a_p99, "event_to_action p50 > p99\n{stdout}");
    c.cpu("latency.idle_cpu", false);
    c.eq("latency.poll_tradeoff.0.inserts", 10);
    c.eq("latency.poll_tradeoff.0.first_probe.samples", 10);
    c.ordered("latency.poll_tradeoff.0.first_probe", 0.0, 10.0);
    c.cpu("latency.poll_tradeoff.0.idle_cpu", false);
    // The floor: the probe on a new connection by pgbench, nothing else.
    c.eq("latency.probe_floor.clients", 1);
    c.between("latency.probe_floor.mean_s", 0.0, 1.0);

    // Idle: 5 actors; machine-level CPU over PostgreSQL alone, waiting and polling.
    c.eq("idle.actors", 5);
    c.between("idle.baseline_pct", -0.001, 200.0);
    for run in ["waiting", "polling"] {
        c.between(&format!("idle.{run}.machine_pct"), -0.001, 200.0);
        c.between(&format!("idle.{run}.added_pct"), -200.0, 200.0);
        c.cpu(&format!("idle.{run}.cpu"), false);
        c.between(&format!("idle.{run}.fetches_per_s"), -0.001, 10_000.0);
        // The probes go through the pooler (the default): its CPU is measured, and the
        // server holds the service's sessions and the pooler's few, not one per actor's
        // kept connection plus them.
        c.between(&format!("idle.{run}.pooler_pct"), -0.001, 200.0);
        c.between(&format!("idle.{run}.backends"), 1.0, 30.0);
    }
    // Polling fetches every 250 ms per dispatcher slot; waiting fetches about every 5 s.
    assert!(
        c.num("idle.polling.fetches_per_s") > c.num("idle.waiting.fetches_per_s"),
        "waiting fetches must be fewer than polling ones\n{stdout}"
    );

    // Burst: 200 in one transaction, probing through the pooler and directly; all ran, all
    // were healthy, all went away.
    for (run, targets) in [("burst", "direct"), ("burst_pooled", "pooled")] {
        c.eq(&format!("{run}.instances"), 200);
        c.eq(&format!("{run}.actors_running"), 200);
        c.eq(&format!("{run}.actors_healthy"), 200);
        c.eq(&format!("{run}.actors_left"), 0);
        assert_eq!(
            c.get(&format!("{run}.targets")).as_str(),
            Some(targets),
            "{stdout}"
        );
        c.between(&format!("{run}.notify_all_s"), 0.0, 60.0);
        // The direct run's floor (pgbench -C) at the service's 64 at once and at two.
        let floors = c
            .get(&format!("{run}.floors"))
            .as_array()
            .map_or(0, Vec::len);
        assert_eq!(floors, if targets == "direct" { 2 } else { 0 }, "{stdout}");
        if targets == "direct" {
            c.eq(&format!("{run}.floors.0.clients"), 64);
            c.between(&format!("{run}.floors.0.per_second"), 1.0, 1e6);
        }
        for f in [
            "all_started_s",
            "all_running_s",
            "all_healthy_s",
            "all_gone_s",
        ] {
            c.between(&format!("{run}.{f}"), 0.0, 600.0);
        }
        c.between(&format!("{run}.turns_insert_per_s"), 1.0, 100_000.0);
        // Deleted rows' actors are removed from Duroxide, not cancelled: a delete burst
        // needs no turn (measured, may be 0).
        c.between(&format!("{run}.turns_delete_per_s"), -0.001, 100_000.0);
        c.cpu(&format!("{run}.cpu_insert"), true);
        // 200 deletes are one transaction of a quarter second now: the service may use
        // less than one clock tick of CPU in that window (measured, may be 0).
        c.cpu(&format!("{run}.cpu_delete"), false);
    }

    // Capacity: 40 actors (ours) and 20 (naive) at a 2 s interval over 9 s, probing through
    // a transaction-mode pooler with the service's default probe settings.
    c.between("capacity.interval_s", 1.9, 2.1);
    assert_eq!(
        c.get("capacity.targets").as_str(),
        Some("pooled"),
        "{stdout}"
    );
    for (run, actors) in [("ours", 40), ("naive", 20)] {
        let p = format!("capacity.{run}");
        c.eq(&format!("{p}.actors"), actors);
        c.eq(&format!("{p}.actors_running"), actors);
        let ideal = c.between(&format!("{p}.ideal"), 1.0, 1e9);
        c.between(&format!("{p}.checks"), ideal / 4.0, ideal * 2.0);
        // At least one gap per instance (the open one to the window's end); with every
        // instance checked in the window, no gap reaches the window's length + 120 s.
        let gaps = c.num(&format!("{p}.staleness.samples"));
        assert!(
            gaps >= actors as f64,
            "{p}: {gaps} staleness gaps\n{stdout}"
        );
        c.ordered(&format!("{p}.staleness"), 0.0, 60.0);
        c.between(&format!("{p}.staleness.p50"), 0.5, 20.0);
        c.cpu(&format!("{p}.cpu"), true);
        c.between(&format!("{p}.target_cpu_pct"), -0.001, 1000.0);
        c.between(&format!("{p}.pooler_cpu_pct"), -0.001, 1000.0);
        c.between(
            &format!("{p}.continued_as_new"),
            -0.001,
            actors as f64 + 0.001,
        );
        // The whole machine is at least as busy as the processes measured on it.
        c.between(&format!("{p}.machine_pct"), 0.001, 1000.0);
        c.between(&format!("{p}.statements_per_check"), 0.0, 100.0);
    }

    // Per third of the window, for both runs; renewal lag and turn rate for ours.
    for run in ["ours", "naive"] {
        for i in 0..3 {
            let p = format!("capacity.{run}.thirds.{i}");
            let ideal = c.between(&format!("{p}.ideal"), 0.5, 1e9);
            c.between(&format!("{p}.checks"), ideal / 4.0, ideal * 3.0);
            c.ordered(&format!("{p}.staleness"), 0.0, 200.0);
        }
    }
    let lags = c.num("capacity.ours.renewal_lag.samples");
    assert!(lags >= 40.0, "{lags} renewals measured\n{stdout}");
    c.ordered("capacity.ours.renewal_lag", -5.0, 60.0);
    c.between("capacity.ours.turns_per_s", 1.0, 10_000.0);
    // 40 actors ÷ 2 s renewals × 2 turns.
    c.between("capacity.ours.turn_demand_per_s", 39.0, 41.0);
    c.eq("capacity.naive.renewal_lag.samples", 0);

    // Recovery: reconnected, every instance right again, the stale actor restarted.
    c.eq("recovery.rows", 40);
    c.between("recovery.reconnected_s", 0.0, 120.0);
    c.between("recovery.converged_s", -0.001, 120.0);
    c.between("recovery.turns_done_s", -0.001, 120.0);
    c.eq("recovery.wrong_at_end", 0);
    c.between("recovery.healed_after_stale_s", -1.0, 60.0);

    // CMS outage: every instance stale when the database came back (stale after 4 s, gone
    // 6 s), health flowing again, and the breaker opened and closed by itself.
    c.eq("outage.fleet", 20);
    c.eq("outage.stale_at_reopen", 20);
    c.between("outage.resumed_s", 0.0, 60.0);
    assert_eq!(
        c.get("outage.breaker_opened"),
        &Value::Bool(true),
        "{stdout}"
    );
    c.between("outage.breaker_closed_s", 0.0, 60.0);

    // Retention: the whole backlog pruned, the fresh rows kept, at a measured rate.
    c.eq("retention.backlog", 30_000);
    c.eq("retention.deleted", 30_000);
    c.eq("retention.old_left", 0);
    c.eq("retention.fresh_left", 10_000);
    c.between("retention.rows_per_s", 1.0, 10_000_000.0);
    c.between("retention.sustained_per_s", 0.1, 10_000_000.0);
    // A check's fenced write timed before and during the pruning (p50, p99; seconds).
    for f in ["write_before", "write_during"] {
        let p50 = c.between(&format!("retention.{f}.0"), 0.0, 10.0);
        let p99 = c.between(&format!("retention.{f}.1"), 0.0, 10.0);
        assert!(p50 <= p99, "retention.{f}: p50 {p50} > p99 {p99}");
    }

    // The tables print those figures, one per row, nothing left unmeasured.
    let rows = table_rows(&stdout);
    for section in [
        "### Latency",
        "### Idle",
        "### Burst",
        "### Capacity",
        "### Recovery",
        "### CMS outage",
    ] {
        assert!(stdout.contains(section), "missing {section}:\n{stdout}");
    }
    for figure in [
        "commit → first probe started, p50",
        "commit → Duroxide call done",
        "idle CPU",
        "machine, PostgreSQL alone",
        "toygres-actors (fetches wait for wake-ups): added over the baseline",
        "commit → all 200 actors running",
        "toygres-actors, 40 actors: staleness p50 / p99 / max",
        "naive loop, 20 actors: staleness p50 / p99 / max",
        "toygres-actors, 40 actors: checks / ideal in the first, middle and last third",
        "toygres-actors, 40 actors: renewal lag p50 / p99 / max",
        "toygres-actors, 40 actors: Duroxide orchestration turns acked per second / demand",
        "reconnect → all",
        "actor stale → restarted",
        "database back → every instance checked again",
    ] {
        assert!(
            rows.iter().any(|r| r[0].starts_with(figure)),
            "missing row `{figure}`:\n{stdout}"
        );
    }
    for r in &rows {
        let value = &r[1];
        assert!(
            value != "–"
                && !value.contains("NaN")
                && !value.contains("inf")
                && !value.starts_with("not "),
            "row `{}` has no measured value: `{value}`\n{stdout}",
            r[0]
        );
    }
    let running = rows
        .iter()
        .find(|r| r[0] == "toygres-actors, 40 actors: actors running at the end of the window")
        .unwrap_or_else(|| panic!("no actors-running row:\n{stdout}"));
    assert_eq!(running[1], "40 of 40", "{stdout}");
}

/// The cells of every row of every `| figure | value | … |` table, header excluded.
fn table_rows(out: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in out.lines() {
        if line.starts_with("| figure | value |") {
            in_table = true;
            continue;
        }
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        if !in_table || line.starts_with("|---") {
            continue;
        }
        let cells: Vec<String> = line
            .trim_matches('|')
            .split(" | ")
            .map(|c| c.trim().to_string())
            .collect();
        assert_eq!(cells.len(), 6, "a row without its six cells: {line}");
        rows.push(cells);
    }
    assert!(rows.len() >= 20, "only {} table rows:\n{out}", rows.len());
    rows
}

/// Assertions on the summary, by dotted path; every failure prints the whole output.
struct Check<'a> {
    root: &'a Value,
    out: &'a str,
}

impl Check<'_> {
    fn get(&self, path: &str) -> &Value {
        let mut v = self.root;
        for key in path.split('.') {
            v = match key.parse::<usize>() {
                Ok(i) => &v[i],
                Err(_) => &v[key],
            };
        }
        v
    }

    /// A number that was measured (present, not null, finite).
    fn num(&self, path: &str) -> f64 {
        match self.get(path).as_f64() {
            Some(v) if v.is_finite() => v,
            _ => panic!(
                "`{path}` was not measured: {}\n{}",
                self.get(path),
                self.out
            ),
        }
    }

    fn eq(&self, path: &str, want: i64) {
        assert_eq!(
            self.get(path).as_i64(),
            Some(want),
            "`{path}`\n{}",
            self.out
        );
    }

    /// A measured number with `lo < v < hi`.
    fn between(&self, path: &str, lo: f64, hi: f64) -> f64 {
        let v = self.num(path);
        assert!(
            lo < v && v < hi,
            "`{path}` = {v}, outside ({lo}, {hi})\n{}",
            self.out
        );
        v
    }

    /// Quantiles: `lo < p50 ≤ p99 ≤ max < hi` (max where reported).
    fn ordered(&self, path: &str, lo: f64, hi: f64) {
        let p50 = self.between(&format!("{path}.p50"), lo, hi);
        let p99 = self.between(&format!("{path}.p99"), lo, hi);
        let max = self.between(&format!("{path}.max"), lo, hi);
        assert!(
            p50 <= p99 && p99 <= max,
            "`{path}`: p50 {p50}, p99 {p99}, max {max} out of order\n{}",
            self.out
        );
    }

    /// CPU of service and PostgreSQL, both read (% of one core, at most every core);
    /// `busy`: the window had work for both, so each used some.
    fn cpu(&self, path: &str, busy: bool) {
        let cores = std::thread::available_parallelism().map_or(64, |n| n.get()) as f64;
        for part in ["service_pct", "pg_pct"] {
            let lo = if busy { 0.0 } else { -0.001 };
            self.between(&format!("{path}.{part}"), lo, 100.0 * cores + 1.0);
        }
    }
}
