//! Test harness: a real Apache Kafka broker (scripts/kafka.sh), a fresh PostGIS database per
//! test, the real `ngsiflow` binary as a child process, and a producer. Every process is stopped
//! on drop.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio_postgres::{Client, NoTls};

pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A free TCP port on 127.0.0.1, never the same twice in this test process: the kernel may hand
/// a just-released port to two tests running at once, which then share a broker port and its
/// data directory.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A single-node Apache Kafka broker (KRaft) started by `scripts/kafka.sh` on a free port with
/// its own data directory; stopped and its directory removed on drop, also when the test fails.
pub struct Broker {
    pub addr: String,
    pub port: u16,
    pub dir: PathBuf,
}

impl Broker {
    pub fn start() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("ngsiflow-kafka-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        let broker = Broker {
            addr: format!("127.0.0.1:{port}"),
            port,
            dir,
        };
        broker.start_again();
        broker
    }

    /// A broker that also has an SSL listener on `ssl_port` and a SASL_SSL listener on
    /// `sasl_port` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 for `user`/`password`), both presenting
    /// `pki`'s `server.pem` and advertised as `localhost`.
    pub fn start_secured(
        pki: &Pki,
        ssl_port: u16,
        sasl_port: u16,
        user: &str,
        password: &str,
    ) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("ngsiflow-kafka-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        script(
            "kafka.sh",
            &[
                "start",
                "--port",
                &port.to_string(),
                "--dir",
                dir.to_str().unwrap(),
                "--tls-dir",
                pki.dir.to_str().unwrap(),
                "--ssl-port",
                &ssl_port.to_string(),
                "--sasl-ssl-port",
                &sasl_port.to_string(),
                "--sasl-user",
                &format!("{user}:{password}"),
            ],
        );
        Broker {
            addr: format!("127.0.0.1:{port}"),
            port,
            dir,
        }
    }

    /// Starts the broker on its existing data directory (topics and committed offsets kept).
    pub fn start_again(&self) {
        script(
            "kafka.sh",
            &[
                "start",
                "--port",
                &self.port.to_string(),
                "--dir",
                self.dir.to_str().unwrap(),
            ],
        );
    }

    /// Stops the broker (SIGTERM, then SIGKILL after 30 s); its data directory stays.
    pub fn stop(&self) {
        let _ = Command::new("bash")
            .arg(repo().join("scripts/kafka.sh"))
            .args(["stop", "--dir"])
            .arg(&self.dir)
            .status();
    }
}

impl Broker {
    /// Freezes the broker process (SIGSTOP): its connections stay open but nothing answers,
    /// like a hung or partitioned broker. It is thawed (SIGCONT) when the guard drops, also when
    /// the test fails.
    pub fn freeze(&self) -> Frozen {
        let pid = std::fs::read_to_string(self.dir.join("broker.pid"))
            .expect("broker.pid")
            .trim()
            .to_string();
        let ok = Command::new("kill").args(["-STOP", &pid]).status().unwrap();
        assert!(ok.success(), "SIGSTOP {pid}");
        Frozen(pid)
    }
}

/// A frozen process, thawed on drop.
pub struct Frozen(String);

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0]).status();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Kafka Connect in distributed mode with the Prometheus JMX exporter agent attached, started by
/// `scripts/connect.sh` against `broker`; stopped and its directory removed on drop.
pub struct Connect {
    /// REST API base URL, `http://127.0.0.1:<port>`.
    pub rest: String,
    /// The JMX exporter agent's `/metrics` address, `127.0.0.1:<port>`.
    pub jmx: String,
    dir: PathBuf,
}

impl Connect {
    pub fn start(broker: &str) -> Self {
        let (rest_port, jmx_port) = (free_port(), free_port());
        let dir = std::env::temp_dir().join(format!("ngsiflow-connect-{rest_port}"));
        let _ = std::fs::remove_dir_all(&dir);
        let connect = Connect {
            rest: format!("http://127.0.0.1:{rest_port}"),
            jmx: format!("127.0.0.1:{jmx_port}"),
            dir,
        };
        script(
            "connect.sh",
            &[
                "start",
                "--brokers",
                broker,
                "--dir",
                connect.dir.to_str().unwrap(),
                "--rest-port",
                &rest_port.to_string(),
                "--jmx-port",
                &jmx_port.to_string(),
                "--group",
                &format!("connect-{rest_port}"),
            ],
        );
        connect
    }

    /// Deploys the shipped JDBC sink (scripts/connect/jdbc-sink.json) writing to `jdbc_url`,
    /// reading `<prefix>demo_historic_processed`, dead letters to `<prefix>raw_errors`; returns
    /// once its task runs.
    pub fn deploy_jdbc_sink(&self, jdbc_url: &str, prefix: &str) {
        script(
            "connect.sh",
            &[
                "deploy",
                "--rest",
                &self.rest,
                "--jdbc-url",
                jdbc_url,
                "--prefix",
                prefix,
            ],
        );
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.join("connect.log")).unwrap_or_default()
    }
}

impl Drop for Connect {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo().join("scripts/connect.sh"))
            .args(["stop", "--dir"])
            .arg(&self.dir)
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `scripts/<name> args…` and panics with its stderr when it fails.
pub fn script(name: &str, args: &[&str]) {
    let out = Command::new("bash")
        .arg(repo().join("scripts").join(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run scripts/{name}: {e}"));
    assert!(
        out.status.success(),
        "scripts/{name} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Throwaway certificates made by `scripts/dev-certs.sh` in a fresh directory (removed on drop).
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn create() -> Self {
        let dir = std::env::temp_dir().join(format!("ngsiflow-pki-{}", free_port()));
        let _ = std::fs::remove_dir_all(&dir);
        script("dev-certs.sh", &[dir.to_str().unwrap()]);
        Pki { dir }
    }

    /// `<dir>/<name>` as a string.
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private PostgreSQL cluster (the system's PostgreSQL binaries, run as `postgres`) that
/// accepts TCP connections only over TLS, with `localhost.pem` from `pki` (names `localhost`
/// only). Roles: `postgres` (trust over TLS), `certuser` (client certificate required, `cert`
/// authentication), `secretuser` (password `s3cret-pg`, SCRAM). Stopped and removed on drop,
/// also when the test fails.
pub struct TlsPostgres {
    pub port: u16,
    dir: PathBuf,
}

fn pg_bin(name: &str) -> String {
    let versions = std::fs::read_to_string(repo().join("scripts/versions.env")).unwrap();
    let major = versions
        .lines()
        .find_map(|l| l.strip_prefix("POSTGRES_MAJOR="))
        .unwrap();
    format!("/usr/lib/postgresql/{major}/bin/{name}")
}

fn as_postgres(args: &[&str]) -> std::process::Output {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .args(args)
        .output()
        .expect("runuser");
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl TlsPostgres {
    pub fn start(pki: &Pki) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("ngsiflow-pgtls-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pg = TlsPostgres { port, dir };
        let data = pg.dir.join("data");
        for f in ["localhost.pem", "localhost.key", "ca.pem"] {
            std::fs::copy(pki.dir.join(f), pg.dir.join(f)).unwrap();
        }
        Command::new("chown")
            .args(["-R", "postgres:postgres", pg.dir.to_str().unwrap()])
            .status()
            .unwrap();
        as_postgres(&[
            &pg_bin("initdb"),
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "--auth=trust",
        ]);
        let d = pg.dir.display();
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{d}'\n\
             ssl = on\nssl_cert_file = '{d}/localhost.pem'\nssl_key_file = '{d}/localhost.key'\n\
             ssl_ca_file = '{d}/ca.pem'\n"
        );
        let mut c = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        c.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), c).unwrap();
        // TCP only over TLS (no hostnossl or host line at all); the socket for set-up.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all postgres trust\n\
             hostssl all certuser 127.0.0.1/32 cert\n\
             hostssl all secretuser 127.0.0.1/32 scram-sha-256\n\
             hostssl all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        as_postgres(&[
            &pg_bin("pg_ctl"),
            "-D",
            data.to_str().unwrap(),
            "-l",
            pg.dir.join("log").to_str().unwrap(),
            "-w",
            "start",
        ]);
        pg.psql(
            "postgres",
            "CREATE ROLE certuser LOGIN SUPERUSER; CREATE ROLE secretuser LOGIN SUPERUSER PASSWORD 's3cret-pg'",
        );
        pg
    }

    /// Runs SQL in `db` over the Unix socket as `postgres`, stopping at the first error;
    /// returns what psql printed (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let dir = self.dir.to_str().unwrap();
        let port = self.port.to_string();
        let args = [
            "psql",
            "-h",
            dir,
            "-p",
            &port,
            "-d",
            db,
            "-v",
            "ON_ERROR_STOP=1",
        ];
        let out = as_postgres(&[&args[..], &["-qtAc", sql]].concat());
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Creates `db` with PostGIS and the sample tables.
    pub fn create_sample_db(&self, db: &str) {
        self.psql("postgres", &format!("CREATE DATABASE {db}"));
        let ddl = std::fs::read_to_string(repo().join("scripts/sample-tables.sql")).unwrap();
        self.psql(db, &ddl);
    }

    /// `SELECT count(*) FROM table` over the socket.
    pub fn count(&self, db: &str, table: &str) -> i64 {
        self.psql(db, &format!("SELECT count(*) FROM {table}"))
            .parse()
            .unwrap_or(-1)
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--", &pg_bin("pg_ctl"), "-D"])
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh database with PostGIS and the sample tables.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub client: Client,
}

pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(conn);
    client
}

impl TestDb {
    pub async fn create(name: &str) -> Self {
        let admin = connect(PG_ADMIN_URL).await;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        let client = connect(&url).await;
        let ddl = std::fs::read_to_string(repo().join("scripts/sample-tables.sql")).unwrap();
        client.batch_execute(&ddl).await.unwrap();
        TestDb {
            name: name.into(),
            url,
            client,
        }
    }

    pub async fn count(&self, table: &str) -> i64 {
        self.client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(-1)
    }

    /// Polls the row count of `table` until it reaches at least `want` or `timeout` passes;
    /// returns the last count (callers assert equality to catch over-delivery too).
    pub async fn wait_count(&self, table: &str, want: i64, timeout: Duration) -> i64 {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.count(table).await;
            if n >= want || Instant::now() > deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn error_rows(&self, service: &str) -> Vec<(String, String)> {
        self.table_rows(&format!("{service}.{service}_error_log"))
            .await
    }

    /// `(error, query)` of an error log table, oldest first (empty when it does not exist).
    pub async fn table_rows(&self, table: &str) -> Vec<(String, String)> {
        self.client
            .query(
                &format!(
                    "SELECT error, coalesce(query, '') FROM {table} ORDER BY \"timestamp\", source"
                ),
                &[],
            )
            .await
            .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            .unwrap_or_default()
    }

    pub async fn wait_table_rows(
        &self,
        table: &str,
        want: usize,
        timeout: Duration,
    ) -> Vec<(String, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let rows = self.table_rows(table).await;
            if rows.len() >= want || Instant::now() > deadline {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_error_rows(
        &self,
        service: &str,
        want: usize,
        timeout: Duration,
    ) -> Vec<(String, String)> {
        let table = format!("{service}.{service}_error_log");
        self.wait_table_rows(&table, want, timeout).await
    }
}

/// The real worker binary as a child process.
pub struct Worker {
    pub child: Option<Child>,
    pub admin: String,
    pub log: PathBuf,
}

impl Worker {
    pub fn start(broker: &str, pg_url: &str, group: &str, extra: &[&str]) -> Self {
        Self::start_with_env(broker, pg_url, group, extra, &[])
    }

    /// As [`Worker::start`], with extra environment variables.
    pub fn start_with_env(
        broker: &str,
        pg_url: &str,
        group: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::spawn(broker, pg_url, group, &repo().join("flows"), extra, env)
    }

    /// As [`Worker::start`], with the flow files (and `tenants.toml`) of `flows_dir`.
    pub fn start_in(
        broker: &str,
        pg_url: &str,
        group: &str,
        flows_dir: &std::path::Path,
        extra: &[&str],
    ) -> Self {
        Self::spawn(broker, pg_url, group, flows_dir, extra, &[])
    }

    fn spawn(
        broker: &str,
        pg_url: &str,
        group: &str,
        flows_dir: &std::path::Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let port = free_port();
        let admin = format!("127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!("ngsiflow-{group}-{port}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ngsiflow"))
            .arg("run")
            .args([
                "--brokers",
                broker,
                "--pg-url",
                pg_url,
                "--group",
                group,
                "--admin-addr",
                &admin,
            ])
            .args([
                "--flows-dir",
                flows_dir.to_str().unwrap(),
                "--linger-ms",
                "50",
                "--kafka-stats-ms",
                "500",
            ])
            .args(extra)
            .envs(env.iter().copied())
            .env("NGSIFLOW_LOG_LEVEL", "debug")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start worker");
        Worker {
            child: Some(child),
            admin,
            log,
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("worker running").id()
    }

    /// Peak resident memory so far (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    /// Sum of a metric's series on `/metrics` (0 when absent or unreachable). `name` may end
    /// with the start of a label set (`name{class="transient"`) to sum only those series.
    pub async fn metric_sum(&self, name: &str) -> f64 {
        let (_, body) = self.get("/metrics").await;
        let starts = |l: &str| {
            if name.contains('{') {
                l.starts_with(name)
            } else {
                l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))
            }
        };
        body.lines()
            .filter(|l| starts(l))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        self.signal("-TERM");
        let mut child = self.child.take()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("worker did not stop within 30 s after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The exit status if the process has ended (crashed or stopped by itself).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// SIGKILL (a crash).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http(&self.admin, "GET", path, &[], "").await
    }

    /// Polls `/metrics` until the scrape contains `needle` (a whole `series value` line or part
    /// of one); returns that scrape. Metrics move just after a window commits, so tests that
    /// see rows in the database wait for them here.
    pub async fn wait_metric(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let (_, m) = self.get("/metrics").await;
            if m.contains(needle) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "metrics never showed {needle:?}:\n{m}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `/ready` answers 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, body) = self.get("/ready").await;
            if status == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "worker not ready: {status} {body}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Minimal HTTP/1.1 client for the admin server (one request per connection).
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

/// A producer with librdkafka's normal batching, waiting for every acknowledgement.
pub struct TestProducer {
    producer: FutureProducer,
}

impl TestProducer {
    pub fn new(broker: &str) -> Self {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", broker)
            .set("acks", "all")
            .create()
            .unwrap();
        TestProducer { producer }
    }

    pub async fn send(&self, topic: &str, headers: &[(&str, &str)], value: &str) {
        self.send_to(topic, None, headers, value).await
    }

    pub async fn send_to(
        &self,
        topic: &str,
        partition: Option<i32>,
        headers: &[(&str, &str)],
        value: &str,
    ) {
        let mut h = OwnedHeaders::new();
        for (k, v) in headers {
            h = h.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        let mut r: FutureRecord<'_, (), str> = FutureRecord::to(topic).payload(value).headers(h);
        if let Some(p) = partition {
            r = r.partition(p);
        }
        self.producer
            .send(r, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }

    /// Sends raw bytes: header values and the value need not be UTF-8; `None` sends a
    /// record without a value.
    pub async fn send_bytes(&self, topic: &str, headers: &[(&str, &[u8])], value: Option<&[u8]>) {
        let mut h = OwnedHeaders::new();
        for (k, v) in headers {
            h = h.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        let mut r: FutureRecord<'_, (), [u8]> = FutureRecord::to(topic).headers(h);
        if let Some(v) = value {
            r = r.payload(v);
        }
        self.producer
            .send(r, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }

    pub fn flush(&self) {
        self.producer.flush(Duration::from_secs(10)).unwrap();
    }
}

/// `Fiware-Service` and `Fiware-Servicepath` as Kafka record headers.
pub fn owned_headers(service: &str, servicepath: &str) -> OwnedHeaders {
    OwnedHeaders::new()
        .insert(Header {
            key: "Fiware-Service",
            value: Some(service),
        })
        .insert(Header {
            key: "Fiware-Servicepath",
            value: Some(servicepath),
        })
}

/// Sends every `(topic, headers, value)` at once, then waits for every acknowledgement: a
/// backlog produced as fast as the broker takes it.
pub async fn produce_all(broker: &str, records: Vec<(&str, OwnedHeaders, String)>) {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let mut pending = Vec::with_capacity(records.len());
    for (topic, h, v) in &records {
        let r = FutureRecord::<(), str>::to(topic)
            .payload(v)
            .headers(h.clone());
        pending.push(p.send_result(r).map_err(|(e, _)| e).unwrap());
    }
    for d in pending {
        d.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// Creates topics with `partitions` partitions.
pub async fn create_topics(broker: &str, topics: &[&str], partitions: i32) {
    let c = ngsiflow::kafka::client_config(broker, &[]);
    let names: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
    ngsiflow::kafka::ensure_topics(&c, &names, partitions)
        .await
        .unwrap();
}

/// A notification with one entity per `(id, type, timeinstant, attrs)` tuple.
pub fn notification(entities: &[serde_json::Value]) -> String {
    serde_json::json!({"subscriptionId": "test", "data": entities}).to_string()
}

pub fn headers<'a>(service: &'a str, servicepath: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("Fiware-Service", service),
        ("Fiware-Servicepath", servicepath),
    ]
}

/// A dashboard's panels as `(panel id, title, [PromQL expr])`.
pub fn dashboard_queries(file: &str) -> (serde_json::Value, Vec<(u64, String, Vec<String>)>) {
    let path = repo().join("monitoring/grafana/dashboards").join(file);
    let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    let panels = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let exprs = p["targets"]
                .as_array()
                .map(|t| {
                    t.iter()
                        .filter_map(|t| t["expr"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            (
                p["id"].as_u64().unwrap_or(0),
                p["title"].as_str().unwrap_or("").to_string(),
                exprs,
            )
        })
        .collect();
    (d, panels)
}

/// Replaces Grafana's template variables with values Prometheus accepts: every custom variable
/// with `.*` (the dashboards' "All"), `$__rate_interval` with `rate`, `$__range` with `range`.
pub fn expand_grafana_vars(expr: &str, rate: &str, range: &str) -> String {
    let e = expr
        .replace("$__rate_interval", rate)
        .replace("$__range", range)
        .replace("$__interval", rate);
    let re = regex::Regex::new(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?").unwrap();
    re.replace_all(&e, ".*").to_string()
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Percent-encodes a query-string value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
