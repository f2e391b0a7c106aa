//! The lease table's statements (`toygres_actors.probe_leases`; the SQL in `sql/`): take a
//! new actor's lease, renew it as its actor, release it when the actor exits.

use sqlx::PgPool;
use uuid::Uuid;

use crate::db::DbError;
use crate::sql;

/// Who holds an instance's probe lease after [`for_actor`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    pub name: String,
    pub epoch: i64,
}

impl LeaseHolder {
    /// The holder a lease statement returned as (holder, holder_epoch): `None` when it
    /// returned NULLs (the row no longer names the actor, or no lease was asked for).
    pub fn from_columns(name: Option<String>, epoch: Option<i64>) -> Option<Self> {
        Some(LeaseHolder {
            name: name?,
            epoch: epoch?,
        })
    }

    /// Whether the holder is the replica `me` (name, epoch).
    pub fn is(&self, me: (&str, i64)) -> bool {
        self.name == me.0 && self.epoch == me.1
    }
}

/// Whose an instance's probe lease is after [`for_actor`] records an actor as its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This replica takes it, even from a live holder (a new actor's first lease, a stale
    /// actor re-leased).
    Take,
    /// A live holder keeps it; a missing one is created for this replica (a renewal, a state
    /// change: a hint anyone can forge never moves a lease).
    KeepHolder,
}

/// Record `actor_id` as the owner of the instance's probe lease — only while the row names
/// that actor. [`Claim::Take`]: a new actor's first lease goes to this replica; otherwise (a renewal)
/// the holder keeps it (under its name's live epoch, if it registered again) and a missing
/// one is created for this replica — a dead holder's lease is claimed by the replica ticks
/// (`migrations/0007`). Returns the holder afterwards, or `None` when the row no longer
/// names the actor.
pub async fn for_actor(
    db: impl sqlx::PgExecutor<'_>,
    instance: Uuid,
    actor_id: &str,
    me: (&str, i64),
    owner_ttl: std::time::Duration,
    claim: Claim,
) -> Result<Option<LeaseHolder>, DbError> {
    let row: (Option<String>, Option<i64>) = sqlx::query_as(sql::LEASE_FOR_ACTOR)
        .bind(instance)
        .bind(actor_id)
        .bind(me.0)
        .bind(me.1)
        .bind(owner_ttl.as_secs_f64())
        .bind(claim == Claim::Take)
        .fetch_one(db)
        .await?;
    Ok(LeaseHolder::from_columns(row.0, row.1))
}

/// The actor's own renewal: [`for_actor`] (never taking a holder's lease) plus
/// how late the renewal ran against its due time (`renew_every` after the previous one;
/// `None` on an actor's first renewal).
pub async fn renew(
    pool: &PgPool,
    instance: Uuid,
    actor_id: &str,
    me: (&str, i64),
    owner_ttl: std::time::Duration,
    renew_every: std::time::Duration,
) -> Result<(Option<LeaseHolder>, Option<f64>), DbError> {
    let row: (Option<String>, Option<i64>, Option<f64>) = sqlx::query_as(sql::RENEW_LEASE)
        .bind(instance)
        .bind(actor_id)
        .bind(me.0)
        .bind(me.1)
        .bind(owner_ttl.as_secs_f64())
        .bind(false)
        .bind(renew_every.as_secs_f64())
        .fetch_one(pool)
        .await?;
    Ok(match LeaseHolder::from_columns(row.0, row.1) {
        Some(holder) => (Some(holder), row.2),
        None => (None, None),
    })
}

/// Drop the probe lease row of `instance` if it still names `actor_id` (the actor exited).
pub async fn release(pool: &PgPool, instance: Uuid, actor_id: &str) -> Result<(), DbError> {
    sqlx::query(sql::RELEASE_LEASE)
        .bind(instance)
        .bind(actor_id)
        .execute(pool)
        .await?;
    Ok(())
}
