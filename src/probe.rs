//! The probe: can we reach this PostgreSQL instance and run a query on it?
//!
//! Connects to `COALESCE(dns_connection_string, ip_connection_string)` with a bounded
//! connect time (TCP *and* startup/auth: a server that accepts and then hangs cannot hold a
//! probe) and a bounded query time, runs `sql/probe.sql`, and reports status, server
//! version, `pg_is_in_recovery()`, response time and a redacted error.
//!
//! Connections are kept between checks (up to a configured number, least recently used
//! evicted first) because a fresh connection costs the target a backend fork and, with TLS,
//! a handshake; a kept connection that fails is replaced once before the probe counts as
//! failed. An actor that exits drops its connection ([`Prober::forget`]) and idle ones are
//! swept ([`Prober::sweep`]), so no connection outlives its instance.
//!
//! A new instance's first probe opens a connection whatever the keeping: a backend fork, an
//! authentication, maybe a TLS handshake — most of the time from a row's insert to its first
//! health row. [`Prober::prepare`] runs that probe (connect, then the query) while the actor's
//! start commits, and the first check takes its answer: the same job as a probe that connects
//! itself, begun earlier (the probe reads and writes nothing on the target; only the check's
//! fenced write waits for the commit). The connection is kept or closed after it as any.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::conn::{ConnConfig, RootCert, error_text};
use crate::redact;

/// Probe timeouts and connection keeping.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    pub connect_timeout: Duration,
    pub query_timeout: Duration,
    /// At most this many kept connections; 0 = a fresh connection for every probe.
    pub keep_connections: usize,
    /// Probes running at once (a burst of thousands of starts must not open thousands of
    /// connections at the same moment).
    pub max_concurrent: usize,
}

/// One probe's outcome.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ProbeResult {
    pub ok: bool,
    pub version: Option<String>,
    pub in_recovery: Option<bool>,
    pub response_time_ms: u64,
    /// Redacted: never contains the password of the target.
    pub error: Option<String>,
}

struct Kept {
    target_hash: u64,
    client: tokio_postgres::Client,
    last_used: Instant,
}

/// A probe's connection and the probe query's answer on it, or why there is none.
type Answered = Result<(tokio_postgres::Client, ProbeRow), ProbeError>;

/// The probe [`Prober::prepare`] is running (or has run) for an instance's next check: its
/// answer and how long it took.
struct Prepared {
    target_hash: u64,
    answer: tokio::sync::oneshot::Receiver<(Answered, Duration)>,
    since: Instant,
}

/// The most connections being prepared at once (a storm's starts do not prepare: each
/// would open a connection beside the probe slots' bound).
const MAX_PREPARED: usize = 64;
/// A prepared probe no check took within this is dropped, its connection with it.
const PREPARED_FOR: Duration = Duration::from_secs(10);
/// A prepared probe's answer is a check's observation only while it is this fresh (the
/// start it ran beside commits in milliseconds); an older one is asked again on its
/// connection, or the probe connects anew.
const ANSWER_FRESH_FOR: Duration = Duration::from_secs(1);

/// Probes instances; shared by every health check of the process.
pub struct Prober {
    settings: ProbeSettings,
    /// `--probe-ssl-root-cert`: the sslrootcert of targets that name none.
    default_root_cert: Option<RootCert>,
    kept: Mutex<HashMap<Uuid, Kept>>,
    prepared: Mutex<HashMap<Uuid, Prepared>>,
    slots: tokio::sync::Semaphore,
}

fn hash_target(target: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    target.hash(&mut h);
    h.finish()
}

impl Prober {
    /// TLS follows each target's connection string with libpq's semantics ([`crate::conn`]).
    pub fn new(settings: ProbeSettings) -> Self {
        let slots = tokio::sync::Semaphore::new(settings.max_concurrent.max(1));
        Self {
            settings,
            default_root_cert: None,
            kept: Mutex::new(HashMap::new()),
            prepared: Mutex::new(HashMap::new()),
            slots,
        }
    }

    /// The sslrootcert of targets whose connection string names none (a PEM file, or
    /// `system`); `--probe-ssl-root-cert`. A file must be readable now.
    pub fn with_default_root_cert(
        mut self,
        root: Option<&std::path::Path>,
    ) -> Result<Self, ProbeError> {
        self.default_root_cert = match root {
            None => None,
            Some(p) => {
                let root = RootCert::from_setting(&p.to_string_lossy());
                if let RootCert::File(f) = &root {
                    std::fs::File::open(f).map_err(|source| ProbeError::RootCert {
                        path: f.clone(),
                        source,
                    })?;
                }
                Some(root)
            }
        };
        Ok(self)
    }

    /// A prober of its own with the same settings (timeouts, default root certificate) that
    /// keeps no connections and runs at most `max_concurrent` probes: the priority lane's.
    pub fn sibling(&self, max_concurrent: usize) -> Prober {
        Prober {
            settings: ProbeSettings {
                keep_connections: 0,
                max_concurrent,
                ..self.settings.clone()
            },
            default_root_cert: self.default_root_cert.clone(),
            kept: Mutex::new(HashMap::new()),
            prepared: Mutex::new(HashMap::new()),
            slots: tokio::sync::Semaphore::new(max_concurrent.max(1)),
        }
    }

    /// Probe `target` (a connection string) for `instance`.
    pub async fn probe(&self, instance: Uuid, target: &str) -> ProbeResult {
        let _slot = self.slots.acquire().await.ok();
        let started = Instant::now();
        let mut config = match ConnConfig::parse(target) {
            Ok(c) => c,
            Err(e) => {
                return ProbeResult {
                    ok: false,
                    version: None,
                    in_recovery: None,
                    response_time_ms: 0,
                    // "invalid connection string: unknown parameter `x`" (names, no values)
                    error: Some(redact::redact_error(&e.to_string())),
                };
            }
        };
        config.default_root_cert(self.default_root_cert.as_ref());
        let password = config.password.clone();
        let target_hash = hash_target(target);

        // A kept connection first; if it fails, one fresh attempt before we call it a failure.
        if let Some(client) = self.take_kept(instance, target_hash)
            && let Ok(Ok(row)) =
                tokio::time::timeout(self.settings.query_timeout, probe_query(&client)).await
        {
            self.keep(instance, target_hash, client);
            return ok_result(&row, started.elapsed());
        }

        // The fresh attempt: the probe prepared for this check, if any (its failure is this
        // probe's: a second attempt would double a hanging target's timeout).
        let (outcome, took) = match self.take_prepared(instance, target_hash).await {
            Some((answered, took)) => (answered, took),
            None => (self.connect_and_query(config).await, started.elapsed()),
        };
        let elapsed = took.as_millis() as u64;
        match outcome {
            Ok((client, row)) => {
                let result = ok_result(&row, took);
                self.keep(instance, target_hash, client);
                result
            }
            Err(e) => ProbeResult {
                ok: false,
                version: None,
                in_recovery: None,
                response_time_ms: elapsed,
                error: Some(redact::redact_known(&e.to_string(), password.as_deref())),
            },
        }
    }

    async fn connect_and_query(&self, target: ConnConfig) -> Answered {
        let client = self.connect(target).await?;
        self.query_on(client).await
    }

    /// The probe query on a connection just opened, within the query timeout.
    async fn query_on(&self, client: tokio_postgres::Client) -> Answered {
        match tokio::time::timeout(self.settings.query_timeout, probe_query(&client)).await {
            Err(_) => Err(ProbeError::QueryTimeout(self.settings.query_timeout)),
            Ok(Err(e)) => Err(e),
            Ok(Ok(row)) => Ok((client, row)),
        }
    }

    /// A new connection to `target`, within the connect timeout.
    async fn connect(&self, target: ConnConfig) -> Result<tokio_postgres::Client, ProbeError> {
        let mut config = target.tokio_config();
        config
            .connect_timeout(self.settings.connect_timeout)
            .application_name("toygres-actors-probe");
        // TLS per the target's sslmode, libpq's way; a TLS failure is never retried in
        // plaintext unless the mode allows it (`allow`, `prefer`).
        let connect = async {
            let (client, conn, _) = target.connect(&config).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok::<_, crate::conn::ConnError>(client)
        };
        match tokio::time::timeout(self.settings.connect_timeout, connect).await {
            Err(_) => Err(ProbeError::ConnectTimeout(self.settings.connect_timeout)),
            Ok(Err(e)) => Err(ProbeError::Connect(e)),
            Ok(Ok(c)) => Ok(c),
        }
    }

    /// Run `instance`'s next probe of `target` in the background (a new actor's first probe,
    /// while its start commits): connect and ask the probe query; [`Prober::probe`] takes the
    /// answer. Nothing when a connection to it is kept or a probe is prepared for it, or
    /// [`MAX_PREPARED`] are.
    pub fn prepare(self: &std::sync::Arc<Self>, instance: Uuid, target: &str) {
        let target_hash = hash_target(target);
        let Ok(mut config) = ConnConfig::parse(target) else {
            return;
        };
        config.default_root_cert(self.default_root_cert.as_ref());
        if self
            .kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&instance)
            .is_some_and(|k| k.target_hash == target_hash)
        {
            return;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let since = Instant::now();
        {
            let mut prepared = self.prepared.lock().unwrap_or_else(|p| p.into_inner());
            prepared.retain(|_, p| p.since.elapsed() < PREPARED_FOR);
            if prepared.len() >= MAX_PREPARED || prepared.contains_key(&instance) {
                return;
            }
            prepared.insert(
                instance,
                Prepared {
                    target_hash,
                    answer: rx,
                    since,
                },
            );
        }
        let prober = self.clone();
        tokio::spawn(async move {
            let answered = prober.connect_and_query(config).await;
            let _ = tx.send((answered, since.elapsed()));
            // Not taken by then (the start failed, the check ran elsewhere or never probed):
            // dropped, and the connection with it.
            tokio::time::sleep_until((since + PREPARED_FOR).into()).await;
            let mut prepared = prober.prepared.lock().unwrap_or_else(|p| p.into_inner());
            if prepared.get(&instance).is_some_and(|p| p.since == since) {
                prepared.remove(&instance);
            }
        });
    }

    /// The answer of the probe prepared for `instance`'s check of this target, and how long
    /// it took, waiting for it while it runs (within the connect and query timeouts it
    /// started with). An answer that came more than [`ANSWER_FRESH_FOR`] ago is no
    /// observation of this check's: asked again on its connection while that is open,
    /// otherwise (or a failure that old) `None`. `None`: the probe connects itself.
    async fn take_prepared(
        &self,
        instance: Uuid,
        target_hash: u64,
    ) -> Option<(Answered, Duration)> {
        let p = self
            .prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&instance)?;
        if p.target_hash != target_hash || p.since.elapsed() >= PREPARED_FOR {
            return None;
        }
        let bound = self.settings.connect_timeout + self.settings.query_timeout;
        let left = bound.saturating_sub(p.since.elapsed());
        let (answered, took) = match tokio::time::timeout(left, p.answer).await {
            Ok(Ok(answer)) => answer,
            // The preparing task is gone (the runtime is stopping): probe here.
            Ok(Err(_)) => return None,
            // Its own bounds end the preparing task first; this is only a backstop.
            Err(_) => {
                let timeout = ProbeError::ConnectTimeout(self.settings.connect_timeout);
                return Some((Err(timeout), bound));
            }
        };
        if p.since.elapsed().saturating_sub(took) <= ANSWER_FRESH_FOR {
            return Some((answered, took));
        }
        match answered {
            Ok((client, _)) if !client.is_closed() => {
                let asked = Instant::now();
                let fresh = self.query_on(client).await.ok()?;
                Some((Ok(fresh), asked.elapsed()))
            }
            _ => None,
        }
    }

    fn take_kept(&self, instance: Uuid, target_hash: u64) -> Option<tokio_postgres::Client> {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        match kept.remove(&instance) {
            Some(k) if k.target_hash == target_hash && !k.client.is_closed() => Some(k.client),
            _ => None,
        }
    }

    fn keep(&self, instance: Uuid, target_hash: u64, client: tokio_postgres::Client) {
        if self.settings.keep_connections == 0 {
            return;
        }
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() >= self.settings.keep_connections && !kept.contains_key(&instance) {
            let lru = kept
                .iter()
                .min_by_key(|(_, k)| k.last_used)
                .map(|(id, _)| *id);
            if let Some(lru) = lru {
                kept.remove(&lru);
            }
        }
        kept.insert(
            instance,
            Kept {
                target_hash,
                client,
                last_used: Instant::now(),
            },
        );
    }

    /// Drop the kept (or prepared) connection of an instance whose actor has gone.
    pub fn forget(&self, instance: Uuid) {
        self.kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&instance);
        self.prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&instance);
    }

    /// Drop kept connections unused for longer than `idle`.
    pub fn sweep(&self, idle: Duration) {
        let now = Instant::now();
        self.kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, k| now.duration_since(k.last_used) < idle && !k.client.is_closed());
        self.prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, p| p.since.elapsed() < PREPARED_FOR);
    }

    /// Kept connections right now.
    pub fn kept_connections(&self) -> usize {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// What the probe query returned.
struct ProbeRow {
    version: Option<String>,
    in_recovery: Option<bool>,
}

/// `sql/probe.sql` in the simple query protocol: one round trip (no prepare), and it works
/// through a pooler in transaction mode, where a prepared statement may not outlive its
/// transaction.
async fn probe_query(client: &tokio_postgres::Client) -> Result<ProbeRow, ProbeError> {
    let messages = client
        .simple_query(crate::sql::PROBE)
        .await
        .map_err(|e| ProbeError::Query(error_text(&e)))?;
    messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(ProbeRow {
                // try_get: a target that answers with fewer columns (a proxy, not PostgreSQL)
                // is a failed probe, not a panic.
                version: r.try_get(0).ok().flatten().map(str::to_owned),
                in_recovery: r.try_get(1).ok().flatten().map(|v| v == "t"),
            }),
            _ => None,
        })
        .ok_or(ProbeError::NoRow)
}

/// Why a probe failed (its text is the check's `error_message`), or a prober could not be
/// set up.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("connect timed out after {} ms", .0.as_millis())]
    ConnectTimeout(Duration),
    #[error("connect failed: {0}")]
    Connect(crate::conn::ConnError),
    #[error("query timed out after {} ms", .0.as_millis())]
    QueryTimeout(Duration),
    #[error("query failed: {0}")]
    Query(String),
    #[error("query failed: the probe query returned no row")]
    NoRow,
    #[error("--probe-ssl-root-cert {}: {source}", .path.display())]
    RootCert {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

fn ok_result(row: &ProbeRow, took: Duration) -> ProbeResult {
    ProbeResult {
        ok: true,
        version: row.version.clone(),
        in_recovery: row.in_recovery,
        response_time_ms: took.as_millis() as u64,
        error: None,
    }
}
