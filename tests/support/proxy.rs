//! A TCP proxy between a replica and PostgreSQL that a fault test can partition.
//!
//! - [`Proxy::black_hole`]: nothing crosses in either direction and every socket stays
//!   open, as when a network drops packets: each side sees silence, never an error (the
//!   proxy's kernel still acknowledges what it is sent, so neither side's TCP keepalive or
//!   user timeout notices: the worst case for both). What was sent meanwhile crosses after
//!   [`Proxy::heal`], as TCP's retransmissions would deliver it.
//! - [`Proxy::cut`]: every connection open now is closed at once (both sides see EOF).
//! - [`Proxy::delay`]: every chunk waits that long before it is forwarded.
//!
//! New connections are accepted in every mode (and are as partitioned as the others).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Pass,
    BlackHole,
}

#[derive(Clone, Copy, Debug)]
struct State {
    mode: Mode,
    delay: Duration,
    /// Bumped by [`Proxy::cut`]: a connection older than the current generation ends.
    generation: u64,
}

/// Where a `postgres://…@host:port/…` URL points (a proxy's upstream).
pub fn upstream_of(url: &str) -> SocketAddr {
    let host_port = url.split_once("://").map(|(_, rest)| rest).unwrap_or(url);
    let host_port = host_port
        .rsplit_once('@')
        .map(|(_, rest)| rest)
        .unwrap_or(host_port)
        .split(['/', '?'])
        .next()
        .expect("a host in the URL");
    std::net::ToSocketAddrs::to_socket_addrs(host_port)
        .expect("a resolvable host:port in the URL")
        .next()
        .expect("an address for the URL's host")
}

pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<watch::Sender<State>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listen on a free loopback port and forward every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (state, _) = watch::channel(State {
            mode: Mode::Pass,
            delay: Duration::ZERO,
            generation: 0,
        });
        let state = Arc::new(state);
        let accept = {
            let state = state.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let state = state.subscribe();
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        connection(client, server, state).await;
                    });
                }
            })
        };
        Proxy {
            addr,
            state,
            accept,
        }
    }

    /// `url` (a `postgres://…@host:port/…` URL) with its host and port replaced by the proxy's.
    pub fn url_for(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a URL");
        let (auth, rest) = match rest.split_once('@') {
            Some((auth, rest)) => (format!("{auth}@"), rest),
            None => (String::new(), rest),
        };
        let path = rest.find(['/', '?']).map(|i| &rest[i..]).unwrap_or("");
        format!("{scheme}://{auth}{}{path}", self.addr)
    }

    pub fn black_hole(&self) {
        self.state.send_modify(|s| s.mode = Mode::BlackHole);
    }

    pub fn heal(&self) {
        self.state.send_modify(|s| {
            s.mode = Mode::Pass;
            s.delay = Duration::ZERO;
        });
    }

    pub fn delay(&self, by: Duration) {
        self.state.send_modify(|s| s.delay = by);
    }

    pub fn cut(&self) {
        self.state.send_modify(|s| s.generation += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Forward both ways until either side closes or the connection is cut.
async fn connection(client: TcpStream, server: TcpStream, state: watch::Receiver<State>) {
    let born = state.borrow().generation;
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pipe(client_read, server_write, state.clone());
    let down = pipe(server_read, client_write, state.clone());
    let mut cut = state;
    let cut = async move {
        let _ = cut.wait_for(|s| s.generation != born).await;
    };
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = cut => {}
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut state: watch::Receiver<State>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Partitioned: read nothing (the sender's bytes wait in the socket buffers).
        if state.wait_for(|s| s.mode == Mode::Pass).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                // The other side's close crosses only when the network does.
                let _ = state.wait_for(|s| s.mode == Mode::Pass).await;
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        let delay = state.borrow().delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        // Read just before a partition began: held until it heals.
        if state.wait_for(|s| s.mode == Mode::Pass).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
