//! A flow's consumer at the edge (does I/O): rdkafka messages become [`Inbound`] records here,
//! and offsets, pauses and subscriptions go back through here; the pipeline sees no rdkafka
//! type.

use std::collections::BTreeMap;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::FlowContext;
use crate::pipeline::inbound::{Inbound, RecordHeaders};
use crate::pipeline::ports::{OffsetCommitter, Source};

/// The consumer settings of a flow: its group, manual offset commits, the earliest offset for
/// a new group, statistics every `stats_ms` (lag gauge), a bounded prefetch, a 6 s session
/// timeout; then `settings`
/// (security and `-X`), except that offsets stay manual whatever `-X` says.
pub(crate) fn consumer_config(
    base: &ClientConfig,
    spec: &crate::flow::FlowSpec,
    stats_ms: u64,
    settings: &[(String, String)],
) -> ClientConfig {
    let mut c = base.clone();
    c.set("group.id", &spec.group)
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", stats_ms.to_string())
        .set("topic.metadata.refresh.interval.ms", "10000")
        // Bounded prefetch per flow (librdkafka's default is 64 MiB per consumer), which
        // librdkafka's own bookkeeping about doubles. A queue that is full postpones the next
        // fetch by fetch.queue.backoff.ms, 1 s by default, which starved the flows of a small
        // queue; at 10 ms, paired benchmark drains kept their rate (54.8k vs 53.9k
        // notifications/s) at 121 instead of 196 MiB peak RSS with 2 MiB. Since the flows read
        // a window ahead (--read-ahead), which empties the queue while the database writes,
        // 512 KiB (about 1 100 of the benchmark's notifications) kept the rate too: paired
        // drains 2 MiB / 1 MiB / 512 KiB gave 74.2k / 70.5k / 81.1k and 73.7k / 67.2k / 78.7k
        // notifications/s at 106 / 90 / 85 and 106 / 92 / 88 MiB; 256 KiB cost worker CPU
        // (16.0-16.1 against 13.9-14.6 us). -X changes both.
        .set("queued.max.messages.kbytes", "512")
        .set("fetch.queue.backoff.ms", "10")
        // librdkafka's defaults (a fetch answered as soon as 1 byte is there) made the broker
        // answer one tiny fetch after another under steady production: at 12 000
        // notifications/s it spent 65-75 us of CPU per notification, more than the worker
        // (35 us) or PostgreSQL (39 us), and the two shared cores queued for seconds (p99 of
        // notification-to-commit 1-2.5 s). Waiting for 16 KiB or 100 ms per fetch cut the
        // broker to 24 us and the p99 to about 220 ms at that rate; at 1 000/s the p99 went from
        // about 100 to 200 ms, the price at low rates.
        .set("fetch.min.bytes", "16384")
        .set("fetch.wait.max.ms", "100")
        // A killed worker's partitions move after the session times out: Kafka's default of
        // 45 s would stall them that long when the worker is restarted (or a member dies).
        // 6 s is the broker's default minimum (group.min.session.timeout.ms); librdkafka
        // heartbeats from its own thread every 2 s, so a busy flow does not miss them.
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "2000")
        .set("client.id", format!("ngsiflow-{}", spec.name));
    for (k, v) in settings {
        c.set(k, v);
    }
    // Offsets are committed by the pipeline, only after the window is durable.
    c.set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    c
}

/// One flow's consumer of one topic.
pub(crate) struct FlowConsumer {
    consumer: StreamConsumer<FlowContext>,
    topic: String,
}

impl FlowConsumer {
    /// Wraps `consumer`, which reads `topic`.
    pub(crate) fn new(consumer: StreamConsumer<FlowContext>, topic: &str) -> Self {
        Self {
            consumer,
            topic: topic.to_string(),
        }
    }

    /// Subscribes to the topic (the group assigns partitions).
    pub(crate) fn subscribe(&self) -> Result<(), KafkaError> {
        self.consumer.subscribe(&[&self.topic])
    }
}

/// Converts an rdkafka message into an [`Inbound`] (payload, key and headers copied once).
fn inbound(m: &BorrowedMessage<'_>) -> Inbound {
    Inbound {
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec),
        timestamp_ms: m.timestamp().to_millis(),
        headers: headers(m),
    }
}

/// rdkafka panics on a header name that is not UTF-8 (it unwraps the conversion); such a
/// record is bad input, so the panic is contained here and reported as an error instead of
/// killing the flow.
fn headers(m: &BorrowedMessage<'_>) -> Result<RecordHeaders, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let Some(h) = m.headers() else {
            return RecordHeaders::default();
        };
        let bytes = h
            .iter()
            .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
            .sum();
        let mut out = RecordHeaders::with_capacity(h.count(), bytes);
        for h in h.iter() {
            out.push(h.key, h.value.unwrap_or_default());
        }
        out
    }))
    .map_err(|_| "record has a header whose name is not UTF-8".to_string())
}

impl Source for FlowConsumer {
    /// The next record. Rebalances are served inside this call.
    async fn recv(&self) -> Result<Inbound, String> {
        self.consumer
            .recv()
            .await
            .map(|m| inbound(&m))
            .map_err(|e| e.to_string())
    }

    /// Pauses every assigned partition (fetching stops; the group membership stays).
    fn pause_all(&self) {
        if let Ok(a) = self.consumer.assignment() {
            let _ = self.consumer.pause(&a);
        }
    }

    /// Resumes every assigned partition.
    fn resume_all(&self) {
        if let Ok(a) = self.consumer.assignment() {
            let _ = self.consumer.resume(&a);
        }
    }
}

impl OffsetCommitter for FlowConsumer {
    /// Commits `next offset` per partition asynchronously: the broker's answer reaches
    /// [`crate::kafka::FlowContext`]'s commit callback (readiness), and closing the consumer
    /// waits for commits in flight. Not synchronously: a synchronous commit to a coordinator
    /// that went away waits for the group to re-form, which needs this very thread to poll the
    /// consumer — a frozen broker left the flow blocked there for good.
    fn commit(&self, offsets: &BTreeMap<i32, i64>) -> Result<(), String> {
        let mut tpl = TopicPartitionList::new();
        for (&p, &o) in offsets {
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(o))
                .map_err(|e| e.to_string())?;
        }
        self.consumer
            .commit(&tpl, CommitMode::Async)
            .map_err(|e| e.to_string())
    }
}
