//! Benchmark of the pure core, without Kafka or PostgreSQL: decode → transform → bind for the
//! built-in sample notifications (every NGSI value type and geometry). Prints ns per
//! notification and writes `target/bench/core.md`.
//!
//! Run: `cargo bench --bench core` (no timing is asserted; compare reports across changes).

use std::time::Instant;

use chrono::Utc;
use ngsiflow::flow::load_flows;
use ngsiflow::flow::transform::{transform, TransformOptions};
use ngsiflow::ngsi::decode;
use ngsiflow::ngsi::value::CellValue;
use ngsiflow::postgis::bind::{bind_text, ColumnKind};
use ngsiflow::produce::sample;

// The allocator the worker runs with (src/main.rs): allocation is a large share of the core's
// time, so measuring with another one would mislead.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let flows = load_flows(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("flows"),
        "",
        "bench",
    )
    .expect("flows");
    let headers: [(&str, &[u8]); 2] = [
        ("Fiware-Service", b"demo"),
        ("Fiware-Servicepath", b"/city"),
    ];
    let payloads: Vec<Vec<u8>> = (0..4000)
        .map(|i| sample(i, 1000, false).to_string().into_bytes())
        .collect();
    let opts = TransformOptions::default();
    let mut report = String::from("# ngsiflow core benchmark (decode → transform → bind, one thread)\n\n| flow | notifications | ns/notification | records | columns bound |\n|---|---|---|---|---|\n");
    for spec in flows
        .iter()
        .filter(|f| f.kind == ngsiflow::flow::FlowKind::Ngsi)
    {
        let rounds = 25;
        let (mut records, mut cells) = (0u64, 0u64);
        let started = Instant::now();
        for _ in 0..rounds {
            for p in &payloads {
                let n = decode(Some(p), &headers).expect("sample decodes");
                for op in transform(spec, n, Utc::now(), &opts).into_iter().flatten() {
                    records += 1;
                    for (name, v) in &op.columns {
                        let kind = column_kind(name, v);
                        cells += u64::from(bind_text(name, kind, "t", v).is_ok());
                    }
                }
            }
        }
        let n = (rounds * payloads.len()) as f64;
        let ns = started.elapsed().as_nanos() as f64 / n;
        println!(
            "{:<9} {:>8.0} ns/notification  ({records} records, {cells} columns bound)",
            spec.name, ns
        );
        report.push_str(&format!(
            "| {} | {} | {:.0} | {records} | {cells} |\n",
            spec.name, n, ns
        ));
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).expect("target/bench");
    std::fs::write(dir.join("core.md"), report).expect("write report");
}

/// The column kinds of the sample tables (scripts/sample-tables.sql).
fn column_kind(name: &str, v: &CellValue) -> ColumnKind {
    match name {
        "timeinstant" | "recvtime" => ColumnKind::TimestampTz,
        "temperature" => ColumnKind::Float,
        "count" => ColumnKind::Integer,
        "bignum" => ColumnKind::BigInt,
        "price" => ColumnKind::Numeric,
        "active" => ColumnKind::Boolean,
        "config" => ColumnKind::Jsonb,
        "tags" => ColumnKind::Json,
        "observedat" => ColumnKind::Timestamp,
        "day" => ColumnKind::Date,
        _ if matches!(v, CellValue::Attr(a) if a.ewkb.is_some()) => ColumnKind::Geometry,
        _ => ColumnKind::Text,
    }
}
