//! Connections and migrations.
//!
//! Three kinds of connection reach the CMS database:
//! - the **CMS pool** (sqlx): reads rows, records health, writes decisions;
//! - the **Duroxide pool**, owned by duroxide-pg, with planner settings of its own
//!   (see [`crate::duro`]);
//! - the **listener** and **leader** connections (tokio-postgres), one each, long-lived.
//!
//! All of them (and the probes) read their connection string through [`crate::conn`]:
//! libpq's keywords and sslmode semantics, one TLS stack (native-tls).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, PgPool};

use crate::conn::ConnConfig;
use crate::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};

/// What can go wrong talking to the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sqlx(sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    BadUrl(String),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("session: {0}")]
    Session(String),
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        if lost_connection(&e) {
            connections_suspect();
        }
        DbError::Sqlx(e)
    }
}

/// Whether `e` says the connection itself is gone (not a statement's own error).
pub fn lost_connection(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_)
    ) || matches!(e, sqlx::Error::Database(d) if d.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")))
}

// ---------------------------------------------------------------------------------------
// Which pooled connections are tested before use
// ---------------------------------------------------------------------------------------
//
// sqlx tests a pooled connection with a round trip when it goes back to the pool, and by
// default again when it is taken out: two round trips around every statement, two thirds of
// what an idle service sends. The CMS pool tests at take-out only the connections that may
// have died since their last test: those back in the pool since before the last sign of
// trouble (the listener's session ended, a statement lost its connection, a server
// restart), and any idle longer than [`UNTESTED_IDLE_MAX`] (a middlebox or an idle timeout
// that drops quiet connections unseen).

/// A pooled CMS connection idle longer than this is tested before use, trouble seen or not.
pub const UNTESTED_IDLE_MAX: Duration = Duration::from_secs(30);

fn process_start() -> std::time::Instant {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *START.get_or_init(std::time::Instant::now)
}

/// Milliseconds after [`process_start`] of the last sign of trouble (0: none).
static SUSPECT_SINCE_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The server may have dropped connections (the listener's session ended, a statement lost
/// its connection): every CMS connection idle since before now is tested before its next use.
pub fn connections_suspect() {
    let ms = process_start().elapsed().as_millis() as u64 + 1;
    SUSPECT_SINCE_MS.fetch_max(ms, std::sync::atomic::Ordering::Relaxed);
}

/// Whether a pooled connection idle for `idle_for` must be tested before use.
fn needs_test(idle_for: Duration) -> bool {
    let suspect = SUSPECT_SINCE_MS.load(std::sync::atomic::Ordering::Relaxed);
    let now = process_start().elapsed().as_millis() as u64;
    needs_test_at(idle_for, now, suspect)
}

/// [`needs_test`] at `now_ms`, the last sign of trouble at `suspect_ms` (0: none), both
/// after [`process_start`].
fn needs_test_at(idle_for: Duration, now_ms: u64, suspect_ms: u64) -> bool {
    if idle_for >= UNTESTED_IDLE_MAX {
        return true;
    }
    // Back in the pool (tested on release) at or before the last sign of trouble.
    let released = now_ms.saturating_sub(idle_for.as_millis() as u64);
    suspect_ms > 0 && released <= suspect_ms
}

/// Closes the connections a pool keeps beyond its recent need. sqlx hands out its idle
/// connections first in, first out, so under light steady load (idle actors: a statement
/// every few hundred milliseconds) every connection is used in turn, none stays idle long
/// enough for the idle timeout, and a pool keeps the size of its last burst for good: 16
/// idle backends on the CMS and 8 of Duroxide's per replica, each a process on the CMS
/// server. [`PoolTrimmer::sample`] notes the connections in use (called every ten seconds
/// by the service's sweep), and [`PoolTrimmer::trim`] (every minute) closes idle ones
/// beyond the most seen in use at those samples plus [`crate::config::POOL_SPARE`]. The
/// samples are instants, not a true peak: a burst shorter than their spacing may be missed,
/// and its connections are opened again when it recurs (a connection costs a few
/// milliseconds; at most a few a minute).
pub struct PoolTrimmer {
    pool: PgPool,
    name: &'static str,
    peak: usize,
}

impl PoolTrimmer {
    /// `name` labels the pool in logs and in `toygres_actors_pool_connections_trimmed_total`.
    pub fn new(pool: PgPool, name: &'static str) -> Self {
        PoolTrimmer {
            pool,
            name,
            peak: 0,
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    fn in_use(&self) -> usize {
        (self.pool.size() as usize).saturating_sub(self.pool.num_idle())
    }

    /// Note how many connections are in use right now.
    pub fn sample(&mut self) {
        self.peak = self.peak.max(self.in_use());
    }

    /// Close the idle connections beyond the peak since the last trim plus the spare;
    /// returns how many were closed. Starts a new window.
    pub async fn trim(&mut self) -> usize {
        self.sample();
        let keep = self.peak + crate::config::POOL_SPARE;
        let before = self.pool.size();
        // Counted once: connections handed back while we close are not taken for idle ones
        // (use growing meanwhile keeps them), and the loop stops once use exceeds the peak.
        let excess = (before as usize)
            .saturating_sub(keep)
            .min(self.pool.num_idle());
        let mut closed = 0;
        while closed < excess && self.in_use() <= self.peak {
            // None: no idle connection left, or a task is waiting for one.
            let Some(conn) = self.pool.try_acquire() else {
                break;
            };
            // Closing fails only if the connection is broken already: gone either way. A
            // server that does not take the goodbye in time gets a dropped socket instead.
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
            closed += 1;
        }
        if closed > 0 {
            tracing::debug!(
                pool = self.name,
                closed,
                before,
                peak_in_use = self.peak,
                "closed idle pooled connections beyond recent need"
            );
        }
        self.peak = 0;
        closed
    }
}

/// The migrations in `migrations/`, compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Serialises concurrent `migrate` runs of several replicas (our schema creation included).
const MIGRATE_LOCK_KEY: i64 = 0x746f_7967_7265_734d;

/// sqlx connect options for a connection string (URL or key/value form, libpq keywords
/// only: see [`crate::conn`]), never echoing it (it may hold a password).
pub fn connect_options(url: &str) -> Result<PgConnectOptions, DbError> {
    let config = ConnConfig::parse(url).map_err(|e| DbError::BadUrl(e.to_string()))?;
    sqlx_options(&config, APPLICATION)
}

/// Every statement of ours is short (lookups by key, small batches, the fleet query): the
/// connection turns PostgreSQL's JIT off. With the default `jit_above_cost`, a stale row
/// estimate (the fleet query right after a burst of starts) is enough to JIT-compile, with
/// inlining and optimisation, a statement of milliseconds for a second.
pub(crate) const SESSION_OPTIONS: &str = "-c jit=off";

/// The service's own sessions (its CMS pool, the priority lane, the Duroxide store): as
/// [`SESSION_OPTIONS`], and a transaction left idle by a frozen or partitioned client is ended
/// by the server after [`crate::config::IDLE_IN_TRANSACTION_TIMEOUT`], its locks with it.
pub(crate) fn service_session_options() -> String {
    use crate::config::{
        IDLE_IN_TRANSACTION_TIMEOUT, KEEPALIVE_COUNT, KEEPALIVE_IDLE, KEEPALIVE_INTERVAL,
    };
    format!(
        "{SESSION_OPTIONS} -c idle_in_transaction_session_timeout={} -c tcp_keepalives_idle={} \
         -c tcp_keepalives_interval={} -c tcp_keepalives_count={KEEPALIVE_COUNT}",
        IDLE_IN_TRANSACTION_TIMEOUT.as_millis(),
        KEEPALIVE_IDLE.as_secs(),
        KEEPALIVE_INTERVAL.as_secs(),
    )
}

fn sqlx_options(config: &ConnConfig, application: &str) -> Result<PgConnectOptions, DbError> {
    sqlx_options_with(config, application, SESSION_OPTIONS)
}

fn sqlx_options_with(
    config: &ConnConfig,
    application: &str,
    session_options: &str,
) -> Result<PgConnectOptions, DbError> {
    let url = config
        .sqlx_url(application, session_options)
        .map_err(|e| DbError::BadUrl(e.to_string()))?;
    url.parse::<PgConnectOptions>()
        .map(|o| o.log_statements(tracing::log::LevelFilter::Trace))
        .map_err(|e| DbError::BadUrl(crate::redact::redact_error(&e.to_string())))
}

/// The CMS pool. With `allow` or a verifying sslmode, one connection of our own goes first
/// ([`ConnConfig::preflight`]): a certificate problem is then reported in our words before
/// the pool exists. Every connection of the pool trusts the CAs of `sslrootcert` alone
/// (through the TLS bridge, see [`crate::conn`]).
pub async fn cms_pool(url: &str, max_connections: u32) -> Result<PgPool, DbError> {
    cms_pool_with(url, max_connections, false, APPLICATION, None).await
}

/// The service's CMS pool: as [`cms_pool`], but a connection is tested before use only when
/// it may have died since its last test (see [`connections_suspect`]). Only for a process
/// whose long-lived sessions report trouble (the service's listener, leader session and
/// store wake listener).
pub async fn watched_cms_pool(url: &str, max_connections: u32) -> Result<PgPool, DbError> {
    cms_pool_with(url, max_connections, true, APPLICATION, None).await
}

/// The priority lane's own CMS connections ([`crate::reconcile::PriorityLane`]), watched as
/// the service's pool is; `toygres-actors-lane` in `pg_stat_activity`. Explicit restarts
/// are rare: a lane connection idle for [`crate::config::LANE_IDLE_TIMEOUT`] is closed (sqlx's
/// default keeps one 10 minutes), so an idle service holds none; the next restart pays one
/// connect.
pub async fn lane_cms_pool(url: &str, max_connections: u32) -> Result<PgPool, DbError> {
    cms_pool_with(
        url,
        max_connections,
        true,
        "toygres-actors-lane",
        Some(crate::config::LANE_IDLE_TIMEOUT),
    )
    .await
}

const APPLICATION: &str = "toygres-actors";

async fn cms_pool_with(
    url: &str,
    max_connections: u32,
    watched: bool,
    application: &str,
    idle_timeout: Option<Duration>,
) -> Result<PgPool, DbError> {
    let mut config = ConnConfig::parse(url).map_err(|e| DbError::BadUrl(e.to_string()))?;
    if config.needs_preflight() {
        config
            .preflight("toygres-actors-preflight")
            .await
            .map_err(|e| DbError::Connect(e.to_string()))?;
    }
    // The service's pools (watched) bound a transaction its client left idle.
    let opts = if watched {
        sqlx_options_with(&config, application, &service_session_options())?
    } else {
        sqlx_options(&config, application)?
    };
    process_start();
    let mut options = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10));
    if let Some(idle) = idle_timeout {
        options = options.idle_timeout(idle);
    }
    if watched {
        options = options
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if needs_test(meta.idle_for) {
                        // A failed test discards the connection; the pool takes another.
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            });
    }
    Ok(options.connect_with(opts).await?)
}

/// Apply `migrations/` (idempotent; safe to run from several replicas at once).
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    let mut conn = pool.acquire().await?;
    sqlx::query(crate::sql::ADVISORY_LOCK)
        .bind(MIGRATE_LOCK_KEY)
        .execute(&mut *conn)
        .await?;
    let result = async {
        conn.execute(crate::sql::ENSURE_ACTORS_SCHEMA).await?;
        conn.execute(crate::sql::SEARCH_PATH_ACTORS).await?;
        // A later release's migrations (applied first in a rolling upgrade, see
        // docs/operations.md, "Upgrade and rollback") are not an error: this release keeps
        // running beside them.
        let mut migrator = sqlx::migrate!("./migrations");
        migrator.set_ignore_missing(true);
        migrator.run(&mut *conn).await?;
        Ok::<_, DbError>(())
    }
    .await;
    // The connection goes back to the pool: leave it as we found it.
    let _ = conn.execute(crate::sql::RESET_SEARCH_PATH).await;
    let _ = sqlx::query(crate::sql::ADVISORY_UNLOCK)
        .bind(MIGRATE_LOCK_KEY)
        .execute(&mut *conn)
        .await;
    result
}

/// Create `database` on the server of `admin_url` when it does not exist yet.
pub async fn ensure_database(admin_url: &str, database: &str) -> Result<(), DbError> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(connect_options(admin_url)?)
        .await?;
    let exists: bool = sqlx::query_scalar(crate::sql::DATABASE_EXISTS)
        .bind(database)
        .fetch_one(&pool)
        .await?;
    if !exists {
        let quoted = format!("\"{}\"", database.replace('"', "\"\""));
        match pool
            .execute(format!("CREATE DATABASE {quoted}").as_str())
            .await
        {
            Ok(_) => {}
            // Someone else created it between our check and our create.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e.into()),
        }
    }
    pool.close().await;
    Ok(())
}

/// A long-lived tokio-postgres session (listener, leader lock): the client, the
/// notifications the server pushes, and a signal when the connection ends.
pub struct PgSession {
    pub client: tokio_postgres::Client,
    pub notifications: tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
    /// Resolves (with the redacted error, if any) when the connection has ended.
    pub closed: tokio::sync::oneshot::Receiver<Option<String>>,
}

/// Open a session to a writable server (`target_session_attrs=read-write`: a hot standby
/// is refused), with TCP keepalives and a bounded connect time. TLS as the connection
/// string says ([`crate::conn`]). The outcome is recorded per `application` for `/readyz`
/// ([`session_fault`]).
pub async fn connect_session(
    url: &str,
    application: &str,
    timeout: Duration,
) -> Result<PgSession, DbError> {
    let result = open_session(url, application, timeout).await;
    record_session(application, result.as_ref().err().map(|e| e.to_string()));
    result
}

async fn open_session(
    url: &str,
    application: &str,
    timeout: Duration,
) -> Result<PgSession, DbError> {
    use tokio_postgres::config::TargetSessionAttrs;
    let conn = ConnConfig::parse(url).map_err(|e| DbError::BadUrl(e.to_string()))?;
    let mut config = conn.tokio_config();
    config
        .application_name(application)
        .connect_timeout(timeout)
        .keepalives(true)
        .keepalives_idle(crate::config::KEEPALIVE_IDLE)
        .keepalives_interval(crate::config::KEEPALIVE_INTERVAL)
        .keepalives_retries(crate::config::KEEPALIVE_COUNT)
        .tcp_user_timeout(crate::config::TCP_USER_TIMEOUT)
        .target_session_attrs(TargetSessionAttrs::ReadWrite);
    let (client, connection, _) = match tokio::time::timeout(timeout, conn.connect(&config)).await {
        Err(_) => {
            return Err(DbError::Session(format!(
                "connect timed out after {} ms",
                timeout.as_millis()
            )));
        }
        Ok(Err(e)) => return Err(DbError::Session(e.to_string())),
        Ok(Ok(c)) => c,
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(drive(connection, tx, closed_tx));
    Ok(PgSession {
        client,
        notifications: rx,
        closed: closed_rx,
    })
}

/// The last connect failure of each kind of session (by application name), cleared by the
/// next success: `/readyz` reports it, so a replica whose leader or listener session cannot
/// connect (a certificate that no longer verifies, say) does not look ready.
static SESSION_FAULTS: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());

fn record_session(application: &str, fault: Option<String>) {
    let mut faults = SESSION_FAULTS.lock().unwrap_or_else(|p| p.into_inner());
    match fault {
        Some(f) => {
            faults.insert(application.to_string(), f);
        }
        None => {
            faults.remove(application);
        }
    }
}

/// Why the last attempt to open the `application` session failed, if it did.
pub fn session_fault(application: &str) -> Option<String> {
    SESSION_FAULTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(application)
        .cloned()
}

/// Poll a connection: forward notifications, report how it ended.
async fn drive<S, T>(
    mut conn: tokio_postgres::Connection<S, T>,
    tx: tokio::sync::mpsc::UnboundedSender<tokio_postgres::Notification>,
    closed: tokio::sync::oneshot::Sender<Option<String>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut stream = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
    let end = loop {
        match futures::StreamExt::next(&mut stream).await {
            Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                let _ = tx.send(n);
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break Some(crate::redact::redact_error(&e.to_string())),
            None => break None,
        }
    };
    let _ = closed.send(end);
}
/// The database a command works on: the given URL, or a private cluster.
pub struct Database {
    pub url: String,
    /// Holds the private cluster alive; dropping it stops the cluster.
    pub embedded: Option<EmbeddedPostgres>,
}

/// Database name used inside the private cluster.
pub const EMBEDDED_DATABASE: &str = "toygres";

/// Resolve the CMS database: `DATABASE_URL`, or start the private cluster under `data_dir`.
pub async fn open_database(global: &crate::settings::GlobalArgs) -> anyhow::Result<Database> {
    if let Some(url) = &global.database_url {
        return Ok(Database {
            url: url.clone(),
            embedded: None,
        });
    }
    let opts = EmbeddedOptions::persistent(global.data_dir.join("pg"));
    let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&opts)).await??;
    ensure_database(&pg.url("postgres"), EMBEDDED_DATABASE).await?;
    Ok(Database {
        url: pg.url(EMBEDDED_DATABASE),
        embedded: Some(pg),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connections_that_may_have_died_are_tested() {
        let ms = Duration::from_millis;
        // No trouble seen: untested unless idle long.
        assert!(!needs_test_at(ms(5_000), 60_000, 0));
        assert!(needs_test_at(UNTESTED_IDLE_MAX, 60_000, 0));
        // Trouble at 50 s: back in the pool at 55 s (tested on release since) → untested;
        // back at 45 s or at 50 s → tested.
        assert!(!needs_test_at(ms(5_000), 60_000, 50_000));
        assert!(needs_test_at(ms(15_000), 60_000, 50_000));
        assert!(needs_test_at(ms(10_000), 60_000, 50_000));
    }
}
