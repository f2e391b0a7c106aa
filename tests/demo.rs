//! `toygres-actors demo` runs its whole story to the end, as a newcomer would run it.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn demo_runs_to_its_end_in_under_a_minute() {
    let dir = std::env::temp_dir().join(format!(
        "toygres-actors-demo-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_toygres-actors"))
        .arg("demo")
        .arg("--data-dir")
        .arg(&dir)
        .env_remove("DATABASE_URL")
        .env("TOYGRES_ACTORS_HTTP", "127.0.0.1:0")
        .output()
        .expect("run demo");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    for step in [
        "1. Instances created",
        "2. Actors started, health flowing",
        "3. An instance deleted",
        "4. A manual restart",
        "5. The listener's connection killed",
        "6. The fleet now",
        "demo finished",
    ] {
        assert!(stdout.contains(step), "missing `{step}`:\n{stdout}");
    }
    assert!(
        stdout.contains("pg-broken") && stdout.contains("unhealthy"),
        "{stdout}"
    );
    assert!(stdout.contains(" ok"), "{stdout}");
    assert!(
        !stdout.contains("demo-secret-pw") && !stderr.contains("demo-secret-pw"),
        "password shown"
    );
    assert!(took < Duration::from_secs(60), "demo took {took:?}");
}
