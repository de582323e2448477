//! Tables another session holds locked (pure, reads no clock: the caller passes `now`): when
//! each may be tried again. A locked table is retried after 1 s, then 2, 4 and 8 s, so that the
//! windows in between write every other table without waiting `lock_timeout` for it again.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use crate::route::TableRef;

/// First wait before a locked table is tried again.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest wait between tries.
const MAX_RETRY: Duration = Duration::from_secs(8);

/// When a locked table may be tried again, and how long the next wait will be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Retry {
    at: Instant,
    wait: Duration,
}

/// The tables found locked, each with its retry time.
#[derive(Debug, Default)]
pub(crate) struct LockedTables {
    tables: BTreeMap<TableRef, Retry>,
}

impl LockedTables {
    /// The tables not to try at `now` (their retry time has not come).
    pub(crate) fn waiting(&self, now: Instant) -> HashSet<TableRef> {
        self.tables
            .iter()
            .filter(|(_, r)| r.at > now)
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// The earliest retry time, if a table is locked.
    pub(crate) fn next_retry(&self) -> Option<Instant> {
        self.tables.values().map(|r| r.at).min()
    }

    /// Forgets the tables no record waits for any more (their records were revoked).
    pub(crate) fn retain(&mut self, waiting_for: &HashSet<&TableRef>) {
        self.tables.retain(|t, _| waiting_for.contains(t));
    }

    /// True when `table` was found locked and not written since.
    pub(crate) fn contains(&self, table: &TableRef) -> bool {
        self.tables.contains_key(table)
    }

    /// Tables locked now.
    pub(crate) fn len(&self) -> usize {
        self.tables.len()
    }

    /// Takes a write's verdict at `now`: `found` were locked (their wait doubles, up to 8 s);
    /// the others that were due were tried and got their lock, so they are forgotten.
    pub(crate) fn settle(&mut self, skipped: &HashSet<TableRef>, found: &[TableRef], now: Instant) {
        let again: Vec<(TableRef, Duration)> = found
            .iter()
            .map(|t| {
                let wait = self
                    .tables
                    .get(t)
                    .map_or(FIRST_RETRY, |r| (r.wait * 2).min(MAX_RETRY));
                (t.clone(), wait)
            })
            .collect();
        self.tables.retain(|t, _| skipped.contains(t));
        for (t, wait) in again {
            self.tables.insert(
                t,
                Retry {
                    at: now + wait,
                    wait,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> TableRef {
        TableRef {
            schema: "s".into(),
            table: name.into(),
        }
    }

    #[test]
    fn a_locked_table_waits_longer_each_time_and_is_forgotten_once_written() {
        let t0 = Instant::now();
        let mut l = LockedTables::default();
        assert!(l.waiting(t0).is_empty());
        l.settle(&HashSet::new(), &[t("a")], t0);
        assert_eq!(l.next_retry(), Some(t0 + Duration::from_secs(1)));
        assert!(
            l.waiting(t0).contains(&t("a")),
            "skipped until its retry time"
        );
        // Skipped in a window: remembered as it was.
        let skipped = l.waiting(t0 + Duration::from_millis(500));
        l.settle(&skipped, &[], t0 + Duration::from_millis(500));
        assert_eq!(l.len(), 1);
        // Due and still locked: waits 2, then 4 and 8, never more.
        let mut now = t0 + Duration::from_secs(1);
        for want in [2, 4, 8, 8] {
            let skipped = l.waiting(now);
            assert!(skipped.is_empty());
            l.settle(&skipped, &[t("a")], now);
            assert_eq!(l.next_retry(), Some(now + Duration::from_secs(want)));
            now += Duration::from_secs(want);
        }
        // Due and written: forgotten.
        l.settle(&l.waiting(now), &[], now);
        assert_eq!(l.len(), 0);
        assert_eq!(l.next_retry(), None);
    }
}
