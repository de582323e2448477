//! `ngsiflow produce`: sends NGSIv2 notifications to the raw topics, from a JSON/JSONL file or
//! built-in samples covering every NGSI value type and geometry (does I/O).

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use clap::{Args, ValueEnum};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde_json::{json, Value};

use crate::kafka::{client_config, ensure_topics};

/// Which raw topics to send to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// `<prefix>raw_historic`
    Historic,
    /// `<prefix>raw_lastdata`
    Lastdata,
    /// `<prefix>raw_mutable`
    Mutable,
    /// all three
    All,
}

/// What `ngsiflow produce` generates when no file is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// The built-in samples (every NGSI value type and geometry) for `--service`/`--servicepath`.
    Samples,
    /// The benchmark's multi-tenant stream ([`crate::workload`]): 5 services × 4 servicepaths ×
    /// 3 entity types over the three raw topics (60/30/10 %), each message with its own headers;
    /// `--count` counts messages in all, `--rate` is messages per second in all.
    MultiTenant,
}

/// Flags of `ngsiflow produce`.
#[derive(Debug, Clone, Args)]
pub struct ProduceArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "NGSIFLOW_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Topic prefix (as for `run`).
    #[arg(long, env = "NGSIFLOW_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,
    /// Raw topic(s) to send to.
    #[arg(long, value_enum, default_value = "all")]
    pub flow: Target,
    /// Send to this exact topic instead (no prefix applied).
    #[arg(long, conflicts_with = "flow")]
    pub topic: Option<String>,
    /// Notifications from a file: a JSON notification, a JSON array of them, or JSONL (one per
    /// line). Sent verbatim; without it the built-in samples are used.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Messages to send per topic (the input is cycled; samples get fresh TimeInstants);
    /// default: the file once, or one round of samples (16 messages).
    #[arg(long)]
    pub count: Option<u64>,
    /// Messages per second per topic (0 = as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// `Fiware-Service` header.
    #[arg(long, default_value = "demo")]
    pub service: String,
    /// `Fiware-Servicepath` header.
    #[arg(long, default_value = "/city")]
    pub servicepath: String,
    /// `fiware-datamodel` header (absent by default).
    #[arg(long)]
    pub datamodel: Option<String>,
    /// Distinct entity ids per sample type in generated samples.
    #[arg(long, default_value_t = 4)]
    pub entities: u64,
    /// Partitions for raw topics that do not exist yet.
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,
    /// Kafka TLS and SASL (as for `run`).
    #[command(flatten)]
    pub kafka_security: crate::config::KafkaSecurityArgs,
    /// librdkafka producer properties (`key=value`, repeatable), e.g. `-X batch.num.messages=1`;
    /// they override the named flags.
    #[arg(short = 'X', long = "kafka-config", value_parser = crate::config::parse_kv)]
    pub kafka_config: Vec<(String, String)>,
    /// What to generate without `--file`.
    #[arg(long, value_enum, default_value = "samples", conflicts_with = "file")]
    pub workload: Workload,
    /// Index of the first generated message (a later run continues a stream without repeating
    /// its TimeInstants).
    #[arg(long, default_value_t = 0)]
    pub first: u64,
    /// Print the DDL of the multi-tenant workload's 180 tables and exit (nothing is sent).
    #[arg(long)]
    pub print_ddl: bool,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

/// Produce errors.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// File unreadable or not JSON.
    #[error("{0}")]
    Input(String),
    /// Inconsistent or unreadable TLS/SASL settings.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Kafka error.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Some messages were not acknowledged.
    #[error("{0} messages were not delivered")]
    Undelivered(u64),
}

/// Built-in sample `i` (deterministic). Cycles through: a `Sensor` with every NGSI value type
/// (Number as float, integer, big integer and decimal; Boolean; Text; StructuredValue object and
/// array; DateTime into timestamptz, timestamp and date; geo:point), a `Zone` with every other
/// geometry (geo:line, geo:polygon, geo:box, geo:json MultiPolygon and Feature), a partial
/// `Sensor` update, and — for lastdata — an `entityDelete` of a `Sensor`. TimeInstants grow by
/// one millisecond per message, so historic keys never repeat.
pub fn sample(i: u64, entities: u64, delete_allowed: bool) -> Value {
    let entities = entities.max(1);
    let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let ts = (t0 + chrono::Duration::milliseconds(i as i64))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let n = (i / 4) % entities;
    let kind = i % 4;
    let f = (i % 1000) as f64;
    let entity = match kind {
        0 => json!({
            "id": format!("Sensor:{n}"), "type": "Sensor",
            "TimeInstant": {"type": "DateTime", "value": ts, "metadata": {}},
            "temperature": {"type": "Number", "value": 20.5 + f / 10.0, "metadata": {"unit": {"type": "Text", "value": "CEL"}}},
            "count": {"type": "Integer", "value": i},
            "bignum": {"type": "Number", "value": 9007199254740993u64},
            "price": {"type": "Number", "value": serde_json::from_str::<Value>("12345678901234.123456").unwrap()},
            "active": {"type": "Boolean", "value": i.is_multiple_of(2)},
            "name": {"type": "Text", "value": format!("sensor {n} it's")},
            "config": {"type": "StructuredValue", "value": {"mode": "auto", "thresholds": [1, 2.5]}},
            "tags": {"type": "StructuredValue", "value": ["a", "b"]},
            "observedat": {"type": "DateTime", "value": "2026-01-01T10:00:00.123456+02:00"},
            "day": {"type": "DateTime", "value": "2026-01-01"},
            "location": {"type": "geo:point", "value": format!("40.41{n}, -3.70{n}")},
            "alterationType": {"type": "Text", "value": "entityUpdate"}
        }),
        1 => json!({
            "id": format!("Zone:{n}"), "type": "Zone",
            "TimeInstant": {"type": "DateTime", "value": ts},
            "route": {"type": "geo:line", "value": ["1.4168, -1.7038", "1.4178, -1.7028"]},
            "area": {"type": "geo:polygon", "value": ["1.4168, -1.704", "1.4175, -1.703", "1.4162, -1.702", "1.4168, -1.704"]},
            "bbox": {"type": "geo:box", "value": ["1.0, -2.0", "2.0, -1.0"]},
            "shape": {"type": "geo:json", "value": {"type": "MultiPolygon", "coordinates": [[[[-1.704, 1.4168], [-1.703, 1.4175], [-1.702, 1.4162], [-1.704, 1.4168]]], [[[-1.714, 1.4268], [-1.713, 1.4275], [-1.712, 1.4262], [-1.714, 1.4268]]]]}},
            "feature": {"type": "geo:json", "value": {"type": "Feature", "properties": {"k": 1}, "geometry": {"type": "LineString", "coordinates": [[-1.7038, 1.4168], [-1.7028, 1.4178]]}}}
        }),
        2 => json!({
            "id": format!("Sensor:{n}"), "type": "Sensor",
            "TimeInstant": {"type": "DateTime", "value": ts},
            "temperature": {"type": "Number", "value": -0.0},
            "name": {"type": "Text", "value": null}
        }),
        _ if delete_allowed => json!({
            "id": format!("Sensor:{}", (n + 1) % entities), "type": "Sensor",
            "TimeInstant": {"type": "DateTime", "value": ts},
            "alterationType": {"type": "Text", "value": "entityDelete"}
        }),
        _ => json!({
            "id": format!("Sensor:{n}"), "type": "Sensor",
            "TimeInstant": {"type": "DateTime", "value": ts},
            "count": {"type": "Integer", "value": 850}
        }),
    };
    json!({"subscriptionId": "ngsiflow-sample", "data": [entity]})
}

fn entity_key(value: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(value).ok()?;
    v.get("data")?
        .get(0)?
        .get("id")?
        .as_str()
        .map(str::to_string)
}

fn read_file(path: &PathBuf) -> Result<Vec<Vec<u8>>, ProduceError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ProduceError::Input(format!("{}: {e}", path.display())))?;
    if let Ok(v) = serde_json::from_str::<Value>(&text) {
        return Ok(match v {
            Value::Array(items) => items.iter().map(|i| i.to_string().into_bytes()).collect(),
            other => vec![other.to_string().into_bytes()],
        });
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| {
            serde_json::from_str::<Value>(l)
                .map(|_| l.as_bytes().to_vec())
                .map_err(|e| ProduceError::Input(format!("{}:{}: {e}", path.display(), n + 1)))
        })
        .collect()
}

/// How far ahead of its schedule `--rate` lets the generator run before it sleeps: messages
/// leave in bursts of at most this much of the rate, well under the producer's 5 ms linger, so
/// the stream the broker sees is as steady as one paced message by message.
const PACING_SLACK: Duration = Duration::from_millis(1);

/// Sends the notifications and prints a progress line with the achieved rate.
///
/// # Errors
/// [`ProduceError`] for an unreadable file, a Kafka error, or undelivered messages.
pub async fn run(args: ProduceArgs) -> Result<(), ProduceError> {
    if args.print_ddl {
        print!("{}", crate::workload::ddl());
        return Ok(());
    }
    let multi = args.workload == Workload::MultiTenant && args.file.is_none();
    let topics: Vec<(String, bool)> = match (&args.topic, args.flow) {
        _ if multi => ["historic", "lastdata", "mutable"]
            .iter()
            .map(|f| (format!("{}raw_{f}", args.topic_prefix), false))
            .collect(),
        (Some(t), _) => vec![(t.clone(), false)],
        (None, Target::All) => ["historic", "lastdata", "mutable"]
            .iter()
            .map(|f| (format!("{}raw_{f}", args.topic_prefix), *f == "lastdata"))
            .collect(),
        (None, t) => {
            let f = format!("{t:?}").to_lowercase();
            vec![(format!("{}raw_{f}", args.topic_prefix), f == "lastdata")]
        }
    };
    let file = args.file.as_ref().map(read_file).transpose()?;
    let count = args.count.unwrap_or(match &file {
        Some(f) => f.len() as u64,
        None => 16,
    });
    let settings: Vec<(String, String)> = crate::kafka::security_settings(&args.kafka_security)
        .map_err(ProduceError::Config)?
        .into_iter()
        .chain(args.kafka_config.iter().cloned())
        .collect();
    let base = client_config(&args.brokers, &settings);
    let names: Vec<String> = topics.iter().map(|(t, _)| t.clone()).collect();
    if let Err(e) = ensure_topics(&base, &names, args.partitions).await {
        eprintln!("warning: could not create topics ({e}); assuming they exist");
    }
    let producer: FutureProducer = crate::kafka::load_producer_config(&base, &settings).create()?;
    let mut headers = OwnedHeaders::new()
        .insert(Header {
            key: "Fiware-Service",
            value: Some(args.service.as_str()),
        })
        .insert(Header {
            key: "Fiware-Servicepath",
            value: Some(args.servicepath.as_str()),
        });
    if let Some(dm) = &args.datamodel {
        headers = headers.insert(Header {
            key: "fiware-datamodel",
            value: Some(dm.as_str()),
        });
    }
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut in_flight = VecDeque::new();
    let mut failed = 0u64;
    let mut sent = 0u64;
    let total = if multi {
        count
    } else {
        count * topics.len() as u64
    };
    for i in args.first..args.first + count {
        if args.rate > 0.0 {
            let due = started + Duration::from_secs_f64((i - args.first) as f64 / args.rate);
            // Only when ahead by more than PACING_SLACK: a timer and a wake-up per message were
            // most of the load generator's CPU at a steady rate (13.6 µs per message at 20 000/s).
            if due > Instant::now() + PACING_SLACK {
                tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
            }
        }
        let generated = multi.then(|| crate::workload::message(i, args.entities));
        for (topic, lastdata) in &topics {
            let (value, message_headers) = match (&file, &generated) {
                (_, Some(m))
                    if !topic
                        .strip_suffix(m.flow)
                        .is_some_and(|t| t.ends_with("raw_")) =>
                {
                    continue
                }
                (_, Some(m)) => (
                    m.text.as_bytes().to_vec(),
                    OwnedHeaders::new()
                        .insert(Header {
                            key: "Fiware-Service",
                            value: Some(m.service),
                        })
                        .insert(Header {
                            key: "Fiware-Servicepath",
                            value: Some(m.servicepath),
                        }),
                ),
                (Some(f), _) if !f.is_empty() => {
                    (f[(i as usize) % f.len()].clone(), headers.clone())
                }
                (Some(_), _) => {
                    return Err(ProduceError::Input("the file holds no notification".into()))
                }
                (None, None) => (
                    sample(i, args.entities, *lastdata).to_string().into_bytes(),
                    headers.clone(),
                ),
            };
            // Keyed by the first entity id, so one entity's notifications keep their order
            // within a partition (Orion itself sends null keys).
            // (The generated workload knows its entity id; parsing the value again cost the
            // load generator a quarter of its CPU.)
            let key = match &generated {
                Some(m) => Some(m.entity_id.clone()),
                None => entity_key(&value),
            };
            loop {
                let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
                    .payload(value.as_slice())
                    .headers(message_headers.clone());
                if let Some(k) = &key {
                    record = record.key(k.as_bytes());
                }
                match producer.send_result(record) {
                    Ok(f) => {
                        in_flight.push_back(f);
                        break;
                    }
                    Err((e, _)) => {
                        // Local queue full: wait for the oldest delivery, then retry.
                        match in_flight.pop_front() {
                            Some(f) => {
                                if !matches!(f.await, Ok(Ok(_))) {
                                    failed += 1;
                                }
                            }
                            None => return Err(ProduceError::Kafka(e)),
                        }
                    }
                }
            }
            sent += 1;
        }
        while in_flight.len() > 100_000 {
            if let Some(f) = in_flight.pop_front() {
                if !matches!(f.await, Ok(Ok(_))) {
                    failed += 1;
                }
            }
        }
        if !args.quiet && last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            let rate = sent as f64 / started.elapsed().as_secs_f64();
            eprint!("\rproduced {sent}/{total} messages ({rate:.0} msg/s)   ");
            let _ = std::io::stderr().flush();
        }
    }
    for f in in_flight {
        if !matches!(f.await, Ok(Ok(_))) {
            failed += 1;
        }
    }
    let _ = producer.flush(Duration::from_secs(10));
    let secs = started.elapsed().as_secs_f64();
    if !args.quiet {
        eprintln!(
            "\rproduced {} messages to {} in {secs:.2} s ({:.0} msg/s)",
            sent - failed,
            names.join(", "),
            (sent - failed) as f64 / secs.max(1e-9)
        );
    }
    if failed > 0 {
        return Err(ProduceError::Undelivered(failed));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::transform::{transform, TransformOptions};
    use crate::flow::{load_flows, FlowSpec};
    use crate::ngsi::decode;

    fn flows() -> Vec<FlowSpec> {
        load_flows(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("flows"),
            "",
            "g",
        )
        .unwrap()
    }

    #[test]
    fn samples_transform_cleanly_for_every_flow() {
        let opts = TransformOptions::default();
        for spec in flows()
            .iter()
            .filter(|f| f.kind == crate::flow::FlowKind::Ngsi)
        {
            for i in 0..16 {
                let v = sample(i, 4, spec.name == "lastdata").to_string();
                let n = decode(
                    Some(v.as_bytes()),
                    &[
                        ("fiware-service", b"demo"),
                        ("fiware-servicepath", b"/city"),
                    ],
                )
                .unwrap();
                for r in transform(spec, n, Utc::now(), &opts) {
                    let op =
                        r.unwrap_or_else(|e| panic!("{} sample {i}: {}", spec.name, e.message));
                    assert!(op.target.table.starts_with("city_"), "{}", op.target);
                }
            }
        }
    }
}
