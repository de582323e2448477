//! Restart and rebalance safety: a worker killed mid-stream (SIGKILL), one stopped gracefully
//! (SIGTERM), and a second worker joining and leaving the consumer group mid-stream; every record
//! ends up in its table exactly once and nothing is error-logged. The producer batches normally.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const N: usize = 1500;
/// A short session timeout lets the group drop a killed member quickly (the worker's default
/// is 6 s too; said here so the test does not depend on it).
const ARGS: [&str; 6] = [
    "--batch-size",
    "40",
    "-X",
    "session.timeout.ms=6000",
    "-X",
    "heartbeat.interval.ms=500",
];

/// Produces N notifications to the three raw topics, paced (about 10 s in all) so that restarts
/// and rebalances happen while records still arrive. Entity `E{i % 10}`, `count = i`.
fn produce_paced(addr: &str) -> tokio::task::JoinHandle<()> {
    let addr = addr.to_string();
    tokio::spawn(async move {
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
            tokio::time::sleep(Duration::from_millis(6)).await;
        }
        p.flush();
    })
}

/// A broker, a fresh database and the three raw topics (3 partitions each), with the paced
/// producer already running.
async fn paced_stream(db_name: &str) -> (Broker, TestDb, tokio::task::JoinHandle<()>) {
    let broker = Broker::start();
    let db = TestDb::create(db_name).await;
    create_topics(
        &broker.addr,
        &["raw_historic", "raw_lastdata", "raw_mutable"],
        3,
    )
    .await;
    let producer = produce_paced(&broker.addr);
    (broker, db, producer)
}

async fn assert_every_record_once(db: &TestDb, logs: &str) {
    let n = N as i64;
    assert_eq!(
        db.wait_count("demo.city_sensor", n, Duration::from_secs(120))
            .await,
        n,
        "historic\n{logs}"
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
    let mut want: Vec<(String, i32)> = (0..10)
        .map(|e| (format!("E{e}"), (N - 10 + e) as i32))
        .collect();
    want.sort();
    assert_eq!(got, want);
    assert!(
        db.error_rows("demo").await.is_empty(),
        "replays are not errors: {:?}",
        db.error_rows("demo").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_write_every_record_exactly_once() {
    let (broker, db, producer) = paced_stream("ngsiflow_t_restart").await;
    let mut w1 = Worker::start(&broker.addr, &db.url, "restart", &ARGS);
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
    let mut w2 = Worker::start(&broker.addr, &db.url, "restart", &ARGS);
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
    producer.await.unwrap();
    let w3 = Worker::start(&broker.addr, &db.url, "restart", &ARGS);
    assert_every_record_once(&db, &w3.logs()).await;
    let n = N as i64;
    assert!(
        crashed_at < n && stopped_at < n,
        "restarts happened mid-stream ({crashed_at}, {stopped_at})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_joining_and_leaving_the_group_lose_and_duplicate_nothing() {
    let (broker, db, producer) = paced_stream("ngsiflow_t_rebalance").await;
    let mut w1 = Worker::start(&broker.addr, &db.url, "rebalance", &ARGS);
    let seen = db
        .wait_count("demo.city_sensor", 200, Duration::from_secs(60))
        .await;
    assert!(seen >= 200, "{}", w1.logs());
    // A second member joins: partitions are revoked from the first and shared.
    let w2 = Worker::start(&broker.addr, &db.url, "rebalance", &ARGS);
    let joined_at = db.count("demo.city_sensor").await;
    let target = (joined_at + 300).min(N as i64);
    assert!(
        db.wait_count("demo.city_sensor", target, Duration::from_secs(60))
            .await
            >= target,
        "{}",
        w2.logs()
    );
    // Lag gauges follow the assignment: the first member exports lag only for the partitions
    // it still owns (revoked ones are removed), and the two members together cover all three.
    let lag_partitions = |m: &str| -> Vec<String> {
        let mut p: Vec<String> = m
            .lines()
            .filter(|l| l.starts_with("ngsiflow_consumer_lag{flow=\"historic\""))
            .filter_map(|l| {
                l.split("partition=\"")
                    .nth(1)?
                    .split('"')
                    .next()
                    .map(str::to_string)
            })
            .collect();
        p.sort();
        p
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, m1) = w1.get("/metrics").await;
        let (_, m2) = w2.get("/metrics").await;
        let (p1, p2) = (lag_partitions(&m1), lag_partitions(&m2));
        let mut all: Vec<String> = p1.iter().chain(&p2).cloned().collect();
        all.sort();
        if !p1.is_empty() && !p2.is_empty() && all == ["0", "1", "2"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "lag series after the rebalance: first {p1:?}, second {p2:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The first leaves: the second takes everything over.
    assert_eq!(w1.stop(), Some(0));
    producer.await.unwrap();
    assert_every_record_once(&db, &w2.logs()).await;
    assert!(
        joined_at < N as i64,
        "the rebalance happened mid-stream ({joined_at})"
    );
}

/// With default settings (no session timeout given), a worker killed with SIGKILL and started
/// again consumes again within seconds: the group drops the dead member after the session
/// timeout the worker sets (6 s), not Kafka's default 45 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_resumes_within_seconds_with_default_settings() {
    let broker = Broker::start();
    let db = TestDb::create("ngsiflow_t_resume").await;
    create_topics(&broker.addr, &["raw_historic"], 1).await;
    let p = TestProducer::new(&broker.addr);
    let h = headers("demo", "/city");
    let send = |i: usize| {
        notification(&[json!({"id": format!("R{i}"), "type": "Sensor",
            "TimeInstant": {"type": "DateTime", "value": "2026-01-01T00:00:00Z"}})])
    };
    let mut w = Worker::start(&broker.addr, &db.url, "resume", &["--flows", "historic"]);
    for i in 0..10 {
        p.send("raw_historic", &h, &send(i)).await;
    }
    assert_eq!(
        db.wait_count("demo.city_sensor", 10, Duration::from_secs(60))
            .await,
        10,
        "{}",
        w.logs()
    );
    w.kill();
    let killed = std::time::Instant::now();
    let w2 = Worker::start(&broker.addr, &db.url, "resume", &["--flows", "historic"]);
    for i in 10..20 {
        p.send("raw_historic", &h, &send(i)).await;
    }
    let n = db
        .wait_count("demo.city_sensor", 20, Duration::from_secs(60))
        .await;
    let secs = killed.elapsed().as_secs_f64();
    eprintln!("kill -9 → restarted worker wrote again after {secs:.1} s");
    assert_eq!(n, 20, "{}", w2.logs());
    assert!(secs < 10.0, "resumed after {secs:.1} s\n{}", w2.logs());
}
