//! Command-line and environment configuration, validated at start-up (pure apart from reading
//! the flows directory).
//!
//! Every flag has an `NGSIFLOW_*` environment fallback. Invalid values stop the process before
//! it connects anywhere, with a message naming the flag or flow-file key and exit code 2.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use crate::flow::{load_flows, FlowConfigError, FlowSpec};
use crate::route::Datamodel;

/// Flags of `ngsiflow run`.
#[derive(Debug, Clone, Args, Serialize)]
pub struct RunArgs {
    /// Kafka bootstrap servers (host:port[,host:port…]).
    #[arg(long, env = "NGSIFLOW_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// PostgreSQL connection (URL `postgres://user:pass@host:port/db` or `key=value` form).
    #[arg(
        long,
        env = "NGSIFLOW_PG_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        value_parser = parse_pg_url
    )]
    pub pg_url: String,
    /// Prefix of every topic name (input topics and the dead-letter topic), e.g. `smc_`.
    #[arg(long, env = "NGSIFLOW_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,
    /// Base of the consumer group names: each flow uses `<group>-<flow>` unless its file says.
    #[arg(long, env = "NGSIFLOW_GROUP", default_value = "ngsiflow")]
    pub group: String,
    /// Directory holding the flow files (`*.toml`).
    #[arg(long, env = "NGSIFLOW_FLOWS_DIR", default_value = "flows")]
    pub flows_dir: PathBuf,
    /// Per-tenant routing (`[services.<fiware-service>]` with `datamodel` and `schema`);
    /// default `<flows-dir>/tenants.toml` when that file exists.
    #[arg(long, env = "NGSIFLOW_TENANTS_FILE")]
    pub tenants_file: Option<PathBuf>,
    /// Run only these flows (comma-separated names); default: every enabled flow.
    #[arg(long, env = "NGSIFLOW_FLOWS", value_delimiter = ',')]
    pub flows: Vec<String>,
    /// Admin HTTP server address (`/metrics`, `/health`, `/ready`, `/logLevel`, `/config`).
    #[arg(long, env = "NGSIFLOW_ADMIN_ADDR", default_value = "0.0.0.0:8000")]
    pub admin_addr: SocketAddr,
    /// Records per flush window (one transaction), 1–100000. Larger windows make larger
    /// statements (PostgreSQL's cost per row falls) and take more memory (README, "Memory").
    #[arg(long, env = "NGSIFLOW_BATCH_SIZE", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
    /// Longest wait, in milliseconds, before a non-full window is flushed (0–60000). It is the
    /// floor of the commit latency at low rates; a backlog fills windows by size long before.
    /// (At 10k notifications/s, 50 ms gave p99 172–204 ms against 253–268 ms for 100 ms.)
    #[arg(long, env = "NGSIFLOW_LINGER_MS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub linger_ms: u64,
    /// Messages each flow reads ahead of a window write, from what the consumer has fetched
    /// already, and decodes while the window is written (0–100000; 0: none). Each takes its
    /// decoded size in memory (README, "Memory"). Default: three quarters of a window, which
    /// keeps the benchmark drain's peak RSS under 64 MiB (58–59 MiB in paired drains on
    /// 2026-12-03, as with 1000, at 8–10 % more notifications/s; a whole window of 2000
    /// drained 2–4 % faster still, at 60–64 MiB).
    #[arg(long, env = "NGSIFLOW_READ_AHEAD", default_value_t = 1500, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub read_ahead: u32,
    /// Threads that run the flows' tasks (decoding, transforming, the sink's client side),
    /// 1–256; librdkafka and the dead-letter producer have threads of their own besides. The
    /// default is one, as Kafnus's Node.js processor and Faust run a worker: on the benchmark's
    /// 2 cores, two threads drained no faster, took about 10 % more worker CPU per notification
    /// (tasks woken and records freed across threads) and 3-7 MiB more peak RSS (9 drains each
    /// on 2026-12-03, README "Trading latency for throughput"). More help when several busy
    /// flows share a machine with cores to spare; otherwise scale out with more workers in the
    /// consumer group.
    #[arg(long, env = "NGSIFLOW_WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub worker_threads: u16,
    /// Datamodel when a record has no `fiware-datamodel` header.
    #[arg(long, env = "NGSIFLOW_DEFAULT_DATAMODEL", default_value = "dm-by-entity-type-database", value_parser = parse_datamodel)]
    pub default_datamodel: Datamodel,
    /// SRID embedded in every geometry.
    #[arg(long, env = "NGSIFLOW_SRID", default_value_t = 4326, value_parser = clap::value_parser!(i32).range(1..=999_999))]
    pub srid: i32,
    /// Dead-letter topic for copies of failed records; default `<prefix>ngsiflow_dead_letter`.
    #[arg(long, env = "NGSIFLOW_DEAD_LETTER_TOPIC")]
    pub dead_letter_topic: Option<String>,
    /// Log level (`error`, `warn`, `info`, `debug`, `trace`) or a tracing filter directive.
    #[arg(long, env = "NGSIFLOW_LOG_LEVEL", default_value = "info", value_parser = parse_level)]
    pub log_level: String,
    /// Distinct `fiware_service` label values before others are counted as `other`.
    #[arg(long, env = "NGSIFLOW_MAX_TENANT_LABELS", default_value_t = 100)]
    pub max_tenant_labels: usize,
    /// Longest pause, in milliseconds, between retries of a transient database failure.
    #[arg(long, env = "NGSIFLOW_RETRY_MAX_BACKOFF_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub retry_max_backoff_ms: u64,
    /// Longest time, in milliseconds, one flush window's transaction may take before it is
    /// abandoned and retried as a transient failure.
    #[arg(long, env = "NGSIFLOW_DB_TIMEOUT_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1_000..=3_600_000))]
    pub db_timeout_ms: u64,
    /// PostgreSQL `lock_timeout`, in milliseconds, of the worker's connections: a table whose
    /// lock another session holds longer is set aside (its records wait, offsets uncommitted)
    /// while the flow writes its other tables, and is retried after 1, 2, 4, then every 8 s.
    #[arg(long, env = "NGSIFLOW_LOCK_TIMEOUT_MS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub lock_timeout_ms: u64,
    /// librdkafka statistics interval in milliseconds (feeds the consumer lag gauge).
    #[arg(long, env = "NGSIFLOW_KAFKA_STATS_MS", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub kafka_stats_ms: u64,
    /// Error log (`schema.table`) for bad records whose tenant has no schema, or a name
    /// PostgreSQL cannot hold: a `fiware-service` header never creates a schema. Created with
    /// its schema on first use; each row's error names the service.
    #[arg(long, env = "NGSIFLOW_FALLBACK_ERROR_LOG", default_value = "ngsiflow.error_log", value_parser = parse_table)]
    pub fallback_error_log: String,
    /// Error-log rows older than this many days are deleted, in batches of 1 000 every 5
    /// minutes by a background task (default: kept for ever).
    #[arg(long, env = "NGSIFLOW_ERROR_LOG_RETENTION", value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub error_log_retention: Option<u32>,
    /// Rows kept per error-log table (one per tenant, plus the fallback one): the oldest
    /// beyond this are deleted by the same task (default: no cap).
    #[arg(long, env = "NGSIFLOW_ERROR_LOG_MAX_ROWS", value_parser = clap::value_parser!(u64).range(1..))]
    pub error_log_max_rows: Option<u64>,
    /// Largest message value, in bytes, that is decoded; a larger one is a bad record (error
    /// log row and dead-letter copy) without being parsed, so that one message cannot take
    /// memory far beyond its size. Default 1 MiB, Kafka's default `message.max.bytes`.
    #[arg(long, env = "NGSIFLOW_MAX_MESSAGE_BYTES", default_value_t = 1_048_576, value_parser = clap::value_parser!(u64).range(1_024..=1_073_741_824))]
    pub max_message_bytes: u64,
    /// File holding the PostgreSQL password; it replaces any password in `--pg-url`.
    #[arg(long, env = "NGSIFLOW_PG_PASSWORD_FILE")]
    pub pg_password_file: Option<PathBuf>,
    /// Kafka TLS and SASL.
    #[command(flatten)]
    #[serde(flatten)]
    pub kafka_security: KafkaSecurityArgs,
    /// Extra librdkafka properties for consumers and the dead-letter producer (`key=value`,
    /// repeatable), e.g. `-X fetch.max.bytes=1048576`; they override the named flags.
    #[arg(short = 'X', long = "kafka-config", env = "NGSIFLOW_KAFKA_CONFIG", value_delimiter = ';', value_parser = parse_kv)]
    pub kafka_config: Vec<(String, String)>,
}

fn parse_table(s: &str) -> Result<String, String> {
    crate::route::TableRef::parse_qualified(s).map(|_| s.to_string())
}

fn parse_pg_url(s: &str) -> Result<String, String> {
    crate::postgis::tls::PgConnect::parse(s, None)
        .map(|_| s.to_string())
        .map_err(|e| format!("invalid PostgreSQL connection string: {e}"))
}

/// Kafka TLS and SASL flags shared by `run` and `produce`, named after the librdkafka
/// properties they set (`security.protocol`, `sasl.mechanism`, `sasl.username`,
/// `sasl.password`, `ssl.ca.location`, `ssl.certificate.location`, `ssl.key.location`);
/// `-X key=value` still overrides any of them. The password is never serialised (`/config`).
#[derive(Debug, Clone, Default, Args, Serialize)]
pub struct KafkaSecurityArgs {
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    #[arg(long, env = "NGSIFLOW_KAFKA_SECURITY_PROTOCOL", value_parser = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"], ignore_case = true)]
    pub kafka_security_protocol: Option<String>,
    /// SASL mechanism: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    #[arg(long, env = "NGSIFLOW_KAFKA_SASL_MECHANISM", value_parser = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"], ignore_case = true)]
    pub kafka_sasl_mechanism: Option<String>,
    /// SASL user name.
    #[arg(long, env = "NGSIFLOW_KAFKA_SASL_USERNAME")]
    pub kafka_sasl_username: Option<String>,
    /// SASL password (prefer the file or the environment: a flag shows in `ps`).
    #[arg(long, env = "NGSIFLOW_KAFKA_SASL_PASSWORD", hide_env_values = true)]
    #[serde(skip)]
    pub kafka_sasl_password: Option<String>,
    /// File holding the SASL password (one line; a trailing newline is ignored).
    #[arg(
        long,
        env = "NGSIFLOW_KAFKA_SASL_PASSWORD_FILE",
        conflicts_with = "kafka_sasl_password"
    )]
    pub kafka_sasl_password_file: Option<PathBuf>,
    /// CA certificate(s), PEM, that the brokers' certificates must chain to (default: the
    /// system's trust store, as librdkafka does).
    #[arg(long, env = "NGSIFLOW_KAFKA_SSL_CA_LOCATION")]
    pub kafka_ssl_ca_location: Option<PathBuf>,
    /// Client certificate, PEM, for brokers that require one (mutual TLS).
    #[arg(long, env = "NGSIFLOW_KAFKA_SSL_CERTIFICATE_LOCATION")]
    pub kafka_ssl_certificate_location: Option<PathBuf>,
    /// Client private key, PEM, for `--kafka-ssl-certificate-location`.
    #[arg(long, env = "NGSIFLOW_KAFKA_SSL_KEY_LOCATION")]
    pub kafka_ssl_key_location: Option<PathBuf>,
}

/// Reads a secret from `path`: the whole file less one trailing newline (`\n` or `\r\n`).
///
/// # Errors
/// A message naming `flag` and the file when it cannot be read or is empty.
pub fn read_secret_file(flag: &str, path: &std::path::Path) -> Result<String, String> {
    let s = std::fs::read_to_string(path)
        .map_err(|e| format!("{flag}: cannot read {}: {e}", path.display()))?;
    let s = s
        .strip_suffix('\n')
        .map(|s| s.strip_suffix('\r').unwrap_or(s))
        .unwrap_or(&s);
    if s.is_empty() {
        return Err(format!("{flag}: {} is empty", path.display()));
    }
    Ok(s.to_string())
}

fn parse_datamodel(s: &str) -> Result<Datamodel, String> {
    s.parse()
        .map_err(|e: crate::route::RouteError| e.to_string())
}

fn parse_level(s: &str) -> Result<String, String> {
    let s = s.trim().to_lowercase();
    tracing_subscriber::EnvFilter::try_new(&s)
        .map(|_| s.clone())
        .map_err(|e| format!("invalid log level {s:?}: {e}"))?;
    if !s.contains('=') && !["error", "warn", "info", "debug", "trace", "off"].contains(&s.as_str())
    {
        return Err(format!(
            "invalid log level {s:?}: use error, warn, info, debug or trace"
        ));
    }
    Ok(s)
}

/// Parses `key=value`.
///
/// # Errors
/// A message when there is no `=` or the key is empty.
pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected key=value, got {s:?}")),
    }
}

/// Configuration error found after flag parsing; `main` prints it and exits with code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flow file is invalid.
    #[error("invalid configuration: {0}")]
    Flow(#[from] FlowConfigError),
    /// `--flows` names a flow that no file defines.
    #[error("invalid configuration: --flows: unknown flow {0:?}")]
    UnknownFlow(String),
    /// A secret file, a certificate or a TLS/SASL setting is unusable.
    #[error("invalid configuration: {0}")]
    Security(String),
    /// The tenants file is invalid.
    #[error("invalid configuration: {0}")]
    Tenants(#[from] crate::tenants::TenantsError),
    /// No flow is enabled.
    #[error(
        "invalid configuration: no flow is enabled (check `enabled` in the flow files and --flows)"
    )]
    NoFlows,
}

/// The effective configuration of a worker.
#[derive(Debug, Clone)]
pub struct Config {
    /// Flags as given.
    pub args: RunArgs,
    /// Flows to run (enabled and selected).
    pub flows: Vec<FlowSpec>,
    /// Dead-letter topic, resolved.
    pub dead_letter_topic: String,
    /// PostgreSQL settings and TLS connector (password file and certificates read).
    pub pg: crate::postgis::PgEndpoint,
    /// librdkafka properties for every client: the security flags, then `-X` overrides.
    pub kafka_settings: Vec<(String, String)>,
    /// Per-tenant routing (`--tenants-file`).
    pub tenants: std::sync::Arc<crate::tenants::Tenants>,
}

impl Config {
    /// Loads and validates the flows for `args`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and key, an unknown `--flows` entry, or no flow enabled.
    pub fn from_args(args: RunArgs) -> Result<Self, ConfigError> {
        let all = load_flows(&args.flows_dir, &args.topic_prefix, &args.group)?;
        for name in &args.flows {
            if !all.iter().any(|f| &f.name == name) {
                return Err(ConfigError::UnknownFlow(name.clone()));
            }
        }
        let flows: Vec<FlowSpec> = all
            .into_iter()
            .filter(|f| f.enabled && (args.flows.is_empty() || args.flows.contains(&f.name)))
            .collect();
        if flows.is_empty() {
            return Err(ConfigError::NoFlows);
        }
        let tenants = crate::tenants::Tenants::load(args.tenants_file.as_deref(), &args.flows_dir)?;
        let dead_letter_topic = args
            .dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{}ngsiflow_dead_letter", args.topic_prefix));
        let password = args
            .pg_password_file
            .as_deref()
            .map(|p| read_secret_file("--pg-password-file", p))
            .transpose()
            .map_err(ConfigError::Security)?;
        let pg = crate::postgis::PgEndpoint::new(&args.pg_url, password.as_deref())
            .map_err(|e| ConfigError::Security(format!("--pg-url: {e}")))?;
        let kafka_settings = crate::kafka::security_settings(&args.kafka_security)
            .map_err(ConfigError::Security)?
            .into_iter()
            .chain(args.kafka_config.iter().cloned())
            .collect();
        Ok(Self {
            args,
            flows,
            dead_letter_topic,
            pg,
            kafka_settings,
            tenants: std::sync::Arc::new(tenants),
        })
    }

    /// The effective configuration as JSON with every secret masked (`/config`).
    pub fn masked_json(&self) -> serde_json::Value {
        let mut args = serde_json::to_value(&self.args).unwrap_or_default();
        if let Some(obj) = args.as_object_mut() {
            obj.insert("pg_url".into(), mask_url(&self.args.pg_url).into());
            let kc: serde_json::Map<String, serde_json::Value> = self
                .args
                .kafka_config
                .iter()
                .map(|(k, v)| {
                    let v = if is_secret_key(k) {
                        MASK.to_string()
                    } else {
                        mask_url(v)
                    };
                    (k.clone(), v.into())
                })
                .collect();
            obj.insert("kafka_config".into(), kc.into());
            obj.insert("brokers".into(), mask_url(&self.args.brokers).into());
        }
        serde_json::json!({
            "args": args,
            "dead_letter_topic": self.dead_letter_topic,
            "flows": self.flows,
            "tenants": *self.tenants,
        })
    }
}

/// What replaces a secret in `/config` and logs.
pub const MASK: &str = "***redacted***";

/// True for keys that hold secrets (password, secret, token, key material, SASL settings).
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "secret",
        "token",
        "sasl",
        "private",
        ".key",
        "credential",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// Masks the password of a URL (`postgres://u:p@h/db` → `postgres://u:***redacted***@h/db`) and
/// `password=` in key=value connection strings; other text is returned unchanged.
pub fn mask_url(s: &str) -> String {
    let mut out = s.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| rest_start + i);
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let userinfo = &out[rest_start..rest_start + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(rest_start + colon + 1..rest_start + at, MASK);
            }
        }
    }
    // key=value form and URL query parameters
    let mut masked = String::with_capacity(out.len());
    for (i, part) in out.split_inclusive([' ', '&', '?']).enumerate() {
        let _ = i;
        match part.split_once('=') {
            Some((k, v)) if is_secret_key(k.trim_start_matches(['?', '&'])) => {
                let tail = if v.ends_with([' ', '&', '?']) {
                    &v[v.len() - 1..]
                } else {
                    ""
                };
                masked.push_str(k);
                masked.push('=');
                masked.push_str(MASK);
                masked.push_str(tail);
            }
            _ => masked.push_str(part),
        }
    }
    masked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_secrets() {
        let cases = [
            (
                "postgres://ngsi:s3cret@db:5432/tests",
                "postgres://ngsi:***redacted***@db:5432/tests",
            ),
            ("postgres://ngsi@db/tests", "postgres://ngsi@db/tests"),
            (
                "host=db user=u password=s3cret dbname=x",
                "host=db user=u password=***redacted*** dbname=x",
            ),
            (
                "postgres://db/x?user=u&password=s3cret&sslmode=off",
                "postgres://db/x?user=u&password=***redacted***&sslmode=off",
            ),
            ("127.0.0.1:9092", "127.0.0.1:9092"),
        ];
        for (input, want) in cases {
            assert_eq!(mask_url(input), want, "{input}");
            assert!(!mask_url(input).contains("s3cret"));
        }
        assert!(is_secret_key("sasl.password"));
        assert!(is_secret_key("ssl.key.password"));
        assert!(!is_secret_key("bootstrap.servers"));
    }

    #[test]
    fn level_validation() {
        assert!(parse_level("INFO").is_ok());
        assert!(parse_level("ngsiflow=debug").is_ok());
        assert!(parse_level("loud").is_err());
    }
}
