//! Test harness: one PostgreSQL per test binary, a fresh database per test.
//!
//! The server is the private cluster (`embedded_pg`, in a temp dir, stopped by its guardian
//! when the test binary exits), or the one in `TEST_DATABASE_URL` / `DATABASE_URL` when set.
//! Each [`TestDb`] is a new database with the migrations applied, so tests run in parallel
//! and never see each other's rows. Waiting is done with [`wait_until`]: poll a condition
//! until a deadline, never a bare sleep.

#![allow(dead_code)]

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
