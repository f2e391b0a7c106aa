//! `bench smoke`: every scenario at a tiny size, so the harness cannot rot. Prints the same
//! tables as the full runs, then one machine-readable line, [`SUMMARY_PREFIX`] followed by
//! every scenario's report as JSON, which `tests/bench_smoke.rs` checks figure by figure.

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use crate::jobqueue::JobQueueBaseline;
use crate::{burst, capacity, idle, latency, outage, pooler, recovery, retention};

/// Starts the JSON summary line.
pub const SUMMARY_PREFIX: &str = "bench-smoke-summary: ";

#[derive(Serialize)]
struct Summary {
    latency: latency::Report,
    idle: idle::Report,
    burst: burst::Report,
    burst_pooled: burst::Report,
    capacity: capacity::Report,
    recovery: recovery::Report,
    outage: outage::Report,
    retention: retention::Report,
}

pub async fn run() -> Result<()> {
    let mut bursts = burst::run(200, "", burst::Targets::Both, 0)
        .await?
        .into_iter();
    let (Some(burst_pooled), Some(burst)) = (bursts.next(), bursts.next()) else {
        anyhow::bail!("burst reported fewer than two runs");
    };
    let summary = Summary {
        latency: latency::run(
            20,
            &["50ms".into()],
            Duration::from_secs(2),
            JobQueueBaseline::Skip,
        )
        .await?,
        idle: idle::run(
            5,
            Duration::from_secs(2),
            Duration::from_secs(1),
            pooler::Targets::Pooled,
        )
        .await?,
        burst,
        burst_pooled,
        capacity: capacity::run(
            40,
            Duration::from_secs(2),
            Duration::from_secs(9),
            20,
            // Renewals inside the short window, so their lag is measured.
            "--lease-renew-interval 2s",
            true,
        )
        .await?,
        recovery: recovery::run(40, Duration::from_secs(3)).await?,
        outage: outage::run(20, Duration::from_secs(6), true).await?,
        retention: retention::run(30_000).await?,
    };
    println!("\n{SUMMARY_PREFIX}{}", serde_json::to_string(&summary)?);
    Ok(())
}
