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

/// What can go wrong talking to the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("invalid database URL: {0}")]
    BadUrl(String),
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
        MIGRATOR.run(&mut *conn).await?;
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
