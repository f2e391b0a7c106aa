//! Leadership: exactly one replica runs the listener and the reconciler.
//!
//! The leader holds a session-level PostgreSQL advisory lock on a connection of its own.
//! Losing that connection releases the lock on the server, so a replica that dies (even by
//! `kill -9`) is replaced by another within about [`config::LEADER_RETRY_INTERVAL`] plus
//! the time the server takes to notice (immediate for a closed socket; TCP keepalive for
//! a vanished host). The leader checks its connection every second and steps down the
//! moment it fails. Actor fencing (see [`crate::actor`]) keeps even a brief overlap from
//! producing two writing actors.

use std::time::Duration;

use tokio::sync::watch;

use crate::config;
use crate::metrics;
use tokio_util::sync::CancellationToken;

/// Run the election until `stop`; publishes whether we lead on `leading`.
pub async fn run(url: String, leading: watch::Sender<bool>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        if let Err(e) = term(&url, &leading, &stop).await {
            tracing::warn!(error = %e, "leader election connection failed");
        }
        if *leading.borrow() {
            tracing::warn!("stepped down: leadership connection lost");
        }
        leading.send_replace(false);
        metrics::leader(false);
        tokio::select! {
            _ = tokio::time::sleep(config::LEADER_RETRY_INTERVAL) => {}
            _ = stop.cancelled() => break,
        }
    }
    leading.send_replace(false);
    metrics::leader(false);
}

/// One connection: try the lock until we get it, then hold it while the connection lives.
async fn term(
    url: &str,
    leading: &watch::Sender<bool>,
    stop: &CancellationToken,
) -> Result<(), String> {
    let mut s = crate::db::connect_session(url, "toygres-actors-leader", Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    let mut tick = tokio::time::interval(config::LEADER_RETRY_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                if *leading.borrow() {
                    let _ = s.client.execute(crate::sql::ADVISORY_UNLOCK, &[&config::LEADER_LOCK_KEY]).await;
                    tracing::info!("leadership released (shutting down)");
                }
                return Ok(());
            }
            end = &mut s.closed => {
                return Err(match end {
                    Ok(Some(e)) => format!("connection ended: {e}"),
                    _ => "connection closed".into(),
                });
            }
            _ = tick.tick() => {
                let check = async {
                    if *leading.borrow() {
                        s.client.query_one(crate::sql::PING, &[]).await.map(|_| true)
                    } else {
                        s.client
                            .query_one(crate::sql::TRY_ADVISORY_LOCK, &[&config::LEADER_LOCK_KEY])
                            .await
                            .map(|row| row.get::<_, bool>(0))
                    }
                };
                match tokio::time::timeout(Duration::from_secs(3), check).await {
                    Ok(Ok(true)) => {
                        if !*leading.borrow() {
                            tracing::info!("became leader");
                            leading.send_replace(true);
                            metrics::leader(true);
                        }
                    }
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(_) => return Err("leadership check timed out".into()),
                }
            }
        }
    }
}
