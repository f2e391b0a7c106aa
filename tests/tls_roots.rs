//! `sslrootcert` is the only trust anchor on every connection, as in libpq, even for a CA the
//! process trusts as a system root.
//!
//! The cluster's certificate is signed by CA "A" ([`Pki::ca`]); the service runs with
//! `SSL_CERT_FILE` and `SSL_CERT_DIR` pointed at A, so A is one of its system roots. A
//! connection string that names another root file (CA "B", [`Pki::other_ca`]) must then
//! refuse the server on every kind of connection: at start (exit 2), and on every later
//! connection of the sqlx pools (CMS pool, lane, Duroxide store, store wake listener), which
//! the start-up check does not cover. `sslrootcert=system` means the system's roots: A.

mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use sqlx::PgPool;
use support::pki::{Pki, TlsServer, openssl};
use support::{ServiceProc, TestDb, wait_until};
use toygres_actors::conn::ConnConfig;

/// In every connection string (trust authentication ignores it); never in any output.
const PW: &str = "pw-Roots-Secret-31";

static SERVER: OnceLock<TlsServer> = OnceLock::new();

fn server() -> &'static TlsServer {
    SERVER.get_or_init(|| TlsServer::start("tls-roots"))
}

fn pki() -> &'static Pki {
    &server().pki
}

fn url(host: &str, db: &str, params: &str) -> String {
    format!(
        "postgres://toygres:{PW}@{host}:{}/{db}?{params}",
        server().port
    )
}

fn roots(mode: &str, root: &Path) -> String {
    format!("sslmode={mode}&sslrootcert={}", root.display())
}

/// The environment that makes CA A a system root of the service: `SSL_CERT_FILE` is A, and
/// `SSL_CERT_DIR` a directory holding A under its subject hash (OpenSSL's lookup name).
fn system_trusts_a() -> Vec<(String, String)> {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let ca = pki().ca.display().to_string();
        let hash = openssl(&pki().dir, &["x509", "-hash", "-noout", "-in", &ca]);
        let dir = pki().dir.join("system-roots");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{}.0", hash.trim()));
        std::fs::copy(&pki().ca, &file).unwrap();
        // The cluster's user, as the rest of the PKI: its guardian removes the directory.
        if let Some((uid, gid)) = toygres_actors::embedded_pg::cluster_user().unwrap() {
            for p in [&dir, &file] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
            }
        }
        dir
    });
    vec![
        ("SSL_CERT_FILE".into(), pki().ca.display().to_string()),
        ("SSL_CERT_DIR".into(), dir.display().to_string()),
    ]
}

/// A fresh, migrated database on the cluster; the service's DATABASE_URL has `params`.
async fn roots_db(params: &str) -> TestDb {
    let admin = url("localhost", "postgres", &roots("verify-full", &pki().ca));
    let name = format!("roots_{}", uuid::Uuid::new_v4().simple());
    toygres_actors::db::ensure_database(&admin, &name)
        .await
        .expect("create database");
    // The test's own pool, under an application name the service does not use.
    let own = url("localhost", &name, &roots("verify-full", &pki().ca));
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with(
            toygres_actors::db::connect_options(&own)
                .unwrap()
                .application_name("tls-roots-test"),
        )
        .await
        .expect("test pool");
    toygres_actors::db::migrate(&pool).await.expect("migrate");
    TestDb {
        url: url("localhost", &name, params),
        name,
        pool,
    }
}

/// The service's sessions in this database: (application name, ssl).
async fn service_sessions(pool: &PgPool) -> Vec<(String, bool)> {
    sqlx::query_as(
        "SELECT a.application_name, s.ssl
           FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid
          WHERE a.datname = current_database() AND a.application_name LIKE 'toygres-actors%'
          ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Every kind of session the service holds on the CMS database (the probes' are on their
/// targets' database): the CMS pool, the Duroxide store, the lane, the leader and listener
/// sessions, the store's wake listener.
const EVERY_KIND: [&str; 6] = [
    "toygres-actors",
    "toygres-actors-duroxide",
    "toygres-actors-lane",
    "toygres-actors-leader",
    "toygres-actors-listener",
    "toygres-actors-wake",
];

async fn post_restart(svc: &ServiceProc, name: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{}/api/instances/{name}/actor/restart", svc.http))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Start the service on `db` as a process that trusts A as a system root; once it leads, a
/// restart through the lane, so that every kind of session is open. Asserts that every one
/// of them is TLS.
async fn start_trusting_a(db: &TestDb) -> ServiceProc {
    let env = system_trusts_a();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let svc = ServiceProc::start_with_env(db, &[], &env).await;
    wait_until("leader", Duration::from_secs(30), || async {
        svc.is_leader().await.then_some(())
    })
    .await;
    // A probe target that trusts the system's roots (A: healthy), and one that names B.
    let target = |params: &str| Some(url("localhost", "postgres", params));
    db.insert_instance(
        "pg-system",
        "running",
        target("sslrootcert=system").as_deref(),
    )
    .await;
    db.insert_instance(
        "pg-b",
        "running",
        target(&roots("verify-ca", &pki().other_ca)).as_deref(),
    )
    .await;
    wait_until("the probes' verdicts", Duration::from_secs(60), || async {
        let (a, _) = db.health_of("pg-system").await;
        let (b, _) = db.health_of("pg-b").await;
        (a == "healthy" && b == "unhealthy").then_some(())
    })
    .await;
    post_restart(&svc, "pg-system").await;
    let sessions = wait_until(
        "every kind of session of the service",
        Duration::from_secs(60),
        || async {
            let s = service_sessions(&db.pool).await;
            EVERY_KIND
                .iter()
                .all(|k| s.iter().any(|(a, _)| a == k))
                .then_some(s)
        },
    )
    .await;
    assert!(
        sessions.iter().all(|(_, ssl)| *ssl),
        "a session without TLS: {sessions:?}"
    );
    svc
}

/// A child process, killed and reaped when dropped (a test that fails leaves none behind).
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The service with `url` as DATABASE_URL, trusting A as a system root, until it exits:
/// exit code and everything it printed.
async fn run_until_exit(url: &str) -> (Option<i32>, String) {
    let log = std::env::temp_dir().join(format!(
        "tls-roots-exit-{}.log",
        uuid::Uuid::new_v4().simple()
    ));
    let f = std::fs::File::create(&log).unwrap();
    let mut child = Reaped(
        std::process::Command::new(env!("CARGO_BIN_EXE_toygres-actors"))
            .args([
                "run",
                "--http",
                "127.0.0.1:0",
                "--replica",
                "tls-roots-exit",
            ])
            .env("DATABASE_URL", url)
            .envs(system_trusts_a())
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap(),
    );
    let code = wait_until("the service to exit", Duration::from_secs(30), || {
        let status = child.0.try_wait().unwrap();
        async move { status.map(|s| s.code()) }
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    (code, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_system_root_does_not_stand_in_for_sslrootcert_at_start() {
    for mode in ["verify-ca", "verify-full"] {
        let (code, out) =
            run_until_exit(&url("localhost", "postgres", &roots(mode, &pki().other_ca))).await;
        assert_eq!(code, Some(2), "{mode}: exit 2 wanted:\n{out}");
        let named = format!("sslrootcert={}", pki().other_ca.display());
        assert!(
            out.contains("certificate failed verification") && out.contains(&named),
            "{mode}: the error must name the certificate check and the root file:\n{out}"
        );
        assert!(!out.contains(PW), "{mode}: the password leaked:\n{out}");
    }
}

/// The service starts trusting a copy of A named in its connection string; the copy then
/// becomes B and every session of the service is ended: every sqlx pool must refuse the
/// server on reconnect (A is still a system root), each saying why.
async fn later_connections_trust_only_sslrootcert(mode: &str) {
    let trusted = pki()
        .dir
        .join(format!("trusted-{}.crt", uuid::Uuid::new_v4().simple()));
    std::fs::copy(&pki().ca, &trusted).unwrap();
    let db = roots_db(&roots(mode, &trusted)).await;
    let svc = start_trusting_a(&db).await;

    std::fs::copy(&pki().other_ca, &trusted).unwrap();
    // A connection whose bridge read the file just before the copy may still be completing
    // its handshake (verified by A, rightly: it was the file's content then) and join the
    // database just after the terminate below. A session forked a second after the copy
    // can only have been verified against B.
    let swapped: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT clock_timestamp() + interval '1 second'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = current_database() AND application_name LIKE 'toygres-actors%'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    // A line of the bridge's naming the application (quoted) and the certificate problem.
    let refused = |log: &str, application: &str| {
        log.lines().any(|l| {
            l.contains("TLS bridge")
                && l.contains(application)
                && l.contains("certificate failed verification")
                && l.contains(&format!("sslrootcert={}", trusted.display()))
        })
    };
    wait_until(
        "every connection kind refusing the server",
        Duration::from_secs(60),
        || async {
            // The lane connects only for an explicit restart.
            post_restart(&svc, "pg-system").await;
            let log = svc.log_text();
            let (code, _) = svc.get("/readyz").await;
            // Sessions that joined before `swapped` are ended again (a raced one, or one
            // that reconnected at once), so that every session left forked after it.
            let (settled, older): (bool, i64) = sqlx::query_as(
                "SELECT clock_timestamp() > $1, count(pg_terminate_backend(pid))
                   FROM pg_stat_activity
                  WHERE datname = current_database()
                    AND application_name LIKE 'toygres-actors%' AND backend_start <= $1",
            )
            .bind(swapped)
            .fetch_one(&db.pool)
            .await
            .unwrap();
            let settled = settled && older == 0;
            let sqlx_kinds = [
                "toygres-actors",
                "toygres-actors-duroxide",
                "toygres-actors-lane",
                "toygres-actors-wake",
            ];
            (sqlx_kinds
                .iter()
                .all(|k| refused(&log, &format!("\"{k}\"")))
                && code == 503
                && settled
                && log.lines().any(|l| {
                    l.contains("leader election session") && l.contains("failed verification")
                }))
            .then_some(())
        },
    )
    .await;
    let back = service_sessions(&db.pool).await;
    assert!(
        back.is_empty(),
        "{mode}: sessions verified by a system root, not sslrootcert: {back:?}"
    );
    assert!(!svc.log_text().contains(PW), "{mode}: the password leaked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ca_connections_after_start_trust_only_sslrootcert() {
    later_connections_trust_only_sslrootcert("verify-ca").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_connections_after_start_trust_only_sslrootcert() {
    later_connections_trust_only_sslrootcert("verify-full").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslrootcert_system_trusts_the_system_roots_on_every_connection() {
    let db = roots_db("sslrootcert=system").await;
    // Asserts TLS on every kind of session, verified against A through the system roots.
    let svc = start_trusting_a(&db).await;
    assert!(!svc.log_text().contains(PW), "the password leaked");
}

/// A sqlx pool on the sqlx URL alone (no start-up check), in this process (whose system
/// roots do not hold A): `SELECT ssl` of its connection, or the error.
async fn sqlx_alone(url: &str) -> Result<bool, String> {
    let config = ConnConfig::parse(url).map_err(|e| e.to_string())?;
    let sqlx_url = config
        .sqlx_url("tls-roots-test", "")
        .map_err(|e| e.to_string())?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&sqlx_url)
        .await
        .map_err(|e| e.to_string())?;
    let ssl = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .map_err(|e| e.to_string());
    pool.close().await;
    ssl
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlx_url_verifies_the_host_name_and_every_root_in_the_file() {
    // B first, then A: sqlx's own TLS reads only a file's first certificate.
    let bundle = pki()
        .dir
        .join(format!("bundle-{}.crt", uuid::Uuid::new_v4().simple()));
    let mut pem = std::fs::read(&pki().other_ca).unwrap();
    pem.extend(std::fs::read(&pki().ca).unwrap());
    std::fs::write(&bundle, pem).unwrap();
    let cases: [(&str, String, Result<(), &str>); 5] = [
        ("localhost", roots("verify-full", &pki().ca), Ok(())),
        ("localhost", roots("verify-ca", &bundle), Ok(())),
        ("127.0.0.1", roots("verify-ca", &pki().ca), Ok(())),
        (
            "127.0.0.1",
            roots("verify-full", &pki().ca),
            Err("IP address mismatch"),
        ),
        (
            "localhost",
            roots("verify-ca", &pki().other_ca),
            Err("certificate failed verification"),
        ),
    ];
    let mut failures = Vec::new();
    for (host, params, want) in &cases {
        let got = sqlx_alone(&url(host, "postgres", params)).await;
        let ok = match (want, &got) {
            (Ok(()), Ok(true)) => true,
            (Err(why), Err(e)) => e.contains(why) && e.contains("sslrootcert=") && !e.contains(PW),
            _ => false,
        };
        if !ok {
            failures.push(format!("{host} {params}: wanted {want:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
