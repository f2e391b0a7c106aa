//! The command line: parses (the flags themselves live in [`crate::settings`]) and calls
//! down — `main.rs` only parses and calls [`execute`]; every command's work lives in the
//! library ([`crate::service`], [`crate::ops`], [`crate::demo`]) so the API and tests share it.

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::db::{EMBEDDED_DATABASE, open_database};
use crate::settings::{DemoArgs, GlobalArgs, LogFormat, RunArgs};

#[derive(Debug, Parser)]
#[command(
    name = "toygres-actors",
    version,
    about = "Keeps one durable health actor alive for every PostgreSQL instance in a toygres CMS",
    after_help = "Exit codes: 0 done (`status`: nothing needs healing); 1 `status` found an \
                  instance stale, missing, zombie or orphan; 2 the command failed (the reason \
                  is on standard error). Every flag: docs/configuration.md."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
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
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Start, restart or cancel one instance's actor.
    Actor {
        #[arg(value_enum)]
        action: ActorAction,
        /// k8s_name, or dns_name of a live instance.
        name: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// One full reconcile pass: start missing, restart stale/zombie, cancel orphans.
    Heal {
        /// Print what would be done, do nothing.
        #[arg(long)]
        dry_run: bool,
        /// JSON instead of text: an array, one object per action.
        #[arg(long)]
        json: bool,
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

/// Install the tracing subscriber (once, before anything else logs — Duroxide included).
pub fn init_tracing(global: &GlobalArgs) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&global.log))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = match global.log_format {
        LogFormat::Json => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(crate::logging::writer)
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(crate::quiet::Expected(
                tracing_subscriber::fmt::format().json().flatten_event(true),
            ))
            .try_init(),
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(crate::logging::writer)
            .event_format(crate::quiet::Expected(tracing_subscriber::fmt::format()))
            .try_init(),
    };
}

/// The Duroxide pool size the command runs with (`run`, the default command, `demo`).
pub fn duroxide_pool_max(cli: &Cli) -> Option<u32> {
    match &cli.command {
        Some(Command::Run(args)) => Some(args.duroxide_pool_max),
        None | Some(Command::Demo(_)) => RunArgs::from_env().ok().map(|a| a.duroxide_pool_max),
        _ => None,
    }
}

/// Execute a parsed command line; returns the process exit code.
pub async fn execute(cli: Cli) -> anyhow::Result<i32> {
    cli.global.validate_schemas()?;
    let command = match cli.command {
        Some(c) => c,
        None => Command::Run(Box::new(RunArgs::from_env()?)),
    };
    let global = &cli.global;
    match command {
        Command::Migrate => migrate(global).await,
        Command::Run(args) => {
            args.validate()?;
            crate::service::run(global, &args).await?;
            Ok(0)
        }
        Command::Demo(args) => crate::demo::run(global, &args).await,
        Command::Status(args) => status(global, &args).await,
        Command::Explain { name, json } => {
            explain(global, &name, Format::from_json_flag(json)).await
        }
        Command::Actor { action, name, json } => {
            actor(global, action, &name, Format::from_json_flag(json)).await
        }
        Command::Heal { dry_run, json } => {
            let mode = if dry_run {
                crate::reconcile::Mode::DryRun
            } else {
                crate::reconcile::Mode::Act
            };
            heal(global, mode, Format::from_json_flag(json)).await
        }
    }
}

/// How an operator command prints what it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// For a person: a table or lines of text.
    Text,
    /// One JSON document on standard output, for a script. Built from the same types the
    /// HTTP API serves, none of which holds a connection string.
    Json,
}

impl Format {
    /// From a command's `--json` flag.
    fn from_json_flag(json: bool) -> Self {
        if json { Format::Json } else { Format::Text }
    }
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn migrate(global: &GlobalArgs) -> anyhow::Result<i32> {
    let db = open_database(global).await?;
    let pool = crate::db::cms_pool(&db.url, 2).await?;
    crate::db::migrate(&pool).await?;
    pool.close().await;
    println!("migrations applied");
    drop(db);
    Ok(0)
}

/// `status`: exits 1 when any instance needs healing, whatever the format.
async fn status(global: &GlobalArgs, args: &StatusArgs) -> anyhow::Result<i32> {
    let only = match args.verdict.as_deref() {
        None => None,
        Some(v) => Some(crate::verdict::Verdict::parse(v).ok_or_else(|| {
            anyhow::anyhow!(
                "unknown verdict `{v}` (ok, stale, missing, zombie, orphan, unhealthy, idle)"
            )
        })?),
    };
    let started = std::time::Instant::now();
    let reconciler = operator_reconciler(global).await?;
    let connected = started.elapsed();
    let list = crate::ops::list(&reconciler, only).await?;
    tracing::debug!(
        connect_ms = connected.as_millis() as u64,
        read_ms = (started.elapsed() - connected).as_millis() as u64,
        instances = list.len(),
        "status: the fleet read"
    );
    match Format::from_json_flag(args.json) {
        Format::Json => print_json(&list)?,
        Format::Text => {
            print!("{}", crate::ops::render_table(&list));
            match crate::replica::list(reconciler.pool()).await {
                Ok(replicas) => print!("{}", crate::ops::render_replicas(&replicas)),
                Err(e) => eprintln!("replicas: {e}"),
            }
        }
    }
    tracing::debug!(
        total_ms = started.elapsed().as_millis() as u64,
        "status: printed"
    );
    Ok(if list.iter().any(|a| a.verdict.needs_healing()) {
        1
    } else {
        0
    })
}

async fn explain(global: &GlobalArgs, name: &str, format: Format) -> anyhow::Result<i32> {
    let reconciler = operator_reconciler(global).await?;
    let e = crate::ops::explain(&reconciler, name).await?;
    match format {
        Format::Json => print_json(&e)?,
        Format::Text => print!("{}", crate::ops::render_explanation(&e)),
    }
    Ok(0)
}

async fn actor(
    global: &GlobalArgs,
    action: ActorAction,
    name: &str,
    format: Format,
) -> anyhow::Result<i32> {
    let reconciler = operator_reconciler(global).await?;
    let r = match action {
        ActorAction::Start => crate::ops::start(&reconciler, name, "cli").await?,
        ActorAction::Restart => crate::ops::restart(&reconciler, name, "cli").await?,
        ActorAction::Cancel => crate::ops::cancel(&reconciler, name, "cli").await?,
    };
    match format {
        Format::Json => print_json(&r)?,
        Format::Text => print!("{}", render_action(&r)),
    }
    Ok(0)
}

/// `actor` as text.
fn render_action(r: &crate::ops::ActionResult) -> String {
    let mut out = format!("{}: {}\n", r.k8s_name, r.message);
    if let Some(old) = &r.old_actor_id {
        out.push_str(&format!("  old actor: {old}\n"));
    }
    if let Some(new) = &r.new_actor_id {
        out.push_str(&format!("  new actor: {new}\n"));
    }
    if let Some(w) = &r.warning {
        out.push_str(&format!("  warning: {w}\n"));
    }
    out
}

async fn heal(
    global: &GlobalArgs,
    mode: crate::reconcile::Mode,
    format: Format,
) -> anyhow::Result<i32> {
    let reconciler = operator_reconciler(global).await?;
    let outcomes = reconciler.full_reconcile(None, mode).await?;
    match format {
        Format::Json => print_json(&outcomes)?,
        Format::Text => print!("{}", render_heal(&outcomes)),
    }
    Ok(0)
}

/// `heal` as text: one line per action.
fn render_heal(outcomes: &[crate::reconcile::Outcome]) -> String {
    if outcomes.is_empty() {
        return "nothing to heal\n".into();
    }
    let mut out = String::new();
    for o in outcomes {
        let what = match &o.skipped {
            Some(why) => format!("would {} ({why})", o.action),
            None => format!("did {}", o.action),
        };
        out.push_str(&format!(
            "{:<30} {:<9} {:<28} {} — {}\n",
            o.k8s_name,
            o.verdict,
            what,
            o.new_actor_id.as_deref().unwrap_or(""),
            o.reason
        ));
    }
    out
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
    crate::clock::sync(&pool).await?;
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
    let legacy = global
        .legacy_schema()
        .map(|schema| crate::legacy::Legacy::new(&url, schema));
    Ok(crate::reconcile::Reconciler::new(
        control,
        args.stale_after,
        format!("cli-{}", std::process::id()),
    )
    .with_restart_limits(args.restart_min_interval, args.restart_rate)
    .with_legacy(legacy))
}
