//! # toygres-actors
//!
//! Keeps one durable health actor alive for every PostgreSQL instance listed in a toygres
//! CMS database (`toygres_cms.instances`), with no operator in the loop.
//!
//! An event travels through the modules in this order:
//!
//! 1. **[`listener`]** — a dedicated connection LISTENs on `toygres_instances` (the CMS
//!    triggers of `migrations/0002`), `toygres_actor_control` and
//!    `toygres_actor_restart_requested`. A notification is only a hint naming an instance;
//!    the listener only receives and hands over (to the reconcile queue, or the control
//!    inbox, `reconcile/inbox.rs`, whose worker does the database work; restarts to the
//!    priority lane, `reconcile/lane.rs`: a thread, runtime and connections of its own).
//! 2. **[`reconcile`]** — level-triggered: for one instance it compares the row (desired) with
//!    Duroxide's state (actual) and starts, cancels, restarts or leaves the actor, classifying
//!    it with a [`verdict::Verdict`] (`reconcile/act.rs` carries the decision out);
//!    automatic actions are fenced by the leader's term.
//!    `reconcile/fleet.rs` observes the whole fleet in two queries (the full reconcile after
//!    every (re)connect and on a timer); `reconcile/queue.rs` is the delivery around it
//!    (coalescing per instance, bounded concurrency, retry with backoff), which hands a
//!    storm of hints in batches to `reconcile/batch.rs`, the set-based path (starts,
//!    deletes and cancels of many instances, one transaction each; `duro/batch.rs`).
//! 3. **[`duro`]** — the Duroxide runtime on duroxide-pg, in a schema of its own
//!    (`toygres_actors_duroxide`) of the same database, and the start/cancel/restart
//!    primitives: the actor-id swap and the start or cancel enqueue commit in one
//!    transaction with the term check. The runtime and client use [`store`]: duroxide-pg
//!    behind a wrapper whose fetches wait for a wake-up instead of polling, one in flight per
//!    queue, and which keeps out of foreign work (`store/foreign.rs`). [`legacy`] reads
//!    toygres' own store (`toygres_duroxide`) for instance actors to adopt, and retires them
//!    through a Duroxide client there.
//! 4. **[`actor`]** — the instance actor orchestration, the durable owner of an instance:
//!    record the owner of its probe lease → durable timer → continue-as-new every few
//!    renewals; fenced by `instance_actor_orchestration_id`. Version 1 stays registered.
//! 5. **[`lease`]** — the probe lease, in one room: taken at start, renewed by its actor
//!    ([`lease::renewal`]), claimed and balanced by the replicas, its table's statements
//!    ([`lease::store`]), and the replica's check scheduler ([`lease::CheckScheduler`]): for
//!    every lease this replica holds, it runs **[`check`]** on the interval — probe → one
//!    write fenced on actor id, holder, epoch, liveness and the row the probe was made
//!    against (which it returns, so the next check reads nothing first). A single start's
//!    first check goes before this replica's Duroxide turns ([`first_checks`]).
//! 6. **[`probe`]** — the probe: connect with timeouts, `SELECT version(), pg_is_in_recovery()`.
//! 7. **[`cms`]** — reads of the CMS (rows whose closed sets are [`instance`]'s enums) and
//!    the one fenced write per health check.
//! 8. **[`metrics`]** — Prometheus metrics; fleet gauges come from the database, so a dead
//!    actor or replica cannot hide its own death. [`duroxide_metrics`]: Duroxide's own, with
//!    buckets in each one's unit and HELP text.
//!
//! Who probes and who leads: [`identity`] (this replica's name and random per-process
//! epoch, and the leader's [`identity::Term`]), [`replica`] (heartbeat; claim, balance and
//! hand-over of probe leases), [`leader`] (a TTL leader row with numbered terms) and
//! [`duties`] (the leader's duties while it leads in a term, and the periodic work every
//! replica does).
//!
//! Shared vocabulary: [`clock`] (the database's clock, the only one that decides), [`settings`] (every flag and its environment variable, parsed and
//! validated), [`actor_state`] (Duroxide's view of one actor), [`config`] (names and
//! defaults with their reasons), [`quiet`] (the default log filter, requested-cancel
//! suppression, burst summaries) and [`logging`] (where log lines go).
//!
//! Around them: [`service`] (wires it all and shuts down in order), [`cli`] (parses and
//! calls down), [`api`] and [`ops`] (HTTP and the operator operations the CLI shares;
//! `/api/actors` serves the fleet poll's [`snapshot`]),
//! [`demo`], [`panics`] (a panic in spawned work caught, logged and counted), [`failpoint`]
//! (the fault tests' fail points, compiled in only with the `failpoints` feature), [`embedded_pg`] (a private PostgreSQL when no `DATABASE_URL` is given), [`db`]
//! and [`sql`] (connections, migrations, statement texts), [`conn`] (one libpq-style
//! connection configuration, TLS included, for every connection) and [`redact`] (no
//! password leaves the process). Every file, with what it holds: `docs/architecture.md`'s
//! module map (a test keeps it complete).

pub mod actor;
pub mod actor_state;
pub mod api;
pub mod check;
pub mod check_writes;
pub mod cli;
pub mod clock;
pub mod cms;
pub mod config;
pub mod conn;
pub mod db;
pub mod demo;
pub mod duro;
pub mod duroxide_metrics;
pub mod duties;
pub mod embedded_pg;
pub mod failpoint;
pub mod first_checks;
pub mod fleet_gauges;
pub mod hint;
pub mod identity;
pub mod instance;
pub mod leader;
pub mod lease;
pub mod legacy;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod ops;
pub mod panics;
pub mod probe;
pub mod quiet;
pub mod reconcile;
pub mod redact;
pub mod replica;
pub mod service;
pub mod settings;
pub mod snapshot;
pub mod sql;
pub mod store;
pub mod verdict;
