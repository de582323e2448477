//! ngsiflow's own input record type (pure): what the Kafka edge hands to the pipeline, so that
//! nothing past the edge sees a client library's types.

/// One Kafka record of a flow's topic, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Inbound {
    /// Partition of the flow's topic.
    pub(crate) partition: i32,
    /// Offset in that partition.
    pub(crate) offset: i64,
    /// Key bytes, when the record has a key.
    pub(crate) key: Option<Vec<u8>>,
    /// Value bytes; `None` for a tombstone.
    pub(crate) payload: Option<Vec<u8>>,
    /// The record's Kafka timestamp (producer CreateTime or broker LogAppendTime), in unix
    /// milliseconds, when it has one: where the commit-latency histogram starts.
    pub(crate) timestamp_ms: Option<i64>,
    /// Headers in order; `Err` when they cannot be read (a name that is not UTF-8), which makes
    /// the record bad input.
    pub(crate) headers: Result<RecordHeaders, String>,
}

/// A record's headers `(name, value)` in order, in one allocation (a message waits in memory
/// until its window commits; a `Vec` of owned pairs took two allocations per header). Each
/// header is stored as its name's length (u32, little-endian), its name, its value's length and
/// its value; a header without a value has an empty one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RecordHeaders(Vec<u8>);

impl RecordHeaders {
    /// Headers with room for `bytes` of names and values and `count` headers.
    pub(crate) fn with_capacity(count: usize, bytes: usize) -> Self {
        Self(Vec::with_capacity(bytes + 8 * count))
    }

    /// The headers of `pairs`, in order.
    #[cfg(test)]
    pub(crate) fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
        let mut h = Self::default();
        for (name, value) in pairs {
            h.push(name, value);
        }
        h
    }

    /// Appends a header.
    pub(crate) fn push(&mut self, name: &str, value: &[u8]) {
        for part in [name.as_bytes(), value] {
            // Kafka's record format limits a header to an i32 varint length: u32 holds it.
            self.0.extend_from_slice(&(part.len() as u32).to_le_bytes());
            self.0.extend_from_slice(part);
        }
    }

    /// The headers `(name, value)` in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        fn take(b: &[u8]) -> Option<(&[u8], &[u8])> {
            let (len, rest) = b.split_first_chunk::<4>()?;
            rest.split_at_checked(u32::from_le_bytes(*len) as usize)
        }
        let mut rest = self.0.as_slice();
        std::iter::from_fn(move || {
            let (name, r) = take(rest)?;
            let (value, r) = take(r)?;
            rest = r;
            // Names are pushed as &str.
            Some((std::str::from_utf8(name).unwrap_or_default(), value))
        })
    }
}

impl Inbound {
    /// The headers as borrowed pairs.
    ///
    /// # Errors
    /// Why the headers could not be read.
    pub(crate) fn header_pairs(&self) -> Result<Vec<(&str, &[u8])>, String> {
        match &self.headers {
            Ok(h) => Ok(h.iter().collect()),
            Err(e) => Err(e.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_come_back_as_pushed() {
        let pairs: [(&str, &[u8]); 4] = [
            ("Fiware-Service", b"acme"),
            ("empty", b""),
            ("", b"no name"),
            ("binärer Wert", &[0, 255, 7]),
        ];
        let h = RecordHeaders::from_pairs(pairs);
        assert_eq!(h.iter().collect::<Vec<_>>(), pairs);
        assert_eq!(RecordHeaders::default().iter().count(), 0);
        let mut sized = RecordHeaders::with_capacity(1, 3);
        sized.push("a", b"bc");
        assert_eq!(sized.iter().collect::<Vec<_>>(), [("a", &b"bc"[..])]);
        assert_eq!(sized.0.capacity(), 11, "one allocation, exactly sized");
    }
}
