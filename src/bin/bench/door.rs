//! A TCP proxy in front of the benchmark's PostgreSQL whose door can be shut (the recovery
//! and outage scenarios cut the service off with it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;

/// A TCP proxy in front of PostgreSQL whose door can be shut: while shut, new connections
/// are refused; [`Door::shut`] with `sever` also cuts every connection through it (the
/// database gone for whoever connects through the door, while others reach it directly).
pub struct Door {
    pub port: u16,
    upstream: u16,
    open: Arc<AtomicBool>,
    relays: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Door {
    pub async fn start(upstream: u16) -> Result<Door> {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = l.local_addr()?.port();
        let open = Arc::new(AtomicBool::new(true));
        let relays: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (door, held) = (open.clone(), relays.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = l.accept().await {
                if !door.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let relay = tokio::spawn(async move {
                    if let Ok(mut out) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                if let Ok(mut v) = held.lock() {
                    v.retain(|h| !h.is_finished());
                    v.push(relay.abort_handle());
                }
            }
        });
        Ok(Door {
            port,
            upstream,
            open,
            relays,
        })
    }

    /// Refuse new connections; with `sever`, also cut every open one.
    pub fn shut(&self, sever: bool) {
        self.open.store(false, Ordering::SeqCst);
        if sever && let Ok(mut v) = self.relays.lock() {
            for h in v.drain(..) {
                h.abort();
            }
        }
    }

    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    /// `url` (of the server behind the door) through the door.
    pub fn url(&self, url: &str) -> String {
        url.replace(&format!(":{}/", self.upstream), &format!(":{}/", self.port))
    }
}
