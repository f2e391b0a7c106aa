//! Standby detection against a real standby: a private primary, a streaming standby made of
//! it with `pg_basebackup -R`, and two services probing both — one for a fleet of primaries
//! (the default), one with `--expect-standby`. Each marks the instance in the other role
//! `unhealthy` with the reason, and healthy the one in the role it expects.

mod support;

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use sqlx::Connection;
use support::{ServiceProc, TestDb, wait_until};
use toygres_actors::embedded_pg::{self, EmbeddedOptions, EmbeddedPostgres};

const T: Duration = Duration::from_secs(60);

/// The user PostgreSQL runs as when we are root (as `embedded_pg` chooses it).
fn run_as() -> Option<(nix::unistd::Uid, nix::unistd::Gid)> {
    if !nix::unistd::Uid::effective().is_root() {
        return None;
    }
    ["postgres", "nobody"].iter().find_map(|name| {
        nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .map(|u| (u.uid, u.gid))
    })
}

/// A primary of our own and a hot standby streaming from it, both private clusters (stopped,
/// and their directories removed, when dropped or when the test binary exits).
fn primary_and_standby() -> (EmbeddedPostgres, EmbeddedPostgres) {
    let primary = EmbeddedPostgres::start(&EmbeddedOptions::ephemeral_temp("stby-primary"))
        .expect("start the primary");
    let opts = EmbeddedOptions::ephemeral_temp("stby-standby");
    std::fs::create_dir_all(&opts.data_dir).unwrap();
    let user = run_as();
    if let Some((uid, gid)) = user {
        nix::unistd::chown(&opts.data_dir, Some(uid), Some(gid)).unwrap();
    }
    let bindir = embedded_pg::find_bindir().expect("PostgreSQL binaries");
    let mut cmd = Command::new(bindir.join("pg_basebackup"));
    cmd.arg("-D")
        .arg(opts.data_dir.join("data"))
        .args(["-R", "-X", "stream", "-c", "fast", "-d"])
        .arg(format!(
            "host=127.0.0.1 port={} user=toygres",
            primary.port()
        ));
    if let Some((uid, gid)) = user {
        cmd.uid(uid.as_raw()).gid(gid.as_raw()).current_dir("/");
    }
    let out = cmd.output().expect("run pg_basebackup");
    assert!(
        out.status.success(),
        "pg_basebackup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(opts.data_dir.join("data/standby.signal").exists());
    // An existing cluster is started as it is: in recovery, streaming from the primary.
    let standby = EmbeddedPostgres::start(&opts).expect("start the standby");
    (primary, standby)
}

async fn in_recovery(url: &str) -> bool {
    let mut c = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&mut c)
        .await
        .unwrap()
}

/// (health_status, the latest check's status, error and server version).
async fn health(
    db: &TestDb,
    name: &str,
) -> Option<(String, String, Option<String>, Option<String>)> {
    let (status, _) = db.health_of(name).await;
    let last: Option<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT h.status::text, h.error_message, h.postgres_version
           FROM toygres_cms.instance_health_checks h
           JOIN toygres_cms.instances i ON i.id = h.instance_id
          WHERE i.k8s_name = $1
          ORDER BY h.checked_at DESC LIMIT 1",
    )
    .bind(name)
    .fetch_optional(&db.pool)
    .await
    .unwrap();
    last.map(|(s, e, v)| (status, s, e, v))
}

/// Wait until `name` has settled on `status` with the latest check's `error`.
async fn settles(db: &TestDb, name: &str, status: &str, error: Option<&str>) {
    let what = format!("{name}: {status} ({error:?})");
    let (_, _, _, version) = wait_until(&what, T, || async {
        let h = health(db, name).await?;
        (h.0 == status && h.1 == status && h.2.as_deref() == error).then_some(h)
    })
    .await;
    assert!(
        version.is_some(),
        "{name}: the server answered; its version is recorded"
    );
}

fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in /metrics"))
}

#[tokio::test]
async fn a_standby_is_unhealthy_in_recovery_unless_the_fleet_expects_standbys() {
    let (primary, standby) = tokio::task::spawn_blocking(primary_and_standby)
        .await
        .unwrap();
    let (primary_url, standby_url) = (primary.url("postgres"), standby.url("postgres"));
    assert!(!in_recovery(&primary_url).await);
    assert!(in_recovery(&standby_url).await, "the fixture is a standby");

    let primaries = TestDb::new().await;
    let standbys = TestDb::new().await;
    for db in [&primaries, &standbys] {
        db.insert_instance("pg-standby", "running", Some(&standby_url))
            .await;
        db.insert_instance("pg-primary", "running", Some(&primary_url))
            .await;
    }
    let svc = ServiceProc::start(&primaries, &[]).await;
    let svc_standbys = ServiceProc::start(&standbys, &["--expect-standby"]).await;

    // A fleet of primaries: the standby answers, and is unhealthy all the same.
    settles(&primaries, "pg-standby", "unhealthy", Some("in recovery")).await;
    settles(&primaries, "pg-primary", "healthy", None).await;
    // A fleet of standbys: the other way round.
    settles(&standbys, "pg-standby", "healthy", None).await;
    settles(
        &standbys,
        "pg-primary",
        "unhealthy",
        Some("not in recovery"),
    )
    .await;

    // The API shows the verdict, and the metric counts what the probes found.
    let (code, body) = svc.get("/api/instances/pg-standby/actor").await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["verdict"], "unhealthy", "{v}");
    for s in [&svc, &svc_standbys] {
        let (_, metrics) = s.get("/metrics").await;
        for in_recovery in ["true", "false"] {
            let series =
                format!("toygres_actors_probe_answers_total{{in_recovery=\"{in_recovery}\"}}");
            assert!(sample(&metrics, &series) >= 1.0, "{series}");
        }
    }
    let log = svc.log_text();
    assert!(
        log.contains("health changed") && log.contains("in recovery"),
        "the change is logged with its reason"
    );
}
