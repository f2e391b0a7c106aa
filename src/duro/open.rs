//! Opening the Duroxide store: its URL (TLS settings and planner settings of its own), the
//! foreign-work check before anything of ours touches the schema, duroxide-pg's migrations,
//! our indexes and wake-up triggers, and the wrapper.

use std::sync::Arc;

use duroxide_pg::PostgresProvider;
use sqlx::PgPool;
use uuid::Uuid;

use super::DuroError;
use crate::config;
use crate::conn::ConnConfig;
use crate::sql;
use crate::store::Store;

/// The Duroxide store's URL (duroxide-pg takes a URL, which it gives to sqlx): the CMS
/// connection — TLS settings included, in the sqlx form of [`ConnConfig::sqlx_url`] — plus
/// planner settings for this pool only.
pub fn store_url(
    config: &ConnConfig,
    async_commit: bool,
    origin: &str,
) -> Result<String, DuroError> {
    let mut opts = format!(
        "{} -c enable_hashjoin=off -c enable_mergejoin=off -c enable_seqscan=off \
         -c enable_sort=off -c enable_bitmapscan=off",
        crate::db::service_session_options()
    );
    if async_commit {
        opts.push_str(" -c synchronous_commit=off");
    }
    // Names this process in the queue trigger's wake-ups, so that it can ignore its own
    // (it wakes itself without the round trip): see `sql/duroxide_wake.sql`.
    opts.push_str(&format!(" -c {}={origin}", config::STORE_ORIGIN_SETTING));
    config
        .sqlx_url("toygres-actors-duroxide", &opts)
        .map_err(|e| DuroError::Db(crate::db::DbError::BadUrl(e.to_string())))
}

/// Open the store (duroxide-pg applies its own migrations here), add our indexes, the
/// wake-up triggers and queue autovacuum settings, and wrap it ([`Store`]). A schema that
/// holds another runtime's work is refused before anything is written there, and the
/// wrapper gives back any foreign item its dispatchers fetch later (`store/foreign.rs`).
pub async fn open_store(
    url: &str,
    schema: &str,
    async_commit: bool,
    cms: &PgPool,
) -> Result<Arc<Store>, DuroError> {
    crate::store::refuse_foreign(cms, schema).await?;
    Ok(Arc::new(
        open_wrapped(url, schema, async_commit, cms)
            .await?
            .guarded(),
    ))
}

/// [`open_store`] without the foreign-work checks: for Duroxide's provider validation,
/// whose test orchestrations are not ours.
pub async fn open_unguarded_store(
    url: &str,
    schema: &str,
    async_commit: bool,
    cms: &PgPool,
) -> Result<Arc<Store>, DuroError> {
    Ok(Arc::new(
        open_wrapped(url, schema, async_commit, cms).await?,
    ))
}

async fn open_wrapped(
    url: &str,
    schema: &str,
    async_commit: bool,
    cms: &PgPool,
) -> Result<Store, DuroError> {
    let mut config =
        ConnConfig::parse(url).map_err(|e| crate::db::DbError::BadUrl(e.to_string()))?;
    if config.needs_preflight() {
        // As for the CMS pool: sqlx has no `allow`, and a certificate problem stops us here.
        config
            .preflight("toygres-actors-preflight")
            .await
            .map_err(|e| crate::db::DbError::Connect(e.to_string()))?;
    }
    let origin = Uuid::new_v4().simple().to_string()[..12].to_string();
    let url = store_url(&config, async_commit, &origin)?;
    let provider = PostgresProvider::new_with_schema(&url, Some(schema))
        .await
        .map_err(|e| DuroError::Provider(crate::redact::redact_error(&format!("{e:#}"))))?;
    for index in [
        sql::DUROXIDE_EXTRA_INDEX,
        sql::DUROXIDE_INSTANCE_ID_INDEX,
        sql::DUROXIDE_QUEUE_INSTANCE_INDEX,
    ] {
        let text = sql::with_duroxide_schema(index, schema);
        sqlx::query(&text).execute(cms).await?;
    }
    let wake = sql::with_duroxide_schema(sql::DUROXIDE_WAKE, schema);
    sqlx::raw_sql(&wake).execute(cms).await?;
    Ok(Store::new(Arc::new(provider), schema).with_origin(&origin))
}
