//! The command line: every flag also reads an environment variable. `main.rs` only parses
//! and calls [`run`]; every command lives in the library so the API and tests share it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config;
use crate::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};

#[derive(Debug, Parser)]
#[command(
    name = "toygres-actors",
    version,
    about = "Keeps one durable health actor alive for every PostgreSQL instance in a toygres CMS"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

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
    /// Log filter (tracing EnvFilter syntax); RUST_LOG wins when set.
    #[arg(
        long,
        env = "TOYGRES_ACTORS_LOG",
        default_value = "info,sqlx::postgres::notice=warn",
        global = true
    )]
    pub log: String,
    /// Log format.
    #[arg(long, env = "TOYGRES_ACTORS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (the default).
    Run(Box<RunArgs>),
    /// Apply the migrations and exit.
    Migrate,
    /// Print every instance with its actor and verdict; exits 1 when any is stale, missing,
    /// zombie or orphan.
    Status(StatusArgs),
    /// Explain why an instance's actor is in its state.
    Explain {
        /// k8s_name, or dns_name of a live instance.
        name: String,
    },
    /// Start, restart or cancel one instance's actor.
    Actor {
        #[arg(value_enum)]
        action: ActorAction,
        /// k8s_name, or dns_name of a live instance.
        name: String,
    },
    /// One full reconcile pass: start missing, restart stale/zombie, cancel orphans.
    Heal {
        /// Print what would be done, do nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Private PostgreSQL + a sample fleet + the service, with a live table.
    Demo(DemoArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ActorAction {
    Start,
    Restart,
    Cancel,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Only instances with this verdict.
    #[arg(long, env = "TOYGRES_ACTORS_STATUS_VERDICT")]
    pub verdict: Option<String>,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
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
    /// Bearer token required by POST endpoints.
    #[arg(long, env = "TOYGRES_ACTORS_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
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
    /// Keep probe connections open between checks (at most this many; 0 = reconnect every time).
    #[arg(
        long,
        env = "TOYGRES_ACTORS_PROBE_KEEP_CONNECTIONS",
        default_value_t = 1024
    )]
    pub probe_keep_connections: usize,
    /// How often an actor renews its probe lease (the durable loop's period; checks run
    /// every --check-interval in between). Shorter = faster take-over after a replica dies,
    /// more Duroxide work.
    #[arg(long, env = "TOYGRES_ACTORS_LEASE_RENEW_INTERVAL", default_value = "4m", value_parser = parse_duration)]
    pub lease_renew_interval: Duration,
    /// Probes running at once.
    #[arg(long, env = "TOYGRES_ACTORS_PROBE_CONCURRENCY", default_value_t = 256)]
    pub probe_concurrency: usize,
    /// Run a started actor's first health check at once, in-process, instead of waiting for
    /// Duroxide's dispatcher to pick it up (fenced like any check).
    #[arg(long, env = "TOYGRES_ACTORS_EAGER_FIRST_CHECK", default_value_t = true, action = clap::ArgAction::Set)]
    pub eager_first_check: bool,
    /// How long health history rows are kept.
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
    /// Duroxide dispatcher idle poll interval.
    #[arg(long, env = "TOYGRES_ACTORS_POLL_INTERVAL", default_value = "250ms", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Duroxide connection pool size (sets DUROXIDE_PG_POOL_MAX for duroxide-pg).
    #[arg(long, env = "TOYGRES_ACTORS_DUROXIDE_POOL_MAX", default_value_t = 10)]
    pub duroxide_pool_max: u32,
    /// CMS pool size.
    #[arg(long, env = "TOYGRES_ACTORS_CMS_POOL_MAX", default_value_t = 16)]
    pub cms_pool_max: u32,
    /// Duroxide commits with synchronous_commit=off (faster; a PostgreSQL crash may lose
    /// ~0.6 s of Duroxide progress, which is then re-run).
    #[arg(long, env = "TOYGRES_ACTORS_DUROXIDE_ASYNC_COMMIT")]
    pub duroxide_async_commit: bool,
    /// Export per-instance series (one per instance and metric); turn off for huge fleets.
    #[arg(long, env = "TOYGRES_ACTORS_PER_INSTANCE_METRICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub per_instance_metrics: bool,
    /// Period of the fleet gauges' database query.
    #[arg(long, env = "TOYGRES_ACTORS_FLEET_POLL_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub fleet_poll_interval: Duration,
    /// Listener liveness ping period.
    #[arg(long, env = "TOYGRES_ACTORS_PING_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub ping_interval: Duration,
    /// Run Duroxide workers only; never lead (no listener, no reconciler).
    #[arg(long, env = "TOYGRES_ACTORS_WORKER_ONLY")]
    pub worker_only: bool,
    /// Name of this replica in logs and decisions (default: hostname-pid).
    #[arg(long, env = "TOYGRES_ACTORS_REPLICA")]
    pub replica: Option<String>,
}

impl RunArgs {
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

/// `30s`, `5m`, `2h`, `7d`, `250ms`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 30s, 5m, 250ms)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => {
            return Err(format!(
                "`{s}`: unknown unit `{unit}` (use ms, s, m, h or d)"
            ));
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("`{s}` is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The database a command works on: the given URL, or a private cluster.
pub struct Database {
    pub url: String,
    /// Holds the private cluster alive; dropping it stops the cluster.
    pub embedded: Option<EmbeddedPostgres>,
}

/// Database name used inside the private cluster.
pub const EMBEDDED_DATABASE: &str = "toygres";

/// Resolve the CMS database: `DATABASE_URL`, or start the private cluster under `data_dir`.
pub async fn open_database(global: &GlobalArgs) -> anyhow::Result<Database> {
    if let Some(url) = &global.database_url {
        return Ok(Database {
            url: url.clone(),
            embedded: None,
        });
    }
    let opts = EmbeddedOptions::persistent(global.data_dir.join("pg"));
    let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&opts)).await??;
    crate::db::ensure_database(&pg.url("postgres"), EMBEDDED_DATABASE).await?;
    Ok(Database {
        url: pg.url(EMBEDDED_DATABASE),
        embedded: Some(pg),
    })
}

/// Install the tracing subscriber (once, before anything else logs — Duroxide included).
pub fn init_tracing(global: &GlobalArgs) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&global.log))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match global.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Execute a parsed command line; returns the process exit code.
pub async fn execute(cli: Cli) -> anyhow::Result<i32> {
    if !config::valid_schema_name(&cli.global.duroxide_schema) {
        anyhow::bail!(
            "--duroxide-schema `{}` is not a plain lower-case identifier",
            cli.global.duroxide_schema
        );
    }
    let command = match cli.command {
        Some(c) => c,
        None => Command::Run(Box::new(RunArgs::from_env()?)),
    };
    match command {
        Command::Migrate => {
            let db = open_database(&cli.global).await?;
            let pool = crate::db::cms_pool(&db.url, 2).await?;
            crate::db::migrate(&pool).await?;
            pool.close().await;
            println!("migrations applied");
            drop(db);
            Ok(0)
        }
        Command::Run(args) => {
            validate_run_args(&args)?;
            crate::service::run(&cli.global, &args).await?;
            Ok(0)
        }
        Command::Demo(args) => crate::demo::run(&cli.global, &args).await,
        Command::Status(args) => {
            let only = match args.verdict.as_deref() {
                None => None,
                Some(v) => Some(crate::verdict::Verdict::parse(v).ok_or_else(|| {
                    anyhow::anyhow!("unknown verdict `{v}` (ok, stale, missing, zombie, orphan, unhealthy, idle)")
                })?),
            };
            let reconciler = operator_reconciler(&cli.global).await?;
            let list = crate::ops::list(&reconciler, only).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", crate::ops::render_table(&list));
            }
            Ok(if list.iter().any(|a| a.verdict.needs_healing()) {
                1
            } else {
                0
            })
        }
        Command::Explain { name } => {
            let reconciler = operator_reconciler(&cli.global).await?;
            let e = crate::ops::explain(&reconciler, &name).await?;
            print!("{}", crate::ops::render_explanation(&e));
            Ok(0)
        }
        Command::Actor { action, name } => {
            let reconciler = operator_reconciler(&cli.global).await?;
            let r = match action {
                ActorAction::Start => crate::ops::start(&reconciler, &name, "cli").await?,
                ActorAction::Restart => crate::ops::restart(&reconciler, &name, "cli").await?,
                ActorAction::Cancel => crate::ops::cancel(&reconciler, &name, "cli").await?,
            };
            println!("{}: {}", r.k8s_name, r.message);
            if let Some(old) = &r.old_actor_id {
                println!("  old actor: {old}");
            }
            if let Some(new) = &r.new_actor_id {
                println!("  new actor: {new}");
            }
            if let Some(w) = &r.warning {
                println!("  warning: {w}");
            }
            Ok(0)
        }
        Command::Heal { dry_run } => {
            let reconciler = operator_reconciler(&cli.global).await?;
            let outcomes = reconciler.full_reconcile(None, dry_run).await?;
            if outcomes.is_empty() {
                println!("nothing to heal");
            }
            for o in &outcomes {
                let what = match &o.skipped {
                    Some(why) => format!("would {} ({why})", o.action),
                    None => format!("did {}", o.action),
                };
                println!(
                    "{:<30} {:<9} {:<28} {} — {}",
                    o.k8s_name,
                    o.verdict,
                    what,
                    o.new_actor_id.as_deref().unwrap_or(""),
                    o.reason
                );
            }
            Ok(0)
        }
    }
}

fn validate_run_args(args: &RunArgs) -> anyhow::Result<()> {
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
    if args.lease_renew_interval.is_zero() || args.lease_renew_interval >= args.stale_after {
        anyhow::bail!(
            "--lease-renew-interval must be greater than zero and shorter than --stale-after"
        );
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

/// For the operator commands: the database (DATABASE_URL, or the private cluster a running
/// service started), and a reconciler without a Duroxide runtime of its own — the
/// service's runtime carries out what we enqueue.
async fn operator_reconciler(global: &GlobalArgs) -> anyhow::Result<crate::reconcile::Reconciler> {
    let url = match &global.database_url {
        Some(url) => url.clone(),
        None => crate::embedded_pg::running_url(&global.data_dir.join("pg"), EMBEDDED_DATABASE).ok_or_else(|| {
            anyhow::anyhow!(
                "no DATABASE_URL, and no private cluster is running under {} (start `toygres-actors run` or `demo` first)",
                global.data_dir.display()
            )
        })?,
    };
    let args = RunArgs::from_env()?;
    let pool = crate::db::cms_pool(&url, 4).await?;
    let store = crate::duro::open_store(&url, &global.duroxide_schema, false, &pool).await?;
    let control = crate::duro::ActorControl::new(
        pool,
        store,
        &global.duroxide_schema,
        crate::duro::ActorSettings {
            check_interval: args.check_interval,
            iterations_per_execution: args.iterations_per_execution,
            unhealthy_after: args.unhealthy_after,
            actor_states: args.actor_states.clone(),
            lease_renew: args.lease_renew_interval,
        },
    );
    Ok(crate::reconcile::Reconciler::new(
        control,
        args.stale_after,
        format!("cli-{}", std::process::id()),
    ))
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

    #[test]
    fn run_defaults_parse() {
        let args = RunArgs::from_env().unwrap();
        assert_eq!(args.actor_states, vec!["creating", "running"]);
    }
}
