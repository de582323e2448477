//! Kafka side of the worker (does I/O; the only module that uses rdkafka): client settings,
//! topic creation, the per-flow consumer with its rebalance and statistics hooks (converting
//! records to the pipeline's own type at the edge), and the dead-letter producer.

pub(crate) mod consumer;
pub mod dead_letter;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::TopicPartitionList;

use crate::pipeline::handle::FlowHandle;

/// The librdkafka properties for the TLS and SASL flags (`security.protocol`, `sasl.*`,
/// `ssl.*`), the password read from its file when one is named. SASL needs a user name and a
/// password; a mechanism needs a `sasl_*` protocol.
///
/// # Errors
/// A message naming the flag that is missing, inconsistent or unreadable.
pub fn security_settings(
    args: &crate::config::KafkaSecurityArgs,
) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let protocol = args
        .kafka_security_protocol
        .as_deref()
        .map(str::to_ascii_lowercase);
    let sasl = matches!(protocol.as_deref(), Some("sasl_plaintext" | "sasl_ssl"));
    if let Some(p) = &protocol {
        out.push(("security.protocol".into(), p.clone()));
    }
    let password = match (&args.kafka_sasl_password, &args.kafka_sasl_password_file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(f)) => Some(crate::config::read_secret_file(
            "--kafka-sasl-password-file",
            f,
        )?),
        (None, None) => None,
    };
    if sasl {
        let mechanism = args
            .kafka_sasl_mechanism
            .as_deref()
            .map_or("PLAIN".to_string(), str::to_ascii_uppercase);
        let user = args
            .kafka_sasl_username
            .clone()
            .ok_or("--kafka-sasl-username is required with --kafka-security-protocol sasl_*")?;
        let password = password.ok_or(
            "a SASL password is required (--kafka-sasl-password-file or NGSIFLOW_KAFKA_SASL_PASSWORD)",
        )?;
        out.push(("sasl.mechanism".into(), mechanism));
        out.push(("sasl.username".into(), user));
        out.push(("sasl.password".into(), password));
    } else if args.kafka_sasl_mechanism.is_some() || args.kafka_sasl_username.is_some() {
        return Err(
            "--kafka-sasl-mechanism and --kafka-sasl-username need --kafka-security-protocol sasl_ssl or sasl_plaintext"
                .into(),
        );
    }
    for (key, path) in [
        ("ssl.ca.location", &args.kafka_ssl_ca_location),
        (
            "ssl.certificate.location",
            &args.kafka_ssl_certificate_location,
        ),
        ("ssl.key.location", &args.kafka_ssl_key_location),
    ] {
        if let Some(p) = path {
            if !p.is_file() {
                return Err(format!("{key}: {} is not a readable file", p.display()));
            }
            out.push((key.into(), p.display().to_string()));
        }
    }
    Ok(out)
}

/// Base librdkafka settings: bootstrap servers plus `settings` (security, then `-X` overrides).
pub fn client_config(brokers: &str, overrides: &[(String, String)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in overrides {
        c.set(k, v);
    }
    c
}

/// The settings of `ngsiflow produce`'s producer: every record acknowledged by all in-sync
/// replicas, small batches lingering 5 ms, a deep local queue for fast load generation; then
/// `settings` (security and `-X`).
pub fn load_producer_config(base: &ClientConfig, settings: &[(String, String)]) -> ClientConfig {
    let mut c = base.clone();
    c.set("acks", "all")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "500000");
    for (k, v) in settings {
        c.set(k, v);
    }
    c
}

/// Live state of one flow, shared with the admin server.
#[derive(Debug, Default)]
pub struct FlowStatus {
    /// Partitions currently assigned to the flow's consumer.
    pub assigned: AtomicI64,
    /// True while the flow waits for the database.
    pub paused: AtomicBool,
    /// True once the processor loop runs (set false when it ends).
    pub running: AtomicBool,
    /// Partitions revoked since the processor last looked: their uncommitted messages are
    /// dropped from the window, because their new owner re-reads them from the committed offset.
    pub revoked: std::sync::Mutex<Vec<i32>>,
    /// Unix time in milliseconds at which the consumer last received anything from a connected
    /// broker, from librdkafka's statistics (`brokers[].rxidle` of brokers in state `UP`,
    /// subtracted from the time the statistics arrived); -1 when no broker connection was up.
    /// A healthy consumer hears from the broker at every fetch long-poll (`fetch.wait.max.ms`,
    /// 100 ms) and group heartbeat (2 s), paused or not. Statistics arrive while the flow polls
    /// its consumer, so a flow blocked in a commit to a frozen broker shows as silent too.
    pub broker_heard_ms: AtomicI64,
    /// Unix time in milliseconds of the last offset commit that failed, 0 once one succeeds.
    pub commit_failed_ms: AtomicI64,
    /// Unix time in milliseconds at which the window write in progress started; 0 when none.
    /// A write held by a lock or a slow statement shows here (and in
    /// `ngsiflow_window_write_age_seconds`) before its timeout fires.
    pub write_started_ms: AtomicI64,
}

/// How long a flow's consumer may hear nothing from any broker before `/ready` reports that it
/// cannot reach the broker, at least (a frozen or partitioned broker keeps its TCP connections
/// open, so librdkafka alone would notice only after `socket.timeout.ms`, 60 s): 10 s, or three
/// statistics intervals when those are longer (silence is only seen through statistics).
pub fn broker_silence_limit_ms(stats_interval_ms: u64) -> i64 {
    (3 * stats_interval_ms as i64).max(10_000)
}

/// How long a failed offset commit keeps `/ready` at 503 unless one succeeds first: an idle
/// flow has nothing to commit again, and a failure during a rebalance heals by itself.
const COMMIT_FAILURE_SHOWN_MS: i64 = 60_000;

impl FlowStatus {
    /// Partitions assigned now.
    pub fn assigned(&self) -> i64 {
        self.assigned.load(Ordering::Relaxed)
    }

    /// Why the flow cannot reach the broker now (`now_ms`, unix milliseconds), if it cannot.
    /// Not judged while a window write is in progress: the flow does not poll its consumer then,
    /// and the write's age says why.
    pub fn broker_problem(&self, now_ms: i64, silence_limit_ms: i64) -> Option<String> {
        if self.write_started_ms.load(Ordering::Relaxed) != 0 {
            return None;
        }
        let failed = self.commit_failed_ms.load(Ordering::Relaxed);
        if failed != 0 && now_ms - failed < COMMIT_FAILURE_SHOWN_MS {
            return Some("cannot commit offsets".into());
        }
        match self.broker_heard_ms.load(Ordering::Relaxed) {
            0 => None,
            -1 => Some("has no broker connection up".into()),
            t if now_ms - t > silence_limit_ms => Some(format!(
                "has heard nothing from the broker for {} s",
                (now_ms - t) / 1000
            )),
            _ => None,
        }
    }

    /// Seconds the window write in progress has taken so far (0 when none).
    pub fn write_age_seconds(&self, now_ms: i64) -> f64 {
        match self.write_started_ms.load(Ordering::Relaxed) {
            0 => 0.0,
            t => (now_ms - t).max(0) as f64 / 1000.0,
        }
    }
}

/// Consumer context: keeps the assignment count and the lag gauge up to date.
pub struct FlowContext {
    handle: FlowHandle,
    /// `(topic, partition)` assigned now. A statistics event computed before a rebalance can
    /// arrive after it; lag is exported only for what is owned, so a revoked partition's series
    /// does not come back.
    owned: std::sync::Mutex<std::collections::HashSet<(String, i32)>>,
}

impl FlowContext {
    /// A context reporting through `handle`.
    pub(crate) fn new(handle: FlowHandle) -> Self {
        Self {
            handle,
            owned: Default::default(),
        }
    }
}

impl ClientContext for FlowContext {
    fn stats(&self, statistics: Statistics) {
        // The statistics' own time (seconds): an event served late must not look fresh.
        let now_ms = statistics.time * 1000;
        let heard = statistics
            .brokers
            .values()
            .filter(|b| b.state == "UP" && b.rxidle >= 0)
            .map(|b| now_ms - b.rxidle / 1000)
            .max();
        self.handle.set_broker_heard(heard);
        let Ok(owned) = self.owned.lock() else {
            return;
        };
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // -1 is librdkafka's internal "unassigned" partition; only partitions this
                // consumer owns and has a lag for are exported.
                if !owned.contains(&(topic.clone(), *partition)) || !p.desired {
                    continue;
                }
                // librdkafka reports -1 until an offset is committed; a partition that never
                // held a message has nothing to lag behind.
                let lag = match p.consumer_lag {
                    l if l >= 0 => l,
                    _ if p.hi_offset == 0 => 0,
                    _ => continue,
                };
                self.handle.set_lag(topic, *partition, lag);
            }
        }
    }
}

impl ConsumerContext for FlowContext {
    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = &result {
            // After a rebalance the partition may belong to another member, which re-reads
            // from the last committed offset: at least once still holds.
            tracing::warn!(flow = %self.handle.flow(), error = %e, "offset commit failed");
        }
        self.handle.set_commit_failing(result.is_err());
    }

    fn post_rebalance(&self, _base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let flow = self.handle.flow();
        match rebalance {
            Rebalance::Assign(tpl) => {
                let assigned = tpl.elements();
                if let Ok(mut owned) = self.owned.lock() {
                    owned.extend(
                        assigned
                            .iter()
                            .map(|e| (e.topic().to_string(), e.partition())),
                    );
                }
                self.handle.set_assigned(assigned.len() as i64);
                tracing::info!(flow, partitions = assigned.len(), "partitions assigned");
            }
            Rebalance::Revoke(tpl) => {
                let revoked: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                if let Ok(mut owned) = self.owned.lock() {
                    for r in &revoked {
                        owned.remove(r);
                    }
                }
                self.handle.revoked(&revoked);
                tracing::info!(flow, "partitions revoked");
            }
            Rebalance::Error(e) => tracing::warn!(flow, error = %e, "rebalance error"),
        }
    }
}

/// Creates the topics that do not exist yet (`partitions` each, replication 1); existing
/// topics are left alone.
///
/// # Errors
/// The broker's error for anything but "topic already exists".
pub async fn ensure_topics(
    config: &ClientConfig,
    topics: &[String],
    partitions: i32,
) -> Result<(), KafkaError> {
    if topics.is_empty() || partitions <= 0 {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = config.create()?;
    // Flows may share a topic (fan-out: one Orion subscription, several flows), and a topic
    // named twice in one CreateTopics request crashes librdkafka's admin client (SIGSEGV, seen
    // with two flow files reading one topic).
    let mut unique: Vec<&String> = topics.iter().collect();
    unique.sort_unstable();
    unique.dedup();
    let new: Vec<NewTopic<'_>> = unique
        .into_iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    // Both timeouts: the request one also bounds a broker that cannot be reached or refuses
    // the client (TLS or SASL failure), which would otherwise wait for librdkafka's 60 s.
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::AdminOp(code)).inspect_err(|_| {
                    tracing::error!(%topic, ?code, "cannot create topic");
                })
            }
        }
    }
    Ok(())
}
