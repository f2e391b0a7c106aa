//! The listener: the start of an event's path.
//!
//! A dedicated connection LISTENs on `toygres_instances` (the CMS triggers),
//! `toygres_actor_control` (people and scripts; off with `--control-notify=off`),
//! `toygres_actor_restart_requested` (durable requests) and a private ping channel. It only
//! receives: instance events go to the reconcile queue, control requests to the control
//! inbox ([`crate::reconcile::ControlInbox`]), and neither waits on the database. Order on every
//! (re)connect: LISTEN → full reconcile → handle notifications, so anything committed
//! while we were away is caught by the reconcile and anything after it by a notification.
//! Notifications only *name* instances; [`crate::reconcile`] decides from the row.
//!
//! Liveness: every `ping_interval` the listener NOTIFYs itself on the ping channel and
//! expects it back within `ping_timeout`; a silent, half-open connection is dropped and
//! replaced (the round trip is exported as `notify_roundtrip_seconds`). Reconnects use
//! jittered exponential backoff; a hot standby is refused (`target_session_attrs`), logged,
//! and retried.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use uuid::Uuid;

use crate::config::{
    self, CHANNEL_CONTROL, CHANNEL_INSTANCES, CHANNEL_PING, CHANNEL_RESTART_REQUESTED,
};
use crate::hint::{Control, parse_control, parse_instance_event};
use crate::metrics;
use crate::reconcile::{Ask, ControlInbox, ReconcileQueue, Reconciler, Trigger};
use tokio_util::sync::CancellationToken;

/// What the listener shows the rest of the process (readiness, tests).
#[derive(Debug, Clone, Default)]
pub struct ListenerStatus {
    pub connected: bool,
    pub backend_pid: Option<i32>,
    pub reconnects: u64,
    /// Completed (re)connect cycles: LISTEN + full reconcile done.
    pub caught_up: u64,
}

/// Listener settings.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    pub url: String,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// Honour the raw control channel (`--control-notify`); durable restart requests are
    /// honoured either way.
    pub control_notify: bool,
}

/// Run the listener until `stop`.
pub async fn run(
    settings: ListenerSettings,
    reconciler: Arc<Reconciler>,
    queue: Arc<ReconcileQueue>,
    inbox: Arc<ControlInbox>,
    status: watch::Sender<ListenerStatus>,
    stop: CancellationToken,
) {
    let mut backoff = config::reconnect_backoff();
    let mut first = true;
    while !stop.is_cancelled() {
        if !first {
            metrics::listener_reconnect();
            status.send_modify(|s| s.reconnects += 1);
        }
        first = false;
        let ended = session(&settings, &reconciler, &queue, &inbox, &status, &stop).await;
        let connected = !matches!(ended, Err(SessionError::NotConnected(_)));
        if let Err(e) = ended {
            tracing::warn!(error = %e, "listener connection lost or refused");
        }
        // The server may have dropped every connection (a restart): the CMS pool tests the
        // ones idle since before now before their next use (crate::db).
        crate::db::connections_suspect();
        if connected {
            // The server was there a moment ago: reconnect promptly, not after the
            // backoff a string of refused connections had built up.
            backoff = config::reconnect_backoff();
        }
        metrics::listener_connected(false);
        status.send_modify(|s| {
            s.connected = false;
            s.backend_pid = None;
        });
        if stop.is_cancelled() {
            break;
        }
        let delay = backoff.next().unwrap_or(config::RECONNECT_MAX_DELAY);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => break,
        }
    }
    metrics::listener_connected(false);
}

/// How a listener session ended, when not by `stop`.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    /// It never got as far as listening (connect, LISTEN, the backend's pid).
    #[error("{0}")]
    NotConnected(String),
    /// It listened, then the connection was lost or stopped answering.
    #[error("{0}")]
    Lost(String),
}

/// One connection's life: LISTEN → full reconcile → notifications, until it fails or `stop`.
async fn session(
    settings: &ListenerSettings,
    reconciler: &Arc<Reconciler>,
    queue: &Arc<ReconcileQueue>,
    inbox: &ControlInbox,
    status: &watch::Sender<ListenerStatus>,
    stop: &CancellationToken,
) -> Result<(), SessionError> {
    let not_connected = |e: &dyn std::fmt::Display| SessionError::NotConnected(e.to_string());
    let mut s = crate::db::connect_session(
        &settings.url,
        "toygres-actors-listener",
        Duration::from_secs(10),
    )
    .await
    .map_err(|e| not_connected(&e))?;
    s.client
        .batch_execute(crate::sql::LISTEN)
        .await
        .map_err(|e| not_connected(&e))?;
    if settings.control_notify {
        s.client
            .batch_execute(crate::sql::LISTEN_CONTROL)
            .await
            .map_err(|e| not_connected(&e))?;
    }
    let pid: i32 = s
        .client
        .query_one(crate::sql::BACKEND_PID, &[])
        .await
        .map_err(|e| not_connected(&e))?
        .get(0);
    crate::db::connections_suspect();
    metrics::listener_connected(true);
    status.send_modify(|st| {
        st.connected = true;
        st.backend_pid = Some(pid);
    });
    tracing::info!(
        backend_pid = pid,
        "listener connected; reconciling everything"
    );
    // Everything committed before LISTEN took effect is caught here.
    match reconciler
        .full_reconcile(Some(queue), crate::reconcile::Mode::Act)
        .await
    {
        Ok(found) => tracing::info!(queued = found.len(), "full reconcile after connect done"),
        Err(e) => {
            tracing::warn!(error = %e, "full reconcile after connect failed; the resync timer retries")
        }
    }
    status.send_modify(|st| st.caught_up += 1);

    let mut ping = tokio::time::interval(settings.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut outstanding: Option<(String, Instant)> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            end = &mut s.closed => {
                return Err(SessionError::Lost(match end {
                    Ok(Some(e)) => format!("connection ended: {e}"),
                    _ => "connection closed by the server".into(),
                }));
            }
            n = s.notifications.recv() => {
                let Some(n) = n else { return Err(SessionError::Lost("notification stream ended".into())) };
                if n.channel() == CHANNEL_PING {
                    if let Some((nonce, sent)) = &outstanding
                        && n.payload() == nonce
                    {
                        metrics::notify_roundtrip(sent.elapsed().as_secs_f64());
                        outstanding = None;
                    }
                    continue;
                }
                handle(n.channel(), n.payload(), queue, inbox, settings);
            }
            _ = ping.tick() => {
                if let Some((_, sent)) = &outstanding
                    && sent.elapsed() > settings.ping_timeout
                {
                    return Err(SessionError::Lost(format!("ping not answered within {} ms; connection presumed dead", settings.ping_timeout.as_millis())));
                }
                if outstanding.is_none() {
                    let nonce = Uuid::new_v4().simple().to_string();
                    let sent = Instant::now();
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&CHANNEL_PING, &nonce];
                    let notify = s.client.execute(crate::sql::NOTIFY, &params);
                    match tokio::time::timeout(settings.ping_timeout, notify).await {
                        Ok(Ok(_)) => outstanding = Some((nonce, sent)),
                        Ok(Err(e)) => return Err(SessionError::Lost(format!("ping failed: {e}"))),
                        Err(_) => return Err(SessionError::Lost("ping NOTIFY timed out; connection presumed dead".into())),
                    }
                }
            }
        }
    }
}

/// Turn one notification into queued work (or count it as invalid). Never awaits: the
/// database work (looking names up, `reconcile *`, reading durable restart requests) is the
/// control worker's ([`ControlInbox`]), so a flood cannot stall the listener or its ping.
fn handle(
    channel: &str,
    payload: &str,
    queue: &ReconcileQueue,
    inbox: &ControlInbox,
    settings: &ListenerSettings,
) {
    match channel {
        CHANNEL_INSTANCES => match parse_instance_event(payload) {
            Ok(ev) => {
                metrics::notification(CHANNEL_INSTANCES, ev.op.as_str());
                queue.enqueue(
                    ev.id,
                    Trigger::Notification {
                        op: ev.op,
                        at: ev.at,
                    },
                    Ask::Reconcile,
                    ev.at,
                );
            }
            Err(reason) => invalid(CHANNEL_INSTANCES, &reason.to_string(), payload),
        },
        CHANNEL_RESTART_REQUESTED => {
            tracing::debug!("durable restart requested: handed to the control worker");
            inbox.restart_requests()
        }
        CHANNEL_CONTROL if !settings.control_notify => {
            tracing::debug!("control notification ignored (--control-notify=off)")
        }
        CHANNEL_CONTROL => match parse_control(payload) {
            Ok(Control::ReconcileAll) => {
                metrics::notification(CHANNEL_CONTROL, "reconcile");
                inbox.reconcile_all();
            }
            Ok(Control::Reconcile { name }) | Ok(Control::Restart { name, .. })
                if name.chars().count() > 255 =>
            {
                invalid(CHANNEL_CONTROL, "name longer than 255 characters", payload)
            }
            // request_actor_restart() also sends this, beside the restart-requested channel:
            // the durable request is what gets honoured (once), not a second, raw restart.
            Ok(Control::Restart {
                request_id: Some(_),
                ..
            }) => inbox.restart_requests(),
            Ok(Control::Restart { name, .. }) => {
                inbox.named(&name, Ask::Restart);
            }
            Ok(Control::Reconcile { name }) => {
                inbox.named(&name, Ask::Reconcile);
            }
            Err(reason) => invalid(CHANNEL_CONTROL, &reason.to_string(), payload),
        },
        other => tracing::debug!(channel = other, "notification on an unexpected channel"),
    }
}

fn invalid(channel: &'static str, reason: &str, payload: &str) {
    metrics::invalid_notification(channel);
    // Escaped and cut: a payload's newline cannot start a log line of its own. A flood is
    // summarised, not logged line by line.
    if crate::quiet::INVALID_NOTIFICATIONS.admit() {
        tracing::warn!(channel, reason, payload = %crate::redact::for_log(payload, 120), "invalid notification ignored");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_sql_names_every_channel() {
        for ch in [CHANNEL_INSTANCES, CHANNEL_RESTART_REQUESTED, CHANNEL_PING] {
            assert!(
                crate::sql::LISTEN.contains(&format!("LISTEN {ch};")),
                "{ch}"
            );
        }
        assert!(crate::sql::LISTEN_CONTROL.contains(&format!("LISTEN {CHANNEL_CONTROL};")));
    }
}
