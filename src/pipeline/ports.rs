//! The seams between the flow loop and the outside (pure declarations): where records come
//! from, where offsets go, where a window is written and where dead letters go. The Kafka and
//! PostGIS adapters implement them; the in-memory fakes of the pipeline's tests do too.

use std::collections::BTreeMap;

use tokio_util::sync::CancellationToken;

use crate::kafka::dead_letter::DeadLetter;
use crate::postgis::{TransientError, WindowOutcome, WindowWrite};

use super::inbound::Inbound;

/// The flow's input: one consumer of the flow's topic in its consumer group.
pub(crate) trait Source {
    /// The next record (rebalances are served inside this call).
    async fn recv(&self) -> Result<Inbound, String>;
    /// Stops fetching from every assigned partition (group membership stays).
    fn pause_all(&self);
    /// Fetches again from every assigned partition.
    fn resume_all(&self);
}

/// Where committed progress goes: the next offset to read, per partition.
pub(crate) trait OffsetCommitter {
    /// Commits `offsets` (partition → next offset) durably.
    fn commit(&self, offsets: &BTreeMap<i32, i64>) -> Result<(), String>;
}

/// Where a window is written, in one transaction.
pub(crate) trait WindowSink {
    /// Writes one window; see `postgis::Sink::write_window`.
    async fn write_window(&mut self, w: WindowWrite<'_>) -> Result<WindowOutcome, TransientError>;
}

/// Where dead-letter copies go.
pub(crate) trait DeadLetterSink {
    /// Sends every copy and waits for all acknowledgements; `Err` only when `cancel` fired
    /// first (nothing may be committed then).
    async fn send_all(
        &self,
        letters: &[DeadLetter],
        cancel: &CancellationToken,
    ) -> Result<(), String>;
    /// Flushes outstanding deliveries (shutdown).
    fn flush(&self);
}
