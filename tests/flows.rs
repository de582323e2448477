//! End-to-end flow semantics against a real Apache Kafka broker, real PostGIS and the real worker.
#![allow(clippy::type_complexity)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const T: Duration = Duration::from_secs(60);

fn ti(s: &str) -> serde_json::Value {
    json!({"type": "DateTime", "value": s})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_land_in_every_flow_with_every_type_and_geometry() {
    let broker = Broker::start();
    let db = TestDb::create("ngsiflow_t_samples").await;
    let mut worker = Worker::start(&broker.addr, &db.url, "samples", &[]);
    worker.wait_ready(T).await;
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_ngsiflow"))
        .args(["produce", "--brokers", &broker.addr, "--quiet"])
        .status()
        .unwrap();
    assert!(status.success());
    // 16 samples: per flow 12 Sensor and 4 Zone notifications (see produce::sample).
    for (table, want) in [
        ("demo.city_sensor", 12),
        ("demo.city_zone", 4),
        ("demo.city_sensor_mutable", 12),
        ("demo.city_zone_mutable", 4),
        ("demo.city_zone_lastdata", 4),
        // Sensor:0 is deleted last; Sensor:1..3 were deleted before being (re)created.
        ("demo.city_sensor_lastdata", 3),
    ] {
        assert_eq!(
            db.wait_count(table, want, T).await,
            want,
            "{table}\n{}",
            worker.logs()
        );
    }
    // Every value type read back exactly.
    let r = db
        .client
        .query_one(
            "SELECT temperature, count, bignum, price::text, active, name, config::text, tags::text,
                    observedat::text, day::text, ST_AsText(location), ST_SRID(location), entitytype,
                    fiwareservicepath, timeinstant = '2026-01-01T00:00:00.004Z'::timestamptz
             FROM demo.city_sensor WHERE entityid = 'Sensor:1' AND count = 4",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, f64>(0), 20.9);
    assert_eq!(r.get::<_, i32>(1), 4);
    assert_eq!(
        r.get::<_, i64>(2),
        9007199254740993,
        "bigint kept exact beyond 2^53"
    );
    assert_eq!(
        r.get::<_, String>(3),
        "12345678901234.123456",
        "numeric kept exact"
    );
    assert!(r.get::<_, bool>(4));
    assert_eq!(r.get::<_, String>(5), "sensor 1 it's");
    assert_eq!(
        r.get::<_, String>(6),
        r#"{"mode": "auto", "thresholds": [1, 2.5]}"#
    );
    assert_eq!(r.get::<_, String>(7), r#"["a","b"]"#);
    assert_eq!(
        r.get::<_, String>(8),
        "2026-01-01 08:00:00.123456",
        "timestamp gets the UTC wall clock"
    );
    assert_eq!(r.get::<_, String>(9), "2026-01-01");
    assert_eq!(r.get::<_, String>(10), "POINT(-3.701 40.411)");
    assert_eq!(r.get::<_, i32>(11), 4326);
    assert_eq!(r.get::<_, String>(12), "Sensor");
    assert_eq!(r.get::<_, String>(13), "/city");
    assert!(r.get::<_, bool>(14));
    let z = db
        .client
        .query_one(
            "SELECT ST_AsText(route), ST_AsText(area), ST_AsText(bbox), ST_AsText(shape), ST_AsText(feature),
                    ST_SRID(route) + ST_SRID(area) + ST_SRID(bbox) + ST_SRID(shape) + ST_SRID(feature)
             FROM demo.city_zone_lastdata WHERE entityid = 'Zone:0'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        z.get::<_, String>(0),
        "LINESTRING(-1.7038 1.4168,-1.7028 1.4178)"
    );
    assert_eq!(
        z.get::<_, String>(1),
        "POLYGON((-1.704 1.4168,-1.703 1.4175,-1.702 1.4162,-1.704 1.4168))"
    );
    assert_eq!(z.get::<_, String>(2), "POLYGON((-2 1,-1 1,-1 2,-2 2,-2 1))");
    assert_eq!(
        z.get::<_, String>(3),
        "MULTIPOLYGON(((-1.704 1.4168,-1.703 1.4175,-1.702 1.4162,-1.704 1.4168)),((-1.714 1.4268,-1.713 1.4275,-1.712 1.4262,-1.714 1.4268)))"
    );
    assert_eq!(
        z.get::<_, String>(4),
        "LINESTRING(-1.7038 1.4168,-1.7028 1.4178)",
        "Feature unwrapped"
    );
    assert_eq!(z.get::<_, i32>(5), 5 * 4326);
    // The partial update (-0.0, name null) merged into lastdata without touching other columns.
    let l = db
        .client
        .query_one("SELECT temperature::text, name IS NULL, count, price::text FROM demo.city_sensor_lastdata WHERE entityid = 'Sensor:2'", &[])
        .await
        .unwrap();
    assert_eq!(l.get::<_, String>(0), "-0");
    assert!(l.get::<_, bool>(1));
    assert_eq!(l.get::<_, i32>(2), 8);
    assert_eq!(l.get::<_, String>(3), "12345678901234.123456");
    assert!(
        db.error_rows("demo").await.is_empty(),
        "no errors for samples"
    );
    assert_eq!(worker.stop(), Some(0), "SIGTERM exits 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lastdata_freshness_partial_update_and_delete() {
    let broker = Broker::start();
    let db = TestDb::create("ngsiflow_t_lastdata").await;
    create_topics(&broker.addr, &["raw_lastdata"], 1).await;
    let p = TestProducer::new(&broker.addr);
    let h = headers("demo", "/city");
    let send = |e: serde_json::Value| notification(&[e]);
    let msgs = [
        send(
            json!({"id": "E1", "type": "Sensor", "TimeInstant": ti("2026-01-01T00:00:10Z"), "temperature": {"type": "Number", "value": 1}, "name": {"type": "Text", "value": "first"}}),
        ),
        send(
            json!({"id": "E1", "type": "Sensor", "TimeInstant": ti("2026-01-01T00:00:05Z"), "temperature": {"type": "Number", "value": 2}}),
        ),
        send(
            json!({"id": "E1", "type": "Sensor", "TimeInstant": ti("2026-01-01T00:00:10Z"), "temperature": {"type": "Number", "value": 3}}),
        ),
        send(
            json!({"id": "E1", "type": "Sensor", "TimeInstant": ti("2026-01-01T00:00:11Z"), "count": {"type": "Integer", "value": 7}}),
        ),
        send(json!({"id": "E2", "type": "Sensor", "temperature": {"type": "Number", "value": 9}})),
        send(json!({"id": "E3", "type": "Sensor", "TimeInstant": ti("2026-01-01T00:00:01Z")})),
        send(
            json!({"id": "E3", "type": "Sensor", "alterationType": {"type": "Text", "value": "entityDelete"}}),
        ),
        send(json!({"id": "E4", "type": "Sensor", "TimeInstant": ti("2026-01-01T00:00:01Z")})),
        send(
            json!({"id": "E4", "type": "Sensor", "alterationType": {"type": "Text", "value": "entityDelete"}}),
        ),
        send(
            json!({"id": "E4", "type": "Sensor", "TimeInstant": ti("2026-01-01T00:00:02Z"), "name": {"type": "Text", "value": "back"}}),
        ),
    ];
    for m in &msgs {
        p.send("raw_lastdata", &h, m).await;
    }
    // Everything arrives in one window: rounds must reproduce sequential semantics.
    let _worker = Worker::start(&broker.addr, &db.url, "lastdata", &["--flows", "lastdata"]);
    assert_eq!(db.wait_count("demo.city_sensor_lastdata", 3, T).await, 3);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = db
        .client
        .query("SELECT entityid, temperature, name, count, timeinstant::text FROM demo.city_sensor_lastdata ORDER BY entityid", &[])
        .await
        .unwrap();
    let got: Vec<(
        String,
        Option<f64>,
        Option<String>,
        Option<i32>,
        Option<String>,
    )> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(
        got,
        vec![
            // older update ignored, equal timestamp overwrote, partial update kept temperature and name
            (
                "E1".into(),
                Some(3.0),
                Some("first".into()),
                Some(7),
                Some("2026-01-01 00:00:11+00".into())
            ),
            ("E2".into(), Some(9.0), None, None, None),
            // deleted, then re-created by a later update
            (
                "E4".into(),
                None,
                Some("back".into()),
                None,
                Some("2026-01-01 00:00:02+00".into())
            ),
        ]
    );
    assert!(db.error_rows("demo").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn historic_and_mutable_keys() {
    let broker = Broker::start();
    let db = TestDb::create("ngsiflow_t_keys").await;
    create_topics(&broker.addr, &["raw_historic", "raw_mutable"], 1).await;
    let p = TestProducer::new(&broker.addr);
    let h = headers("demo", "/city");
    let a = notification(&[
        // price 1.5 is stored as 1.500000 (numeric(20,6)): the replay check must still see
        // the replay as identical; the JSON and geometry columns are compared too.
        json!({"id": "E1", "type": "Sensor", "TimeInstant": ti("2026-01-01T00:00:01Z"), "temperature": {"type": "Number", "value": 1},
            "price": {"type": "Number", "value": 1.5}, "tags": {"type": "StructuredValue", "value": ["x", {"k": 1}]},
            "location": {"type": "geo:point", "value": "1, 2"}}),
    ]);
    let a_changed = notification(&[
        json!({"id": "E1", "type": "Sensor", "TimeInstant": ti("2026-01-01T00:00:01Z"), "temperature": {"type": "Number", "value": 2}}),
    ]);
    let b = notification(&[
        json!({"id": "E1", "type": "Sensor", "TimeInstant": ti("2026-01-01T00:00:02Z"), "temperature": {"type": "Number", "value": 5}}),
    ]);
    for topic in ["raw_historic", "raw_mutable"] {
        for m in [&a, &a, &b, &a_changed] {
            p.send(topic, &h, m).await;
        }
    }
    let worker = Worker::start(
        &broker.addr,
        &db.url,
        "keys",
        &["--flows", "historic,mutable"],
    );
    // historic: identical replay is a no-op, a different record with the same key is an error
    assert_eq!(db.wait_count("demo.city_sensor", 2, T).await, 2);
    let errors = db.wait_error_rows("demo", 1, T).await;
    assert_eq!(errors.len(), 1, "{errors:?}\n{}", worker.logs());
    assert!(
        errors[0]
            .0
            .starts_with("ERROR: duplicate key value violates unique constraint"),
        "{errors:?}"
    );
    assert!(
        errors[0].0.contains("Detail: Key (timeinstant, entityid)"),
        "{errors:?}"
    );
    assert!(
        errors[0]
            .1
            .starts_with("INSERT INTO \"demo\".\"city_sensor\""),
        "{errors:?}"
    );
    let t: f64 = db
        .client
        .query_one(
            "SELECT temperature FROM demo.city_sensor WHERE timeinstant = '2026-01-01T00:00:01Z'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(t, 1.0);
    // mutable: the same key is overwritten by the last arrival
    assert_eq!(db.wait_count("demo.city_sensor_mutable", 2, T).await, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t: f64 = db.client.query_one("SELECT temperature FROM demo.city_sensor_mutable WHERE timeinstant = '2026-01-01T00:00:01Z'", &[]).await.unwrap().get(0);
    assert_eq!(t, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_input_class_is_logged_and_the_next_message_lands() {
    let broker = Broker::start();
    let db = TestDb::create("ngsiflow_t_bad").await;
    create_topics(&broker.addr, &["raw_historic"], 1).await;
    db.client
        .batch_execute("ALTER TABLE demo.city_sensor ADD CONSTRAINT positive CHECK (count >= 0)")
        .await
        .unwrap();
    let worker = Worker::start(&broker.addr, &db.url, "bad", &["--flows", "historic"]);
    worker.wait_ready(T).await;
    let p = TestProducer::new(&broker.addr);
    let h = headers("demo", "/city");
    let ok = |i: u32| {
        notification(&[
            json!({"id": format!("OK{i}"), "type": "Sensor", "TimeInstant": ti("2026-01-01T00:00:00Z")}),
        ])
    };
    let e = |extra: serde_json::Value| {
        let mut ent =
            json!({"id": "BAD", "type": "Sensor", "TimeInstant": ti("2026-01-01T00:00:00Z")});
        for (k, v) in extra.as_object().unwrap() {
            ent[k] = v.clone();
        }
        notification(&[ent])
    };
    let long_type = "T".repeat(70);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "invalid json",
            "{not json".into(),
            "invalid JSON in notification",
        ),
        (
            "no data",
            json!({"subscriptionId": "x"}).to_string(),
            "notification has no data array",
        ),
        (
            "no id",
            notification(&[json!({"type": "Sensor", "TimeInstant": ti("2026-01-01T00:00:00Z")})]),
            "entity has no id",
        ),
        (
            "no TimeInstant",
            notification(&[json!({"id": "X", "type": "Sensor"})]),
            "missing TimeInstant attribute required by flow historic",
        ),
        (
            "unknown table",
            notification(&[
                json!({"id": "X", "type": "Nope", "TimeInstant": ti("2026-01-01T00:00:00Z")}),
            ]),
            "table \"demo\".\"city_nope\" does not exist",
        ),
        (
            "unknown column",
            e(json!({"humidity": {"type": "Number", "value": 1}})),
            "has no column \"humidity\"",
        ),
        (
            "type mismatch",
            e(json!({"count": {"type": "Text", "value": "many"}})),
            "column \"count\" is of type integer",
        ),
        (
            "constraint",
            e(json!({"count": {"type": "Integer", "value": -1}})),
            "violates check constraint \"positive\"",
        ),
        (
            "numeric overflow",
            e(json!({"price": {"type": "Number", "value": 1e30}})),
            "numeric field overflow",
        ),
        (
            "malformed geometry",
            e(json!({"location": {"type": "geo:point", "value": "abc"}})),
            "invalid geo:point value",
        ),
        (
            "wrong geometry type",
            e(
                json!({"location": {"type": "geo:json", "value": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}}}),
            ),
            "Geometry type (LineString) does not match column type (Point)",
        ),
        (
            "nul character",
            e(json!({"name": {"type": "Text", "value": "a\u{0}b"}})),
            "invalid byte sequence for encoding \"UTF8\": 0x00",
        ),
        (
            "long identifier",
            notification(&[
                json!({"id": "X", "type": long_type, "TimeInstant": ti("2026-01-01T00:00:00Z")}),
            ]),
            "is longer than 63 bytes",
        ),
    ];
    for (i, (name, value, want)) in cases.iter().enumerate() {
        p.send("raw_historic", &h, value).await;
        p.send("raw_historic", &h, &ok(i as u32)).await;
        let rows = db.wait_error_rows("demo", i + 1, T).await;
        assert_eq!(rows.len(), i + 1, "{name}: {rows:?}\n{}", worker.logs());
        assert!(
            rows[i].0.contains(want),
            "{name}: error {:?} should contain {want:?}",
            rows[i].0
        );
        assert_eq!(
            db.wait_count("demo.city_sensor", i as i64 + 1, T).await,
            i as i64 + 1,
            "{name}: the next message landed"
        );
    }
    // Readable statements name the real table and values.
    let rows = db.error_rows("demo").await;
    assert!(
        rows[6]
            .1
            .starts_with("INSERT INTO \"demo\".\"city_sensor\""),
        "{:?}",
        rows[6]
    );
    assert!(rows[6].1.contains("'many'"), "{:?}", rows[6]);
    assert!(
        rows[4].1.starts_with("INSERT INTO \"demo\".\"city_nope\""),
        "{:?}",
        rows[4]
    );
    // Dead-letter copies of every failed record, with headers saying flow, error and offset.
    let letters = consume_all(&broker.addr, "ngsiflow_dead_letter", cases.len()).await;
    assert_eq!(letters.len(), cases.len());
    for (l, (name, _, want)) in letters.iter().zip(&cases) {
        assert_eq!(
            l.get("ngsiflow.flow").map(String::as_str),
            Some("historic"),
            "{name}"
        );
        assert!(
            l.get("ngsiflow.error").unwrap().contains(want),
            "{name}: {l:?}"
        );
        assert!(l.contains_key("ngsiflow.source.offset"), "{name}");
        assert_eq!(
            l.get("Fiware-Service").map(String::as_str),
            Some("demo"),
            "{name}: original headers kept"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_row_inside_a_batch_of_good_ones() {
    let broker = Broker::start();
    let db = TestDb::create("ngsiflow_t_batch").await;
    create_topics(&broker.addr, &["raw_mutable"], 1).await;
    let p = TestProducer::new(&broker.addr);
    let h = headers("demo", "/city");
    for i in 0..20 {
        let count = if i == 7 {
            json!({"type": "Number", "value": 1.5})
        } else {
            json!({"type": "Integer", "value": i})
        };
        let v = if i == 13 {
            json!({"type": "Number", "value": 99999999999u64})
        } else {
            count
        };
        p.send(
            "raw_mutable",
            &h,
            &notification(&[json!({"id": format!("E{i}"), "type": "Sensor", "TimeInstant": ti("2026-01-01T00:00:00Z"), "count": v})]),
        )
        .await;
    }
    // Queued before the worker starts: all twenty land in one window and one group.
    let worker = Worker::start(&broker.addr, &db.url, "batch", &["--flows", "mutable"]);
    assert_eq!(
        db.wait_count("demo.city_sensor_mutable", 18, T).await,
        18,
        "{}",
        worker.logs()
    );
    let errors = db.wait_error_rows("demo", 2, T).await;
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors.iter().any(|e| e.0.contains("1.5 is not an integer")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.0.contains("99999999999 is out of range")),
        "{errors:?}"
    );
    let missing: Vec<String> = db
        .client
        .query("SELECT 'E' || g FROM generate_series(0, 19) g EXCEPT SELECT entityid FROM demo.city_sensor_mutable", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut missing = missing;
    missing.sort();
    assert_eq!(missing, vec!["E13".to_string(), "E7".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_by_datamodel_header_and_root_servicepath() {
    let broker = Broker::start();
    let db = TestDb::create("ngsiflow_t_route").await;
    db.client
        .batch_execute(
            "CREATE SCHEMA city; CREATE TABLE city.sensor_lastdata (recvtime timestamptz, fiwareservicepath text, entityid text PRIMARY KEY, entitytype text, timeinstant timestamptz);
             CREATE TABLE demo._sensor_lastdata (LIKE city.sensor_lastdata INCLUDING ALL);",
        )
        .await
        .unwrap();
    create_topics(&broker.addr, &["raw_lastdata"], 1).await;
    let p = TestProducer::new(&broker.addr);
    let e = notification(&[
        json!({"id": "R1", "type": "Sensor", "TimeInstant": ti("2026-01-01T00:00:00Z")}),
    ]);
    let mut fixed = headers("demo", "/city");
    fixed.push((
        "fiware-datamodel",
        "dm-by-fixed-entity-type-database-schema",
    ));
    p.send("raw_lastdata", &fixed, &e).await;
    p.send("raw_lastdata", &headers("demo", "/"), &e).await;
    let mut bad = headers("demo", "/");
    bad.push(("fiware-datamodel", "dm-by-entity-type-database-schema"));
    p.send("raw_lastdata", &bad, &e).await;
    let _w = Worker::start(&broker.addr, &db.url, "route", &["--flows", "lastdata"]);
    assert_eq!(db.wait_count("city.sensor_lastdata", 1, T).await, 1);
    assert_eq!(db.wait_count("demo._sensor_lastdata", 1, T).await, 1);
    let sp: String = db
        .client
        .query_one("SELECT fiwareservicepath FROM demo._sensor_lastdata", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sp, "/");
    let errors = db.wait_error_rows("demo", 1, T).await;
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].0,
        "Required header missing or empty: fiware-servicepath"
    );
}

/// Reads `want` records (or what arrives within 20 s) from the start of `topic`: headers as a map.
async fn consume_all(
    broker: &str,
    topic: &str,
    want: usize,
) -> Vec<std::collections::HashMap<String, String>> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, Message};
    let c: StreamConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", format!("reader-{}", free_port()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while out.len() < want && std::time::Instant::now() < deadline {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), c.recv()).await {
            let mut map = std::collections::HashMap::new();
            if let Some(h) = m.headers() {
                for h in h.iter() {
                    map.insert(
                        h.key.to_string(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).to_string(),
                    );
                }
            }
            out.push(map);
        }
    }
    out.sort_by_key(|m| {
        m.get("ngsiflow.source.offset")
            .and_then(|o| o.parse::<i64>().ok())
            .unwrap_or(0)
    });
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_changes_are_picked_up_without_restart() {
    let broker = Broker::start();
    let db = TestDb::create("ngsiflow_t_schema").await;
    create_topics(&broker.addr, &["raw_historic"], 1).await;
    let worker = Worker::start(&broker.addr, &db.url, "schema", &["--flows", "historic"]);
    worker.wait_ready(T).await;
    let p = TestProducer::new(&broker.addr);
    let h = headers("demo", "/city");
    let msg = |id: &str, attr: serde_json::Value| {
        let mut e = json!({"id": id, "type": "Sensor", "TimeInstant": ti("2026-01-01T00:00:00Z")});
        for (k, v) in attr.as_object().unwrap() {
            e[k] = v.clone();
        }
        notification(&[e])
    };
    // cache the table's metadata, then fail on a column it does not have
    p.send(
        "raw_historic",
        &h,
        &msg("A", json!({"count": {"type": "Integer", "value": 1}})),
    )
    .await;
    p.send(
        "raw_historic",
        &h,
        &msg("B", json!({"humidity": {"type": "Number", "value": 40}})),
    )
    .await;
    assert_eq!(db.wait_error_rows("demo", 1, T).await.len(), 1);
    // the column is added: the next record with it lands
    db.client
        .batch_execute("ALTER TABLE demo.city_sensor ADD COLUMN humidity double precision")
        .await
        .unwrap();
    p.send(
        "raw_historic",
        &h,
        &msg("C", json!({"humidity": {"type": "Number", "value": 41}})),
    )
    .await;
    // a column changes type: a value that fits only the new type lands too
    db.client
        .batch_execute("ALTER TABLE demo.city_sensor ALTER COLUMN count TYPE text")
        .await
        .unwrap();
    p.send(
        "raw_historic",
        &h,
        &msg("D", json!({"count": {"type": "Text", "value": "many"}})),
    )
    .await;
    assert_eq!(
        db.wait_count("demo.city_sensor", 3, T).await,
        3,
        "{}",
        worker.logs()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids: Vec<String> = db
        .client
        .query("SELECT entityid FROM demo.city_sensor ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, ["A", "C", "D"]);
    assert_eq!(
        db.error_rows("demo").await.len(),
        1,
        "only the record sent before the column existed failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn less_common_column_types_bind_by_their_type() {
    let broker = Broker::start();
    let db = TestDb::create("ngsiflow_t_types").await;
    db.client
        .batch_execute(
            "CREATE TABLE demo.city_probe_lastdata (
                recvtime timestamptz, fiwareservicepath text, entityid text PRIMARY KEY, entitytype text,
                timeinstant timestamp, small smallint, ratio real, code varchar(5), ref uuid,
                pos geography(Point, 4326), anyshape geometry, doc json, seen date, stamp text)",
        )
        .await
        .unwrap();
    create_topics(&broker.addr, &["raw_lastdata"], 1).await;
    let p = TestProducer::new(&broker.addr);
    let h = headers("demo", "/city");
    let good = json!({"id": "P1", "type": "Probe",
        "TimeInstant": ti("2026-03-01T10:00:00+02:00"),
        "small": {"type": "Integer", "value": -32768},
        "ratio": {"type": "Number", "value": 0.5},
        "code": {"type": "Text", "value": "abcde"},
        "ref": {"type": "Text", "value": "550e8400-e29b-41d4-a716-446655440000"},
        "pos": {"type": "geo:point", "value": "40.4, -3.7"},
        "anyshape": {"type": "geo:json", "value": {"type": "LineString", "coordinates": [[0, 0], [1, 1, 2]]}},
        "doc": {"type": "StructuredValue", "value": {"z": 1, "a": "x"}},
        "seen": {"type": "DateTime", "value": "2026-03-01T23:30:00-03:00"},
        "stamp": {"type": "DateTime", "value": "2026-03-01T10:00:00.5+02:00"}});
    p.send("raw_lastdata", &h, &notification(&[good])).await;
    let too_long = json!({"id": "P2", "type": "Probe", "TimeInstant": ti("2026-03-01T10:00:00Z"), "code": {"type": "Text", "value": "abcdef"}});
    let bad_uuid = json!({"id": "P3", "type": "Probe", "TimeInstant": ti("2026-03-01T10:00:00Z"), "ref": {"type": "Text", "value": "not-a-uuid"}});
    p.send("raw_lastdata", &h, &notification(&[too_long, bad_uuid]))
        .await;
    let _w = Worker::start(&broker.addr, &db.url, "types", &["--flows", "lastdata"]);
    assert_eq!(db.wait_count("demo.city_probe_lastdata", 1, T).await, 1);
    let errors = db.wait_error_rows("demo", 2, T).await;
    let r = db
        .client
        .query_one(
            "SELECT timeinstant::text, small, ratio, code, ref::text, ST_AsText(pos::geometry), ST_SRID(pos::geometry),
                    ST_AsText(anyshape), ST_SRID(anyshape), doc::text, seen::text, stamp
             FROM demo.city_probe_lastdata",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        r.get::<_, String>(0),
        "2026-03-01 08:00:00",
        "timestamp without time zone gets the UTC wall clock"
    );
    assert_eq!(r.get::<_, i16>(1), -32768);
    assert_eq!(r.get::<_, f32>(2), 0.5);
    assert_eq!(r.get::<_, String>(3), "abcde");
    assert_eq!(
        r.get::<_, String>(4),
        "550e8400-e29b-41d4-a716-446655440000"
    );
    assert_eq!(r.get::<_, String>(5), "POINT(-3.7 40.4)");
    assert_eq!(r.get::<_, i32>(6), 4326);
    assert_eq!(
        r.get::<_, String>(7),
        "LINESTRING Z (0 0 0,1 1 2)",
        "3-D GeoJSON keeps Z in an unconstrained column"
    );
    assert_eq!(
        r.get::<_, i32>(8),
        4326,
        "SRID set even without a type modifier"
    );
    assert_eq!(
        r.get::<_, String>(9),
        r#"{"z":1,"a":"x"}"#,
        "json keeps key order"
    );
    assert_eq!(
        r.get::<_, String>(10),
        "2026-03-02",
        "date of the UTC instant"
    );
    assert_eq!(
        r.get::<_, String>(11),
        "2026-03-01T10:00:00.5+02:00",
        "text columns keep the original date-time"
    );
    let mut msgs: Vec<String> = errors.iter().map(|e| e.0.clone()).collect();
    msgs.sort();
    assert!(
        msgs[0].contains("invalid input syntax for type uuid"),
        "{msgs:?}"
    );
    assert!(
        msgs[1].contains("value too long for type character varying(5)"),
        "{msgs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newline_in_a_header_cannot_forge_a_log_line() {
    let broker = Broker::start();
    let db = TestDb::create("ngsiflow_t_loginject").await;
    create_topics(&broker.addr, &["raw_historic"], 1).await;
    let worker = Worker::start(&broker.addr, &db.url, "loginject", &["--flows", "historic"]);
    worker.wait_ready(T).await;
    let p = TestProducer::new(&broker.addr);
    p.send(
        "raw_historic",
        &[
            ("Fiware-Service", "evil\nFORGED-SERVICE level=INFO all good"),
            ("Fiware-Correlator", "c1\nFORGED-CORRELATOR"),
        ],
        "{not json",
    )
    .await;
    let ok = notification(&[
        json!({"id": "OK", "type": "Sensor", "TimeInstant": ti("2026-01-01T00:00:00Z")}),
    ]);
    p.send("raw_historic", &headers("demo", "/city"), &ok).await;
    assert_eq!(db.wait_count("demo.city_sensor", 1, T).await, 1);
    worker
        .wait_metric("ngsiflow_dead_letter_total{flow=\"historic\"} 1", T)
        .await;
    let logs = worker.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("record sent to error log and dead letter"))
        .unwrap_or_else(|| panic!("no warning for the bad record:\n{logs}"));
    // The values stay on their line, escaped.
    assert!(line.contains("forged-service"), "{line}");
    assert!(line.contains("\\n"), "{line}");
    assert!(
        !logs
            .lines()
            .any(|l| l.starts_with("forged") || l.starts_with("FORGED")),
        "a header value started a log line of its own:\n{logs}"
    );
}

/// double precision, timestamptz, boolean and geometry travel in PostgreSQL's binary format:
/// the stored values are exact at the edges of their ranges, an overflow is the row's own
/// error, and a replayed notification is recognised as identical (the replay check compares
/// the text form of binary values).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_values_land_exactly_and_replays_stay_no_ops() {
    let broker = Broker::start();
    let db = TestDb::create("ngsiflow_t_wires").await;
    db.client
        .batch_execute(
            "CREATE TABLE demo.city_wire (
                recvtime timestamptz, fiwareservicepath text, entityid text, entitytype text,
                timeinstant timestamptz, x double precision, at timestamptz, ok boolean,
                shape geometry, PRIMARY KEY (timeinstant, entityid))",
        )
        .await
        .unwrap();
    create_topics(&broker.addr, &["raw_historic"], 1).await;
    let p = TestProducer::new(&broker.addr);
    let h = headers("demo", "/city");
    let w1 = json!({"id": "W1", "type": "Wire", "TimeInstant": ti("2026-05-01T00:00:00Z"),
        "x": {"type": "Number", "value": 1.7976931348623157e308},
        "at": {"type": "DateTime", "value": "1969-12-31T23:59:59.9999999Z"},
        "ok": {"type": "Boolean", "value": false},
        "shape": {"type": "geo:json", "value": {"type": "Point", "coordinates": [1, 2, 3]}}});
    let w2 = json!({"id": "W2", "type": "Wire", "TimeInstant": ti("2026-05-01T00:00:01Z"),
        "x": {"type": "Number", "value": 4.9e-324},
        "at": {"type": "DateTime", "value": "0001-01-01T00:00:00Z"},
        "ok": {"type": "Boolean", "value": true},
        "shape": {"type": "geo:point", "value": "40.4, -3.7"}});
    let overflow = r#"{"id": "W3", "type": "Wire", "TimeInstant": {"type": "DateTime", "value": "2026-05-01T00:00:02Z"}, "x": {"type": "Number", "value": 1e400}}"#;
    let w4 = json!({"id": "W4", "type": "Wire", "TimeInstant": ti("2026-05-01T00:00:03Z"),
        "x": {"type": "Number", "value": -0.0}});
    p.send("raw_historic", &h, &notification(&[w1.clone(), w2]))
        .await;
    let mixed = format!(r#"{{"subscriptionId": "s", "data": [{overflow}, {}]}}"#, w4);
    p.send("raw_historic", &h, &mixed).await;
    p.send("raw_historic", &h, &notification(&[w1])).await; // a replay
    let w5 = json!({"id": "W5", "type": "Wire", "TimeInstant": ti("2026-05-01T00:00:04Z")});
    p.send("raw_historic", &h, &notification(&[w5])).await;
    let _w = Worker::start(&broker.addr, &db.url, "wires", &["--flows", "historic"]);
    assert_eq!(db.wait_count("demo.city_wire", 4, T).await, 4);
    let errors = db.wait_error_rows("demo", 1, T).await;
    assert_eq!(
        errors.len(),
        1,
        "only the overflow fails; the replay is a no-op: {errors:?}"
    );
    assert!(
        errors[0]
            .0
            .contains("column \"x\" is of type double precision")
            && errors[0]
                .0
                .contains("is out of range for type double precision"),
        "{errors:?}"
    );
    let rows = db
        .client
        .query(
            "SELECT entityid, x::text, at = '1969-12-31T23:59:59.999999Z'::timestamptz,
                    at = '0001-01-01T00:00:00Z'::timestamptz, ok, ST_AsText(shape), ST_SRID(shape)
             FROM demo.city_wire ORDER BY entityid",
            &[],
        )
        .await
        .unwrap();
    type Row = (
        String,
        Option<String>,
        Option<bool>,
        Option<bool>,
        Option<bool>,
        Option<String>,
        Option<i32>,
    );
    let got: Vec<Row> = rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "W1".into(),
                Some("1.7976931348623157e+308".into()),
                Some(true),
                Some(false),
                Some(false),
                Some("POINT Z (1 2 3)".into()),
                Some(4326)
            ),
            (
                "W2".into(),
                Some("5e-324".into()),
                Some(false),
                Some(true),
                Some(true),
                Some("POINT(-3.7 40.4)".into()),
                Some(4326)
            ),
            ("W4".into(), Some("-0".into()), None, None, None, None, None),
            ("W5".into(), None, None, None, None, None, None),
        ],
        "sub-microsecond digits are truncated, as the text form was"
    );
}
