//! Messages received but not yet in the window (pure, reads the clock only to stamp records):
//! those read ahead of a window write and those held while fetching is paused. While a window
//! is written, the ones waiting are decoded, so the database's time is not also the time the
//! next window waits for its decoding.
//!
//! Read-ahead takes only what the consumer has already fetched, before the write starts. The
//! consumer is never polled during a write: a rebalance is served only between writes (as in
//! Kafka's own poll loop), so a partition cannot move to another member while its records are
//! being written here.

use std::collections::VecDeque;
use std::time::Instant;

use chrono::Utc;

use super::inbound::Inbound;
use super::intake::{intake, IntakeSettings};
use super::window::Decoded;

/// Messages decoded between two yields while a window is written: about 50-100 µs of work at
/// the measured 3-6 µs per message, the longest the write's progress waits for the decoding.
/// (A yield after every message cost about 2 % of the worker's CPU in clock reads and
/// scheduling, in a drain profile.)
const DECODED_PER_YIELD: usize = 16;

/// One message waiting for the window: when it was received, and its window entry once
/// decoded.
struct Waiting {
    /// The record.
    record: Inbound,
    /// When the flow received it (where its processing time starts).
    received: Instant,
    /// Its window entry, when it has been decoded already.
    decoded: Option<Decoded>,
}

/// Messages waiting for the window, in the order received; the decoded ones come first.
#[derive(Default)]
pub(crate) struct ReadAhead {
    waiting: VecDeque<Waiting>,
    /// How many of the first `waiting` are decoded.
    decoded: usize,
}

impl ReadAhead {
    /// Messages waiting.
    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Appends a message received at `received`.
    pub(crate) fn push(&mut self, record: Inbound, received: Instant) {
        self.waiting.push_back(Waiting {
            record,
            received,
            decoded: None,
        });
    }

    /// The oldest waiting message, decoded (now, when it was not yet).
    pub(crate) fn pop(&mut self, settings: &IntakeSettings) -> Option<(Inbound, Instant, Decoded)> {
        let w = self.waiting.pop_front()?;
        self.decoded = self.decoded.saturating_sub(1);
        let decoded = w
            .decoded
            .unwrap_or_else(|| intake(settings, &w.record, Utc::now()));
        Some((w.record, w.received, decoded))
    }

    /// Forgets the messages of `partitions` (revoked: their new owner re-reads them);
    /// returns how many were dropped.
    pub(crate) fn drop_partitions(&mut self, partitions: &[i32]) -> usize {
        let before = self.waiting.len();
        self.waiting
            .retain(|w| !partitions.contains(&w.record.partition));
        self.decoded = self
            .waiting
            .iter()
            .take_while(|w| w.decoded.is_some())
            .count();
        before - self.waiting.len()
    }

    /// Decodes the waiting messages, yielding after every [`DECODED_PER_YIELD`], until all are
    /// decoded. Meant to run alongside a window write and to be dropped when the write ends:
    /// each message is decoded completely before a yield, so dropping it loses nothing.
    pub(crate) async fn decode(&mut self, settings: &IntakeSettings) {
        while self.decoded < self.waiting.len() {
            let now = Utc::now();
            let end = self.waiting.len().min(self.decoded + DECODED_PER_YIELD);
            for w in self.waiting.range_mut(self.decoded..end) {
                w.decoded = Some(intake(settings, &w.record, now));
            }
            self.decoded = end;
            tokio::task::yield_now().await;
        }
    }
}

/// Awaits `main` while also driving `side` (work that may stop anywhere), and returns `main`'s
/// output as soon as it is ready, whether `side` has finished or not.
pub(crate) async fn alongside<T>(
    main: impl std::future::Future<Output = T>,
    side: impl std::future::Future<Output = ()>,
) -> T {
    tokio::pin!(main);
    tokio::pin!(side);
    let mut side_done = false;
    loop {
        tokio::select! {
            biased;
            out = &mut main => return out,
            () = &mut side, if !side_done => side_done = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::transform::TransformOptions;
    use crate::pipeline::tests::{notification, record};

    fn settings() -> IntakeSettings {
        IntakeSettings {
            spec: crate::flow::shipped_flow("historic"),
            transform: TransformOptions::default(),
            topic_prefix: String::new(),
            max_message_bytes: 1 << 20,
        }
    }

    #[tokio::test]
    async fn a_write_ending_first_leaves_the_rest_to_decode_later_in_order() {
        let s = settings();
        let mut ahead = ReadAhead::default();
        let n = DECODED_PER_YIELD + 2;
        for i in 0..n {
            ahead.push(
                record(0, i as i64, &notification(&[&format!("e{i}")])),
                Instant::now(),
            );
        }
        // The "write" is ready after the side task's first step.
        let mut polls = 0;
        let write = std::future::poll_fn(|_| {
            polls += 1;
            if polls > 1 {
                std::task::Poll::Ready(7)
            } else {
                std::task::Poll::Pending
            }
        });
        assert_eq!(alongside(write, ahead.decode(&s)).await, 7);
        let step = DECODED_PER_YIELD;
        assert_eq!(
            ahead.decoded, step,
            "one step ran before the write was ready"
        );
        assert!(ahead.waiting[step - 1].decoded.is_some() && ahead.waiting[step].decoded.is_none());
        // Dropping a partition keeps the count of decoded ones honest.
        ahead.push(record(1, 0, &notification(&["x"])), Instant::now());
        assert_eq!(ahead.drop_partitions(&[1]), 1);
        assert_eq!((ahead.len(), ahead.decoded), (n, step));
        let popped: Vec<(i64, usize)> = std::iter::from_fn(|| ahead.pop(&s))
            .map(|(r, _, d)| (r.offset, d.items.len()))
            .collect();
        let want: Vec<(i64, usize)> = (0..n as i64).map(|o| (o, 1)).collect();
        assert_eq!(popped, want);
    }

    #[tokio::test]
    async fn a_long_write_sees_everything_decoded() {
        let s = settings();
        let mut ahead = ReadAhead::default();
        ahead.push(record(0, 0, &notification(&["a"])), Instant::now());
        ahead.push(record(0, 1, "not json"), Instant::now());
        let write = async {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            "written"
        };
        assert_eq!(alongside(write, ahead.decode(&s)).await, "written");
        assert_eq!(ahead.decoded, 2);
        let (_, _, bad) = ahead.pop(&s).and_then(|_| ahead.pop(&s)).unwrap();
        assert_eq!(bad.failures.len(), 1, "a bad message decodes to its error");
        assert!(ahead.pop(&s).is_none());
    }
}
