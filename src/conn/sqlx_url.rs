//! The sqlx form of a [`ConnConfig`]: the URL the CMS pool, the lane, the wake listener and
//! duroxide-pg (the store, the legacy client) connect with.
//!
//! sqlx never verifies a certificate itself: its native-tls setup adds `sslrootcert` to the
//! system's roots (and reads only the file's first certificate), where libpq trusts that file
//! alone. A connection whose sslmode verifies the chain goes through the TLS bridge
//! ([`super::bridge`]) instead: sqlx talks plaintext over a private Unix socket of this
//! process, and the bridge does the TLS with the same connector as the probes.

use super::parse::encode;
use super::{ConnConfig, ConnError, RootCert, SslMode, bridge};

impl ConnConfig {
    /// The URL sqlx (the CMS pool, and duroxide-pg for the store) understands, for this
    /// config. `allow` must be resolved first ([`ConnConfig::preflight`]): sqlx would treat
    /// it as `disable`. `require` with a root certificate becomes `verify-ca`, as in libpq;
    /// `verify-ca` and `verify-full` point at the TLS bridge. `extra_options` is appended to
    /// `options`.
    pub fn sqlx_url(&self, application: &str, extra_options: &str) -> Result<String, ConnError> {
        let unsupported = |what: &str| {
            Err(ConnError::Invalid(format!(
                "{what} is not supported for the CMS database (sqlx)"
            )))
        };
        if self.hosts.len() > 1 || self.hostaddrs.len() > 1 {
            return unsupported("more than one host");
        }
        if self.channel_binding == tokio_postgres::config::ChannelBinding::Require {
            return unsupported("channel_binding=require");
        }
        if self.sslcert.is_some() != self.sslkey.is_some() {
            return Err(ConnError::Tls("sslcert and sslkey go together".into()));
        }
        let verify = self.verify();
        let host = match (self.hosts.first(), self.hostaddrs.first()) {
            (_, Some(_)) if verify.1 => return unsupported("hostaddr with verify-full"),
            (_, Some(addr)) => addr.to_string(),
            (Some(h), None) => h.clone(),
            (None, None) => Self::default_host(),
        };
        let mode = match (self.sslmode, verify) {
            // Unix sockets never carry TLS (libpq ignores sslmode there).
            _ if host.starts_with('/') => SslMode::Disable,
            (SslMode::Allow, _) => SslMode::Disable,
            (SslMode::Require, (true, _)) => SslMode::VerifyCa,
            (m, _) => m,
        };
        let mut query: Vec<(String, String)> = Vec::new();
        let (host, port) = if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) {
            let route = bridge::route(self)?;
            (route.dir.display().to_string(), route.port)
        } else {
            (host, self.ports.first().copied().unwrap_or(5432))
        };
        let bridged = host.starts_with('/') && mode != SslMode::Disable;
        let authority_host = if host.starts_with('/') {
            query.push(("host".into(), host.clone()));
            "localhost".to_string()
        } else if host.contains(':') {
            format!("[{host}]")
        } else {
            encode(&host)
        };
        if bridged {
            // The bridge's leg is plaintext within this process; the bridge does the TLS,
            // client certificate included.
            query.push(("sslmode".into(), SslMode::Disable.as_str().into()));
        } else {
            query.push(("sslmode".into(), mode.as_str().into()));
            if let Some(RootCert::File(p)) = &self.sslrootcert {
                query.push(("sslrootcert".into(), p.display().to_string()));
            }
            if let (Some(c), Some(k)) = (&self.sslcert, &self.sslkey) {
                query.push(("sslcert".into(), c.display().to_string()));
                query.push(("sslkey".into(), k.display().to_string()));
            }
        }
        query.push(("application_name".into(), application.into()));
        let options: Vec<&str> = [self.options.as_deref().unwrap_or(""), extra_options]
            .into_iter()
            .filter(|o| !o.is_empty())
            .collect();
        if !options.is_empty() {
            query.push(("options".into(), options.join(" ")));
        }
        let user = self.user_or_default();
        let mut url = format!("postgres://{}", encode(&user));
        if let Some(p) = &self.password {
            url.push(':');
            url.push_str(&encode(p));
        }
        url.push_str(&format!(
            "@{authority_host}:{port}/{}?",
            encode(self.dbname.as_deref().unwrap_or(&user))
        ));
        let q: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        url.push_str(&q.join("&"));
        Ok(url)
    }
}
