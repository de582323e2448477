//! Hostile input on the real broker and PostGIS: every message is stored verbatim or becomes an
//! error-log row plus a dead-letter copy; nothing is executed, the worker never crashes and the
//! partition never stalls. Also: error-log rows are idempotent under replay, and a tenant
//! without a schema (or with a name PostgreSQL cannot hold) is logged in the fallback error log.

mod common;

use std::time::Duration;

use common::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

const T: Duration = Duration::from_secs(90);

fn ti(v: &str) -> serde_json::Value {
    json!({"type": "DateTime", "value": v})
}

fn sensor(id: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut e = json!({"id": id, "type": "Sensor", "TimeInstant": ti("2026-01-01T00:00:00Z")});
    for (k, v) in extra.as_object().unwrap() {
        e[k] = v.clone();
    }
    e
}

/// A topic that accepts 20 MB records (the broker's default limit is 1 MB).
async fn big_topic(broker: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .create()
        .unwrap();
    let t =
        NewTopic::new(topic, 1, TopicReplication::Fixed(1)).set("max.message.bytes", "20000000");
    for r in admin
        .create_topics(&[t], &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
}

async fn send_big(broker: &str, topic: &str, value: &str) {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("message.max.bytes", "20000000")
        .create()
        .unwrap();
    let h = owned_headers("demo", "/city");
    p.send(
        FutureRecord::<(), str>::to(topic).payload(value).headers(h),
        Duration::from_secs(30),
    )
    .await
    .map_err(|(e, _)| e)
    .unwrap();
}

fn rss_mib(health: &str) -> f64 {
    let v: serde_json::Value = serde_json::from_str(health).unwrap();
    v["process"]["memory"]["rssBytes"].as_f64().unwrap() / 1048576.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_stored_verbatim_or_error_logged_and_nothing_stalls() {
    let broker = Broker::start();
    let db = TestDb::create("ngsiflow_t_hostile").await;
    big_topic(&broker.addr, "raw_historic").await;
    let worker = Worker::start(&broker.addr, &db.url, "hostile", &["--flows", "historic"]);
    worker.wait_ready(T).await;
    let (_, health) = worker.get("/health").await;
    let rss_before = rss_mib(&health);
    let p = TestProducer::new(&broker.addr);
    let demo = headers("demo", "/city");
    let injection = "'; DROP TABLE demo.city_sensor; --";
    let verbatim = format!("{injection} \"quoted\" -- ünïcødé ✓ 😀 $$ \\x00");
    // Messages that must be stored exactly as sent.
    let stored = [
        notification(&[sensor(
            "V1",
            json!({"name": {"type": "Text", "value": verbatim}}),
        )]),
        notification(&[sensor(
            "V2",
            json!({"config": {"type": "StructuredValue", "value": {"k\"; DROP": [injection, 1]}}}),
        )]),
    ];
    for m in &stored {
        p.send("raw_historic", &demo, m).await;
    }
    // Messages that must become error-log rows: (what, headers, value).
    let long_service = "s".repeat(70);
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let many: serde_json::Map<String, serde_json::Value> = (0..10_000)
        .map(|i| (format!("a{i}"), json!({"type": "Number", "value": i})))
        .collect();
    let bad: Vec<Case<'_>> = vec![
        ("injection in service", headers(injection, "/city"), notification(&[sensor("B1", json!({}))])),
        ("injection in servicepath", headers("demo", "/ci'ty\"; --"), notification(&[sensor("B2", json!({}))])),
        (
            "injection in entity type",
            demo.clone(),
            notification(&[json!({"id": "B3", "type": "S\"; DROP TABLE demo.city_sensor; --", "TimeInstant": ti("2026-01-01T00:00:00Z")})]),
        ),
        (
            "injection in attribute name",
            demo.clone(),
            notification(&[sensor("B4", json!({"x\"; DROP TABLE demo.city_sensor; --": {"type": "Text", "value": "v"}}))]),
        ),
        ("NUL in a text value", demo.clone(), notification(&[sensor("B5", json!({"name": {"type": "Text", "value": "a\u{0}b"}}))])),
        ("63+-byte service", headers(&long_service, "/city"), notification(&[sensor("B6", json!({}))])),
        ("10 000 attributes", demo.clone(), notification(&[sensor("B7", serde_json::Value::Object(many))])),
        ("JSON nested 10 000 deep", demo.clone(), format!("{{\"subscriptionId\":\"x\",\"data\":{deep}}}")),
        ("number 1e400", demo.clone(), r#"{"subscriptionId":"x","data":[{"id":"B9","type":"Sensor","temperature":{"type":"Number","value":1e400}}]}"#.to_string()),
        (
            "unclosed polygon ring",
            demo.clone(),
            notification(&[json!({"id": "B10", "type": "Zone", "TimeInstant": ti("2026-01-01T00:00:00Z"),
                "area": {"type": "geo:json", "value": {"type": "Polygon", "coordinates": [[[0, 0], [0, 1], [1, 1], [1, 0]]]}}})]),
        ),
        (
            "2-point ring",
            demo.clone(),
            notification(&[json!({"id": "B11", "type": "Zone", "TimeInstant": ti("2026-01-01T00:00:00Z"),
                "area": {"type": "geo:json", "value": {"type": "Polygon", "coordinates": [[[0, 0], [0, 1]]]}}})]),
        ),
        ("year beyond 9999", demo.clone(), notification(&[sensor("B12", json!({"TimeInstant": ti("12026-01-01T00:00:00Z")}))])),
        ("empty message", demo.clone(), String::new()),
    ];
    for (_, h, v) in &bad {
        p.send("raw_historic", h, v).await;
    }
    // Non-UTF-8 header values and a record without a value.
    p.send_bytes(
        "raw_historic",
        &[
            ("Fiware-Service", b"de\xffmo"),
            ("Fiware-Servicepath", b"/c\xfe"),
        ],
        Some(notification(&[sensor("B13", json!({}))]).as_bytes()),
    )
    .await;
    p.send_bytes("raw_historic", &demo_bytes(), None).await;
    // A 10 MB value and a geometry of a million points: over --max-message-bytes (1 MiB).
    let ten_mb = notification(&[sensor(
        "B15",
        json!({"name": {"type": "Text", "value": "x".repeat(10 << 20)}}),
    )]);
    send_big(&broker.addr, "raw_historic", &ten_mb).await;
    let million: Vec<[f64; 2]> = (0..1_000_000).map(|i| [i as f64 * 1e-6, 0.5]).collect();
    let huge_geometry = notification(&[
        json!({"id": "B16", "type": "Zone", "TimeInstant": ti("2026-01-01T00:00:00Z"),
        "route": {"type": "geo:json", "value": {"type": "LineString", "coordinates": million}}}),
    ]);
    send_big(&broker.addr, "raw_historic", &huge_geometry).await;
    // Just under the limit: a 0.84 MB LineString (45 000 points) is stored whole.
    let points: Vec<[f64; 2]> = (0..45_000)
        .map(|i| [i as f64 / 1000.0, 40.123456])
        .collect();
    let big_line = notification(&[
        json!({"id": "V3", "type": "Zone", "TimeInstant": ti("2026-01-01T00:00:00Z"),
        "route": {"type": "geo:json", "value": {"type": "LineString", "coordinates": points}}}),
    ]);
    assert!(big_line.len() > 800_000 && big_line.len() < 1_048_576);
    send_big(&broker.addr, "raw_historic", &big_line).await;
    // The next good message lands: the partition did not stall.
    p.send(
        "raw_historic",
        &demo,
        &notification(&[sensor("LAST", json!({}))]),
    )
    .await;
    let bad_count = bad.len() + 4;
    assert_eq!(
        db.wait_count("demo.city_sensor WHERE entityid = 'LAST'", 1, T)
            .await,
        1,
        "{}",
        worker.logs()
    );
    let (status, health) = worker.get("/health").await;
    assert_eq!(status, 200, "the worker is alive");
    let rss_after = rss_mib(&health);

    // Stored verbatim, and nothing was executed: the table is still there with its rows.
    let name: String = db
        .client
        .query_one(
            "SELECT name FROM demo.city_sensor WHERE entityid = 'V1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, verbatim);
    let config: serde_json::Value = db
        .client
        .query_one(
            "SELECT config::text FROM demo.city_sensor WHERE entityid = 'V2'",
            &[],
        )
        .await
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
        .unwrap();
    assert_eq!(config, json!({"k\"; DROP": [injection, 1]}));
    assert_eq!(
        db.count("demo.city_sensor").await,
        3,
        "V1, V2 and LAST only"
    );
    let npoints: i32 = db
        .client
        .query_one(
            "SELECT ST_NPoints(route) FROM demo.city_zone WHERE entityid = 'V3'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(npoints, 45_000);

    // Every bad message has exactly one error-log row, in the tenant's log or the fallback.
    let demo_rows = db.error_rows("demo").await;
    let fallback = db.table_rows("ngsiflow.error_log").await;
    assert_eq!(
        demo_rows.len() + fallback.len(),
        bad_count,
        "demo: {demo_rows:#?}\nfallback: {fallback:#?}"
    );
    let all: Vec<&String> = demo_rows.iter().chain(&fallback).map(|(e, _)| e).collect();
    for needle in [
        "is longer than 63 bytes",
        "exceeds the maximum of 1048576 bytes",
        "Polygon ring is not closed",
        "a Polygon ring needs at least 4 positions",
    ] {
        assert!(all.iter().any(|e| e.contains(needle)), "{needle}: {all:#?}");
    }
    // The 63+-byte service and the injected service name are in the fallback error log, and no
    // schema was created for them.
    assert!(
        fallback
            .iter()
            .any(|(e, _)| e.starts_with(&format!("fiware-service \"{long_service}\""))),
        "{fallback:#?}"
    );
    assert_eq!(
        db.count("pg_namespace WHERE nspname LIKE '%drop%'").await,
        0
    );
    worker
        .wait_metric(
            &format!("ngsiflow_dead_letter_total{{flow=\"historic\"}} {bad_count}"),
            T,
        )
        .await;
    println!(
        "hostile input: {} stored verbatim (and a {} kB 45 000-point geometry), {bad_count} error-logged ({} tenant, {} fallback); worker RSS {rss_before:.0} MiB before, {rss_after:.0} MiB after a 10 MB value and a 1 000 000-point geometry",
        stored.len(),
        big_line.len() / 1000,
        demo_rows.len(),
        fallback.len()
    );
}

/// A hostile message: what it is, its headers, its value.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, String);

fn demo_bytes() -> Vec<(&'static str, &'static [u8])> {
    vec![
        ("Fiware-Service", b"demo"),
        ("Fiware-Servicepath", b"/city"),
    ]
}

/// A bad record re-read after a crash (here: by a second consumer group reading the topic from
/// the start) gets no second error-log row; its good neighbours replay as no-ops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_log_rows_are_written_once_under_replay() {
    let broker = Broker::start();
    let db = TestDb::create("ngsiflow_t_replay_log").await;
    create_topics(&broker.addr, &["raw_historic"], 1).await;
    // An error log as Kafnus created it, with a row of its own: it gains the key on first use.
    db.client
        .batch_execute(
            "CREATE TABLE demo.demo_error_log (\"timestamp\" timestamptz NOT NULL, error text NOT NULL, query text);
             INSERT INTO demo.demo_error_log VALUES (now() - interval '1 day', 'from kafnus', NULL)",
        )
        .await
        .unwrap();
    let p = TestProducer::new(&broker.addr);
    let h = headers("demo", "/city");
    for i in 0..20 {
        let m = if i % 4 == 0 {
            notification(&[sensor(
                &format!("E{i}"),
                json!({"humidity": {"type": "Number", "value": i}}),
            )])
        } else {
            notification(&[sensor(
                &format!("E{i}"),
                json!({"count": {"type": "Integer", "value": i}}),
            )])
        };
        p.send("raw_historic", &h, &m).await;
    }
    p.send("raw_historic", &h, "{not json").await;
    for group in ["first", "second"] {
        let w = Worker::start(&broker.addr, &db.url, group, &["--flows", "historic"]);
        w.wait_metric("ngsiflow_dead_letter_total{flow=\"historic\"} 6", T)
            .await;
        w.wait_metric("messages_processed_total{flow=\"historic\"} 21", T)
            .await;
    }
    assert_eq!(db.count("demo.city_sensor").await, 15);
    let rows = db.error_rows("demo").await;
    assert_eq!(
        rows.len(),
        7,
        "Kafnus's row and one per bad record: {rows:#?}"
    );
    assert_eq!(rows[0].0, "from kafnus");
    let keys: Vec<String> = db
        .client
        .query(
            "SELECT source FROM demo.demo_error_log WHERE source IS NOT NULL ORDER BY source",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // <flow>:<topic>/<partition>/<offset>/<entity or ->@<Kafka timestamp>
    for want in [
        "historic:raw_historic/0/20/-@",
        "historic:raw_historic/0/4/0@",
    ] {
        assert!(
            keys.iter().any(|k| k.starts_with(want)),
            "{want} in {keys:?}"
        );
    }
}
