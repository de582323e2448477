//! Live monitoring: the real worker, Apache Kafka, Kafka Connect with the JMX exporter agent and
//! the JDBC sink, PostGIS, and Debian's Prometheus and postgres-exporter scraping them with the
//! stack's own configuration (rendered for localhost by scripts/monitoring.sh); notifications for
//! every flow and records through the Connect sink (one rejected into its dead-letter queue), then
//! every panel query of the flows, PostgreSQL and Kafka Connect dashboards evaluated through
//! Prometheus's HTTP API: each must return data, and every target must be up. The Kafka dashboard
//! joins when kafka_exporter is installed (the Go module proxy here refuses it: see
//! scripts/install-deps.sh); otherwise the test says so in its output.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// The kafka_exporter binary scripts/install-deps.sh installs when the Go module proxy serves it.
fn kafka_exporter_bin() -> Option<std::path::PathBuf> {
    let versions = std::fs::read_to_string(repo().join("scripts/versions.env")).unwrap();
    let version = versions
        .lines()
        .find_map(|l| l.strip_prefix("KAFKA_EXPORTER_VERSION="))?;
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cache =
        std::env::var("NGSIFLOW_CACHE_DIR").unwrap_or_else(|_| format!("{home}/.cache/ngsiflow"));
    let bin = std::path::PathBuf::from(cache)
        .join(format!("kafka_exporter-{version}"))
        .join("kafka_exporter");
    bin.exists().then_some(bin)
}

async fn prom_query(prom: &str, expr: &str) -> serde_json::Value {
    let (status, body) = http(
        prom,
        "GET",
        &format!("/api/v1/query?query={}", urlencode(expr)),
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200, "{expr}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{expr}: {e}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_of_every_dashboard_returns_data() {
    let broker = Broker::start();
    let db = TestDb::create("ngsiflow_t_monitoring").await;
    let worker = Worker::start(&broker.addr, &db.url, "monitoring", &[]);
    worker.wait_ready(Duration::from_secs(60)).await;
    let connect = Connect::start(&broker.addr);
    connect.deploy_jdbc_sink(&format!("jdbc:postgresql://127.0.0.1:5432/{}", db.name), "");
    let kafka_exporter_bin = kafka_exporter_bin();
    let kafka_exporter_addr = format!("127.0.0.1:{}", free_port());
    let _kafka_exporter = kafka_exporter_bin.as_ref().map(|bin| {
        Proc(
            Command::new(bin)
                .arg(format!("--kafka.server={}", broker.addr))
                .arg("--kafka.version=3.6.0")
                .arg(format!("--web.listen-address={kafka_exporter_addr}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("kafka_exporter"),
        )
    });

    let pg_exporter_addr = format!("127.0.0.1:{}", free_port());
    let _pg_exporter = Proc(
        Command::new("prometheus-postgres-exporter")
            .arg(format!("--web.listen-address={pg_exporter_addr}"))
            .env(
                "DATA_SOURCE_NAME",
                format!(
                    "postgresql://postgres@127.0.0.1:5432/{}?sslmode=disable",
                    db.name
                ),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus-postgres-exporter (scripts/install-deps.sh installs it)"),
    );
    let prom_addr = format!("127.0.0.1:{}", free_port());
    let dir = std::env::temp_dir().join(format!("ngsiflow-prom-{}", free_port()));
    let render = Command::new("bash")
        .arg(repo().join("scripts/monitoring.sh"))
        .args(["render", dir.to_str().unwrap()])
        .env("NGSIFLOW_ADDR", &worker.admin)
        .env("PG_EXPORTER_ADDR", &pg_exporter_addr)
        .env("CONNECT_JMX_ADDR", &connect.jmx)
        .env(
            "KAFKA_EXPORTER_ADDR",
            if kafka_exporter_bin.is_some() {
                kafka_exporter_addr.as_str()
            } else {
                ""
            },
        )
        .env("PROMETHEUS_ADDR", &prom_addr)
        .env("SCRAPE_INTERVAL", "1s")
        .status()
        .unwrap();
    assert!(render.success());
    let _prometheus = Proc(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (scripts/install-deps.sh installs it)"),
    );

    // Notifications for every flow: samples to historic/lastdata/mutable, one bad record, and a
    // Kafka Connect dead-letter record for the errors flow.
    let status = Command::new(env!("CARGO_BIN_EXE_ngsiflow"))
        .args([
            "produce",
            "--brokers",
            &broker.addr,
            "--count",
            "24",
            "--quiet",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let p = TestProducer::new(&broker.addr);
    p.send("raw_historic", &headers("demo", "/city"), "{not json")
        .await;
    // Through the Connect sink: good records and one its converter rejects, which reaches the
    // errors flow through Connect's real dead-letter queue.
    for i in 0..5 {
        let v = json!({"schema": {"type": "struct", "fields": [{"field": "seq", "type": "int32"}]},
                       "payload": {"seq": i}});
        p.send("demo_historic_processed", &[], &v.to_string()).await;
    }
    p.send("demo_historic_processed", &[], "{rejected").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while db.error_rows("demo").await.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "errors flow and bad record logged\n{}",
            worker.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every target up.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = http(&prom_addr, "GET", "/api/v1/targets", &[], "").await;
        if status == 200 {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let targets = v["data"]["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut jobs: Vec<(String, String)> = targets
                .iter()
                .map(|t| {
                    (
                        t["labels"]["job"].as_str().unwrap().to_string(),
                        t["health"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            jobs.sort();
            let mut want = vec![
                "kafka-connect",
                "ngsiflow",
                "postgres-exporter",
                "prometheus",
            ];
            if kafka_exporter_bin.is_some() {
                want.insert(1, "kafka-exporter");
            }
            if jobs.len() == want.len() && jobs.iter().all(|(_, h)| h == "up") {
                assert_eq!(
                    jobs.iter().map(|(j, _)| j.as_str()).collect::<Vec<_>>(),
                    want
                );
                break;
            }
            assert!(Instant::now() < deadline, "targets not up: {jobs:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Let a few scrapes accumulate after the traffic so rate() windows hold two samples or more.
    tokio::time::sleep(Duration::from_secs(6)).await;

    let mut failures = Vec::new();
    let mut files = vec![
        "ngsiflow-flows.json",
        "postgresql.json",
        "kafka-connect.json",
    ];
    if kafka_exporter_bin.is_some() {
        files.push("kafka.json");
    } else {
        eprintln!(
            "kafka.json: not evaluated live: kafka_exporter is not installed on this machine"
        );
    }
    for file in files {
        let (_, panels) = dashboard_queries(file);
        let (mut total, mut with_data) = (0, 0);
        for (_, title, exprs) in &panels {
            for e in exprs {
                total += 1;
                let expanded = expand_grafana_vars(e, "30s", "5m");
                let v = prom_query(&prom_addr, &expanded).await;
                let n = v["data"]["result"].as_array().map_or(0, Vec::len);
                if v["status"] == "success" && n > 0 {
                    with_data += 1;
                } else {
                    failures.push(format!("{file} / {title}: {expanded} → {v}"));
                }
            }
        }
        eprintln!(
            "{file}: {} panels, {with_data} of {total} queries returned data",
            panels.len()
        );
    }
    assert!(
        failures.is_empty(),
        "panel queries without data:\n{}",
        failures.join("\n")
    );
    // The alert rules are loaded and evaluated by this Prometheus too.
    let (_, body) = http(&prom_addr, "GET", "/api/v1/rules", &[], "").await;
    let rules: serde_json::Value = serde_json::from_str(&body).unwrap();
    let shipped = std::fs::read_to_string(repo().join("monitoring/prometheus/rules/ngsiflow.yml"))
        .unwrap()
        .matches("- alert:")
        .count();
    assert_eq!(
        rules["data"]["groups"][0]["rules"].as_array().map(Vec::len),
        Some(shipped),
        "{body}"
    );
    // The dead letter from the bad record is visible to Prometheus.
    let v = prom_query(&prom_addr, "sum(ngsiflow_dead_letter_total)").await;
    assert_eq!(v["data"]["result"][0]["value"][1], "1", "{v}");
}
