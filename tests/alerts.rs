//! Checks the observability artifacts under `dashboards/`:
//!
//! * `alerts.yml` passes `promtool check rules` and names the alerts of the spec, each
//!   with a `severity` label and `summary`, `description` and `runbook_url` annotations, the
//!   URL naming a runbook anchor that `docs/operations.md` has;
//! * `alerts_test.yml` passes `promtool test rules` and has, for every alert, a case where it
//!   fires and a case where it must not;
//! * `prometheus.yml` passes `promtool check config`;
//! * `toygres-actors.json` is valid JSON, uses the `${datasource}` variable and every PromQL
//!   `expr` in it parses once Grafana's variables are substituted (checked by promtool).
//!
//! promtool comes with the Debian package `prometheus`. These tests fail (they do not skip)
//! when it is missing. Only std is used, so the file also builds on its own:
//! `rustc --edition 2024 --test tests/alerts.rs -o /tmp/alerts_test && /tmp/alerts_test`.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const INSTALL_HINT: &str = "install Debian package `prometheus` (apt-get install -y prometheus)";

const ALERTS: [&str; 12] = [
    "ToygresActorStale",
    "ToygresActorMissing",
    "ToygresActorZombie",
    "ToygresActorsListenerDown",
    "ToygresActorsDown",
    "ToygresInstanceUnhealthy",
    "ToygresActorsNoLeader",
    "ToygresChecksLagging",
    "ToygresActorsHealingPaused",
    "ToygresActorsRenewalsLate",
    "ToygresLegacyActorSurvives",
    "ToygresActorsForeignWork",
];

/// The crate root. Cargo always sets `CARGO_MANIFEST_DIR`; a standalone
/// `rustc --test tests/alerts.rs` build (run from the crate root) falls back to `.`.
const MANIFEST_DIR: &str = match option_env!("CARGO_MANIFEST_DIR") {
    Some(dir) => dir,
    None => ".",
};

fn dashboards() -> PathBuf {
    Path::new(MANIFEST_DIR).join("dashboards")
}

fn read(name: &str) -> String {
    let path = dashboards().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn promtool(args: &[&str]) -> Output {
    match Command::new("promtool")
        .args(args)
        .current_dir(MANIFEST_DIR)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            panic!("promtool is not on PATH: {INSTALL_HINT}")
        }
        Err(e) => panic!("cannot run promtool ({e}): {INSTALL_HINT}"),
    }
}

/// Runs promtool and fails with its whole output unless it succeeds; returns stdout + stderr.
fn promtool_ok(args: &[&str]) -> String {
    let out = promtool(args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "`promtool {}` failed ({})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        args.join(" "),
        out.status
    );
    format!("{stdout}{stderr}")
}

fn path_arg(name: &str) -> String {
    dashboards().join(name).to_string_lossy().into_owned()
}

#[test]
fn promtool_check_rules() {
    let out = promtool_ok(&["check", "rules", &path_arg("alerts.yml")]);
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", ALERTS.len())),
        "expected {} rules:\n{out}",
        ALERTS.len()
    );
}

#[test]
fn promtool_test_rules() {
    let out = promtool_ok(&["test", "rules", &path_arg("alerts_test.yml")]);
    assert!(
        out.contains("SUCCESS"),
        "unexpected promtool output:\n{out}"
    );
}

#[test]
fn promtool_check_config() {
    let out = promtool_ok(&["check", "config", &path_arg("prometheus.yml")]);
    assert!(
        out.contains("SUCCESS"),
        "unexpected promtool output:\n{out}"
    );
    let config = read("prometheus.yml");
    for needle in [
        "job_name: toygres-actors",
        "127.0.0.1:9321",
        "/metrics",
        "alerts.yml",
    ] {
        assert!(config.contains(needle), "prometheus.yml lacks `{needle}`");
    }
}

/// The rule file, split into one text block per `- alert:` entry.
fn alert_blocks() -> Vec<(String, String)> {
    let rules = read("alerts.yml");
    assert!(
        rules.contains("name: toygres-actors"),
        "alerts.yml has no group `toygres-actors`"
    );
    let mut blocks = Vec::new();
    for part in rules.split("- alert:").skip(1) {
        let name = part.lines().next().unwrap_or_default().trim().to_string();
        blocks.push((name, part.to_string()));
    }
    blocks
}

#[test]
fn every_alert_has_severity_summary_description_and_runbook() {
    let blocks = alert_blocks();
    let mut names: Vec<&str> = blocks.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    let mut expected = ALERTS.to_vec();
    expected.sort_unstable();
    assert_eq!(
        names, expected,
        "alerts.yml must define exactly the alerts of the spec"
    );

    let operations = std::fs::read_to_string(Path::new(MANIFEST_DIR).join("docs/operations.md"))
        .expect("read docs/operations.md");
    for (name, block) in &blocks {
        assert!(block.contains("expr:"), "{name}: no expr");
        assert!(
            block.contains("for:"),
            "{name}: no `for:` (alerts must not fire on one sample)"
        );
        assert!(
            block.contains("severity: critical") || block.contains("severity: warning"),
            "{name}: label severity must be critical or warning"
        );
        for key in ["summary:", "description:", "runbook_url:"] {
            assert!(block.contains(key), "{name}: annotation `{key}` missing");
        }
        let anchor = block
            .split("docs/operations.md#")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .filter(|a| a.starts_with("runbook-"))
            .unwrap_or_else(|| {
                panic!("{name}: runbook_url must point at a runbook section of docs/operations.md")
            });
        assert!(
            operations.contains(&format!("<a id=\"{anchor}\"></a>")),
            "{name}: docs/operations.md has no anchor `{anchor}` for its runbook_url"
        );
        if block.contains("k8s_name") && block.contains("max by (k8s_name)") {
            assert!(
                block.contains("{{ $labels.k8s_name }}"),
                "{name}: per-instance alert must name the instance in its annotations"
            );
        }
    }
}

#[test]
fn every_alert_has_firing_and_not_firing_unit_tests() {
    let tests = read("alerts_test.yml");
    assert!(
        tests.contains("alerts.yml"),
        "alerts_test.yml must load alerts.yml"
    );
    for alert in ALERTS {
        let (mut fires, mut silent) = (0, 0);
        let needle = format!("alertname: {alert}");
        let mut rest = tests.as_str();
        while let Some(at) = rest.find(&needle) {
            rest = &rest[at + needle.len()..];
            // The name must end here (ToygresActorsDown is not ToygresActorsDownX).
            if rest.starts_with(|c: char| c.is_ascii_alphanumeric()) {
                continue;
            }
            let next = rest.lines().skip(1).map(str::trim).find(|l| !l.is_empty());
            match next {
                Some("exp_alerts: []") => silent += 1,
                Some("exp_alerts:") => fires += 1,
                _ => {}
            }
        }
        assert!(fires > 0, "alerts_test.yml: no case where {alert} fires");
        assert!(
            silent > 0,
            "alerts_test.yml: no case where {alert} must not fire"
        );
    }
}

#[test]
fn dashboard_is_valid_and_its_queries_parse() {
    let text = read("toygres-actors.json");
    let dash = Json::parse(&text).unwrap_or_else(|e| panic!("toygres-actors.json: {e}"));

    let schema = dash
        .get("schemaVersion")
        .and_then(Json::as_num)
        .unwrap_or(0.0);
    assert!(schema >= 36.0, "schemaVersion {schema} is too old");

    let vars: Vec<&str> = dash
        .get("templating")
        .and_then(|t| t.get("list"))
        .and_then(Json::as_arr)
        .expect("templating.list")
        .iter()
        .filter_map(|v| v.get("name").and_then(Json::as_str))
        .collect();
    for var in ["datasource", "job", "instance"] {
        assert!(
            vars.contains(&var),
            "template variable `{var}` missing (have {vars:?})"
        );
    }

    let panels = dash.get("panels").and_then(Json::as_arr).expect("panels");
    let mut exprs = Vec::new();
    for panel in panels {
        let title = panel.get("title").and_then(Json::as_str).unwrap_or("?");
        let Some(targets) = panel.get("targets").and_then(Json::as_arr) else {
            continue;
        };
        let uid = panel
            .get("datasource")
            .and_then(|d| d.get("uid"))
            .and_then(Json::as_str);
        assert_eq!(
            uid,
            Some("${datasource}"),
            "panel `{title}` must use the ${{datasource}} variable"
        );
        for target in targets {
            let expr = target.get("expr").and_then(Json::as_str);
            let expr = expr.unwrap_or_else(|| panic!("panel `{title}`: target without expr"));
            exprs.push((title.to_string(), expr.to_string()));
        }
    }
    assert!(
        exprs.len() >= 12,
        "only {} queries in the dashboard",
        exprs.len()
    );

    let all = exprs
        .iter()
        .map(|(_, e)| e.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    for metric in [
        "toygres_actors_instances",
        "toygres_actors_instance_verdict",
        "toygres_actors_instance_last_health_check_timestamp_seconds",
        "toygres_actors_health_check_duration_seconds_bucket",
        "toygres_actors_event_to_action_seconds_bucket",
        "toygres_actors_reconcile_actions_total",
        "toygres_actors_reconcile_errors_total",
        "toygres_actors_listener_connected",
        "toygres_actors_listener_reconnects_total",
        "toygres_actors_leader",
        "toygres_actors_notifications_total",
        "toygres_actors_notifications_invalid_total",
        "toygres_actors_notify_roundtrip_seconds_bucket",
        "duroxide_",
    ] {
        assert!(
            all.contains(metric),
            "the dashboard has no panel on {metric}"
        );
    }

    // Substitute Grafana's variables the way it does for "All" and check every expression
    // with promtool, as recording rules of a throw-away rule file.
    let mut rules = String::from("groups:\n  - name: dashboard-exprs\n    rules:\n");
    for (i, (title, expr)) in exprs.iter().enumerate() {
        let promql = expr
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "1m")
            .replace("$job", ".*")
            .replace("$instance", ".*");
        assert!(
            !promql.contains('$'),
            "panel `{title}`: unknown variable in `{expr}`"
        );
        rules.push_str(&format!(
            "      - record: dashboard:expr_{i}\n        expr: '{}'\n",
            promql.replace('\n', " ").replace('\'', "''")
        ));
    }
    let file = std::env::temp_dir().join(format!(
        "toygres-actors-dashboard-{}.yml",
        std::process::id()
    ));
    std::fs::write(&file, &rules).expect("write temporary rule file");
    let out = promtool(&["check", "rules", &file.to_string_lossy()]);
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "dashboard queries do not parse:\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- rules ---\n{rules}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Just enough JSON for the checks above (std only: no serde in this test).
#[derive(Debug)]
enum Json {
    Null,
    Bool(#[allow(dead_code)] bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn parse(text: &str) -> Result<Json, String> {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.i != p.s.len() {
            return Err(p.err("trailing characters"));
        }
        Ok(v)
    }
    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }
    fn as_num(&self) -> Option<f64> {
        match self {
            Json::Num(n) => Some(*n),
            _ => None,
        }
    }
    fn as_arr(&self) -> Option<&[Json]> {
        match self {
            Json::Arr(a) => Some(a),
            _ => None,
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> String {
        let line = self.s[..self.i.min(self.s.len())]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        format!("invalid JSON at byte {} (line {line}): {what}", self.i)
    }
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }
    fn eat(&mut self, lit: &str) -> bool {
        if self.s[self.i..].starts_with(lit.as_bytes()) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }
    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        match self.s.get(self.i) {
            None => Err(self.err("unexpected end")),
            Some(b'{') => {
                self.i += 1;
                let mut fields = Vec::new();
                self.ws();
                if self.eat("}") {
                    return Ok(Json::Obj(fields));
                }
                loop {
                    self.ws();
                    let key = self.string()?;
                    self.ws();
                    if !self.eat(":") {
                        return Err(self.err("expected ':'"));
                    }
                    fields.push((key, self.value()?));
                    self.ws();
                    if self.eat("}") {
                        return Ok(Json::Obj(fields));
                    }
                    if !self.eat(",") {
                        return Err(self.err("expected ',' or '}'"));
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.eat("]") {
                    return Ok(Json::Arr(items));
                }
                loop {
                    items.push(self.value()?);
                    self.ws();
                    if self.eat("]") {
                        return Ok(Json::Arr(items));
                    }
                    if !self.eat(",") {
                        return Err(self.err("expected ',' or ']'"));
                    }
                }
            }
            Some(b'"') => Ok(Json::Str(self.string()?)),
            Some(b't') if self.eat("true") => Ok(Json::Bool(true)),
            Some(b'f') if self.eat("false") => Ok(Json::Bool(false)),
            Some(b'n') if self.eat("null") => Ok(Json::Null),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.i;
                while self.i < self.s.len()
                    && matches!(
                        self.s[self.i],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i]).unwrap_or_default();
                text.parse()
                    .map(Json::Num)
                    .map_err(|_| self.err("bad number"))
            }
            Some(_) => Err(self.err("unexpected character")),
        }
    }
    fn string(&mut self) -> Result<String, String> {
        if !self.eat("\"") {
            return Err(self.err("expected string"));
        }
        let mut out = String::new();
        loop {
            let start = self.i;
            while self.i < self.s.len() && !matches!(self.s[self.i], b'"' | b'\\') {
                if self.s[self.i] < 0x20 {
                    return Err(self.err("control character in string"));
                }
                self.i += 1;
            }
            out.push_str(
                std::str::from_utf8(&self.s[start..self.i]).map_err(|_| self.err("bad UTF-8"))?,
            );
            match self.s.get(self.i) {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                _ => {
                    self.i += 1;
                    let esc = *self.s.get(self.i).ok_or_else(|| self.err("bad escape"))?;
                    self.i += 1;
                    match esc {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hex = self
                                .s
                                .get(self.i..self.i + 4)
                                .ok_or_else(|| self.err("bad \\u"))?;
                            let hex = std::str::from_utf8(hex).map_err(|_| self.err("bad \\u"))?;
                            let code =
                                u32::from_str_radix(hex, 16).map_err(|_| self.err("bad \\u"))?;
                            self.i += 4;
                            // Surrogate pairs are not needed here; keep a replacement character.
                            out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                        }
                        _ => return Err(self.err("bad escape")),
                    }
                }
            }
        }
    }
}
