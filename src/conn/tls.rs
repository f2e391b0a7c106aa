//! The TLS side of [`ConnConfig`]: a native-tls connector per (sslmode, files), and the
//! tokio-postgres connect with libpq's `allow` and `prefer` retries.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use postgres_native_tls::MakeTlsConnector;
use tokio_postgres::config::SslMode as PgSslMode;

use super::{ConnConfig, ConnError, RootCert, SslMode};

/// A tokio-postgres connection from [`ConnConfig::connect`] (TLS or not, one type).
pub type PgConnection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    postgres_native_tls::TlsStream<tokio_postgres::Socket>,
>;

/// What a connector is built from; file stamps make a rotated file a new key.
#[derive(Clone, PartialEq, Eq, Hash)]
struct ConnectorKey {
    verify_chain: bool,
    verify_host: bool,
    root: Option<(RootCert, Stamp)>,
    identity: Option<(PathBuf, Stamp, PathBuf, Stamp)>,
}

type Stamp = Option<(SystemTime, u64)>;

fn stamp(p: &Path) -> Stamp {
    std::fs::metadata(p)
        .ok()
        .and_then(|m| Some((m.modified().ok()?, m.len())))
}

/// The tokio-postgres connector for `key`.
fn connector(key: &ConnectorKey) -> Result<MakeTlsConnector, ConnError> {
    native_connector(key).map(MakeTlsConnector::new)
}

/// The native-tls connector `cfg`'s sslmode and files call for: the one the probes and
/// sessions use, and the TLS bridge's for sqlx ([`super::bridge`]).
pub(super) fn connector_for(cfg: &ConnConfig) -> Result<native_tls::TlsConnector, ConnError> {
    native_connector(&cfg.connector_key()?)
}

/// Connectors are cached: building one reads the files (and the system's roots).
fn native_connector(key: &ConnectorKey) -> Result<native_tls::TlsConnector, ConnError> {
    static CACHE: OnceLock<Mutex<HashMap<ConnectorKey, native_tls::TlsConnector>>> =
        OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(c) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(key) {
        return Ok(c.clone());
    }
    let built = build(key)?;
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    if cache.len() >= 256 {
        cache.clear();
    }
    cache.insert(key.clone(), built.clone());
    Ok(built)
}

fn read(p: &Path, what: &str) -> Result<Vec<u8>, ConnError> {
    std::fs::read(p).map_err(|e| ConnError::Tls(format!("cannot read {what} {}: {e}", p.display())))
}

fn build(key: &ConnectorKey) -> Result<native_tls::TlsConnector, ConnError> {
    let mut b = native_tls::TlsConnector::builder();
    // libpq's default ssl_min_protocol_version.
    b.min_protocol_version(Some(native_tls::Protocol::Tlsv12));
    if key.verify_chain {
        if let Some((RootCert::File(path), _)) = &key.root {
            let pem = read(path, "sslrootcert")?;
            let certs = native_tls::Certificate::stack_from_pem(&pem)
                .map_err(|e| ConnError::Tls(format!("sslrootcert {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(ConnError::Tls(format!(
                    "sslrootcert {} holds no certificate",
                    path.display()
                )));
            }
            // These CAs and no others, as in libpq.
            b.disable_built_in_roots(true);
            for c in certs {
                b.add_root_certificate(c);
            }
        }
        b.danger_accept_invalid_hostnames(!key.verify_host);
    } else {
        // libpq's `prefer` / `require` without a root certificate: encrypt, do not verify.
        b.danger_accept_invalid_certs(true);
        b.danger_accept_invalid_hostnames(true);
    }
    if let Some((cert, _, key_path, _)) = &key.identity {
        check_key_permissions(key_path)?;
        let cert_pem = read(cert, "sslcert")?;
        let key_pem = read(key_path, "sslkey")?;
        let id = native_tls::Identity::from_pkcs8(&cert_pem, &key_pem).map_err(|e| {
            ConnError::Tls(format!(
                "sslcert/sslkey: {e} (sslkey must be a PKCS#8 PEM key, `-----BEGIN PRIVATE KEY-----`)"
            ))
        })?;
        b.identity(id);
    }
    b.build()
        .map_err(|e| ConnError::Tls(format!("cannot set up TLS: {e}")))
}

/// libpq's rule: no group or world access, except group read when the file is root's.
fn check_key_permissions(p: &Path) -> Result<(), ConnError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p)
        .map_err(|e| ConnError::Tls(format!("cannot read sslkey {}: {e}", p.display())))?;
    let mode = m.mode() & 0o777;
    let too_open = if m.uid() == 0 {
        mode & 0o037 != 0
    } else {
        mode & 0o077 != 0
    };
    if too_open {
        return Err(ConnError::Tls(format!(
            "sslkey {} has group or world access (mode {mode:o}); it must be 0600 or less (0640 if owned by root)",
            p.display()
        )));
    }
    Ok(())
}

impl ConnConfig {
    fn connector_key(&self) -> Result<ConnectorKey, ConnError> {
        let (verify_chain, verify_host) = self.verify();
        if verify_chain && self.sslrootcert.is_none() {
            return Err(ConnError::Tls(format!(
                "sslmode={} needs sslrootcert (a PEM file of trusted CAs, or `system`)",
                self.sslmode.as_str()
            )));
        }
        let root = self.sslrootcert.clone().map(|r| {
            let s = match &r {
                RootCert::File(p) => stamp(p),
                RootCert::System => None,
            };
            (r, s)
        });
        let identity = match (&self.sslcert, &self.sslkey) {
            (Some(c), Some(k)) => Some((c.clone(), stamp(c), k.clone(), stamp(k))),
            (None, None) => None,
            _ => return Err(ConnError::Tls("sslcert and sslkey go together".into())),
        };
        Ok(ConnectorKey {
            verify_chain,
            verify_host,
            root,
            identity,
        })
    }

    /// Describe a failed attempt: which TLS check failed, or the server's/transport's words.
    fn describe(&self, e: &tokio_postgres::Error) -> ConnError {
        let text = error_text(e);
        let is_tls = text.starts_with("error performing TLS handshake");
        if !is_tls {
            return ConnError::Connect(text);
        }
        self.describe_tls(&text)
    }

    /// Describe a failed TLS handshake (`text`: the TLS library's words, redacted): which
    /// certificate check failed, with the host, sslmode and sslrootcert.
    pub(super) fn describe_tls(&self, text: &str) -> ConnError {
        let root = match &self.sslrootcert {
            Some(RootCert::File(p)) => format!(", sslrootcert={}", p.display()),
            Some(RootCert::System) => ", sslrootcert=system".into(),
            None => String::new(),
        };
        let context = format!(
            "[{}, sslmode={}{root}]",
            self.host_label(),
            self.sslmode.as_str()
        );
        if let Some(i) = text.find("certificate verify failed") {
            // OpenSSL: "…certificate verify failed:…: (unable to get local issuer certificate)"
            let rest = &text[i..];
            let reason = rest
                .find('(')
                .and_then(|open| {
                    let inner = &rest[open + 1..];
                    inner.find(')').map(|close| inner[..close].to_string())
                })
                .unwrap_or_else(|| "certificate verify failed".into());
            return ConnError::Tls(format!(
                "the server's certificate failed verification: {reason} {context}"
            ));
        }
        let detail = text
            .trim_start_matches("error performing TLS handshake")
            .trim_start_matches(": ");
        ConnError::Tls(format!("handshake failed: {detail} {context}"))
    }
}

async fn attempt(
    config: &tokio_postgres::Config,
    mode: PgSslMode,
    tls: MakeTlsConnector,
) -> Result<(tokio_postgres::Client, PgConnection), tokio_postgres::Error> {
    let mut config = config.clone();
    config.ssl_mode(mode);
    config.connect(tls).await
}

/// A connection, and whether it uses TLS (`None`: the server chose, under `prefer`).
pub type Connected = (tokio_postgres::Client, PgConnection, Option<bool>);

pub(super) async fn connect(
    cfg: &ConnConfig,
    config: &tokio_postgres::Config,
) -> Result<Connected, ConnError> {
    let fail = |e: tokio_postgres::Error| cfg.describe(&e);
    // Unix sockets never carry TLS (libpq ignores sslmode there).
    let unix = config
        .get_hosts()
        .iter()
        .any(|h| matches!(h, tokio_postgres::config::Host::Unix(_)));
    if unix || cfg.sslmode == SslMode::Disable {
        // The connector is never used with sslmode=disable; it only fixes the stream type.
        let plain = connector(&ConnectorKey {
            verify_chain: false,
            verify_host: false,
            root: None,
            identity: None,
        })?;
        let (c, conn) = attempt(config, PgSslMode::Disable, plain)
            .await
            .map_err(fail)?;
        return Ok((c, conn, Some(false)));
    }
    let tls = connector(&cfg.connector_key()?)?;
    match cfg.sslmode {
        SslMode::Allow => match attempt(config, PgSslMode::Disable, tls.clone()).await {
            Ok((c, conn)) => Ok((c, conn, Some(false))),
            // The server refused plaintext: try TLS, as libpq does.
            Err(e) if e.as_db_error().is_some() => {
                let (c, conn) = attempt(config, PgSslMode::Require, tls)
                    .await
                    .map_err(fail)?;
                Ok((c, conn, Some(true)))
            }
            Err(e) => Err(fail(e)),
        },
        // tokio-postgres falls back to plaintext when the server declines TLS; libpq also
        // does when the handshake fails.
        SslMode::Prefer => match attempt(config, PgSslMode::Prefer, tls.clone()).await {
            Ok((c, conn)) => Ok((c, conn, None)),
            Err(e) if cfg.describe(&e).is_tls() => {
                let (c, conn) = attempt(config, PgSslMode::Disable, tls)
                    .await
                    .map_err(fail)?;
                Ok((c, conn, Some(false)))
            }
            Err(e) => Err(fail(e)),
        },
        // require, verify-ca, verify-full: TLS or nothing, never a second try.
        _ => {
            let (c, conn) = attempt(config, PgSslMode::Require, tls)
                .await
                .map_err(fail)?;
            Ok((c, conn, Some(true)))
        }
    }
}

/// A tokio-postgres error with its causes, redacted (the Display of the top error alone is
/// often just "error connecting to server").
pub fn error_text(e: &tokio_postgres::Error) -> String {
    use std::error::Error;
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    crate::redact::redact_error(&text)
}
