//! End to end with a real Prometheus: it scrapes the real service every second and
//! evaluates a copy of `dashboards/alerts.yml` (every `for:` shortened to 2s).
//!
//! * A stale actor (its probe target accepts connections and never answers) makes
//!   `ToygresActorStale` fire for that instance; once the target is reachable the alert
//!   resolves. `ToygresInstanceUnhealthy` fires for an unreachable instance; the service-level
//!   alerts (down, no leader, listener down) and missing/zombie do not fire.
//! * Every PromQL `expr` of `dashboards/toygres-actors.json`, with Grafana's variables
//!   substituted, parses and returns data from the live Prometheus (the test makes the
//!   events the rates and histograms need: CMS writes, an API restart, an invalid NOTIFY).
//!
//! `prometheus` comes with the Debian package `prometheus`; the test fails (it does not
//! skip) when it is missing.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{ServiceProc, TestDb, wait_until};

const T: Duration = Duration::from_secs(60);
const INSTALL_HINT: &str =
    "install the Debian package `prometheus` (apt-get install -y prometheus)";
/// What every `for:` of the alert rules becomes in the test copy.
const SHORT_FOR: &str = "2s";

fn dashboards() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards")
}

/// The `prometheus` server binary: on PATH, or where the Debian package puts it.
fn prometheus_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("prometheus"))
            .find(|p| p.is_file())
    });
    let bin = on_path.unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"));
    match Command::new(&bin).arg("--version").output() {
        Ok(out) if out.status.success() => bin,
        Ok(out) => panic!(
            "`{} --version` failed ({}): {INSTALL_HINT}",
            bin.display(),
            out.status
        ),
        Err(e) => panic!("cannot run {} ({e}): {INSTALL_HINT}", bin.display()),
    }
}

/// `alerts.yml` with every `for: <duration>` replaced by [`SHORT_FOR`]; returns the text and
/// how many were replaced.
fn shortened_alert_rules() -> (String, usize) {
    let text = std::fs::read_to_string(dashboards().join("alerts.yml")).expect("read alerts.yml");
    let mut replaced = 0;
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("for:") {
            let indent = &line[..line.len() - trimmed.len()];
            out.push_str(&format!("{indent}for: {SHORT_FOR}\n"));
            replaced += 1;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    (out, replaced)
}

/// A Prometheus server in a temporary directory; killed (and the directory removed) on drop.
struct Prometheus {
    child: Option<Child>,
    dir: PathBuf,
    base: String,
    client: reqwest::Client,
}

impl Prometheus {
    async fn start(scrape_target: &str) -> Prometheus {
        let bin = prometheus_binary();
        let dir = std::env::temp_dir().join(format!(
            "toygres-actors-prom-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let (rules, replaced) = shortened_alert_rules();
        assert!(replaced >= 7, "every alert has a `for:` ({replaced} found)");
        std::fs::write(dir.join("alerts.yml"), rules).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: toygres-actors\n    metrics_path: /metrics\n    \
             static_configs:\n      - targets: [\"{scrape_target}\"]\n",
            rules = dir.join("alerts.yml").display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = support::free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(&bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} ({e}): {INSTALL_HINT}", bin.display()));
        let mut p = Prometheus {
            child: Some(child),
            dir,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        };
        let ready = format!("{}/-/ready", p.base);
        let deadline = Instant::now() + T;
        loop {
            if let Ok(r) = p.client.get(&ready).send().await
                && r.status().is_success()
            {
                break;
            }
            if let Some(status) = p.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("prometheus exited ({status}):\n{}", p.log());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within {T:?}:\n{}",
                p.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    async fn api(&self, path: &str) -> Value {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("prometheus answers");
        let status = r.status();
        let body = r.text().await.unwrap();
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("prometheus {path}: {status}, not JSON ({e}): {body}"))
    }

    /// An instant query: `(status, result)`; the result as a list of `(labels, value)`.
    async fn query(&self, expr: &str) -> (Value, Vec<(Value, f64)>) {
        let v = self
            .api(&format!("/api/v1/query?query={}", urlencode(expr)))
            .await;
        let mut samples = Vec::new();
        if v["status"] == "success" {
            let data = &v["data"];
            let value = |pair: &Value| -> f64 {
                pair[1]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(f64::NAN)
            };
            match data["resultType"].as_str() {
                Some("vector") => {
                    for s in data["result"].as_array().unwrap() {
                        samples.push((s["metric"].clone(), value(&s["value"])));
                    }
                }
                Some("scalar") => samples.push((Value::Null, value(&data["result"]))),
                other => panic!("unexpected result type {other:?} for {expr}"),
            }
        }
        (v, samples)
    }

    /// Active alerts (pending or firing) as `(alertname, k8s_name, state)`.
    async fn alerts(&self) -> Vec<(String, String, String)> {
        let v = self.api("/api/v1/alerts").await;
        assert_eq!(v["status"], "success", "{v}");
        v["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let s = |x: &Value| x.as_str().unwrap_or("").to_string();
                (
                    s(&a["labels"]["alertname"]),
                    s(&a["labels"]["k8s_name"]),
                    s(&a["state"]),
                )
            })
            .collect()
    }

    async fn alert_state(&self, alert: &str, k8s_name: &str) -> Option<String> {
        self.alerts()
            .await
            .into_iter()
            .find(|(a, k, _)| a == alert && k == k8s_name)
            .map(|(_, _, state)| state)
    }

    /// Whether `expr` currently has at least one sample (Prometheus scraped what we need).
    async fn has_data(&self, expr: &str) -> bool {
        let (_, samples) = self.query(expr).await;
        !samples.is_empty()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- prometheus log (last lines) ---\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Every `expr` string anywhere in the dashboard JSON.
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// Grafana's variables as the dashboard's "All" selection and a short range would set them.
fn substitute_grafana_variables(expr: &str) -> String {
    let mut e = expr.to_string();
    for (var, value) in [
        ("job", ".*"),
        ("instance", ".*"),
        ("__rate_interval", "1m"),
        ("__interval", "5s"),
        ("__range", "5m"),
    ] {
        e = e
            .replace(&format!("${{{var}}}"), value)
            .replace(&format!("[[{var}]]"), value);
        e = e.replace(&format!("${var}"), value);
    }
    e
}

#[tokio::test]
async fn alerts_fire_and_resolve_and_every_dashboard_query_returns_data() {
    let started = Instant::now();
    // Fail (not skip) at once when Prometheus is not installed.
    prometheus_binary();
    let mut exprs = Vec::new();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(dashboards().join("toygres-actors.json")).unwrap(),
    )
    .expect("dashboard JSON");
    dashboard_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "the dashboard has queries: {exprs:?}");

    let db = TestDb::new().await;
    let (hang, _black_hole) = support::black_hole().await;
    // The probe of pg-prom-hang hangs (60 s connect timeout): no check is written, so the
    // actor is stale 3 s after each (re)start; the reconciler heals it at each 10 s resync,
    // and the new actor hangs too.
    let svc = ServiceProc::start(
        &db,
        &[
            "--probe-connect-timeout",
            "60s",
            "--stale-after",
            "3s",
            "--resync-interval",
            "10s",
        ],
    )
    .await;
    db.insert_instance("pg-prom-ok", "running", Some(&support::reachable_target()))
        .await;
    db.insert_instance(
        "pg-prom-down",
        "running",
        Some(&support::closed_port_target()),
    )
    .await;
    db.insert_instance("pg-prom-hang", "running", Some(&hang))
        .await;

    let target = svc.http.trim_start_matches("http://").to_string();
    let prom = Prometheus::start(&target).await;
    wait_until("prometheus scrapes the service", T, || async {
        prom.has_data(
            r#"up{job="toygres-actors"} == 1 and on (instance) toygres_actors_leader == 1"#,
        )
        .await
        .then_some(())
    })
    .await;

    // Events for the rates and histograms, each seen by a scrape before the next one, so
    // every counter has an increase inside the query window. Each CMS write is reconciled
    // before the next: the reconciler reads the row, so an insert and a stop in quick
    // succession would be one no-op.
    db.insert_instance("pg-prom-new", "running", Some(&support::reachable_target()))
        .await;
    wait_until(
        "pg-prom-new started by its insert notification",
        T,
        || async {
            let a = db.actor_id("pg-prom-new").await?;
            (db.live_actors("pg-prom-new").await == vec![a]).then_some(())
        },
    )
    .await;
    wait_until("event_to_action scraped", T, || async {
        prom.has_data("toygres_actors_event_to_action_seconds_count > 0")
            .await
            .then_some(())
    })
    .await;
    sqlx::query(
        "UPDATE toygres_cms.instances SET state = 'stopped' WHERE k8s_name = 'pg-prom-new'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    wait_until(
        "pg-prom-new cancelled by its state notification",
        T,
        || async { db.live_actors("pg-prom-new").await.is_empty().then_some(()) },
    )
    .await;
    sqlx::query("NOTIFY toygres_actor_control, 'frobnicate pg-prom-ok'")
        .execute(&db.pool)
        .await
        .unwrap();
    let r = reqwest::Client::new()
        .post(format!(
            "{}/api/instances/pg-prom-ok/actor/restart",
            svc.http
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for expr in [
        "increase(toygres_actors_event_to_action_seconds_count[1m]) > 0",
        "increase(toygres_actors_notifications_invalid_total[1m]) > 0",
        r#"increase(toygres_actors_notifications_total{op="state"}[1m]) > 0"#,
        r#"increase(toygres_actors_reconcile_actions_total{action="restart"}[1m]) > 0"#,
    ] {
        wait_until(&format!("prometheus sees {expr}"), T, || async {
            prom.has_data(expr).await.then_some(())
        })
        .await;
    }

    // The stale actor: the alert fires for that instance.
    let fired = wait_until("ToygresActorStale firing for pg-prom-hang", T, || async {
        (prom
            .alert_state("ToygresActorStale", "pg-prom-hang")
            .await
            .as_deref()
            == Some("firing"))
        .then(Instant::now)
    })
    .await;
    eprintln!("ToygresActorStale fired after {:?}", started.elapsed());
    assert_eq!(
        prom.alert_state("ToygresActorStale", "pg-prom-ok").await,
        None,
        "a healthy instance is not stale"
    );
    wait_until(
        "ToygresInstanceUnhealthy firing for pg-prom-down",
        T,
        || async {
            (prom
                .alert_state("ToygresInstanceUnhealthy", "pg-prom-down")
                .await
                .as_deref()
                == Some("firing"))
            .then_some(())
        },
    )
    .await;

    // Every dashboard query parses and returns data (retried briefly: the stale-only panels
    // have data while the instance is stale, between heals).
    let mut report = Vec::new();
    for raw in &exprs {
        let expr = substitute_grafana_variables(raw);
        assert!(!expr.contains('$'), "a Grafana variable is left in {expr}");
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(30);
        loop {
            let (v, samples) = prom.query(&expr).await;
            assert_eq!(
                v["status"], "success",
                "the query does not parse: {expr}\n{v}"
            );
            if samples.iter().any(|(_, x)| !x.is_nan()) {
                report.push(format!(
                    "{:>5} ms  {} sample(s)  {expr}",
                    t0.elapsed().as_millis(),
                    samples.len()
                ));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no data (or only NaN) for the dashboard query\n  {expr}\nafter 30 s: {samples:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    eprintln!(
        "{} dashboard queries returned data:\n{}",
        exprs.len(),
        report.join("\n")
    );

    // The instance becomes reachable: the (next) actor checks it and the alert resolves.
    sqlx::query(
        "UPDATE toygres_cms.instances SET dns_connection_string = $1 WHERE k8s_name = 'pg-prom-hang'",
    )
    .bind(support::reachable_target())
    .execute(&db.pool)
    .await
    .unwrap();
    let changed_at = chrono::Utc::now();
    wait_until("pg-prom-hang checked healthy", T, || async {
        let (health, last) = db.health_of("pg-prom-hang").await;
        (health == "healthy" && last.is_some_and(|t| t > changed_at)).then_some(())
    })
    .await;
    wait_until("ToygresActorStale resolved for pg-prom-hang", T, || async {
        prom.alert_state("ToygresActorStale", "pg-prom-hang")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    eprintln!(
        "ToygresActorStale resolved {:?} after it fired",
        fired.elapsed()
    );
    // …and stays resolved (longer than stale_after plus the rule's `for:`).
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        assert_eq!(
            prom.alert_state("ToygresActorStale", "pg-prom-hang").await,
            None,
            "the alert came back for a healthy instance"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        prom.has_data(
            r#"toygres_actors_instance_verdict{k8s_name="pg-prom-hang",verdict="ok"} == 1"#
        )
        .await
    );

    // Alerts that must not fire on a healthy, leading, listening service.
    let firing: Vec<_> = prom
        .alerts()
        .await
        .into_iter()
        .filter(|(_, _, s)| s == "firing")
        .collect();
    for (alert, k8s_name, _) in &firing {
        assert!(
            alert == "ToygresInstanceUnhealthy" && k8s_name == "pg-prom-down",
            "unexpected firing alert {alert} {k8s_name}: {firing:?}"
        );
    }
    assert!(!firing.is_empty(), "ToygresInstanceUnhealthy still fires");
    eprintln!("test took {:?}", started.elapsed());
}
