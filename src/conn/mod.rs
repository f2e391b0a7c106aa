//! One connection configuration, with libpq's semantics, for every connection we open: the
//! CMS pool and the Duroxide store (sqlx), the leader and listener sessions and the probes
//! (tokio-postgres).
//!
//! A connection string (URL or key/value form) is parsed here, once, into [`ConnConfig`];
//! unknown keywords are an error naming the keyword (never a value). The config then maps to
//! a `tokio_postgres::Config` plus a TLS connector chosen by sslmode ([`ConnConfig::connect`]),
//! or to sqlx connect options and the Duroxide store's URL ([`ConnConfig::sqlx_url`]).
//!
//! sslmode, as in libpq:
//!
//! | sslmode | TLS | certificate chain | host name | falls back |
//! |---|---|---|---|---|
//! | `disable` | never | – | – | – |
//! | `allow` | only if the server refuses plaintext | only with sslrootcert | – | to TLS |
//! | `prefer` (default) | if the server offers it | only with sslrootcert | – | to plaintext |
//! | `require` | always | only with sslrootcert (then as `verify-ca`) | – | never |
//! | `verify-ca` | always | against sslrootcert | – | never |
//! | `verify-full` | always | against sslrootcert | checked | never |
//!
//! `sslrootcert` is a PEM file of trusted CAs (only those: the system's roots are not added)
//! or `system` (the system's roots, which requires `verify-full`). `sslcert` + `sslkey` are a
//! client certificate and its PKCS#8 key (`0600`, or `0640` owned by root). Every TLS
//! connection is native-tls (OpenSSL), TLS 1.2 or later. Unix-socket hosts never use TLS.
//! sqlx cannot make `sslrootcert` exclusive, so its connections in a verifying mode take
//! the TLS bridge ([`bridge`]): the same connector as the tokio-postgres ones.
//! `PG*` environment variables and `~/.postgresql/` defaults are not consulted.

mod bridge;
mod parse;
mod sqlx_url;
mod tls;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use bridge::remove_sockets as remove_tls_bridge_sockets;
pub use tls::{Connected, PgConnection, error_text};

/// libpq's sslmode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// The CAs a connection trusts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RootCert {
    /// A PEM file: these CAs and no others.
    File(PathBuf),
    /// The system's trusted roots (`sslrootcert=system`).
    System,
}

impl RootCert {
    pub fn from_setting(s: &str) -> RootCert {
        if s == "system" {
            RootCert::System
        } else {
            RootCert::File(PathBuf::from(s))
        }
    }
}

/// What can go wrong before or while connecting. Texts are redacted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnError {
    #[error("invalid connection string: {0}")]
    Invalid(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Connect(String),
}

impl ConnError {
    /// A TLS failure: the handshake, a certificate check, or the TLS settings themselves.
    pub fn is_tls(&self) -> bool {
        matches!(self, ConnError::Tls(_))
    }
}

/// `target_session_attrs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionAttrs {
    Any,
    ReadWrite,
    ReadOnly,
}

/// A parsed connection string.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnConfig {
    pub hosts: Vec<String>,
    pub hostaddrs: Vec<IpAddr>,
    pub ports: Vec<u16>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub dbname: Option<String>,
    pub application_name: Option<String>,
    pub options: Option<String>,
    pub connect_timeout: Option<Duration>,
    pub sslmode: SslMode,
    /// Whether the string named the sslmode (`sslrootcert=system` changes the default).
    pub sslmode_given: bool,
    pub sslrootcert: Option<RootCert>,
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
    pub target_session_attrs: SessionAttrs,
    pub keepalives: Option<bool>,
    pub keepalives_idle: Option<Duration>,
    pub keepalives_interval: Option<Duration>,
    pub keepalives_retries: Option<u32>,
    pub tcp_user_timeout: Option<Duration>,
    pub channel_binding: tokio_postgres::config::ChannelBinding,
    pub load_balance_random: bool,
}

impl std::fmt::Debug for ConnConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnConfig")
            .field("hosts", &self.hosts)
            .field("ports", &self.ports)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("dbname", &self.dbname)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .finish_non_exhaustive()
    }
}

/// libpq keywords we know and deliberately do not implement: an error naming them, rather
/// than a silent difference (several are security settings).
const UNSUPPORTED: &[&str] = &[
    "passfile",
    "service",
    "require_auth",
    "replication",
    "sslpassword",
    "sslcertmode",
    "sslcrl",
    "sslcrldir",
    "sslkeylogfile",
    "requirepeer",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
];

impl ConnConfig {
    /// Parse a connection string (URL or key/value form).
    pub fn parse(s: &str) -> Result<ConnConfig, ConnError> {
        let pairs = parse::pairs(s).map_err(|e| ConnError::Invalid(e.0))?;
        let mut c = ConnConfig {
            hosts: Vec::new(),
            hostaddrs: Vec::new(),
            ports: Vec::new(),
            user: None,
            password: None,
            dbname: None,
            application_name: None,
            options: None,
            connect_timeout: None,
            sslmode: SslMode::Prefer,
            sslmode_given: false,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
            target_session_attrs: SessionAttrs::Any,
            keepalives: None,
            keepalives_idle: None,
            keepalives_interval: None,
            keepalives_retries: None,
            tcp_user_timeout: None,
            channel_binding: tokio_postgres::config::ChannelBinding::Prefer,
            load_balance_random: false,
        };
        for (k, v) in pairs {
            c.set(&k, v).map_err(|e| ConnError::Invalid(e.0))?;
        }
        if c.sslrootcert == Some(RootCert::System) {
            if !c.sslmode_given {
                c.sslmode = SslMode::VerifyFull;
            } else if c.sslmode != SslMode::VerifyFull {
                return Err(ConnError::Invalid(format!(
                    "sslmode={} may not be used with sslrootcert=system (use verify-full)",
                    c.sslmode.as_str()
                )));
            }
        }
        if !c.hostaddrs.is_empty() && !c.hosts.is_empty() && c.hostaddrs.len() != c.hosts.len() {
            return Err(ConnError::Invalid(
                "host and hostaddr list different numbers of hosts".into(),
            ));
        }
        let n = c.hosts.len().max(c.hostaddrs.len()).max(1);
        if c.ports.len() > 1 && c.ports.len() != n {
            return Err(ConnError::Invalid(
                "port lists a different number of ports than there are hosts".into(),
            ));
        }
        Ok(c)
    }

    fn set(&mut self, key: &str, v: String) -> Result<(), parse::Malformed> {
        let secs = |v: &str| -> Result<Option<Duration>, parse::Malformed> {
            let n: i64 = v
                .trim()
                .parse()
                .map_err(|_| format!("`{key}` must be a whole number of seconds"))?;
            Ok((n > 0).then(|| Duration::from_secs(n as u64)))
        };
        let flag = |v: &str| -> Result<bool, parse::Malformed> {
            match v {
                "1" => Ok(true),
                "0" => Ok(false),
                _ => Err(format!("`{key}` must be 0 or 1").into()),
            }
        };
        match key {
            "host" => self.hosts = v.split(',').map(str::to_string).collect(),
            "hostaddr" => {
                self.hostaddrs = v
                    .split(',')
                    .map(|a| a.trim().parse::<IpAddr>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| "`hostaddr` must list IP addresses".to_string())?
            }
            "port" => {
                self.ports = v
                    .split(',')
                    .map(|p| if p.is_empty() { Ok(5432) } else { p.parse() })
                    .collect::<Result<_, _>>()
                    .map_err(|_| "`port` must list port numbers".to_string())?
            }
            "dbname" => self.dbname = Some(v),
            "user" => self.user = Some(v),
            "password" => self.password = Some(v),
            "application_name" => self.application_name = Some(v),
            "fallback_application_name" => {
                self.application_name.get_or_insert(v);
            }
            "options" => self.options = Some(v),
            // libpq: at least 2 s; 0 or less waits forever.
            "connect_timeout" => {
                self.connect_timeout = secs(&v)?.map(|d| d.max(Duration::from_secs(2)))
            }
            "sslmode" => {
                self.sslmode = match v.as_str() {
                    "disable" => SslMode::Disable,
                    "allow" => SslMode::Allow,
                    "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    _ => return Err("`sslmode` must be disable, allow, prefer, require, verify-ca or verify-full".into()),
                };
                self.sslmode_given = true;
            }
            "sslrootcert" => self.sslrootcert = Some(RootCert::from_setting(&v)),
            "sslcert" => self.sslcert = Some(PathBuf::from(v)),
            "sslkey" => self.sslkey = Some(PathBuf::from(v)),
            "target_session_attrs" => {
                self.target_session_attrs = match v.as_str() {
                    "any" => SessionAttrs::Any,
                    "read-write" => SessionAttrs::ReadWrite,
                    "read-only" => SessionAttrs::ReadOnly,
                    _ => return Err(
                        "`target_session_attrs`: only any, read-write and read-only are supported"
                            .into(),
                    ),
                }
            }
            "keepalives" => self.keepalives = Some(flag(&v)?),
            "keepalives_idle" => self.keepalives_idle = secs(&v)?,
            "keepalives_interval" => self.keepalives_interval = secs(&v)?,
            "keepalives_count" => {
                self.keepalives_retries = Some(
                    v.parse()
                        .map_err(|_| "`keepalives_count` must be a number".to_string())?,
                )
            }
            "tcp_user_timeout" => {
                let ms: u64 = v
                    .parse()
                    .map_err(|_| "`tcp_user_timeout` must be milliseconds".to_string())?;
                self.tcp_user_timeout = (ms > 0).then(|| Duration::from_millis(ms));
            }
            "channel_binding" => {
                use tokio_postgres::config::ChannelBinding;
                self.channel_binding = match v.as_str() {
                    "disable" => ChannelBinding::Disable,
                    "prefer" => ChannelBinding::Prefer,
                    "require" => ChannelBinding::Require,
                    _ => return Err("`channel_binding` must be disable, prefer or require".into()),
                }
            }
            "load_balance_hosts" => {
                self.load_balance_random = match v.as_str() {
                    "disable" => false,
                    "random" => true,
                    _ => return Err("`load_balance_hosts` must be disable or random".into()),
                }
            }
            // Accepted for compatibility; what they ask for is what we do anyway.
            "sslcompression" => {
                flag(&v)?;
            }
            "sslsni" if v == "1" => {}
            "sslnegotiation" if v == "postgres" => {}
            "gssencmode" if matches!(v.as_str(), "disable" | "allow" | "prefer") => {}
            "client_encoding"
                if v.eq_ignore_ascii_case("utf8") || v.eq_ignore_ascii_case("utf-8") => {}
            "sslsni" | "sslnegotiation" | "gssencmode" | "client_encoding" => {
                return Err(format!("this value of `{key}` is not supported").into());
            }
            k if UNSUPPORTED.contains(&k) => {
                return Err(format!("`{k}` is not supported by toygres-actors").into());
            }
            k => return Err(format!("unknown parameter `{}`", printable(k)).into()),
        }
        Ok(())
    }

    /// Use `root` when the string names no sslrootcert (the probes' service-wide default).
    pub fn default_root_cert(&mut self, root: Option<&RootCert>) {
        if self.sslrootcert.is_none()
            && let Some(root) = root
        {
            if *root == RootCert::System && self.sslmode != SslMode::VerifyFull {
                // `system` asks for verify-full; a weaker mode keeps no default, as it would
                // be an error in libpq.
                return;
            }
            self.sslrootcert = Some(root.clone());
        }
    }

    /// The first host (for messages).
    fn host_label(&self) -> String {
        let host = self
            .hosts
            .first()
            .cloned()
            .or_else(|| self.hostaddrs.first().map(|a| a.to_string()))
            .unwrap_or_else(|| "localhost".into());
        format!("{host}:{}", self.ports.first().copied().unwrap_or(5432))
    }

    fn user_or_default(&self) -> String {
        self.user.clone().unwrap_or_else(os_user)
    }

    fn default_host() -> String {
        // libpq's default: the Unix socket directory, when a server listens there.
        for dir in ["/var/run/postgresql", "/tmp"] {
            if std::path::Path::new(dir).join(".s.PGSQL.5432").exists() {
                return dir.to_string();
            }
        }
        "localhost".into()
    }

    /// The tokio-postgres config (TLS aside: [`ConnConfig::connect`] sets the sslmode).
    pub fn tokio_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        if self.hosts.is_empty() && self.hostaddrs.is_empty() {
            c.host(Self::default_host());
        }
        for h in &self.hosts {
            c.host(h);
        }
        for a in &self.hostaddrs {
            c.hostaddr(*a);
        }
        for p in &self.ports {
            c.port(*p);
        }
        let user = self.user_or_default();
        c.user(&user);
        c.dbname(self.dbname.as_deref().unwrap_or(&user));
        if let Some(p) = &self.password {
            c.password(p);
        }
        if let Some(a) = &self.application_name {
            c.application_name(a);
        }
        if let Some(o) = &self.options {
            c.options(o);
        }
        if let Some(t) = self.connect_timeout {
            c.connect_timeout(t);
        }
        if let Some(k) = self.keepalives {
            c.keepalives(k);
        }
        if let Some(d) = self.keepalives_idle {
            c.keepalives_idle(d);
        }
        if let Some(d) = self.keepalives_interval {
            c.keepalives_interval(d);
        }
        if let Some(n) = self.keepalives_retries {
            c.keepalives_retries(n);
        }
        if let Some(d) = self.tcp_user_timeout {
            c.tcp_user_timeout(d);
        }
        use tokio_postgres::config::{LoadBalanceHosts, TargetSessionAttrs};
        c.target_session_attrs(match self.target_session_attrs {
            SessionAttrs::Any => TargetSessionAttrs::Any,
            SessionAttrs::ReadWrite => TargetSessionAttrs::ReadWrite,
            SessionAttrs::ReadOnly => TargetSessionAttrs::ReadOnly,
        });
        c.channel_binding(self.channel_binding);
        if self.load_balance_random {
            c.load_balance_hosts(LoadBalanceHosts::Random);
        }
        c
    }

    /// Connect with tokio-postgres, TLS per sslmode. `config` is [`ConnConfig::tokio_config`]
    /// with the caller's additions (application name, timeouts).
    pub async fn connect(&self, config: &tokio_postgres::Config) -> Result<Connected, ConnError> {
        tls::connect(self, config).await
    }

    /// (verify the chain, verify the host name), per libpq.
    fn verify(&self) -> (bool, bool) {
        match self.sslmode {
            SslMode::VerifyFull => (true, true),
            SslMode::VerifyCa => (true, false),
            _ => (self.sslrootcert.is_some(), false),
        }
    }

    /// Connect once with our own, strict connector, and settle what sqlx cannot do itself:
    /// `allow` (sqlx has none), and `prefer` with a root certificate (libpq verifies the
    /// chain, and falls back to plaintext when that fails) become `require` or `disable`,
    /// whichever this connection ended up with. In a verifying mode, a certificate problem
    /// stops the caller before its pool exists (sqlx's own connections then verify through
    /// the TLS bridge, with the same connector).
    pub async fn preflight(&mut self, application: &str) -> Result<(), ConnError> {
        let mut config = self.tokio_config();
        config.application_name(application);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let (client, connection, tls) = self.connect(&config).await?;
        let driver = tokio::spawn(connection);
        let tls = match tls {
            Some(t) => t,
            None => client
                .query_one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await
                .map_err(|e| ConnError::Connect(crate::redact::redact_error(&e.to_string())))?
                .get::<_, bool>(0),
        };
        drop(client);
        let _ = driver.await;
        if matches!(self.sslmode, SslMode::Allow | SslMode::Prefer) {
            self.sslmode = if tls {
                SslMode::Require
            } else {
                SslMode::Disable
            };
        }
        Ok(())
    }

    /// Whether a [`ConnConfig::preflight`] is worth one connection: `allow` and `prefer`
    /// with a root certificate (sqlx cannot settle those), and every mode that verifies the
    /// chain (the start fails at once, in our words).
    pub fn needs_preflight(&self) -> bool {
        self.sslmode == SslMode::Allow || self.verify().0
    }
}

/// A keyword as it may be shown: printable ASCII only, bounded.
fn printable(k: &str) -> String {
    k.chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

fn os_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "postgres".into())
}

#[cfg(test)]
mod tests;
