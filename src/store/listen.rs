//! The wake-up of other processes' enqueues: LISTEN on the queue trigger's channel.

use std::sync::Arc;

use super::Store;
use crate::config;

/// LISTEN for wake-ups from other processes until `cancel`; every (re)connect wakes both
/// lanes (what was notified while we were away is not lost, only late). The connection is
/// one of its own (`cms`'s settings, not a slot of its pool; `toygres-actors-wake` in
/// `pg_stat_activity`); it reconnects with the listener's backoff.
pub async fn listen(
    store: Arc<Store>,
    cms: sqlx::PgPool,
    cancel: tokio_util::sync::CancellationToken,
) {
    let options = (*cms.connect_options())
        .clone()
        .application_name("toygres-actors-wake");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(options);
    drop(cms);
    let mut backoff = config::reconnect_backoff();
    loop {
        let (e, listened) = match session(&store, &pool, &cancel).await {
            Ok(()) => return,
            Err(failure) => failure,
        };
        tracing::debug!(error = %crate::redact::redact_error(&e.to_string()), listened, "store wake listener: connection failed or lost");
        crate::db::connections_suspect();
        if listened {
            // It was up a moment ago: reconnect promptly, not after the backoff a string of
            // failed attempts had built up.
            backoff = config::reconnect_backoff();
        }
        let delay = backoff.next().unwrap_or(config::RECONNECT_MAX_DELAY);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// One connection: LISTEN, wake both lanes, then turn notifications into wake-ups. `Ok` when
/// cancelled; otherwise the error, and whether LISTEN had succeeded.
async fn session(
    store: &Store,
    pool: &sqlx::PgPool,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<(), (sqlx::Error, bool)> {
    let mut listener = tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        l = sqlx::postgres::PgListener::connect_with(pool) => l.map_err(|e| (e, false))?,
    };
    listener
        .listen(config::CHANNEL_STORE_WAKE)
        .await
        .map_err(|e| (e, false))?;
    store.wake_all("reconnect");
    crate::db::connections_suspect();
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            n = listener.try_recv() => n.map_err(|e| (e, true))?,
        };
        match next {
            Some(n) => store.on_notification(n.payload()),
            // The connection was lost (sqlx reconnects on the next call): notifications may
            // have been missed, and the server may have dropped every connection.
            None => {
                crate::db::connections_suspect();
                store.wake_all("reconnect");
            }
        }
    }
}
