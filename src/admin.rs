//! Admin HTTP server (hyper; does I/O): `/metrics`, `/health`, `/ready`, `/logLevel`, `/config`.
//!
//! Shapes follow Kafnus's admin server where it has them; unlike it, log levels are validated,
//! `/ready` checks the broker assignment and PostgreSQL, and every request is counted in RED
//! metrics under a bounded route label.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::kafka::FlowStatus;
use crate::metrics::{round6, Metrics};

/// Content type of the Prometheus text exposition.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Routes counted by name; everything else is `__other__`.
pub const ROUTES: [&str; 5] = ["/metrics", "/health", "/ready", "/logLevel", "/config"];

/// Changes the process's log filter at runtime.
pub trait LogControl: Send + Sync {
    /// Current level.
    fn level(&self) -> String;
    /// Applies a new level.
    ///
    /// # Errors
    /// A message when the level is not one of error, warn, info, debug, trace.
    fn set_level(&self, level: &str) -> Result<String, String>;
}

/// What the admin server reads.
pub struct AdminState {
    /// Metrics registry and summaries.
    pub metrics: Arc<Metrics>,
    /// Configuration (for `/config`).
    pub config: Arc<Config>,
    /// Per-flow live state, by flow name.
    pub flows: Vec<(String, Arc<FlowStatus>)>,
    /// Log level control.
    pub log: Arc<dyn LogControl>,
    /// Process start.
    pub started: DateTime<Utc>,
    /// Address actually bound.
    pub addr: Mutex<Option<SocketAddr>>,
}

/// Binds `addr` and serves until `cancel` fires, then finishes in-flight requests (up to 5 s).
///
/// # Errors
/// The bind error.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<AdminState>,
    cancel: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    *state.addr.lock().expect("admin lock") = Some(local);
    tracing::info!(addr = %local, "admin server listening");
    tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        let builder = Builder::new(TokioExecutor::new());
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let state = state.clone();
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
    });
    Ok(local)
}

type Resp = Response<Full<Bytes>>;

fn json_response(status: StatusCode, body: serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn empty(status: StatusCode) -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

fn method_not_allowed(allow: &'static str) -> Resp {
    let mut r = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        json!({"error": "MethodNotAllowed"}),
    );
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

/// Handles one request and records RED metrics.
pub async fn handle(state: &AdminState, req: Request<Incoming>) -> Resp {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let route = ROUTES
        .iter()
        .find(|r| **r == path)
        .copied()
        .unwrap_or("__other__");
    let resp = route_request(state, req, route).await;
    let m = &state.metrics;
    m.admin_requests
        .with_label_values(&[method.as_str(), route, resp.status().as_str()])
        .inc();
    m.admin_duration
        .with_label_values(&[method.as_str(), route])
        .observe(started.elapsed().as_secs_f64());
    resp
}

async fn route_request(state: &AdminState, req: Request<Incoming>, route: &str) -> Resp {
    let method = req.method().clone();
    match (route, &method) {
        ("/metrics", &Method::GET) => metrics(state, &req),
        ("/health", &Method::GET) => json_response(StatusCode::OK, health(state)),
        ("/ready", &Method::GET) => ready(state).await,
        ("/logLevel", &Method::GET) => json_response(
            StatusCode::OK,
            json!({"level": state.log.level().to_uppercase()}),
        ),
        ("/logLevel", &Method::POST) => set_level(state, req).await,
        ("/logLevel", _) => method_not_allowed("GET, POST"),
        ("/config", &Method::GET) => json_response(StatusCode::OK, state.config.masked_json()),
        ("/config", _) => method_not_allowed("GET"),
        ("/metrics" | "/health" | "/ready", _) => method_not_allowed("GET"),
        _ => empty(StatusCode::NOT_FOUND),
    }
}

/// Whether an `Accept` header admits the Prometheus text format.
pub fn accepts_text(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return true };
    if accept.trim().is_empty() {
        return true;
    }
    accept.split(',').any(|part| {
        let media = part
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        matches!(media.as_str(), "*/*" | "text/*" | "text/plain")
    })
}

fn metrics(state: &AdminState, req: &Request<Incoming>) -> Resp {
    let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
    if !accepts_text(accept) {
        return json_response(
            StatusCode::NOT_ACCEPTABLE,
            json!({"error": "NotAcceptable", "description": format!("metrics are served as {PROMETHEUS_CONTENT_TYPE}")}),
        );
    }
    let now_ms = Utc::now().timestamp_millis();
    let limit = crate::kafka::broker_silence_limit_ms(state.config.args.kafka_stats_ms);
    for (name, s) in &state.flows {
        let m = &state.metrics;
        m.window_write_age
            .with_label_values(&[name])
            .set(s.write_age_seconds(now_ms));
        m.broker_reachable
            .with_label_values(&[name])
            .set(i64::from(s.broker_problem(now_ms, limit).is_none()));
    }
    let mut r = Response::new(Full::new(Bytes::from(state.metrics.render())));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE),
    );
    r
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

/// The `/health` body: liveness plus the pipeline summary (the shape of Kafnus's `/health`).
pub fn health(state: &AdminState) -> serde_json::Value {
    let now = Utc::now();
    let flows = state.metrics.summaries();
    let total: u64 = flows.iter().map(|f| f.total_events).sum();
    let success: u64 = flows.iter().map(|f| f.success_events).sum();
    let errors: u64 = flows.iter().map(|f| f.error_events).sum();
    let rate = if total == 0 {
        1.0
    } else {
        round6(success as f64 / total as f64)
    };
    let active_flows = flows.iter().filter(|f| f.total_events > 0).count();
    let by_flow: Vec<serde_json::Value> = flows
        .iter()
        .map(|f| {
            let status = state
                .flows
                .iter()
                .find(|(n, _)| n == &f.flow)
                .map(|(_, s)| s.clone());
            let mut v = serde_json::to_value(f).unwrap_or_default();
            if let (Some(obj), Some(s)) = (v.as_object_mut(), status) {
                obj.insert(
                    "running".into(),
                    s.running.load(std::sync::atomic::Ordering::Relaxed).into(),
                );
                obj.insert("partitionsAssigned".into(), s.assigned().into());
                obj.insert(
                    "paused".into(),
                    s.paused.load(std::sync::atomic::Ordering::Relaxed).into(),
                );
                let now_ms = now.timestamp_millis();
                obj.insert(
                    "writeInProgressSeconds".into(),
                    round6(s.write_age_seconds(now_ms)).into(),
                );
                let limit = crate::kafka::broker_silence_limit_ms(state.config.args.kafka_stats_ms);
                obj.insert(
                    "brokerProblem".into(),
                    s.broker_problem(now_ms, limit).into(),
                );
            }
            v
        })
        .collect();
    json!({
        "status": "UP",
        "timestamp": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "uptimeSeconds": (now - state.started).num_seconds(),
        "service": {
            "name": "ngsiflow",
            "version": env!("CARGO_PKG_VERSION"),
            "runtime": "rust",
            "processStartTimeSeconds": state.started.timestamp(),
        },
        "process": {
            "pid": std::process::id(),
            "memory": {"rssBytes": rss_bytes()},
            // As the runtime reports it, not as configured: `--worker-threads` applied.
            "workerThreads": tokio::runtime::Handle::try_current()
                .map(|h| h.metrics().num_workers())
                .ok(),
        },
        "admin": {
            "port": state.addr.lock().expect("admin lock").map(|a| a.port()),
            "logLevel": state.log.level().to_uppercase(),
            "endpoints": ROUTES,
        },
        "pipeline": {
            "totalEvents": total,
            "successEvents": success,
            "errorEvents": errors,
            "successRate": rate,
            "activeServices": state.metrics.active_services(),
            "activeFlows": active_flows,
            "byFlow": by_flow,
        },
        "metrics": {"registryContentType": PROMETHEUS_CONTENT_TYPE, "registeredMetrics": state.metrics.family_count()},
    })
}

async fn ready(state: &AdminState) -> Resp {
    let mut reasons = Vec::new();
    for (name, s) in &state.flows {
        if !s.running.load(std::sync::atomic::Ordering::Relaxed) {
            reasons.push(format!("flow {name} is not running"));
            continue;
        }
        if s.assigned() == 0 {
            reasons.push(format!("flow {name} has no partitions assigned"));
        }
        let limit = crate::kafka::broker_silence_limit_ms(state.config.args.kafka_stats_ms);
        if let Some(problem) = s.broker_problem(Utc::now().timestamp_millis(), limit) {
            reasons.push(format!("flow {name} {problem}"));
        }
    }
    if !crate::postgis::reachable(&state.config.pg, Duration::from_secs(2)).await {
        reasons.push("postgresql is not reachable".into());
    }
    if reasons.is_empty() {
        json_response(StatusCode::OK, json!({"status": "READY"}))
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "NOT_READY", "reasons": reasons}),
        )
    }
}

async fn set_level(state: &AdminState, req: Request<Incoming>) -> Resp {
    // The body is a tiny JSON object: anything over 4 KiB is refused, not buffered.
    let body = match http_body_util::Limited::new(req.into_body(), 4096)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return json_response(StatusCode::BAD_REQUEST, json!({"error": "Invalid body"})),
    };
    let v: serde_json::Value = if body.is_empty() {
        serde_json::Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => {
                return json_response(StatusCode::BAD_REQUEST, json!({"error": "Invalid JSON"}))
            }
        }
    };
    let Some(level) = v.get("level").and_then(|l| l.as_str()) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "Missing \"level\" field"}),
        );
    };
    match state.log.set_level(level) {
        Ok(l) => json_response(
            StatusCode::OK,
            json!({"ok": true, "level": l.to_uppercase()}),
        ),
        Err(e) => json_response(StatusCode::BAD_REQUEST, json!({"error": e})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        for (accept, ok) in [
            (None, true),
            (Some(""), true),
            (Some("*/*"), true),
            (Some("text/plain"), true),
            (Some("text/plain;version=0.0.4;q=0.9,*/*;q=0.1"), true),
            (
                Some("application/openmetrics-text; version=1.0.0, text/plain;q=0.5"),
                true,
            ),
            (Some("application/json"), false),
            (Some("application/openmetrics-text"), false),
        ] {
            assert_eq!(accepts_text(accept), ok, "{accept:?}");
        }
    }
}
