//! Verdicts: what is true of one instance's actor right now, and what would heal it.
//!
//! [`decide`] is a pure function of what was observed (the row, Duroxide's view of the
//! current actor, any other live incarnations) and the time: the reconciler, the fleet
//! gauges, `status`, `explain` and the API all call it, so they can never disagree.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::actor_state::ActorState;
use crate::cms::InstanceRow;

/// One per instance (spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Ok,
    Stale,
    Missing,
    Zombie,
    Orphan,
    Unhealthy,
    Idle,
}

impl Verdict {
    pub const ALL: [Verdict; 7] = [
        Verdict::Ok,
        Verdict::Stale,
        Verdict::Missing,
        Verdict::Zombie,
        Verdict::Orphan,
        Verdict::Unhealthy,
        Verdict::Idle,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Stale => "stale",
            Verdict::Missing => "missing",
            Verdict::Zombie => "zombie",
            Verdict::Orphan => "orphan",
            Verdict::Unhealthy => "unhealthy",
            Verdict::Idle => "idle",
        }
    }

    pub fn parse(s: &str) -> Option<Verdict> {
        Verdict::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Verdicts that need the reconciler (and make `status` exit non-zero).
    pub fn needs_healing(self) -> bool {
        matches!(
            self,
            Verdict::Stale | Verdict::Missing | Verdict::Zombie | Verdict::Orphan
        )
    }

    /// Whether someone may have to look at the instance: every verdict but `ok` and `idle`
    /// (what the per-instance alerts match).
    pub fn needs_attention(self) -> bool {
        !matches!(self, Verdict::Ok | Verdict::Idle)
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What would make the world match the row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Noop,
    /// Start an actor: under the id the row already names (`Some`, which Duroxide does not
    /// know), or under a new id.
    Start {
        named: Option<String>,
    },
    /// Cancel the current actor (if any) and start a new incarnation.
    Restart,
    /// Cancel these live incarnations.
    Cancel {
        actor_ids: Vec<String>,
    },
    /// Adopt the instance actors of the legacy store (toygres' own): start ours first when
    /// `start` (the row names the legacy one), then retire them.
    Adopt {
        actor_ids: Vec<String>,
        start: bool,
    },
}

/// What a reconcile did: the `action` of its outcome and decision, the label of
/// `reconcile_actions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Did {
    Noop,
    Start,
    Restart,
    Cancel,
    Delete,
    Adopt,
    /// A live stale actor leased to this replica and checked at once, before any restart.
    ReLease,
}

impl Did {
    pub const fn label(self) -> &'static str {
        match self {
            Did::Noop => "noop",
            Did::Start => "start",
            Did::Restart => "restart",
            Did::Cancel => "cancel",
            Did::Delete => "delete",
            Did::Adopt => "adopt",
            Did::ReLease => "re-lease",
        }
    }
}

impl std::fmt::Display for Did {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

impl Action {
    /// What doing it is called in outcomes, decisions and metrics.
    pub fn did(&self) -> Did {
        match self {
            Action::Noop => Did::Noop,
            Action::Start { .. } => Did::Start,
            Action::Restart => Did::Restart,
            Action::Cancel { .. } => Did::Cancel,
            Action::Adopt { .. } => Did::Adopt,
        }
    }

    /// The `action` label of `reconcile_actions_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Action::Noop => "noop",
            Action::Start { .. } => "start",
            Action::Restart => "restart",
            Action::Cancel { .. } => "cancel",
            Action::Adopt { .. } => "adopt",
        }
    }
}

/// Everything [`decide`] looks at for one instance.
#[derive(Debug, Clone)]
pub struct Observed {
    pub row: InstanceRow,
    /// Duroxide's view of `row.actor_id` (`None` when the row names no actor).
    pub actor: Option<ActorState>,
    /// When the current actor incarnation was created (its grace period starts there).
    pub actor_created_at: Option<DateTime<Utc>>,
    /// Live incarnations other than `row.actor_id`.
    pub other_live: Vec<String>,
    /// Instance actors of this instance alive in the legacy store (toygres' own Duroxide).
    pub legacy: Vec<crate::actor_state::LegacyActor>,
    /// The state and probe target read with the row, for a start's first probe (a single
    /// reconcile's read; `None` from the fleet-wide one). Not looked at by [`decide`].
    pub seen: Option<crate::cms::Seen>,
}

/// The verdict, its reason in words, and the healing action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub verdict: Verdict,
    pub reason: String,
    pub action: Action,
}

/// Thresholds of [`decide`].
#[derive(Debug, Clone)]
pub struct Rules {
    pub actor_states: Vec<String>,
    pub stale_after: Duration,
}

fn age(now: DateTime<Utc>, t: DateTime<Utc>) -> Duration {
    (now - t).to_std().unwrap_or(Duration::ZERO)
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

/// Classify one instance and say what would heal it.
pub fn decide(obs: &Observed, rules: &Rules, now: DateTime<Utc>) -> Decision {
    let row = &obs.row;
    let expected = rules.actor_states.iter().any(|s| row.state == *s.as_str());
    let current_live = obs.actor.as_ref().is_some_and(ActorState::is_live);

    if !obs.legacy.is_empty() {
        return adopt(obs, expected, current_live);
    }
    if !expected {
        return unwanted(obs, current_live);
    }

    // An actor is expected from here on.
    let Some(actor_id) = &row.actor_id else {
        return Decision {
            verdict: Verdict::Missing,
            reason: "no actor id on the row".into(),
            action: Action::Start { named: None },
        };
    };
    // Ours: `actor-<this row's id>-<suffix>` (toygres' own are `actor-<k8s_name>`).
    let owned = crate::actor_state::instance_of_actor(actor_id) == Some(row.id);
    match obs.actor.as_ref().unwrap_or(&ActorState::Absent) {
        ActorState::Absent => {
            return Decision {
                verdict: Verdict::Missing,
                reason: format!("orchestration {actor_id} does not exist in Duroxide"),
                // An id of ours that Duroxide never got (crash between swap and start):
                // start it as named. Someone else's id: take over with a new one.
                action: Action::Start {
                    named: owned.then(|| actor_id.clone()),
                },
            };
        }
        ActorState::Finished { status } => {
            return Decision {
                verdict: Verdict::Missing,
                reason: format!("orchestration {actor_id} has finished ({status})"),
                action: Action::Restart,
            };
        }
        ActorState::Pending | ActorState::Running { .. } => {}
    }
    if !obs.other_live.is_empty() {
        return Decision {
            verdict: Verdict::Orphan,
            reason: format!(
                "superseded incarnation(s) {} still live beside {actor_id}",
                obs.other_live.join(", ")
            ),
            action: Action::Cancel {
                actor_ids: obs.other_live.clone(),
            },
        };
    }
    running(obs, actor_id, rules, now)
}

/// The row calls for no actor: none should run.
fn unwanted(obs: &Observed, current_live: bool) -> Decision {
    let row = &obs.row;
    let mut live = obs.other_live.clone();
    if current_live && let Some(id) = &row.actor_id {
        live.push(id.clone());
    }
    if live.is_empty() {
        return Decision {
            verdict: Verdict::Idle,
            reason: format!("state `{}` calls for no actor, and none runs", row.state),
            action: Action::Noop,
        };
    }
    Decision {
        verdict: Verdict::Orphan,
        reason: format!(
            "state `{}` calls for no actor, but {} runs",
            row.state,
            live.join(", ")
        ),
        action: Action::Cancel { actor_ids: live },
    }
}

/// The row's actor is live and alone: is it making progress, and is the instance checked?
fn running(obs: &Observed, actor_id: &str, rules: &Rules, now: DateTime<Utc>) -> Decision {
    let row = &obs.row;
    let grace_from = obs.actor_created_at.unwrap_or(row.created_at);
    if let Some(ActorState::Running {
        last_progress,
        has_work,
        ..
    }) = &obs.actor
    {
        let idle_for = age(now, *last_progress);
        if !has_work && idle_for > rules.stale_after {
            return Decision {
                verdict: Verdict::Zombie,
                reason: format!(
                    "Duroxide says Running, but {actor_id} has made no progress for {} and has no work queued",
                    secs(idle_for)
                ),
                action: Action::Restart,
            };
        }
    }
    let check_age = row.last_health_check.map(|t| age(now, t));
    let stale = match check_age {
        Some(a) => a > rules.stale_after && age(now, grace_from) > rules.stale_after,
        None => age(now, grace_from) > rules.stale_after,
    };
    if stale {
        return Decision {
            verdict: Verdict::Stale,
            reason: match check_age {
                Some(a) => format!(
                    "last health check {} ago (stale after {})",
                    secs(a),
                    secs(rules.stale_after)
                ),
                None => format!(
                    "no health check since the actor started {} ago (stale after {})",
                    secs(age(now, grace_from)),
                    secs(rules.stale_after)
                ),
            },
            action: Action::Restart,
        };
    }
    if row.health_status == crate::instance::HealthStatus::Unhealthy {
        return Decision {
            verdict: Verdict::Unhealthy,
            reason: "the actor runs; the instance failed its last probe(s)".into(),
            action: Action::Noop,
        };
    }
    Decision {
        verdict: Verdict::Ok,
        reason: match check_age {
            Some(a) => format!("actor {actor_id} running, last check {} ago", secs(a)),
            None => format!("actor {actor_id} starting, no check yet"),
        },
        action: Action::Noop,
    }
}

/// An instance whose actor (or a stray) lives in the legacy store.
fn adopt(obs: &Observed, expected: bool, current_live: bool) -> Decision {
    let row = &obs.row;
    let ids: Vec<String> = obs.legacy.iter().map(|l| l.actor_id.clone()).collect();
    let named = row.actor_id.as_ref().is_some_and(|id| ids.contains(id));
    let (verdict, start, reason) = if !expected {
        (
            Verdict::Orphan,
            false,
            format!(
                "state `{}` calls for no actor, but legacy actor {} runs in toygres' store: retire it",
                row.state,
                ids.join(", ")
            ),
        )
    } else if current_live && !named {
        (
            Verdict::Orphan,
            false,
            format!(
                "legacy actor {} still runs in toygres' store beside ours: retire it",
                ids.join(", ")
            ),
        )
    } else {
        (
            Verdict::Missing,
            true,
            format!(
                "the row names {}, an instance actor in toygres' store, not ours: adopt it (start ours, retire it)",
                row.actor_id.as_deref().unwrap_or(&ids[0])
            ),
        )
    };
    Decision {
        verdict,
        reason,
        action: Action::Adopt {
            actor_ids: ids,
            start,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;
    use uuid::Uuid;

    fn rules() -> Rules {
        Rules {
            actor_states: vec!["creating".into(), "running".into()],
            stale_after: Duration::from_secs(300),
        }
    }

    fn row(
        state: &str,
        actor: Option<&str>,
        last_check_ago: Option<i64>,
        now: DateTime<Utc>,
    ) -> InstanceRow {
        InstanceRow {
            id: Uuid::nil(),
            k8s_name: "pg".into(),
            dns_name: None,
            state: state.into(),
            health_status: "healthy".into(),
            actor_id: actor.map(str::to_string),
            last_health_check: last_check_ago.map(|s| now - TimeDelta::seconds(s)),
            created_at: now - TimeDelta::seconds(3600),
            updated_at: now,
            has_target: true,
        }
    }

    fn running(now: DateTime<Utc>, progress_ago: i64, has_work: bool) -> Option<ActorState> {
        Some(ActorState::Running {
            last_progress: now - TimeDelta::seconds(progress_ago),
            has_work,
            execution_id: 1,
        })
    }

    fn obs(
        row: InstanceRow,
        actor: Option<ActorState>,
        created_ago: i64,
        now: DateTime<Utc>,
    ) -> Observed {
        Observed {
            row,
            actor,
            actor_created_at: Some(now - TimeDelta::seconds(created_ago)),
            other_live: vec![],
            legacy: vec![],
            seen: None,
        }
    }

    #[test]
    fn healthy_running_actor_is_ok() {
        let now = Utc::now();
        let d = decide(
            &obs(
                row("running", Some("actor-a"), Some(10), now),
                running(now, 10, true),
                3600,
                now,
            ),
            &rules(),
            now,
        );
        assert_eq!((d.verdict, d.action), (Verdict::Ok, Action::Noop));
    }

    #[test]
    fn no_id_or_absent_or_finished_is_missing() {
        let now = Utc::now();
        let d = decide(
            &obs(row("running", None, None, now), None, 0, now),
            &rules(),
            now,
        );
        assert_eq!(
            (d.verdict, d.action),
            (Verdict::Missing, Action::Start { named: None })
        );
        let ours = format!("actor-{}-0123456789ab", Uuid::nil());
        let d = decide(
            &obs(
                row("running", Some(&ours), None, now),
                Some(ActorState::Absent),
                0,
                now,
            ),
            &rules(),
            now,
        );
        assert_eq!(d.action, Action::Start { named: Some(ours) });
        // toygres' own id (`actor-<k8s_name>`) is not ours to start under.
        let d = decide(
            &obs(
                row("running", Some("actor-pg"), None, now),
                Some(ActorState::Absent),
                0,
                now,
            ),
            &rules(),
            now,
        );
        assert_eq!(d.action, Action::Start { named: None });
        let d = decide(
            &obs(
                row("running", Some("toygres-own-id"), None, now),
                Some(ActorState::Absent),
                0,
                now,
            ),
            &rules(),
            now,
        );
        assert_eq!(
            d.action,
            Action::Start { named: None },
            "someone else's id is replaced"
        );
        let fin = Some(ActorState::Finished {
            status: "Failed".into(),
        });
        let d = decide(
            &obs(row("creating", Some("actor-x"), Some(1), now), fin, 0, now),
            &rules(),
            now,
        );
        assert_eq!((d.verdict, d.action), (Verdict::Missing, Action::Restart));
    }

    #[test]
    fn fresh_actor_without_check_gets_grace_then_goes_stale() {
        let now = Utc::now();
        let d = decide(
            &obs(
                row("running", Some("actor-a"), None, now),
                running(now, 1, true),
                60,
                now,
            ),
            &rules(),
            now,
        );
        assert_eq!(d.verdict, Verdict::Ok);
        // Old check from a previous incarnation, new actor still within grace.
        let d = decide(
            &obs(
                row("running", Some("actor-a"), Some(4000), now),
                running(now, 1, true),
                60,
                now,
            ),
            &rules(),
            now,
        );
        assert_eq!(d.verdict, Verdict::Ok);
        let d = decide(
            &obs(
                row("running", Some("actor-a"), None, now),
                running(now, 1, true),
                400,
                now,
            ),
            &rules(),
            now,
        );
        assert_eq!((d.verdict, d.action), (Verdict::Stale, Action::Restart));
        let d = decide(
            &obs(
                row("running", Some("actor-a"), Some(301), now),
                running(now, 1, true),
                4000,
                now,
            ),
            &rules(),
            now,
        );
        assert_eq!(d.verdict, Verdict::Stale);
    }

    #[test]
    fn running_without_progress_or_work_is_zombie_but_hung_probe_is_stale() {
        let now = Utc::now();
        let d = decide(
            &obs(
                row("running", Some("actor-a"), Some(900), now),
                running(now, 900, false),
                4000,
                now,
            ),
            &rules(),
            now,
        );
        assert_eq!((d.verdict, d.action), (Verdict::Zombie, Action::Restart));
        // A probe hanging in an activity: work in flight, no progress, no checks.
        let d = decide(
            &obs(
                row("running", Some("actor-a"), Some(900), now),
                running(now, 900, true),
                4000,
                now,
            ),
            &rules(),
            now,
        );
        assert_eq!(d.verdict, Verdict::Stale);
    }

    #[test]
    fn actors_where_none_is_wanted_are_orphans() {
        let now = Utc::now();
        let d = decide(
            &obs(
                row("stopped", Some("actor-a"), Some(1), now),
                running(now, 1, true),
                10,
                now,
            ),
            &rules(),
            now,
        );
        assert_eq!(
            (d.verdict, d.action),
            (
                Verdict::Orphan,
                Action::Cancel {
                    actor_ids: vec!["actor-a".into()]
                }
            )
        );
        let d = decide(
            &obs(
                row("deleting", Some("actor-a"), Some(1), now),
                Some(ActorState::Finished {
                    status: "Completed".into(),
                }),
                10,
                now,
            ),
            &rules(),
            now,
        );
        assert_eq!((d.verdict, d.action), (Verdict::Idle, Action::Noop));
        let mut o = obs(
            row("running", Some("actor-b"), Some(1), now),
            running(now, 1, true),
            10,
            now,
        );
        o.other_live = vec!["actor-a".into()];
        let d = decide(&o, &rules(), now);
        assert_eq!(
            (d.verdict, d.action),
            (
                Verdict::Orphan,
                Action::Cancel {
                    actor_ids: vec!["actor-a".into()]
                }
            )
        );
    }

    #[test]
    fn unhealthy_instance_with_working_actor() {
        let now = Utc::now();
        let mut r = row("running", Some("actor-a"), Some(5), now);
        r.health_status = "unhealthy".into();
        let d = decide(&obs(r, running(now, 5, true), 100, now), &rules(), now);
        assert_eq!((d.verdict, d.action), (Verdict::Unhealthy, Action::Noop));
    }

    #[test]
    fn a_legacy_actor_is_adopted_or_retired() {
        use crate::actor_state::{LegacyActor, LegacyKind};
        let now = Utc::now();
        let toygres = LegacyActor {
            actor_id: "actor-pg".into(),
            kind: LegacyKind::Toygres,
        };
        // The row names toygres' actor: start ours, retire it.
        let mut o = obs(
            row("running", Some("actor-pg"), Some(5), now),
            Some(ActorState::Absent),
            10,
            now,
        );
        o.legacy = vec![toygres.clone()];
        let d = decide(&o, &rules(), now);
        assert_eq!(
            (d.verdict, d.action),
            (
                Verdict::Missing,
                Action::Adopt {
                    actor_ids: vec!["actor-pg".into()],
                    start: true
                }
            )
        );
        // Ours runs and the row names it; toygres' still runs: retire it only.
        let mut o = obs(
            row("running", Some("actor-b"), Some(5), now),
            running(now, 5, true),
            10,
            now,
        );
        o.legacy = vec![toygres.clone()];
        let d = decide(&o, &rules(), now);
        assert_eq!(
            (d.verdict, d.action),
            (
                Verdict::Orphan,
                Action::Adopt {
                    actor_ids: vec!["actor-pg".into()],
                    start: false
                }
            )
        );
        // No actor wanted: retire it.
        let mut o = obs(
            row("stopped", Some("actor-pg"), Some(5), now),
            Some(ActorState::Absent),
            10,
            now,
        );
        o.legacy = vec![toygres];
        let d = decide(&o, &rules(), now);
        assert_eq!(d.verdict, Verdict::Orphan);
        assert!(matches!(d.action, Action::Adopt { start: false, .. }));
    }
}
