//! # toygres-actors
//!
//! Keeps one durable health actor alive for every PostgreSQL instance listed in a toygres
//! CMS database (`toygres_cms.instances`), with no operator in the loop.
//!
//! An event travels through the modules in this order:
//!
//! 1. **[`listener`]** — a dedicated connection LISTENs on `toygres_instances` (the CMS
//!    triggers of `migrations/0002`) and `toygres_actor_control`. A notification is only a
//!    hint naming an instance.
//! 2. **[`reconcile`]** — level-triggered: for one instance it compares the row (desired) with
//!    Duroxide's state (actual) and starts, cancels, restarts or leaves the actor. A full
//!    reconcile runs after every (re)connect and on a timer, and classifies every instance
//!    with a [`verdict::Verdict`].
//! 3. **[`duro`]** — the Duroxide runtime on duroxide-pg, in schema `toygres_duroxide` of the
//!    same database, and the start/cancel/restart primitives.
//! 4. **[`actor`]** — the instance actor orchestration: renew the instance's probe lease →
//!    durable timer → continue-as-new every few renewals; fenced by
//!    `instance_actor_orchestration_id`. While the lease lasts, **[`lease`]** (the replica's
//!    scheduler) runs the health check on the interval: read → probe → one fenced write.
//! 5. **[`health`]** — the probe: connect with timeouts, `SELECT version(), pg_is_in_recovery()`.
//! 6. **[`cms`]** — reads of the CMS and the one fenced write per health check.
//! 7. **[`metrics`]** — Prometheus metrics; fleet gauges come from the database, so a dead
//!    actor cannot hide its own death.
//!
//! Around them: [`leader`] (one replica runs listener and reconciler), [`api`] and [`ops`]
//! (HTTP and the operator operations the CLI shares), [`demo`],
//! [`service`] (wires it all and shuts down cleanly), [`cli`], [`embedded_pg`] (a private
//! PostgreSQL when no `DATABASE_URL` is given), [`db`] and [`sql`] (connections,
//! migrations, statement texts), [`config`] (names and defaults with their reasons) and
//! [`redact`] (no password leaves the process).

pub mod actor;
pub mod actor_state;
pub mod api;
pub mod check;
pub mod cli;
pub mod cms;
pub mod config;
pub mod db;
pub mod demo;
pub mod duro;
pub mod duties;
pub mod embedded_pg;
pub mod health;
pub mod identity;
pub mod leader;
pub mod lease;
pub mod listener;
pub mod metrics;
pub mod ops;
pub mod quiet;
pub mod reconcile;
pub mod redact;
pub mod replica;
pub mod service;
pub mod settings;
pub mod sql;
pub mod verdict;
