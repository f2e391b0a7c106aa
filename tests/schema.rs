//! The SQL contract on a real PostgreSQL: NOTIFY triggers and their payloads, the durable
//! restart request, and migrations that are additive and idempotent on toygres-shaped
//! databases that already hold rows.

mod support;

use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::PgListener;
use support::{TestDb, wait_until};

/// Receive notifications until `sentinel` arrives on `channel`; returns what came before it.
/// The sentinel is sent after the statement under test has committed, and PostgreSQL
/// delivers notifications in commit order, so "nothing before the sentinel" proves that
/// the statement sent nothing — no sleeping involved.
async fn drain_until_sentinel(
    listener: &mut PgListener,
    db: &TestDb,
    channel: &str,
) -> Vec<String> {
    let sentinel = format!("sentinel-{}", uuid::Uuid::new_v4());
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(&sentinel)
        .execute(&db.pool)
        .await
        .unwrap();
    let mut seen = Vec::new();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
            .await
            .expect("a notification within 10 s")
            .expect("listener alive");
        if n.payload() == sentinel {
            return seen;
        }
        seen.push(n.payload().to_string());
    }
}

async fn listen(db: &TestDb, channel: &str) -> PgListener {
    let mut l = PgListener::connect(&db.url).await.unwrap();
    l.listen(channel).await.unwrap();
    l
}

#[tokio::test]
async fn insert_delete_and_state_change_notify_exactly_once() {
    let db = TestDb::new().await;
    let mut l = listen(&db, "toygres_instances").await;

    let id = db.insert_instance("pg-one", "creating", None).await;
    let got = drain_until_sentinel(&mut l, &db, "toygres_instances").await;
    assert_eq!(got.len(), 1, "insert: {got:?}");
    let v: Value = serde_json::from_str(&got[0]).unwrap();
    assert_eq!(v["op"], "insert");
    assert_eq!(v["id"], id.to_string());
    assert_eq!(v["k8s_name"], "pg-one");
    assert_eq!(v["old_state"], Value::Null);
    assert_eq!(v["new_state"], "creating");
    assert!(
        v["at"].as_f64().unwrap() > 1.7e9,
        "commit clock in epoch seconds: {v}"
    );

    sqlx::query("UPDATE toygres_cms.instances SET state = 'running' WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    let got = drain_until_sentinel(&mut l, &db, "toygres_instances").await;
    assert_eq!(got.len(), 1, "state change: {got:?}");
    let v: Value = serde_json::from_str(&got[0]).unwrap();
    assert_eq!(v["op"], "state");
    assert_eq!(v["old_state"], "creating");
    assert_eq!(v["new_state"], "running");

    // Same state written again: not a change, no notification.
    sqlx::query("UPDATE toygres_cms.instances SET state = 'running' WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    let got = drain_until_sentinel(&mut l, &db, "toygres_instances").await;
    assert!(got.is_empty(), "same-state update must not notify: {got:?}");

    sqlx::query("DELETE FROM toygres_cms.instances WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    let got = drain_until_sentinel(&mut l, &db, "toygres_instances").await;
    assert_eq!(got.len(), 1, "delete: {got:?}");
    let v: Value = serde_json::from_str(&got[0]).unwrap();
    assert_eq!(v["op"], "delete");
    assert_eq!(v["id"], id.to_string());
    assert_eq!(v["old_state"], "running");
    assert_eq!(v["new_state"], Value::Null);
}

#[tokio::test]
async fn health_only_update_does_not_notify() {
    let db = TestDb::new().await;
    let id = db.insert_instance("pg-health", "running", None).await;
    let mut l = listen(&db, "toygres_instances").await;
    sqlx::query(
        "UPDATE toygres_cms.instances
            SET health_status = 'healthy', last_health_check = now(), tags = '{\"x\":1}'
          WHERE id = $1",
    )
    .bind(id)
    .execute(&db.pool)
    .await
    .unwrap();
    let got = drain_until_sentinel(&mut l, &db, "toygres_instances").await;
    assert!(got.is_empty(), "health write must not notify: {got:?}");
}

#[tokio::test]
async fn payload_stays_small_for_long_names_and_huge_tags() {
    let db = TestDb::new().await;
    let mut l = listen(&db, "toygres_instances").await;
    // 255 four-byte characters: the longest name the column takes, in bytes.
    let name: String = "𝔭".repeat(255);
    let big_tags = serde_json::json!({ "blob": "x".repeat(100_000) });
    sqlx::query(
        "INSERT INTO toygres_cms.instances
             (user_name, k8s_name, postgres_version, storage_size_gb, create_orchestration_id,
              tags, dns_connection_string)
         VALUES ('u', $1, '16', 1, 'c', $2, repeat('h', 50000))",
    )
    .bind(&name)
    .bind(&big_tags)
    .execute(&db.pool)
    .await
    .unwrap();
    let got = drain_until_sentinel(&mut l, &db, "toygres_instances").await;
    assert_eq!(got.len(), 1);
    assert!(got[0].len() < 8000, "payload is {} bytes", got[0].len());
    let v: Value = serde_json::from_str(&got[0]).unwrap();
    assert_eq!(v["k8s_name"].as_str().unwrap(), name);
    assert!(!got[0].contains("xxxx"), "tags must not be in the payload");
    assert!(
        !got[0].contains("hhhh"),
        "connection strings must not be in the payload"
    );
}

#[tokio::test]
async fn request_actor_restart_is_durable_and_rejects_unknown_names() {
    let db = TestDb::new().await;
    let id = db.insert_instance("pg-restart", "running", None).await;
    sqlx::query("UPDATE toygres_cms.instances SET dns_name = 'pg-restart.example' WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    let mut l = listen(&db, "toygres_actor_control").await;

    let err = sqlx::query("SELECT toygres_cms.request_actor_restart('no-such-instance')")
        .execute(&db.pool)
        .await
        .expect_err("unknown name must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("unknown instance") && msg.contains("no-such-instance"),
        "{msg}"
    );
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM toygres_cms.actor_restart_requests")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(pending, 0, "a failed request records nothing");

    let req: i64 = sqlx::query_scalar("SELECT toygres_cms.request_actor_restart('pg-restart')")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let by_dns: i64 =
        sqlx::query_scalar("SELECT toygres_cms.request_actor_restart('pg-restart.example')")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(by_dns > req);
    let got = drain_until_sentinel(&mut l, &db, "toygres_actor_control").await;
    assert_eq!(got.len(), 2, "{got:?}");
    let v: Value = serde_json::from_str(&got[0]).unwrap();
    assert_eq!(v["op"], "restart");
    assert_eq!(v["k8s_name"], "pg-restart");
    assert_eq!(v["request_id"], req);
    let rows: Vec<(uuid::Uuid, Option<chrono::DateTime<chrono::Utc>>)> = sqlx::query_as(
        "SELECT instance_id, handled_at FROM toygres_cms.actor_restart_requests ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|(i, h)| *i == id && h.is_none()));
}

#[tokio::test]
async fn record_health_is_fenced_and_notifies_on_change() {
    let db = TestDb::new().await;
    let id = db.insert_instance("pg-rec", "running", None).await;
    sqlx::query("UPDATE toygres_cms.instances SET instance_actor_orchestration_id = 'actor-a' WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    let mut l = listen(&db, "toygres_health").await;
    let record = |actor: &'static str, status: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, Option<String>>(
                "SELECT toygres_actors.record_health($1, $2, NULL, $3, false, '16.1', 4, NULL)",
            )
            .bind(id)
            .bind(actor)
            .bind(status)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(
        record("actor-a", "healthy").await.as_deref(),
        Some("unknown")
    );
    assert_eq!(
        record("actor-a", "healthy").await.as_deref(),
        Some("healthy")
    );
    // A superseded actor writes nothing.
    assert_eq!(record("actor-old", "unhealthy").await, None);
    let got = drain_until_sentinel(&mut l, &db, "toygres_health").await;
    assert_eq!(
        got.len(),
        1,
        "only the unknown → healthy change notifies: {got:?}"
    );
    let v: Value = serde_json::from_str(&got[0]).unwrap();
    assert_eq!(v["k8s_name"], "pg-rec");
    assert_eq!(v["old"], "unknown");
    assert_eq!(v["new"], "healthy");
    let (status, checks): (String, i64) = sqlx::query_as(
        "SELECT i.health_status::text, (SELECT count(*) FROM toygres_cms.instance_health_checks h WHERE h.instance_id = i.id)
           FROM toygres_cms.instances i WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(status, "healthy");
    assert_eq!(checks, 2);
}

/// The one statement of a check under a probe lease writes only while the row's state and
/// target are the ones the probe was made against; otherwise it writes nothing and says
/// what they are now (the check then probes again), and outside the lease fence it says
/// nothing at all.
#[tokio::test]
async fn record_check_seen_is_fenced_on_the_row_the_probe_saw() {
    let db = TestDb::new().await;
    let id = db
        .insert_instance("pg-seen", "running", Some("host=old.example"))
        .await;
    // The row names actor-a, whose probe lease replica r1 (epoch 1) holds.
    lease_to_r1(&db, id, "actor-a").await;
    type Out = (Option<bool>, Option<String>, Option<String>, Option<String>);
    let write = |holder: &'static str, state: &'static str, target: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_as::<_, Out>(
                "SELECT written, previous_status, row_state, row_target
                   FROM toygres_actors.record_check_seen($1, 'actor-a', $2, 1, $3, $4,
                                                         'healthy', false, '16.1', 4, NULL)",
            )
            .bind(id)
            .bind(holder)
            .bind(state)
            .bind(target)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let checks = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM toygres_cms.instance_health_checks WHERE instance_id = $1",
        )
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };
    let old = Some("host=old.example".to_string());
    let running = Some("running".to_string());

    // Made against the row as it is: written, and the row comes back.
    assert_eq!(
        write("r1", "running", "host=old.example").await,
        (
            Some(true),
            Some("unknown".into()),
            running.clone(),
            old.clone()
        )
    );
    assert_eq!(checks().await, 1);

    // The connection string moved under the probe: nothing written, the new one comes back.
    sqlx::query(
        "UPDATE toygres_cms.instances SET dns_connection_string = 'host=new.example' WHERE id = $1",
    )
    .bind(id)
    .execute(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        write("r1", "running", "host=old.example").await,
        (
            Some(false),
            None,
            running.clone(),
            Some("host=new.example".into())
        )
    );
    // The state moved: nothing written either.
    assert_eq!(
        write("r1", "creating", "host=new.example").await,
        (
            Some(false),
            None,
            running.clone(),
            Some("host=new.example".into())
        )
    );
    assert_eq!(checks().await, 1);
    let (status,): (String,) =
        sqlx::query_as("SELECT health_status::text FROM toygres_cms.instances WHERE id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(status, "healthy", "only the first write counted");

    // Another holder: refused, and the row is not told.
    assert_eq!(
        write("r2", "running", "host=new.example").await,
        (None, None, None, None)
    );
    // Against the new row, by the holder: written.
    assert_eq!(
        write("r1", "running", "host=new.example").await.0,
        Some(true)
    );
    assert_eq!(checks().await, 2);
}

/// The fences of a check's write that do not depend on the row: another epoch of the
/// holder, a draining holder, a holder whose liveness lapsed. Each refuses and writes nothing.
#[tokio::test]
async fn record_check_seen_refuses_a_stale_epoch_a_draining_or_lapsed_holder() {
    let db = TestDb::new().await;
    let id = db
        .insert_instance("pg-fence", "running", Some("host=h"))
        .await;
    lease_to_r1(&db, id, "actor-a").await;
    let write = |epoch: i64| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, Option<bool>>(
                "SELECT written FROM toygres_actors.record_check_seen($1, 'actor-a', 'r1', $2,
                        'running', 'host=h', 'healthy', false, '16.1', 4, NULL)",
            )
            .bind(id)
            .bind(epoch)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let set = |sql: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query(sql).execute(&pool).await.unwrap();
        }
    };
    assert_eq!(write(1).await, Some(true), "the holder's own epoch writes");
    assert_eq!(write(2).await, None, "another epoch of the holder");
    set("UPDATE toygres_actors.replicas SET draining = true WHERE name = 'r1'").await;
    assert_eq!(write(1).await, None, "a draining holder");
    set("UPDATE toygres_actors.replicas SET draining = false, expires_at = now() - interval '1 second' WHERE name = 'r1'").await;
    assert_eq!(write(1).await, None, "a holder whose liveness lapsed");
    set("UPDATE toygres_actors.replicas SET expires_at = now() + interval '1 hour' WHERE name = 'r1'").await;
    assert_eq!(write(1).await, Some(true), "live again");
    let rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM toygres_cms.instance_health_checks WHERE instance_id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows, 2, "only the two accepted writes left a row");
}

/// Replica r1 (epoch 1, live for an hour) and a probe lease it holds on `id` for `actor`,
/// which the row names.
async fn lease_to_r1(db: &TestDb, id: uuid::Uuid, actor: &str) {
    sqlx::query(
        "INSERT INTO toygres_actors.replicas (name, epoch, expires_at)
         VALUES ('r1', 1, now() + interval '1 hour') ON CONFLICT (name) DO NOTHING",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE toygres_cms.instances SET instance_actor_orchestration_id = $2 WHERE id = $1",
    )
    .bind(id)
    .bind(actor)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO toygres_actors.probe_leases (instance_id, actor_id, holder, holder_epoch, expires_at)
         VALUES ($1, $2, 'r1', 1, now() + interval '1 hour')",
    )
    .bind(id)
    .bind(actor)
    .execute(&db.pool)
    .await
    .unwrap();
}

/// A check's write finds the instance's probe lease by its key whatever the lease table's
/// statistics say. Analyzed while empty and then holding 2,000 leases of one replica (a
/// burst of starts), the write of migrations/0008 walked the replica's leases through the
/// (holder, epoch) index to find one: 1.7 ms of a 2.2 ms write in the 10,000 burst.
#[tokio::test]
async fn a_checks_write_reads_its_lease_by_key_whatever_the_statistics() {
    let db = TestDb::new().await;
    let first = db
        .insert_instance("pg-k-0", "running", Some("host=h"))
        .await;
    lease_to_r1(&db, first, "actor-0").await;
    sqlx::query("ANALYZE toygres_actors.probe_leases")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "WITH ins AS (
             INSERT INTO toygres_cms.instances
                 (user_name, k8s_name, postgres_version, storage_size_gb, state,
                  create_orchestration_id, dns_connection_string, instance_actor_orchestration_id)
             SELECT 'tester', 'pg-k-' || g, '16', 10, 'running', 'create-1', 'host=h', 'actor-' || g
               FROM generate_series(1, 2000) g
             RETURNING id, instance_actor_orchestration_id)
         INSERT INTO toygres_actors.probe_leases (instance_id, actor_id, holder, holder_epoch, expires_at)
         SELECT id, instance_actor_orchestration_id, 'r1', 1, now() + interval '1 hour' FROM ins",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mine: Vec<(uuid::Uuid, String)> = sqlx::query_as(
        "SELECT id, instance_actor_orchestration_id FROM toygres_cms.instances
          ORDER BY k8s_name LIMIT 12",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    // One transaction, so that this backend's index counters are those of these writes
    // (enough of them for the function's cached plan to turn generic).
    let mut tx = db.pool.begin().await.unwrap();
    for (id, actor) in &mine {
        let written: Option<bool> = sqlx::query_scalar(
            "SELECT written FROM toygres_actors.record_check_seen($1, $2, 'r1', 1, 'running',
                    'host=h', 'healthy', false, '16.1', 1, NULL)",
        )
        .bind(id)
        .bind(actor)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        assert_eq!(written, Some(true));
    }
    let (by_holder, by_key): (i64, i64) = sqlx::query_as(
        "SELECT pg_stat_get_xact_numscans('toygres_actors.idx_probe_leases_holder'::regclass),
                pg_stat_get_xact_numscans('toygres_actors.probe_leases_pkey'::regclass)",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(by_holder, 0, "no write walked the replica's leases");
    assert!(by_key >= 12, "every write read its lease by key ({by_key})");
}

/// `--check-commit async` (the default) commits a check's write without waiting for the WAL
/// flush — for that one transaction: the session's own setting is back after it. `durable`
/// leaves the setting alone. Both write the same.
#[tokio::test]
async fn a_checks_write_commits_asynchronously_unless_asked_to_be_durable() {
    use toygres_actors::cms::{self, CheckCommit, Fenced, HealthRecord, Seen};
    let db = TestDb::new().await;
    let id = db
        .insert_instance("pg-async", "running", Some("host=h"))
        .await;
    lease_to_r1(&db, id, "actor-a").await;
    let mut conn = db.pool.acquire().await.unwrap();
    sqlx::query("SET synchronous_commit = on")
        .execute(&mut *conn)
        .await
        .unwrap();
    for (commit, inside) in [(CheckCommit::Async, "off"), (CheckCommit::Durable, "on")] {
        let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
        let row: (Option<bool>,) = sqlx::query_as(toygres_actors::sql::RECORD_CHECK_SEEN)
            .bind(id)
            .bind("actor-a")
            .bind("r1")
            .bind(1_i64)
            .bind("running")
            .bind("host=h")
            .bind("healthy")
            .bind(false)
            .bind("16.1")
            .bind(3_i32)
            .bind(None::<String>)
            .bind(commit == CheckCommit::Async)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(row.0, Some(true), "{commit:?} writes");
        let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(setting, inside, "{commit:?}: the transaction's setting");
        tx.commit().await.unwrap();
        let after: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(
            after, "on",
            "{commit:?}: the session's setting after the commit"
        );
    }
    // And through the service's own call, both ways.
    let rec = HealthRecord {
        instance_id: id,
        actor_id: "actor-a",
        observed: "healthy",
        keep_status: false,
        postgres_version: Some("16.1"),
        response_time_ms: Some(2),
        error: None,
    };
    let seen = Seen {
        state: "running".into(),
        target: Some("host=h".into()),
    };
    for commit in [CheckCommit::Async, CheckCommit::Durable] {
        let fenced = cms::record_check_seen(&db.pool, &rec, ("r1", 1), &seen, commit)
            .await
            .unwrap();
        assert!(
            matches!(fenced, Fenced::Written { .. }),
            "{commit:?}: {fenced:?}"
        );
    }
}

/// Everything that defines the schema, as sorted text: columns with types and defaults,
/// enum labels, triggers, indexes and function bodies.
async fn catalog(db: &TestDb) -> String {
    sqlx::query_scalar(
        r#"SELECT string_agg(x, E'\n' ORDER BY x) FROM (
             SELECT format('col %s.%s.%s %s %s.%s %s %s', table_schema, table_name, column_name,
                           data_type, udt_schema, udt_name, is_nullable, coalesce(column_default, '')) AS x
               FROM information_schema.columns
              WHERE table_schema IN ('toygres_cms', 'toygres_actors', 'public')
             UNION ALL
             SELECT format('enum %s.%s %s %s', n.nspname, t.typname, e.enumlabel, e.enumsortorder)
               FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid JOIN pg_namespace n ON n.oid = t.typnamespace
             UNION ALL
             SELECT format('trigger %s %s %s', tgrelid::regclass, tgname, pg_get_triggerdef(oid))
               FROM pg_trigger WHERE NOT tgisinternal
             UNION ALL
             SELECT format('index %s', pg_get_indexdef(i.indexrelid))
               FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname IN ('toygres_cms', 'toygres_actors', 'public')
             UNION ALL
             SELECT format('function %s %s', p.oid::regprocedure, md5(p.prosrc))
               FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname IN ('toygres_cms', 'toygres_actors')
           ) s"#,
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// Every row of the CMS tables, as text (order-independent).
async fn rows(db: &TestDb) -> String {
    sqlx::query_scalar(
        "SELECT concat_ws(' | ',
            (SELECT string_agg(t::text, ',' ORDER BY t.k8s_name) FROM toygres_cms.instances t),
            (SELECT string_agg(t::text, ',' ORDER BY t.id) FROM toygres_cms.instance_health_checks t),
            (SELECT string_agg(t::text, ',' ORDER BY t.id) FROM toygres_cms.instance_events t),
            (SELECT string_agg(t::text, ',' ORDER BY t.version) FROM public._sqlx_migrations t))",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

async fn migrations_keep_rows_on(fixture: &str) {
    let db = TestDb::empty().await;
    sqlx::raw_sql(fixture).execute(&db.pool).await.unwrap();
    let before: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT k8s_name, state::text, coalesce(instance_actor_orchestration_id, '') FROM toygres_cms.instances ORDER BY k8s_name",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(before.len(), 3);

    toygres_actors::db::migrate(&db.pool)
        .await
        .expect("first migrate");
    let after: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT k8s_name, state::text, coalesce(instance_actor_orchestration_id, '') FROM toygres_cms.instances ORDER BY k8s_name",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(before, after, "every row kept, unchanged");
    let checks: i64 = sqlx::query_scalar("SELECT count(*) FROM toygres_cms.instance_health_checks")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(checks, 1);
    // The missing column and enum label are there now, and usable.
    sqlx::query("UPDATE toygres_cms.instances SET last_health_check = now(), state = 'stopped' WHERE k8s_name = 'pg-bob-1'")
        .execute(&db.pool)
        .await
        .expect("last_health_check and 'stopped' exist after migrating");
    // toygres' own migration bookkeeping is untouched.
    let theirs: i64 = sqlx::query_scalar("SELECT count(*) FROM public._sqlx_migrations")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(theirs, 1);
    // The health write works whichever schema holds the enum.
    sqlx::query("UPDATE toygres_cms.instances SET instance_actor_orchestration_id = 'actor-x' WHERE k8s_name = 'pg-alice-1'")
        .execute(&db.pool)
        .await
        .unwrap();
    let old: Option<String> = sqlx::query_scalar(
        "SELECT toygres_actors.record_health((SELECT id FROM toygres_cms.instances WHERE k8s_name = 'pg-alice-1'),
                                             'actor-x', NULL, 'unhealthy', false, NULL, 1, 'down')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(old.as_deref(), Some("healthy"));

    // Applied twice — through the migrator, and each file's SQL run again by hand — nothing changes.
    let (cat1, rows1) = (catalog(&db).await, rows(&db).await);
    toygres_actors::db::migrate(&db.pool)
        .await
        .expect("second migrate");
    for m in toygres_actors::db::MIGRATOR.iter() {
        sqlx::raw_sql(&m.sql)
            .execute(&db.pool)
            .await
            .unwrap_or_else(|e| panic!("migration {} is not re-runnable: {e}", m.version));
    }
    assert_eq!(cat1, catalog(&db).await, "schema changed on re-run");
    assert_eq!(rows1, rows(&db).await, "rows changed on re-run");
}

#[tokio::test]
async fn migrations_on_legacy_toygres_with_public_enums_keep_every_row() {
    migrations_keep_rows_on(include_str!("fixtures/toygres_legacy_public_enums.sql")).await;
}

#[tokio::test]
async fn migrations_on_current_toygres_with_cms_enums_keep_every_row() {
    migrations_keep_rows_on(include_str!("fixtures/toygres_current_cms_enums.sql")).await;
}

#[tokio::test]
async fn migrations_on_empty_database_are_idempotent() {
    let db = TestDb::empty().await;
    toygres_actors::db::migrate(&db.pool).await.unwrap();
    let cat1 = catalog(&db).await;
    assert!(
        cat1.contains("trigger toygres_cms.instances toygres_instances_notify_state"),
        "{cat1}"
    );
    toygres_actors::db::migrate(&db.pool).await.unwrap();
    for m in toygres_actors::db::MIGRATOR.iter() {
        sqlx::raw_sql(&m.sql).execute(&db.pool).await.unwrap();
    }
    assert_eq!(cat1, catalog(&db).await);
}

#[tokio::test]
async fn concurrent_migrations_from_several_replicas_succeed() {
    let db = TestDb::empty().await;
    let runs = (0..4).map(|_| {
        let pool = db.pool.clone();
        async move { toygres_actors::db::migrate(&pool).await }
    });
    for r in futures::future::join_all(runs).await {
        r.expect("concurrent migrate");
    }
}

/// `request_actor_restart` is the authenticated path: PUBLIC may not run it, a member of
/// `toygres_actors_operator` may (and is recorded as the requester).
#[tokio::test]
async fn only_operators_may_request_a_restart() {
    let db = TestDb::new().await;
    db.insert_instance("pg-priv", "running", None).await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let (yes, no) = (
        format!("op_yes_{}", &tag[..8]),
        format!("op_no_{}", &tag[..8]),
    );
    for role in [&yes, &no] {
        sqlx::query(&format!("CREATE ROLE {role} LOGIN"))
            .execute(&db.pool)
            .await
            .unwrap();
        sqlx::query(&format!("GRANT CONNECT ON DATABASE {} TO {role}", db.name))
            .execute(&db.pool)
            .await
            .unwrap();
    }
    sqlx::query(&format!("GRANT toygres_actors_operator TO {yes}"))
        .execute(&db.pool)
        .await
        .unwrap();
    let as_role = |role: &str| {
        let url = db.url.clone();
        let role = role.to_string();
        async move {
            let opts = toygres_actors::db::connect_options(&url)
                .unwrap()
                .username(&role);
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect_with(opts)
                .await
                .expect("connect as role")
        }
    };
    let denied = sqlx::query("SELECT toygres_cms.request_actor_restart('pg-priv')")
        .execute(&as_role(&no).await)
        .await
        .expect_err("a role without the grant must be refused");
    assert!(denied.to_string().contains("permission denied"), "{denied}");
    let req: i64 = sqlx::query_scalar("SELECT toygres_cms.request_actor_restart('pg-priv')")
        .fetch_one(&as_role(&yes).await)
        .await
        .expect("an operator may request a restart");
    let by: String = sqlx::query_scalar(
        "SELECT requested_by FROM toygres_cms.actor_restart_requests WHERE id = $1",
    )
    .bind(req)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        by, yes,
        "the requester is recorded, not the function's owner"
    );
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM toygres_cms.actor_restart_requests")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(n, 1, "the refused request recorded nothing");
    for role in [&yes, &no] {
        let _ = sqlx::query(&format!(
            "REVOKE CONNECT ON DATABASE {} FROM {role}",
            db.name
        ))
        .execute(&db.pool)
        .await;
    }
}

/// A replica that rejoined after an outage balances only once it holds all its own leases
/// again. Its tick takes them back with SKIP LOCKED; two of them held by someone else at
/// that instant stay under its old epoch, and the same tick must not take a lease from its
/// peer to make up for them (its next tick takes them back, and the peer would then take
/// one back: a swap; seen in `tests/failover.rs` after a database outage).
#[tokio::test]
async fn a_rejoined_replica_does_not_balance_while_its_own_leases_are_locked() {
    let db = TestDb::new().await;
    sqlx::query(
        "INSERT INTO toygres_actors.replicas (name, epoch, expires_at)
         VALUES ('a', 1, now() + interval '1 hour'), ('b', 3, now() + interval '1 hour')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut of_b = Vec::new();
    for i in 0..6 {
        let id = db
            .insert_instance(&format!("pg-re-{i}"), "running", None)
            .await;
        // a holds three under its live epoch, b three under the epoch it had before the outage.
        let (holder, epoch) = if i < 3 { ("a", 1i64) } else { ("b", 2i64) };
        sqlx::query(
            "INSERT INTO toygres_actors.probe_leases (instance_id, actor_id, holder, holder_epoch, expires_at)
             VALUES ($1, $2, $3, $4, now() + interval '1 hour')",
        )
        .bind(id)
        .bind(format!("actor-{i}"))
        .bind(holder)
        .bind(epoch)
        .execute(&db.pool)
        .await
        .unwrap();
        if holder == "b" {
            of_b.push(id);
        }
    }
    // Two of b's leases held by a check or a renewal at the instant of b's tick.
    let mut held = db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM toygres_actors.probe_leases WHERE instance_id = ANY($1) FOR UPDATE")
        .bind(&of_b[..2])
        .execute(&mut *held)
        .await
        .unwrap();
    let (status, claimed, stolen): (String, i32, i32) = sqlx::query_as(
        "SELECT status, claimed, stolen FROM toygres_actors.replica_tick('b', 3, 15, 10, true)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    held.rollback().await.unwrap();
    assert_eq!((status.as_str(), claimed), ("ok", 1));
    assert_eq!(
        stolen, 0,
        "b took a lease from a while two of its own were still to take back"
    );
    let (_, claimed, stolen): (String, i32, i32) = sqlx::query_as(
        "SELECT status, claimed, stolen FROM toygres_actors.replica_tick('b', 3, 15, 10, true)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (claimed, stolen),
        (2, 0),
        "the next tick takes the rest back, balanced 3 / 3"
    );
}

async fn session(db: &TestDb) -> (sqlx::PgConnection, i32) {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut c)
        .await
        .unwrap();
    (c, pid)
}

async fn tick(c: &mut sqlx::PgConnection, name: &str, epoch: i64) -> Option<i64> {
    sqlx::query_scalar("SELECT toygres_actors.leader_tick($1, $2, 10, $3)")
        .bind(name)
        .bind(epoch)
        .bind(LEGACY_KEY)
        .fetch_one(c)
        .await
        .unwrap()
}

const LEGACY_KEY: i64 = 0x5eed_1eaf;

/// A follower's tick never touches the legacy advisory lock while another replica holds a
/// live term, so the leader's tick cannot mistake it for an older release leading through
/// the lock. Seen in `tests/failover.rs` (a partition healed): the healed replica's tick
/// took the free lock, found the new leader and unlocked; the leader's tick in that instant
/// saw a holder other than the pid it recorded and resigned. Here a third session holds the
/// leader row so that both ticks are inside the function at once, deterministically.
#[tokio::test]
async fn a_followers_tick_does_not_make_the_leader_resign() {
    let db = TestDb::new().await;
    // p leads through the lock, then freezes past its term; q takes over without the lock
    // (its holder is p's own session), and p's old session goes away, freeing the lock.
    let (mut p_old, _) = session(&db).await;
    assert_eq!(tick(&mut p_old, "p", 1).await, Some(1));
    sqlx::query("UPDATE toygres_actors.leader SET expires_at = now() - interval '1 second'")
        .execute(&db.pool)
        .await
        .unwrap();
    let (mut q, q_pid) = session(&db).await;
    assert_eq!(tick(&mut q, "q", 1).await, Some(2));
    drop(p_old);
    let held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
                   AND objid = ($1::bigint & 4294967295)::oid
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";
    wait_until(
        "p's old session to let the lock go",
        Duration::from_secs(10),
        || async {
            let n: i64 = sqlx::query_scalar(held)
                .bind(LEGACY_KEY)
                .fetch_one(&db.pool)
                .await
                .unwrap();
            (n == 0).then_some(())
        },
    )
    .await;

    // The healed p ticks and so does q, both waiting on the leader row held elsewhere.
    let mut blocker = db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM toygres_actors.leader WHERE id = 1 FOR UPDATE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let waiting = |pid: i32| {
        let pool = db.pool.clone();
        async move {
            let w: Option<String> =
                sqlx::query_scalar("SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1")
                    .bind(pid)
                    .fetch_optional(&pool)
                    .await
                    .unwrap()
                    .flatten();
            (w.as_deref() == Some("Lock")).then_some(())
        }
    };
    let (mut p_new, p_pid) = session(&db).await;
    let p_tick = tokio::spawn(async move { tick(&mut p_new, "p", 2).await });
    wait_until("p's tick to wait", Duration::from_secs(10), || {
        waiting(p_pid)
    })
    .await;
    let q_tick = tokio::spawn(async move {
        let term = tick(&mut q, "q", 1).await;
        (term, q)
    });
    wait_until("q's tick to wait", Duration::from_secs(10), || {
        waiting(q_pid)
    })
    .await;
    blocker.commit().await.unwrap();

    assert_eq!(p_tick.await.unwrap(), None, "p follows");
    let (term, _q) = q_tick.await.unwrap();
    assert_eq!(
        term,
        Some(2),
        "the leader resigned because a follower ticked"
    );
    let (holder, lock_pid): (String, Option<i32>) =
        sqlx::query_as("SELECT holder, lock_pid FROM toygres_actors.leader WHERE id = 1")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        (holder.as_str(), lock_pid),
        ("q", Some(q_pid)),
        "q leads and holds the lock now"
    );
}

/// The leader's pruning is fenced by its term (principle 6: a process that wakes up after
/// losing its term writes nothing): a batch presenting a term that is over deletes no row
/// and fails with `TA001`; the live term's batch deletes the old rows.
#[tokio::test]
async fn a_pruning_batch_of_a_lost_term_deletes_nothing() {
    use toygres_actors::identity::Term;
    let db = TestDb::new().await;
    let id = db.insert_instance("pg-old", "running", None).await;
    sqlx::query(
        "INSERT INTO toygres_cms.instance_health_checks (instance_id, status, checked_at)
         SELECT $1, 'healthy', now() - interval '8 days' - g * interval '1 second'
           FROM generate_series(1, 50) g",
    )
    .bind(id)
    .execute(&db.pool)
    .await
    .unwrap();
    let old = || db.scalar_i64("SELECT count(*) FROM toygres_cms.instance_health_checks");
    let (mut p, _) = session(&db).await;
    let term = tick(&mut p, "p", 1).await.expect("p leads");
    let week = Duration::from_secs(7 * 86_400);
    let budget = Duration::from_secs(10);

    // q's term 1 of an earlier leadership, or p's own earlier term: both over.
    for lost in [
        Term {
            name: "q".into(),
            epoch: 1,
            term,
        },
        Term {
            name: "p".into(),
            epoch: 1,
            term: term - 1,
        },
    ] {
        let e = toygres_actors::cms::prune_health_history(&db.pool, week, budget, Some(&lost))
            .await
            .expect_err("a lost term's batch must fail");
        assert!(e.to_string().contains("is over"), "{e}");
        assert_eq!(old().await, 50, "nothing deleted under {lost:?}");
    }
    let live = Term {
        name: "p".into(),
        epoch: 1,
        term,
    };
    let n = toygres_actors::cms::prune_health_history(&db.pool, week, budget, Some(&live))
        .await
        .unwrap();
    assert_eq!(
        (n, old().await),
        (50, 0),
        "the live term's pass deletes the old rows"
    );
}
