//! The service's settings as flags (every flag also reads an environment variable), parsed
//! and validated: the shared vocabulary between the command line, the service and the demo.
//! See [`crate::config`] for the reasons behind the defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};

use crate::config;

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// The CMS database. Without it, `run`, `demo` and `migrate` start a private PostgreSQL
    /// under --data-dir, and the other commands connect to the one a running service started.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,
    /// Where the private PostgreSQL cluster lives.
    #[arg(
        long,
        env = "TOYGRES_ACTORS_DATA_DIR",
        default_value = ".toygres-actors",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Schema of the Duroxide store in the CMS database.
    #[arg(long, env = "TOYGRES_ACTORS_DUROXIDE_SCHEMA", default_value = config::DEFAULT_DUROXIDE_SCHEMA, global = true)]
    pub duroxide_schema: String,
    /// Schema where toygres' own server runs Duroxide: instance actors found there (toygres'
    /// `actor-<k8s_name>`, or ours from a store that used to live there) are adopted — ours
    /// started, theirs cancelled through a client on that schema; no runtime of ours runs
    /// there. `off` disables adoption.
    #[arg(long, env = "TOYGRES_ACTORS_LEGACY_DUROXIDE_SCHEMA", default_value = config::DEFAULT_LEGACY_DUROXIDE_SCHEMA, global = true)]
    pub legacy_duroxide_schema: String,
    /// Log filter (tracing EnvFilter syntax); RUST_LOG wins when set.
    #[arg(
        long,
        env = "TOYGRES_ACTORS_LOG",
        default_value = crate::quiet::DEFAULT_LOG_FILTER,
        global = true
    )]
    pub log: String,
    /// Log format.
    #[arg(long, env = "TOYGRES_ACTORS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

impl GlobalArgs {
    /// The legacy store to adopt from: `None` when turned off, or when it is our own store.
    pub fn legacy_schema(&self) -> Option<&str> {
        let s = self.legacy_duroxide_schema.as_str();
        (s != config::LEGACY_OFF && s != self.duroxide_schema).then_some(s)
    }

    /// Schema names are spliced into SQL: plain lower-case identifiers only.
    pub fn validate_schemas(&self) -> anyhow::Result<()> {
        if !config::valid_schema_name(&self.duroxide_schema) {
            anyhow::bail!(
                "--duroxide-schema `{}` is not a plain lower-case identifier",
                self.duroxide_schema
            );
        }
        if self.legacy_duroxide_schema != config::LEGACY_OFF
            && !config::valid_schema_name(&self.legacy_duroxide_schema)
        {
            anyhow::bail!(
                "--legacy-duroxide-schema `{}` is not a plain lower-case identifier (or `off`)",
                self.legacy_duroxide_schema
            );
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Seconds between health checks in the demo (short, so health moves on screen).
    #[arg(long, env = "TOYGRES_ACTORS_DEMO_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Keep the service running after the walkthrough until Ctrl-C.
    #[arg(long, env = "TOYGRES_ACTORS_DEMO_STAY")]
    pub stay: bool,
}

/// Settings of the service; see `config.rs` for the reasons behind the defaults.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// HTTP listen address (metrics, health, API).
    #[arg(
        long = "http",
        env = "TOYGRES_ACTORS_HTTP",
        default_value = "127.0.0.1:9321"
    )]
    pub http: SocketAddr,
    /// Bearer token required by POST endpoints, and accepted for every read (empty is an
    /// error, not "no auth").
    #[arg(long, env = "TOYGRES_ACTORS_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Bearer token for the reads that show the fleet (/metrics and the /api/* GETs) only:
    /// for Prometheus and dashboards, which need not hold the token that restarts actors.
    /// Once set, those reads need a token (this one or --api-token) on any address.
    #[arg(long, env = "TOYGRES_ACTORS_API_READ_TOKEN", hide_env_values = true)]
    pub api_read_token: Option<String>,
    /// Serve a non-loopback --http address without the tokens it otherwise needs: without
    /// --api-token anyone who reaches the port can restart and cancel actors, and without
    /// --api-read-token the fleet reads are open. Refused without this flag.
    #[arg(long, env = "TOYGRES_ACTORS_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// The reads that show the fleet (/metrics and the /api/* GETs) need a bearer token on a
    /// loopback --http address too (on any other address they always do, unless
    /// --insecure-no-auth); /healthz and /readyz stay open for the orchestrator's probes.
    /// Needs --api-token or --api-read-token.
    #[arg(long, env = "TOYGRES_ACTORS_API_TOKEN_FOR_READS")]
    pub api_token_for_reads: bool,
    /// The longest an HTTP request may take, the wait for a free slot included; past it the
    /// answer is 503.
    #[arg(long, env = "TOYGRES_ACTORS_HTTP_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http_timeout: Duration,
    /// HTTP API requests (/metrics, /api/*) served at once; more wait for a slot (within
    /// --http-timeout). /healthz and /readyz are not counted.
    #[arg(long, env = "TOYGRES_ACTORS_HTTP_CONCURRENCY", default_value_t = config::DEFAULT_HTTP_CONCURRENCY)]
    pub http_concurrency: usize,
    /// The fleet's instances are standbys (a fleet that monitors replicas): an instance in
    /// recovery is then healthy, and one that is not (a promoted or wrong target) is
    /// unhealthy, "not in recovery". Without it, an instance in recovery is unhealthy, "in
    /// recovery".
    #[arg(long, env = "TOYGRES_ACTORS_EXPECT_STANDBY")]
    pub expect_standby: bool,
    /// Time between an actor's health checks.
    #[arg(long, env = "TOYGRES_ACTORS_CHECK_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub check_interval: Duration,
    /// Age of last_health_check after which an actor is stale.
    #[arg(long, env = "TOYGRES_ACTORS_STALE_AFTER", default_value = "5m", value_parser = parse_duration)]
    pub stale_after: Duration,
    /// Period of the full reconcile.
    #[arg(long, env = "TOYGRES_ACTORS_RESYNC_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub resync_interval: Duration,
    /// Instance states that call for an actor (comma-separated).
    #[arg(
        long,
        env = "TOYGRES_ACTORS_ACTOR_STATES",
        value_delimiter = ',',
        default_value = "creating,running"
    )]
    pub actor_states: Vec<String>,
    /// Consecutive failed probes before an instance is marked unhealthy.
    #[arg(long, env = "TOYGRES_ACTORS_UNHEALTHY_AFTER", default_value_t = config::DEFAULT_UNHEALTHY_AFTER)]
    pub unhealthy_after: u32,
    /// Probe connect timeout.
    #[arg(long, env = "TOYGRES_ACTORS_PROBE_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub probe_connect_timeout: Duration,
    /// Probe query timeout.
    #[arg(long, env = "TOYGRES_ACTORS_PROBE_QUERY_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub probe_query_timeout: Duration,
    /// CA certificates (a PEM file, or `system`) that probes trust when an instance's
    /// connection string names no sslrootcert. As in libpq, a root certificate makes
    /// `sslmode=require` verify the chain; `verify-ca` and `verify-full` need one.
    #[arg(long, env = "TOYGRES_ACTORS_PROBE_SSL_ROOT_CERT")]
    pub probe_ssl_root_cert: Option<PathBuf>,
    /// Keep probe connections open between checks (at most this many; 0 = reconnect every time).
    #[arg(
        long,
        env = "TOYGRES_ACTORS_PROBE_KEEP_CONNECTIONS",
        default_value_t = 1024
    )]
    pub probe_keep_connections: usize,
    /// How often an actor records itself as its instance's owner (the durable loop's
    /// period; checks run every --check-interval in between, on whichever replica holds the
    /// probe lease). Take-over after a replica dies does not wait for it: it follows the
    /// replica heartbeat. Shorter = more Duroxide work.
    #[arg(long, env = "TOYGRES_ACTORS_LEASE_RENEW_INTERVAL", default_value = "20m", value_parser = parse_duration)]
    pub lease_renew_interval: Duration,
    /// Probes running at once.
    #[arg(long, env = "TOYGRES_ACTORS_PROBE_CONCURRENCY", default_value_t = 256)]
    pub probe_concurrency: usize,
    /// Run a started actor's first health check at once, in-process, instead of waiting for
    /// Duroxide's dispatcher to pick it up (fenced like any check).
    #[arg(long, env = "TOYGRES_ACTORS_EAGER_FIRST_CHECK", default_value_t = true, action = clap::ArgAction::Set)]
    pub eager_first_check: bool,
    /// How a check's health write commits: `async` does not wait for the WAL flush (a
    /// PostgreSQL crash can lose the last fraction of a second of health rows; the next
    /// check writes them again), `durable` waits as every other write does.
    #[arg(
        long,
        env = "TOYGRES_ACTORS_CHECK_COMMIT",
        value_enum,
        default_value = "async"
    )]
    pub check_commit: config::CheckCommit,
    /// How long health history rows, decisions and handled restart requests are kept.
    #[arg(long, env = "TOYGRES_ACTORS_HISTORY_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub history_retention: Duration,
    /// Actor iterations per Duroxide execution (continue-as-new after that many).
    #[arg(long, env = "TOYGRES_ACTORS_ITERATIONS_PER_EXECUTION", default_value_t = config::DEFAULT_ITERATIONS_PER_EXECUTION)]
    pub iterations_per_execution: u32,
    /// Instances reconciled at once.
    #[arg(long, env = "TOYGRES_ACTORS_RECONCILE_PARALLELISM", default_value_t = config::DEFAULT_RECONCILE_PARALLELISM)]
    pub reconcile_parallelism: usize,
    /// Duroxide orchestration dispatcher slots.
    #[arg(
        long,
        env = "TOYGRES_ACTORS_ORCHESTRATION_CONCURRENCY",
        default_value_t = 2
    )]
    pub orchestration_concurrency: usize,
    /// Duroxide activity worker slots.
    #[arg(long, env = "TOYGRES_ACTORS_WORKER_CONCURRENCY", default_value_t = 2)]
    pub worker_concurrency: usize,
    /// Duroxide fetches wait for a wake-up instead of polling (`off`: duroxide-pg's own
    /// behaviour, an immediate answer and a poll every --poll-interval; for comparisons).
    #[arg(long, env = "TOYGRES_ACTORS_DUROXIDE_WAIT", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub duroxide_wait: bool,
    /// Duroxide dispatcher idle poll interval.
    #[arg(long, env = "TOYGRES_ACTORS_POLL_INTERVAL", default_value = "250ms", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Duroxide connection pool size (handed to duroxide-pg as DUROXIDE_PG_POOL_MAX).
    #[arg(long, env = "TOYGRES_ACTORS_DUROXIDE_POOL_MAX", default_value_t = 10)]
    pub duroxide_pool_max: u32,
    /// CMS pool size.
    #[arg(long, env = "TOYGRES_ACTORS_CMS_POOL_MAX", default_value_t = 16)]
    pub cms_pool_max: u32,
    /// Duroxide commits with synchronous_commit=off (faster; a PostgreSQL crash may lose
    /// ~0.6 s of Duroxide progress, which is then re-run).
    #[arg(long, env = "TOYGRES_ACTORS_DUROXIDE_ASYNC_COMMIT")]
    pub duroxide_async_commit: bool,
    /// Which instances get per-instance series (three each): `auto` (every instance up to
    /// 10,000, above that only those whose verdict needs attention), `all` (or `true`),
    /// `attention`, `off` (or `false`). The per-instance alerts match only verdicts that
    /// need attention, so they fire the same in every mode but `off`.
    #[arg(
        long,
        env = "TOYGRES_ACTORS_PER_INSTANCE_METRICS",
        value_enum,
        default_value = "auto"
    )]
    pub per_instance_metrics: config::PerInstanceMetrics,
    /// Period of the fleet gauges' database query (longer when the query itself takes more
    /// than 5 % of the time: 20× its duration).
    #[arg(long, env = "TOYGRES_ACTORS_FLEET_POLL_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub fleet_poll_interval: Duration,
    /// Listener liveness ping period.
    #[arg(long, env = "TOYGRES_ACTORS_PING_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub ping_interval: Duration,
    /// Honour raw `NOTIFY toygres_actor_control` requests (on|off). Any role that can
    /// CONNECT can send them; turn them off where CONNECT cannot be restricted.
    /// `toygres_cms.request_actor_restart()` works either way.
    #[arg(long, env = "TOYGRES_ACTORS_CONTROL_NOTIFY", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub control_notify: bool,
    /// A live actor younger than this is not restarted (any path: NOTIFY, SQL, HTTP, CLI,
    /// healing); the request waits until it may.
    #[arg(long, env = "TOYGRES_ACTORS_RESTART_MIN_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub restart_min_interval: Duration,
    /// Healing pauses (and ToygresActorsHealingPaused alerts) while more than this share of
    /// the instances that should have an actor are stale at once (and at least 5).
    #[arg(long, env = "TOYGRES_ACTORS_HEAL_PAUSE_SHARE", default_value_t = config::DEFAULT_HEAL_PAUSE_SHARE)]
    pub heal_pause_share: f64,
    /// Restarts per second across the fleet at most (burst: twice this).
    #[arg(long, env = "TOYGRES_ACTORS_RESTART_RATE", default_value_t = config::DEFAULT_RESTART_RATE)]
    pub restart_rate: u32,
    /// Run Duroxide workers only; never lead (no listener, no reconciler).
    #[arg(long, env = "TOYGRES_ACTORS_WORKER_ONLY")]
    pub worker_only: bool,
    /// Name of this replica (default: the host name; on Kubernetes, the pod name). Its
    /// identity is this name plus a random per-process epoch: of two processes started with
    /// one name, the newest wins and the other stops probing.
    #[arg(long, env = "TOYGRES_ACTORS_REPLICA")]
    pub replica: Option<String>,
}

/// Who may read the fleet (`/metrics` and the `/api/*` GETs); `/healthz` and `/readyz` are
/// open to anyone who reaches the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAccess {
    /// Anyone who reaches the port (a loopback --http address, or --insecure-no-auth).
    Open,
    /// A bearer token: --api-read-token or --api-token.
    Token,
}

impl RunArgs {
    /// Whether the fleet's reads need a token. The rule keys on the address the server
    /// binds, not on where a request comes from: `0.0.0.0` is not loopback, so a request
    /// through 127.0.0.1 to a server bound there needs the token like any other.
    pub fn read_access(&self) -> ReadAccess {
        let exposed = !self.http.ip().is_loopback() && !self.insecure_no_auth;
        if exposed || self.api_token_for_reads || self.api_read_token.is_some() {
            ReadAccess::Token
        } else {
            ReadAccess::Open
        }
    }

    /// Reject settings that cannot work together.
    pub fn validate(&self) -> anyhow::Result<()> {
        validate_run_args(self)
    }

    /// The run settings with every default (environment variables still apply).
    pub fn from_env() -> Result<Self, clap::Error> {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            args: RunArgs,
        }
        Only::try_parse_from(["toygres-actors"]).map(|o| o.args)
    }
}

/// A setting's value that does not parse (clap shows it with the flag's name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("`{0}`: use on or off")]
    NotOnOff(String),
    #[error("`{0}` is not a duration (e.g. 30s, 5m, 250ms)")]
    NotADuration(String),
    #[error("`{value}`: unknown unit `{unit}` (use ms, s, m, h or d)")]
    UnknownUnit { value: String, unit: String },
    #[error("`{0}` is not a valid duration")]
    InvalidDuration(String),
}

/// `on`/`off` (also true/false, yes/no, 1/0).
pub fn parse_on_off(s: &str) -> Result<bool, ValueError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        other => Err(ValueError::NotOnOff(other.to_string())),
    }
}

/// `30s`, `5m`, `2h`, `7d`, `250ms`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, ValueError> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| ValueError::NotADuration(s.to_string()))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => {
            return Err(ValueError::UnknownUnit {
                value: s.to_string(),
                unit: unit.to_string(),
            });
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(ValueError::InvalidDuration(s.to_string()));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn validate_run_args(args: &RunArgs) -> anyhow::Result<()> {
    if !(args.heal_pause_share > 0.0 && args.heal_pause_share <= 1.0) {
        anyhow::bail!("--heal-pause-share must be in (0, 1]");
    }
    for (flag, token) in [
        ("--api-token (TOYGRES_ACTORS_API_TOKEN)", &args.api_token),
        (
            "--api-read-token (TOYGRES_ACTORS_API_READ_TOKEN)",
            &args.api_read_token,
        ),
    ] {
        if token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            anyhow::bail!("{flag} is empty: set a token, or unset it");
        }
    }
    if !args.http.ip().is_loopback() && args.api_token.is_none() && !args.insecure_no_auth {
        anyhow::bail!(
            "--http {} is not a loopback address and no API token is set: set TOYGRES_ACTORS_API_TOKEN (and TOYGRES_ACTORS_API_READ_TOKEN for the readers), or pass --insecure-no-auth to serve it without authentication",
            args.http
        );
    }
    let no_token = args.api_token.is_none() && args.api_read_token.is_none();
    if args.api_token_for_reads && no_token {
        anyhow::bail!(
            "--api-token-for-reads needs a token: set --api-read-token (TOYGRES_ACTORS_API_READ_TOKEN) or --api-token (TOYGRES_ACTORS_API_TOKEN)"
        );
    }
    if args.http_timeout.is_zero() || args.http_concurrency == 0 {
        anyhow::bail!("--http-timeout and --http-concurrency must be greater than zero");
    }
    if args.check_interval.is_zero() {
        anyhow::bail!("--check-interval must be greater than zero");
    }
    if args.stale_after <= args.check_interval {
        anyhow::bail!("--stale-after must be longer than --check-interval");
    }
    if args.resync_interval.is_zero()
        || args.fleet_poll_interval.is_zero()
        || args.ping_interval.is_zero()
    {
        anyhow::bail!("intervals must be greater than zero");
    }
    if args.lease_renew_interval.is_zero() {
        anyhow::bail!("--lease-renew-interval must be greater than zero");
    }
    if args.actor_states.is_empty() {
        anyhow::bail!("--actor-states must name at least one state");
    }
    const STATES: [&str; 6] = [
        "creating", "running", "stopped", "deleting", "deleted", "failed",
    ];
    for s in &args.actor_states {
        if !STATES.contains(&s.as_str()) {
            anyhow::bail!(
                "--actor-states: unknown state `{s}` (one of {})",
                STATES.join(", ")
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert_eq!(parse_duration("12").unwrap(), Duration::from_secs(12));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    fn run_args(args: &[&str]) -> RunArgs {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            args: RunArgs,
        }
        let argv = std::iter::once("toygres-actors").chain(args.iter().copied());
        Only::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn token_for_reads_needs_a_token() {
        let e = run_args(&["--api-token-for-reads"]).validate().unwrap_err();
        assert!(e.to_string().contains("--api-token-for-reads needs"), "{e}");
        let args = run_args(&["--api-token-for-reads", "--api-token", "t"]);
        assert!(args.api_token_for_reads);
        args.validate().unwrap();
        assert!(!run_args(&[]).api_token_for_reads);
        assert!(run_args(&["--expect-standby"]).expect_standby);
        assert!(!run_args(&[]).expect_standby);
    }

    #[test]
    fn reads_need_a_token_off_loopback() {
        let open = run_args(&[]);
        assert_eq!(open.read_access(), ReadAccess::Open);
        for args in [
            vec!["--http", "0.0.0.0:9321", "--api-token", "t"],
            vec!["--http", "192.0.2.2:9321", "--api-token", "t"],
            vec!["--http", "[::]:9321", "--api-token", "t"],
            vec!["--api-read-token", "r"],
            vec!["--api-token-for-reads", "--api-read-token", "r"],
        ] {
            let a = run_args(&args);
            a.validate().unwrap();
            assert_eq!(a.read_access(), ReadAccess::Token, "{args:?}");
        }
        for args in [
            vec!["--http", "[::1]:9321"],
            vec!["--http", "127.0.0.2:9321", "--api-token", "t"],
            vec!["--http", "0.0.0.0:9321", "--insecure-no-auth"],
            vec![
                "--http",
                "0.0.0.0:9321",
                "--insecure-no-auth",
                "--api-token",
                "t",
            ],
        ] {
            let a = run_args(&args);
            a.validate().unwrap();
            assert_eq!(a.read_access(), ReadAccess::Open, "{args:?}");
        }
        let e = run_args(&["--api-read-token", " "]).validate().unwrap_err();
        assert!(e.to_string().contains("--api-read-token"), "{e}");
        let e = run_args(&["--http", "0.0.0.0:9321", "--api-read-token", "r"])
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("not a loopback address"), "{e}");
        let e = run_args(&["--http-concurrency", "0"])
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("--http-concurrency"), "{e}");
    }

    #[test]
    fn run_defaults_parse() {
        let args = RunArgs::from_env().unwrap();
        assert_eq!(args.actor_states, vec!["creating", "running"]);
        args.validate().unwrap();
    }
}
