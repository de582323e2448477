//! Wiring and shutdown (does I/O): builds metrics, the dead-letter producer, one consumer and
//! sink per flow and the admin server; SIGINT/SIGTERM → one cancellation token → processors stop
//! fetching, flush, commit; the admin server closes last.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use rdkafka::consumer::StreamConsumer;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::admin::{self, AdminState, LogControl};
use crate::config::Config;
use crate::flow::transform::TransformOptions;
use crate::kafka::consumer::FlowConsumer;
use crate::kafka::dead_letter::DeadLetterProducer;
use crate::kafka::{client_config, ensure_topics, FlowContext, FlowStatus};
use crate::metrics::Metrics;
use crate::pipeline::handle::FlowHandle;
use crate::pipeline::intake::IntakeSettings;
use crate::pipeline::FlowProcessor;
use crate::postgis::Sink;
use crate::route::TableRef;

/// Partitions given to topics the worker creates (input topics, dead-letter topic).
pub const DEFAULT_TOPIC_PARTITIONS: i32 = 3;

/// How long the final window may wait for the database at shutdown before it is left
/// uncommitted (it is then re-read at the next start).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Fatal start-up errors (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A Kafka client could not be created.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The admin server could not bind.
    #[error("admin server: cannot bind {addr}: {source}")]
    Bind {
        /// Address.
        addr: std::net::SocketAddr,
        /// Error.
        source: std::io::Error,
    },
    /// A flow's topic cannot be subscribed (bad topic name, broker config).
    #[error("cannot subscribe to {topic}: {source}")]
    Subscribe {
        /// Topic.
        topic: String,
        /// Kafka error.
        source: rdkafka::error::KafkaError,
    },
    /// A flow ended (panicked or returned) before shutdown was requested.
    #[error("a flow stopped unexpectedly (see the log)")]
    FlowStopped,
}

/// Log level control over a tracing reload handle.
pub struct ReloadLog {
    handle: reload::Handle<EnvFilter, Registry>,
    level: Mutex<String>,
}

impl ReloadLog {
    /// Wraps `handle`, whose filter is currently `level`.
    pub fn new(handle: reload::Handle<EnvFilter, Registry>, level: &str) -> Self {
        Self {
            handle,
            level: Mutex::new(level.to_string()),
        }
    }
}

impl LogControl for ReloadLog {
    fn level(&self) -> String {
        self.level.lock().expect("log lock").clone()
    }

    fn set_level(&self, level: &str) -> Result<String, String> {
        let l = level.trim().to_lowercase();
        if !["error", "warn", "info", "debug", "trace"].contains(&l.as_str()) {
            return Err(format!(
                "unknown level {level:?}: use error, warn, info, debug or trace"
            ));
        }
        self.handle
            .reload(EnvFilter::new(filter_directive(&l)))
            .map_err(|e| e.to_string())?;
        *self.level.lock().expect("log lock") = l.clone();
        tracing::warn!(level = %l, "log level changed");
        Ok(l)
    }
}

/// The tracing filter for a level: ngsiflow at that level, dependencies no noisier than `warn`
/// unless the level is itself quieter.
pub fn filter_directive(level: &str) -> String {
    if level.contains('=') {
        return level.to_string();
    }
    match level {
        "error" | "warn" | "off" => level.to_string(),
        other => format!("warn,ngsiflow={other}"),
    }
}

/// Runs the worker until SIGINT/SIGTERM or `cancel`.
///
/// # Errors
/// [`AppError`] when a Kafka client cannot be created, the admin address cannot be bound or a
/// flow cannot subscribe.
pub async fn run(
    config: Config,
    log: Arc<dyn LogControl>,
    cancel: CancellationToken,
) -> Result<(), AppError> {
    // Signal handlers first: a SIGTERM during start-up must also end in an orderly exit.
    let signals = cancel.clone();
    let mut shutdown = Signals::install();
    tokio::spawn(async move {
        shutdown.recv().await;
        tracing::info!("shutdown requested");
        signals.cancel();
    });
    let config = Arc::new(config);
    let args = &config.args;
    let names: Vec<String> = config.flows.iter().map(|f| f.name.clone()).collect();
    let metrics = Arc::new(Metrics::new(&names, args.max_tenant_labels));
    let base = client_config(&args.brokers, &config.kafka_settings);

    let mut topics: Vec<String> = config.flows.iter().map(|f| f.topic.clone()).collect();
    topics.push(config.dead_letter_topic.clone());
    if let Err(e) = ensure_topics(&base, &topics, DEFAULT_TOPIC_PARTITIONS).await {
        tracing::warn!(error = %e, "could not create topics; assuming they exist");
    }
    let dead_letters = Arc::new(DeadLetterProducer::new(&base, &config.dead_letter_topic)?);

    let mut processors = Vec::new();
    let mut statuses = Vec::new();
    for spec in &config.flows {
        let status = Arc::new(FlowStatus::default());
        statuses.push((spec.name.clone(), status.clone()));
        let c = crate::kafka::consumer::consumer_config(
            &base,
            spec,
            args.kafka_stats_ms,
            &config.kafka_settings,
        );
        let handle = FlowHandle::new(&spec.name, metrics.clone(), status);
        let consumer: StreamConsumer<FlowContext> =
            c.create_with_context(FlowContext::new(handle.clone()))?;
        processors.push(FlowProcessor {
            settings: IntakeSettings {
                spec: spec.clone(),
                transform: TransformOptions {
                    default_datamodel: args.default_datamodel,
                    srid: args.srid,
                    tenants: config.tenants.clone(),
                },
                topic_prefix: args.topic_prefix.clone(),
                max_message_bytes: args.max_message_bytes as usize,
            },
            consumer: subscribed(consumer, &spec.topic)?,
            sink: Sink::new(
                config.pg.clone(),
                Duration::from_millis(args.db_timeout_ms),
                TableRef::parse_qualified(&args.fallback_error_log)
                    .expect("validated when the flags were parsed"),
                Duration::from_millis(args.lock_timeout_ms),
            )
            .with_tenants(config.tenants.clone()),
            dead_letters: dead_letters.clone(),
            handle,
            batch_size: args.batch_size as usize,
            read_ahead: args.read_ahead as usize,
            linger: Duration::from_millis(args.linger_ms),
            max_backoff: Duration::from_millis(args.retry_max_backoff_ms),
            locked: Default::default(),
            holding_back: false,
        });
    }

    if args.error_log_retention.is_some() || args.error_log_max_rows.is_some() {
        let policy = crate::postgis::retention::RetentionPolicy {
            max_age_days: args.error_log_retention,
            max_rows: args.error_log_max_rows,
            fallback: TableRef::parse_qualified(&args.fallback_error_log)
                .expect("validated when the flags were parsed"),
        };
        let m = metrics.clone();
        tokio::spawn(crate::postgis::retention::run(
            config.pg.clone(),
            policy,
            cancel.clone(),
            move |p| {
                m.error_log_pruned
                    .with_label_values(&["age"])
                    .inc_by(p.by_age);
                m.error_log_pruned
                    .with_label_values(&["cap"])
                    .inc_by(p.by_cap);
            },
        ));
    }

    let admin_cancel = CancellationToken::new();
    let state = Arc::new(AdminState {
        metrics: metrics.clone(),
        config: config.clone(),
        flows: statuses,
        log,
        started: Utc::now(),
        addr: Mutex::new(None),
    });
    admin::serve(args.admin_addr, state, admin_cancel.clone())
        .await
        .map_err(|source| AppError::Bind {
            addr: args.admin_addr,
            source,
        })?;

    // Every flow runs until shutdown; the first one to stop for any other reason (error or
    // panic) stops them all, so the process exits and its supervisor restarts it.
    let mut flows = tokio::task::JoinSet::new();
    for p in processors {
        flows.spawn(p.run(cancel.clone(), SHUTDOWN_GRACE));
    }
    let mut first_error = None;
    while let Some(done) = flows.join_next().await {
        match done {
            Ok(()) => {
                if !cancel.is_cancelled() {
                    tracing::error!("a flow stopped unexpectedly; stopping the worker");
                    first_error.get_or_insert(AppError::FlowStopped);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "flow task panicked; stopping the worker");
                first_error.get_or_insert(AppError::FlowStopped);
            }
        }
        cancel.cancel();
    }
    admin_cancel.cancel();
    tracing::info!("ngsiflow stopped");
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The flow's consumer of `topic`, subscribed.
fn subscribed(
    consumer: StreamConsumer<FlowContext>,
    topic: &str,
) -> Result<FlowConsumer, AppError> {
    let c = FlowConsumer::new(consumer, topic);
    c.subscribe().map_err(|source| AppError::Subscribe {
        topic: topic.to_string(),
        source,
    })?;
    Ok(c)
}

/// SIGINT and SIGTERM listeners, registered as soon as they are created.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        Self {
            int: signal(SignalKind::interrupt()).expect("SIGINT handler"),
            term: signal(SignalKind::terminate()).expect("SIGTERM handler"),
        }
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}
