//! A mixed deployment on the real engine: Apache Kafka, Kafka Connect running Debezium's JDBC
//! sink beside ngsiflow, and ngsiflow's own flows. Good records flow through the Connect sink into
//! a plain table; records the sink rejects go through Connect's real dead-letter queue
//! (`<prefix>raw_errors`, context headers on) into ngsiflow's `errors` flow and become one row
//! each in the tenant's error log, carrying Connect's exception class, message and source
//! topic/partition/offset; ngsiflow's historic flow keeps writing meanwhile.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const PREFIX: &str = "mix_";
const GOOD: usize = 50;
const BAD: usize = 5;
const NOTIFICATIONS: usize = 40;

/// A Connect-JSON record (schema + payload) the JDBC sink writes as one row.
fn sink_record(i: usize) -> String {
    json!({
        "schema": {"type": "struct", "fields": [
            {"field": "entityid", "type": "string"},
            {"field": "seq", "type": "int32"},
            {"field": "temperature", "type": "double"}
        ]},
        "payload": {"entityid": format!("Bay:{}", i % 7), "seq": i, "temperature": 20.0 + i as f64 / 10.0}
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_sink_and_its_dead_letters_run_beside_ngsiflow() {
    let broker = Broker::start();
    let db = TestDb::create("ngsiflow_t_connect").await;
    let sink_topic = format!("{PREFIX}demo_historic_processed");
    create_topics(
        &broker.addr,
        &[
            &format!("{PREFIX}raw_historic"),
            &format!("{PREFIX}raw_errors"),
            &sink_topic,
        ],
        1,
    )
    .await;
    let worker = Worker::start(
        &broker.addr,
        &db.url,
        "mixed",
        &["--topic-prefix", PREFIX, "--flows", "historic,errors"],
    );
    worker.wait_ready(Duration::from_secs(60)).await;
    let connect = Connect::start(&broker.addr);
    connect.deploy_jdbc_sink(
        &format!("jdbc:postgresql://127.0.0.1:5432/{}", db.name),
        PREFIX,
    );

    // Interleaved: every 11th record on the sink topic is not JSON, so the sink's converter
    // rejects it; ngsiflow's own notifications arrive at the same time.
    let p = TestProducer::new(&broker.addr);
    let mut bad_offsets = Vec::new();
    for i in 0..GOOD + BAD {
        if i % 11 == 10 {
            bad_offsets.push(i);
            p.send_to(&sink_topic, Some(0), &[], &format!("{{not json {i}"))
                .await;
        } else {
            p.send_to(&sink_topic, Some(0), &[], &sink_record(i)).await;
        }
        if i < NOTIFICATIONS {
            let v = notification(&[json!({"id": format!("S{i}"), "type": "Sensor",
                "TimeInstant": {"type": "DateTime", "value": format!("2026-01-01T00:00:{:02}Z", i)},
                "count": {"type": "Integer", "value": i}})]);
            p.send(
                &format!("{PREFIX}raw_historic"),
                &headers("demo", "/city"),
                &v,
            )
            .await;
        }
    }
    p.flush();
    assert_eq!(bad_offsets.len(), BAD);

    let t = Duration::from_secs(120);
    let through_connect = db.wait_count("demo.processed_events", GOOD as i64, t).await;
    let written_by_ngsiflow = db
        .wait_count("demo.city_sensor", NOTIFICATIONS as i64, t)
        .await;
    let errors = db.wait_error_rows("demo", BAD, t).await;
    // Time for an over-delivery to show before asserting exact counts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let errors_after = db.error_rows("demo").await;
    eprintln!(
        "mixed deployment: {GOOD} good + {BAD} rejected records to the Connect sink, \
         {NOTIFICATIONS} notifications to ngsiflow -> rows through Connect {through_connect}, \
         rows by ngsiflow {written_by_ngsiflow}, error-log rows {}",
        errors_after.len()
    );
    assert_eq!(through_connect, GOOD as i64, "{}", connect.logs());
    assert_eq!(db.count("demo.processed_events").await, GOOD as i64);
    assert_eq!(
        written_by_ngsiflow,
        NOTIFICATIONS as i64,
        "{}",
        worker.logs()
    );
    assert_eq!(db.count("demo.city_sensor").await, NOTIFICATIONS as i64);
    assert_eq!(errors.len(), BAD, "{}", worker.logs());
    assert_eq!(errors_after.len(), BAD);

    // One row per rejected record, each naming Connect's exception class, the converter stage, the
    // connector and exactly the record's source topic-partition@offset, with its value as query.
    let mut seen: Vec<usize> = Vec::new();
    for (error, query) in &errors_after {
        assert!(
            error.starts_with("Converting byte[] to Kafka Connect data failed"),
            "{error}"
        );
        assert!(
            error.contains("exception org.apache.kafka.connect.errors.DataException"),
            "{error}"
        );
        assert!(error.contains("stage VALUE_CONVERTER"), "{error}");
        assert!(error.contains("connector ngsiflow-jdbc-sink"), "{error}");
        let offset: usize = error
            .split(&format!("source {sink_topic}-0@"))
            .nth(1)
            .and_then(|r| r.trim_end_matches(']').parse().ok())
            .unwrap_or_else(|| panic!("no source offset in {error}"));
        assert_eq!(query, &format!("{{not json {offset}"));
        seen.push(offset);
    }
    seen.sort();
    assert_eq!(seen, bad_offsets);
    // The worker counted them as written error-log rows of the errors flow.
    worker
        .wait_metric(
            &format!("ngsiflow_records_total{{flow=\"errors\",outcome=\"written\"}} {BAD}"),
            Duration::from_secs(30),
        )
        .await;
}
