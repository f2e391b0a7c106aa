//! The capacity scenario's tables: progress, the window by thirds, renewal lag, turns and
//! costs, each row beside the naive loop's when it ran.

use super::{CpuPerCheck, Report, Run, Third};
use crate::harness::{Baseline, Cpu, DASH, Quantiles, header, num, pct, row, secs, secs_target};
use crate::measure::print_top;

impl Report {
    pub(super) fn print(&self) {
        let how = if self.targets == "pooled" {
            "through a PgBouncer in transaction mode, default probe settings (kept connections)"
        } else {
            "directly, a new connection per probe"
        };
        header(&format!(
            "Capacity — actors at a {}s interval, measured over {}s after warm-up (all probe one separate PostgreSQL, {how})",
            self.interval_s, self.window_s
        ));
        if let Some(b) = &self.naive {
            self.print_run(&format!("naive loop, {} actors", b.actors), b, None);
        }
        let ours = &self.ours;
        self.print_run(
            &format!("toygres-actors, {} actors", ours.actors),
            ours,
            self.naive.as_ref(),
        );
        print_top("toygres-actors run, pg_stat_statements", &ours.top);
        if let Some(b) = &self.naive {
            print_top("naive loop", &b.top);
        }
    }

    /// One run's rows; `base` is the baseline its figures are compared with.
    fn print_run(&self, label: &str, r: &Run, base: Option<&Run>) {
        print_progress(label, r);
        print_thirds(label, r);
        print_renewal_lag(label, r);
        print_turns(label, r);
        self.print_staleness(label, r, base);
        print_costs(label, r, base);
    }

    fn print_staleness(&self, label: &str, r: &Run, base: Option<&Run>) {
        let target_p99 = self.interval_s * 35.0 / 30.0;
        let s = &r.staleness;
        row(
            &format!("{label}: staleness p50 / p99 / max"),
            format!(
                "{} / {} / {}",
                secs(s.p50, 1),
                secs(s.p99, 1),
                secs(s.max, 1)
            ),
            match base {
                Some(b) => ratio(
                    format!("p99 {}", secs(b.staleness.p99, 1)),
                    s.p99,
                    b.staleness.p99,
                ),
                None => Baseline::None,
            },
            &format!("p99 ≤ {}", secs_target(target_p99)),
            s.p99.map(|p99| p99 <= target_p99),
        );
    }
}

/// A figure compared with the baseline's (`text`), as their ratio.
fn ratio(text: String, value: Option<f64>, base: Option<f64>) -> Baseline {
    Baseline::Ratio { text, value, base }
}

/// Checks achieved, actors running and continued as new, and (ours only) the decisions.
fn print_progress(label: &str, r: &Run) {
    row(
        &format!("{label}: checks achieved / ideal"),
        format!(
            "{} / {:.0} ({:.0} %)",
            r.checks,
            r.ideal,
            100.0 * r.checks as f64 / r.ideal.max(1.0)
        ),
        Baseline::None,
        DASH,
        None,
    );
    row(
        &format!("{label}: actors running at the end of the window"),
        format!("{} of {}", r.actors_running, r.actors),
        Baseline::None,
        &format!("{}", r.actors),
        Some(r.actors_running == r.actors as i64),
    );
    row(
        &format!("{label}: actors that continued as new at least once"),
        format!("{} of {}", r.continued_as_new, r.actors),
        Baseline::None,
        DASH,
        None,
    );
    if r.renewal_lag.samples > 0 {
        let list: Vec<String> = r
            .decisions
            .iter()
            .map(|(a, n)| format!("{a} {n}"))
            .collect();
        row(
            &format!("{label}: decisions recorded in the window, by action (trigger)"),
            if list.is_empty() {
                "none".into()
            } else {
                list.join(", ")
            },
            Baseline::None,
            DASH,
            None,
        );
    }
}

/// Checks and staleness per third of the window, so a drift shows.
fn print_thirds(label: &str, r: &Run) {
    if r.thirds.is_empty() {
        return;
    }
    let shares: Vec<f64> = r
        .thirds
        .iter()
        .map(|t| 100.0 * t.checks as f64 / t.ideal.max(1.0))
        .collect();
    row(
        &format!("{label}: checks / ideal in the first, middle and last third"),
        shares
            .iter()
            .map(|p| format!("{p:.1} %"))
            .collect::<Vec<_>>()
            .join(" / "),
        Baseline::None,
        "99–101 % each",
        Some(shares.iter().all(|p| (99.0..=101.0).contains(p))),
    );
    row(
        &format!("{label}: staleness p99 by third"),
        by_third(r, |t| &t.staleness),
        Baseline::None,
        DASH,
        None,
    );
}

/// How late renewals ran (ours only: the naive loop has no renewals).
fn print_renewal_lag(label: &str, r: &Run) {
    if r.renewal_lag.samples == 0 {
        return;
    }
    let l = &r.renewal_lag;
    row(
        &format!(
            "{label}: renewal lag p50 / p99 / max ({} renewals, database timestamps)",
            l.samples
        ),
        format!(
            "{} / {} / {}",
            secs(l.p50, 1),
            secs(l.p99, 1),
            secs(l.max, 1)
        ),
        Baseline::None,
        "p99 ≤ 10 s",
        l.p99.map(|p| p <= 10.0),
    );
    row(
        &format!("{label}: renewal lag p99 by third"),
        by_third(r, |t| &t.renewal_lag),
        Baseline::None,
        DASH,
        None,
    );
}

/// Duroxide's turns against the fleet's demand, when the service reported them.
fn print_turns(label: &str, r: &Run) {
    if r.turns_per_s.is_none() && r.turn_demand_per_s.is_none() {
        return;
    }
    row(
        &format!("{label}: Duroxide orchestration turns acked per second / demand"),
        format!(
            "{} / {}",
            num(r.turns_per_s, 1),
            num(r.turn_demand_per_s, 1)
        ),
        Baseline::None,
        DASH,
        None,
    );
}

/// What the run cost: CPU of the service and PostgreSQL, of the machine, of the probe
/// target and pooler, and statements per check.
fn print_costs(label: &str, r: &Run, base: Option<&Run>) {
    let cpu_text = |c: &Cpu| format!("{} + {}", pct(c.service_pct, 0), pct(c.pg_pct, 0));
    row(
        &format!("{label}: CPU service + PostgreSQL (% of one core; 200 % = the machine)"),
        cpu_text(&r.cpu),
        match base {
            Some(b) => ratio(cpu_text(&b.cpu), r.cpu.total(), b.cpu.total()),
            None => Baseline::None,
        },
        DASH,
        None,
    );
    let per_check = |c: &CpuPerCheck| {
        format!(
            "{} + {} = {}",
            num(c.service_ms, 3),
            num(c.pg_ms, 3),
            num(c.total(), 3)
        )
    };
    row(
        &format!("{label}: CPU per check, service + PostgreSQL (ms)"),
        per_check(&r.cpu_ms_per_check),
        match base {
            Some(b) => ratio(
                per_check(&b.cpu_ms_per_check),
                r.cpu_ms_per_check.total(),
                b.cpu_ms_per_check.total(),
            ),
            None => Baseline::None,
        },
        DASH,
        None,
    );
    row(
        &format!("{label}: machine busy, every process (% of one core; 200 % = the machine)"),
        pct(r.machine_pct, 0),
        match base {
            Some(b) => ratio(pct(b.machine_pct, 0), r.machine_pct, b.machine_pct),
            None => Baseline::None,
        },
        DASH,
        None,
    );
    row(
        &format!(
            "{label}: probe target cluster CPU (a separate PostgreSQL all instances share) + pooler"
        ),
        format!(
            "{} + {}",
            pct(r.target_cpu_pct, 0),
            pct(r.pooler_cpu_pct, 0)
        ),
        Baseline::None,
        DASH,
        None,
    );
    row(
        &format!("{label}: PostgreSQL statements per check"),
        num(r.statements_per_check, 1),
        match base {
            Some(b) => ratio(
                num(b.statements_per_check, 1),
                r.statements_per_check,
                b.statements_per_check,
            ),
            None => Baseline::None,
        },
        DASH,
        None,
    );
}

/// A p99 of each third, "first / middle / last".
fn by_third(r: &Run, q: impl Fn(&Third) -> &Quantiles) -> String {
    r.thirds
        .iter()
        .map(|t| secs(q(t).p99, 1))
        .collect::<Vec<_>>()
        .join(" / ")
}
