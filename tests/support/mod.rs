//! Test harness: one PostgreSQL per test binary, a fresh database per test.
//!
//! The server is the private cluster (`embedded_pg`, in a temp dir, stopped by its guardian
//! when the test binary exits), or the one in `TEST_DATABASE_URL` / `DATABASE_URL` when set.
//! Each [`TestDb`] is a new database with the migrations applied, so tests run in parallel
//! and never see each other's rows. Waiting is done with [`wait_until`]: poll a condition
//! until a deadline, never a bare sleep.

#![allow(dead_code)]

pub mod invariants;
pub mod pki;
pub mod proxy;

use std::future::Future;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use toygres_actors::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};

pub struct Server {
    /// URL of a database on the server that tests may use to create their own.
    pub admin_url: String,
    /// The private cluster, when we started one (never dropped: the guardian stops it).
    pub embedded: Option<EmbeddedPostgres>,
}

static SERVER: OnceLock<Server> = OnceLock::new();

/// The test binary's PostgreSQL server, started on first use.
pub fn server() -> &'static Server {
    SERVER.get_or_init(|| {
        if let Some(url) = std::env::var("TEST_DATABASE_URL")
            .ok()
            .or_else(|| std::env::var("DATABASE_URL").ok())
        {
            return Server {
                admin_url: url,
                embedded: None,
            };
        }
        let opts = EmbeddedOptions::ephemeral_temp("test");
        let pg = EmbeddedPostgres::start(&opts)
            .unwrap_or_else(|e| panic!("cannot start test PostgreSQL: {e}"));
        Server {
            admin_url: pg.url("postgres"),
            embedded: Some(pg),
        }
    })
}

/// `url` with its database replaced by `db`.
pub fn url_for_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[scheme_end..].find('/').map(|i| i + scheme_end);
    let host_part = match path_start {
        Some(i) => &base[..i],
        None => base,
    };
    match query {
        Some(q) => format!("{host_part}/{db}?{q}"),
        None => format!("{host_part}/{db}"),
    }
}

/// A fresh, migrated database for one test.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    /// A new database with the migrations applied.
    pub async fn new() -> TestDb {
        let db = Self::empty().await;
        toygres_actors::db::migrate(&db.pool)
            .await
            .expect("migrations apply");
        db
    }

    /// A new database with nothing in it (for migration tests).
    pub async fn empty() -> TestDb {
        let server = server();
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        toygres_actors::db::ensure_database(&server.admin_url, &name)
            .await
            .expect("create test database");
        let url = url_for_db(&server.admin_url, &name);
        let pool = toygres_actors::db::cms_pool(&url, 8)
            .await
            .expect("connect test database");
        TestDb { name, url, pool }
    }

    /// Insert an instance row; returns its id.
    pub async fn insert_instance(
        &self,
        k8s_name: &str,
        state: &str,
        conn: Option<&str>,
    ) -> uuid::Uuid {
        sqlx::query_scalar(
            "INSERT INTO toygres_cms.instances
                 (user_name, k8s_name, postgres_version, storage_size_gb, state,
                  create_orchestration_id, dns_connection_string)
             VALUES ('tester', $1, '16', 10, $2::text::toygres_cms.instance_state, 'create-1', $3)
             RETURNING id",
        )
        .bind(k8s_name)
        .bind(state)
        .bind(conn)
        .fetch_one(&self.pool)
        .await
        .expect("insert instance")
    }
}

/// Poll `cond` until it returns `Some`, or panic with `what` after `timeout`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(5);
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

/// A probe target on the test server, with a password in it (trust auth ignores it; the
/// secrets checks look for it everywhere).
pub const TARGET_PASSWORD: &str = "pw-Zq8-never-logged";

pub fn reachable_target() -> String {
    let admin = &server().admin_url;
    match &server().embedded {
        Some(pg) => format!(
            "postgres://toygres:{TARGET_PASSWORD}@127.0.0.1:{}/postgres",
            pg.port()
        ),
        None => admin.clone(),
    }
}

/// A loopback port with nothing listening.
pub fn closed_port_target() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("postgres://toygres:{TARGET_PASSWORD}@127.0.0.1:{port}/postgres?connect_timeout=2")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TestDb {
    pub async fn scalar_i64(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }

    /// The database's clock now.
    pub async fn now(&self) -> chrono::DateTime<chrono::Utc> {
        sqlx::query_scalar("SELECT now()")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Restart requests not yet handled.
    pub async fn pending_restart_requests(&self) -> i64 {
        self.scalar_i64(
            "SELECT count(*) FROM toygres_cms.actor_restart_requests WHERE handled_at IS NULL",
        )
        .await
    }

    pub async fn actor_id(&self, name: &str) -> Option<String> {
        sqlx::query_scalar(
            "SELECT instance_actor_orchestration_id FROM toygres_cms.instances WHERE k8s_name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .unwrap()
        .flatten()
    }

    pub async fn checks_of(&self, name: &str) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM toygres_cms.instance_health_checks h
               JOIN toygres_cms.instances i ON i.id = h.instance_id WHERE i.k8s_name = $1",
        )
        .bind(name)
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    pub async fn health_of(&self, name: &str) -> (String, Option<chrono::DateTime<chrono::Utc>>) {
        sqlx::query_as("SELECT health_status::text, last_health_check FROM toygres_cms.instances WHERE k8s_name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Live (Running or queued-start) actor orchestrations of the instance, per Duroxide.
    pub async fn live_actors(&self, name: &str) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT i.instance_id FROM toygres_actors_duroxide.instances i
               JOIN toygres_actors_duroxide.executions e
                 ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
              WHERE e.status = 'Running'
                AND i.instance_id LIKE 'actor-' || (SELECT id FROM toygres_cms.instances WHERE k8s_name = $1) || '-%'",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await
        .unwrap_or_default()
    }

    /// Duroxide status of an orchestration (None when unknown).
    pub async fn orchestration_status(&self, id: &str) -> Option<(String, Option<String>)> {
        sqlx::query_as(
            "SELECT e.status, e.output FROM toygres_actors_duroxide.instances i
               JOIN toygres_actors_duroxide.executions e
                 ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
              WHERE i.instance_id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .unwrap_or(None)
    }
}

/// The real `toygres-actors` binary, running against a test database.
pub struct ServiceProc {
    pub child: Option<std::process::Child>,
    pub http: String,
    pub log: std::path::PathBuf,
    pub url: String,
    pub args: Vec<String>,
    /// Another build of the service (the previous release, for the upgrade test).
    pub bin: Option<std::path::PathBuf>,
    /// Extra environment for the process (a skewed wall clock through libfaketime).
    pub env: Vec<(String, String)>,
    /// The address the HTTP server binds (`--http`); requests go to 127.0.0.1 either way.
    pub bind: std::net::IpAddr,
}

/// Settings short enough for tests.
pub const FAST_ARGS: &[&str] = &[
    "--check-interval",
    "1s",
    "--stale-after",
    "4s",
    "--resync-interval",
    "2s",
    "--fleet-poll-interval",
    "500ms",
    "--ping-interval",
    "1s",
    "--poll-interval",
    "20ms",
    "--probe-connect-timeout",
    "2s",
    "--probe-query-timeout",
    "2s",
    "--lease-renew-interval",
    "1s",
    "--restart-min-interval",
    "0s",
];

impl ServiceProc {
    /// Start `toygres-actors run` with FAST_ARGS plus `extra`, and wait until it is ready.
    pub async fn start(db: &TestDb, extra: &[&str]) -> ServiceProc {
        Self::start_with_env(db, extra, &[]).await
    }

    /// [`ServiceProc::start`] with `env` added to the process's environment.
    pub async fn start_with_env(db: &TestDb, extra: &[&str], env: &[(&str, &str)]) -> ServiceProc {
        // `extra` overrides FAST_ARGS flag by flag.
        let mut args: Vec<String> = Vec::new();
        let mut i = 0;
        while i < FAST_ARGS.len() {
            if !extra.contains(&FAST_ARGS[i]) {
                args.push(FAST_ARGS[i].to_string());
                args.push(FAST_ARGS[i + 1].to_string());
            }
            i += 2;
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::launch(&db.url, args, None, env).await
    }

    /// Like [`ServiceProc::start`] (`extra` replacing FAST_ARGS flag by flag), with the HTTP
    /// server bound to `bind` (e.g. `0.0.0.0`) instead of 127.0.0.1.
    pub async fn start_bound(db: &TestDb, bind: std::net::IpAddr, extra: &[&str]) -> ServiceProc {
        let mut args: Vec<String> = Vec::new();
        for pair in FAST_ARGS.chunks(2) {
            if !extra.contains(&pair[0]) {
                args.extend(pair.iter().map(|s| s.to_string()));
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut s = ServiceProc::new(&db.url, args, None, Vec::new());
        s.bind = bind;
        s.spawn().await;
        s
    }

    /// Start `toygres-actors run` against `url` with the shipped defaults (every timer at its
    /// production value) plus `extra`, and wait until it is ready.
    pub async fn start_production(url: &str, extra: &[&str]) -> ServiceProc {
        Self::launch(
            url,
            extra.iter().map(|s| s.to_string()).collect(),
            None,
            Vec::new(),
        )
        .await
    }

    /// Like [`ServiceProc::start_production`], with the process's wall clock `skew` off (a
    /// libfaketime offset such as `+2m`; the monotonic clock stays true). Needs Debian's
    /// `faketime` package (scripts/test.sh installs it).
    pub async fn start_production_skewed(url: &str, extra: &[&str], skew: &str) -> ServiceProc {
        let lib = std::fs::read_dir("/usr/lib")
            .into_iter()
            .flatten()
            .flatten()
            .map(|arch| arch.path().join("faketime/libfaketimeMT.so.1"))
            .find(|p| p.exists())
            .expect("libfaketimeMT.so.1 is missing: install Debian package `faketime`");
        let lib = lib.to_string_lossy().into_owned();
        let env = vec![
            ("LD_PRELOAD".into(), lib),
            ("FAKETIME".into(), skew.into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        ];
        Self::launch(
            url,
            extra.iter().map(|s| s.to_string()).collect(),
            None,
            env,
        )
        .await
    }

    /// Like [`ServiceProc::start_production`], with extra environment (`FAILPOINTS`, say:
    /// the fail points of `src/failpoint.rs`, compiled in by the `failpoints` feature that
    /// the test command enables).
    pub async fn start_production_env(
        url: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> ServiceProc {
        Self::launch(
            url,
            extra.iter().map(|s| s.to_string()).collect(),
            None,
            env.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
        .await
    }

    /// Whether the process is stopped (SIGSTOP, or a fail point that stopped itself).
    pub fn is_stopped(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().starts_with('T'))
            })
            .unwrap_or(false)
    }

    /// Like [`ServiceProc::start_production`], with another build of the service.
    pub async fn start_binary(bin: &std::path::Path, url: &str, extra: &[&str]) -> ServiceProc {
        let args = extra.iter().map(|s| s.to_string()).collect();
        Self::launch(url, args, Some(bin.to_path_buf()), Vec::new()).await
    }

    async fn launch(
        url: &str,
        args: Vec<String>,
        bin: Option<std::path::PathBuf>,
        env: Vec<(String, String)>,
    ) -> ServiceProc {
        let mut s = ServiceProc::new(url, args, bin, env);
        s.spawn().await;
        s
    }

    fn new(
        url: &str,
        args: Vec<String>,
        bin: Option<std::path::PathBuf>,
        env: Vec<(String, String)>,
    ) -> ServiceProc {
        ServiceProc {
            child: None,
            http: String::new(),
            log: std::env::temp_dir().join(format!(
                "toygres-actors-svc-{}.log",
                uuid::Uuid::new_v4().simple()
            )),
            url: url.to_string(),
            args,
            bin,
            env,
            bind: std::net::Ipv4Addr::LOCALHOST.into(),
        }
    }

    /// Send a signal (SIGSTOP, SIGCONT, …) to the running process.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let c = self.child.as_ref().expect("running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig).expect("signal");
    }

    async fn spawn(&mut self) {
        // The same port across restarts: the replica's name (host:port) stays, as it would
        // for a restarted container, so it adopts its previous probe leases.
        let port = match self
            .http
            .rsplit(':')
            .next()
            .and_then(|p| p.parse::<u16>().ok())
        {
            Some(p) => p,
            None => free_port(),
        };
        self.http = format!("http://127.0.0.1:{port}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        // A replica name of its own unless the test names it (several replicas share a host).
        let mut named = Vec::new();
        if !self.args.iter().any(|a| a == "--replica") {
            named = vec!["--replica".to_string(), format!("svc-{port}")];
        }
        let bin = self
            .bin
            .clone()
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_toygres-actors").into());
        let child = std::process::Command::new(bin)
            .arg("run")
            .arg("--http")
            .arg(std::net::SocketAddr::new(self.bind, port).to_string())
            .args(&named)
            .args(&self.args)
            .env("DATABASE_URL", &self.url)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(
                "TOYGRES_ACTORS_LOG",
                "info,toygres_actors=debug,sqlx::postgres::notice=warn",
            )
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn toygres-actors");
        self.child = Some(child);
        let http = self.http.clone();
        let worker_only = self.args.iter().any(|a| a == "--worker-only");
        wait_until("service /readyz", Duration::from_secs(60), || {
            let http = http.clone();
            async move {
                let r = reqwest::get(format!("{http}/readyz")).await.ok()?;
                let ok = r.status().is_success();
                let v: serde_json::Value = r.json().await.ok()?;
                (ok && (worker_only || v["leader"] == true || v["leader"] == false)).then_some(())
            }
        })
        .await;
    }

    /// Start again after a stop or kill (same database, same arguments, new port).
    pub async fn restart(&mut self) {
        self.spawn().await;
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("service did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("{}{path}", self.http))
            .await
            .expect("GET");
        (r.status().as_u16(), r.text().await.unwrap())
    }

    pub async fn is_leader(&self) -> bool {
        match reqwest::get(format!("{}/readyz", self.http)).await {
            Ok(r) => r
                .json::<serde_json::Value>()
                .await
                .map(|v| v["leader"] == true)
                .unwrap_or(false),
            Err(_) => false,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServiceProc {
    fn drop(&mut self) {
        self.kill();
        if !std::thread::panicking() && std::env::var_os("TOYGRES_TEST_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!("service log kept at {}", self.log.display());
        }
    }
}

/// The library's pieces in-process (Duroxide runtime + actor control + reconciler), with no
/// leader duties: for actor tests that drive lifecycles by hand.
pub struct Stack {
    pub control: toygres_actors::duro::ActorControl,
    pub reconciler: std::sync::Arc<toygres_actors::reconcile::Reconciler>,
    pub prober: std::sync::Arc<toygres_actors::probe::Prober>,
    runtime: std::sync::Arc<duroxide::runtime::Runtime>,
    /// Stops the probe scheduler when the stack is dropped.
    _stop: tokio_util::sync::DropGuard,
}

impl Stack {
    pub async fn start(db: &TestDb, interval: Duration, unhealthy_after: u32) -> Stack {
        use std::sync::Arc;
        use toygres_actors::{check, duro, probe, reconcile};
        let store = duro::open_store(&db.url, "toygres_actors_duroxide", false, &db.pool)
            .await
            .expect("open store");
        let prober = Arc::new(probe::Prober::new(probe::ProbeSettings {
            connect_timeout: Duration::from_secs(2),
            query_timeout: Duration::from_secs(2),
            keep_connections: 16,
            max_concurrent: 16,
        }));
        let deps = Arc::new(check::ActorDeps {
            pool: db.pool.clone(),
            prober: prober.clone(),
            expect_standby: false,
            writes: toygres_actors::check_writes::CheckWrites::start(
                db.pool.clone(),
                toygres_actors::cms::CheckCommit::Async,
            ),
            first_checks: store.first_checks().clone(),
        });
        let id = Arc::new(toygres_actors::identity::ReplicaId::new("test"));
        let scheduler = Arc::new(toygres_actors::lease::CheckScheduler::new(
            id,
            deps.clone(),
            16,
        ));
        let replica = Arc::new(toygres_actors::replica::Replica::new(
            db.pool.clone(),
            scheduler.clone(),
            toygres_actors::replica::ProbeRules {
                interval,
                unhealthy_after,
                actor_states: vec!["creating".into(), "running".into()],
            },
        ));
        replica.register().await.expect("register the test replica");
        let runtime = duro::start_runtime(
            store.clone(),
            deps,
            scheduler.clone(),
            &duro::RuntimeSettings {
                orchestration_concurrency: 2,
                worker_concurrency: 4,
                poll_interval: Duration::from_millis(20),
                async_commit: false,
            },
        )
        .await;
        let control = duro::ActorControl::new(
            db.pool.clone(),
            store,
            "toygres_actors_duroxide",
            duro::ActorSettings {
                check_interval: interval,
                iterations_per_execution: 3,
                unhealthy_after,
                actor_states: vec!["creating".into(), "running".into()],
                lease_renew: Duration::from_millis(500),
            },
        );
        let stop = tokio_util::sync::CancellationToken::new();
        let stop_source = stop.clone().drop_guard();
        tokio::spawn(scheduler.clone().run(stop.clone()));
        tokio::spawn(replica.run(stop));
        let reconciler = Arc::new(reconcile::Reconciler::new(
            control.clone(),
            Duration::from_secs(300),
            "test".into(),
        ));
        Stack {
            control,
            reconciler,
            prober,
            runtime,
            _stop: stop_source,
        }
    }

    pub async fn row(&self, name: &str) -> toygres_actors::cms::InstanceRow {
        toygres_actors::cms::instance_by_name(&self.control.pool, name)
            .await
            .unwrap()
            .expect("instance exists")
    }

    pub async fn shutdown(self) {
        self.runtime.shutdown(Some(2000)).await;
    }
}

/// A TCP server on loopback that accepts connections and never answers (a probe target
/// that hangs), as a connection string with the test password.
pub async fn black_hole() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let h = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    (
        format!("postgres://toygres:{TARGET_PASSWORD}@127.0.0.1:{port}/postgres"),
        h,
    )
}

/// Print a reliability summary row and append it to `$CARGO_TARGET_TMPDIR/reliability-summary.md`.
pub fn append_reliability_row(line: &str) {
    eprintln!("{line}");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("reliability-summary.md");
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes()));
}

/// Instances with more than one live actor orchestration right now (must be none).
pub async fn doubled_live_actors(db: &TestDb) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM (
             SELECT substr(i.instance_id, 7, 36)
               FROM toygres_actors_duroxide.instances i
               JOIN toygres_actors_duroxide.executions e
                 ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
              WHERE i.orchestration_name = 'toygres::InstanceActor' AND e.status = 'Running'
              GROUP BY 1 HAVING count(*) > 1) d",
    )
    .fetch_one(&db.pool)
    .await
    .expect("count doubled actors")
}

/// Every instance is in its right state: one live actor named by the row where the state
/// calls for one, none elsewhere (deleted rows included). Returns the problems found.
pub async fn problems(db: &TestDb) -> Vec<String> {
    let rows: Vec<(uuid::Uuid, String, String, Option<String>)> = sqlx::query_as(
        "SELECT id, k8s_name, state::text, instance_actor_orchestration_id FROM toygres_cms.instances",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let live: Vec<String> = sqlx::query_scalar(
        "SELECT i.instance_id FROM toygres_actors_duroxide.instances i
           JOIN toygres_actors_duroxide.executions e
             ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
          WHERE e.status = 'Running'
         UNION ALL
         SELECT DISTINCT q.instance_id FROM toygres_actors_duroxide.orchestrator_queue q
          WHERE NOT EXISTS (SELECT 1 FROM toygres_actors_duroxide.instances i WHERE i.instance_id = q.instance_id)",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut by_instance: std::collections::HashMap<String, Vec<String>> =
        std::collections::HashMap::new();
    for a in live {
        by_instance.entry(a[6..42].to_string()).or_default().push(a);
    }
    let mut out = Vec::new();
    for (id, name, state, actor) in rows {
        let live = by_instance.remove(&id.to_string()).unwrap_or_default();
        let wanted = state == "creating" || state == "running";
        if wanted {
            if live.len() != 1 || Some(&live[0]) != actor.as_ref() {
                out.push(format!(
                    "{name} ({state}): row names {actor:?}, live {live:?}"
                ));
            }
        } else if !live.is_empty() {
            out.push(format!(
                "{name} ({state}): should have no actor, live {live:?}"
            ));
        }
    }
    for (id, live) in by_instance {
        out.push(format!("deleted instance {id}: live {live:?}"));
    }
    out
}

pub async fn converged(db: &TestDb, within: Duration) -> Duration {
    let start = Instant::now();
    let mut last = Vec::new();
    while start.elapsed() < within {
        last = problems(db).await;
        if last.is_empty() {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "did not converge within {within:?}: {} problem(s), e.g. {:?}",
        last.len(),
        &last[..last.len().min(5)]
    );
}

/// The sum of the service's /metrics series `name` that carry every label of `labels`
/// (`key="value"`); 0 when there is none.
pub async fn metric(svc: &ServiceProc, name: &str, labels: &[&str]) -> f64 {
    let (_, m) = svc.get("/metrics").await;
    m.lines()
        .filter(|l| {
            (l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
                && labels.iter().all(|x| l.contains(x))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Orchestrations of `orchestration` alive in the Duroxide store `schema` (Running, or between
/// two executions).
pub async fn alive_in(db: &TestDb, schema: &str, orchestration: &str) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {schema}.instances i
           JOIN {schema}.executions e
             ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
          WHERE i.orchestration_name = $1 AND e.status IN ('Running', 'ContinuedAsNew')"
    ))
    .bind(orchestration)
    .fetch_one(&db.pool)
    .await
    .expect("count live orchestrations")
}
