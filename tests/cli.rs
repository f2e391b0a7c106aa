//! The real binary, as a user runs it.

mod support;

use std::process::Command;
use std::time::Duration;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_toygres-actors"));
    c.env_remove("DATABASE_URL").env_remove("TEST_DATABASE_URL");
    c
}

#[test]
fn migrate_without_database_url_starts_private_cluster_and_exits_cleanly() {
    let dir = std::env::temp_dir().join(format!(
        "toygres-actors-cli-{}",
        uuid::Uuid::new_v4().simple()
    ));
    for round in 0..2 {
        let out = bin()
            .arg("migrate")
            .arg("--data-dir")
            .arg(&dir)
            .output()
            .expect("run toygres-actors");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "round {round}: {stderr}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("migrations applied"));
        assert!(stderr.contains("private PostgreSQL started"), "{stderr}");
        // Stopped on exit: no server left holding the data directory.
        let pid_file = dir.join("pg/data/postmaster.pid");
        assert!(!pid_file.exists(), "cluster still running: {pid_file:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_flags_give_a_clear_error_and_change_nothing() {
    let out = bin()
        .args(["--duroxide-schema", "x;drop", "migrate"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--duroxide-schema"), "{stderr}");
    assert!(
        !stderr.contains("private PostgreSQL started"),
        "nothing may start: {stderr}"
    );

    let out = bin()
        .args(["run", "--check-interval", "soon"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a duration"));

    // The API: an empty token is an error, and a non-loopback bind needs a token (or the
    // explicit --insecure-no-auth). Nothing starts (no private cluster under a fresh dir).
    let dir = std::env::temp_dir().join(format!("ta-cli-{}", uuid::Uuid::new_v4().simple()));
    for (env_token, args, expect) in [
        (Some(""), vec!["run"], "is empty"),
        (
            None,
            vec!["run", "--http", "0.0.0.0:0"],
            "not a loopback address",
        ),
    ] {
        let mut cmd = bin();
        cmd.env_remove("TOYGRES_ACTORS_API_TOKEN")
            .env_remove("DATABASE_URL")
            .arg("--data-dir")
            .arg(&dir)
            .args(&args);
        if let Some(t) = env_token {
            cmd.env("TOYGRES_ACTORS_API_TOKEN", t);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert!(
            !dir.exists(),
            "{args:?} started something under {}",
            dir.display()
        );
    }
}

#[test]
fn help_never_shows_secret_env_values() {
    let out = bin()
        .env("TOYGRES_ACTORS_API_TOKEN", "tok-very-secret")
        .env("TOYGRES_ACTORS_API_READ_TOKEN", "tok-read-very-secret")
        .env("DATABASE_URL", "postgres://u:pw-very-secret@h/db")
        .args(["run", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("--api-token") && text.contains("--api-read-token"));
    assert!(!text.contains("very-secret"), "{text}");
}

/// `--duroxide-pool-max` takes effect: duroxide-pg's pool never holds more connections
/// than asked, even while the dispatchers and workers are busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duroxide_pool_max_bounds_the_store_pool() {
    let db = support::TestDb::new().await;
    let svc = support::ServiceProc::start(&db, &["--duroxide-pool-max", "2"]).await;
    for i in 0..40 {
        db.insert_instance(&format!("pg-pool-{i}"), "running", None)
            .await;
    }
    let most = std::sync::atomic::AtomicI64::new(0);
    support::wait_until("every actor started", std::time::Duration::from_secs(60), || async {
        let n = db
            .scalar_i64(&format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND application_name = 'toygres-actors-duroxide'",
                db.name
            ))
            .await;
        most.fetch_max(n, std::sync::atomic::Ordering::SeqCst);
        let started = db
            .scalar_i64("SELECT count(*) FROM toygres_actors_duroxide.instances")
            .await;
        (started >= 40).then_some(())
    })
    .await;
    let most = most.load(std::sync::atomic::Ordering::SeqCst);
    assert!(most >= 1, "no Duroxide connection seen");
    assert!(
        most <= 2,
        "the Duroxide pool held {most} connections (max 2)"
    );
    drop(svc);
}

/// Run an operator command against `db`; it must succeed and print one JSON document with
/// no password in it.
fn json_of(db: &support::TestDb, args: &[&str]) -> serde_json::Value {
    let out = bin()
        .env("DATABASE_URL", &db.url)
        .args(args)
        .output()
        .expect("run toygres-actors");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !stdout.contains(support::TARGET_PASSWORD),
        "{args:?} printed a password: {stdout}"
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{args:?} did not print one JSON document ({e}): {stdout}"))
}

/// `--json` on `heal`, `explain` and `actor`: one document each, holding what the text
/// shows. `heal` runs before any service (what it enqueues, the service's runtime carries
/// out), `explain` and `actor` once the actor runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_print_json() {
    let db = support::TestDb::new().await;
    let name = "pg-json";
    let id = db
        .insert_instance(name, "running", Some(&support::reachable_target()))
        .await;

    let planned = json_of(&db, &["heal", "--dry-run", "--json"]);
    let planned = planned.as_array().expect("heal prints an array");
    assert_eq!(planned.len(), 1, "{planned:?}");
    assert_eq!(planned[0]["k8s_name"], name);
    assert_eq!(planned[0]["instance_id"], id.to_string());
    assert_eq!(planned[0]["verdict"], "missing");
    assert_eq!(planned[0]["action"], "start");
    assert!(planned[0]["skipped"].is_string(), "{planned:?}");
    assert!(
        db.actor_id(name).await.is_none(),
        "a dry run starts nothing"
    );

    let done = json_of(&db, &["heal", "--json"]);
    let done = done.as_array().expect("heal prints an array");
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0]["action"], "start");
    assert!(done[0]["skipped"].is_null(), "{done:?}");
    let started = done[0]["new_actor_id"]
        .as_str()
        .expect("heal names the actor it started")
        .to_string();
    assert_eq!(db.actor_id(name).await.as_deref(), Some(started.as_str()));

    let svc = support::ServiceProc::start(&db, &[]).await;
    let actor = support::wait_until(
        "the actor runs and checks",
        Duration::from_secs(60),
        || async {
            let actor = db.actor_id(name).await?;
            (db.checks_of(name).await >= 1).then_some(actor)
        },
    )
    .await;

    let e = json_of(&db, &["explain", name, "--json"]);
    assert_eq!(e["instance"]["k8s_name"], name);
    assert_eq!(e["instance"]["id"], id.to_string());
    assert_eq!(e["instance"]["has_target"], true);
    assert!(e["verdict"].is_string() && e["reason"].is_string(), "{e}");
    assert!(e["would_do"].is_string(), "{e}");
    assert!(
        !e["recent_checks"]
            .as_array()
            .expect("recent_checks")
            .is_empty(),
        "{e}"
    );
    assert!(
        e["recent_decisions"]
            .as_array()
            .expect("recent_decisions")
            .iter()
            .any(|d| d["action"] == "start"),
        "{e}"
    );
    assert!(e["actor"]["state"].is_string(), "{e}");

    let r = json_of(&db, &["actor", "start", name, "--json"]);
    assert_eq!(r["k8s_name"], name);
    assert_eq!(r["action"], "start");
    assert_eq!(r["changed"], false, "an actor already runs: {r}");
    assert_eq!(r["new_actor_id"], actor.as_str());

    let r = json_of(&db, &["actor", "cancel", name, "--json"]);
    assert_eq!(r["action"], "cancel");
    assert_eq!(r["changed"], true, "{r}");
    assert_eq!(r["old_actor_id"], actor.as_str());
    assert!(
        r["warning"].is_string(),
        "the row still calls for an actor: {r}"
    );

    // A failed command prints its error on standard error and no document.
    let out = bin()
        .env("DATABASE_URL", &db.url)
        .args(["explain", "pg-no-such", "--json"])
        .output()
        .expect("run toygres-actors");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    drop(svc);
}
