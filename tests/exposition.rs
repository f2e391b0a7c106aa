//! Our `/metrics` as Prometheus' own linter sees it: `promtool check metrics` on the live
//! exposition of a running service (ours and Duroxide's metrics) finds nothing, and
//! Duroxide's per-execution counts have buckets in their unit: the turn counts and history
//! sizes are counted in finite buckets (with seconds buckets, up to 10, an execution's 40-odd
//! events all landed in `+Inf`).
//!
//! promtool comes with the Debian package `prometheus`; the test fails (it does not skip)
//! when it is missing.

mod support;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{ServiceProc, TestDb, wait_until};

const T: Duration = Duration::from_secs(60);
const TURNS: &str = "duroxide_orchestration_turns";
const HISTORY: &str = "duroxide_orchestration_history_size";

/// `promtool check metrics` on `exposition`: (success, everything it printed).
fn promtool_check_metrics(exposition: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): install the Debian package `prometheus`")
        });
    child
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(exposition.as_bytes())
        .expect("write the exposition to promtool");
    let out = child.wait_with_output().expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The `{le, count}` pairs of the one-series histogram `name`, and its `_count`.
fn buckets(exposition: &str, name: &str) -> (Vec<(String, f64)>, f64) {
    let value = |l: &str| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
    let buckets = exposition
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?.to_string();
            Some((le, value(l)?))
        })
        .collect();
    let count = exposition
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_count")))
        .filter_map(value)
        .sum();
    (buckets, count)
}

/// Samples counted by the largest finite bucket (buckets are cumulative).
fn in_finite_buckets(bounds: &[(String, f64)]) -> f64 {
    bounds
        .iter()
        .filter(|(le, _)| le != "+Inf")
        .map(|(_, n)| *n)
        .fold(0.0, f64::max)
}

/// The sum of the one-series histogram `name`.
fn sum(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_sum")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn promtool_finds_nothing_in_our_metrics_and_duroxide_turns_land_in_finite_buckets() {
    let db = TestDb::new().await;
    // Ten renewals per execution, every 500 ms: an execution of about twenty turns
    // continues as new every few seconds (and records its turns).
    let svc = ServiceProc::start(
        &db,
        &[
            "--lease-renew-interval",
            "500ms",
            "--iterations-per-execution",
            "10",
        ],
    )
    .await;
    db.insert_instance("pg-metrics", "running", Some(&support::reachable_target()))
        .await;
    let exposition = wait_until("an execution's turns recorded", T, || async {
        let (_, text) = svc.get("/metrics").await;
        (buckets(&text, TURNS).1 >= 1.0).then_some(text)
    })
    .await;

    let (clean, said) = promtool_check_metrics(&exposition);
    assert!(
        clean && said.trim().is_empty(),
        "promtool check metrics complains:\n{said}"
    );

    // Every turn count in a finite bucket, the buckets in turns (no fractions of one).
    let (bounds, count) = buckets(&exposition, TURNS);
    assert_eq!(
        in_finite_buckets(&bounds),
        count,
        "turn counts beyond the largest finite bucket: {bounds:?}"
    );
    let fractional: Vec<&String> = bounds
        .iter()
        .map(|(le, _)| le)
        .filter(|le| {
            le.parse::<f64>()
                .is_ok_and(|b| b.is_finite() && b.fract() != 0.0)
        })
        .collect();
    assert!(
        fractional.is_empty(),
        "turn-count buckets in fractions of a turn (another unit's buckets): {fractional:?}"
    );
    // The history sizes (events per execution, more than the largest seconds bucket: with
    // latency buckets they all landed in +Inf) are counted in finite buckets too.
    let (bounds, count) = buckets(&exposition, HISTORY);
    assert!(count >= 1.0, "no history size recorded");
    assert_eq!(
        in_finite_buckets(&bounds),
        count,
        "history sizes beyond the largest finite bucket: {bounds:?}"
    );
    assert!(
        sum(&exposition, HISTORY) / count > 10.0,
        "executions of {} events on average: not a test of the buckets",
        sum(&exposition, HISTORY) / count
    );
}
