//! The real binary, as a user runs it.

mod support;

use std::process::Command;

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
