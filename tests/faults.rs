//! Fault injection on the real Apache Kafka broker and PostGIS: repeated SIGKILLs of the worker
//! over a multi-tenant stream, a database that hangs instead of failing, a broker restarted and
//! a broker frozen mid-stream, three workers sharing six partitions, and SIGTERM during a heavy
//! drain. Each test prints its figures (sent, written, lost, duplicated, stale, error-log rows,
//! recovery seconds, peak RSS). `NGSIFLOW_FAULTS_FULL=1` runs the long crash variant (100 000
//! notifications, 20 kills; `scripts/faults.sh`); CI runs the short one.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const T: Duration = Duration::from_secs(120);
const SERVICES: [&str; 3] = ["acme", "beta", "gamma"];
const TYPES: [&str; 4] = ["Sensor", "Meter", "Valve", "Pump"];
/// (topic, table suffix, primary key) of the three flows.
const FLOWS: [(&str, &str, &str); 3] = [
    ("raw_historic", "", "PRIMARY KEY (timeinstant, entityid)"),
    ("raw_lastdata", "_lastdata", "PRIMARY KEY (entityid)"),
    (
        "raw_mutable",
        "_mutable",
        "PRIMARY KEY (entityid, timeinstant)",
    ),
];

/// Notification `i` of the multi-tenant stream: its tenant, entity type, entity id, and whether
/// it is bad (an attribute its table has no column for: one error-log row per flow).
struct Note {
    service: &'static str,
    ty: &'static str,
    entity: String,
    bad: bool,
}

fn note(i: usize) -> Note {
    Note {
        service: SERVICES[i % 3],
        ty: TYPES[(i / 3) % 4],
        entity: format!("E{}", i % 25),
        bad: i % 101 == 50,
    }
}

fn timeinstant(i: usize) -> String {
    let t = chrono::DateTime::from_timestamp_millis(1_767_225_600_000 + i as i64).unwrap();
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn payload(i: usize) -> String {
    let n = note(i);
    let mut e = json!({"id": n.entity, "type": n.ty,
        "TimeInstant": {"type": "DateTime", "value": timeinstant(i)},
        "count": {"type": "Integer", "value": i}});
    if n.bad {
        e["humidity"] = json!({"type": "Number", "value": 1});
    }
    notification(&[e])
}

/// Schemas and tables of the three tenants (4 entity types × 3 flows each = 36 tables).
async fn create_tenant_tables(db: &TestDb) {
    let mut ddl = String::new();
    for s in SERVICES {
        ddl.push_str(&format!("CREATE SCHEMA {s};"));
        for ty in TYPES {
            for (_, suffix, pk) in FLOWS {
                ddl.push_str(&format!(
                    "CREATE TABLE {s}.city_{}{suffix} (recvtime timestamptz, fiwareservicepath text, \
                     entityid text NOT NULL, entitytype text, timeinstant timestamptz, count integer, {pk});",
                    ty.to_lowercase()
                ));
            }
        }
    }
    db.client.batch_execute(&ddl).await.unwrap();
}

/// Produces notifications `range` to the three raw topics as fast as the broker takes them
/// (every send in flight at once, then awaited).
async fn produce(broker: String, range: std::ops::Range<usize>) {
    let mut records = Vec::new();
    for i in range {
        let h = owned_headers(note(i).service, "/city");
        let v = payload(i);
        for (topic, _, _) in FLOWS {
            records.push((topic, h.clone(), v.clone()));
        }
    }
    produce_all(&broker, records).await;
}

/// What the tables hold against what `n` notifications should have produced.
#[derive(Debug, Default)]
struct Tally {
    sent: usize,
    written: i64,
    lost: i64,
    duplicated: i64,
    stale: i64,
    error_rows: i64,
    error_duplicates: i64,
}

async fn tally(db: &TestDb, n: usize) -> Tally {
    let good = (0..n).filter(|&i| !note(i).bad).count() as i64;
    let bad = n as i64 - good;
    let mut t = Tally {
        sent: n,
        ..Tally::default()
    };
    for (_, suffix, _) in [FLOWS[0], FLOWS[2]] {
        let union: Vec<String> = SERVICES
            .iter()
            .flat_map(|s| {
                TYPES.iter().map(move |ty| {
                    format!(
                        "SELECT entityid, timeinstant FROM {s}.city_{}{suffix}",
                        ty.to_lowercase()
                    )
                })
            })
            .collect();
        let row = db
            .client
            .query_one(
                &format!(
                    "SELECT count(*), count(DISTINCT (entityid, timeinstant)) FROM ({}) u",
                    union.join(" UNION ALL ")
                ),
                &[],
            )
            .await
            .unwrap();
        let (rows, distinct): (i64, i64) = (row.get(0), row.get(1));
        t.written += rows;
        t.lost += good - distinct;
        t.duplicated += rows - distinct;
    }
    // lastdata: each entity of each table at its newest good notification.
    let mut newest: BTreeMap<(String, String, String), i32> = BTreeMap::new();
    for i in 0..n {
        let x = note(i);
        if !x.bad {
            newest.insert((x.service.into(), x.ty.to_lowercase(), x.entity), i as i32);
        }
    }
    for ((s, ty, e), want) in &newest {
        let got = db
            .client
            .query_opt(
                &format!("SELECT count FROM {s}.city_{ty}_lastdata WHERE entityid = $1"),
                &[e],
            )
            .await
            .unwrap()
            .map(|r| r.get::<_, i32>(0));
        if got != Some(*want) {
            t.stale += 1;
        }
    }
    t.written += newest.len() as i64 - t.stale;
    for s in SERVICES {
        let row = db
            .client
            .query_one(
                &format!("SELECT count(*), count(DISTINCT source) FROM {s}.{s}_error_log"),
                &[],
            )
            .await
            .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)))
            .unwrap_or((0, 0));
        t.error_rows += row.0;
        t.error_duplicates += row.0 - row.1;
    }
    t.lost += (3 * bad - (t.error_rows - t.error_duplicates)).max(0);
    t
}

/// The `WARN` and `ERROR` lines of a worker's log.
fn warnings(log: &str) -> String {
    log.lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn scale() -> (usize, usize) {
    if std::env::var("NGSIFLOW_FAULTS_FULL").is_ok_and(|v| v == "1") {
        (100_000, 20)
    } else {
        (4_000, 4)
    }
}

/// A small deterministic generator (xorshift), so a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_sigkills_lose_and_duplicate_nothing_and_log_each_bad_record_once() {
    let (n, kills) = scale();
    let broker = Broker::start();
    let db = TestDb::create("ngsiflow_t_crash").await;
    create_tenant_tables(&db).await;
    create_topics(
        &broker.addr,
        &["raw_historic", "raw_lastdata", "raw_mutable"],
        3,
    )
    .await;
    let producer = tokio::spawn(produce(broker.addr.clone(), 0..n));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut recoveries = Vec::new();
    let mut peak = 0f64;
    let mut earlier = String::new();
    let total = 3 * n;
    for _ in 0..kills {
        let mut w = Worker::start(&broker.addr, &db.url, "crash", &[]);
        let started = Instant::now();
        // Killed after a random share of its fair part of the stream.
        let goal = 1 + rng.below((total / kills) as u64) as usize;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut first = None;
        loop {
            let done = w.metric_sum("messages_processed_total").await;
            if first.is_none() && done > 0.0 {
                first = Some(started.elapsed().as_secs_f64());
            }
            if done as usize >= goal || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak = peak.max(w.peak_rss_mib());
        w.kill();
        recoveries.extend(first);
        // A row missing at the end may have been given up by any of the killed workers.
        earlier.push_str(&warnings(&w.logs()));
    }
    producer.await.unwrap();
    let w = Worker::start(&broker.addr, &db.url, "crash", &[]);
    let good = (0..n).filter(|&i| !note(i).bad).count() as i64;
    let deadline = Instant::now() + Duration::from_secs(if n > 10_000 { 900 } else { 180 });
    let mut w = w;
    loop {
        if let Some(status) = w.exited() {
            panic!("the worker ended by itself ({status:?}):\n{}", w.logs());
        }
        let t = tally(&db, n).await;
        // Every historic and mutable row present and every lastdata row current (`written`
        // also counts lastdata rows, so it can reach 2 x good while rows are still missing).
        let settled = t.lost == 0 && t.stale == 0;
        if (settled && t.error_rows >= 3 * (n as i64 - good)) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Time for a late duplicate to show before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = tally(&db, n).await;
    peak = peak.max(w.peak_rss_mib());
    let worst = recoveries.iter().cloned().fold(0f64, f64::max);
    println!(
        "crash: sent {} notifications × 3 flows over 36 tables and 3 partitions, {kills} SIGKILLs; written {}, lost {}, duplicated {}, stale {}, error-log rows {} (duplicates {}); recovery (restart → first message handled) max {worst:.1} s; peak RSS {peak:.0} MiB",
        t.sent, t.written, t.lost, t.duplicated, t.stale, t.error_rows, t.error_duplicates
    );
    assert_eq!(
        (t.lost, t.duplicated, t.stale, t.error_duplicates),
        (0, 0, 0, 0),
        "{t:?}\nwarnings and errors of the killed workers:\n{earlier}\nthe last worker:\n{}",
        w.logs()
    );
    assert_eq!(
        t.error_rows,
        3 * (n as i64 - good),
        "one error-log row per bad record and flow; warnings and errors of the killed workers:\n{earlier}"
    );
}

/// Forwards TCP connections to PostgreSQL until frozen; frozen, it forwards nothing (new
/// connections included) while keeping every connection open: a database that hangs.
struct HangingProxy {
    addr: String,
    frozen: Arc<AtomicBool>,
}

impl HangingProxy {
    async fn start(upstream: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let frozen = Arc::new(AtomicBool::new(false));
        let f = frozen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let f = f.clone();
                tokio::spawn(async move {
                    while f.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::spawn(pump(cr, sw, f.clone()));
                    tokio::spawn(pump(sr, cw, f));
                });
            }
        });
        HangingProxy { addr, frozen }
    }

    fn freeze(&self, on: bool) {
        self.frozen.store(on, Ordering::SeqCst);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

fn sensor(i: usize) -> String {
    notification(&[json!({"id": format!("S{i}"), "type": "Sensor",
        "TimeInstant": {"type": "DateTime", "value": timeinstant(i)},
        "count": {"type": "Integer", "value": i}})])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_hangs_times_out_and_is_retried_as_transient() {
    let broker = Broker::start();
    let db = TestDb::create("ngsiflow_t_hang").await;
    create_topics(&broker.addr, &["raw_historic"], 1).await;
    let proxy = HangingProxy::start("127.0.0.1:5432").await;
    let url = format!("postgres://postgres@{}/ngsiflow_t_hang", proxy.addr);
    let w = Worker::start(
        &broker.addr,
        &url,
        "hang",
        &[
            "--flows",
            "historic",
            "--db-timeout-ms",
            "3000",
            "--retry-max-backoff-ms",
            "1000",
        ],
    );
    w.wait_ready(T).await;
    let p = TestProducer::new(&broker.addr);
    let h = headers("demo", "/city");
    for i in 0..100 {
        p.send("raw_historic", &h, &sensor(i)).await;
    }
    assert_eq!(db.wait_count("demo.city_sensor", 100, T).await, 100);
    proxy.freeze(true);
    let hung_at = Instant::now();
    for i in 100..200 {
        p.send("raw_historic", &h, &sensor(i)).await;
    }
    // While the write hangs, its age shows on /metrics and /health; then the window timeout
    // fires and the flow retries as transient (paused meanwhile).
    let mut saw_age = 0f64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        saw_age = saw_age.max(w.metric_sum("ngsiflow_window_write_age_seconds").await);
        if saw_age >= 1.0
            && w.metric_sum("ngsiflow_db_errors_total{class=\"transient\"")
                .await
                >= 1.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let transient = w
        .wait_metric("ngsiflow_flow_paused{flow=\"historic\"} 1", T)
        .await;
    assert!(saw_age >= 1.0, "write age shown while hung: {saw_age}");
    assert!(
        !transient.contains("class=\"transient\",flow=\"historic\"} 0"),
        "{transient}"
    );
    let (status, _) = w.get("/ready").await;
    assert_eq!(status, 503, "not ready while the database hangs");
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.freeze(false);
    let back = Instant::now();
    let n = db.wait_count("demo.city_sensor", 200, T).await;
    let drained = back.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        (n, db.count("demo.city_sensor").await),
        (200, 200),
        "{}",
        w.logs()
    );
    assert!(
        db.error_rows("demo").await.is_empty(),
        "a hang is never bad data"
    );
    println!(
        "hung database: sent 200, written {n}, lost 0, duplicated 0, error-log rows 0; hung {:.1} s, write age seen {saw_age:.1} s, backlog drained {drained:.1} s after it answered again; peak RSS {:.0} MiB",
        back.duration_since(hung_at).as_secs_f64(),
        w.peak_rss_mib()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_or_frozen_broker_is_survived_without_loss() {
    let broker = Broker::start();
    let db = TestDb::create("ngsiflow_t_broker").await;
    create_topics(&broker.addr, &["raw_historic"], 1).await;
    let w = Worker::start(&broker.addr, &db.url, "brk", &["--flows", "historic"]);
    w.wait_ready(T).await;
    let h = headers("demo", "/city");
    {
        let p = TestProducer::new(&broker.addr);
        for i in 0..300 {
            p.send("raw_historic", &h, &sensor(i)).await;
        }
    }
    assert_eq!(db.wait_count("demo.city_sensor", 300, T).await, 300);

    // Restart on the same data directory.
    let stopped = Instant::now();
    broker.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.start_again();
    {
        let p = TestProducer::new(&broker.addr);
        for i in 300..600 {
            p.send("raw_historic", &h, &sensor(i)).await;
        }
    }
    let restarted = db.wait_count("demo.city_sensor", 600, T).await;
    let restart_recovery = stopped.elapsed().as_secs_f64();
    assert_eq!(restarted, 600, "{}", w.logs());

    // Frozen (SIGSTOP): /ready turns 503 within the silence limit, and back once thawed.
    let frozen = broker.freeze();
    let froze = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(40);
    let (mut status, mut body) = (200, String::new());
    while Instant::now() < deadline {
        (status, body) = w.get("/ready").await;
        // The group may drop the silent member first ("no partitions assigned", after the
        // 6 s session timeout); the broker's silence is named once it passes 10 s.
        if status == 503 && body.contains("broker") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let noticed = froze.elapsed().as_secs_f64();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("broker"), "{body}");
    let m = w.get("/metrics").await.1;
    assert!(
        m.contains("ngsiflow_broker_reachable{flow=\"historic\"} 0"),
        "{m}"
    );
    drop(frozen);
    w.wait_ready(T).await;
    let thawed_ready = froze.elapsed().as_secs_f64() - noticed;
    {
        let p = TestProducer::new(&broker.addr);
        for i in 600..900 {
            p.send("raw_historic", &h, &sensor(i)).await;
        }
    }
    assert_eq!(db.wait_count("demo.city_sensor", 900, T).await, 900);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        db.count("demo.city_sensor").await,
        900,
        "nothing duplicated"
    );
    assert!(db.error_rows("demo").await.is_empty());
    println!(
        "broker faults: sent 900, written 900, lost 0, duplicated 0, error-log rows 0; restart: all rows {restart_recovery:.1} s after the stop; freeze: /ready 503 after {noticed:.1} s, ready again {thawed_ready:.1} s after thawing; peak RSS {:.0} MiB",
        w.peak_rss_mib()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_six_partitions_and_a_killed_one_hands_over() {
    let broker = Broker::start();
    let db = TestDb::create("ngsiflow_t_scale").await;
    create_topics(&broker.addr, &["raw_historic"], 6).await;
    let args = ["--flows", "historic"];
    let mut workers: Vec<Worker> = (0..3)
        .map(|_| Worker::start(&broker.addr, &db.url, "scale", &args))
        .collect();
    let deadline = Instant::now() + T;
    loop {
        let mut owned = Vec::new();
        for w in &workers {
            owned.push(w.metric_sum("ngsiflow_partitions_assigned").await as i64);
        }
        if owned == [2, 2, 2] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "partitions not shared: {owned:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let h = headers("demo", "/city");
    let p = TestProducer::new(&broker.addr);
    for i in 0..1500 {
        p.send_to("raw_historic", Some((i % 6) as i32), &h, &sensor(i))
            .await;
    }
    assert_eq!(db.wait_count("demo.city_sensor", 1500, T).await, 1500);
    let mut shares = Vec::new();
    for w in &workers {
        shares.push(w.metric_sum("messages_processed_total").await as i64);
    }
    assert!(
        shares.iter().all(|&s| s > 0),
        "every worker took a share: {shares:?}"
    );
    workers[0].kill();
    let killed = Instant::now();
    for i in 1500..3000 {
        p.send_to("raw_historic", Some((i % 6) as i32), &h, &sensor(i))
            .await;
    }
    assert_eq!(db.wait_count("demo.city_sensor", 3000, T).await, 3000);
    let handover = killed.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        db.count("demo.city_sensor").await,
        3000,
        "nothing duplicated"
    );
    let mut owned = Vec::new();
    for w in &workers[1..] {
        owned.push(w.metric_sum("ngsiflow_partitions_assigned").await as i64);
    }
    assert_eq!(
        owned.iter().sum::<i64>(),
        6,
        "the survivors own every partition: {owned:?}"
    );
    println!(
        "scale-out: 3 workers × 6 partitions; first 1500 shared {shares:?}; after a SIGKILL the survivors own {owned:?} and all 3000 rows landed {handover:.1} s after the kill; lost 0, duplicated 0; peak RSS of the survivors {:.0}/{:.0} MiB",
        workers[1].peak_rss_mib(),
        workers[2].peak_rss_mib()
    );
}

/// The offset the group committed for partition 0 of `topic`.
fn committed(broker: &str, group: &str, topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    match got.elements()[0].offset() {
        Offset::Offset(o) => o,
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_heavy_drain_commits_exactly_what_was_written() {
    let broker = Broker::start();
    let db = TestDb::create("ngsiflow_t_sigterm").await;
    create_topics(&broker.addr, &["raw_historic"], 1).await;
    let h = owned_headers("demo", "/city");
    let backlog = (0..30_000)
        .map(|i| ("raw_historic", h.clone(), sensor(i)))
        .collect();
    produce_all(&broker.addr, backlog).await;
    let mut w = Worker::start(&broker.addr, &db.url, "term", &["--flows", "historic"]);
    let seen = db.wait_count("demo.city_sensor", 3000, T).await;
    assert!(seen >= 3000, "{}", w.logs());
    let asked = Instant::now();
    let code = w.stop();
    let took = asked.elapsed().as_secs_f64();
    assert_eq!(code, Some(0), "{}", w.logs());
    assert!(
        took < 15.0,
        "exited within the 10 s drain grace: {took:.1} s"
    );
    let written = db.count("demo.city_sensor").await;
    let offset = committed(&broker.addr, "term-historic", "raw_historic");
    assert!(written < 30_000, "stopped mid-drain ({written})");
    assert_eq!(offset, written, "committed exactly what was written");
    println!(
        "sigterm: 30000 backlog, stopped after {written} written; exit in {took:.2} s with code 0; committed offset {offset} = rows written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_table_does_not_stop_the_other_tables_or_tenants() {
    let lock_secs = if scale().0 > 10_000 { 30 } else { 10 };
    let broker = Broker::start();
    let db = TestDb::create("ngsiflow_t_lock").await;
    db.client
        .batch_execute("CREATE SCHEMA acme; CREATE TABLE acme.city_sensor (LIKE demo.city_sensor INCLUDING ALL)")
        .await
        .unwrap();
    // One partition: the locked table's records and the others share it, so the offsets held
    // back for the locked one must not block (or lose) the others.
    create_topics(&broker.addr, &["raw_historic"], 1).await;
    let w = Worker::start(&broker.addr, &db.url, "lock", &["--flows", "historic"]);
    w.wait_ready(T).await;
    let p = TestProducer::new(&broker.addr);
    let (demo, acme) = (headers("demo", "/city"), headers("acme", "/city"));
    let zone = |i: usize| {
        notification(&[json!({"id": format!("Z{i}"), "type": "Zone",
            "TimeInstant": {"type": "DateTime", "value": timeinstant(i)}})])
    };
    let mut i = 0;
    let send_round = |i: usize| {
        let (p, demo, acme) = (&p, demo.clone(), acme.clone());
        async move {
            p.send("raw_historic", &demo, &sensor(i)).await;
            p.send("raw_historic", &demo, &zone(i)).await;
            p.send("raw_historic", &acme, &sensor(i)).await;
        }
    };
    for _ in 0..20 {
        send_round(i).await;
        i += 1;
    }
    assert_eq!(db.wait_count("acme.city_sensor", 20, T).await, 20);
    assert_eq!(db.wait_count("demo.city_sensor", 20, T).await, 20);

    let locker = connect(&db.url).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE demo.city_sensor IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let locked_at = Instant::now();
    let zone_before = db.count("demo.city_zone").await;
    let mut progress = Vec::new();
    while locked_at.elapsed() < Duration::from_secs(lock_secs) {
        send_round(i).await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if i % 10 == 0 {
            progress.push(db.count("acme.city_sensor").await);
        }
    }
    let during = (
        db.count("demo.city_zone").await - zone_before,
        db.count("acme.city_sensor").await - 20,
    );
    let deferred = w.metric_sum("ngsiflow_deferred_records").await;
    let locked_tables = w.metric_sum("ngsiflow_locked_tables").await;
    let peak_locked = w.peak_rss_mib();
    locker.batch_execute("COMMIT").await.unwrap();
    let released = Instant::now();
    let n = i as i64;
    let caught_up = db.wait_count("demo.city_sensor", n, T).await;
    let catch_up = released.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rounds = i - 20;
    assert!(
        during.0 >= rounds as i64 / 2 && during.1 >= rounds as i64 / 2,
        "other tables and tenants kept being written while the table was locked: {during:?} of {rounds}; acme over time {progress:?}\n{}",
        w.logs()
    );
    assert!(
        deferred > 0.0 && locked_tables == 1.0,
        "deferred {deferred}, locked {locked_tables}"
    );
    assert_eq!(caught_up, n, "{}", w.logs());
    for t in ["demo.city_sensor", "demo.city_zone", "acme.city_sensor"] {
        assert_eq!(db.count(t).await, n, "{t}: every record once");
    }
    assert!(db.error_rows("demo").await.is_empty() && db.error_rows("acme").await.is_empty());
    let m = w.get("/metrics").await.1;
    assert!(
        m.contains("ngsiflow_deferred_records{flow=\"historic\"} 0"),
        "{m}"
    );
    println!(
        "table lock: demo.city_sensor locked {lock_secs} s (ACCESS EXCLUSIVE) while {rounds} rounds of 3 notifications arrived; meanwhile demo.city_zone got {} rows and tenant acme {} (of {rounds} each), {deferred} records waited; the locked table caught up {catch_up:.1} s after the lock went; lost 0, duplicated 0, error-log rows 0; peak RSS {peak_locked:.0} MiB",
        during.0, during.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_input_drains_fast_and_the_next_good_message_lands() {
    let bad = if scale().0 > 10_000 { 50_000 } else { 5_000 };
    let broker = Broker::start();
    let db = TestDb::create("ngsiflow_t_flood").await;
    create_topics(&broker.addr, &["raw_historic"], 1).await;
    let w = Worker::start(&broker.addr, &db.url, "flood", &["--flows", "historic"]);
    w.wait_ready(T).await;
    let started = Instant::now();
    let h = owned_headers("demo", "/city");
    let mut flood: Vec<_> = (0..bad)
        .map(|i| {
            let v = format!("{{\"subscriptionId\": \"flood\", \"data\": [{i}");
            ("raw_historic", h.clone(), v)
        })
        .collect();
    flood.push(("raw_historic", h, sensor(0)));
    produce_all(&broker.addr, flood).await;
    let produced = started.elapsed().as_secs_f64();
    let landed = db.wait_count("demo.city_sensor", 1, T).await;
    let after_flood = started.elapsed().as_secs_f64() - produced;
    assert_eq!(landed, 1, "{}", w.logs());
    let total = started.elapsed().as_secs_f64();
    let rows = db.wait_error_rows("demo", bad, T).await.len();
    assert_eq!(rows, bad, "one error-log row per bad message");
    w.wait_metric(
        &format!("ngsiflow_dead_letter_total{{flow=\"historic\"}} {bad}"),
        T,
    )
    .await;
    println!(
        "bad-input flood: {bad} invalid messages + 1 good; all handled {total:.1} s after the first was produced ({:.0} messages/s); the good message landed {after_flood:.1} s after the flood was fully produced; error-log rows {rows}; peak RSS {:.0} MiB",
        (bad + 1) as f64 / total,
        w.peak_rss_mib()
    );
}
