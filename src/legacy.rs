//! The legacy store: where toygres' own server runs Duroxide (`--legacy-duroxide-schema`,
//! default `toygres_duroxide`), and the instance actors that live there.
//!
//! toygres' create flow starts an instance actor `actor-<k8s_name>` and writes its id on the
//! row; its restart API starts another and overwrites the column. A deployment of ours whose
//! store used to be that schema left its own actors there too. Either kind is *adopted*: our
//! actor is started (fenced, a start like any other, the row's id swapped compare-and-set) and
//! the legacy one retired — toygres' actor cancelled through a Duroxide client on that schema,
//! which toygres' own runtime carries out; one of ours deleted there outright, as no runtime of
//! ours runs there any more. No runtime of ours ever runs on the legacy schema, nothing is
//! migrated there (the client verifies the schema, never changes it), and nothing but instance
//! actors is read or touched. The grants our role needs on that schema are in docs/operations.md
//! ("Database privileges").

use std::collections::HashMap;
use std::sync::Arc;

use duroxide::Client;
use duroxide_pg::{MigrationPolicy, PostgresProvider, ProviderConfig};
use sqlx::PgPool;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::config;
use crate::conn::ConnConfig;
use crate::duro::DuroError;
use crate::sql;
use crate::store::foreign::undefined_table;

pub use crate::actor_state::{LegacyActor, LegacyKind};

/// Every live legacy actor, by the CMS instance it serves (`None`: no row matches it).
pub type LegacyByInstance = HashMap<Option<Uuid>, Vec<LegacyActor>>;

/// The legacy store: read with our CMS pool, written through a Duroxide client.
pub struct Legacy {
    schema: String,
    url: String,
    /// Opened on first use (toygres' server may create its schema after we start).
    client: Mutex<Option<Client>>,
    /// When the schema was last found missing: looked for again after
    /// [`config::LEGACY_RECHECK`], so that a deployment without toygres' server does not
    /// send PostgreSQL a failing statement (an ERROR in its log) every fleet poll.
    absent_since: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Legacy {
    pub fn new(url: &str, schema: &str) -> Arc<Legacy> {
        Arc::new(Legacy {
            schema: schema.to_string(),
            url: url.to_string(),
            client: Mutex::new(None),
            absent_since: std::sync::Mutex::new(None),
        })
    }

    /// Whether the legacy store exists, as last seen while it did not (the fleet polls).
    async fn present_cached(&self, pool: &PgPool) -> Result<bool, DuroError> {
        {
            let absent = self.absent_since.lock().unwrap_or_else(|p| p.into_inner());
            if absent.is_some_and(|t| t.elapsed() < config::LEGACY_RECHECK) {
                return Ok(false);
            }
        }
        self.present(pool).await
    }

    /// Whether the legacy store exists now (one instance's lookup, which is rare: its row
    /// names an id our store does not know).
    async fn present(&self, pool: &PgPool) -> Result<bool, DuroError> {
        let found: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(format!("{}.executions", self.schema))
            .fetch_one(pool)
            .await?;
        *self.absent_since.lock().unwrap_or_else(|p| p.into_inner()) =
            (!found).then(std::time::Instant::now);
        Ok(found)
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    fn error(&self, message: impl std::fmt::Display) -> DuroError {
        DuroError::Legacy {
            schema: self.schema.clone(),
            message: crate::redact::redact_error(&message.to_string()),
        }
    }

    /// Every instance actor alive in the legacy store, by instance (the fleet-wide resync).
    /// Empty while the schema does not exist.
    pub async fn live(&self, pool: &PgPool) -> Result<LegacyByInstance, DuroError> {
        if !self.present_cached(pool).await? {
            return Ok(LegacyByInstance::new());
        }
        let rows: Result<Vec<(String, String, Option<Uuid>)>, sqlx::Error> =
            sqlx::query_as(&sql::with_legacy_schema(sql::LEGACY_ACTORS, &self.schema))
                .bind(config::LEGACY_ACTOR_ORCHESTRATIONS)
                .fetch_all(pool)
                .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) if undefined_table(&e) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let mut by_instance = LegacyByInstance::new();
        for (actor_id, orchestration, instance) in rows {
            by_instance
                .entry(instance)
                .or_default()
                .push(LegacyActor::found(actor_id, &orchestration));
        }
        Ok(by_instance)
    }

    /// Which of `ids` (one instance's: the id its row names, `actor-<k8s_name>`) are alive
    /// in the legacy store.
    pub async fn live_named(
        &self,
        pool: &PgPool,
        ids: &[String],
    ) -> Result<Vec<LegacyActor>, DuroError> {
        if !self.present(pool).await? {
            return Ok(Vec::new());
        }
        let rows: Result<Vec<(String, String)>, sqlx::Error> = sqlx::query_as(
            &sql::with_legacy_schema(sql::LEGACY_ACTORS_NAMED, &self.schema),
        )
        .bind(config::LEGACY_ACTOR_ORCHESTRATIONS)
        .bind(ids)
        .fetch_all(pool)
        .await;
        match rows {
            Ok(rows) => Ok(rows
                .into_iter()
                .map(|(actor_id, orchestration)| LegacyActor::found(actor_id, &orchestration))
                .collect()),
            Err(e) if undefined_table(&e) => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// A client on the legacy schema: verified, never migrated.
    async fn client(&self) -> Result<Client, DuroError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let mut config = ConnConfig::parse(&self.url).map_err(|e| self.error(e))?;
        if config.needs_preflight() {
            // As for the CMS pool: `allow`, and `prefer` with a root certificate, settled.
            config
                .preflight("toygres-actors-preflight")
                .await
                .map_err(|e| self.error(e))?;
        }
        let url = config
            .sqlx_url("toygres-actors-legacy", crate::db::SESSION_OPTIONS)
            .map_err(|e| self.error(e))?;
        let mut provider_config = ProviderConfig::url(url);
        provider_config.schema_name = Some(self.schema.clone());
        provider_config.migration_policy = MigrationPolicy::VerifyOnly;
        let provider = PostgresProvider::new_with_config(provider_config)
            .await
            .map_err(|e| self.error(format!("{e:#}")))?;
        let client = Client::new(Arc::new(provider));
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Retire a legacy actor: toygres' cancelled (its runtime carries the cancel out), ours
    /// deleted outright. Idempotent.
    pub async fn retire(&self, actor: &LegacyActor, reason: &str) -> Result<(), DuroError> {
        let client = self.client().await?;
        match actor.kind {
            LegacyKind::Toygres => client
                .cancel_instance(&actor.actor_id, reason)
                .await
                .map_err(|e| self.error(e)),
            LegacyKind::Ours => client
                .delete_instance(&actor.actor_id, true)
                .await
                .map(|_| ())
                .map_err(|e| self.error(e)),
        }
    }
}
