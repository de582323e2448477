//! Kafka side of the worker (does I/O; the only module that uses rdkafka): client settings,
//! topic creation, the per-flow consumer with its rebalance and statistics hooks, the
//! dead-letter producer and the flow processor loop.

pub mod dead_letter;
pub mod processor;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;

use crate::metrics::Metrics;

/// Base librdkafka settings: bootstrap servers plus user overrides (`-X key=value`).
pub fn client_config(brokers: &str, overrides: &[(String, String)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in overrides {
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
}

impl FlowStatus {
    /// Partitions assigned now.
    pub fn assigned(&self) -> i64 {
        self.assigned.load(Ordering::Relaxed)
    }
}

/// Consumer context: keeps the assignment count and the lag gauge up to date.
pub struct FlowContext {
    flow: String,
    metrics: Arc<Metrics>,
    status: Arc<FlowStatus>,
}

impl FlowContext {
    /// A context for `flow`.
    pub fn new(flow: &str, metrics: Arc<Metrics>, status: Arc<FlowStatus>) -> Self {
        Self {
            flow: flow.to_string(),
            metrics,
            status,
        }
    }
}

impl ClientContext for FlowContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // -1 is librdkafka's internal "unassigned" partition; only partitions this
                // consumer owns and has a lag for are exported.
                if *partition < 0 || !p.desired {
                    continue;
                }
                // librdkafka reports -1 until an offset is committed; a partition that never
                // held a message has nothing to lag behind.
                let lag = match p.consumer_lag {
                    l if l >= 0 => l,
                    _ if p.hi_offset == 0 => 0,
                    _ => continue,
                };
                self.metrics
                    .consumer_lag
                    .with_label_values(&[&self.flow, topic, &partition.to_string()])
                    .set(lag);
            }
        }
    }
}

impl ConsumerContext for FlowContext {
    fn post_rebalance(&self, _base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let n = tpl.count() as i64;
                self.status.assigned.store(n, Ordering::Relaxed);
                self.metrics
                    .partitions_assigned
                    .with_label_values(&[&self.flow])
                    .set(n);
                tracing::info!(flow = %self.flow, partitions = n, "partitions assigned");
            }
            Rebalance::Revoke(tpl) => {
                if let Ok(mut r) = self.status.revoked.lock() {
                    r.extend(tpl.elements().iter().map(|e| e.partition()));
                }
                for e in tpl.elements() {
                    let _ = self.metrics.consumer_lag.remove_label_values(&[
                        &self.flow,
                        e.topic(),
                        &e.partition().to_string(),
                    ]);
                }
                self.status.assigned.store(0, Ordering::Relaxed);
                self.metrics
                    .partitions_assigned
                    .with_label_values(&[&self.flow])
                    .set(0);
                tracing::info!(flow = %self.flow, "partitions revoked");
            }
            Rebalance::Error(e) => tracing::warn!(flow = %self.flow, error = %e, "rebalance error"),
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
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
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
