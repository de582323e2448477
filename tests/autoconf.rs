//! Tables and tenants that configure themselves, on the real broker and PostGIS: a new tenant's
//! stream landing with no DDL written by hand (`auto_create`), a new attribute mid-stream
//! (`auto_evolve`), metadata round-trip (`store_metadata`), the time-index chain, two flows
//! reading one topic (fan-out), two workers creating the same tables at once, per-tenant
//! datamodel and schema (`tenants.toml`) and error-log retention.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::json;

/// A scratch flows directory holding `files` (name, text); removed on drop.
struct FlowsDir(PathBuf);

impl FlowsDir {
    fn new(files: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(format!("ngsiflow-autoconf-{}", free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for FlowsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// historic and lastdata, both reading `orion` (one Orion subscription, two flows), creating
/// tables and columns and storing metadata.
const HISTORIC: &str = r#"name = "historic"
topic = "orion"
write_mode = "insert"
key_columns = ["timeinstant", "entityid"]
require_timeinstant = true
auto_create = true
auto_evolve = true
store_metadata = true
time_index = ["TimeInstant", "*.metadata.TimeInstant", "dateObserved", "recvTime"]
"#;
const LASTDATA: &str = r#"name = "lastdata"
topic = "orion"
write_mode = "upsert_if_newer"
key_columns = ["entityid"]
table_suffix = "_lastdata"
entity_delete = "delete"
auto_create = true
auto_evolve = true
"#;

/// `column → type` of a table, as `format_type` prints it.
async fn column_types(db: &TestDb, schema: &str, table: &str) -> BTreeMap<String, String> {
    db.client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            &[&schema, &table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The primary key's columns in order.
async fn primary_key(db: &TestDb, table: &str) -> Vec<String> {
    db.client
        .query(
            "SELECT a.attname::text FROM pg_index i \
             CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1::text::regclass AND i.indisprimary ORDER BY k.n",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Tables of `schema`, sorted.
async fn tables(db: &TestDb, schema: &str) -> Vec<String> {
    db.client
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = $1 ORDER BY 1",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn sensor(id: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut e = json!({"id": id, "type": "Sensor",
        "temperature": {"type": "Number", "value": 21.5,
            "metadata": {"unitCode": {"type": "Text", "value": "CEL"}}},
        "count": {"type": "Number", "value": 7},
        "active": {"type": "Boolean", "value": true},
        "name": {"type": "Text", "value": "north gate"},
        "installed": {"type": "DateTime", "value": "2025-05-01T10:00:00Z"},
        "location": {"type": "geo:point", "value": "40.4168, -3.7038"},
        "route": {"type": "geo:json", "value": {"type": "LineString", "coordinates": [[-3.7, 40.4], [-3.6, 40.5]]}},
        "area": {"type": "geo:polygon", "value": ["40.0, -3.0", "40.0, -3.1", "40.1, -3.1", "40.0, -3.0"]},
        "config": {"type": "StructuredValue", "value": {"mode": "eco", "levels": [1, 2]}},
        "tags": {"type": "Array", "value": ["a", "b"]},
        "battery": {"type": "Number", "value": null}
    });
    e.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_tenant_lands_with_no_hand_written_ddl() {
    let broker = Broker::start();
    let db = TestDb::create("ngsiflow_t_autocreate").await;
    create_topics(&broker.addr, &["orion"], 1).await;
    let flows = FlowsDir::new(&[("historic.toml", HISTORIC), ("lastdata.toml", LASTDATA)]);
    let w = Worker::start_in(&broker.addr, &db.url, "auto", flows.path(), &[]);
    let p = TestProducer::new(&broker.addr);
    let h = headers("newcity", "/parks");
    let ts = |s: &str| json!({"type": "DateTime", "value": s});
    // 1: TimeInstant; 2: only an attribute's TimeInstant metadata; 3: only dateObserved;
    // 4: none of them (recvTime).
    let first = notification(&[
        sensor("S1", json!({"TimeInstant": ts("2026-01-01T00:00:00Z")})),
        sensor(
            "S2",
            json!({"pressure": {"type": "Number", "value": 1013,
                "metadata": {"TimeInstant": {"type": "DateTime", "value": "2026-01-02T00:00:00Z"}}}}),
        ),
        sensor("S3", json!({"dateObserved": ts("2026-01-03T00:00:00Z")})),
        json!({"id": "B1", "type": "Bus", "speed": {"type": "Number", "value": 40}}),
    ]);
    p.send("orion", &h, &first).await;
    assert_eq!(
        db.wait_count("newcity.parks_sensor", 3, Duration::from_secs(60))
            .await,
        3,
        "{}",
        w.logs()
    );
    assert_eq!(
        db.wait_count("newcity.parks_bus_lastdata", 1, Duration::from_secs(30))
            .await,
        1
    );
    assert_eq!(
        tables(&db, "newcity").await,
        [
            "parks_bus",
            "parks_bus_lastdata",
            "parks_sensor",
            "parks_sensor_lastdata"
        ]
    );
    let cols = column_types(&db, "newcity", "parks_sensor").await;
    let want = [
        ("entityid", "text"),
        ("entitytype", "text"),
        ("fiwareservicepath", "text"),
        ("timeinstant", "timestamp with time zone"),
        ("recvtime", "timestamp with time zone"),
        ("temperature", "double precision"),
        ("temperature_md", "jsonb"),
        ("count", "double precision"),
        ("active", "boolean"),
        ("name", "text"),
        ("installed", "timestamp with time zone"),
        ("location", "geometry(Point,4326)"),
        ("route", "geometry(LineString,4326)"),
        ("area", "geometry(Polygon,4326)"),
        ("config", "jsonb"),
        ("tags", "jsonb"),
        ("pressure", "double precision"),
        ("pressure_md", "jsonb"),
        ("dateobserved", "timestamp with time zone"),
    ];
    for (c, t) in want {
        assert_eq!(
            cols.get(c).map(String::as_str),
            Some(t),
            "column {c}: {cols:?}"
        );
    }
    assert_eq!(
        cols.len(),
        want.len(),
        "no other column (battery is NULL): {cols:?}"
    );
    eprintln!("created newcity.parks_sensor: {cols:?}");
    assert_eq!(
        primary_key(&db, "newcity.parks_sensor").await,
        ["timeinstant", "entityid"]
    );
    assert_eq!(
        primary_key(&db, "newcity.parks_sensor_lastdata").await,
        ["entityid"]
    );
    let gist: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = 'newcity' \
             AND tablename = 'parks_sensor' AND indexdef LIKE '%USING gist%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(gist, 3, "one GiST index per geometry column");
    // The time-index chain and the metadata round-trip.
    let rows = db
        .client
        .query(
            "SELECT entityid, timeinstant::text, (timeinstant = recvtime), temperature_md::text, \
             pressure_md::text, ST_AsText(location) FROM newcity.parks_sensor ORDER BY entityid",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        [
            ("S1".into(), "2026-01-01 00:00:00+00".into(), false),
            ("S2".into(), "2026-01-02 00:00:00+00".into(), false),
            ("S3".into(), "2026-01-03 00:00:00+00".into(), false),
        ]
    );
    let md: String = rows[0].get(3);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&md).unwrap(),
        json!({"unitCode": {"type": "Text", "value": "CEL"}})
    );
    let point: String = rows[0].get(5);
    assert_eq!(point, "POINT(-3.7038 40.4168)");
    let bus_recv: bool = db
        .client
        .query_one("SELECT timeinstant = recvtime FROM newcity.parks_bus", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        bus_recv,
        "without any other source, timeinstant is recvTime"
    );

    // A new attribute mid-stream gets its column; a value of the wrong type for an existing
    // column stays an error-log row and the rest of the notification lands.
    let second = notification(&[
        sensor(
            "S4",
            json!({"TimeInstant": ts("2026-01-04T00:00:00Z"), "humidity": {"type": "Number", "value": 55}}),
        ),
        sensor(
            "S5",
            json!({"TimeInstant": ts("2026-01-05T00:00:00Z"), "count": {"type": "Text", "value": "many"}}),
        ),
    ]);
    p.send("orion", &h, &second).await;
    assert_eq!(
        db.wait_count("newcity.parks_sensor", 4, Duration::from_secs(30))
            .await,
        4,
        "{}",
        w.logs()
    );
    let humidity: f64 = db
        .client
        .query_one(
            "SELECT humidity FROM newcity.parks_sensor WHERE entityid = 'S4'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(humidity, 55.0);
    // Both flows report S5 in the tenant's own error log (its schema was created).
    let errors = db
        .wait_error_rows("newcity", 2, Duration::from_secs(30))
        .await;
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors.iter().all(|(e, _)| e.contains("\"count\"")),
        "{errors:?}"
    );
    let metrics = w
        .wait_metric(
            "ngsiflow_ddl_statements_total{flow=\"historic\"}",
            Duration::from_secs(5),
        )
        .await;
    assert!(
        w.metric_sum("ngsiflow_ddl_statements_total").await >= 8.0,
        "{metrics}"
    );
    assert!(!db
        .client
        .query("SELECT 1 FROM ngsiflow.error_log", &[])
        .await
        .is_ok_and(|r| !r.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_create_the_same_tables_at_once() {
    let broker = Broker::start();
    let db = TestDb::create("ngsiflow_t_autorace").await;
    create_topics(&broker.addr, &["orion"], 2).await;
    let flows = FlowsDir::new(&[("historic.toml", HISTORIC)]);
    // Produce the backlog first so that both workers start on it at the same moment.
    const N: usize = 60;
    let mut records = Vec::new();
    for i in 0..N {
        let service = format!("race{}", i % 3);
        let ty = if i % 2 == 0 { "Sensor" } else { "Meter" };
        let v = notification(&[json!({"id": format!("E{i}"), "type": ty,
            "TimeInstant": {"type": "DateTime", "value": format!("2026-01-01T00:00:{:02}Z", i)},
            "value": {"type": "Number", "value": i},
            // a new attribute every 10 records: columns are added while the other worker writes
            format!("extra{}", i / 10): {"type": "Text", "value": "x"}})]);
        records.push(("orion", owned_headers(&service, "/p"), v));
    }
    produce_all(&broker.addr, records).await;
    // Different consumer groups: each worker writes every record, so every table, column and
    // row is created or written by both, at the same time.
    let a = Worker::start_in(
        &broker.addr,
        &db.url,
        "ra",
        flows.path(),
        &["--batch-size", "5"],
    );
    let b = Worker::start_in(
        &broker.addr,
        &db.url,
        "rb",
        flows.path(),
        &["--batch-size", "5"],
    );
    for w in [&a, &b] {
        w.wait_metric(
            &format!("messages_processed_total{{flow=\"historic\"}} {N}"),
            Duration::from_secs(90),
        )
        .await;
    }
    let mut total = 0;
    for s in 0..3 {
        let schema = format!("race{s}");
        assert_eq!(tables(&db, &schema).await, ["p_meter", "p_sensor"]);
        for t in ["p_meter", "p_sensor"] {
            total += db.count(&format!("{schema}.{t}")).await;
        }
        assert!(
            db.error_rows(&schema).await.is_empty(),
            "no error-log rows:\n{}\n{}",
            a.logs(),
            b.logs()
        );
    }
    assert_eq!(
        total, N as i64,
        "each record once (the second write is a replay)"
    );
    let extras: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema LIKE 'race%' \
             AND column_name LIKE 'extra%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(extras, 36, "extra0..extra5 in each of the 6 tables");
    for w in [&a, &b] {
        assert_eq!(
            w.metric_sum("ngsiflow_records_total{flow=\"historic\",outcome=\"failed\"")
                .await,
            0.0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_route_by_their_own_datamodel_and_schema() {
    let broker = Broker::start();
    let db = TestDb::create("ngsiflow_t_tenants").await;
    create_topics(&broker.addr, &["orion"], 1).await;
    let tenants = r#"
[services.acme]
datamodel = "dm-by-entity-type-database-schema"

[services.beta]
schema = "beta_data"
"#;
    // tenants.toml beside the flow files is found without a flag.
    let flows = FlowsDir::new(&[("historic.toml", HISTORIC), ("tenants.toml", tenants)]);
    let w = Worker::start_in(&broker.addr, &db.url, "ten", flows.path(), &[]);
    let p = TestProducer::new(&broker.addr);
    let e = |id: &str| {
        notification(&[json!({"id": id, "type": "Sensor",
            "TimeInstant": {"type": "DateTime", "value": "2026-01-01T00:00:00Z"},
            "v": {"type": "Number", "value": 1}})])
    };
    p.send("orion", &headers("acme", "/north"), &e("A1")).await;
    let mut h = headers("acme", "/north");
    h.push(("fiware-datamodel", "dm-by-entity-type-database"));
    p.send("orion", &h, &e("A2")).await;
    p.send("orion", &headers("beta", "/north"), &e("B1")).await;
    p.send("orion", &headers("gamma", "/north"), &e("G1")).await;
    let bad = notification(&[json!({"id": "B2", "type": "Sensor",
        "TimeInstant": {"type": "DateTime", "value": "yesterday"}})]);
    p.send("orion", &headers("beta", "/north"), &bad).await;
    for (table, id) in [
        ("north.north_sensor", "A1"),
        ("acme.north_sensor", "A2"),
        ("beta_data.north_sensor", "B1"),
        ("gamma.north_sensor", "G1"),
    ] {
        assert_eq!(
            db.wait_count(table, 1, Duration::from_secs(60)).await,
            1,
            "{table}\n{}",
            w.logs()
        );
        let got: String = db
            .client
            .query_one(&format!("SELECT entityid FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(got, id);
    }
    let errors = db
        .wait_table_rows("beta_data.beta_error_log", 1, Duration::from_secs(30))
        .await;
    assert_eq!(
        errors.len(),
        1,
        "the tenant's error log is in its schema: {errors:?}"
    );
    assert!(errors[0].0.contains("invalid TimeInstant"), "{errors:?}");
    let (_, config) = w.get("/config").await;
    assert!(config.contains("beta_data"), "{config}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_log_retention_prunes_old_rows_in_batches() {
    let broker = Broker::start();
    let db = TestDb::create("ngsiflow_t_retention").await;
    db.client
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS old; \
             CREATE TABLE old.old_error_log (\"timestamp\" timestamptz NOT NULL, error text NOT NULL, query text, source text); \
             INSERT INTO old.old_error_log SELECT now() - interval '40 days', 'stale ' || i, NULL, 'o' || i FROM generate_series(1, 2500) i; \
             INSERT INTO old.old_error_log SELECT now() - (i || ' seconds')::interval, 'recent ' || i, NULL, 'r' || i FROM generate_series(1, 1200) i; \
             CREATE SCHEMA IF NOT EXISTS ngsiflow; \
             CREATE TABLE ngsiflow.error_log (\"timestamp\" timestamptz NOT NULL, error text NOT NULL, query text, source text); \
             INSERT INTO ngsiflow.error_log SELECT now() - (i || ' seconds')::interval, 'fallback ' || i, NULL, 'f' || i FROM generate_series(1, 3000) i; \
             CREATE TABLE old.not_an_error_log (\"timestamp\" timestamptz, x int); \
             INSERT INTO old.not_an_error_log SELECT now() - interval '90 days', i FROM generate_series(1, 10) i;",
        )
        .await
        .unwrap();
    let w = Worker::start(
        &broker.addr,
        &db.url,
        "ret",
        &[
            "--error-log-retention",
            "30",
            "--error-log-max-rows",
            "1000",
        ],
    );
    w.wait_metric(
        "ngsiflow_error_log_pruned_rows_total{reason=\"age\"} 2500",
        Duration::from_secs(60),
    )
    .await;
    w.wait_metric(
        "ngsiflow_error_log_pruned_rows_total{reason=\"cap\"} 2200",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(db.count("old.old_error_log").await, 1000);
    assert_eq!(db.count("ngsiflow.error_log").await, 1000);
    let count = |sql: &'static str| {
        let client = &db.client;
        async move { client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(
        count("SELECT count(*) FROM old.old_error_log WHERE error LIKE 'stale%'").await,
        0,
        "no row past 30 days is left"
    );
    // The newest rows are the ones kept (row i was stamped i seconds ago).
    assert_eq!(
        count(
            "SELECT count(*) FROM ngsiflow.error_log WHERE split_part(error, ' ', 2)::int <= 1000"
        )
        .await,
        1000
    );
    assert_eq!(
        count(
            "SELECT count(*) FROM old.old_error_log WHERE split_part(error, ' ', 2)::int <= 1000"
        )
        .await,
        1000
    );
    assert_eq!(
        db.count("old.not_an_error_log").await,
        10,
        "other tables are not touched"
    );
}
