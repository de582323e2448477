//! Restart safety: a worker killed mid-stream (SIGKILL) and one stopped gracefully (SIGTERM)
//! are restarted; every record ends up in its table exactly once and nothing is error-logged.
//! The producer sends one record per batch (shared NOTES: tansu loses the rest of a batch when a
//! consumer resumes inside it).

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const N: usize = 1500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_write_every_record_exactly_once() {
    let broker = Broker::start();
    let db = TestDb::create("ngsiflow_t_restart").await;
    create_topics(
        &broker.addr,
        &["raw_historic", "raw_lastdata", "raw_mutable"],
        3,
    )
    .await;
    let addr = broker.addr.clone();
    let producer = tokio::spawn(async move {
        let p = TestProducer::new(&addr);
        let h = headers("demo", "/city");
        for i in 0..N {
            let ts = format!(
                "2026-01-01T00:{:02}:{:02}.{:03}Z",
                i / 60000 % 60,
                i / 1000 % 60,
                i % 1000
            );
            let v = notification(&[json!({"id": format!("E{}", i % 10), "type": "Sensor",
                "TimeInstant": {"type": "DateTime", "value": ts}, "count": {"type": "Integer", "value": i}})]);
            for t in ["raw_historic", "raw_lastdata", "raw_mutable"] {
                p.send(t, &h, &v).await;
            }
            // paced (about 10 s in all) so that both restarts happen while records still arrive
            tokio::time::sleep(Duration::from_millis(6)).await;
        }
        p.flush();
    });
    // A short session timeout lets the group drop the killed member quickly (default 45 s).
    let args = [
        "--batch-size",
        "40",
        "-X",
        "session.timeout.ms=6000",
        "-X",
        "heartbeat.interval.ms=500",
    ];
    let mut w1 = Worker::start(&broker.addr, &db.url, "restart", &args);
    let seen = db
        .wait_count("demo.city_sensor", 300, Duration::from_secs(60))
        .await;
    assert!(
        seen >= 300,
        "first worker made progress: {seen}\n{}",
        w1.logs()
    );
    w1.kill(); // crash: the uncommitted tail is re-read by the next worker
    let crashed_at = db.count("demo.city_sensor").await;
    eprintln!("killed first worker at {crashed_at} rows");
    let mut w2 = Worker::start(&broker.addr, &db.url, "restart", &args);
    let target = (crashed_at + 200).min(N as i64);
    let seen = db
        .wait_count("demo.city_sensor", target, Duration::from_secs(60))
        .await;
    assert!(
        seen >= target,
        "second worker made progress ({crashed_at} → {seen})\n{}",
        w2.logs()
    );
    assert_eq!(w2.stop(), Some(0), "graceful stop exits 0\n{}", w2.logs());
    let stopped_at = db.count("demo.city_sensor").await;
    eprintln!("stopped second worker at {stopped_at} rows");
    producer.await.unwrap();
    let w3 = Worker::start(&broker.addr, &db.url, "restart", &args);
    let n = N as i64;
    assert_eq!(
        db.wait_count("demo.city_sensor", n, Duration::from_secs(120))
            .await,
        n,
        "historic\n{}",
        w3.logs()
    );
    assert_eq!(
        db.wait_count("demo.city_sensor_mutable", n, Duration::from_secs(60))
            .await,
        n,
        "mutable"
    );
    // give a possible over-delivery time to show up before asserting exactness
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(db.count("demo.city_sensor").await, n);
    assert_eq!(db.count("demo.city_sensor_mutable").await, n);
    let distinct: i64 = db
        .client
        .query_one("SELECT count(DISTINCT count) FROM demo.city_sensor", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(distinct, n, "every record once");
    // lastdata holds each entity's newest record
    let rows = db
        .client
        .query(
            "SELECT entityid, count FROM demo.city_sensor_lastdata ORDER BY entityid",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, i32)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let want: Vec<(String, i32)> = (0..10)
        .map(|e| (format!("E{e}"), (N - 10 + e) as i32))
        .collect();
    let mut want = want;
    want.sort();
    assert_eq!(got, want);
    assert!(
        db.error_rows("demo").await.is_empty(),
        "replays are not errors: {:?}",
        db.error_rows("demo").await
    );
    assert!(
        crashed_at < n && stopped_at < n,
        "restarts happened mid-stream ({crashed_at}, {stopped_at})"
    );
}
