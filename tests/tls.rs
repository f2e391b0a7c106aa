//! TLS with libpq's semantics on every connection, against a private cluster with `ssl=on`
//! and a CA made here: the right CA works for the service and its probes; a wrong CA or a
//! wrong host name fails with a clear, redacted reason (exit 2 at start, 503 on `/readyz`
//! later, an unhealthy probe); `require` never falls back to plaintext; `pg_stat_ssl` shows
//! TLS on every connection the service holds.
//!
//! The cluster's pg_hba lets role `toygres` in over TLS only, and role `either` either way:
//! a test can tell which way a `toygres` connection went by whether it got in, and a
//! service running as `either` would show a plaintext connection in `pg_stat_ssl`.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::PgPool;
use support::pki::TlsServer;
use support::{ServiceProc, TestDb, wait_until};
use toygres_actors::probe::{ProbeSettings, Prober};

/// OpenSSL's reason for a chain that ends in a CA we do not trust (the server sends its CA
/// along with its certificate).
const UNTRUSTED: &str = "self-signed certificate in certificate chain";

/// In every connection string (trust authentication ignores it); never in any output.
const PW: &str = "pw-Tls-Secret-77";

static SERVER: OnceLock<TlsServer> = OnceLock::new();

fn server() -> &'static TlsServer {
    SERVER.get_or_init(|| TlsServer::start("tls"))
}

/// A URL to the TLS cluster.
fn url(user: &str, host: &str, db: &str, params: &str) -> String {
    let port = server().port;
    format!("postgres://{user}:{PW}@{host}:{port}/{db}?{params}")
}

fn verify_full(ca: &Path) -> String {
    format!("sslmode=verify-full&sslrootcert={}", ca.display())
}

/// A pool of the test's own, under an application name the service does not use.
async fn test_pool(url: &str) -> PgPool {
    let opts = toygres_actors::db::connect_options(url)
        .unwrap()
        .application_name("tls-test");
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with(opts)
        .await
        .expect("test pool")
}

/// Role `either` (a superuser that pg_hba lets in with or without TLS), once.
async fn ensure_role_either(admin: &PgPool) {
    // Tests run in parallel: a concurrent CREATE may fail; the role exists either way.
    let _ = sqlx::query("CREATE ROLE either LOGIN SUPERUSER")
        .execute(admin)
        .await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_roles WHERE rolname = 'either'")
        .fetch_one(admin)
        .await
        .unwrap();
    assert_eq!(n, 1, "role `either`");
}

/// A fresh, migrated database on the TLS cluster; the service's DATABASE_URL is `user`'s,
/// with `params`.
async fn tls_db(user: &str, params: &str) -> TestDb {
    let s = server();
    let admin = url("toygres", "localhost", "postgres", &verify_full(&s.pki.ca));
    ensure_role_either(&test_pool(&admin).await).await;
    let name = format!("tls_{}", uuid::Uuid::new_v4().simple());
    toygres_actors::db::ensure_database(&admin, &name)
        .await
        .expect("create database");
    let own = url("toygres", "localhost", &name, &verify_full(&s.pki.ca));
    let pool = test_pool(&own).await;
    toygres_actors::db::migrate(&pool).await.expect("migrate");
    TestDb {
        url: url(user, "localhost", &name, params),
        name,
        pool,
    }
}

/// Every connection of the service (application name `toygres-actors…`) in this database:
/// (application name, ssl, client certificate DN).
async fn service_connections(db: &TestDb) -> Vec<(String, bool, Option<String>)> {
    sqlx::query_as(
        "SELECT a.application_name, s.ssl, s.client_dn
           FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid
          WHERE a.datname = current_database() AND a.application_name LIKE 'toygres-actors%'
          ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

const EVERY_KIND: [&str; 5] = [
    "toygres-actors",
    "toygres-actors-duroxide",
    "toygres-actors-leader",
    "toygres-actors-listener",
    "toygres-actors-probe",
];

/// Wait until the service holds every kind of connection, then return them all.
async fn every_kind_of_connection(db: &TestDb) -> Vec<(String, bool, Option<String>)> {
    wait_until(
        "the service's pool, store, leader, listener and probe connections",
        Duration::from_secs(60),
        || async {
            let conns = service_connections(db).await;
            EVERY_KIND
                .iter()
                .all(|k| conns.iter().any(|(a, _, _)| a == k))
                .then_some(conns)
        },
    )
    .await
}

async fn health(db: &TestDb, name: &str) -> (String, Option<String>) {
    sqlx::query_as(
        "SELECT i.health_status::text,
                (SELECT h.error_message FROM toygres_cms.instance_health_checks h
                  WHERE h.instance_id = i.id ORDER BY h.checked_at DESC LIMIT 1)
           FROM toygres_cms.instances i WHERE i.k8s_name = $1",
    )
    .bind(name)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

async fn wait_health(db: &TestDb, name: &str, want: &str) -> Option<String> {
    wait_until(
        &format!("{name} {want}"),
        Duration::from_secs(60),
        || async {
            let (status, error) = health(db, name).await;
            (status == want).then_some(error)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_the_right_ca_serves_and_probes_and_every_connection_is_tls() {
    let s = server();
    let pki = &s.pki;
    let params = format!(
        "{}&sslcert={}&sslkey={}",
        verify_full(&pki.ca),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    // As `either`, whom pg_hba would let in without TLS: pg_stat_ssl shows what we chose.
    let db = tls_db("either", &params).await;
    let ca = pki.ca.display().to_string();
    let svc = ServiceProc::start(&db, &["--probe-ssl-root-cert", &ca]).await;
    wait_until("leader", Duration::from_secs(30), || async {
        svc.is_leader().await.then_some(())
    })
    .await;

    // Probe targets in the service's own database, so the connections below are ours.
    let port = s.port;
    let name = &db.name;
    // verify-full, the CA from --probe-ssl-root-cert
    let by_default = format!("postgres://either:{PW}@localhost:{port}/{name}?sslmode=verify-full");
    // verify-full, the CA named in the (key/value) string itself
    let own = format!(
        "host=localhost port={port} user=either password={PW} dbname={name} sslmode=verify-full sslrootcert='{ca}'"
    );
    // verify-full against the unrelated CA; and the right CA, but a name not in the cert
    let wrong_ca = format!(
        "postgres://toygres:{PW}@localhost:{port}/{name}?sslmode=verify-full&sslrootcert={}",
        pki.other_ca.display()
    );
    let wrong_host = format!("postgres://toygres:{PW}@127.0.0.1:{port}/{name}?sslmode=verify-full");
    db.insert_instance("pg-default-ca", "running", Some(&by_default))
        .await;
    db.insert_instance("pg-own-ca", "running", Some(&own)).await;
    db.insert_instance("pg-wrong-ca", "running", Some(&wrong_ca))
        .await;
    db.insert_instance("pg-wrong-host", "running", Some(&wrong_host))
        .await;
    wait_health(&db, "pg-default-ca", "healthy").await;
    wait_health(&db, "pg-own-ca", "healthy").await;
    let e = wait_health(&db, "pg-wrong-ca", "unhealthy")
        .await
        .unwrap_or_default();
    assert!(
        e.contains("failed verification") && e.contains(UNTRUSTED),
        "{e}"
    );
    let e = wait_health(&db, "pg-wrong-host", "unhealthy")
        .await
        .unwrap_or_default();
    assert!(
        e.contains("failed verification") && e.contains("mismatch"),
        "{e}"
    );

    // The proof: TLS on every connection the service holds, with the client certificate
    // on all but the probes (their targets name none).
    let conns = every_kind_of_connection(&db).await;
    for (app, ssl, dn) in &conns {
        assert!(ssl, "{app} is not encrypted: {conns:?}");
        if app != "toygres-actors-probe" {
            assert!(
                dn.as_deref()
                    .unwrap_or("")
                    .contains("toygres-actors-client"),
                "{app} presented no client certificate: {conns:?}"
            );
        }
    }
    let log = svc.log_text();
    assert!(!log.contains(PW), "the password leaked into the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_encrypts_every_connection_of_the_service() {
    let db = tls_db("either", "sslmode=require").await;
    let svc = ServiceProc::start(&db, &[]).await;
    wait_until("leader", Duration::from_secs(30), || async {
        svc.is_leader().await.then_some(())
    })
    .await;
    let target = format!(
        "postgres://either:{PW}@localhost:{}/{}?sslmode=require",
        server().port,
        db.name
    );
    db.insert_instance("pg-require", "running", Some(&target))
        .await;
    wait_health(&db, "pg-require", "healthy").await;
    let conns = every_kind_of_connection(&db).await;
    assert!(conns.iter().all(|(_, ssl, _)| *ssl), "{conns:?}");
}

/// The service with `url` as DATABASE_URL, until it exits (or the deadline): exit code and
/// everything it printed.
async fn run_until_exit(url: &str) -> (Option<i32>, String) {
    let log = std::env::temp_dir().join(format!("tls-exit-{}.log", uuid::Uuid::new_v4().simple()));
    let f = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_toygres-actors"))
        .args(["run", "--http", "127.0.0.1:0", "--replica", "tls-exit"])
        .env("DATABASE_URL", url)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    (code, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cms_that_fails_verification_stops_the_service_with_exit_2() {
    let s = server();
    let cases = [
        (
            "wrong CA",
            url(
                "toygres",
                "localhost",
                "postgres",
                &verify_full(&s.pki.other_ca),
            ),
            UNTRUSTED,
        ),
        (
            "wrong host name",
            url("toygres", "127.0.0.1", "postgres", &verify_full(&s.pki.ca)),
            "IP address mismatch",
        ),
        (
            "verify-full without a CA",
            url("toygres", "localhost", "postgres", "sslmode=verify-full"),
            "needs sslrootcert",
        ),
        (
            "unknown parameter",
            url("toygres", "localhost", "postgres", "sslmod=verify-full"),
            "unknown parameter `sslmod`",
        ),
    ];
    for (what, url, reason) in cases {
        let (code, out) = run_until_exit(&url).await;
        assert_eq!(
            code,
            Some(2),
            "{what}: the service must stop with exit 2:\n{out}"
        );
        assert!(
            out.contains(reason),
            "{what}: the error must say `{reason}`:\n{out}"
        );
        assert!(!out.contains(PW), "{what}: the password leaked:\n{out}");
        assert!(
            !out.contains("toygres-actors running"),
            "{what}: it started:\n{out}"
        );
    }
}

/// A server that declines TLS (answers `N` to the SSLRequest) and counts what follows: a
/// client that goes on in plaintext sends its startup message.
struct NoTlsServer {
    port: u16,
    accepted: Arc<AtomicUsize>,
    finished: Arc<AtomicUsize>,
    plaintext_startups: Arc<AtomicUsize>,
}

impl NoTlsServer {
    async fn start() -> NoTlsServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (accepted, finished, startups) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (a, f, st) = (accepted.clone(), finished.clone(), startups.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let (f, st) = (f.clone(), st.clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 8];
                    if sock.read_exact(&mut buf).await.is_ok() {
                        // SSLRequest: length 8, code 80877103
                        if buf == [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f] {
                            let _ = sock.write_all(b"N").await;
                            let mut next = [0u8; 8];
                            if sock.read_exact(&mut next).await.is_ok() {
                                st.fetch_add(1, Ordering::SeqCst);
                            }
                        } else {
                            st.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    f.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        NoTlsServer {
            port,
            accepted,
            finished,
            plaintext_startups: startups,
        }
    }

    fn url(&self, sslmode: &str) -> String {
        format!(
            "postgres://toygres:{PW}@localhost:{}/postgres?sslmode={sslmode}",
            self.port
        )
    }

    /// Plaintext startups, once every connection so far has ended.
    async fn startups_when_done(&self) -> usize {
        wait_until("the clients hung up", Duration::from_secs(10), || async {
            let a = self.accepted.load(Ordering::SeqCst);
            (a > 0 && self.finished.load(Ordering::SeqCst) == a).then_some(())
        })
        .await;
        self.plaintext_startups.load(Ordering::SeqCst)
    }
}

fn prober() -> Prober {
    Prober::new(ProbeSettings {
        connect_timeout: Duration::from_secs(5),
        query_timeout: Duration::from_secs(5),
        keep_connections: 0,
        max_concurrent: 4,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_against_a_server_without_tls_fails_and_never_falls_back() {
    // The control: `prefer` does go on in plaintext, and the fake server sees it.
    let control = NoTlsServer::start().await;
    let r = prober()
        .probe(uuid::Uuid::new_v4(), &control.url("prefer"))
        .await;
    assert!(!r.ok);
    assert_eq!(
        control.startups_when_done().await,
        1,
        "prefer goes on in plaintext"
    );

    let ca = server().pki.ca.display().to_string();
    for mode in [
        "require",
        "require&sslrootcert=",
        "verify-ca&sslrootcert=",
        "verify-full&sslrootcert=",
    ] {
        let params = if mode.ends_with('=') {
            format!("{mode}{ca}")
        } else {
            mode.to_string()
        };
        // The probe (tokio-postgres).
        let fake = NoTlsServer::start().await;
        let r = prober()
            .probe(uuid::Uuid::new_v4(), &fake.url(&params))
            .await;
        let e = r.error.unwrap_or_default();
        assert!(
            !r.ok && e.contains("server does not support TLS"),
            "{mode}: {e}"
        );
        assert!(!e.contains(PW), "{e}");
        assert_eq!(
            fake.startups_when_done().await,
            0,
            "{mode}: probe fell back"
        );
        // The leader/listener session (tokio-postgres).
        let fake = NoTlsServer::start().await;
        let e = toygres_actors::db::connect_session(
            &fake.url(&params),
            "tls-test",
            Duration::from_secs(5),
        )
        .await
        .err()
        .expect("no session without TLS")
        .to_string();
        assert!(e.contains("server does not support TLS"), "{mode}: {e}");
        assert_eq!(
            fake.startups_when_done().await,
            0,
            "{mode}: session fell back"
        );
        // The CMS pool (sqlx).
        let fake = NoTlsServer::start().await;
        let e = toygres_actors::db::cms_pool(&fake.url(&params), 1)
            .await
            .expect_err("no pool without TLS")
            .to_string();
        assert!(e.contains("server does not support TLS"), "{mode}: {e}");
        assert_eq!(fake.startups_when_done().await, 0, "{mode}: pool fell back");
    }

    // And the service: exit 2, no plaintext startup.
    let fake = NoTlsServer::start().await;
    let (code, out) = run_until_exit(&fake.url("require")).await;
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("server does not support TLS"), "{out}");
    assert_eq!(
        fake.startups_when_done().await,
        0,
        "the service fell back:\n{out}"
    );
}

/// `SELECT ssl` of the connection itself, through the session (tokio-postgres) and the
/// pool (sqlx) paths: Ok(ssl) or the error text.
async fn both_paths(url: &str) -> [Result<bool, String>; 2] {
    const SQL: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    let session =
        match toygres_actors::db::connect_session(url, "tls-test", Duration::from_secs(5)).await {
            Ok(s) => s
                .client
                .query_one(SQL, &[])
                .await
                .map(|r| r.get::<_, bool>(0))
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
    let pool = match toygres_actors::db::cms_pool(url, 1).await {
        Ok(p) => {
            let r = sqlx::query_scalar::<_, bool>(SQL)
                .fetch_one(&p)
                .await
                .map_err(|e| e.to_string());
            p.close().await;
            r
        }
        Err(e) => Err(e.to_string()),
    };
    [session, pool]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sslmode_follows_libpq_on_every_path() {
    let s = server();
    let (ca, other) = (
        s.pki.ca.display().to_string(),
        s.pki.other_ca.display().to_string(),
    );
    // `toygres` gets in over TLS only, `either` either way.
    let admin = test_pool(&url(
        "toygres",
        "localhost",
        "postgres",
        &verify_full(&s.pki.ca),
    ))
    .await;
    ensure_role_either(&admin).await;
    let loose_key = s.pki.dir.join("client-0644.key");
    std::fs::copy(&s.pki.client_key, &loose_key).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&loose_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let client = format!("sslcert={}&sslkey=", s.pki.client_cert.display());
    use Expect::*;
    enum Expect {
        Tls,
        Plain,
        Fails(&'static str),
    }
    let cases: Vec<(&str, &str, String, Expect)> = vec![
        (
            "toygres",
            "localhost",
            "sslmode=disable".into(),
            Fails("no encryption"),
        ),
        ("either", "localhost", "sslmode=disable".into(), Plain),
        ("either", "localhost", "sslmode=allow".into(), Plain),
        // allow: the server refuses plaintext, so TLS.
        ("toygres", "localhost", "sslmode=allow".into(), Tls),
        ("toygres", "localhost", "sslmode=prefer".into(), Tls),
        ("toygres", "localhost", String::new(), Tls),
        // prefer with a CA that does not verify: libpq falls back to plaintext…
        (
            "either",
            "localhost",
            format!("sslmode=prefer&sslrootcert={other}"),
            Plain,
        ),
        // …which pg_hba refuses to `toygres`.
        (
            "toygres",
            "localhost",
            format!("sslmode=prefer&sslrootcert={other}"),
            Fails("no encryption"),
        ),
        ("toygres", "127.0.0.1", "sslmode=require".into(), Tls),
        // require with a root certificate is verify-ca.
        (
            "toygres",
            "127.0.0.1",
            format!("sslmode=require&sslrootcert={ca}"),
            Tls,
        ),
        (
            "toygres",
            "localhost",
            format!("sslmode=require&sslrootcert={other}"),
            Fails(UNTRUSTED),
        ),
        (
            "toygres",
            "127.0.0.1",
            format!("sslmode=verify-ca&sslrootcert={ca}"),
            Tls,
        ),
        (
            "toygres",
            "localhost",
            format!("sslmode=verify-ca&sslrootcert={other}"),
            Fails(UNTRUSTED),
        ),
        (
            "toygres",
            "localhost",
            format!("sslmode=verify-full&sslrootcert={ca}"),
            Tls,
        ),
        (
            "toygres",
            "127.0.0.1",
            format!("sslmode=verify-full&sslrootcert={ca}"),
            Fails("IP address mismatch"),
        ),
        (
            "toygres",
            "localhost",
            format!("sslmode=verify-full&sslrootcert={other}"),
            Fails(UNTRUSTED),
        ),
        // The system's roots do not include our private CA.
        (
            "toygres",
            "localhost",
            "sslrootcert=system".into(),
            Fails("failed verification"),
        ),
        (
            "toygres",
            "localhost",
            "sslmode=verify-ca".into(),
            Fails("needs sslrootcert"),
        ),
        (
            "toygres",
            "localhost",
            format!(
                "{}&{client}{}",
                verify_full(&s.pki.ca),
                s.pki.client_key.display()
            ),
            Tls,
        ),
        (
            "toygres",
            "localhost",
            format!("{}&{client}{}", verify_full(&s.pki.ca), loose_key.display()),
            Fails("group or world access"),
        ),
        (
            "toygres",
            "localhost",
            "sslmode=verify-full&sslrootcert=/nonexistent/ca.crt".into(),
            Fails("/nonexistent/ca.crt"),
        ),
    ];
    let mut failures = Vec::new();
    for (user, host, params, expect) in &cases {
        let url = url(user, host, "postgres", params);
        for (path, got) in ["session", "pool"].iter().zip(both_paths(&url).await) {
            let ok = match (expect, &got) {
                (Tls, Ok(true)) | (Plain, Ok(false)) => true,
                (Fails(why), Err(e)) => e.contains(why) && !e.contains(PW),
                _ => false,
            };
            if !ok {
                let want = match expect {
                    Tls => "TLS".to_string(),
                    Plain => "plaintext".to_string(),
                    Fails(why) => format!("an error with `{why}`"),
                };
                failures.push(format!(
                    "{user}@{host} {params} via {path}: wanted {want}, got {got:?}"
                ));
            }
        }
    }
    // The key/value form, on both paths.
    let kv = format!(
        "host=localhost port={} user=toygres password='{PW}' dbname=postgres sslmode=verify-full sslrootcert='{ca}'",
        s.port
    );
    for (path, got) in ["session", "pool"].iter().zip(both_paths(&kv).await) {
        if got != Ok(true) {
            failures.push(format!("key/value verify-full via {path}: {got:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Wait until `/readyz` answers 503 with all of `words` in its body; the body.
async fn readyz_says(svc: &ServiceProc, words: &[&str]) -> String {
    wait_until(
        &format!("/readyz 503 saying {words:?}"),
        Duration::from_secs(30),
        || async {
            let (code, body) = svc.get("/readyz").await;
            (code == 503 && words.iter().all(|w| body.contains(w))).then_some(body)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_cannot_verify_later_makes_readyz_say_why() {
    let s = server();
    // The service trusts a copy of the CA that the test swaps for the unrelated one later,
    // as when a server's certificate is replaced by one the service does not trust.
    let trusted = s
        .pki
        .dir
        .join(format!("trusted-{}.crt", uuid::Uuid::new_v4().simple()));
    std::fs::copy(&s.pki.ca, &trusted).unwrap();
    let db = tls_db("toygres", &verify_full(&trusted)).await;
    let svc = ServiceProc::start(&db, &[]).await;
    wait_until("leader", Duration::from_secs(30), || async {
        svc.is_leader().await.then_some(())
    })
    .await;
    std::fs::copy(&s.pki.other_ca, &trusted).unwrap();

    let kill = |app: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                  WHERE datname = current_database() AND application_name = $1",
            )
            .bind(app)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    kill("toygres-actors-listener").await;
    let body = readyz_says(
        &svc,
        &[
            "listener is not connected",
            "failed verification",
            UNTRUSTED,
        ],
    )
    .await;
    assert!(!body.contains(PW), "{body}");
    kill("toygres-actors-leader").await;
    let body = readyz_says(
        &svc,
        &[
            "leader election session cannot connect",
            "failed verification",
        ],
    )
    .await;
    assert!(!body.contains(PW), "{body}");

    // Trusted again: leader again, ready again.
    std::fs::copy(&s.pki.ca, &trusted).unwrap();
    wait_until(
        "ready and leading again",
        Duration::from_secs(60),
        || async {
            let (code, body) = svc.get("/readyz").await;
            (code == 200 && body.contains("\"leader\":true")).then_some(())
        },
    )
    .await;
}
