//! Dead-letter producer: copies of failed records with headers saying flow, error and source
//! offset (does I/O).

use std::time::Duration;

use backon::BackoffBuilder;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
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

/// Sends dead-letter copies and waits for the broker's acknowledgement.
pub struct DeadLetterProducer {
    producer: FutureProducer,
    topic: String,
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
        Ok(Self {
            producer: c.create()?,
            topic: topic.to_string(),
        })
    }

    /// Sends every copy; each is retried with capped backoff until acknowledged.
    ///
    /// # Errors
    /// The last Kafka error when `cancel` fires before every copy was acknowledged; the caller
    /// then must not commit the source offsets.
    pub async fn send_all(
        &self,
        letters: &[DeadLetter],
        cancel: &CancellationToken,
    ) -> Result<(), KafkaError> {
        for letter in letters {
            let mut backoff = backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(10))
                .without_max_times()
                .build();
            loop {
                let mut h = OwnedHeaders::new_with_capacity(letter.headers.len());
                for (k, v) in &letter.headers {
                    h = h.insert(Header {
                        key: k,
                        value: Some(v),
                    });
                }
                let mut record: FutureRecord<'_, [u8], [u8]> =
                    FutureRecord::to(&self.topic).headers(h);
                if let Some(v) = &letter.value {
                    record = record.payload(v);
                }
                if let Some(k) = &letter.key {
                    record = record.key(k);
                }
                match self.producer.send(record, Duration::from_secs(30)).await {
                    Ok(_) => break,
                    Err((e, _)) if too_large(&e) && letter.value.is_some() => {
                        // Retrying cannot help: send the copy without its value, saying why; the
                        // error log row and the source offset still identify the record.
                        tracing::warn!(error = %e, topic = %self.topic, "dead-letter copy too large; sending it without the value");
                        let mut slim = letter.clone();
                        slim.value = None;
                        slim.headers
                            .push((headers::VALUE_OMITTED.into(), b"message too large".to_vec()));
                        return Box::pin(self.send_all(std::slice::from_ref(&slim), cancel)).await;
                    }
                    Err((e, _)) => {
                        tracing::warn!(error = %e, topic = %self.topic, "dead-letter send failed, retrying");
                        let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = cancel.cancelled() => return Err(e),
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Flushes outstanding deliveries (shutdown).
    pub fn flush(&self) {
        let _ = self.producer.flush(Duration::from_secs(5));
    }
}
