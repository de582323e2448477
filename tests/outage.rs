//! PostgreSQL outage: the worker pauses, `/ready` turns 503, nothing is error-logged, and every
//! record produced during the outage lands once PostgreSQL is back. This binary holds this one
//! test because it stops the shared PostgreSQL server; a guard restarts it even on failure.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn pg_version() -> String {
    let mut v: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .expect("/etc/postgresql")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
        .collect();
    v.sort();
    v.pop().expect("a PostgreSQL cluster")
}

fn pg_ctl(action: &str) {
    let status = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &pg_version(), "main", action])
        .args(if action == "stop" {
            vec!["-m", "fast"]
        } else {
            vec![]
        })
        .status()
        .expect("pg_ctlcluster");
    assert!(
        status.success() || action == "start",
        "pg_ctlcluster {action}"
    );
}

fn pg_ready() -> bool {
    Command::new("pg_isready")
        .args(["-h", "127.0.0.1", "-p", "5432", "-q"])
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts PostgreSQL again when dropped, whatever happened.
struct RestartPostgres;

impl Drop for RestartPostgres {
    fn drop(&mut self) {
        if !pg_ready() {
            pg_ctl("start");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !pg_ready() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_pauses_and_resumes_without_loss() {
    let broker = Broker::start();
    let db = TestDb::create("ngsiflow_t_outage").await;
    create_topics(&broker.addr, &["raw_historic"], 1).await;
    let worker = Worker::start(
        &broker.addr,
        &db.url,
        "outage",
        &["--flows", "historic", "--retry-max-backoff-ms", "1000"],
    );
    worker.wait_ready(Duration::from_secs(60)).await;
    let p = TestProducer::new(&broker.addr);
    let h = headers("demo", "/city");
    let msg = |i: u32| {
        notification(&[json!({"id": format!("E{i}"), "type": "Sensor",
            "TimeInstant": {"type": "DateTime", "value": "2026-01-01T00:00:00Z"}, "count": {"type": "Integer", "value": i}})])
    };
    for i in 0..5 {
        p.send("raw_historic", &h, &msg(i)).await;
    }
    assert_eq!(
        db.wait_count("demo.city_sensor", 5, Duration::from_secs(30))
            .await,
        5
    );
    drop(db);

    let guard = RestartPostgres;
    pg_ctl("stop");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, body) = loop {
        let (s, b) = worker.get("/ready").await;
        if s == 503 || Instant::now() > deadline {
            break (s, b);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("postgresql is not reachable"), "{body}");
    for i in 5..10 {
        p.send("raw_historic", &h, &msg(i)).await;
    }
    // The flow pauses and retries; it reports so on /metrics.
    let metrics = worker
        .wait_metric(
            "ngsiflow_flow_paused{flow=\"historic\"} 1",
            Duration::from_secs(30),
        )
        .await;
    assert!(
        !metrics.contains("ngsiflow_db_errors_total{class=\"transient\",flow=\"historic\"} 0"),
        "transient errors counted"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(guard); // PostgreSQL back
    worker.wait_ready(Duration::from_secs(60)).await;
    let db = TestDb {
        name: "ngsiflow_t_outage".into(),
        url: "postgres://postgres@127.0.0.1:5432/ngsiflow_t_outage".into(),
        client: connect("postgres://postgres@127.0.0.1:5432/ngsiflow_t_outage").await,
    };
    assert_eq!(
        db.wait_count("demo.city_sensor", 10, Duration::from_secs(60))
            .await,
        10,
        "{}",
        worker.logs()
    );
    assert!(
        db.error_rows("demo").await.is_empty(),
        "transient failures are never error-logged"
    );
    let (_, metrics) = worker.get("/metrics").await;
    assert!(
        metrics.contains("ngsiflow_flow_paused{flow=\"historic\"} 0"),
        "resumed"
    );
    assert!(
        metrics.contains("ngsiflow_records_total{flow=\"historic\",outcome=\"written\"} 10"),
        "{metrics}"
    );
}
