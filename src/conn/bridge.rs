//! The TLS bridge: the TLS leg of every sqlx connection whose sslmode verifies the chain.
//!
//! sqlx 0.8 cannot make `sslrootcert` the only trust anchor: its native-tls setup adds the
//! file to OpenSSL's default roots (the system's, plus `SSL_CERT_FILE`/`SSL_CERT_DIR`), and
//! reads only the file's first certificate. So those connections never do TLS in sqlx. The
//! sqlx URL ([`ConnConfig::sqlx_url`]) names a Unix socket of ours with `sslmode=disable`;
//! for each connection sqlx opens there, the bridge connects to the real server, sends
//! PostgreSQL's SSLRequest, does the handshake with the connector the probes use
//! ([`super::tls::connector_for`]: the file's CAs alone, the host name under `verify-full`,
//! the client certificate) and then copies bytes both ways. sqlx's startup, authentication
//! and queries pass through unchanged; the server sees a TLS session.
//!
//! When the server cannot be reached or fails verification, the bridge answers sqlx's startup
//! with a FATAL error whose message is ours (the certificate check that failed, with the
//! host, sslmode and sslrootcert): SQLSTATE 57P03 when the server refused the TCP connection
//! (sqlx retries that, as it retries a refused connection), 08001 otherwise.
//!
//! The sockets live in a directory of this process's own (`0700`, in the temporary
//! directory, `toygres-tls-bridge-<pid>-<random>`, removed at exit and, if the process was
//! killed, by the next one), and a connection from any other process is dropped unanswered:
//! the plaintext leg never leaves the process. The bridge runs on a runtime of its own (one
//! thread), so that its sockets outlive any caller's runtime.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::{ConnConfig, ConnError};

/// PostgreSQL's SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// The connect timeout when the connection string names none (TCP connect and handshake).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a refused client has to send its startup message (it sends it at once).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest startup message read (PostgreSQL's own limit).
const MAX_STARTUP: usize = 10_000;

/// Where sqlx connects for one upstream: `{dir}/.s.PGSQL.{port}`, sqlx's Unix-socket form.
pub(super) struct Route {
    pub dir: PathBuf,
    pub port: u16,
}

struct Bridge {
    runtime: tokio::runtime::Runtime,
    dir: PathBuf,
    /// One socket per upstream (the config without user, password, database, application
    /// name and options: those travel in sqlx's startup message), by its port number.
    routes: Mutex<Vec<(ConnConfig, u16)>>,
}

/// Why the bridge could not start (kept: every later connection reports it).
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("cannot start the TLS bridge: {0}")]
    Runtime(std::io::Error),
    #[error("cannot create the TLS bridge's directory {}: {source}", .dir.display())]
    Directory {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
}

static BRIDGE: OnceLock<Result<Bridge, StartError>> = OnceLock::new();

fn bridge() -> Result<&'static Bridge, ConnError> {
    BRIDGE
        .get_or_init(start)
        .as_ref()
        .map_err(|e| ConnError::Tls(e.to_string()))
}

fn start() -> Result<Bridge, StartError> {
    use std::os::unix::fs::DirBuilderExt;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("tls-bridge")
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    let parent = std::env::temp_dir();
    remove_stale(&parent);
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let dir = parent.join(format!(
        "{DIR_PREFIX}{}-{}",
        std::process::id(),
        &suffix[..8]
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|source| StartError::Directory {
            dir: dir.clone(),
            source,
        })?;
    Ok(Bridge {
        runtime,
        dir,
        routes: Mutex::new(Vec::new()),
    })
}

/// The bridge's directory: this prefix, the process id, a random suffix.
const DIR_PREFIX: &str = "toygres-tls-bridge-";

/// Remove the directories that processes now gone left behind (killed, or never at their
/// exit, such as test binaries): those of a process id that no longer exists here, whose
/// sockets all refuse connections. A live process in another PID namespace that shares the
/// temporary directory accepts on its sockets, so its directory stays.
fn remove_stale(parent: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        let gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            == Err(nix::errno::Errno::ESRCH);
        let path = entry.path();
        // Only our sockets, each refusing: nothing else of anyone's is removed.
        let all_refuse = std::fs::read_dir(&path).is_ok_and(|sockets| {
            sockets.flatten().all(|s| {
                use std::os::unix::fs::FileTypeExt;
                s.file_name().to_string_lossy().starts_with(".s.PGSQL.")
                    && s.file_type().is_ok_and(|t| t.is_socket())
                    && std::os::unix::net::UnixStream::connect(s.path())
                        .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
            })
        });
        if gone && all_refuse {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// Remove the bridge's socket directory (at exit; connections through it end with the
/// process).
pub fn remove_sockets() {
    if let Some(Ok(b)) = BRIDGE.get() {
        let _ = std::fs::remove_dir_all(&b.dir);
    }
}

/// The socket for `cfg`'s server and TLS settings, listening from now on.
pub(super) fn route(cfg: &ConnConfig) -> Result<Route, ConnError> {
    let b = bridge()?;
    let mut upstream = cfg.clone();
    upstream.user = None;
    upstream.password = None;
    upstream.dbname = None;
    upstream.application_name = None;
    upstream.options = None;
    let mut routes = b.routes.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, port)) = routes.iter().find(|(u, _)| *u == upstream) {
        return Ok(Route {
            dir: b.dir.clone(),
            port: *port,
        });
    }
    let port = u16::try_from(routes.len() + 1)
        .map_err(|_| ConnError::Tls("too many servers for the TLS bridge".into()))?;
    let path = b.dir.join(format!(".s.PGSQL.{port}"));
    let bind_error =
        |e: std::io::Error| ConnError::Tls(format!("TLS bridge socket {}: {e}", path.display()));
    let listener = std::os::unix::net::UnixListener::bind(&path).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    b.runtime.spawn(serve(
        listener,
        Arc::new(Upstream {
            config: upstream.clone(),
            socket: path.clone(),
            last_refusal: Mutex::new(None),
        }),
    ));
    routes.push((upstream, port));
    Ok(Route {
        dir: b.dir.clone(),
        port,
    })
}

/// One server, as a socket of the bridge reaches it.
struct Upstream {
    config: ConnConfig,
    socket: PathBuf,
    /// The last refusal logged as a warning, until a connection succeeds: a pool that keeps
    /// retrying (Duroxide's dispatchers do, many times a second) logs each new problem
    /// once, and its repeats at debug level.
    last_refusal: Mutex<Option<String>>,
}

impl Upstream {
    /// Note a refusal; whether it differs from the last one.
    fn is_new(&self, refusal: &str) -> bool {
        let mut last = self.last_refusal.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_deref() == Some(refusal) {
            return false;
        }
        *last = Some(refusal.to_string());
        true
    }

    fn connected(&self) {
        *self.last_refusal.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

async fn serve(listener: std::os::unix::net::UnixListener, upstream: Arc<Upstream>) {
    let listener = match tokio::net::UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, server = %upstream.config.host_label(), "TLS bridge: cannot listen");
            return;
        }
    };
    let mut fresh = tokio::time::interval(KEEP_FRESH);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = fresh.tick() => {
                keep_fresh(&upstream.socket);
                continue;
            }
        };
        match accepted {
            Ok((client, _)) if from_this_process(&client) => {
                tokio::spawn(relay(client, upstream.clone()));
            }
            Ok(_) => tracing::warn!("TLS bridge: dropped a connection from another process"),
            Err(e) => {
                // Out of file descriptors, typically: accepting again at once would spin.
                tracing::warn!(error = %e, "TLS bridge: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// How often a socket and its directory get fresh timestamps.
const KEEP_FRESH: Duration = Duration::from_secs(3600);

/// Touch `socket` and its directory: temporary-file cleaners (systemd-tmpfiles' 10 days on
/// `/tmp`) remove entries by age, and connecting does not update a socket's timestamps.
fn keep_fresh(socket: &std::path::Path) {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    for path in [Some(socket), socket.parent()].into_iter().flatten() {
        let now = TimeSpec::UTIME_NOW;
        if let Err(e) = utimensat(None, path, &now, &now, UtimensatFlags::NoFollowSymlink) {
            tracing::debug!(error = %e, path = %path.display(), "TLS bridge: cannot touch");
        }
    }
}

fn from_this_process(client: &UnixStream) -> bool {
    let peer = client.peer_cred().ok().and_then(|c| c.pid());
    peer.is_some() && peer == i32::try_from(std::process::id()).ok()
}

/// Why the bridge has no server connection for a client.
enum Refusal {
    /// The server refused the TCP connection (it may be starting): sqlx retries.
    Refused(ConnError),
    /// Anything else: unreachable, no TLS, a certificate that fails verification.
    Failed(ConnError),
}

async fn relay(mut client: UnixStream, upstream: Arc<Upstream>) {
    let config = &upstream.config;
    let limit = config.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let opened = match tokio::time::timeout(limit, open(config)).await {
        Ok(r) => r,
        Err(_) => Err(Refusal::Failed(ConnError::Connect(format!(
            "timeout connecting to {} after {} s",
            config.host_label(),
            limit.as_secs()
        )))),
    };
    match opened {
        Ok(mut server) => {
            upstream.connected();
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
                tracing::debug!(error = %e, "TLS bridge: connection ended");
            }
        }
        Err(refusal) => refuse(client, refusal, &upstream).await,
    }
}

/// A TLS connection to `up`'s server, verified as its sslmode and files say.
async fn open(up: &ConnConfig) -> Result<tokio_native_tls::TlsStream<TcpStream>, Refusal> {
    // The files first: a bad sslrootcert fails without touching the network, as a probe's.
    let connector = super::tls::connector_for(up).map_err(Refusal::Failed)?;
    let port = up.ports.first().copied().unwrap_or(5432);
    let name = up
        .hosts
        .first()
        .cloned()
        .or_else(|| up.hostaddrs.first().map(|a| a.to_string()))
        .unwrap_or_else(|| "localhost".into());
    let connected = match up.hostaddrs.first() {
        Some(addr) => TcpStream::connect((*addr, port)).await,
        None => TcpStream::connect((name.as_str(), port)).await,
    };
    let mut tcp = connected.map_err(|e| {
        let error = ConnError::Connect(format!("cannot connect to {}: {e}", up.host_label()));
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            Refusal::Refused(error)
        } else {
            Refusal::Failed(error)
        }
    })?;
    // sqlx sets it on its own TCP sockets: statements are small writes.
    let _ = tcp.set_nodelay(true);
    let lost = |e: std::io::Error| {
        Refusal::Failed(ConnError::Connect(format!("{}: {e}", up.host_label())))
    };
    tcp.write_all(&SSL_REQUEST).await.map_err(lost)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(lost)?;
    if answer[0] != b'S' {
        return Err(Refusal::Failed(
            up.describe_tls("server does not support TLS"),
        ));
    }
    tokio_native_tls::TlsConnector::from(connector)
        .connect(&name, tcp)
        .await
        .map_err(|e| Refusal::Failed(up.describe_tls(&crate::redact::redact_error(&e.to_string()))))
}

/// Answer the client's startup with the refusal as a FATAL error, and log it.
async fn refuse(mut client: UnixStream, refusal: Refusal, upstream: &Upstream) {
    let (code, error) = match refusal {
        Refusal::Refused(e) => ("57P03", e),
        Refusal::Failed(e) => ("08001", e),
    };
    let application = tokio::time::timeout(STARTUP_TIMEOUT, startup_application(&mut client))
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    let text = error.to_string();
    if code == "08001" && upstream.is_new(&text) {
        tracing::warn!(application, error = %text, "TLS bridge: no connection to the database server");
    } else {
        tracing::debug!(application, error = %text, "TLS bridge: no connection to the database server");
    }
    // Read first, then answer: closing a Unix socket with unread data resets the peer
    // before it reads our answer.
    let _ = client.write_all(&error_response(code, &text)).await;
    let _ = client.shutdown().await;
}

/// Read the client's startup message; its `application_name`, if it names one.
async fn startup_application(client: &mut UnixStream) -> Option<String> {
    let len = usize::try_from(client.read_u32().await.ok()?).ok()?;
    if !(8..=MAX_STARTUP).contains(&len) {
        return None;
    }
    let mut body = vec![0u8; len - 4];
    client.read_exact(&mut body).await.ok()?;
    startup_parameter(&body, "application_name")
}

/// A parameter of a protocol-3.0 startup message body (after the length).
fn startup_parameter(body: &[u8], key: &str) -> Option<String> {
    let (version, params) = body.split_at_checked(4)?;
    if version != [0, 3, 0, 0] {
        return None;
    }
    let mut fields = params.split(|b| *b == 0);
    while let Some(k) = fields.next() {
        let v = fields.next()?;
        if k == key.as_bytes() {
            return Some(String::from_utf8_lossy(v).into_owned());
        }
    }
    None
}

/// A PostgreSQL ErrorResponse: severity FATAL, `code`, `message`.
fn error_response(code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', code),
        (b'M', message),
    ] {
        body.push(field);
        body.extend(value.bytes().filter(|b| *b != 0));
        body.push(0);
    }
    body.push(0);
    let mut msg = vec![b'E'];
    msg.extend(
        u32::try_from(body.len() + 4)
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    msg.extend(body);
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_parameters_are_read_from_a_3_0_startup_message() {
        let body = b"\0\x03\0\0user\0u\0application_name\0toygres-actors-lane\0\0";
        assert_eq!(
            startup_parameter(body, "application_name").as_deref(),
            Some("toygres-actors-lane")
        );
        assert_eq!(startup_parameter(body, "database"), None);
        assert_eq!(startup_parameter(b"\x04\xd2\x16\x2f", "user"), None);
    }

    #[test]
    fn an_error_response_is_framed_as_postgresql_frames_it() {
        let m = error_response("08001", "bad\0cert");
        assert_eq!(m[0], b'E');
        let len = u32::from_be_bytes([m[1], m[2], m[3], m[4]]) as usize;
        assert_eq!(len, m.len() - 1);
        assert!(m.ends_with(b"Mbadcert\0\0"), "{m:?}");
    }
}
