//! Every Prometheus metric of ngsiflow, declared once on one injected registry (no I/O).
//!
//! Names, types and labels are the dashboards' contract (README "Metrics and the admin server"):
//! the two seed names (`messages_processed_total`, `message_processing_time_seconds`), Kafnus's
//! `messages_processed_by_service_total`, and `ngsiflow_*` for the rest. Tenant label values are
//! capped: past `max_tenants` distinct services, new ones are counted as `other`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Outcomes of a record, the `outcome` label of `ngsiflow_records_total`.
pub const OUTCOMES: [&str; 6] = [
    "written",
    "stale_ignored",
    "superseded",
    "deleted",
    "duplicate_replayed",
    "error_logged",
];

/// Label value for tenants beyond the cap.
pub const OTHER_TENANT: &str = "other";

/// Per-flow summary kept for `/health` (process lifetime, in memory).
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowSummary {
    /// Flow name.
    pub flow: String,
    /// Input messages fully handled.
    pub total_events: u64,
    /// Messages all of whose records were stored.
    pub success_events: u64,
    /// Messages with at least one failed record.
    pub error_events: u64,
    /// Processing time of the last message, seconds.
    pub last_duration_seconds: f64,
    /// Mean processing time, seconds.
    pub avg_duration_seconds: f64,
    /// When the last message was handled (RFC 3339).
    pub last_processed_at: Option<String>,
    #[serde(skip)]
    sum_duration: f64,
}

/// The metrics of one worker.
pub struct Metrics {
    registry: Registry,
    /// `messages_processed_total{flow}`: input messages fully handled.
    pub messages_processed: IntCounterVec,
    /// `message_processing_time_seconds{flow}`: processing time of the last message.
    pub processing_time_last: GaugeVec,
    /// `messages_processed_by_service_total{flow,fiware_service,result}`.
    pub by_service: IntCounterVec,
    /// `message_processing_duration_seconds{flow}` histogram.
    pub processing_duration: HistogramVec,
    /// `ngsiflow_commit_latency_seconds{flow}`: from a record's Kafka timestamp (the
    /// producer's CreateTime) to the commit of its window, when its rows are durable —
    /// notification-to-commit latency. (While a locked table holds a partition's offset back,
    /// the records after it are counted when their own rows commit.)
    pub commit_latency: HistogramVec,
    /// `ngsiflow_records_total{flow,outcome}`.
    pub records: IntCounterVec,
    /// `ngsiflow_db_write_duration_seconds{flow}`: one flush window's transaction.
    pub db_write_duration: HistogramVec,
    /// `ngsiflow_db_batch_rows{flow}`: records per flush window.
    pub db_batch_rows: HistogramVec,
    /// `ngsiflow_db_errors_total{flow,class}`.
    pub db_errors: IntCounterVec,
    /// `ngsiflow_flow_paused{flow}`: 1 while the flow waits for the database.
    pub flow_paused: IntGaugeVec,
    /// `ngsiflow_consumer_lag{flow,topic,partition}` from librdkafka statistics.
    pub consumer_lag: IntGaugeVec,
    /// `ngsiflow_dead_letter_total{flow}`: copies sent to the dead-letter topic.
    pub dead_letter: IntCounterVec,
    /// `ngsiflow_error_log_failures_total{flow}`: error log rows that could not be written.
    pub error_log_failures: IntCounterVec,
    /// `ngsiflow_ddl_statements_total{flow}`: schemas, tables, columns and indexes created by
    /// `auto_create`/`auto_evolve` (committed statements).
    pub ddl_statements: IntCounterVec,
    /// `ngsiflow_error_log_pruned_rows_total{reason}`: error-log rows deleted by retention
    /// (`reason` `age` or `cap`).
    pub error_log_pruned: IntCounterVec,
    /// `ngsiflow_partitions_assigned{flow}`.
    pub partitions_assigned: IntGaugeVec,
    /// `ngsiflow_window_write_age_seconds{flow}`: how long the window write in progress has
    /// taken so far, 0 when none (set when scraped): a write held by a lock or a slow
    /// statement shows before its timeout fires.
    pub window_write_age: GaugeVec,
    /// `ngsiflow_deferred_records{flow}`: records waiting for a table another session holds
    /// locked (their offsets are not committed yet).
    pub deferred_records: IntGaugeVec,
    /// `ngsiflow_locked_tables{flow}`: tables found locked by another session.
    pub locked_tables: IntGaugeVec,
    /// `ngsiflow_broker_reachable{flow}`: 1 when the flow's consumer heard from the broker
    /// recently and its last commit succeeded (set when scraped; the same test as `/ready`).
    pub broker_reachable: IntGaugeVec,
    /// `admin_http_server_requests_total{method,route,status_code}`.
    pub admin_requests: IntCounterVec,
    /// `admin_http_server_request_duration_seconds{method,route}`.
    pub admin_duration: HistogramVec,
    tenants: Mutex<HashSet<String>>,
    max_tenants: usize,
    summary: Mutex<BTreeMap<String, FlowSummary>>,
}

fn buckets_100us_to_10s() -> Vec<f64> {
    vec![
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ]
}

impl Metrics {
    /// Declares every metric on a new registry, plus process metrics and build info.
    /// `flows` get their series initialised to 0 so dashboards show them before traffic.
    ///
    /// # Panics
    /// Never in practice: registration fails only for duplicate or malformed names, which are
    /// constants here and covered by tests.
    pub fn new(flows: &[String], max_tenants: usize) -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let igauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let processing_time_last = GaugeVec::new(
            Opts::new(
                "message_processing_time_seconds",
                "Processing time of the last message of the flow, in seconds.",
            ),
            &["flow"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(processing_time_last.clone()))
            .expect("unique metric");
        let m = Self {
            messages_processed: counter("messages_processed_total", "Input messages fully handled (written, error-logged or dead-lettered).", &["flow"]),
            processing_time_last,
            by_service: counter("messages_processed_by_service_total", "Input messages handled, by tenant and result (error when any record failed).", &["flow", "fiware_service", "result"]),
            processing_duration: histogram("message_processing_duration_seconds", "Time from receiving a message to committing its window, in seconds.", &["flow"], buckets_100us_to_10s()),
            records: counter("ngsiflow_records_total", "Records (entities of notifications) by outcome.", &["flow", "outcome"]),
            db_write_duration: histogram("ngsiflow_db_write_duration_seconds", "Duration of one flush window's database transaction, in seconds.", &["flow"], buckets_100us_to_10s()),
            db_batch_rows: histogram("ngsiflow_db_batch_rows", "Records per flush window.", &["flow"], vec![1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0]),
            db_errors: counter("ngsiflow_db_errors_total", "Database errors by class (transient: retried; permanent: the row is error-logged).", &["flow", "class"]),
            flow_paused: igauge("ngsiflow_flow_paused", "1 while the flow is paused waiting for the database, else 0.", &["flow"]),
            consumer_lag: igauge("ngsiflow_consumer_lag", "Messages between the committed offset and the partition's high watermark.", &["flow", "topic", "partition"]),
            dead_letter: counter("ngsiflow_dead_letter_total", "Copies of failed records sent to the dead-letter topic.", &["flow"]),
            error_log_failures: counter("ngsiflow_error_log_failures_total", "Error log rows that could not be written (the dead-letter copy remains).", &["flow"]),
            ddl_statements: counter("ngsiflow_ddl_statements_total", "DDL statements (schemas, tables, columns, indexes) run by auto_create and auto_evolve.", &["flow"]),
            error_log_pruned: counter("ngsiflow_error_log_pruned_rows_total", "Error-log rows deleted by --error-log-retention (age) and --error-log-max-rows (cap).", &["reason"]),
            partitions_assigned: igauge("ngsiflow_partitions_assigned", "Partitions currently assigned to the flow's consumer.", &["flow"]),
            commit_latency: histogram("ngsiflow_commit_latency_seconds", "Seconds from a record's Kafka timestamp (producer CreateTime) to the commit of its rows.", &["flow"], vec![0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
            window_write_age: {
                let g = GaugeVec::new(Opts::new("ngsiflow_window_write_age_seconds", "Seconds the flush window write in progress has taken so far (0 when none)."), &["flow"]).expect("valid metric");
                registry.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            deferred_records: igauge("ngsiflow_deferred_records", "Records waiting for a table another session holds locked (offsets not committed yet).", &["flow"]),
            locked_tables: igauge("ngsiflow_locked_tables", "Tables found locked by another session, retried with backoff.", &["flow"]),
            broker_reachable: igauge("ngsiflow_broker_reachable", "1 when the flow's consumer heard from the broker within 10 s and its last offset commit succeeded.", &["flow"]),
            admin_requests: counter("admin_http_server_requests_total", "Admin HTTP requests by method, route and status code.", &["method", "route", "status_code"]),
            admin_duration: histogram("admin_http_server_request_duration_seconds", "Admin HTTP request duration, in seconds.", &["method", "route"], vec![0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
            tenants: Mutex::new(HashSet::new()),
            max_tenants,
            summary: Mutex::new(BTreeMap::new()),
            registry: registry.clone(),
        };
        let build = igauge(
            "ngsiflow_build_info",
            "Build information; the value is always 1.",
            &["version"],
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for reason in ["age", "cap"] {
            m.error_log_pruned.with_label_values(&[reason]);
        }
        #[cfg(target_os = "linux")]
        m.registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");
        for f in flows {
            m.messages_processed.with_label_values(&[f]);
            m.processing_time_last.with_label_values(&[f]);
            m.processing_duration.with_label_values(&[f]);
            for o in OUTCOMES {
                m.records.with_label_values(&[f, o]);
            }
            m.db_write_duration.with_label_values(&[f]);
            m.commit_latency.with_label_values(&[f]);
            m.db_batch_rows.with_label_values(&[f]);
            for c in ["transient", "permanent"] {
                m.db_errors.with_label_values(&[f, c]);
            }
            m.flow_paused.with_label_values(&[f]).set(0);
            m.dead_letter.with_label_values(&[f]);
            m.error_log_failures.with_label_values(&[f]);
            m.ddl_statements.with_label_values(&[f]);
            m.partitions_assigned.with_label_values(&[f]).set(0);
            m.window_write_age.with_label_values(&[f]).set(0.0);
            m.broker_reachable.with_label_values(&[f]).set(1);
            m.deferred_records.with_label_values(&[f]).set(0);
            m.locked_tables.with_label_values(&[f]).set(0);
            m.summary.lock().expect("metrics lock").insert(
                f.clone(),
                FlowSummary {
                    flow: f.clone(),
                    ..FlowSummary::default()
                },
            );
        }
        m
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let families = self.registry.gather();
        TextEncoder::new()
            .encode(&families, &mut buf)
            .expect("text encoding to memory");
        String::from_utf8(buf).expect("utf-8 exposition")
    }

    /// Number of metric families registered.
    pub fn family_count(&self) -> usize {
        self.registry.gather().len()
    }

    /// The `fiware_service` label for a tenant, applying the cap.
    pub fn tenant_label(&self, service: &str) -> String {
        let mut t = self.tenants.lock().expect("metrics lock");
        if t.contains(service) {
            return service.to_string();
        }
        if t.len() < self.max_tenants {
            t.insert(service.to_string());
            return service.to_string();
        }
        OTHER_TENANT.to_string()
    }

    /// Records the input messages of one committed window: `(service, ok, seconds)` each.
    /// Label look-ups and locks are taken once per window and tenant, not per message.
    pub fn messages_done<'a, I>(&self, flow: &str, messages: I, at: DateTime<Utc>)
    where
        I: IntoIterator<Item = (&'a str, bool, f64)>,
    {
        let histogram = self.processing_duration.with_label_values(&[flow]);
        let mut per_tenant: Vec<(&'a str, u64, u64)> = Vec::new();
        let (mut total, mut success, mut sum, mut last) = (0u64, 0u64, 0.0f64, 0.0f64);
        for (service, ok, seconds) in messages {
            histogram.observe(seconds);
            match per_tenant.iter_mut().find(|(s, _, _)| *s == service) {
                Some(t) => {
                    if ok {
                        t.1 += 1
                    } else {
                        t.2 += 1
                    }
                }
                None => per_tenant.push((service, u64::from(ok), u64::from(!ok))),
            }
            total += 1;
            success += u64::from(ok);
            sum += seconds;
            last = seconds;
        }
        if total == 0 {
            return;
        }
        self.messages_processed
            .with_label_values(&[flow])
            .inc_by(total);
        self.processing_time_last
            .with_label_values(&[flow])
            .set(last);
        for (service, ok, err) in per_tenant {
            let tenant = self.tenant_label(service);
            if ok > 0 {
                self.by_service
                    .with_label_values(&[flow, &tenant, "success"])
                    .inc_by(ok);
            }
            if err > 0 {
                self.by_service
                    .with_label_values(&[flow, &tenant, "error"])
                    .inc_by(err);
            }
        }
        let mut s = self.summary.lock().expect("metrics lock");
        let e = s.entry(flow.to_string()).or_insert_with(|| FlowSummary {
            flow: flow.to_string(),
            ..FlowSummary::default()
        });
        e.total_events += total;
        e.success_events += success;
        e.error_events += total - success;
        e.sum_duration += sum;
        e.last_duration_seconds = round6(last);
        e.avg_duration_seconds = round6(e.sum_duration / e.total_events as f64);
        e.last_processed_at = Some(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    }

    /// Adds `n` records with `outcome` (one of [`OUTCOMES`]).
    pub fn records(&self, flow: &str, outcome: &str, n: u64) {
        if n > 0 {
            self.records.with_label_values(&[flow, outcome]).inc_by(n);
        }
    }

    /// Per-flow summaries, sorted by flow name.
    pub fn summaries(&self) -> Vec<FlowSummary> {
        self.summary
            .lock()
            .expect("metrics lock")
            .values()
            .cloned()
            .collect()
    }

    /// Number of distinct tenants seen (capped).
    pub fn active_services(&self) -> usize {
        self.tenants.lock().expect("metrics lock").len()
    }
}

/// Rounds to 6 decimals, as Kafnus's `/health` does.
pub fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_family_and_caps_tenants() {
        let m = Metrics::new(&["historic".into()], 2);
        m.messages_done(
            "historic",
            [("a", true, 0.01), ("b", false, 0.02)],
            Utc::now(),
        );
        m.messages_done("historic", [("c", true, 0.03)], Utc::now());
        let text = m.render();
        for name in [
            "messages_processed_total{flow=\"historic\"} 3",
            "messages_processed_by_service_total{fiware_service=\"other\",flow=\"historic\",result=\"success\"} 1",
            "messages_processed_by_service_total{fiware_service=\"b\",flow=\"historic\",result=\"error\"} 1",
            "message_processing_duration_seconds_count{flow=\"historic\"} 3",
            "ngsiflow_records_total{flow=\"historic\",outcome=\"stale_ignored\"} 0",
            "ngsiflow_flow_paused{flow=\"historic\"} 0",
            "ngsiflow_build_info{version=",
            "message_processing_time_seconds{flow=\"historic\"} 0.03",
        ] {
            assert!(text.contains(name), "missing {name}\n{text}");
        }
        let s = &m.summaries()[0];
        assert_eq!(
            (s.total_events, s.success_events, s.error_events),
            (3, 2, 1)
        );
        assert_eq!(s.avg_duration_seconds, 0.02);
    }
}
