//! Start-up validation (exit code 2 naming the key), the `errors` flow (Kafka Connect dead
//! letters into the tenant's error log) and failed lastdata deletes being logged.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn invalid_configuration_exits_2_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("ngsiflow-badflows-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad_dir = dir.to_str().unwrap().to_string();
    let good_dir = repo().join("flows").to_str().unwrap().to_string();
    // (flow file written to the bad directory, flags, what stderr must name)
    let empty = dir.join("empty-secret");
    std::fs::write(&empty, "\n").unwrap();
    let empty = empty.to_str().unwrap().to_string();
    let tenants = dir.join("bad-tenants.txt");
    std::fs::write(&tenants, "[services.acme]\ndatamodel = \"dm-nope\"\n").unwrap();
    let tenants = tenants.to_str().unwrap().to_string();
    let cases: [(Option<&str>, Vec<&str>, &str); 11] = [
        (
            None,
            vec!["--flows-dir", &good_dir, "--tenants-file", &tenants],
            "bad-tenants.txt: services.acme.datamodel: unknown datamodel \"dm-nope\"",
        ),
        (
            Some("name = \"historic\"\nwrite_mode = \"insert\"\nbatch = 3\n"),
            vec!["--flows-dir", &bad_dir],
            "batch",
        ),
        (
            Some("name = \"historic\"\nwrite_mode = \"upsert\"\n"),
            vec!["--flows-dir", &bad_dir],
            "key `key_columns`",
        ),
        (None, vec!["--batch-size", "0"], "--batch-size"),
        (None, vec!["--worker-threads", "0"], "--worker-threads"),
        (
            None,
            vec!["--flows", "nope", "--flows-dir", &good_dir],
            "--flows: unknown flow \"nope\"",
        ),
        (
            None,
            vec![
                "--flows-dir",
                &good_dir,
                "--pg-password-file",
                "/nonexistent/pw",
            ],
            "--pg-password-file: cannot read /nonexistent/pw",
        ),
        (
            None,
            vec![
                "--flows-dir",
                &good_dir,
                "--kafka-security-protocol",
                "sasl_ssl",
                "--kafka-sasl-username",
                "u",
                "--kafka-sasl-password-file",
                &empty,
            ],
            "--kafka-sasl-password-file",
        ),
        (
            None,
            vec![
                "--flows-dir",
                &good_dir,
                "--kafka-sasl-mechanism",
                "SCRAM-SHA-256",
            ],
            "need --kafka-security-protocol sasl_ssl",
        ),
        (
            None,
            vec!["--pg-url", "postgres://db/x?sslmode=verify-full"],
            "needs sslrootcert",
        ),
        (
            None,
            vec![
                "--flows-dir",
                &good_dir,
                "--pg-url",
                "postgres://db/x?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            ],
            "sslrootcert /nonexistent/ca.pem",
        ),
    ];
    for (file, flags, want) in cases {
        if let Some(text) = file {
            std::fs::write(dir.join("historic.toml"), text).unwrap();
        }
        let out = Command::new(env!("CARGO_BIN_EXE_ngsiflow"))
            .arg("run")
            .args(&flags)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {err}");
        assert!(
            err.contains(want),
            "{flags:?}: {err:?} should name {want:?}"
        );
        if file.is_some() {
            assert!(err.contains("historic.toml"), "{err}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_dead_letters_and_failed_deletes_reach_the_error_log() {
    let broker = Broker::start();
    let db = TestDb::create("ngsiflow_t_errors").await;
    create_topics(&broker.addr, &["smc_raw_errors", "smc_raw_lastdata"], 1).await;
    // A tenant whose error log exists with the wrong shape: its Connect record cannot become a
    // row, so it must become a dead letter instead of vanishing.
    db.client
        .batch_execute("CREATE SCHEMA broken; CREATE TABLE broken.broken_error_log (x int)")
        .await
        .unwrap();
    let p = TestProducer::new(&broker.addr);
    p.send(
        "smc_raw_errors",
        &[
            ("__connect.errors.topic", "smc_broken_historic_processed"),
            ("__connect.errors.exception.message", "ERROR: lost?"),
        ],
        r#"{"entityid":"B"}"#,
    )
    .await;
    p.send(
        "smc_raw_errors",
        &[
            ("__connect.errors.topic", "smc_acme_lastdata_processed"),
            (
                "__connect.errors.exception.message",
                "ERROR: null value in column \"status\" violates not-null constraint",
            ),
            ("__connect.errors.stage", "TASK_PUT"),
        ],
        r#"{"entityid":"Bay:17"}"#,
    )
    .await;
    p.send(
        "smc_raw_lastdata",
        &headers("demo", "/city"),
        &notification(&[json!({"id": "Z1", "type": "Nope", "alterationType": {"type": "Text", "value": "entityDelete"}})]),
    )
    .await;
    let w = Worker::start(
        &broker.addr,
        &db.url,
        "errors",
        &[
            "--flows",
            "errors,lastdata",
            "--topic-prefix",
            "smc_",
            "--worker-threads",
            "3",
        ],
    );
    // Tenant "acme" has no schema: its row goes to the fallback error log, naming the service,
    // and no schema is created for it.
    let acme = db
        .wait_table_rows("ngsiflow.error_log", 1, Duration::from_secs(60))
        .await;
    assert_eq!(
        acme,
        vec![(
            "fiware-service \"acme\": ERROR: null value in column \"status\" violates not-null constraint \
             [stage TASK_PUT; source smc_acme_lastdata_processed]"
                .to_string(),
            r#"{"entityid":"Bay:17"}"#.to_string()
        )],
        "{}",
        w.logs()
    );
    assert_eq!(db.count("pg_namespace WHERE nspname = 'acme'").await, 0);
    let demo = db.wait_error_rows("demo", 1, Duration::from_secs(60)).await;
    assert_eq!(
        demo,
        vec![(
            "table \"demo\".\"city_nope_lastdata\" does not exist".to_string(),
            "DELETE FROM \"demo\".\"city_nope_lastdata\" WHERE \"entityid\" = 'Z1'".to_string()
        )]
    );
    // The flows ran on the threads asked for, as the runtime itself counts them.
    let (_, health) = w.get("/health").await;
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["process"]["workerThreads"], 3, "{health}");
    // The prefixed dead-letter topic exists and got the failed delete, not the Connect record.
    let t = Duration::from_secs(30);
    w.wait_metric("ngsiflow_dead_letter_total{flow=\"lastdata\"} 1", t)
        .await;
    // Dead letters are counted before the window commits and the record outcomes after it, so
    // each is awaited rather than read from one scrape.
    for needle in [
        "ngsiflow_dead_letter_total{flow=\"errors\"} 1",
        "ngsiflow_error_log_failures_total{flow=\"errors\"} 1",
        "ngsiflow_records_total{flow=\"errors\",outcome=\"written\"} 1",
        "ngsiflow_records_total{flow=\"errors\",outcome=\"error_logged\"} 1",
    ] {
        w.wait_metric(needle, t).await;
    }
}
