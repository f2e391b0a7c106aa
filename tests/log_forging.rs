//! A notification cannot forge a log line: payloads with newlines, carriage returns, escape
//! sequences and quotes, sent as real NOTIFYs to a running service, end up escaped inside
//! the one line that reports them, and a 7,999-byte payload is cut.

mod support;

use std::time::Duration;

use support::{ServiceProc, TestDb, wait_until};

const T: Duration = Duration::from_secs(60);
const FORGED: &str = "2026-01-01T00:00:00Z  INFO forged";

async fn notify(db: &TestDb, channel: &str, payload: &str) {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(&db.pool)
        .await
        .expect("NOTIFY");
}

#[tokio::test]
async fn a_payload_with_a_newline_cannot_forge_a_log_line() {
    let db = TestDb::new().await;
    let svc = ServiceProc::start(&db, &[]).await;
    wait_until("leader with its listener", T, || async {
        let (code, body) = svc.get("/readyz").await;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (code == 200 && v["leader"] == true && v["listener_connected"] == true).then_some(())
    })
    .await;

    let long = {
        let mut p = String::from("frobnicate zz-mark-5 ");
        while p.len() + FORGED.len() + 1 < 8000 {
            p.push('\n');
            p.push_str(FORGED);
        }
        while p.len() < 7999 {
            p.push('x');
        }
        p
    };
    assert_eq!(long.len(), 7999);
    let sent = [
        // An unknown command on the control channel.
        (
            "toygres_actor_control",
            format!("frobnicate zz-mark-1\n{FORGED}\r\u{1b}[2K\"'\\"),
        ),
        // Not the trigger's JSON.
        (
            "toygres_instances",
            format!("{{not json zz-mark-2\n{FORGED}"),
        ),
        // A JSON op that carries a newline (it reaches the log in the reason too).
        (
            "toygres_actor_control",
            format!(r#"{{"op":"zz-mark-3\n{FORGED}","k8s_name":"a"}}"#),
        ),
        // An unknown instance whose name holds a newline.
        (
            "toygres_actor_control",
            format!("restart zz-mark-4\n{FORGED}"),
        ),
        ("toygres_actor_control", long),
    ];
    for (channel, payload) in &sent {
        notify(&db, channel, payload).await;
    }
    let log = wait_until("every payload reported", T, || async {
        let log = svc.log_text();
        (1..=5)
            .all(|i| log.contains(&format!("zz-mark-{i}")))
            .then_some(log)
    })
    .await;

    for line in log.lines() {
        assert!(
            !line.starts_with("2026-01-01"),
            "a payload forged a log line: {line:?}"
        );
        if line.contains("forged") {
            assert!(
                line.contains("zz-mark-"),
                "payload text outside the line that reports it: {line:?}"
            );
        }
        if line.contains("zz-mark-5") {
            assert!(
                line.chars().count() < 1000,
                "a 7,999-byte payload is logged in full ({} characters)",
                line.chars().count()
            );
        }
    }
    assert!(
        !log.contains("\u{1b}[2K"),
        "a payload's escape sequence reached the log"
    );
    let line = log
        .lines()
        .find(|l| l.contains("zz-mark-1"))
        .expect("the line of zz-mark-1");
    assert!(
        line.contains(&format!(r"zz-mark-1\n{FORGED}\r\u{{1b}}[2K")),
        "the payload is escaped, not dropped: {line}"
    );
}
