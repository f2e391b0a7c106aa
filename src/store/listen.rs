//! The wake-up of other processes' enqueues: LISTEN on the queue trigger's channel.

use std::sync::Arc;

use super::Store;
use crate::config;

/// LISTEN for wake-ups from other processes until `cancel`; every (re)connect wakes both
/// lanes (what was notified while we were away is not lost, only late). The connection is
/// one of its own (`cms`'s settings, not a slot of its pool).
pub async fn listen(
    store: Arc<Store>,
    cms: sqlx::PgPool,
    cancel: tokio_util::sync::CancellationToken,
) {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with((*cms.connect_options()).clone());
    drop(cms);
    let mut delay = config::RECONNECT_MIN_DELAY;
    while !cancel.is_cancelled() {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %crate::redact::redact_error(&e.to_string()), "store wake listener: connect failed");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(config::RECONNECT_MAX_DELAY);
                continue;
            }
        };
        if let Err(e) = listener.listen(config::CHANNEL_STORE_WAKE).await {
            tracing::debug!(error = %crate::redact::redact_error(&e.to_string()), "store wake listener: LISTEN failed");
            continue;
        }
        delay = config::RECONNECT_MIN_DELAY;
        store.wake_all("reconnect");
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => return,
                n = listener.try_recv() => n,
            };
            match next {
                Ok(Some(n)) => store.on_notification(n.payload()),
                // The connection was lost: notifications may have been missed.
                Ok(None) => store.wake_all("reconnect"),
                Err(e) => {
                    tracing::debug!(error = %crate::redact::redact_error(&e.to_string()), "store wake listener lost its connection");
                    break;
                }
            }
        }
    }
}
