//! Metrics and admin endpoints of a real worker fed a known set of notifications (good and bad)
//! through a real broker into PostGIS: exact counters, histogram counts, gauges, lag back to 0,
//! `promtool check metrics`, `/health`, `/logLevel`, `/config` masking and content negotiation.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.trim().parse().ok())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_admin_endpoints_tell_the_truth() {
    let broker = Broker::start();
    let db = TestDb::create("ngsiflow_t_admin").await;
    create_topics(&broker.addr, &["raw_historic", "raw_lastdata"], 2).await;
    let secret_url = format!("postgres://postgres:s3cretpw@127.0.0.1:5432/{}", db.name);
    let mut worker = Worker::start(
        &broker.addr,
        &secret_url,
        "admin",
        &[
            "--flows",
            "historic,lastdata",
            "--log-level",
            "info",
            "-X",
            "sasl.password=kafkasecret",
        ],
    );
    worker.wait_ready(Duration::from_secs(60)).await;
    let p = TestProducer::new(&broker.addr);
    let h = headers("demo", "/city");
    let ent = |id: &str, ts: &str| json!({"id": id, "type": "Sensor", "TimeInstant": {"type": "DateTime", "value": ts}});
    // Explicit partitions: both partitions of each topic get messages, and L1's two updates
    // share one partition so their order (newer first, then a stale one) is kept.
    let nope = json!({"id": "X", "type": "Nope", "TimeInstant": {"type": "DateTime", "value": "2026-01-01T00:00:00Z"}});
    // rejected by PostgreSQL itself (numeric(20,6) overflow): the one permanent database error
    let overflow = json!({"id": "O", "type": "Sensor", "TimeInstant": {"type": "DateTime", "value": "2026-01-01T00:00:00Z"}, "price": {"type": "Number", "value": 1e30}});
    let delete = json!({"id": "L9", "type": "Sensor", "alterationType": {"type": "Text", "value": "entityDelete"}});
    let sends: Vec<(&str, i32, String)> = vec![
        (
            "raw_historic",
            0,
            notification(&[ent("H0", "2026-01-01T00:00:00Z")]),
        ),
        (
            "raw_historic",
            1,
            notification(&[ent("H1", "2026-01-01T00:00:00Z")]),
        ),
        (
            "raw_historic",
            0,
            notification(&[ent("H2", "2026-01-01T00:00:00Z")]),
        ),
        ("raw_historic", 0, "{broken".to_string()),
        ("raw_historic", 1, notification(&[nope])),
        ("raw_historic", 1, notification(&[overflow])),
        (
            "raw_lastdata",
            0,
            notification(&[ent("L1", "2026-01-01T00:00:02Z")]),
        ),
        (
            "raw_lastdata",
            0,
            notification(&[ent("L1", "2026-01-01T00:00:01Z")]),
        ),
        ("raw_lastdata", 1, notification(&[delete])),
    ];
    for (topic, partition, value) in &sends {
        p.send_to(topic, Some(*partition), &h, value).await;
    }

    // Wait until every message is accounted for and the lag gauges are back to 0.
    let deadline = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        let (status, body) = worker.get("/metrics").await;
        assert_eq!(status, 200);
        let done = value(&body, "messages_processed_total{flow=\"historic\"}") == Some(6.0)
            && value(&body, "messages_processed_total{flow=\"lastdata\"}") == Some(3.0);
        let lags: Vec<f64> = body
            .lines()
            .filter(|l| l.starts_with("ngsiflow_consumer_lag{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        if done && lags.len() == 4 && lags.iter().all(|l| *l == 0.0) {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never settled:\n{body}\n{}",
            worker.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let expect = [
        ("messages_processed_by_service_total{fiware_service=\"demo\",flow=\"historic\",result=\"success\"}", 3.0),
        ("messages_processed_by_service_total{fiware_service=\"demo\",flow=\"historic\",result=\"error\"}", 3.0),
        ("messages_processed_by_service_total{fiware_service=\"demo\",flow=\"lastdata\",result=\"success\"}", 3.0),
        ("message_processing_duration_seconds_count{flow=\"historic\"}", 6.0),
        ("message_processing_duration_seconds_count{flow=\"lastdata\"}", 3.0),
        ("ngsiflow_records_total{flow=\"historic\",outcome=\"written\"}", 3.0),
        ("ngsiflow_records_total{flow=\"historic\",outcome=\"error_logged\"}", 3.0),
        ("ngsiflow_records_total{flow=\"historic\",outcome=\"duplicate_replayed\"}", 0.0),
        ("ngsiflow_records_total{flow=\"lastdata\",outcome=\"written\"}", 1.0),
        ("ngsiflow_records_total{flow=\"lastdata\",outcome=\"stale_ignored\"}", 1.0),
        ("ngsiflow_records_total{flow=\"lastdata\",outcome=\"deleted\"}", 1.0),
        ("ngsiflow_dead_letter_total{flow=\"historic\"}", 3.0),
        ("ngsiflow_dead_letter_total{flow=\"lastdata\"}", 0.0),
        ("ngsiflow_db_errors_total{class=\"permanent\",flow=\"historic\"}", 1.0),
        ("ngsiflow_db_errors_total{class=\"transient\",flow=\"historic\"}", 0.0),
        ("ngsiflow_flow_paused{flow=\"historic\"}", 0.0),
        ("ngsiflow_partitions_assigned{flow=\"historic\"}", 2.0),
        ("ngsiflow_build_info{version=\"0.1.0\"}", 1.0),
    ];
    for (series, want) in expect {
        assert_eq!(value(&metrics, series), Some(want), "{series}\n{metrics}");
    }
    let batches = value(&metrics, "ngsiflow_db_batch_rows_count{flow=\"historic\"}").unwrap();
    assert!(
        batches >= 1.0
            && value(
                &metrics,
                "ngsiflow_db_write_duration_seconds_count{flow=\"historic\"}"
            ) == Some(batches)
    );
    assert!(
        value(
            &metrics,
            "message_processing_time_seconds{flow=\"historic\"}"
        )
        .unwrap()
            > 0.0
    );
    assert!(value(&metrics, "process_resident_memory_bytes").unwrap() > 0.0);

    // The exposition is lint-clean.
    let path = std::env::temp_dir().join("ngsiflow-scrape.prom");
    std::fs::write(&path, &metrics).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&path).unwrap())
        .output()
        .expect("promtool");
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && findings.trim().is_empty(),
        "promtool check metrics: {findings}"
    );

    // /metrics content negotiation.
    let (status, body) = http(
        &worker.admin,
        "GET",
        "/metrics",
        &[("Accept", "application/json")],
        "",
    )
    .await;
    assert_eq!(status, 406);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"],
        "NotAcceptable"
    );

    // /health shape and counts.
    let (status, body) = worker.get("/health").await;
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "UP");
    assert_eq!(health["pipeline"]["totalEvents"], 9);
    assert_eq!(health["pipeline"]["successEvents"], 6);
    assert_eq!(health["pipeline"]["errorEvents"], 3);
    assert_eq!(health["pipeline"]["successRate"], 0.666667);
    let by_flow = health["pipeline"]["byFlow"].as_array().unwrap();
    assert_eq!(
        by_flow
            .iter()
            .map(|f| f["flow"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["historic", "lastdata"]
    );
    assert_eq!(by_flow[0]["totalEvents"], 6);
    assert_eq!(by_flow[0]["errorEvents"], 3);
    assert_eq!(by_flow[0]["running"], true);
    assert!(
        by_flow[0]["lastProcessedAt"].is_string()
            && by_flow[0]["avgDurationSeconds"].as_f64().unwrap() > 0.0
    );
    assert!(health["admin"]["endpoints"]
        .as_array()
        .unwrap()
        .contains(&json!("/health")));
    assert!(health["metrics"]["registeredMetrics"].as_u64().unwrap() > 10);
    assert!(health["process"]["memory"]["rssBytes"].as_u64().unwrap() > 0);
    // One thread runs the flows by default (`--worker-threads`).
    assert_eq!(health["process"]["workerThreads"], 1, "{health}");
    for key in ["timestamp", "uptimeSeconds", "service"] {
        assert!(health.get(key).is_some(), "{key}");
    }

    // /ready is 200 with partitions assigned and PostgreSQL up (503 is covered in tests/outage.rs).
    assert_eq!(worker.get("/ready").await.0, 200);

    // /config never shows secrets.
    let (status, body) = worker.get("/config").await;
    assert_eq!(status, 200);
    assert!(
        !body.contains("s3cretpw") && !body.contains("kafkasecret"),
        "{body}"
    );
    assert!(body.contains("***redacted***"), "{body}");
    assert_eq!(
        http(&worker.admin, "PATCH", "/config", &[], "").await.0,
        405
    );

    // /logLevel changes what is logged.
    let (_, body) = worker.get("/logLevel").await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["level"],
        "INFO"
    );
    assert!(
        !worker.logs().contains("window committed"),
        "debug lines hidden at info"
    );
    assert_eq!(
        http(
            &worker.admin,
            "POST",
            "/logLevel",
            &[],
            r#"{"level":"loud"}"#
        )
        .await
        .0,
        400
    );
    assert_eq!(
        http(&worker.admin, "POST", "/logLevel", &[], "{nope")
            .await
            .0,
        400
    );
    let (status, body) = http(
        &worker.admin,
        "POST",
        "/logLevel",
        &[],
        r#"{"level":"debug"}"#,
    )
    .await;
    assert_eq!((status, body.contains("DEBUG")), (200, true), "{body}");
    p.send(
        "raw_historic",
        &h,
        &notification(&[ent("H9", "2026-01-01T00:00:00Z")]),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !worker.logs().contains("window committed") {
        assert!(
            Instant::now() < deadline,
            "debug line after POST /logLevel\n{}",
            worker.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // RED metrics of the admin server, unknown routes under one label.
    assert_eq!(worker.get("/nope").await.0, 404);
    let (_, metrics) = worker.get("/metrics").await;
    assert!(value(&metrics, "admin_http_server_requests_total{method=\"GET\",route=\"/health\",status_code=\"200\"}") == Some(1.0), "{metrics}");
    assert!(value(&metrics, "admin_http_server_requests_total{method=\"GET\",route=\"__other__\",status_code=\"404\"}") == Some(1.0));
    assert!(value(&metrics, "admin_http_server_requests_total{method=\"GET\",route=\"/metrics\",status_code=\"406\"}") == Some(1.0));
    assert!(
        value(
            &metrics,
            "admin_http_server_request_duration_seconds_count{method=\"POST\",route=\"/logLevel\"}"
        ) == Some(3.0)
    );
    assert_eq!(worker.stop(), Some(0));
    // The admin server shut down with the worker.
    assert_eq!(worker.get("/health").await.0, 0);
}
