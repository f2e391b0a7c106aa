//! Connections and migrations.
//!
//! Three kinds of connection reach the CMS database:
//! - the **CMS pool** (sqlx): reads rows, records health, writes decisions;
//! - the **Duroxide pool**, owned by duroxide-pg, with planner settings of its own
//!   (see [`crate::duro`]);
//! - the **listener** and **leader** connections (tokio-postgres), one each, long-lived.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Executor, PgPool};

use crate::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};

/// What can go wrong talking to the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("invalid database URL: {0}")]
    BadUrl(String),
    #[error("session: {0}")]
    Session(String),
}

/// The migrations in `migrations/`, compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Serialises concurrent `migrate` runs of several replicas (our schema creation included).
const MIGRATE_LOCK_KEY: i64 = 0x746f_7967_7265_734d;

/// Parse a URL without ever echoing it (it may hold a password).
pub fn connect_options(url: &str) -> Result<PgConnectOptions, DbError> {
    url.parse::<PgConnectOptions>()
        .map(|o| o.log_statements(tracing::log::LevelFilter::Trace))
        .map_err(|e| DbError::BadUrl(crate::redact::redact_error(&e.to_string())))
}

/// The CMS pool.
pub async fn cms_pool(url: &str, max_connections: u32) -> Result<PgPool, DbError> {
    let opts = connect_options(url)?.application_name("toygres-actors");
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts)
        .await?;
    Ok(pool)
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
        // A later release's migrations (applied first in a rolling upgrade, see README
        // "Upgrade order") are not an error: this release keeps running beside them.
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
/// is refused), with TCP keepalives and a bounded connect time.
pub async fn connect_session(
    url: &str,
    application: &str,
    timeout: Duration,
) -> Result<PgSession, DbError> {
    use std::str::FromStr;
    use tokio_postgres::config::{SslMode, TargetSessionAttrs};
    let mut config = tokio_postgres::Config::from_str(url)
        .map_err(|e| DbError::BadUrl(crate::redact::redact_error(&e.to_string())))?;
    config
        .application_name(application)
        .connect_timeout(timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .target_session_attrs(TargetSessionAttrs::ReadWrite);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    let connect = async {
        if config.get_ssl_mode() == SslMode::Disable {
            let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(drive(conn, tx, closed_tx));
            Ok::<_, tokio_postgres::Error>(client)
        } else {
            let tls = native_tls::TlsConnector::builder()
                .danger_accept_invalid_certs(true)
                .danger_accept_invalid_hostnames(true)
                .build()
                .map(postgres_native_tls::MakeTlsConnector::new);
            match tls {
                Ok(tls) => {
                    let (client, conn) = config.connect(tls).await?;
                    tokio::spawn(drive(conn, tx, closed_tx));
                    Ok(client)
                }
                Err(_) => {
                    let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
                    tokio::spawn(drive(conn, tx, closed_tx));
                    Ok(client)
                }
            }
        }
    };
    let client = match tokio::time::timeout(timeout, connect).await {
        Err(_) => {
            return Err(DbError::Session(format!(
                "connect timed out after {} ms",
                timeout.as_millis()
            )));
        }
        Ok(Err(e)) => {
            return Err(DbError::Session(crate::redact::redact_error(
                &e.to_string(),
            )));
        }
        Ok(Ok(c)) => c,
    };
    Ok(PgSession {
        client,
        notifications: rx,
        closed: closed_rx,
    })
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
