//! The benchmark harness at a tiny size, so it cannot rot: every scenario runs end to end
//! against real processes and prints its table rows. No timing is asserted here.

#[test]
fn every_benchmark_scenario_runs_at_a_tiny_size() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bench"))
        .arg("smoke")
        .env_remove("DATABASE_URL")
        .output()
        .expect("run bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench smoke failed:\n{stdout}\n{stderr}"
    );
    for section in ["### Latency", "### Burst", "### Capacity", "### Recovery"] {
        assert!(stdout.contains(section), "missing {section}:\n{stdout}");
    }
    for figure in [
        "commit → first probe started, p50",
        "idle CPU",
        "actors running",
        "staleness p50 / p99 / max",
        "naive loop",
        "reconnect → all",
        "actor stale → restarted",
    ] {
        assert!(stdout.contains(figure), "missing row `{figure}`:\n{stdout}");
    }
    assert!(
        !stdout.contains("not reached") && !stdout.contains("not healed"),
        "{stdout}"
    );
}
