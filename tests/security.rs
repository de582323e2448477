//! Security against real endpoints: a PostgreSQL cluster that accepts TCP only over TLS (test CA
//! from scripts/dev-certs.sh), and the Apache Kafka broker with an SSL listener and a SASL_SSL
//! listener (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512). Every libpq `sslmode` and certificate case
//! is tried through ngsiflow's own connection code; then workers and `ngsiflow produce` move
//! the samples over SSL and SASL_SSL into the TLS-only database, with passwords from files that
//! never show on `/config` or in the log.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use ngsiflow::postgis::{check, PgEndpoint};

/// Tries `conn`; `Ok` or the error text.
async fn try_pg(conn: &str) -> Result<(), String> {
    let ep = PgEndpoint::new(conn, None)?;
    check(&ep, Duration::from_secs(10)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_sslmodes_and_certificates() {
    let pki = Pki::create();
    let pg = TlsPostgres::start(&pki);
    let port = pg.port;
    let (ca, other_ca) = (pki.path("ca.pem"), pki.path("other-ca.pem"));
    let (cert, key) = (pki.path("client.pem"), pki.path("client.key"));
    // (case, connection string, expected: None = connects, Some(fragment of the error))
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        (
            "disable: the server accepts TLS only",
            format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable"),
            Some("no pg_hba.conf entry"),
        ),
        (
            "allow",
            format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=allow"),
            None,
        ),
        (
            "prefer (default)",
            format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            None,
        ),
        (
            "require, no verification",
            format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=require"),
            None,
        ),
        (
            "require with sslrootcert of another CA acts as verify-ca",
            format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=require&sslrootcert={other_ca}"),
            Some("UnknownIssuer"),
        ),
        (
            "verify-ca, right CA, host not in the certificate",
            format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=verify-ca&sslrootcert={ca}"),
            None,
        ),
        (
            "verify-ca, certificate from another CA",
            format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=verify-ca&sslrootcert={other_ca}"),
            Some("UnknownIssuer"),
        ),
        (
            "verify-full, right CA and host",
            format!("postgres://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={ca}"),
            None,
        ),
        (
            "verify-full, certificate for another host",
            format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=verify-full&sslrootcert={ca}"),
            Some("not valid for name"),
        ),
        (
            "verify-full, certificate from another CA",
            format!("postgres://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={other_ca}"),
            Some("UnknownIssuer"),
        ),
        (
            "verify-full, key=value form",
            format!("host=localhost port={port} user=postgres dbname=postgres sslmode=verify-full sslrootcert='{ca}'"),
            None,
        ),
        (
            "client certificate (cert authentication)",
            format!("postgres://certuser@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={ca}&sslcert={cert}&sslkey={key}"),
            None,
        ),
        (
            "cert authentication without a client certificate",
            format!("postgres://certuser@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={ca}"),
            Some("certificate"),
        ),
        (
            "verify-full without sslrootcert",
            format!("postgres://postgres@localhost:{port}/postgres?sslmode=verify-full"),
            Some("needs sslrootcert"),
        ),
    ];
    let mut failures = Vec::new();
    for (case, conn, expected) in &cases {
        let got = try_pg(conn).await;
        let outcome = match &got {
            Ok(()) => "connected".to_string(),
            Err(e) => format!("refused: {e}"),
        };
        eprintln!("postgresql {case}: {outcome}");
        let ok = match (expected, &got) {
            (None, Ok(())) => true,
            (Some(fragment), Err(e)) => e.contains(fragment),
            _ => false,
        };
        if !ok {
            failures.push(format!("{case}: expected {expected:?}, got {outcome}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

const SASL_USER: &str = "ngsi";
const SASL_PASSWORD: &str = "kafka-s3cret";

/// `ngsiflow produce --quiet` to `brokers` with `--kafka-security-protocol protocol`, the SASL
/// mechanism and user when given, the CA, then `extra` flags, under `envs`.
fn produce_secured(
    brokers: &str,
    protocol: &str,
    mechanism: Option<&str>,
    ca: &str,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> std::process::Output {
    let mut args = vec![
        "--brokers",
        brokers,
        "--quiet",
        "--kafka-security-protocol",
        protocol,
    ];
    if let Some(m) = mechanism {
        args.extend([
            "--kafka-sasl-mechanism",
            m,
            "--kafka-sasl-username",
            SASL_USER,
        ]);
    }
    args.extend(["--kafka-ssl-ca-location", ca]);
    args.extend(extra);
    Command::new(env!("CARGO_BIN_EXE_ngsiflow"))
        .arg("produce")
        .args(&args)
        .envs(envs.iter().copied())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_and_producer_over_ssl_and_sasl_ssl_into_tls_postgresql() {
    let pki = Pki::create();
    let pg = TlsPostgres::start(&pki);
    pg.create_sample_db("secure");
    let (ssl_port, sasl_port) = (free_port(), free_port());
    let _broker = Broker::start_secured(&pki, ssl_port, sasl_port, SASL_USER, SASL_PASSWORD);
    let ssl = format!("localhost:{ssl_port}");
    let sasl = format!("localhost:{sasl_port}");
    let ca = pki.path("ca.pem");
    let secrets = std::env::temp_dir().join(format!("ngsiflow-secrets-{sasl_port}"));
    std::fs::create_dir_all(&secrets).unwrap();
    let kafka_pw = secrets.join("kafka");
    std::fs::write(&kafka_pw, format!("{SASL_PASSWORD}\n")).unwrap();
    let pg_pw = secrets.join("pg");
    std::fs::write(&pg_pw, "s3cret-pg\n").unwrap();
    let pg_url = format!(
        "postgres://secretuser@localhost:{}/secure?sslmode=verify-full&sslrootcert={ca}",
        pg.port
    );
    let mut outcomes = Vec::new();
    let started = std::time::Instant::now();

    let mut note = |o: &'static str| {
        eprintln!("{:?} {o}", started.elapsed());
        outcomes.push(o);
    };
    // Producers: SCRAM-SHA-256 with the password file named by the environment, PLAIN with
    // the password in the environment, and the SSL listener (CA and host name checked).
    let pw_file = kafka_pw.to_str().unwrap();
    for (brokers, protocol, mechanism, flow, env, outcome) in [
        (
            &sasl,
            "sasl_ssl",
            Some("SCRAM-SHA-256"),
            "historic",
            &[("NGSIFLOW_KAFKA_SASL_PASSWORD_FILE", pw_file)][..],
            "produce SASL_SSL SCRAM-SHA-256 (password file): delivered",
        ),
        (
            &sasl,
            "SASL_SSL",
            Some("plain"),
            "lastdata",
            &[("NGSIFLOW_KAFKA_SASL_PASSWORD", SASL_PASSWORD)][..],
            "produce SASL_SSL PLAIN (password env): delivered",
        ),
        (
            &ssl,
            "ssl",
            None,
            "mutable",
            &[][..],
            "produce SSL: delivered",
        ),
    ] {
        let out = produce_secured(brokers, protocol, mechanism, &ca, &["--flow", flow], env);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        note(outcome);
    }
    // Refusals: wrong SCRAM password, broker certificate from another CA.
    let wrong = secrets.join("wrong");
    std::fs::write(&wrong, "not-it").unwrap();
    let one = ["--count", "1", "-X", "message.timeout.ms=5000"];
    let wrong_pw = [
        &one[..],
        &["--kafka-sasl-password-file", wrong.to_str().unwrap()],
    ]
    .concat();
    let out = produce_secured(
        &sasl,
        "sasl_ssl",
        Some("SCRAM-SHA-512"),
        &ca,
        &wrong_pw,
        &[],
    );
    assert!(
        !out.status.success(),
        "a wrong SCRAM password must not deliver"
    );
    note("produce SASL_SSL SCRAM-SHA-512 wrong password: refused");
    let other_ca = pki.path("other-ca.pem");
    let out = produce_secured(&ssl, "ssl", None, &other_ca, &one, &[]);
    assert!(
        !out.status.success(),
        "a broker certificate from another CA must be refused"
    );
    note("produce SSL with another CA: refused");

    // Worker 1: historic over the SSL listener; worker 2: lastdata and mutable over SASL_SSL
    // with SCRAM-SHA-512. Both write to the TLS-only cluster with verify-full and a password
    // file.
    let w1 = Worker::start(
        &ssl,
        &pg_url,
        "secure-ssl",
        &[
            "--flows",
            "historic",
            "--pg-password-file",
            pg_pw.to_str().unwrap(),
            "--kafka-security-protocol",
            "ssl",
            "--kafka-ssl-ca-location",
            &ca,
        ],
    );
    let w2 = Worker::start_with_env(
        &sasl,
        &pg_url,
        "secure-sasl",
        &[
            "--flows",
            "lastdata,mutable",
            "--kafka-security-protocol",
            "sasl_ssl",
            "--kafka-sasl-mechanism",
            "SCRAM-SHA-512",
            "--kafka-sasl-username",
            SASL_USER,
            "--kafka-ssl-ca-location",
            &ca,
        ],
        &[
            (
                "NGSIFLOW_KAFKA_SASL_PASSWORD_FILE",
                kafka_pw.to_str().unwrap(),
            ),
            ("NGSIFLOW_PG_PASSWORD_FILE", pg_pw.to_str().unwrap()),
        ],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let want = [
        ("demo.city_sensor", 12),
        ("demo.city_zone", 4),
        ("demo.city_sensor_lastdata", 3),
        ("demo.city_zone_mutable", 4),
        ("demo.city_sensor_mutable", 12),
    ];
    loop {
        let counts: Vec<i64> = want.iter().map(|(t, _)| pg.count("secure", t)).collect();
        if counts
            .iter()
            .zip(&want)
            .all(|(c, (_, w))| c == &(*w as i64))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rows {counts:?}, want {want:?}\n--- worker ssl\n{}\n--- worker sasl\n{}",
            w1.logs(),
            w2.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    note("worker SSL -> TLS PostgreSQL verify-full (password file flag): rows written");
    note("worker SASL_SSL SCRAM-SHA-512 -> TLS PostgreSQL (password files by env): rows written");
    // Secrets stay out of /config and the log.
    for w in [&w1, &w2] {
        w.wait_ready(Duration::from_secs(30)).await;
        let (status, config) = w.get("/config").await;
        assert_eq!(status, 200);
        for secret in [SASL_PASSWORD, "s3cret-pg"] {
            assert!(!config.contains(secret), "/config shows a secret: {config}");
            assert!(!w.logs().contains(secret), "the log shows a secret");
        }
        assert!(config.contains("kafka_security_protocol"), "{config}");
    }
    for o in outcomes {
        eprintln!("kafka {o}");
    }
}
