//! Leadership: exactly one replica runs the listener and the reconciler, in a numbered term.
//!
//! The leader holds a row (`toygres_actors.leader`) with a TTL of [`config::LEADER_TTL`],
//! renewed every [`config::LEADER_TICK`] by `toygres_actors.leader_tick` on a session of its
//! own; any replica takes the row over once it expired, and every takeover starts a new term
//! (River's elector, with a term number). A frozen or partitioned leader therefore loses
//! leadership within the TTL whatever the server thinks of its sockets, and its successor
//! acts within about 12 s.
//!
//! The term fences the leader's writes: the reconciler's actor-id swaps and the
//! transactions that enqueue Duroxide starts and cancels call `toygres_actors.assert_term`
//! in the same transaction (see [`crate::duro`]). A leader that wakes up after its term
//! passed writes nothing, even before this module notices: locally it also steps down as
//! soon as it cannot prove its term within the TTL (measured from before the renewal was
//! sent, on the monotonic clock).
//!
//! Rolling upgrade: releases before terms led by holding a session advisory lock. The tick
//! takes that lock too when it can and never leads while a session it does not know holds
//! it (`migrations/0004`), so there are never two reconcilers across versions. A tick reads
//! the leader row first and touches the lock only when its replica leads or takes over
//! (`migrations/0011`): a follower's tick must never look like an older release's lock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::identity::ReplicaId;
pub use crate::identity::Term;
use crate::metrics;

/// Run the election until `stop`; publishes the term we lead in (or `None`) on `leading`.
pub async fn run(
    url: String,
    id: Arc<ReplicaId>,
    leading: watch::Sender<Option<Term>>,
    stop: CancellationToken,
) {
    let mut reported_error = false;
    // Failed sessions in a row (none ticked in between): the pause before the next grows.
    let mut failures: u32 = 0;
    while !stop.is_cancelled() {
        match session(&url, &id, &leading, &stop).await {
            Ok(()) => {}
            Err(e) => {
                if e.ticked() {
                    reported_error = false;
                }
                // The server may have dropped every connection: the CMS pool tests the ones
                // idle since before now before their next use (crate::db).
                crate::db::connections_suspect();
                if !reported_error {
                    // The session ticked since the last failure: start the pauses over.
                    failures = 0;
                    tracing::warn!(error = %e, "leader election session failed; retrying");
                    reported_error = true;
                } else {
                    tracing::debug!(error = %e, failures, "leader election session failed again");
                }
            }
        }
        if stop.is_cancelled() {
            break;
        }
        step_down(&leading, "leadership session ended");
        let pause = retry_pause(failures);
        failures = failures.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.cancelled() => break,
        }
    }
    step_down(&leading, "shutting down");
}

/// The pause before reconnecting after `failures` failed sessions in a row:
/// [`config::LEADER_RETRY_FIRST`] doubled per failure, at most [`config::LEADER_RETRY_MAX`].
fn retry_pause(failures: u32) -> Duration {
    config::LEADER_RETRY_FIRST
        .saturating_mul(1u32 << failures.min(16))
        .min(config::LEADER_RETRY_MAX)
}

fn step_down(leading: &watch::Sender<Option<Term>>, why: &str) {
    if let Some(t) = leading.send_replace(None) {
        if why == "shutting down" {
            tracing::info!(term = t.term, why, "stepped down");
        } else {
            tracing::warn!(term = t.term, why, "stepped down");
        }
    }
    metrics::leader(false);
    metrics::leader_term(None);
}

/// How an election session ended, when not by `stop`.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Connect(#[from] crate::db::DbError),
    /// The session was open; `ticked`: at least one tick was answered first.
    #[error("{reason}")]
    Lost { reason: String, ticked: bool },
}

impl SessionError {
    fn ticked(&self) -> bool {
        matches!(self, SessionError::Lost { ticked: true, .. })
    }
}

/// One session: tick until it fails or `stop`; on stop, resign the term we hold.
async fn session(
    url: &str,
    id: &ReplicaId,
    leading: &watch::Sender<Option<Term>>,
    stop: &CancellationToken,
) -> Result<(), SessionError> {
    let mut s =
        crate::db::connect_session(url, "toygres-actors-leader", Duration::from_secs(5)).await?;
    let mut ticked = false;
    let lost = |reason: String, ticked: bool| SessionError::Lost { reason, ticked };
    let mut tick = tokio::time::interval(config::LEADER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Until when our term is proven (monotonic clock): renewal sent at t, TTL from t.
    let mut proven_until: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                let held = leading.borrow().clone();
                if let Some(t) = held {
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                        [&t.name, &t.epoch, &t.term];
                    let resign = s.client.execute(crate::sql::LEADER_RESIGN, &params);
                    let _ = tokio::time::timeout(Duration::from_secs(2), resign).await;
                    tracing::info!(term = t.term, "leadership resigned (shutting down)");
                }
                return Ok(());
            }
            end = &mut s.closed => {
                return Err(lost(match end {
                    Ok(Some(e)) => format!("connection ended: {e}"),
                    _ => "connection closed".into(),
                }, ticked));
            }
            _ = tick.tick() => {
                // A term we cannot prove any more is not ours, whatever comes back later.
                if proven_until.is_some_and(|u| Instant::now() >= u) {
                    step_down(leading, "could not renew the term within its TTL");
                }
                let sent = Instant::now();
                let epoch = id.epoch();
                let ttl = config::LEADER_TTL.as_secs_f64();
                let name = id.name();
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                    [&name, &epoch, &ttl, &config::LEADER_LOCK_KEY];
                let call = s.client.query_one(crate::sql::LEADER_TICK, &params);
                let term: Option<i64> = match tokio::time::timeout(config::LEADER_TICK_TIMEOUT, call).await {
                    Ok(Ok(row)) => row.get(0),
                    Ok(Err(e)) => return Err(lost(e.to_string(), ticked)),
                    Err(_) => return Err(lost("leader tick timed out".into(), ticked)),
                };
                ticked = true;
                match term {
                    Some(term) => {
                        proven_until = Some(sent + config::LEADER_TTL);
                        let next = Term { name: id.name().to_string(), epoch, term };
                        if leading.borrow().as_ref() != Some(&next) {
                            if let Some(old) = leading.borrow().as_ref() {
                                tracing::warn!(old_term = old.term, term, "our term lapsed; leading in a new term");
                            }
                            tracing::info!(term, epoch, "became leader");
                            leading.send_replace(Some(next));
                            metrics::leader(true);
                            metrics::leader_term(Some(term));
                        }
                    }
                    None => {
                        proven_until = None;
                        step_down(leading, "another replica leads");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_pauses_start_short_and_stay_short() {
        assert_eq!(retry_pause(0), Duration::from_millis(100));
        assert_eq!(retry_pause(1), Duration::from_millis(200));
        assert_eq!(retry_pause(2), Duration::from_millis(400));
        assert_eq!(retry_pause(3), config::LEADER_RETRY_MAX);
        assert_eq!(retry_pause(u32::MAX), config::LEADER_RETRY_MAX);
    }
}
