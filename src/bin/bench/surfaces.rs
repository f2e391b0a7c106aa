//! The operator's surfaces at a fleet's size: N instances, each checked once through the
//! pooler (as in the capacity scenario), then `GET /metrics` scraped, `GET /api/actors` read
//! whole and page by page (`limit`, `after`), and `toygres-actors status --json` run — each
//! timed over several tries while the fleet is checked every 30 s. The targets are what an
//! operator of such a fleet needs: a scrape within a Prometheus timeout (1 s), a page within
//! 100 ms, `status` within 2 s. No baseline runs in this scenario: "–".

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::capacity::{POOLER_SERVER_CONNECTIONS, insert_fleet};
use crate::harness::{
    Baseline, DASH, Env, Quantiles, Service, checked_count, header, http_get, metric, ms, row,
    service_binary,
};
use crate::pooler::Pooler;

/// Tries of each whole read.
const TRIES: usize = 5;

#[derive(Debug, Serialize)]
pub struct Report {
    pub instances: usize,
    pub page_size: usize,
    /// Insert of the first row → every instance checked once (s).
    pub all_checked_s: f64,
    pub metrics_s: Quantiles,
    pub metrics_bytes: usize,
    pub metrics_series: usize,
    pub actors_whole_s: Quantiles,
    pub actors_whole_bytes: usize,
    pub actors_page_s: Quantiles,
    pub actors_pages: usize,
    pub actors_paged: usize,
    pub status_s: Quantiles,
}

pub async fn run(n: usize, page_size: usize) -> Result<Report> {
    let env = Env::start().await?;
    let svc = Service::start(&env.url, &[]).await?;
    let target_env = Env::start().await?;
    let pooler = Pooler::start(target_env.pg.port(), POOLER_SERVER_CONNECTIONS, true)?;
    let t0 = Instant::now();
    insert_fleet(&env, "srf", n, &pooler.target()).await?;
    let deadline = Instant::now() + Duration::from_secs(1800);
    while (checked_count(&env.pool).await? as usize) < n {
        if Instant::now() > deadline {
            bail!("not every instance was checked within 30 min");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let all_checked_s = t0.elapsed().as_secs_f64();
    // The fleet poll behind the gauges and the list: measured once it shows every instance ok.
    let ok = "toygres_actors_instances{verdict=\"ok\"}";
    while metric(&http_get(&format!("{}/metrics", svc.http)).await?, ok).unwrap_or(0.0) < n as f64 {
        if Instant::now() > deadline {
            bail!("the fleet gauges did not show every instance ok within 30 min");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    let mut metrics = Vec::new();
    let mut text = String::new();
    for _ in 0..TRIES {
        let t = Instant::now();
        text = http_get(&format!("{}/metrics", svc.http)).await?;
        metrics.push(t.elapsed().as_secs_f64());
    }
    let metrics_series = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();

    let mut whole = Vec::new();
    let mut whole_bytes = 0;
    for _ in 0..TRIES {
        let t = Instant::now();
        whole_bytes = http_get(&format!("{}/api/actors", svc.http)).await?.len();
        whole.push(t.elapsed().as_secs_f64());
    }

    let (mut pages, mut paged, mut after) = (Vec::new(), 0, None::<String>);
    loop {
        let url = match &after {
            None => format!("{}/api/actors?limit={page_size}", svc.http),
            Some(a) => format!("{}/api/actors?limit={page_size}&after={a}", svc.http),
        };
        let t = Instant::now();
        let body = http_get(&url).await?;
        pages.push(t.elapsed().as_secs_f64());
        let page: serde_json::Value = serde_json::from_str(&body)
            .with_context(|| format!("a page of /api/actors: {body:.200}"))?;
        paged += page["actors"].as_array().map_or(0, Vec::len);
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }

    let mut status = Vec::new();
    for _ in 0..TRIES {
        let t = Instant::now();
        let out = tokio::process::Command::new(service_binary()?)
            .args(["status", "--json"])
            .env("DATABASE_URL", &env.url)
            .env("RUST_LOG", "warn,toygres_actors::cli=debug")
            .output()
            .await?;
        if !out.status.success() {
            bail!("status failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        // Where its time went (connect, read, print), for the run's log.
        for line in String::from_utf8_lossy(&out.stderr).lines() {
            if line.contains("status: ") {
                eprintln!("{line}");
            }
        }
        status.push(t.elapsed().as_secs_f64());
    }

    let report = Report {
        instances: n,
        page_size,
        all_checked_s,
        metrics_s: Quantiles::of(metrics),
        metrics_bytes: text.len(),
        metrics_series,
        actors_whole_s: Quantiles::of(whole),
        actors_whole_bytes: whole_bytes,
        actors_pages: pages.len(),
        actors_page_s: Quantiles::of(pages),
        actors_paged: paged,
        status_s: Quantiles::of(status),
    };
    report.print();
    Ok(report)
}

impl Report {
    fn print(&self) {
        let n = self.instances;
        header(&format!(
            "Operator surfaces — {n} instances checked every 30 s (probes through a PgBouncer), one replica"
        ));
        let mb = |b: usize| format!("{:.2} MB", b as f64 / 1e6);
        let worst = |q: &Quantiles| format!("{} / {}", ms(q.p50), ms(q.max));
        row(
            "first row inserted → every instance checked once",
            format!("{:.1} s", self.all_checked_s),
            Baseline::None,
            DASH,
            None,
        );
        row(
            &format!("GET /metrics, p50 / max of {TRIES}; its size and series"),
            format!(
                "{}; {}, {} series",
                worst(&self.metrics_s),
                mb(self.metrics_bytes),
                self.metrics_series
            ),
            Baseline::None,
            "≤ 1 s",
            self.metrics_s.max.map(|m| m <= 1.0),
        );
        row(
            &format!(
                "GET /api/actors?limit={}, p50 / p99 / max over every page",
                self.page_size
            ),
            format!(
                "{} / {} / {} ({} pages, {} instances)",
                ms(self.actors_page_s.p50),
                ms(self.actors_page_s.p99),
                ms(self.actors_page_s.max),
                self.actors_pages,
                self.actors_paged
            ),
            Baseline::None,
            "≤ 100 ms",
            self.actors_page_s.max.map(|m| m <= 0.1),
        );
        row(
            &format!("GET /api/actors whole, p50 / max of {TRIES}; its size"),
            format!(
                "{}; {}",
                worst(&self.actors_whole_s),
                mb(self.actors_whole_bytes)
            ),
            Baseline::None,
            DASH,
            None,
        );
        row(
            &format!("toygres-actors status --json, p50 / max of {TRIES} (process start to exit)"),
            worst(&self.status_s),
            Baseline::None,
            "≤ 2 s",
            self.status_s.max.map(|m| m <= 2.0),
        );
    }
}
