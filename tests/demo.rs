//! `toygres-actors demo` runs its whole story to the end, as a newcomer would run it, and the
//! story it tells is true: the tables it prints show every instance in the state each step
//! put it in, and its log lines go to the file it names, not between the lines of the story.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

/// One row of a status table the demo prints.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    state: String,
    actor: String,
    actor_status: String,
    checked_secs: Option<u64>,
    health: String,
    verdict: String,
}

/// A printed status table: rows by name, and its summary line.
#[derive(Debug)]
struct Table {
    rows: BTreeMap<String, Row>,
    summary: String,
}

/// The lines of the step whose heading starts with `== {prefix}`, up to the next heading.
fn section<'a>(stdout: &'a str, prefix: &str) -> Vec<&'a str> {
    let head = format!("== {prefix}");
    let mut lines = stdout.lines().skip_while(|l| !l.starts_with(&head));
    assert!(lines.next().is_some(), "no step `{head}`:\n{stdout}");
    lines.take_while(|l| !l.starts_with("== ")).collect()
}

/// The status table printed in a step (NAME … VERDICT header, rows, "N instance(s): …").
fn table(stdout: &str, step: &str) -> Table {
    let lines = section(stdout, step);
    let start = lines
        .iter()
        .position(|l| l.starts_with("NAME ") && l.trim_end().ends_with("VERDICT"))
        .unwrap_or_else(|| panic!("no table in step `{step}`:\n{stdout}"));
    let mut rows = BTreeMap::new();
    for line in &lines[start + 1..] {
        if line.contains(" instance(s): ") {
            return Table {
                rows,
                summary: line.trim().to_string(),
            };
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 7, "table row of step `{step}`: {line:?}");
        let row = Row {
            state: f[1].into(),
            actor: f[2].into(),
            actor_status: f[3].into(),
            checked_secs: f[4].strip_suffix('s').and_then(|s| s.parse().ok()),
            health: f[5].into(),
            verdict: f[6].into(),
        };
        rows.insert(f[0].to_string(), row);
    }
    panic!("table of step `{step}` has no summary line:\n{stdout}");
}

/// Whether `line` looks like a tracing log line (text format, coloured or not) at any level.
fn is_log_line(line: &str) -> bool {
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // ESC [ … letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]
        .iter()
        .any(|level| plain.contains(&format!(" {level} ")))
}

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
        .env_remove("RUST_LOG")
        .env_remove("TOYGRES_ACTORS_LOG")
        .env("TOYGRES_ACTORS_HTTP", "127.0.0.1:0")
        .output()
        .expect("run demo");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let log_path = dir.join("demo.log");
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(took < Duration::from_secs(60), "demo took {took:?}");

    // Quiet: the story alone on the terminal; the log lines in the file it names.
    assert!(
        stdout.contains(&log_path.display().to_string()),
        "the demo does not say where its logs go ({}):\n{stdout}",
        log_path.display()
    );
    let noisy: Vec<&str> = stdout
        .lines()
        .chain(stderr.lines())
        .filter(|l| is_log_line(l))
        .collect();
    assert!(
        noisy.is_empty(),
        "{} log line(s) on the terminal, e.g. {:?}",
        noisy.len(),
        &noisy[..noisy.len().min(5)]
    );
    assert!(
        stderr.trim().is_empty(),
        "the demo wrote to stderr:\n{stderr}"
    );
    assert!(
        log.lines().any(|l| l.contains(" INFO ")),
        "no log lines in {}:\n{log}",
        log_path.display()
    );
    assert!(!log.contains('\x1b'), "terminal colours in the log file");
    for text in [&stdout, &stderr, &log] {
        assert!(!text.contains("demo-secret-pw"), "password shown");
    }

    // 2. Five instances, each with a running actor and checks; health as their targets are.
    let first = table(&stdout, "2. Actors started, health flowing");
    let expect_first = [
        ("pg-alpha", "running", "healthy", "ok"),
        ("pg-beta", "running", "healthy", "ok"),
        ("pg-broken", "running", "unhealthy", "unhealthy"),
        ("pg-gamma", "creating", "healthy", "ok"),
        ("pg-provisioning", "creating", "unknown", "ok"),
    ];
    assert_eq!(
        first.rows.keys().map(String::as_str).collect::<Vec<_>>(),
        expect_first.iter().map(|e| e.0).collect::<Vec<_>>(),
        "step 2:\n{stdout}"
    );
    for (name, state, health, verdict) in expect_first {
        let r = &first.rows[name];
        assert_eq!(
            (r.state.as_str(), r.health.as_str(), r.verdict.as_str()),
            (state, health, verdict),
            "step 2, {name}: {r:?}"
        );
        assert_eq!(r.actor_status, "running", "step 2, {name}: {r:?}");
        assert!(r.actor.starts_with("actor-"), "step 2, {name}: {r:?}");
        assert!(
            r.checked_secs.is_some_and(|s| s < 10),
            "step 2, {name}: checked recently: {r:?}"
        );
    }
    assert_eq!(first.summary, "5 instance(s): 4 ok, 1 unhealthy");

    // 3. pg-beta's actor (the one the table showed) is gone.
    let beta = &first.rows["pg-beta"].actor;
    assert!(
        section(&stdout, "3. An instance deleted")
            .contains(&format!("  actor {beta} is gone").as_str()),
        "step 3 names pg-beta's actor {beta}:\n{stdout}"
    );

    // 4. pg-alpha restarted: the old id is the table's, the new one differs.
    let restart = section(&stdout, "4. A manual restart");
    let old_alpha = &first.rows["pg-alpha"].actor;
    let new_alpha = restart
        .iter()
        .find_map(|l| l.trim().strip_prefix("→ "))
        .unwrap_or_else(|| panic!("step 4 prints no new id:\n{stdout}"))
        .trim()
        .to_string();
    assert!(
        restart
            .iter()
            .any(|l| l.trim() == format!("pg-alpha: {old_alpha}")),
        "step 4 starts from the actor of step 2 ({old_alpha}):\n{stdout}"
    );
    assert!(
        new_alpha.starts_with("actor-") && new_alpha != *old_alpha,
        "step 4: pg-alpha restarted from {old_alpha} to {new_alpha}:\n{stdout}"
    );

    // 5. The listener reconnected at least once.
    let reconnects: u64 = section(&stdout, "5. The listener's connection killed")
        .iter()
        .find_map(|l| {
            l.trim()
                .strip_prefix("listener reconnected (")?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("step 5 reports no reconnect count:\n{stdout}"));
    assert!(reconnects >= 1, "step 5: {reconnects} reconnects");

    // 6. The fleet now: pg-beta gone, pg-delta caught up, pg-alpha on its new actor, the
    // others on the actors they had.
    let last = table(&stdout, "6. The fleet now");
    let expect_last = [
        ("pg-alpha", "running", "healthy", "ok"),
        ("pg-broken", "running", "unhealthy", "unhealthy"),
        ("pg-delta", "running", "healthy", "ok"),
        ("pg-gamma", "creating", "healthy", "ok"),
        ("pg-provisioning", "creating", "unknown", "ok"),
    ];
    assert_eq!(
        last.rows.keys().map(String::as_str).collect::<Vec<_>>(),
        expect_last.iter().map(|e| e.0).collect::<Vec<_>>(),
        "step 6:\n{stdout}"
    );
    for (name, state, health, verdict) in expect_last {
        let r = &last.rows[name];
        assert_eq!(
            (r.state.as_str(), r.health.as_str(), r.verdict.as_str()),
            (state, health, verdict),
            "step 6, {name}: {r:?}"
        );
        assert_eq!(r.actor_status, "running", "step 6, {name}: {r:?}");
        assert!(
            r.checked_secs.is_some_and(|s| s < 10),
            "step 6, {name}: checked recently: {r:?}"
        );
        let expected_actor = match name {
            "pg-alpha" => Some(&new_alpha),
            "pg-delta" => None,
            other => Some(&first.rows[other].actor),
        };
        match expected_actor {
            Some(a) => assert_eq!(&r.actor, a, "step 6, {name}: {r:?}"),
            None => assert!(r.actor.starts_with("actor-"), "step 6, {name}: {r:?}"),
        }
    }
    assert_eq!(last.summary, "5 instance(s): 4 ok, 1 unhealthy");

    let secs: u64 = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("demo finished in ")?
                .strip_suffix(" s")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no `demo finished in N s`:\n{stdout}"));
    assert!(
        secs <= took.as_secs() + 1,
        "the demo's own timing: {secs} s"
    );
}
