//! Names, defaults and thresholds, each with its reason, in one place; and the validated
//! settings the service runs with.

use std::time::Duration;

/// Channel the CMS triggers notify on insert, delete and state change.
pub const CHANNEL_INSTANCES: &str = "toygres_instances";
/// Channel for people and scripts: `restart <name>`, `reconcile <name>`, `reconcile *`.
pub const CHANNEL_CONTROL: &str = "toygres_actor_control";
/// Channel the service notifies when an instance's `health_status` changes.
pub const CHANNEL_HEALTH: &str = "toygres_health";
/// Private channel for the listener's liveness round trip (self-NOTIFY).
pub const CHANNEL_PING: &str = "toygres_actors_ping";

/// Channel the Duroxide queue tables' statement trigger notifies when a transaction inserted
/// visible work (`sql/duroxide_wake.sql`; payload `<schema> orch|work[ <origin>]`): the
/// wake-up of another process's waiting fetches (`crate::store`).
pub const CHANNEL_STORE_WAKE: &str = "toygres_actors_store_wake";
/// The session setting (a custom one, set at connect) that names the process whose store
/// connection inserted queue rows: the `<origin>` of a wake-up, by which a process knows
/// its own (it wakes its lanes itself, with no round trip, and ignores the echo).
pub const STORE_ORIGIN_SETTING: &str = "toygres_actors.origin";
/// The longest a Duroxide queue goes unfetched in a process with no wake-up: the whole cost
/// of a lost wake-up (a notification missed during a reconnect, another process's timer, a
/// lock whose holder died). Idle, it is also the period of the one fetch per queue.
pub const STORE_MAX_WAIT: Duration = Duration::from_secs(5);

/// PostgreSQL truncates identifiers (channel names included) to 63 bytes: a longer name
/// would silently LISTEN on something else.
pub const PG_IDENTIFIER_MAX: usize = 63;
const _: () = {
    assert!(CHANNEL_INSTANCES.len() <= PG_IDENTIFIER_MAX);
    assert!(CHANNEL_CONTROL.len() <= PG_IDENTIFIER_MAX);
    assert!(CHANNEL_HEALTH.len() <= PG_IDENTIFIER_MAX);
    assert!(CHANNEL_PING.len() <= PG_IDENTIFIER_MAX);
    assert!(CHANNEL_STORE_WAKE.len() <= PG_IDENTIFIER_MAX);
};

/// Channel `toygres_cms.request_actor_restart()` also notifies (payload: the request id).
/// The service listens to it even with `--control-notify=off`: a notification there only
/// makes it read the pending requests, which only that (privileged) function writes.
pub const CHANNEL_RESTART_REQUESTED: &str = "toygres_actor_restart_requested";
const _: () = assert!(CHANNEL_RESTART_REQUESTED.len() <= PG_IDENTIFIER_MAX);

/// Named control requests (`restart <name>`, `reconcile <name>`) waiting for the control
/// worker at most; more are dropped and counted (anyone who can CONNECT can NOTIFY).
pub const CONTROL_INBOX_MAX: usize = 10_000;
/// `reconcile *` runs at most this often, however often it is asked for.
pub const RECONCILE_ALL_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// A restart of one instance (asked for by anyone, or a heal) at most this often.
pub const DEFAULT_RESTART_MIN_INTERVAL: Duration = Duration::from_secs(30);
/// Restarts per second across the fleet at most (a token bucket with a burst of twice
/// this): a flood of restart requests, or a wave of stale actors, cannot restart the fleet
/// faster than Duroxide and the probes absorb.
pub const DEFAULT_RESTART_RATE: u32 = 20;

/// The fleet gauges' query runs at most this share of the time: at 10,000 instances it
/// takes 0.2–0.9 s (more on a busy machine), which at the default 5 s poll is up to a fifth
/// of a PostgreSQL core taken from the checks and turns of a storm. Past that, the poll
/// waits 1 ÷ share times the query's own duration instead.
pub const FLEET_POLL_MAX_DUTY: f64 = 0.05;

/// Healing pauses when more than this share of the instances that should have an actor are
/// stale at once (a CMS outage, a saturated store: restarting the fleet would not help)…
pub const DEFAULT_HEAL_PAUSE_SHARE: f64 = 0.2;
/// …and at least this many (a few stale actors in a small fleet are just stale actors).
pub const HEAL_PAUSE_MIN_STALE: usize = 5;

/// NOTIFY payloads are limited to 8000 bytes by PostgreSQL; anything longer we receive on
/// the control channel cannot have come from a well-behaved sender.
pub const MAX_CONTROL_PAYLOAD: usize = 8000;

/// Name of the instance actor orchestration as registered with Duroxide.
pub const ACTOR_ORCHESTRATION: &str = "toygres::InstanceActor";
/// Current version of the actor orchestration. Bump (and keep the old registration) when
/// its replay behaviour changes, so in-flight actors keep running on the code they began with.
/// 2.1.0: an incarnation whose start took its lease skips its first renewal
/// ([`crate::actor::ActorInput::leased_at_start`]).
pub const ACTOR_VERSION: &str = "2.1.0";
/// 2.0.0: the probe-lease actor that renews first in every execution; registered so that
/// its actors replay, and so that in a rolling upgrade an execution begun by an older
/// replica (which resolves a start to 2.0.0) replays the same anywhere.
pub const ACTOR_VERSION_V2_0: &str = "2.0.0";
/// The first version, registered so that actors it started still replay.
pub const ACTOR_VERSION_V1: &str = "1.0.0";
/// The activity of a v1 actor iteration: read row → probe → record.
pub const ACTIVITY_HEALTH_CHECK: &str = "toygres::HealthCheck";
/// The activity of a v2 actor iteration: renew the probe lease.
pub const ACTIVITY_LEASE: &str = "toygres::Lease";
/// Prefix of every actor's orchestration id: `actor-<instance uuid>-<incarnation>`. The
/// instance uuid in the id lets the reconciler find actors whose CMS row is gone.
pub const ACTOR_ID_PREFIX: &str = "actor-";

/// States whose instances must have an actor (spec default).
pub const DEFAULT_ACTOR_STATES: &[&str] = &["creating", "running"];
/// Time between health checks of one instance.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// How old `last_health_check` may get before the actor counts as stale (spec: 5 min).
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(300);
/// Full reconcile period: the safety net under the notifications (spec: 60 s).
pub const DEFAULT_RESYNC_INTERVAL: Duration = Duration::from_secs(60);
/// Iterations an actor runs before continue-as-new. Every turn replays the execution's
/// history, so it must stay short; but each continue-as-new costs a turn and an execution
/// row, so not every iteration (measured: 10–30 is the sweet spot).
pub const DEFAULT_ITERATIONS_PER_EXECUTION: u32 = 20;
/// Connect timeout of a probe.
pub const DEFAULT_PROBE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Query timeout of a probe.
pub const DEFAULT_PROBE_QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Consecutive failed probes before `unhealthy` (1 keeps toygres' original behaviour).
pub const DEFAULT_UNHEALTHY_AFTER: u32 = 1;
/// How long `instance_health_checks` rows, decisions and handled restart requests are kept.
pub const DEFAULT_HISTORY_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Reconciles running at once (different instances); bursts of thousands queue behind them.
pub const DEFAULT_RECONCILE_PARALLELISM: usize = 16;
/// Listener liveness: a self-NOTIFY every this often…
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(5);
/// …must come back within this, or the connection is treated as dead and replaced.
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(3);
/// First and largest delay between listener reconnect attempts (jittered exponential).
pub const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(100);
pub const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(2);

/// The delays between reconnect attempts of a LISTEN connection (the listener's, the
/// store's wake-up listener's): jittered exponential between the two above, never giving up.
pub fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(RECONNECT_MIN_DELAY)
        .with_max_delay(RECONNECT_MAX_DELAY)
        .without_max_times()
        .build()
}
/// Per-instance heal backoff: first retry after this…
pub const HEAL_BACKOFF_MIN: Duration = Duration::from_secs(5);
/// …doubling up to this, so a crash-looping actor is retried but never spins.
pub const HEAL_BACKOFF_MAX: Duration = Duration::from_secs(600);
/// How long an explicit cancel (API, CLI) waits for the actor to be terminal in Duroxide
/// (fencing makes returning earlier safe). A restart does not wait: it removes the live old
/// actor in the transaction that names the new one.
pub const CANCEL_WAIT: Duration = Duration::from_secs(5);
/// Replica liveness: each replica heartbeats its row this often, and in the same tick
/// claims its share of orphaned probe leases, takes a bounded number from the most loaded
/// replica while it holds less than its fair share, and picks up leases newly assigned to it.
pub const REPLICA_TICK: Duration = Duration::from_millis(2500);
/// A replica whose heartbeat is older than this is gone: its probe leases are claimed by
/// the live ones and its writes are refused. Six ticks: a stall of a few seconds (a GC-like
/// pause, a slow statement) does not cost a takeover; a dead replica costs at most this.
pub const REPLICA_TTL: Duration = Duration::from_secs(15);
/// A replica's row is deleted this long after its heartbeat expired (or it drained), once
/// it holds no probe lease (the leader's pruning pass, `sql/prune_replicas.sql`). Every
/// decision about a gone replica is taken within a TTL or a handoff bound of its expiry:
/// an hour is 240 TTLs and 72 handoff bounds, so the row serves only `GET /api/replicas` and
/// `status`, where an operator finds the replicas of the last rollout or crash. A replica
/// frozen for longer wakes up to no row, registers again under a new epoch (migrations/0014)
/// and gets back the leases nobody claimed. Each rollout adds a name per pod: an hour of them
/// keeps the table, and every replica's tick over it, small.
pub const REPLICA_ROW_GRACE: Duration = Duration::from_secs(3600);
const _: () = assert!(REPLICA_ROW_GRACE.as_secs() > 10 * HANDOFF_BOUND.as_secs());
/// Leases one replica takes from another per tick while balancing: a new replica reaches its
/// share of 10,000 in about a minute, without a reshuffle storm.
pub const LEASE_MOVES_PER_TICK: i32 = 250;
/// The time within which a stopped, dead, frozen or partitioned replica's instances are
/// checked again (docs/operations.md, "handoff bound"): one check interval (the last check may have been
/// just before it died) + the heartbeat TTL + one tick to claim, rounded up.
pub const HANDOFF_BOUND: Duration = Duration::from_secs(50);
/// Leadership: the leader renews its term row this often…
pub const LEADER_TICK: Duration = Duration::from_secs(2);
/// …and the term lapses this long after its last renewal. A frozen or partitioned leader
/// is replaced within this plus one follower tick (12 s), well inside the 15 s promise.
pub const LEADER_TTL: Duration = Duration::from_secs(10);
/// After the election session was lost (e.g. PostgreSQL restarted), the first reconnect is
/// tried this soon; each further failure doubles the pause, up to [`LEADER_RETRY_MAX`]. A
/// replica whose session just ended most likely still holds its term (the TTL runs from its
/// last renewal), so reconnecting at once brings the listener back as soon as the server is.
pub const LEADER_RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest pause between two reconnects of the election session: once the database is
/// back after an outage of any length, the leader (and with it the listener and the full
/// reconcile that judges what went stale) is back within this. A refused connection costs
/// the server nothing; a connection that hangs is bounded by its own 5 s timeout.
pub const LEADER_RETRY_MAX: Duration = Duration::from_millis(500);
/// A renewal that has not answered within this is treated as failed.
pub const LEADER_TICK_TIMEOUT: Duration = Duration::from_secs(3);
/// Server-side bounds that keep a lock of ours from outliving its owner (migrations/0013):
/// a fenced transaction waits at most this long for any lock (a CMS row someone else holds:
/// that one reconcile fails and is retried)…
pub const FENCE_LOCK_TIMEOUT: Duration = Duration::from_secs(2);
/// …and every session of the service's pools ends a transaction left idle (a frozen or
/// partitioned client) after this. Together under the leader TTL (2 + 5 < 10 s): a frozen
/// leader's fences and their locks are gone before its term can be taken over.
pub const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(5);
/// TCP keepalive on both ends of every service session (the server's through the session's
/// startup options, ours on the leader and listener sessions): first probe after this much
/// silence, then every [`KEEPALIVE_INTERVAL`], given up after [`KEEPALIVE_COUNT`] unanswered.
/// A peer that vanished (a partition, a host gone) is noticed within 10 + 3 × 5 = 25 s, so
/// an idle session of a dead replica (its leader session's advisory lock, a pool slot) does
/// not wait hours (Linux's default is 2 h) for the kernel to give up. Locks that matter more
/// are bounded sooner: a fence's by [`IDLE_IN_TRANSACTION_TIMEOUT`], a term by its TTL.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// See [`KEEPALIVE_IDLE`].
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// See [`KEEPALIVE_IDLE`].
pub const KEEPALIVE_COUNT: u32 = 3;
/// Our end of the leader and listener sessions also closes a connection whose sent data has
/// gone unacknowledged this long (`TCP_USER_TIMEOUT`): a tick or a ping written into a
/// partition fails the session within this, and it is opened again.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(15);
/// A reconcile that met a CMS row held by someone else is tried again after this (not
/// counted as a failure: it is the row's holder, not us, that is slow).
pub const ROW_HELD_RETRY: Duration = Duration::from_millis(200);
/// The advisory lock an advisory-lock leader (a replica without leader terms) holds (the
/// ASCII bytes of "toygres" + "A"): also taken by our leader, so such a replica never leads
/// beside ours during a rolling upgrade (see `migrations/0004`).
pub const LEADER_LOCK_KEY: i64 = 0x746f_7967_7265_7341;
/// Connection pools keep this many connections beyond the most seen in use at the last
/// minute's samples (every 10 s; see [`crate::db::PoolTrimmer`]); the idle rest are closed.
pub const POOL_SPARE: usize = 2;
/// The priority lane's connections ([`crate::db::lane_cms_pool`]) close after this long
/// idle: explicit restarts are rare, and an idle backend still costs the server.
pub const LANE_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest an HTTP request may take, the wait for a free slot included
/// (`--http-timeout`): past it the answer is a 503, so a flood of readers cannot hold
/// connections and memory without bound. Above [`CANCEL_WAIT`], so an explicit cancel that
/// waits for its actor to end still answers.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// API requests (`/metrics`, `/api/*`) served at once (`--http-concurrency`); more wait for
/// a slot within the timeout. The ones that read the CMS as they are asked (one instance's
/// status, the replicas, the POSTs) then hold at most this many of the CMS pool's
/// connections (16 by default), leaving the rest to the checks and the reconciler.
pub const DEFAULT_HTTP_CONCURRENCY: usize = 8;
/// How often the fleet gauges (verdicts, per-instance series) are recomputed from the DB.
pub const DEFAULT_FLEET_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// How long one pruning pass may spend on health history (paced batches in a loop): a
/// fifth of the period.
pub const PRUNE_BUDGET: Duration = Duration::from_secs(60);
/// Rows of health history deleted per statement.
pub const PRUNE_BATCH: i64 = 1_000;
/// The share of a pass the pruner spends deleting: after each full batch it pauses nine
/// times as long as the batch took. At a tenth a check's write keeps the p99 it has without
/// pruning, and the pruner still deletes about ten times what 10,000 instances at 30 s write
/// (`bench retention`, docs/benchmarks.md); at a fifth the checks' p99 grows several-fold.
pub const PRUNE_DUTY: f64 = 0.1;
/// How often finished Duroxide executions and old health history are pruned.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(300);

/// Duroxide schema default (spec): a store of our own. toygres' own server runs its Duroxide
/// runtime on `toygres_duroxide` of the same database; two runtimes on one store fetch each
/// other's work (and abandon it until Duroxide poisons it).
pub const DEFAULT_DUROXIDE_SCHEMA: &str = "toygres_actors_duroxide";

/// Where toygres' own server runs Duroxide (`--legacy-duroxide-schema`): its instance actors
/// there are adopted (ours started, theirs cancelled through a client on that schema).
pub const DEFAULT_LEGACY_DUROXIDE_SCHEMA: &str = "toygres_duroxide";

/// `--legacy-duroxide-schema off`: no adoption.
pub const LEGACY_OFF: &str = "off";

/// toygres' own instance actor orchestration (started by its create flow and its restart
/// API as `actor-<k8s_name>`). Found in the legacy store, it is adopted.
pub const TOYGRES_ACTOR_ORCHESTRATION: &str =
    "toygres-orchestrations::orchestration::instance-actor";

/// The orchestrations this service registers: a store that holds any other is not ours.
pub const REGISTERED_ORCHESTRATIONS: &[&str] = &[ACTOR_ORCHESTRATION];

/// The activities this service registers.
pub const REGISTERED_ACTIVITIES: &[&str] = &[ACTIVITY_HEALTH_CHECK, ACTIVITY_LEASE];

/// Instance actors in the legacy store: toygres' own, and ours from a deployment that ran
/// its store there before the default moved.
pub const LEGACY_ACTOR_ORCHESTRATIONS: &[&str] =
    &[TOYGRES_ACTOR_ORCHESTRATION, ACTOR_ORCHESTRATION];

/// How often a missing legacy store is looked for again (toygres' server creates its schema
/// at its first start, which may come after ours).
pub const LEGACY_RECHECK: Duration = Duration::from_secs(60);

/// How often a store that showed foreign work is checked again while our dispatchers
/// hold off it.
pub const FOREIGN_RECHECK: Duration = Duration::from_secs(5);

/// Reject schema names we would have to quote: they are spliced into SQL.
pub fn valid_schema_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= PG_IDENTIFIER_MAX
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// How a check's write commits (`--check-commit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckCommit {
    /// Without waiting for the WAL flush (synchronous_commit off for that transaction).
    Async,
    /// As every other write: the commit waits until the row is on disk.
    Durable,
}

/// Which instances `/metrics` exports per-instance series for (`--per-instance-metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PerInstanceMetrics {
    /// Every instance up to [`PER_INSTANCE_ALL_UP_TO`] instances, only those needing
    /// attention above it.
    #[default]
    Auto,
    /// Every instance.
    #[value(alias = "true")]
    All,
    /// Only instances whose verdict needs attention (not `ok`, not `idle`): what the
    /// per-instance alerts match.
    Attention,
    /// None (the fleet gauges stay).
    #[value(alias = "false")]
    Off,
}

/// Up to this many instances `--per-instance-metrics auto` exports every instance's series:
/// three per instance, ~30,000 series and ~2 MB a scrape per replica at 10,000. At 50,000 that
/// is ~143,000 series and 10.5 MB from every replica every scrape, nearly all of them saying
/// "ok" again, which the fleet gauges already say.
pub const PER_INSTANCE_ALL_UP_TO: usize = 10_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names() {
        assert!(valid_schema_name("toygres_duroxide"));
        assert!(valid_schema_name(DEFAULT_DUROXIDE_SCHEMA));
        assert!(valid_schema_name("_x1"));
        assert!(!valid_schema_name(""));
        assert!(!valid_schema_name("1abc"));
        assert!(!valid_schema_name("a;drop"));
        assert!(!valid_schema_name("Upper"));
        assert!(!valid_schema_name(&"a".repeat(64)));
    }
}
