//! The operator surface with real processes: every HTTP endpoint of `toygres-actors run`
//! (success and error cases, the bearer token on POSTs, and on reads with
//! `--api-token-for-reads`), and the operator CLI on the same database. No response body,
//! CLI output or service log may contain an instance's password.

mod support;

use std::process::Output;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use support::{ServiceProc, TARGET_PASSWORD, TestDb, wait_until};

const T: Duration = Duration::from_secs(60);

/// A small HTTP client for one service that keeps every body it saw (for the secrets check).
struct Api {
    base: String,
    client: reqwest::Client,
    seen: Mutex<Vec<String>>,
}

struct Reply {
    status: u16,
    content_type: String,
    www_authenticate: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    /// An error reply: the status, a JSON content type and `{"error": "..."}`; returns the
    /// message.
    fn error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{}", self.body);
        assert!(
            self.content_type.starts_with("application/json"),
            "error replies are JSON, got `{}`: {}",
            self.content_type,
            self.body
        );
        let v = self.json();
        let msg = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no `error` string: {v}"));
        assert!(!msg.is_empty());
        msg.to_string()
    }
}

impl Api {
    fn new(svc: &ServiceProc) -> Api {
        Api {
            base: svc.http.clone(),
            client: reqwest::Client::new(),
            seen: Mutex::new(Vec::new()),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let r = req.send().await.expect("HTTP request");
        let status = r.status().as_u16();
        let content_type = r
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let www_authenticate = r
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = r.text().await.expect("body");
        self.seen.lock().unwrap().push(body.clone());
        Reply {
            status,
            content_type,
            www_authenticate,
            body,
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(self.client.get(format!("{}{path}", self.base)))
            .await
    }

    async fn get_with(&self, path: &str, authorization: Option<&str>) -> Reply {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(a) = authorization {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        }
        self.send(req).await
    }

    async fn post(&self, path: &str, authorization: Option<&str>) -> Reply {
        let mut req = self.client.post(format!("{}{path}", self.base));
        if let Some(a) = authorization {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        }
        self.send(req).await
    }

    /// `/api/actors` as name → entry.
    async fn actors(&self, query: &str) -> Vec<Value> {
        let r = self.get(&format!("/api/actors{query}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["actors"].as_array().expect("actors array").clone()
    }

    async fn verdict_of(&self, name: &str) -> Option<(String, String)> {
        let r = self.get(&format!("/api/instances/{name}/actor")).await;
        (r.status == 200).then(|| {
            let v = r.json();
            (
                v["verdict"].as_str().unwrap_or("").to_string(),
                v["health_status"].as_str().unwrap_or("").to_string(),
            )
        })
    }

    fn assert_no_secrets(&self, extra: &str) {
        let seen = self.seen.lock().unwrap();
        assert!(seen.len() > 10, "the check saw the responses");
        for body in seen.iter() {
            assert!(
                !body.contains(TARGET_PASSWORD),
                "a response leaks the password: {body}"
            );
        }
        assert!(
            !extra.contains(TARGET_PASSWORD),
            "the service log leaks the password"
        );
    }
}

fn names(list: &[Value]) -> Vec<String> {
    let mut n: Vec<String> = list
        .iter()
        .map(|a| a["k8s_name"].as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

/// The value of one exact series line of a Prometheus text body.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn every_endpoint_answers_its_success_and_error_cases() {
    let db = TestDb::new().await;
    let svc = ServiceProc::start(&db, &[]).await;
    let api = Api::new(&svc);
    let good = support::reachable_target();
    let down = support::closed_port_target();
    assert!(good.contains(TARGET_PASSWORD) && down.contains(TARGET_PASSWORD));
    db.insert_instance("pg-api-ok", "running", Some(&good))
        .await;
    db.insert_instance("pg-api-down", "running", Some(&down))
        .await;
    db.insert_instance("pg-api-stopped", "stopped", Some(&good))
        .await;
    sqlx::query(
        "UPDATE toygres_cms.instances SET dns_name = 'pg-api-ok.example.test',
                ip_connection_string = $1 WHERE k8s_name = 'pg-api-ok'",
    )
    .bind(&good)
    .execute(&db.pool)
    .await
    .unwrap();
    for (name, verdict, health) in [
        ("pg-api-ok", "ok", "healthy"),
        ("pg-api-down", "unhealthy", "unhealthy"),
        ("pg-api-stopped", "idle", "unknown"),
    ] {
        wait_until(&format!("{name}: {verdict}/{health}"), T, || async {
            let (v, h) = api.verdict_of(name).await?;
            (v == verdict && h == health).then_some(())
        })
        .await;
    }

    // --- health, readiness, metrics ---
    let r = api.get("/healthz").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    let ready = wait_until("ready as the leader, listener connected", T, || async {
        let r = api.get("/readyz").await;
        let v = r.json();
        (r.status == 200 && v["leader"] == true && v["listener_connected"] == true).then_some(v)
    })
    .await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["worker_only"], false);

    let metrics = wait_until("per-instance series in /metrics", T, || async {
        let r = api.get("/metrics").await;
        assert_eq!(r.status, 200);
        assert!(
            r.content_type.starts_with("text/plain"),
            "{}",
            r.content_type
        );
        let m = r.body;
        let ok = sample(
            &m,
            r#"toygres_actors_instance_verdict{k8s_name="pg-api-ok",verdict="ok"}"#,
        ) == Some(1.0)
            && sample(
                &m,
                r#"toygres_actors_instance_verdict{k8s_name="pg-api-down",verdict="unhealthy"}"#,
            ) == Some(1.0)
            && sample(
                &m,
                r#"toygres_actors_instance_verdict{k8s_name="pg-api-stopped",verdict="idle"}"#,
            ) == Some(1.0);
        ok.then_some(m)
    })
    .await;
    for needle in [
        "toygres_actors_instances{verdict=\"ok\"} 1",
        "toygres_actors_instances{verdict=\"unhealthy\"} 1",
        "toygres_actors_instances{verdict=\"idle\"} 1",
        "toygres_actors_instances{verdict=\"stale\"} 0",
        "toygres_actors_instance_up{k8s_name=\"pg-api-ok\"} 1",
        "toygres_actors_instance_up{k8s_name=\"pg-api-down\"} 0",
        "toygres_actors_instance_last_health_check_timestamp_seconds{k8s_name=\"pg-api-ok\"}",
        "toygres_actors_leader 1",
        "toygres_actors_listener_connected 1",
        "toygres_actors_health_checks_total{status=\"healthy\"}",
        "toygres_actors_health_check_duration_seconds_bucket",
        "toygres_actors_reconcile_actions_total{action=\"start\"}",
        "toygres_actors_notifications_total{",
        "toygres_actors_last_resync_timestamp_seconds",
        "# TYPE toygres_actors_instances gauge",
        "duroxide_",
    ] {
        assert!(
            metrics.contains(needle),
            "/metrics lacks `{needle}`:\n{metrics}"
        );
    }

    // --- the list (the snapshot of the poll that also set the gauges above) ---
    let r = api.get("/api/actors").await;
    assert!(
        r.json()["as_of"].is_string(),
        "the snapshot's time: {}",
        r.body
    );
    let all = api.actors("").await;
    assert_eq!(
        names(&all),
        ["pg-api-down", "pg-api-ok", "pg-api-stopped"],
        "{all:?}"
    );
    for a in &all {
        for key in ["verdict", "reason", "state", "actor_status", "instance_id"] {
            assert!(!a[key].is_null(), "{key} missing in {a}");
        }
    }
    assert_eq!(names(&api.actors("?verdict=ok").await), ["pg-api-ok"]);
    assert_eq!(
        names(&api.actors("?verdict=unhealthy").await),
        ["pg-api-down"]
    );
    assert_eq!(
        names(&api.actors("?verdict=idle").await),
        ["pg-api-stopped"]
    );
    assert!(api.actors("?verdict=zombie").await.is_empty());
    assert_eq!(api.actors("?verdict=").await.len(), 3);
    let msg = api.get("/api/actors?verdict=bogus").await.error(400);
    assert!(msg.contains("bogus"), "{msg}");

    // --- the list in pages: instance-id order, `next` until the last page ---
    let mut paged = Vec::new();
    let mut query = "?limit=2".to_string();
    loop {
        let r = api.get(&format!("/api/actors{query}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let page = r.json();
        let actors = page["actors"].as_array().expect("actors array").clone();
        assert!(actors.len() <= 2, "{}", r.body);
        paged.extend(actors);
        match page["next"].as_str() {
            Some(next) => query = format!("?limit=2&after={next}"),
            None => break,
        }
    }
    let ids = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|a| a["instance_id"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let mut want = ids(&all);
    want.sort();
    assert_eq!(ids(&paged), want, "every instance once, in id order");
    let one = api.get("/api/actors?verdict=ok&limit=1").await.json();
    assert_eq!(names(one["actors"].as_array().unwrap()), ["pg-api-ok"]);
    assert!(one["next"].is_null(), "{one}");
    for bad in [
        "?limit=0",
        "?limit=10001",
        "?after=00000000-0000-0000-0000-000000000000",
    ] {
        api.get(&format!("/api/actors{bad}")).await.error(400);
    }

    // --- one actor ---
    let actor = db.actor_id("pg-api-ok").await.expect("actor id");
    let r = api.get("/api/instances/pg-api-ok/actor").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["k8s_name"], "pg-api-ok");
    assert_eq!(v["verdict"], "ok");
    assert_eq!(v["state"], "running");
    assert_eq!(v["actor_id"], actor.as_str());
    assert_eq!(v["actor_status"], "running");
    assert!(v["last_health_check"].is_string(), "{v}");
    // By dns_name too (a live instance's).
    let by_dns = api.get("/api/instances/pg-api-ok.example.test/actor").await;
    assert_eq!(by_dns.status, 200, "{}", by_dns.body);
    assert_eq!(by_dns.json()["k8s_name"], "pg-api-ok");

    let msg = api
        .get("/api/instances/no-such-instance/actor")
        .await
        .error(404);
    assert!(msg.contains("no-such-instance"), "{msg}");
    let long = "x".repeat(300);
    let msg = api
        .get(&format!("/api/instances/{long}/actor"))
        .await
        .error(400);
    assert!(msg.contains("255"), "{msg}");
    let msg = api.get("/api/instances/pg%01x/actor").await.error(400);
    assert!(msg.contains("control"), "{msg}");
    api.get("/api/instances/%20/actor").await.error(400);
    // Not UTF-8 once decoded.
    api.get("/api/instances/pg%FFx/actor").await.error(400);
    // No such endpoint, wrong method.
    api.get("/api/nothing-here").await.error(404);
    api.get("/api/instances/pg-api-ok/actor/start")
        .await
        .error(405);

    // --- start, restart, cancel ---
    let r = api.post("/api/instances/pg-api-ok/actor/start", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(
        v["changed"], false,
        "start of a running actor is a no-op: {v}"
    );
    assert_eq!(v["new_actor_id"], actor.as_str());
    assert_eq!(
        db.actor_id("pg-api-ok").await.as_deref(),
        Some(actor.as_str())
    );

    let checks_before = db.checks_of("pg-api-ok").await;
    let r = api
        .post("/api/instances/pg-api-ok/actor/restart", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["action"], "restart");
    assert_eq!(v["changed"], true);
    assert_eq!(v["old_actor_id"], actor.as_str());
    let new = v["new_actor_id"].as_str().expect("new id").to_string();
    assert_ne!(new, actor);
    assert_eq!(
        db.actor_id("pg-api-ok").await.as_deref(),
        Some(new.as_str())
    );
    // The old actor left Duroxide with the swap (a restart removes the live one it replaces).
    assert!(db.orchestration_status(&actor).await.is_none());
    wait_until("the new actor the only live one", T, || async {
        (db.live_actors("pg-api-ok").await == vec![new.clone()]).then_some(())
    })
    .await;
    wait_until("the new actor checks", T, || async {
        (db.checks_of("pg-api-ok").await > checks_before + 1).then_some(())
    })
    .await;
    assert_eq!(
        db.actor_id("pg-api-ok").await.as_deref(),
        Some(new.as_str())
    );

    for action in ["start", "restart"] {
        let msg = api
            .post(
                &format!("/api/instances/pg-api-stopped/actor/{action}"),
                None,
            )
            .await
            .error(409);
        assert!(msg.contains("stopped"), "{msg}");
    }
    assert_eq!(db.actor_id("pg-api-stopped").await, None);
    assert!(db.live_actors("pg-api-stopped").await.is_empty());
    let r = api
        .post("/api/instances/pg-api-stopped/actor/cancel", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["changed"], false, "nothing to cancel: {v}");
    assert!(v["warning"].is_null(), "{v}");

    let down_actor = db.actor_id("pg-api-down").await.expect("actor id");
    let r = api
        .post("/api/instances/pg-api-down/actor/cancel", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["changed"], true);
    assert_eq!(v["old_actor_id"], down_actor.as_str());
    let warning = v["warning"].as_str().expect("a warning").to_string();
    assert!(warning.contains("reconciler"), "{warning}");
    // The reconciler brings a new actor back: the row still calls for one.
    let back = wait_until("the reconciler starts a new actor", T, || async {
        let a = db.actor_id("pg-api-down").await?;
        (a != down_actor && db.live_actors("pg-api-down").await == vec![a.clone()]).then_some(a)
    })
    .await;
    assert_ne!(
        db.orchestration_status(&down_actor).await.unwrap().0,
        "Running"
    );
    let reason: String = sqlx::query_scalar(
        "SELECT reason FROM toygres_actors.decisions
          WHERE k8s_name = 'pg-api-down' AND new_actor_id = $1",
    )
    .bind(&back)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(reason.contains(&down_actor), "{reason}");

    let msg = api
        .post("/api/instances/pg-api-ok/actor/frobnicate", None)
        .await
        .error(404);
    assert!(msg.contains("frobnicate"), "{msg}");
    api.post("/api/instances/no-such-instance/actor/restart", None)
        .await
        .error(404);
    api.post("/api/instances/pg%01x/actor/start", None)
        .await
        .error(400);
    assert_eq!(
        db.actor_id("pg-api-ok").await.as_deref(),
        Some(new.as_str())
    );

    // Once the row stops calling for an actor, the service cancels it; a cancel then has
    // nothing left to do (the row may still name the finished actor).
    sqlx::query("UPDATE toygres_cms.instances SET state = 'stopped' WHERE k8s_name = 'pg-api-ok'")
        .execute(&db.pool)
        .await
        .unwrap();
    wait_until("pg-api-ok idle", T, || async {
        let (v, _) = api.verdict_of("pg-api-ok").await?;
        (v == "idle" && db.live_actors("pg-api-ok").await.is_empty()).then_some(())
    })
    .await;
    let r = api
        .post("/api/instances/pg-api-ok/actor/cancel", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["changed"], false, "no live actor was cancelled: {v}");
    assert!(v["warning"].is_null(), "{v}");

    // Nothing above (nor the service's log) shows a password.
    api.get("/api/actors").await;
    api.get("/metrics").await;
    api.get("/api/instances/pg-api-down/actor").await;
    api.assert_no_secrets(&svc.log_text());
}

#[tokio::test]
async fn with_an_api_token_posts_need_it_and_gets_do_not() {
    const TOKEN: &str = "tok-7Hq-api-secret";
    let db = TestDb::new().await;
    let svc = ServiceProc::start(&db, &["--api-token", TOKEN]).await;
    let api = Api::new(&svc);
    db.insert_instance("pg-tok", "running", Some(&support::reachable_target()))
        .await;
    let actor = wait_until("actor live", T, || async {
        let a = db.actor_id("pg-tok").await?;
        (db.live_actors("pg-tok").await == vec![a.clone()]).then_some(a)
    })
    .await;

    let restart = "/api/instances/pg-tok/actor/restart";
    for auth in [
        None,
        Some("Bearer wrong-token".to_string()),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Basic {TOKEN}")),
        Some(TOKEN.to_string()),
        Some("Bearer ".to_string()),
    ] {
        let r = api.post(restart, auth.as_deref()).await;
        let msg = r.error(401);
        assert!(r.www_authenticate.starts_with("Bearer"), "{auth:?}");
        assert!(!msg.contains(TOKEN), "{msg}");
    }
    // Unknown names and actions are not revealed without the token either.
    api.post("/api/instances/no-such/actor/restart", None)
        .await
        .error(401);
    api.post("/api/instances/pg-tok/actor/frobnicate", None)
        .await
        .error(401);
    assert_eq!(
        db.actor_id("pg-tok").await.as_deref(),
        Some(actor.as_str()),
        "rejected requests changed nothing"
    );

    let bearer = format!("Bearer {TOKEN}");
    let r = api.post(restart, Some(&bearer)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let new = r.json()["new_actor_id"].as_str().unwrap().to_string();
    assert_ne!(new, actor);
    assert_eq!(db.actor_id("pg-tok").await.as_deref(), Some(new.as_str()));
    let r = api
        .post("/api/instances/no-such/actor/start", Some(&bearer))
        .await;
    r.error(404);
    // The scheme is case-insensitive (RFC 9110), the token is not.
    let r = api
        .post(
            "/api/instances/pg-tok/actor/start",
            Some(&format!("bearer {TOKEN}")),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["changed"], false);
    api.post(
        "/api/instances/pg-tok/actor/start",
        Some(&format!("Bearer {}", TOKEN.to_uppercase())),
    )
    .await
    .error(401);

    // GETs need no token.
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/actors",
        "/api/instances/pg-tok/actor",
    ] {
        let r = api.get(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    let log = svc.log_text();
    assert!(!log.contains(TOKEN), "the token is logged");
    api.assert_no_secrets(&log);
}

#[tokio::test]
async fn with_api_token_for_reads_fleet_reads_need_the_token_and_probes_stay_open() {
    const TOKEN: &str = "tok-R3a-reads-secret";
    let db = TestDb::new().await;
    let svc = ServiceProc::start(&db, &["--api-token", TOKEN, "--api-token-for-reads"]).await;
    let api = Api::new(&svc);
    db.insert_instance("pg-reads", "running", Some(&support::reachable_target()))
        .await;
    let reads = [
        "/metrics",
        "/api/actors",
        "/api/actors?verdict=ok",
        "/api/replicas",
        "/api/instances/pg-reads/actor",
        "/api/instances/no-such/actor",
    ];
    for path in reads {
        for auth in [
            None,
            Some("Bearer wrong-token".to_string()),
            Some(format!("Basic {TOKEN}")),
        ] {
            let r = api.get_with(path, auth.as_deref()).await;
            let msg = r.error(401);
            assert!(r.www_authenticate.starts_with("Bearer"), "{path} {auth:?}");
            assert!(!msg.contains(TOKEN), "{msg}");
            assert!(
                !r.body.contains("pg-reads"),
                "{path}: a refused read shows the fleet: {}",
                r.body
            );
        }
    }
    // With the token, every read answers as usual.
    let bearer = format!("Bearer {TOKEN}");
    let bearer = Some(bearer.as_str());
    for path in &reads[..5] {
        let r = api.get_with(path, bearer).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    api.get_with("/api/instances/no-such/actor", bearer)
        .await
        .error(404);
    let r = api.get_with("/metrics", bearer).await;
    assert!(
        r.body.contains("toygres_actors_health_checks_total"),
        "{}",
        r.body
    );
    // The list is the fleet poll's snapshot (every 500 ms here): the row inserted above
    // shows up at its next poll.
    wait_until("the list shows the new instance", T, || async {
        let r = api.get_with("/api/actors", bearer).await;
        assert_eq!(r.status, 200, "{}", r.body);
        (names(r.json()["actors"].as_array().unwrap()) == ["pg-reads"]).then_some(())
    })
    .await;
    // The orchestrator's probes need no token. (`/readyz` may briefly answer 503 right
    // after the election, while the new leader's listener connects: wait for its 200.)
    let r = api.get("/healthz").await;
    assert_eq!(r.status, 200, "/healthz: {}", r.body);
    support::wait_until(
        "/readyz answers 200 without a token",
        Duration::from_secs(30),
        || async {
            let r = api.get("/readyz").await;
            assert_ne!(r.status, 401, "/readyz asked for the token: {}", r.body);
            (r.status == 200).then_some(())
        },
    )
    .await;
    // POSTs still need it.
    api.post("/api/instances/pg-reads/actor/restart", None)
        .await
        .error(401);
    let log = svc.log_text();
    assert!(!log.contains(TOKEN), "the token is logged");
    api.assert_no_secrets(&log);
}

// ---------------------------------------------------------------------------------------
// The CLI
// ---------------------------------------------------------------------------------------

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn cli(db: &TestDb, args: &[&str]) -> Run {
    let out: Output = tokio::process::Command::new(env!("CARGO_BIN_EXE_toygres-actors"))
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env_remove("RUST_LOG")
        .env_remove("TOYGRES_ACTORS_API_TOKEN")
        .env_remove("TOYGRES_ACTORS_STALE_AFTER")
        .env_remove("TOYGRES_ACTORS_STATUS_VERDICT")
        // The restart limits have tests of their own (tests/hostile.rs).
        .env("TOYGRES_ACTORS_RESTART_MIN_INTERVAL", "0s")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run toygres-actors");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    for text in [&run.stdout, &run.stderr] {
        assert!(
            !text.contains(TARGET_PASSWORD),
            "`toygres-actors {}` shows the password:\n{text}",
            args.join(" ")
        );
    }
    run
}

impl Run {
    fn expect(self, code: i32, what: &str) -> Run {
        assert_eq!(
            self.code, code,
            "{what}: exit code\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// What `heal --dry-run` must not change: actor ids, decisions, Duroxide's tables.
async fn snapshot(db: &TestDb) -> String {
    let ids: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT k8s_name, instance_actor_orchestration_id FROM toygres_cms.instances ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let counts: (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM toygres_actors_duroxide.instances),
                (SELECT count(*) FROM toygres_actors_duroxide.executions),
                (SELECT count(*) FROM toygres_actors_duroxide.orchestrator_queue),
                (SELECT count(*) FROM toygres_actors.decisions)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    format!("{ids:?} {counts:?}")
}

fn status_json(run: &Run) -> Vec<(String, String)> {
    let v: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {}", run.stdout));
    let mut out: Vec<(String, String)> = v
        .as_array()
        .expect("an array")
        .iter()
        .map(|a| {
            (
                a["k8s_name"].as_str().unwrap().to_string(),
                a["verdict"].as_str().expect("a verdict").to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn table_row<'a>(table: &'a str, name: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no row for {name}:\n{table}"))
}

#[tokio::test]
async fn cli_status_explain_actor_and_heal_on_the_same_database() {
    let db = TestDb::new().await;
    let good = support::reachable_target();
    // No service runs: a row that wants an actor has none.
    db.insert_instance("pg-cli-a", "running", Some(&good)).await;
    db.insert_instance("pg-cli-idle", "stopped", Some(&good))
        .await;

    let r = cli(&db, &["status"])
        .await
        .expect(1, "status with a missing actor");
    assert!(r.stdout.starts_with("NAME"), "{}", r.stdout);
    assert!(
        table_row(&r.stdout, "pg-cli-a").ends_with("missing"),
        "{}",
        r.stdout
    );
    assert!(
        table_row(&r.stdout, "pg-cli-idle").ends_with("idle"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("2 instance(s): 1 missing, 1 idle"),
        "{}",
        r.stdout
    );

    let r = cli(&db, &["status", "--json"])
        .await
        .expect(1, "status --json");
    assert_eq!(
        status_json(&r),
        [
            ("pg-cli-a".to_string(), "missing".to_string()),
            ("pg-cli-idle".to_string(), "idle".to_string())
        ]
    );
    let r = cli(&db, &["status", "--verdict", "missing", "--json"])
        .await
        .expect(1, "status --verdict missing");
    assert_eq!(
        status_json(&r),
        [("pg-cli-a".to_string(), "missing".to_string())]
    );
    let r = cli(&db, &["status", "--verdict", "idle"]).await;
    assert!(
        r.stdout.contains("pg-cli-idle") && !r.stdout.contains("pg-cli-a "),
        "{}",
        r.stdout
    );
    let r = cli(&db, &["status", "--verdict", "bogus"]).await;
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("unknown verdict `bogus`"), "{}", r.stderr);

    let r = cli(&db, &["explain", "pg-cli-a"])
        .await
        .expect(0, "explain");
    assert!(r.stdout.contains("instance   pg-cli-a"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("verdict    missing — no actor id on the row"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("would: start"), "{}", r.stdout);
    assert!(r.stdout.contains("recent decisions:"), "{}", r.stdout);

    // heal --dry-run says what it would do and does nothing.
    let before = snapshot(&db).await;
    let r = cli(&db, &["heal", "--dry-run"])
        .await
        .expect(0, "heal --dry-run");
    let line = table_row(&r.stdout, "pg-cli-a");
    assert!(
        line.contains("missing") && line.contains("would start"),
        "{line}"
    );
    assert!(!r.stdout.contains("pg-cli-idle"), "{}", r.stdout);
    assert_eq!(
        snapshot(&db).await,
        before,
        "heal --dry-run changed something"
    );
    assert_eq!(db.actor_id("pg-cli-a").await, None);

    // heal does it: an id in the CMS column and a queued start in Duroxide…
    let r = cli(&db, &["heal"]).await.expect(0, "heal");
    let line = table_row(&r.stdout, "pg-cli-a");
    assert!(line.contains("did start"), "{line}");
    let healed = db.actor_id("pg-cli-a").await.expect("heal set an actor id");
    assert!(line.contains(&healed), "{line}");
    let r = cli(&db, &["status", "--json"])
        .await
        .expect(0, "status after heal");
    assert_eq!(status_json(&r)[0], ("pg-cli-a".into(), "ok".into()));
    let r = cli(&db, &["heal"]).await.expect(0, "heal again");
    assert!(r.stdout.contains("nothing to heal"), "{}", r.stdout);

    // …which the service's Duroxide runtime then runs.
    let svc = ServiceProc::start(&db, &[]).await;
    wait_until("the healed actor runs and checks", T, || async {
        (db.checks_of("pg-cli-a").await >= 1
            && db.live_actors("pg-cli-a").await == vec![healed.clone()])
        .then_some(())
    })
    .await;
    assert_eq!(
        db.actor_id("pg-cli-a").await.as_deref(),
        Some(healed.as_str())
    );

    // Unhealthy is not something to heal: exit 0.
    db.insert_instance(
        "pg-cli-down",
        "running",
        Some(&support::closed_port_target()),
    )
    .await;
    wait_until("pg-cli-down unhealthy", T, || async {
        (db.health_of("pg-cli-down").await.0 == "unhealthy").then_some(())
    })
    .await;
    let r = cli(&db, &["status"])
        .await
        .expect(0, "status: ok, idle, unhealthy");
    assert!(
        table_row(&r.stdout, "pg-cli-a").ends_with("ok"),
        "{}",
        r.stdout
    );
    assert!(
        table_row(&r.stdout, "pg-cli-a").contains(&healed),
        "{}",
        r.stdout
    );
    assert!(
        table_row(&r.stdout, "pg-cli-down").ends_with("unhealthy"),
        "{}",
        r.stdout
    );

    // actor start / restart.
    let r = cli(&db, &["actor", "start", "pg-cli-a"])
        .await
        .expect(0, "actor start");
    assert!(r.stdout.contains("already running"), "{}", r.stdout);
    let r = cli(&db, &["actor", "restart", "pg-cli-a"])
        .await
        .expect(0, "actor restart");
    let new = db.actor_id("pg-cli-a").await.unwrap();
    assert_ne!(new, healed);
    assert!(
        r.stdout.contains(&format!("new actor: {new}")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(&format!("old actor: {healed}")),
        "{}",
        r.stdout
    );
    wait_until("the restarted actor is the only live one", T, || async {
        (db.live_actors("pg-cli-a").await == vec![new.clone()]).then_some(())
    })
    .await;
    let r = cli(&db, &["actor", "restart", "pg-cli-idle"]).await;
    assert_ne!(r.code, 0, "restart of a stopped instance fails");
    assert!(r.stderr.contains("stopped"), "{}", r.stderr);

    // explain shows the verdict, its reason and the decisions.
    wait_until("a check by the new actor", T, || async {
        (db.health_of("pg-cli-a").await.0 == "healthy").then_some(())
    })
    .await;
    let r = cli(&db, &["explain", "pg-cli-a"])
        .await
        .expect(0, "explain");
    assert!(
        r.stdout.contains(&format!("actor      {new}")),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("verdict    ok — "), "{}", r.stdout);
    assert!(r.stdout.contains("recent health checks:"), "{}", r.stdout);
    let decisions = r.stdout.split("recent decisions:").nth(1).unwrap_or("");
    assert!(
        decisions.contains("restart") && decisions.contains("operator:cli"),
        "{}",
        r.stdout
    );
    assert!(decisions.contains(&new), "{}", r.stdout);
    let r = cli(&db, &["explain", "pg-cli-down"])
        .await
        .expect(0, "explain");
    assert!(r.stdout.contains("verdict    unhealthy — "), "{}", r.stdout);

    assert!(
        !svc.log_text().contains(TARGET_PASSWORD),
        "the service log leaks the password"
    );
}

#[tokio::test]
async fn cli_explain_of_an_unknown_name_exits_2_with_a_clear_error() {
    let db = TestDb::new().await;
    db.insert_instance("pg-known", "running", None).await;
    let r = cli(&db, &["explain", "pg-unknown"]).await;
    assert!(
        r.stderr.contains("no instance named `pg-unknown`"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    // 1 means "something needs healing" for `status`; a usage error must not look like it.
    assert_eq!(
        r.code, 2,
        "`explain` of an unknown name must exit 2: exit 1 is `status`' \"needs healing\" \
         (src/main.rs maps every error to exit 1)"
    );
}
