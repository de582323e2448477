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
    // Notifications keep arriving during the outage (NGSIFLOW_OUTAGE_SECS, default 5 s;
    // scripts/faults.sh uses 30).
    let outage_secs: u64 = std::env::var("NGSIFLOW_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let stopped = Instant::now();
    let mut sent = 5;
    while stopped.elapsed() < Duration::from_secs(outage_secs) || sent < 10 {
        p.send("raw_historic", &h, &msg(sent)).await;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
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
    let (_, health) = worker.get("/health").await;
    assert!(health.contains("\"paused\":true"), "{health}");
    let back = Instant::now();
    let outage = back.duration_since(stopped).as_secs_f64();
    drop(guard); // PostgreSQL starts again; the guard returns once it accepts connections
    let restart = back.elapsed().as_secs_f64();
    let db = TestDb {
        name: "ngsiflow_t_outage".into(),
        url: "postgres://postgres@127.0.0.1:5432/ngsiflow_t_outage".into(),
        client: connect("postgres://postgres@127.0.0.1:5432/ngsiflow_t_outage").await,
    };
    db.wait_count("demo.city_sensor", 6, Duration::from_secs(60))
        .await;
    let first_row = back.elapsed().as_secs_f64();
    let all = sent as i64;
    assert_eq!(
        db.wait_count("demo.city_sensor", all, Duration::from_secs(60))
            .await,
        all,
        "{}",
        worker.logs()
    );
    let drained = back.elapsed().as_secs_f64();
    worker.wait_ready(Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        db.count("demo.city_sensor").await,
        all,
        "nothing duplicated"
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
        metrics.contains(&format!(
            "ngsiflow_records_total{{flow=\"historic\",outcome=\"written\"}} {all}"
        )),
        "{metrics}"
    );
    println!(
        "database outage: PostgreSQL stopped {outage:.1} s while {} notifications arrived; /ready 503 and ngsiflow_flow_paused 1 meanwhile; from the restart command (accepting connections after {restart:.1} s): first new row {first_row:.1} s, backlog drained {drained:.1} s; sent {all}, written {all}, lost 0, duplicated 0, error-log rows 0",
        all - 5
    );
}
