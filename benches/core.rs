//! Benchmark of the pure core, without Kafka or PostgreSQL: decode → transform → bind, one
//! thread, for the built-in sample notifications (every NGSI value type and geometry) and for
//! the end-to-end benchmark's multi-tenant workload; and the memory one in-flight record holds
//! (its message and its row operation, as a window keeps them). Prints the figures and writes
//! `target/bench/core.md`.
//!
//! Run: `cargo bench --bench core` (no timing is asserted; compare reports across changes).
//! `NGSIFLOW_BENCH_ROUNDS` (default 25) sets the timed rounds: instructions counted with
//! `valgrind --tool=cachegrind` for 1 and 2 rounds differ by one round's, a figure that does
//! not vary with the machine's load.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use chrono::Utc;
use ngsiflow::flow::transform::{transform, RowOp, TransformOptions};
use ngsiflow::flow::{load_flows, FlowSpec};
use ngsiflow::ngsi::decode;
use ngsiflow::ngsi::value::CellValue;
use ngsiflow::postgis::bind::{bind, ColumnKind, Wire};
use ngsiflow::produce::sample;
use ngsiflow::workload;

/// The allocator the worker runs with (src/main.rs; allocation is a large share of the core's
/// time, so measuring with another one would mislead), counting the bytes it holds.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);
/// Allocations made (reallocations included).
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to mimalloc; the counter only observes sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size(), Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(new_size, Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

type Headers = Vec<(&'static str, Vec<u8>)>;

fn main() {
    let flows = load_flows(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("flows"),
        "",
        "bench",
    )
    .expect("flows");
    let flow = |name: &str| flows.iter().find(|f| f.name == name).expect("flow");
    let opts = TransformOptions::default();
    let mut report = String::from(
        "# ngsiflow core benchmark (decode → transform → bind, one thread)\n\n\
         | notifications | flow | notifications run | ns/notification | notifications/s | records | columns bound |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let sample_headers: Headers = vec![
        ("Fiware-Service", b"demo".to_vec()),
        ("Fiware-Servicepath", b"/city".to_vec()),
    ];
    let samples: Vec<Vec<u8>> = (0..4000)
        .map(|i| sample(i, 1000, false).to_string().into_bytes())
        .collect();
    // `NGSIFLOW_BENCH_ONLY=workload` skips the samples (to count one section's instructions).
    let samples_too = std::env::var("NGSIFLOW_BENCH_ONLY").map_or(true, |o| o != "workload");
    for spec in flows
        .iter()
        .filter(|f| samples_too && f.kind == ngsiflow::flow::FlowKind::Ngsi)
    {
        let batch: Vec<(&FlowSpec, &Headers, &[u8])> = samples
            .iter()
            .map(|p| (spec, &sample_headers, p.as_slice()))
            .collect();
        let line = run(false, &spec.name, &batch, &opts);
        report.push_str(&line);
    }
    let messages: Vec<(&FlowSpec, Headers, Vec<u8>)> = (0..12_000)
        .map(|i| {
            let m = workload::message(i, 100);
            let headers = vec![
                ("fiware-service", m.service.as_bytes().to_vec()),
                ("fiware-servicepath", m.servicepath.as_bytes().to_vec()),
            ];
            (flow(m.flow), headers, m.text.into_bytes())
        })
        .collect();
    let batch: Vec<(&FlowSpec, &Headers, &[u8])> = messages
        .iter()
        .map(|(s, h, p)| (*s, h, p.as_slice()))
        .collect();
    report.push_str(&run(true, "all three", &batch, &opts));
    report.push_str(&held_per_record(&batch[..2000], &opts));
    report.push_str(&allocations(&batch[..2000], &opts));
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).expect("target/bench");
    std::fs::write(dir.join("core.md"), report).expect("write report");
}

/// Times decode → transform → bind over `batch` (25 rounds): the samples, or the `workload`'s
/// notifications (bound with its tables' column kinds); one report line.
fn run(
    workload: bool,
    flow: &str,
    batch: &[(&FlowSpec, &Headers, &[u8])],
    opts: &TransformOptions,
) -> String {
    let what = if workload {
        "multi-tenant workload"
    } else {
        "samples"
    };
    // Fewer rounds under an instruction counter (`valgrind --tool=cachegrind`), whose counts do
    // not vary from run to run as times do on a shared machine.
    let rounds = std::env::var("NGSIFLOW_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(25);
    let (mut records, mut cells) = (0u64, 0u64);
    let started = Instant::now();
    for _ in 0..rounds {
        for (spec, headers, payload) in batch {
            let pairs: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, &v[..])).collect();
            let n = decode(Some(payload), &pairs).expect("decodes");
            for op in transform(spec, n, Utc::now(), opts).into_iter().flatten() {
                records += 1;
                for (name, v) in &op.columns {
                    let kind = column_kind(name, v, workload);
                    let wire = Wire::of(kind, "double precision");
                    cells += u64::from(bind(name, kind, wire, "t", v).is_ok());
                }
            }
        }
    }
    let n = (rounds * batch.len()) as f64;
    let ns = started.elapsed().as_nanos() as f64 / n;
    println!(
        "{what:<22} {flow:<9} {ns:>8.0} ns/notification  {:>7.0}/s  ({records} records, {cells} columns bound)",
        1e9 / ns
    );
    format!(
        "| {what} | {flow} | {n} | {ns:.0} | {:.0} | {records} | {cells} |\n",
        1e9 / ns
    )
}

/// Bytes held per record while it waits in a window: its message (value and headers) and its
/// row operation, for the first `batch.len()` workload notifications.
fn held_per_record(batch: &[(&FlowSpec, &Headers, &[u8])], opts: &TransformOptions) -> String {
    let before = HELD.load(Ordering::Relaxed);
    let mut held: Vec<(Vec<u8>, Headers, Vec<RowOp>)> = Vec::with_capacity(batch.len());
    let vec_bytes = HELD.load(Ordering::Relaxed) - before;
    let mut ops_bytes = 0;
    for (spec, headers, payload) in batch {
        let pairs: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, &v[..])).collect();
        let start = HELD.load(Ordering::Relaxed);
        let n = decode(Some(payload), &pairs).expect("decodes");
        let ops: Vec<RowOp> = transform(spec, n, Utc::now(), opts)
            .into_iter()
            .flatten()
            .collect();
        ops_bytes += HELD.load(Ordering::Relaxed) - start + std::mem::size_of::<Vec<RowOp>>();
        drop(pairs);
        held.push((payload.to_vec(), (*headers).clone(), ops));
    }
    let bytes = HELD.load(Ordering::Relaxed) - before - vec_bytes
        + held.len() * std::mem::size_of::<(Vec<u8>, Headers, Vec<RowOp>)>();
    let records: usize = held.iter().map(|h| h.2.len()).sum();
    let payload: usize = held.iter().map(|h| h.0.len()).sum();
    let line = format!(
        "\nHeld per in-flight record (message + row operation, multi-tenant workload, {records} records): \
         {} bytes, of which {} bytes of message value and {} bytes of row operation.\n",
        bytes / records,
        payload / records,
        ops_bytes / records
    );
    print!("{line}");
    drop(held);
    line
}

/// Allocations per notification in each step, for the first `batch.len()` workload
/// notifications (allocation is a large share of the core's time; this says where).
fn allocations(batch: &[(&FlowSpec, &Headers, &[u8])], opts: &TransformOptions) -> String {
    let count = || ALLOCS.load(Ordering::Relaxed);
    let (mut decoding, mut transforming, mut binding) = (0, 0, 0);
    for (spec, headers, payload) in batch {
        let pairs: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, &v[..])).collect();
        let start = count();
        let n = decode(Some(payload), &pairs).expect("decodes");
        let decoded = count();
        let ops: Vec<RowOp> = transform(spec, n, Utc::now(), opts)
            .into_iter()
            .flatten()
            .collect();
        let transformed = count();
        for op in &ops {
            for (name, v) in &op.columns {
                let kind = column_kind(name, v, true);
                let _ = std::hint::black_box(bind(
                    name,
                    kind,
                    Wire::of(kind, "double precision"),
                    "t",
                    v,
                ));
            }
        }
        binding += count() - transformed;
        transforming += transformed - decoded;
        decoding += decoded - start;
    }
    let n = batch.len() as f64;
    let line = format!(
        "\nAllocations per notification (multi-tenant workload): decode {:.1}, transform {:.1}, bind {:.1}.\n",
        decoding as f64 / n,
        transforming as f64 / n,
        binding as f64 / n
    );
    print!("{line}");
    line
}

/// The column kinds of the sample tables (scripts/sample-tables.sql) or, for `workload`, the
/// workload's (`ngsiflow produce --print-ddl`): they differ in `observedat` only.
fn column_kind(name: &str, v: &CellValue, workload: bool) -> ColumnKind {
    match name {
        "timeinstant" | "recvtime" | "updatedat" => ColumnKind::TimestampTz,
        "observedat" if workload => ColumnKind::TimestampTz,
        "temperature" | "speed" => ColumnKind::Float,
        "count" => ColumnKind::Integer,
        "bignum" => ColumnKind::BigInt,
        "price" => ColumnKind::Numeric,
        "active" | "occupied" => ColumnKind::Boolean,
        "config" => ColumnKind::Jsonb,
        "tags" => ColumnKind::Json,
        "observedat" => ColumnKind::Timestamp,
        "day" => ColumnKind::Date,
        _ if matches!(v, CellValue::Attr(a) if a.ewkb().is_some()) => ColumnKind::Geometry,
        _ => ColumnKind::Text,
    }
}
