//! Static validation of what cannot run here (no Docker engine): compose fragments and their
//! references, the Dockerfile, Grafana provisioning and dashboards (JSON, ids, datasource, every
//! PromQL expression parsed by promtool), Prometheus config and alert rules (promtool check and
//! unit tests), and the JMX exporter rules (patterns compile and produce the metric names the
//! Kafka Connect dashboard uses).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use common::*;
use serde_yaml_ng::Value as Yaml;

const FRAGMENTS: [&str; 4] = [
    "docker-compose.kafka.yml",
    "docker-compose.postgis.yml",
    "docker-compose.ngsiflow.yml",
    "docker-compose.monitoring.yml",
];
const DATASOURCE_UID: &str = "ngsiflow-prometheus";

fn yaml(path: &Path) -> Yaml {
    serde_yaml_ng::from_str(
        &std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo())
        .output()
        .expect("promtool (scripts/install-deps.sh installs it)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The variables docker compose gets: scripts/versions.env (every version and image, shared with
/// the native stack) then docker/.env, with `${VAR}` references expanded as compose does.
fn env_defaults() -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for f in ["scripts/versions.env", "docker/.env"] {
        for l in std::fs::read_to_string(repo().join(f)).unwrap().lines() {
            if l.trim_start().starts_with('#') || !l.contains('=') {
                continue;
            }
            let (k, v) = l.split_once('=').unwrap();
            let mut v = v.trim().to_string();
            for (name, value) in &env {
                v = v.replace(&format!("${{{name}}}"), value);
            }
            assert!(
                !v.contains("${"),
                "{f}: {k} refers to an undefined variable"
            );
            env.insert(k.trim().to_string(), v);
        }
    }
    env
}

/// Every `${VAR}` / `${VAR:-default}` in a text.
fn env_refs(text: &str) -> Vec<(String, bool)> {
    let re = regex::Regex::new(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?-[^}]*)?\}").unwrap();
    re.captures_iter(text)
        .map(|c| (c[1].to_string(), c.get(2).is_some()))
        .collect()
}

#[test]
fn compose_fragments_parse_and_every_reference_exists() {
    let docker = repo().join("docker");
    let env = env_defaults();
    let mut services: BTreeMap<String, Yaml> = BTreeMap::new();
    let mut volumes: BTreeSet<String> = BTreeSet::new();
    for f in FRAGMENTS {
        let path = docker.join(f);
        let text = std::fs::read_to_string(&path).unwrap();
        for (var, has_default) in env_refs(&text) {
            assert!(
                has_default || env.contains_key(&var),
                "{f}: ${{{var}}} has no default and is not in docker/.env"
            );
        }
        let doc = yaml(&path);
        for (name, svc) in doc["services"].as_mapping().unwrap() {
            let name = name.as_str().unwrap().to_string();
            assert!(
                services.insert(name.clone(), svc.clone()).is_none(),
                "service {name} defined twice"
            );
        }
        if let Some(v) = doc.get("volumes").and_then(Yaml::as_mapping) {
            volumes.extend(v.keys().map(|k| k.as_str().unwrap().to_string()));
        }
    }
    // Keys checked against the Compose specification's service and healthcheck fields, so a
    // typo cannot silently disable a setting (there is no Docker engine here to reject it).
    const SERVICE_KEYS: [&str; 16] = [
        "image",
        "build",
        "command",
        "entrypoint",
        "environment",
        "volumes",
        "ports",
        "depends_on",
        "healthcheck",
        "restart",
        "profiles",
        "hostname",
        "user",
        "networks",
        "labels",
        "env_file",
    ];
    const HEALTHCHECK_KEYS: [&str; 6] = [
        "test",
        "interval",
        "timeout",
        "retries",
        "start_period",
        "disable",
    ];
    for (name, svc) in &services {
        for key in svc.as_mapping().unwrap().keys() {
            assert!(
                SERVICE_KEYS.contains(&key.as_str().unwrap()),
                "{name}: unknown service key {key:?}"
            );
        }
        if let Some(h) = svc.get("healthcheck") {
            for key in h.as_mapping().unwrap().keys() {
                assert!(
                    HEALTHCHECK_KEYS.contains(&key.as_str().unwrap()),
                    "{name}: unknown healthcheck key {key:?}"
                );
            }
            assert!(
                h["test"].is_sequence()
                    && h["test"][0]
                        .as_str()
                        .is_some_and(|t| t == "CMD" || t == "CMD-SHELL"),
                "{name}: healthcheck test form"
            );
        }
        if let Some(r) = svc.get("restart") {
            assert!(
                ["no", "always", "on-failure", "unless-stopped"].contains(&r.as_str().unwrap()),
                "{name}: restart {r:?}"
            );
        }
        if let Some(b) = svc.get("build") {
            let ctx = docker.join(b["context"].as_str().unwrap());
            assert!(
                ctx.join(b["dockerfile"].as_str().unwrap()).exists(),
                "{name}: dockerfile exists"
            );
        }
    }
    let expected: BTreeSet<&str> = [
        "kafka",
        "postgis",
        "ngsiflow",
        "kafka-connect",
        "kafka-exporter",
        "postgres-exporter",
        "prometheus",
        "grafana",
    ]
    .into();
    assert_eq!(
        services.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        expected
    );
    for (name, svc) in &services {
        assert!(
            svc.get("image").is_some(),
            "{name}: image pinned and overridable"
        );
        let image = svc["image"].as_str().unwrap();
        assert!(
            image.starts_with("${") && image.contains(":-"),
            "{name}: image {image} must be ${{VAR:-pinned}}"
        );
        let pinned = image.split(":-").nth(1).unwrap().trim_end_matches('}');
        assert!(
            pinned.contains(':') && !pinned.ends_with(":latest"),
            "{name}: {pinned} pinned to a version"
        );
        // Each default is exactly what scripts/versions.env / docker/.env say, so the stack runs
        // the versions the native stack is tested with even when compose falls back to it.
        let var = &image[2..image.find(":-").unwrap()];
        assert_eq!(
            env.get(var).map(String::as_str),
            Some(pinned),
            "{name}: default of ${{{var}}}"
        );
        if let Some(args) = svc
            .get("build")
            .and_then(|b| b.get("args"))
            .and_then(Yaml::as_mapping)
        {
            for (arg, value) in args {
                let value = value.as_str().unwrap();
                let (var, default) = value[2..value.len() - 1].split_once(":-").unwrap();
                assert_eq!(
                    arg.as_str(),
                    Some(var),
                    "{name}: build arg {arg:?} from ${{{var}}}"
                );
                assert_eq!(
                    env.get(var).map(String::as_str),
                    Some(default),
                    "{name}: default of build arg {var}"
                );
            }
        }
        if let Some(vs) = svc.get("volumes").and_then(Yaml::as_sequence) {
            for v in vs {
                let spec = v.as_str().unwrap();
                let src = spec.split(':').next().unwrap();
                if src.starts_with('.') {
                    assert!(
                        docker.join(src).exists(),
                        "{name}: bind mount source {src} (relative to docker/) exists"
                    );
                } else {
                    assert!(volumes.contains(src), "{name}: named volume {src} declared");
                }
            }
        }
        if let Some(deps) = svc.get("depends_on").and_then(Yaml::as_mapping) {
            for (dep, cond) in deps {
                let dep = dep.as_str().unwrap();
                let target = services
                    .get(dep)
                    .unwrap_or_else(|| panic!("{name} depends on unknown {dep}"));
                match cond["condition"].as_str().unwrap() {
                    "service_healthy" => assert!(
                        target.get("healthcheck").is_some(),
                        "{name} waits for {dep}, which needs a healthcheck"
                    ),
                    "service_completed_successfully" => assert_eq!(
                        target["restart"].as_str(),
                        Some("no"),
                        "{dep} is a one-shot"
                    ),
                    other => panic!("{name}: unexpected condition {other}"),
                }
            }
        }
        let monitoring = svc.get("profiles").is_some();
        let core = ["kafka", "postgis", "ngsiflow"].contains(&name.as_str());
        assert_eq!(
            !monitoring, core,
            "{name}: only the monitoring services are in the monitoring profile"
        );
    }
    for waited in [
        "kafka",
        "postgis",
        "ngsiflow",
        "prometheus",
        "grafana",
        "kafka-connect",
    ] {
        assert!(
            services[waited].get("healthcheck").is_some(),
            "{waited} has a healthcheck"
        );
    }
    // The JMX agent is attached in the Connect image exactly as scripts/connect.sh attaches it
    // natively: same agent from the same manifest, same rules file.
    let connect = std::fs::read_to_string(docker.join("Dockerfile.connect")).unwrap();
    assert!(connect.contains(
        "-javaagent:/opt/jmx/jmx_prometheus_javaagent.jar=9404:/opt/jmx-config/kafka-connect.yml"
    ));
    assert!(
        connect.contains("COPY monitoring/jmx/kafka-connect.yml /opt/jmx-config/kafka-connect.yml")
    );
    assert!(connect.contains("-P jdbc-sink") && connect.contains("-P jmx-agent"));
    assert!(connect.contains("FROM ${KAFKA_IMAGE}"));
    let native = std::fs::read_to_string(repo().join("scripts/connect.sh")).unwrap();
    assert!(native.contains(
        "-javaagent:\"$JMX_AGENT_JAR\"=127.0.0.1:\"$JMX_PORT\":\"$ROOT/monitoring/jmx/kafka-connect.yml\""
    ));
    let worker = std::fs::read_to_string(docker.join("connect-distributed.properties")).unwrap();
    assert!(worker.contains("plugin.path=/opt/connect-plugins"));
    // docker-up.sh deploys the connector the native stack deploys.
    let up = std::fs::read_to_string(docker.join("docker-up.sh")).unwrap();
    assert!(up.contains("../scripts/connect.sh deploy"));
    // kafka-exporter is configured by its real flags.
    let args: Vec<&str> = services["kafka-exporter"]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for a in &args {
        let flag = a.split('=').next().unwrap();
        assert!(
            [
                "--kafka.server",
                "--kafka.version",
                "--web.listen-address",
                "--topic.filter",
                "--group.filter"
            ]
            .contains(&flag),
            "{a}"
        );
    }
    // Prometheus and Grafana mount exactly the files the repository ships.
    assert!(services["prometheus"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|v| v.as_str() == Some("../monitoring/prometheus:/etc/prometheus:ro")));

    // The root override: every service exists, ports on 127.0.0.1 only, no relative paths.
    let ov = yaml(&repo().join("docker-compose.override.yml"));
    for (name, svc) in ov["services"].as_mapping().unwrap() {
        let name = name.as_str().unwrap();
        assert!(
            services.contains_key(name),
            "override names unknown service {name}"
        );
        for p in svc["ports"].as_sequence().unwrap() {
            assert!(
                p.as_str().unwrap().starts_with("127.0.0.1:"),
                "{name}: {p:?} must bind loopback"
            );
        }
        assert!(
            svc.get("volumes").is_none(),
            "{name}: no paths in the override"
        );
    }
    // docker-up/down use every fragment and the override.
    let files = std::fs::read_to_string(docker.join("compose-files.sh")).unwrap();
    for f in FRAGMENTS
        .iter()
        .chain(["../docker-compose.override.yml"].iter())
    {
        assert!(
            files.contains(&format!("-f {f}")),
            "compose-files.sh passes {f}"
        );
    }
    let on_disk: BTreeSet<String> = std::fs::read_dir(&docker)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("docker-compose.") && n.ends_with(".yml"))
        .collect();
    assert_eq!(on_disk, FRAGMENTS.iter().map(|s| s.to_string()).collect());
    for script in ["docker-up.sh", "docker-down.sh"] {
        let out = Command::new("bash")
            .args(["-n", docker.join(script).to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{script} parses");
    }
}

#[test]
fn dockerfile_builds_small_non_root_image_with_healthcheck() {
    let text = std::fs::read_to_string(repo().join("docker/Dockerfile")).unwrap();
    assert!(
        text.matches("\nFROM ").count() >= 2 || text.matches("FROM ").count() >= 2,
        "multi-stage"
    );
    assert!(text.contains("cargo build --release --locked"));
    // The image builds with the toolchain the project declares (and is tested with).
    let cargo = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let msrv = cargo
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    assert!(
        text.contains(&format!("ARG RUST_VERSION={msrv}")),
        "Dockerfile RUST_VERSION must be {msrv}"
    );
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    assert!(
        ignore.lines().any(|l| l.trim_end_matches('/') == "target"),
        ".dockerignore keeps target/ out of the context"
    );
    assert!(text.contains("-slim AS runtime"));
    assert!(text.contains("USER 10001"));
    assert!(text.contains("HEALTHCHECK") && text.contains("/health"));
    assert!(
        text.contains("COPY flows /etc/ngsiflow/flows")
            && text.contains("NGSIFLOW_FLOWS_DIR=/etc/ngsiflow/flows")
    );
    for line in text
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        for src in line
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .split_last()
            .unwrap()
            .1
        {
            assert!(repo().join(src).exists(), "COPY source {src} exists");
        }
    }
}

#[test]
fn prometheus_config_and_alert_rules_pass_promtool() {
    let (ok, out) = promtool(&["check", "config", "monitoring/prometheus/prometheus.yml"]);
    assert!(ok, "{out}");
    let (ok, out) = promtool(&["check", "rules", "monitoring/prometheus/rules/ngsiflow.yml"]);
    let shipped = std::fs::read_to_string(repo().join("monitoring/prometheus/rules/ngsiflow.yml"))
        .unwrap()
        .matches("- alert:")
        .count();
    assert!(
        ok && out.contains(&format!("SUCCESS: {shipped} rules found")),
        "{out}"
    );
    let (ok, out) = promtool(&[
        "test",
        "rules",
        "monitoring/prometheus/tests/ngsiflow_test.yml",
    ]);
    assert!(ok && out.contains("SUCCESS"), "{out}");
    let rules = yaml(&repo().join("monitoring/prometheus/rules/ngsiflow.yml"));
    let alerts: BTreeSet<&str> = rules["groups"][0]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r["alert"].as_str().unwrap())
        .collect();
    let tests =
        std::fs::read_to_string(repo().join("monitoring/prometheus/tests/ngsiflow_test.yml"))
            .unwrap();
    for a in alerts {
        assert!(
            tests.contains(&format!("alertname: {a}")),
            "alert {a} has a unit test"
        );
    }
}

#[test]
fn dashboards_are_valid_and_every_query_parses() {
    let prov = yaml(&repo().join("monitoring/grafana/provisioning/datasources/prometheus.yml"));
    assert_eq!(prov["datasources"][0]["uid"].as_str(), Some(DATASOURCE_UID));
    let dprov = yaml(&repo().join("monitoring/grafana/provisioning/dashboards/ngsiflow.yml"));
    assert_eq!(
        dprov["providers"][0]["options"]["path"].as_str(),
        Some("/var/lib/grafana/dashboards"),
        "matches the compose mount"
    );
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    let mut n = 0;
    let mut uids = BTreeSet::new();
    for file in [
        "ngsiflow-flows.json",
        "kafka.json",
        "kafka-connect.json",
        "postgresql.json",
    ] {
        let (d, panels) = dashboard_queries(file);
        assert!(
            uids.insert(d["uid"].as_str().unwrap().to_string()),
            "{file}: unique uid"
        );
        let ids: BTreeSet<u64> = panels.iter().map(|p| p.0).collect();
        assert_eq!(ids.len(), panels.len(), "{file}: unique panel ids");
        assert!(!ids.contains(&0));
        for p in d["panels"].as_array().unwrap() {
            assert_eq!(
                p["datasource"]["uid"], DATASOURCE_UID,
                "{file} {}",
                p["title"]
            );
            for t in p["targets"].as_array().unwrap() {
                assert_eq!(
                    t["datasource"]["uid"], DATASOURCE_UID,
                    "{file} {}",
                    p["title"]
                );
            }
        }
        for v in d["templating"]["list"].as_array().unwrap() {
            assert_eq!(v["datasource"]["uid"], DATASOURCE_UID);
        }
        for (_, title, exprs) in &panels {
            assert!(!exprs.is_empty(), "{file}: panel {title} has a query");
            for e in exprs {
                n += 1;
                let e = expand_grafana_vars(e, "1m", "1h");
                rules.push_str(&format!(
                    "      - record: dashboard:q{n}\n        expr: {}\n",
                    serde_json::to_string(&e).unwrap()
                ));
            }
        }
    }
    let path = std::env::temp_dir().join("ngsiflow-dashboard-queries.yml");
    std::fs::write(&path, rules).unwrap();
    let (ok, out) = promtool(&["check", "rules", path.to_str().unwrap()]);
    assert!(
        ok && out.contains(&format!("SUCCESS: {n} rules found")),
        "{out}"
    );
}

/// Applies the first matching JMX exporter rule to one MBean line, as the agent does:
/// `$n` substituted, lower-cased (lowercaseOutputName) and invalid characters turned into `_`.
/// The name the agent exports for `line`: the first matching rule's name with its captures,
/// lower-cased and sanitised, plus `_total` for a COUNTER (client_java 1.x naming).
fn jmx_name(rules: &[(regex::Regex, String, bool)], line: &str) -> Option<String> {
    let (re, name, counter) = rules.iter().find(|(re, _, _)| re.is_match(line))?;
    let caps = re.captures(line)?;
    let mut out = name.clone();
    for i in (1..caps.len()).rev() {
        out = out.replace(&format!("${i}"), caps.get(i).map_or("", |m| m.as_str()));
    }
    Some(
        out.to_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                    c
                } else {
                    '_'
                }
            })
            .collect::<String>()
            + if *counter { "_total" } else { "" },
    )
}

#[test]
fn jmx_rules_compile_and_export_what_the_connect_dashboard_uses() {
    let doc = yaml(&repo().join("monitoring/jmx/kafka-connect.yml"));
    assert_eq!(doc["lowercaseOutputName"].as_bool(), Some(true));
    let rules: Vec<(regex::Regex, String, bool)> = doc["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| {
            let p = r["pattern"].as_str().unwrap();
            (
                regex::Regex::new(p).unwrap_or_else(|e| panic!("pattern {p}: {e}")),
                r["name"].as_str().unwrap().to_string(),
                r["type"].as_str() == Some("COUNTER"),
            )
        })
        .collect();
    // MBean attribute lines as the agent renders them from a Connect worker with one sink.
    let lines = [
        "kafka.connect<type=connector-metrics, connector=pg-sink><>status: running",
        "kafka.connect<type=connector-task-metrics, connector=pg-sink, task=0><>status: failed",
        "kafka.connect<type=sink-task-metrics, connector=pg-sink, task=0><>put-batch-avg-time-ms: 12.5",
        "kafka.connect<type=sink-task-metrics, connector=pg-sink, task=0><>put-batch-max-time-ms: 40.0",
        "kafka.connect<type=sink-task-metrics, connector=pg-sink, task=0><>sink-record-read-total: 1000.0",
        "kafka.connect<type=sink-task-metrics, connector=pg-sink, task=0><>sink-record-send-total: 990.0",
        "kafka.connect<type=task-error-metrics, connector=pg-sink, task=0><>total-record-errors: 10.0",
        "kafka.connect<type=task-error-metrics, connector=pg-sink, task=0><>total-record-failures: 3.0",
        "kafka.connect<type=task-error-metrics, connector=pg-sink, task=0><>deadletterqueue-produce-requests: 10.0",
        "kafka.connect<type=connect-worker-metrics><>connector-count: 1.0",
        "kafka.connect<type=connect-worker-metrics><>task-count: 1.0",
        "kafka.connect<type=connect-worker-metrics, connector=pg-sink><>connector-failed-task-count: 0.0",
    ];
    let exported: BTreeSet<String> = lines
        .iter()
        .map(|l| jmx_name(&rules, l).unwrap_or_else(|| panic!("no rule matches {l}")))
        .collect();
    let (_, panels) = dashboard_queries("kafka-connect.json");
    let re = regex::Regex::new(r"kafka_connect_[a-z_]+").unwrap();
    for (_, title, exprs) in panels {
        for e in exprs {
            for m in re.find_iter(&e) {
                assert!(
                    exported.contains(m.as_str()),
                    "panel {title}: {} is not exported by the JMX rules ({exported:?})",
                    m.as_str()
                );
            }
        }
    }
    assert_eq!(
        jmx_name(&rules, lines[0]).unwrap(),
        "kafka_connect_connector_state"
    );
}

#[test]
fn kafka_dashboard_uses_only_kafka_exporter_metrics() {
    // The metric names kafka-exporter documents (danielqsj/kafka_exporter README, "Metrics").
    const EXPORTED: [&str; 16] = [
        "kafka_brokers",
        "kafka_broker_info",
        "kafka_topic_partitions",
        "kafka_topic_partition_current_offset",
        "kafka_topic_partition_oldest_offset",
        "kafka_topic_partition_in_sync_replica",
        "kafka_topic_partition_leader",
        "kafka_topic_partition_leader_is_preferred",
        "kafka_topic_partition_replicas",
        "kafka_topic_partition_under_replicated_partition",
        "kafka_consumergroup_current_offset",
        "kafka_consumergroup_current_offset_sum",
        "kafka_consumergroup_lag",
        "kafka_consumergroup_lag_sum",
        "kafka_consumergroupzookeeper_lag_zookeeper",
        "kafka_consumergroup_members",
    ];
    let re = regex::Regex::new(r"\bkafka_[a-z_]+").unwrap();
    let (d, panels) = dashboard_queries("kafka.json");
    let mut used = 0;
    for (_, title, exprs) in panels {
        for e in exprs {
            for m in re.find_iter(&e) {
                used += 1;
                assert!(
                    EXPORTED.contains(&m.as_str()),
                    "panel {title}: {} is not a kafka-exporter metric",
                    m.as_str()
                );
            }
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        for m in re.find_iter(v["query"]["query"].as_str().unwrap()) {
            assert!(
                EXPORTED.contains(&m.as_str()),
                "variable {}: {}",
                v["name"],
                m.as_str()
            );
        }
    }
    assert!(used >= 7);
}
