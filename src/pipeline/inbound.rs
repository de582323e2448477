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
    /// Headers `(name, value)` in order (a header without a value has an empty one); `Err` when
    /// they cannot be read (a name that is not UTF-8), which makes the record bad input.
    pub(crate) headers: Result<Vec<(String, Vec<u8>)>, String>,
}

impl Inbound {
    /// The headers as borrowed pairs.
    ///
    /// # Errors
    /// Why the headers could not be read.
    pub(crate) fn header_pairs(&self) -> Result<Vec<(&str, &[u8])>, String> {
        match &self.headers {
            Ok(h) => Ok(h.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect()),
            Err(e) => Err(e.clone()),
        }
    }
}
