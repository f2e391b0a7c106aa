//! Foreign work: what a Duroxide store holds that this service does not register.
//!
//! Two Duroxide runtimes on one store fetch each other's work: each abandons what it does not
//! register, with a growing backoff, until Duroxide poisons the item (10 fetches). toygres'
//! own server runs its runtime on `toygres_duroxide`; ours runs on a schema of its own. So a
//! store that holds foreign work is another runtime's, and we keep out of it:
//!
//! - at start, [`refuse_foreign`] fails (the service exits 2) naming what it found and the flag
//!   to use, before anything of ours touches the schema;
//! - a running dispatcher that fetches a foreign item anyway (someone pointed another runtime
//!   at our store) gives it back at once with its attempt uncounted, and the store's dispatchers
//!   hold off — no fetch at all — until a check finds the store clean again
//!   ([`ForeignGuard`]), so the item is neither delayed by a backoff of ours nor poisoned.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use duroxide::providers::{OrchestrationItem, Provider, ProviderError, WorkItem};
use duroxide_pg::PostgresProvider;
use sqlx::PgPool;

use crate::config;
use crate::metrics;
use crate::sql;

/// A name of foreign work in a store, and how many items carry it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ForeignWork {
    pub name: String,
    pub items: i64,
}

/// The store holds another runtime's work.
#[derive(Debug, thiserror::Error)]
#[error(
    "the Duroxide store in schema `{schema}` holds work this service does not register: {found}. \
     It is another runtime's store (toygres' own server runs on `toygres_duroxide`); two runtimes \
     on one store fetch, delay and poison each other's work. Give this service a schema of its \
     own with --duroxide-schema (TOYGRES_ACTORS_DUROXIDE_SCHEMA; default `{default}`)"
)]
pub struct ForeignStore {
    pub schema: String,
    pub found: String,
    pub default: &'static str,
}

/// Why a store was not opened.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    Foreign(#[from] ForeignStore),
    #[error("checking the Duroxide store for foreign work: {0}")]
    Db(#[from] sqlx::Error),
}

/// "name (n items), …", at most a handful of names.
pub fn describe(found: &[ForeignWork]) -> String {
    let mut parts: Vec<String> = found
        .iter()
        .take(5)
        .map(|f| {
            format!(
                "{} ({} item{})",
                crate::redact::for_log(&f.name, 120),
                f.items,
                if f.items == 1 { "" } else { "s" }
            )
        })
        .collect();
    if found.len() > 5 {
        parts.push(format!("and {} more", found.len() - 5));
    }
    parts.join(", ")
}

/// What `schema` holds that we do not register (empty when the schema does not exist yet).
/// Every reading also sets `toygres_actors_store_foreign_items`.
pub async fn foreign_work(pool: &PgPool, schema: &str) -> Result<Vec<ForeignWork>, sqlx::Error> {
    let rows: Result<Vec<(String, i64)>, sqlx::Error> =
        sqlx::query_as(&sql::with_duroxide_schema(sql::FOREIGN_WORK, schema))
            .bind(config::REGISTERED_ORCHESTRATIONS)
            .bind(config::REGISTERED_ACTIVITIES)
            .fetch_all(pool)
            .await;
    let found: Vec<ForeignWork> = match rows {
        Ok(rows) => rows
            .into_iter()
            .map(|(name, items)| ForeignWork { name, items })
            .collect(),
        Err(e) if undefined_table(&e) => Vec::new(),
        Err(e) => return Err(e),
    };
    metrics::store_foreign_items(found.iter().map(|f| f.items).sum());
    Ok(found)
}

/// PostgreSQL's "relation does not exist" (42P01): a schema nobody created yet.
pub(crate) fn undefined_table(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "42P01")
}

/// Fail when `schema` holds foreign work (before we open, migrate or run anything there).
pub async fn refuse_foreign(pool: &PgPool, schema: &str) -> Result<(), Refused> {
    let found = foreign_work(pool, schema).await?;
    if found.is_empty() {
        return Ok(());
    }
    Err(ForeignStore {
        schema: schema.to_string(),
        found: describe(&found),
        default: config::DEFAULT_DUROXIDE_SCHEMA,
    }
    .into())
}

/// A running store's watch for foreign work its dispatchers fetched.
pub struct ForeignGuard {
    schema: String,
    /// Set when a dispatcher fetched a foreign item; cleared by a check that finds none.
    holding: AtomicBool,
    /// When the store was last checked while holding off.
    checked: Mutex<Option<Instant>>,
}

impl ForeignGuard {
    pub fn new(schema: &str) -> Self {
        Self {
            schema: schema.to_string(),
            holding: AtomicBool::new(false),
            checked: Mutex::new(None),
        }
    }

    /// Whether an orchestration of this name is ours.
    pub fn ours_orchestration(name: &str) -> bool {
        config::REGISTERED_ORCHESTRATIONS.contains(&name)
    }

    /// Whether an activity of this name is ours.
    pub fn ours_activity(name: &str) -> bool {
        config::REGISTERED_ACTIVITIES.contains(&name)
    }

    /// A dispatcher fetched (and gave back) a foreign item: hold off until the store is clean.
    pub fn found(&self, queue: &'static str, name: &str) {
        metrics::store_foreign_given_back(queue);
        if !self.holding.swap(true, Ordering::SeqCst) {
            tracing::error!(
                schema = %self.schema,
                queue,
                name = %crate::redact::for_log(name, 120),
                "foreign work in our Duroxide store: given back untouched; dispatchers hold off \
                 this store until it is gone (another runtime runs on this schema: give this \
                 service a schema of its own with --duroxide-schema)"
            );
        }
    }

    /// Whether fetches may go ahead: `true` unless holding off, in which case the store is
    /// checked again (at most every [`config::FOREIGN_RECHECK`]) and the hold lifted when
    /// it holds no foreign work any more.
    pub async fn may_fetch(&self, pool: &PgPool) -> bool {
        if !self.holding.load(Ordering::SeqCst) {
            return true;
        }
        {
            let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
            if checked.is_some_and(|t| t.elapsed() < config::FOREIGN_RECHECK) {
                return false;
            }
            *checked = Some(Instant::now());
        }
        match foreign_work(pool, &self.schema).await {
            Ok(found) if found.is_empty() => {
                self.holding.store(false, Ordering::SeqCst);
                tracing::info!(schema = %self.schema, "no foreign work left in our Duroxide store: dispatchers fetch again");
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(error = %e, "could not check the Duroxide store for foreign work");
                false
            }
        }
    }

    /// While holding off: wait a little (at most the caller's poll timeout) and say so.
    pub async fn held_off(&self, pool: &PgPool, poll_timeout: Duration) -> bool {
        if self.may_fetch(pool).await {
            return false;
        }
        tokio::time::sleep(poll_timeout.min(config::FOREIGN_RECHECK)).await;
        true
    }

    /// Give a fetched orchestration item back untouched (its attempt uncounted) when it is
    /// another runtime's ("Unknown": messages with no instance yet, which the runtime
    /// settles itself, are not foreign). Returns whether it did.
    pub async fn gave_back_orchestration(
        &self,
        inner: &PostgresProvider,
        item: &OrchestrationItem,
        token: &str,
    ) -> Result<bool, ProviderError> {
        let name = &item.orchestration_name;
        if name == "Unknown" || Self::ours_orchestration(name) {
            return Ok(false);
        }
        inner.abandon_orchestration_item(token, None, true).await?;
        self.found("orchestrator", name);
        Ok(true)
    }

    /// Give a fetched activity back untouched when it is another runtime's.
    pub async fn gave_back_work(
        &self,
        inner: &PostgresProvider,
        item: &WorkItem,
        token: &str,
    ) -> Result<bool, ProviderError> {
        let WorkItem::ActivityExecute { name, .. } = item else {
            return Ok(false);
        };
        if Self::ours_activity(name) {
            return Ok(false);
        }
        inner.abandon_work_item(token, None, true).await?;
        self.found("worker", name);
        Ok(true)
    }
}

impl super::Store {
    /// Keep out of foreign work (the service's runtime; Duroxide's provider validation runs
    /// its own test orchestrations on an unguarded store).
    pub fn guarded(mut self) -> Self {
        self.guard = Some(ForeignGuard::new(&self.schema));
        self
    }

    /// With a guard that holds off the store: wait a little and answer "nothing".
    pub(super) async fn held_off(&self, poll_timeout: std::time::Duration) -> bool {
        let pool = self.inner.pool();
        matches!(&self.guard, Some(g) if g.held_off(pool, poll_timeout).await)
    }
}
