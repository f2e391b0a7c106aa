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

/// Two lanes side by side, each scenario in its own PostgreSQL with its own services: the
/// smoke checks that every figure is measured, not what it is (the full runs take the machine
/// alone), and the suite waits for the longer lane only.
pub async fn run() -> Result<()> {
    let storms = async {
        let mut bursts = burst::run(200, "", burst::Targets::Both, 0)
            .await?
            .into_iter();
        let (Some(burst_pooled), Some(burst)) = (bursts.next(), bursts.next()) else {
            anyhow::bail!("burst reported fewer than two runs");
        };
        let recovery = recovery::run(40, Duration::from_secs(3)).await?;
        let outage = outage::run(20, Duration::from_secs(6), true).await?;
        let retention = retention::run(30_000).await?;
        Ok((burst, burst_pooled, recovery, outage, retention))
    };
    let steady = async {
        let latency = latency::run(
            20,
            &["50ms".into()],
            Duration::from_secs(2),
            JobQueueBaseline::Skip,
        )
        .await?;
        let idle = idle::run(
            5,
            Duration::from_secs(2),
            Duration::from_secs(1),
            pooler::Targets::Pooled,
        )
        .await?;
        let capacity = capacity::run(
            40,
            Duration::from_secs(2),
            Duration::from_secs(9),
            20,
            // Renewals inside the short window, so their lag is measured.
            "--lease-renew-interval 2s",
            true,
        )
        .await?;
        anyhow::Ok((latency, idle, capacity))
    };
    let (storms, steady) = tokio::join!(storms, steady);
    let (burst, burst_pooled, recovery, outage, retention) = storms?;
    let (latency, idle, capacity) = steady?;
    let summary = Summary {
        latency,
        idle,
        burst,
        burst_pooled,
        capacity,
        recovery,
        outage,
        retention,
    };
    println!("\n{SUMMARY_PREFIX}{}", serde_json::to_string(&summary)?);
    Ok(())
}
