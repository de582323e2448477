//! The flow loop with in-memory fakes for its four seams: a table of input streams (good, bad,
//! rejected by the database, replayed, revoked mid-window, database briefly down) and what must
//! come out — rows written, error-log rows, dead letters and committed offsets. No broker, no
//! database.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::handle::FlowHandle;
use super::inbound::{Inbound, RecordHeaders};
use super::intake::IntakeSettings;
use super::ports::{DeadLetterSink, OffsetCommitter, Source, WindowSink};
use super::FlowProcessor;
use crate::flow::transform::TransformOptions;
use crate::kafka::dead_letter::DeadLetter;
use crate::kafka::FlowStatus;
use crate::metrics::Metrics;
use crate::postgis::{
    ErrorLogRow, ItemFailure, TransientError, WindowOutcome, WindowWrite, WriteItem,
};

/// Records in order; when the record at `(partition, offset)` of `revoke_at` is handed out,
/// its `.1` partition is revoked first (as the rebalance callback does inside `recv`).
#[derive(Clone)]
struct FakeConsumer {
    queue: Arc<Mutex<VecDeque<Inbound>>>,
    committed: Arc<Mutex<BTreeMap<i32, i64>>>,
    status: Arc<FlowStatus>,
    revoke_at: Option<((i32, i64), i32)>,
}

impl Source for FakeConsumer {
    async fn recv(&self) -> Result<Inbound, String> {
        let next = self.queue.lock().unwrap().pop_front();
        match next {
            Some(r) => {
                if let Some((at, partition)) = self.revoke_at {
                    if at == (r.partition, r.offset) {
                        self.status.revoked.lock().unwrap().push(partition);
                    }
                }
                Ok(r)
            }
            None => std::future::pending().await,
        }
    }

    fn pause_all(&self) {}

    fn resume_all(&self) {}
}

impl OffsetCommitter for FakeConsumer {
    fn commit(&self, offsets: &BTreeMap<i32, i64>) -> Result<(), String> {
        self.committed.lock().unwrap().extend(offsets);
        Ok(())
    }
}

/// Writes every item but those whose entity id it rejects (a permanent error) or already holds
/// (an identical replay); fails the first `transient` calls as if the database were down.
#[derive(Clone, Default)]
struct FakeSink {
    rejects: HashSet<String>,
    stored: HashSet<String>,
    transient: Arc<AtomicUsize>,
    /// Calls during which the table of entities named `L…` is locked by another session.
    locked_calls: Arc<AtomicUsize>,
    written: Arc<Mutex<Vec<String>>>,
    error_rows: Arc<Mutex<Vec<ErrorLogRow>>>,
}

fn entity_id(item: &WriteItem) -> String {
    item.op
        .get("entityid")
        .and_then(|v| v.display_text())
        .unwrap_or_default()
}

impl WindowSink for FakeSink {
    async fn write_window(&mut self, w: WindowWrite<'_>) -> Result<WindowOutcome, TransientError> {
        let (items, error_rows, now) = (w.items, w.error_rows, w.now);
        if self
            .transient
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(TransientError("connection refused".into()));
        }
        let mut out = WindowOutcome::default();
        let mut rows = error_rows.to_vec();
        let locked = self.locked_calls.load(Ordering::SeqCst) > 0;
        for (i, item) in items.iter().enumerate() {
            let id = entity_id(item);
            if locked && id.starts_with('L') {
                out.deferred.push(i);
                if !out.locked.contains(&item.op.target) {
                    out.locked
                        .push(crate::route::TableRef::clone(&item.op.target));
                }
            } else if self.rejects.contains(&id) {
                let f = ItemFailure {
                    item: i,
                    error: format!("ERROR: {id} rejected"),
                    query: String::new(),
                    from_database: true,
                };
                rows.push(ErrorLogRow::new(
                    &item.service,
                    now,
                    f.error.clone(),
                    None,
                    String::new(),
                ));
                out.failures.push(f);
            } else if self.stored.contains(&id) {
                out.duplicate_replayed += 1;
            } else {
                out.written += 1;
                self.written.lock().unwrap().push(id);
            }
        }
        self.error_rows.lock().unwrap().extend(rows);
        if locked {
            self.locked_calls.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(out)
    }
}

#[derive(Clone, Default)]
struct FakeDeadLetters {
    sent: Arc<Mutex<Vec<DeadLetter>>>,
}

impl DeadLetterSink for FakeDeadLetters {
    async fn send_all(&self, letters: &[DeadLetter], _: &CancellationToken) -> Result<(), String> {
        self.sent.lock().unwrap().extend_from_slice(letters);
        Ok(())
    }

    fn flush(&self) {}
}

/// A record of tenant `demo`, servicepath `/city`.
pub(super) fn record(partition: i32, offset: i64, payload: &str) -> Inbound {
    Inbound {
        timestamp_ms: None,
        partition,
        offset,
        key: None,
        payload: Some(payload.as_bytes().to_vec()),
        headers: Ok(RecordHeaders::from_pairs([
            ("Fiware-Service", &b"demo"[..]),
            ("Fiware-Servicepath", b"/city"),
        ])),
    }
}

/// A notification with one `Sensor` entity per id, all at `2026-01-01T00:00:00Z`.
pub(super) fn notification(ids: &[&str]) -> String {
    let entities: Vec<String> = ids
        .iter()
        .map(|id| {
            format!(
                r#"{{"id":"{id}","type":"Sensor","TimeInstant":{{"type":"DateTime","value":"2026-01-01T00:00:00Z"}}}}"#
            )
        })
        .collect();
    format!(r#"{{"data":[{}]}}"#, entities.join(","))
}

/// The historic flow's loop over the fakes (windows of up to 100 records, 10 ms linger).
fn flow_loop<D>(
    consumer: FakeConsumer,
    sink: FakeSink,
    dead_letters: D,
    handle: FlowHandle,
) -> FlowProcessor<FakeConsumer, FakeSink, D> {
    FlowProcessor {
        settings: IntakeSettings {
            spec: crate::flow::shipped_flow("historic"),
            transform: TransformOptions::default(),
            topic_prefix: String::new(),
            max_message_bytes: 1 << 20,
        },
        consumer,
        sink,
        dead_letters,
        handle,
        batch_size: 100,
        read_ahead: 100,
        linger: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
        locked: Default::default(),
        holding_back: false,
    }
}

struct Case {
    name: &'static str,
    input: Vec<Inbound>,
    rejects: &'static [&'static str],
    stored: &'static [&'static str],
    transient: usize,
    locked_calls: usize,
    revoke_at: Option<((i32, i64), i32)>,
    /// Messages per window.
    batch_size: usize,
    /// Messages read ahead of a write.
    read_ahead: usize,
    /// Entity ids written, in order.
    written: &'static [&'static str],
    error_rows: usize,
    /// Dead letters by `ngsiflow.source.offset` header.
    dead_letter_offsets: &'static [&'static str],
    committed: &'static [(i32, i64)],
    replayed: u64,
}

async fn run_case(case: Case) {
    let spec = crate::flow::shipped_flow("historic");
    let status = Arc::new(FlowStatus::default());
    let metrics = Arc::new(Metrics::new(std::slice::from_ref(&spec.name), 10));
    let consumer = FakeConsumer {
        queue: Arc::new(Mutex::new(case.input.into())),
        committed: Arc::default(),
        status: status.clone(),
        revoke_at: case.revoke_at,
    };
    let sink = FakeSink {
        rejects: case.rejects.iter().map(|s| s.to_string()).collect(),
        stored: case.stored.iter().map(|s| s.to_string()).collect(),
        transient: Arc::new(AtomicUsize::new(case.transient)),
        locked_calls: Arc::new(AtomicUsize::new(case.locked_calls)),
        ..FakeSink::default()
    };
    let dead_letters = FakeDeadLetters::default();
    let handle = FlowHandle::new(&spec.name, metrics.clone(), status.clone());
    let mut processor = flow_loop(consumer.clone(), sink.clone(), dead_letters.clone(), handle);
    processor.batch_size = case.batch_size;
    processor.read_ahead = case.read_ahead;
    let cancel = CancellationToken::new();
    let task = tokio::spawn(processor.run(cancel.clone(), Duration::from_secs(1)));
    let want: BTreeMap<i32, i64> = case.committed.iter().copied().collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while *consumer.committed.lock().unwrap() != want {
        assert!(
            std::time::Instant::now() < deadline,
            "{}: committed {:?}, want {want:?}",
            case.name,
            consumer.committed.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cancel.cancel();
    task.await.unwrap();
    let name = case.name;
    assert_eq!(
        *sink.written.lock().unwrap(),
        case.written,
        "{name}: written"
    );
    assert_eq!(
        sink.error_rows.lock().unwrap().len(),
        case.error_rows,
        "{name}: error-log rows"
    );
    let offsets: Vec<String> = dead_letters
        .sent
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| {
            l.headers
                .iter()
                .find(|(k, _)| k == "ngsiflow.source.offset")
                .map(|(_, v)| String::from_utf8_lossy(v).to_string())
        })
        .collect();
    assert_eq!(offsets, case.dead_letter_offsets, "{name}: dead letters");
    let replayed = metrics
        .records
        .with_label_values(&["historic", "duplicate_replayed"])
        .get();
    assert_eq!(replayed, case.replayed, "{name}: replayed");
    assert!(!status.paused.load(Ordering::Relaxed), "{name}: resumed");
}

/// A, C in partition 0 and B, D in partition 1, interleaved.
fn two_partitions() -> Vec<Inbound> {
    vec![
        record(0, 0, &notification(&["A"])),
        record(1, 0, &notification(&["B"])),
        record(0, 1, &notification(&["C"])),
        record(1, 1, &notification(&["D"])),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_writes_logs_dead_letters_and_commits_as_the_table_says() {
    let cases = vec![
        Case {
            name: "a locked table waits while the others are written, then its offset catches up",
            input: vec![
                record(0, 0, &notification(&["L1"])),
                record(0, 1, &notification(&["A"])),
                record(0, 2, &notification(&["B", "L2"])),
                record(0, 3, &notification(&["C"])),
            ],
            rejects: &[],
            stored: &[],
            transient: 0,
            locked_calls: 1,
            revoke_at: None,
            batch_size: 100,
            read_ahead: 100,
            written: &["A", "B", "C", "L1", "L2"],
            error_rows: 0,
            dead_letter_offsets: &[],
            // Held at 0 while L1 waits, then past C (finished in the first window), not just
            // past the last carried message.
            committed: &[(0, 4)],
            replayed: 0,
        },
        Case {
            name: "good records",
            input: vec![
                record(0, 0, &notification(&["A", "B"])),
                record(0, 1, &notification(&["C"])),
            ],
            rejects: &[],
            stored: &[],
            transient: 0,
            locked_calls: 0,
            revoke_at: None,
            batch_size: 100,
            read_ahead: 100,
            written: &["A", "B", "C"],
            error_rows: 0,
            dead_letter_offsets: &[],
            committed: &[(0, 2)],
            replayed: 0,
        },
        Case {
            name: "a message that is not a notification",
            input: vec![
                record(0, 0, "{not json"),
                record(0, 1, &notification(&["A"])),
            ],
            rejects: &[],
            stored: &[],
            transient: 0,
            locked_calls: 0,
            revoke_at: None,
            batch_size: 100,
            read_ahead: 100,
            written: &["A"],
            error_rows: 1,
            dead_letter_offsets: &["0"],
            committed: &[(0, 2)],
            replayed: 0,
        },
        Case {
            name: "a row the database rejects",
            input: vec![
                record(1, 5, &notification(&["A", "R"])),
                record(1, 6, &notification(&["B"])),
            ],
            rejects: &["R"],
            stored: &[],
            transient: 0,
            locked_calls: 0,
            revoke_at: None,
            batch_size: 100,
            read_ahead: 100,
            written: &["A", "B"],
            error_rows: 1,
            dead_letter_offsets: &["5"],
            committed: &[(1, 7)],
            replayed: 0,
        },
        Case {
            name: "an identical replay",
            input: vec![record(0, 0, &notification(&["P", "N"]))],
            rejects: &[],
            stored: &["P"],
            transient: 0,
            locked_calls: 0,
            revoke_at: None,
            batch_size: 100,
            read_ahead: 100,
            written: &["N"],
            error_rows: 0,
            dead_letter_offsets: &[],
            committed: &[(0, 1)],
            replayed: 1,
        },
        Case {
            name: "a partition revoked mid-window",
            input: vec![
                record(0, 0, &notification(&["A"])),
                record(1, 0, &notification(&["B"])),
                record(0, 1, &notification(&["C"])),
            ],
            rejects: &[],
            stored: &[],
            transient: 0,
            locked_calls: 0,
            revoke_at: Some(((0, 1), 1)),
            batch_size: 100,
            read_ahead: 100,
            written: &["A", "C"],
            error_rows: 0,
            dead_letter_offsets: &[],
            committed: &[(0, 2)],
            replayed: 0,
        },
        Case {
            name: "full windows read the next messages ahead, a bad one among them",
            input: vec![
                record(0, 0, &notification(&["A"])),
                record(0, 1, &notification(&["B"])),
                record(0, 2, &notification(&["C"])),
                record(0, 3, "{bad"),
                record(0, 4, &notification(&["D"])),
            ],
            rejects: &[],
            stored: &[],
            transient: 0,
            locked_calls: 0,
            revoke_at: None,
            batch_size: 2,
            read_ahead: 2,
            written: &["A", "B", "C", "D"],
            error_rows: 1,
            dead_letter_offsets: &["3"],
            committed: &[(0, 5)],
            replayed: 0,
        },
        Case {
            // C is read ahead of the first window's write; the rebalance served in that recv
            // takes B out of the window before it is written. D comes after the revocation
            // (from the new assignment) and stays.
            name: "a partition revoked while reading ahead",
            input: two_partitions(),
            rejects: &[],
            stored: &[],
            transient: 0,
            locked_calls: 0,
            revoke_at: Some(((0, 1), 1)),
            batch_size: 2,
            read_ahead: 2,
            written: &["A", "C", "D"],
            error_rows: 0,
            dead_letter_offsets: &[],
            committed: &[(0, 2), (1, 2)],
            replayed: 0,
        },
        Case {
            // The same input without read-ahead: B is written before C's recv serves the
            // revocation.
            name: "a partition revoked after a write, without read-ahead",
            input: two_partitions(),
            rejects: &[],
            stored: &[],
            transient: 0,
            locked_calls: 0,
            revoke_at: Some(((0, 1), 1)),
            batch_size: 2,
            read_ahead: 0,
            written: &["A", "B", "C", "D"],
            error_rows: 0,
            dead_letter_offsets: &[],
            committed: &[(0, 2), (1, 2)],
            replayed: 0,
        },
        Case {
            name: "the database down for two attempts",
            input: vec![record(2, 40, &notification(&["A"])), record(2, 41, "{bad")],
            rejects: &[],
            stored: &[],
            transient: 2,
            locked_calls: 0,
            revoke_at: None,
            batch_size: 100,
            read_ahead: 100,
            written: &["A"],
            error_rows: 1,
            dead_letter_offsets: &["41"],
            committed: &[(2, 42)],
            replayed: 0,
        },
    ];
    for case in cases {
        run_case(case).await;
    }
}

/// The loop with the real dead-letter producer on librdkafka's in-process mock cluster: a bad
/// record too large for a dead-letter copy goes without its value, the other copies of the
/// window still go, and the window commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_dead_letter_goes_without_its_value_and_the_window_commits() {
    use crate::kafka::dead_letter::{headers as dlh, DeadLetterProducer};
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, Message};

    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    cluster.create_topic("dl", 1, 1).unwrap();
    let base = crate::kafka::client_config(
        &cluster.bootstrap_servers(),
        &[("message.max.bytes".into(), "20000".into())],
    );
    let spec = crate::flow::shipped_flow("historic");
    let status = Arc::new(FlowStatus::default());
    let metrics = Arc::new(Metrics::new(std::slice::from_ref(&spec.name), 10));
    let huge = format!("{{not json {}", "x".repeat(50_000));
    let consumer = FakeConsumer {
        queue: Arc::new(Mutex::new(
            vec![
                record(0, 0, "{bad one"),
                record(0, 1, &huge),
                record(0, 2, "{bad three"),
                record(0, 3, &notification(&["A"])),
            ]
            .into(),
        )),
        committed: Arc::default(),
        status: status.clone(),
        revoke_at: None,
    };
    let sink = FakeSink::default();
    let handle = FlowHandle::new(&spec.name, metrics.clone(), status);
    let dead_letters = Arc::new(DeadLetterProducer::new(&base, "dl").unwrap());
    let processor = flow_loop(consumer.clone(), sink.clone(), dead_letters, handle);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(processor.run(cancel.clone(), Duration::from_secs(1)));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while consumer.committed.lock().unwrap().get(&0) != Some(&4) {
        assert!(std::time::Instant::now() < deadline, "window not committed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel();
    task.await.unwrap();
    assert_eq!(*sink.written.lock().unwrap(), ["A"]);

    let reader: StreamConsumer = crate::kafka::client_config(&cluster.bootstrap_servers(), &[])
        .set("group.id", "check")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader.subscribe(&["dl"]).unwrap();
    let mut copies = Vec::new();
    while copies.len() < 3 {
        let m = tokio::time::timeout(Duration::from_secs(20), reader.recv())
            .await
            .expect("three dead letters")
            .unwrap();
        let header = |name: &str| {
            m.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == name)
                    .map(|h| String::from_utf8_lossy(h.value.unwrap_or_default()).to_string())
            })
        };
        copies.push((
            header(dlh::OFFSET).unwrap(),
            m.payload().map(<[u8]>::len),
            header(dlh::VALUE_OMITTED).is_some(),
        ));
    }
    copies.sort();
    assert_eq!(
        copies,
        [
            ("0".to_string(), Some(8), false),
            ("1".to_string(), None, true),
            ("2".to_string(), Some(10), false),
        ]
    );
}
