//! Dead-letter copies of failed records (pure): the original record — a notification reduced to
//! the failed entity — with its headers and `ngsiflow.*` headers saying flow, error and source.

use crate::kafka::dead_letter::{headers as dlh, DeadLetter};
use crate::postgis::truncate;

use super::window::{Failure, FlushWindow};

/// Longest error text put in a dead-letter header (the error log keeps the same length).
const MAX_ERROR_HEADER_CHARS: usize = 4000;

/// The copies for every failure of `window`, read from `topic` by `flow`.
pub(crate) fn dead_letters(window: &FlushWindow, flow: &str, topic: &str) -> Vec<DeadLetter> {
    window
        .failures()
        .iter()
        .map(|f| dead_letter(window, f, flow, topic))
        .collect()
}

fn dead_letter(window: &FlushWindow, f: &Failure, flow: &str, topic: &str) -> DeadLetter {
    let m = &window.message(f.message).record;
    let value = match (f.entity_index, &m.payload) {
        (Some(i), Some(p)) => reduce_to_entity(p, i).or_else(|| Some(p.clone())),
        (_, p) => p.clone(),
    };
    // Original headers are copied only when readable.
    let mut headers: Vec<(String, Vec<u8>)> = match &m.headers {
        Ok(h) => h.iter().map(|(k, v)| (k.to_string(), v.to_vec())).collect(),
        Err(_) => Vec::new(),
    };
    let error = truncate(f.error.clone(), MAX_ERROR_HEADER_CHARS);
    headers.push((dlh::FLOW.into(), flow.as_bytes().to_vec()));
    headers.push((dlh::ERROR.into(), error.into_bytes()));
    headers.push((dlh::TOPIC.into(), topic.as_bytes().to_vec()));
    headers.push((dlh::PARTITION.into(), m.partition.to_string().into_bytes()));
    headers.push((dlh::OFFSET.into(), m.offset.to_string().into_bytes()));
    if let Some(i) = f.entity_index {
        headers.push((dlh::ENTITY_INDEX.into(), i.to_string().into_bytes()));
    }
    DeadLetter {
        value,
        key: m.key.clone(),
        headers,
    }
}

/// The notification with `data` reduced to entity `index` (the failed record), re-serialised;
/// `None` when the payload cannot be reduced (not JSON).
fn reduce_to_entity(payload: &[u8], index: usize) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let target = if v.get("data").is_some() {
        &mut v
    } else {
        v.get_mut("payload").filter(|p| p.is_object())?
    };
    let entity = target.get("data")?.as_array()?.get(index)?.clone();
    target["data"] = serde_json::Value::Array(vec![entity]);
    serde_json::to_vec(&v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_value_keeps_only_the_failed_entity() {
        let p = br#"{"subscriptionId":"s","data":[{"id":"A"},{"id":"B"}]}"#;
        let v: serde_json::Value =
            serde_json::from_slice(&reduce_to_entity(p, 1).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"subscriptionId": "s", "data": [{"id": "B"}]})
        );
        assert!(reduce_to_entity(b"not json", 0).is_none());
        assert!(reduce_to_entity(p, 5).is_none());
    }
}
