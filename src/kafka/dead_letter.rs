//! Dead-letter producer: copies of failed records with headers saying flow, error and source
//! offset (does I/O).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use backon::BackoffBuilder;
use futures::channel::oneshot;
use rdkafka::config::{ClientConfig, FromClientConfigAndContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use tokio_util::sync::CancellationToken;

/// Header names added to a dead-letter copy (the original record's headers are kept too).
pub mod headers {
    /// Flow that failed the record.
    pub const FLOW: &str = "ngsiflow.flow";
    /// The error, as written in the error log.
    pub const ERROR: &str = "ngsiflow.error";
    /// Source topic.
    pub const TOPIC: &str = "ngsiflow.source.topic";
    /// Source partition.
    pub const PARTITION: &str = "ngsiflow.source.partition";
    /// Source offset.
    pub const OFFSET: &str = "ngsiflow.source.offset";
    /// Index of the failed entity in the notification's `data` (absent for whole-message
    /// failures).
    pub const ENTITY_INDEX: &str = "ngsiflow.entity.index";
    /// Present when the copy carries no value because it exceeded the broker's size limit.
    pub const VALUE_OMITTED: &str = "ngsiflow.value.omitted";
}

/// One dead-letter copy.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Value: the original record (the notification reduced to the failed entity, or the
    /// original bytes when the whole message failed).
    pub value: Option<Vec<u8>>,
    /// Key of the original record.
    pub key: Option<Vec<u8>>,
    /// Original headers followed by the `ngsiflow.*` ones.
    pub headers: Vec<(String, Vec<u8>)>,
}

fn too_large(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize)
    )
}

/// Hands each copy's delivery report (librdkafka's acknowledgement) to the task awaiting it.
struct Acks;

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = Box<oneshot::Sender<Result<(), KafkaError>>>;

    fn delivery(&self, report: &DeliveryResult<'_>, ack: Self::DeliveryOpaque) {
        // The awaiting task may be gone (cancelled at shutdown); the report is then moot.
        let _ = ack.send(report.as_ref().map(|_| ()).map_err(|(e, _)| e.clone()));
    }
}

/// How long the polling thread waits for delivery reports per call. The extra 20 µs matter:
/// rdkafka 0.39's `BaseProducer::poll` waits in whole milliseconds, rounding the time left
/// down, then polls without waiting until its deadline passes, so a round 100 ms spins for up
/// to a millisecond per call. That is what `FutureProducer`'s own thread does: 0.9 % of a core
/// on an idle worker (180 ms of that thread's CPU in 20 s, measured 2026-12-03). With the
/// deadline just past a whole millisecond the wait itself outlasts it.
const POLL: Duration = Duration::from_micros(100_020);

/// Sends dead-letter copies and waits for the broker's acknowledgement.
pub struct DeadLetterProducer {
    producer: Arc<BaseProducer<Acks>>,
    topic: String,
    /// Serves delivery reports until `stop` is set (on drop).
    poller: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl DeadLetterProducer {
    /// A producer for `topic` (idempotent, acks=all).
    ///
    /// # Errors
    /// librdkafka's configuration error.
    pub fn new(base: &ClientConfig, topic: &str) -> Result<Self, KafkaError> {
        let mut c = base.clone();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "30000")
            .set("linger.ms", "5");
        let producer = Arc::new(BaseProducer::from_config_and_context(&c, Acks)?);
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let (producer, stop) = (Arc::clone(&producer), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("dead-letter acks".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        producer.poll(POLL);
                    }
                })
                .map_err(|e| KafkaError::ClientCreation(format!("dead-letter poller: {e}")))?
        };
        Ok(Self {
            producer,
            topic: topic.to_string(),
            poller: Some(poller),
            stop,
        })
    }

    /// Sends every copy and waits until the broker acknowledged all of them. The copies are
    /// enqueued together and their acknowledgements awaited together (one round trip per window,
    /// not per copy); failed ones are sent again with capped backoff. A copy the broker refuses
    /// as too large is sent once more without its value (header `ngsiflow.value.omitted`), and
    /// the other copies of the call are still sent.
    ///
    /// # Errors
    /// The last Kafka error when `cancel` fires before every copy was acknowledged; the caller
    /// then must not commit the source offsets.
    pub async fn send_all(
        &self,
        letters: &[DeadLetter],
        cancel: &CancellationToken,
    ) -> Result<(), KafkaError> {
        let mut backoff = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(10))
            .without_max_times()
            .build();
        // (index into `letters`, send without the value)
        let mut pending: Vec<(usize, bool)> = (0..letters.len()).map(|i| (i, false)).collect();
        while !pending.is_empty() {
            let sends = pending
                .iter()
                .map(|&(i, slim)| self.send_one(&letters[i], slim));
            let results = futures::future::join_all(sends).await;
            let mut again = Vec::new();
            let mut last_error = None;
            for (&(i, slim), result) in pending.iter().zip(results) {
                match result {
                    Ok(()) => {}
                    Err(e) if too_large(&e) && !slim && letters[i].value.is_some() => {
                        // Retrying cannot help: send the copy without its value, saying why; the
                        // error log row and the source offset still identify the record.
                        tracing::warn!(error = %e, topic = %self.topic, "dead-letter copy too large; sending it without the value");
                        again.push((i, true));
                    }
                    Err(e) => {
                        again.push((i, slim));
                        last_error = Some(e);
                    }
                }
            }
            pending = again;
            if let Some(e) = last_error {
                tracing::warn!(error = %e, topic = %self.topic, copies = pending.len(), "dead-letter send failed, retrying");
                let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Sends one copy (without its value when `slim`) and waits for its acknowledgement.
    async fn send_one(&self, letter: &DeadLetter, slim: bool) -> Result<(), KafkaError> {
        let mut h = OwnedHeaders::new_with_capacity(letter.headers.len() + 1);
        for (k, v) in &letter.headers {
            h = h.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        if slim {
            h = h.insert(Header {
                key: headers::VALUE_OMITTED,
                value: Some("message too large"),
            });
        }
        let (ack, acked) = oneshot::channel();
        let mut record: BaseRecord<'_, [u8], [u8], _> =
            BaseRecord::with_opaque_to(&self.topic, Box::new(ack)).headers(h);
        if let (Some(v), false) = (&letter.value, slim) {
            record = record.payload(v);
        }
        if let Some(k) = &letter.key {
            record = record.key(k);
        }
        // A full local queue is an error like any other here: `send_all` retries with backoff.
        self.producer.send(record).map_err(|(e, _)| e)?;
        // The report is dropped unsent only when the producer itself goes away.
        acked.await.unwrap_or(Err(KafkaError::Canceled))
    }

    /// Flushes outstanding deliveries (shutdown).
    pub fn flush(&self) {
        let _ = self.producer.flush(Duration::from_secs(5));
    }
}

impl Drop for DeadLetterProducer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(poller) = self.poller.take() {
            // Returns within one `POLL`; the producer itself is dropped (and purged) after.
            let _ = poller.join();
        }
    }
}

impl crate::pipeline::ports::DeadLetterSink for DeadLetterProducer {
    async fn send_all(
        &self,
        letters: &[DeadLetter],
        cancel: &CancellationToken,
    ) -> Result<(), String> {
        DeadLetterProducer::send_all(self, letters, cancel)
            .await
            .map_err(|e| e.to_string())
    }

    fn flush(&self) {
        DeadLetterProducer::flush(self)
    }
}

impl<T: crate::pipeline::ports::DeadLetterSink> crate::pipeline::ports::DeadLetterSink
    for std::sync::Arc<T>
{
    async fn send_all(
        &self,
        letters: &[DeadLetter],
        cancel: &CancellationToken,
    ) -> Result<(), String> {
        T::send_all(self, letters, cancel).await
    }

    fn flush(&self) {
        T::flush(self)
    }
}
