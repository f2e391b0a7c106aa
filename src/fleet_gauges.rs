//! The fleet gauges of `/metrics`: every replica recomputes them from the database on a
//! short period (one query for the whole fleet, [`crate::duties`]) and renders them after the
//! recorder's output, so a dead actor cannot hide its own death and a deleted instance's
//! series vanish at the next scrape.
//!
//! Cardinality: one series per CMS instance for each per-instance metric (three), plus
//! seven verdict counts, from every replica. `--per-instance-metrics` (default `auto`) keeps
//! every instance's series up to 10,000 instances and above that only the instances whose
//! verdict needs attention — all the per-instance alerts match — so a 50,000-instance fleet
//! does not export 143,000 series of "ok" from each replica every scrape
//! ([`PER_INSTANCE_ALL_UP_TO`]). The verdict counts and fleet gauges stay in every mode.

use std::fmt::Write as _;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::{PER_INSTANCE_ALL_UP_TO, PerInstanceMetrics};
use crate::verdict::Verdict;

/// One instance in the fleet gauges.
#[derive(Debug, Clone)]
pub struct FleetEntry {
    pub k8s_name: String,
    pub verdict: Verdict,
    pub last_health_check: Option<f64>,
    pub up: bool,
    /// Since when the instance has been waiting for a check (Unix time: its last check, or
    /// its creation), when it should be checked at all (its state calls for an actor).
    pub awaiting_check_since: Option<f64>,
}

/// The latest fleet snapshot, rendered after the recorder's output at `/metrics`.
#[derive(Clone, Default)]
pub struct FleetGauges {
    inner: Arc<RwLock<Option<Vec<FleetEntry>>>>,
    per_instance: PerInstanceMetrics,
    /// The check interval, for the overdue and lagging counts.
    interval: f64,
    /// The actors' lease renewal period, for the turn demand (0: not exported).
    renew: f64,
}

/// Orchestration turns per lease renewal: the lease activity's completion and the timer's.
pub const TURNS_PER_RENEWAL: f64 = 2.0;

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl FleetGauges {
    pub fn new(per_instance: PerInstanceMetrics, check_interval: Duration) -> Self {
        Self {
            inner: Arc::default(),
            per_instance,
            interval: check_interval.as_secs_f64(),
            renew: 0.0,
        }
    }

    /// Export the fleet's turn demand for actors renewing every `renew`.
    pub fn with_lease_renew(mut self, renew: Duration) -> Self {
        self.renew = renew.as_secs_f64();
        self
    }

    pub fn set(&self, entries: Vec<FleetEntry>) {
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = Some(entries);
    }

    /// Prometheus text for the snapshot (nothing before the first snapshot).
    pub fn render(&self) -> String {
        let guard = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let Some(entries) = guard.as_ref() else {
            return String::new();
        };
        let mut out = String::new();
        out.push_str("# HELP toygres_actors_instances Instances by verdict (from the database).\n");
        out.push_str("# TYPE toygres_actors_instances gauge\n");
        for v in Verdict::ALL {
            let n = entries.iter().filter(|e| e.verdict == v).count();
            let _ = writeln!(out, "toygres_actors_instances{{verdict=\"{v}\"}} {n}");
        }
        let now = crate::clock::now_seconds();
        let ages: Vec<f64> = entries
            .iter()
            .filter_map(|e| e.awaiting_check_since.map(|t| (now - t).max(0.0)))
            .collect();
        let oldest = ages.iter().copied().fold(0.0, f64::max);
        let over = |factor: f64| ages.iter().filter(|a| **a > factor * self.interval).count();
        if self.renew > 0.0 {
            // Every instance that should be checked has an actor renewing its lease.
            let demand = ages.len() as f64 / self.renew * TURNS_PER_RENEWAL;
            out.push_str("# HELP toygres_actors_duroxide_turn_demand_per_second Orchestration turns per second the fleet's actors need (instances that should be checked / lease renewal period x 2); compare with rate(toygres_actors_duroxide_turns_total{queue=\"orchestrator\"}) summed over replicas.\n");
            out.push_str("# TYPE toygres_actors_duroxide_turn_demand_per_second gauge\n");
            let _ = writeln!(
                out,
                "toygres_actors_duroxide_turn_demand_per_second {demand:.3}"
            );
        }
        out.push_str("# HELP toygres_actors_check_interval_seconds The configured time between two checks of an instance.\n");
        out.push_str("# TYPE toygres_actors_check_interval_seconds gauge\n");
        let _ = writeln!(
            out,
            "toygres_actors_check_interval_seconds {}",
            self.interval
        );
        out.push_str("# HELP toygres_actors_oldest_check_age_seconds Age of the oldest last check among instances that should be checked (from the database).\n");
        out.push_str("# TYPE toygres_actors_oldest_check_age_seconds gauge\n");
        let _ = writeln!(out, "toygres_actors_oldest_check_age_seconds {oldest:.3}");
        out.push_str("# HELP toygres_actors_checks_overdue Instances that should be checked and were not for more than 2x the check interval.\n");
        out.push_str("# TYPE toygres_actors_checks_overdue gauge\n");
        let _ = writeln!(out, "toygres_actors_checks_overdue {}", over(2.0));
        out.push_str("# HELP toygres_actors_checks_lagging Instances that should be checked and were not for more than 3x the check interval (ToygresChecksLagging).\n");
        out.push_str("# TYPE toygres_actors_checks_lagging gauge\n");
        let _ = writeln!(out, "toygres_actors_checks_lagging {}", over(3.0));
        let every = match self.per_instance {
            PerInstanceMetrics::Off => return out,
            PerInstanceMetrics::All => true,
            PerInstanceMetrics::Attention => false,
            PerInstanceMetrics::Auto => entries.len() <= PER_INSTANCE_ALL_UP_TO,
        };
        let entries: Vec<&FleetEntry> = entries
            .iter()
            .filter(|e| every || e.verdict.needs_attention())
            .collect();
        out.push_str("# HELP toygres_actors_instance_verdict The instance's current verdict (1 per instance).\n");
        out.push_str("# TYPE toygres_actors_instance_verdict gauge\n");
        for e in &entries {
            let _ = writeln!(
                out,
                "toygres_actors_instance_verdict{{k8s_name=\"{}\",verdict=\"{}\"}} 1",
                escape_label(&e.k8s_name),
                e.verdict
            );
        }
        out.push_str("# HELP toygres_actors_instance_last_health_check_timestamp_seconds Unix time of the instance's last health check.\n");
        out.push_str("# TYPE toygres_actors_instance_last_health_check_timestamp_seconds gauge\n");
        for e in &entries {
            if let Some(ts) = e.last_health_check {
                let _ = writeln!(
                    out,
                    "toygres_actors_instance_last_health_check_timestamp_seconds{{k8s_name=\"{}\"}} {ts:.3}",
                    escape_label(&e.k8s_name)
                );
            }
        }
        out.push_str("# HELP toygres_actors_instance_up 1 when the instance's last health is healthy, else 0.\n");
        out.push_str("# TYPE toygres_actors_instance_up gauge\n");
        for e in &entries {
            let _ = writeln!(
                out,
                "toygres_actors_instance_up{{k8s_name=\"{}\"}} {}",
                escape_label(&e.k8s_name),
                u8::from(e.up)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_render_escapes_and_counts() {
        let g = FleetGauges::new(PerInstanceMetrics::All, Duration::from_secs(30));
        assert_eq!(g.render(), "");
        g.set(vec![
            FleetEntry {
                k8s_name: "a\"b".into(),
                verdict: Verdict::Ok,
                last_health_check: Some(1.5),
                up: true,
                awaiting_check_since: Some(1.5),
            },
            FleetEntry {
                k8s_name: "c".into(),
                verdict: Verdict::Stale,
                last_health_check: None,
                up: false,
                awaiting_check_since: None,
            },
        ]);
        let text = g.render();
        assert!(text.contains("toygres_actors_instances{verdict=\"ok\"} 1"));
        assert!(text.contains("toygres_actors_instances{verdict=\"zombie\"} 0"));
        assert!(
            text.contains("toygres_actors_instance_verdict{k8s_name=\"a\\\"b\",verdict=\"ok\"} 1")
        );
        assert!(!text.contains("last_health_check_timestamp_seconds{k8s_name=\"c\"}"));
        // "a" was last checked in 1970: overdue and lagging; "c" is not expected to be checked.
        assert!(text.contains("toygres_actors_checks_lagging 1\n"), "{text}");
        assert!(text.contains("toygres_actors_checks_overdue 1\n"), "{text}");
        let off = FleetGauges::new(PerInstanceMetrics::Off, Duration::from_secs(30));
        off.set(vec![FleetEntry {
            k8s_name: "x".into(),
            verdict: Verdict::Stale,
            last_health_check: None,
            up: false,
            awaiting_check_since: None,
        }]);
        assert!(!off.render().contains("k8s_name"));
    }

    fn fleet_of(n: usize, stale: usize) -> Vec<FleetEntry> {
        (0..n)
            .map(|i| FleetEntry {
                k8s_name: format!("pg-{i}"),
                verdict: if i < stale {
                    Verdict::Stale
                } else {
                    Verdict::Ok
                },
                last_health_check: Some(1.5),
                up: i >= stale,
                awaiting_check_since: Some(1.5),
            })
            .collect()
    }

    /// `auto` exports every instance up to PER_INSTANCE_ALL_UP_TO instances and above it only
    /// those needing attention, as `attention` always does; the counts stay in every mode.
    #[test]
    fn per_instance_series_follow_the_mode_and_the_fleet_size() {
        let series = |mode, n| {
            let g = FleetGauges::new(mode, Duration::from_secs(30));
            g.set(fleet_of(n, 2));
            let text = g.render();
            assert!(text.contains("toygres_actors_instances{verdict=\"stale\"} 2"));
            text.lines()
                .filter(|l| l.starts_with("toygres_actors_instance_verdict{"))
                .count()
        };
        let (small, large) = (PER_INSTANCE_ALL_UP_TO, PER_INSTANCE_ALL_UP_TO + 1);
        assert_eq!(series(PerInstanceMetrics::Auto, small), small);
        assert_eq!(series(PerInstanceMetrics::Auto, large), 2);
        assert_eq!(series(PerInstanceMetrics::All, large), large);
        assert_eq!(series(PerInstanceMetrics::Attention, 10), 2);
        assert_eq!(series(PerInstanceMetrics::Off, 10), 0);
    }
}
