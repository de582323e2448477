//! PostgreSQL connection settings with libpq's TLS parameters (pure apart from reading the
//! certificate files named in the connection string when [`PgConnect::tls_connector`] runs).
//!
//! tokio-postgres understands `sslmode=disable|prefer|require` only and knows nothing of
//! certificates, so the libpq parameters `sslmode` (all six values), `sslrootcert`, `sslcert`
//! and `sslkey` are taken out of the connection string here — URL query or `key=value` form,
//! exactly as libpq users write them (PostgreSQL docs, "libpq: Connection Strings" and "SSL
//! Support") — and turned into a rustls client configuration:
//!
//! | `sslmode` | TLS | server certificate checked |
//! |---|---|---|
//! | `disable` | never | — |
//! | `allow`, `prefer` (libpq's default) | when the server offers it | no |
//! | `require` | always | no; but as `verify-ca` when `sslrootcert` is given (libpq's rule) |
//! | `verify-ca` | always | chain to `sslrootcert` |
//! | `verify-full` | always | chain to `sslrootcert` and the host name (or IP) in the certificate |
//!
//! `sslrootcert` defaults to `~/.postgresql/root.crt` when that file exists, as in libpq;
//! `verify-ca` and `verify-full` without any root certificate are a configuration error.
//! `sslcert` + `sslkey` (PEM) present a client certificate (`cert` authentication).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain connections only.
    Disable,
    /// libpq tries plain first, then TLS; here the same as `prefer` (TLS when offered).
    Allow,
    /// TLS when the server offers it, without certificate checks (libpq's default).
    Prefer,
    /// TLS always, without certificate checks unless a root certificate is given.
    Require,
    /// TLS always, the server certificate must chain to the root certificate.
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the host connected to.
    VerifyFull,
}

impl std::str::FromStr for SslMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(format!(
                "invalid sslmode {other:?}: use disable, allow, prefer, require, verify-ca or verify-full"
            ))
            }
        })
    }
}

/// A parsed PostgreSQL connection target: tokio-postgres settings plus the TLS parameters.
#[derive(Clone)]
pub struct PgConnect {
    /// Everything but the TLS parameters (their `ssl_mode` already set from [`Self::sslmode`]).
    pub config: tokio_postgres::Config,
    /// The requested `sslmode` (default `prefer`).
    pub sslmode: SslMode,
    /// `sslrootcert`, or `~/.postgresql/root.crt` when that exists.
    pub sslrootcert: Option<PathBuf>,
    /// `sslcert` (client certificate chain, PEM).
    pub sslcert: Option<PathBuf>,
    /// `sslkey` (client private key, PEM).
    pub sslkey: Option<PathBuf>,
}

impl std::fmt::Debug for PgConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // tokio_postgres::Config's Debug redacts the password; ours adds nothing secret.
        f.debug_struct("PgConnect")
            .field("config", &self.config)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .finish_non_exhaustive()
    }
}

const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

impl PgConnect {
    /// Parses a `postgres://` / `postgresql://` URL or a libpq `key=value` string, taking out
    /// the TLS parameters. `password`, when given, replaces any password in the string (it
    /// comes from `--pg-password-file`).
    ///
    /// # Errors
    /// The parser's message; an invalid `sslmode`; `verify-ca`/`verify-full` without a root
    /// certificate; `sslcert` without `sslkey` or the reverse.
    pub fn parse(conn: &str, password: Option<&str>) -> Result<Self, String> {
        let (rest, tls) = split_tls_params(conn)?;
        let mut config: tokio_postgres::Config = rest.parse().map_err(|e| format!("{e}"))?;
        if let Some(p) = password {
            config.password(p);
        }
        let get = |k: &str| tls.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let sslmode = match get("sslmode") {
            Some(m) => m.parse()?,
            None => SslMode::Prefer,
        };
        let sslrootcert = get("sslrootcert").map(PathBuf::from).or_else(|| {
            let home = std::env::var_os("HOME")?;
            let p = Path::new(&home).join(".postgresql/root.crt");
            p.exists().then_some(p)
        });
        let (sslcert, sslkey) = (
            get("sslcert").map(PathBuf::from),
            get("sslkey").map(PathBuf::from),
        );
        if sslcert.is_some() != sslkey.is_some() {
            return Err("sslcert and sslkey go together".into());
        }
        if matches!(sslmode, SslMode::VerifyCa | SslMode::VerifyFull) && sslrootcert.is_none() {
            return Err(format!(
                "sslmode={} needs sslrootcert (the CA certificate that signed the server's)",
                serde_json::to_value(sslmode)
                    .unwrap_or_default()
                    .as_str()
                    .unwrap_or("")
            ));
        }
        config.ssl_mode(match sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Allow | SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        Ok(Self {
            config,
            sslmode,
            sslrootcert,
            sslcert,
            sslkey,
        })
    }

    /// The rustls connector for this target's `sslmode` and certificates.
    ///
    /// # Errors
    /// A certificate or key file that cannot be read or holds no PEM item of the right kind.
    pub fn tls_connector(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        // libpq: `require` with a root certificate behaves as `verify-ca`.
        let (root, check_name) = match (self.sslmode, &self.sslrootcert) {
            (SslMode::VerifyFull, Some(root)) => (Some(root), true),
            (SslMode::VerifyCa | SslMode::Require, Some(root)) => (Some(root), false),
            _ => (None, false),
        };
        let verifier = Arc::new(ServerCheck {
            webpki: root
                .map(|r| webpki_verifier(r, provider.clone()))
                .transpose()?,
            check_name,
            provider,
        });
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&self.sslcert, &self.sslkey) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert)?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("sslkey {}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("sslcert/sslkey: {e}"))?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
    }
}

/// Where and how to connect: tokio-postgres settings plus the TLS connector built from the
/// libpq parameters (certificate files already read).
#[derive(Clone)]
pub struct PgEndpoint {
    /// Connection settings (host, port, user, password, database, `ssl_mode`).
    pub config: tokio_postgres::Config,
    /// TLS connector for [`PgConnect::sslmode`]; unused when it is `disable`.
    pub tls: tokio_postgres_rustls::MakeRustlsConnect,
}

impl std::fmt::Debug for PgEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // tokio_postgres::Config's Debug redacts the password.
        f.debug_struct("PgEndpoint")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PgEndpoint {
    /// Parses `conn` ([`PgConnect::parse`]) and reads its certificate files.
    ///
    /// # Errors
    /// As [`PgConnect::parse`] and [`PgConnect::tls_connector`].
    pub fn new(conn: &str, password: Option<&str>) -> Result<Self, String> {
        let c = PgConnect::parse(conn, password)?;
        Ok(Self {
            tls: c.tls_connector()?,
            config: c.config,
        })
    }
}

/// Splits the libpq TLS parameters off a connection string: returns the string without them
/// and the `(key, value)` pairs taken out.
fn split_tls_params(conn: &str) -> Result<(String, Vec<(String, String)>), String> {
    let mut tls = Vec::new();
    let is_tls = |k: &str| TLS_KEYS.contains(&k);
    if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        let Some((base, query)) = conn.split_once('?') else {
            return Ok((conn.to_string(), tls));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if is_tls(k) {
                tls.push((k.to_string(), percent_decode(v)?));
            } else {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, tls));
    }
    split_keyword_tls_params(conn, &is_tls)
}

/// The `key=value` form: values may be single-quoted with `\'` and `\\` escapes (libpq's
/// rules); the TLS pairs are taken out, the rest is returned as written.
fn split_keyword_tls_params(
    conn: &str,
    is_tls: &dyn Fn(&str) -> bool,
) -> Result<(String, Vec<(String, String)>), String> {
    let mut tls = Vec::new();
    let mut kept = Vec::new();
    let mut chars = conn.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("missing \"=\" after {key:?} in connection string"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut raw = String::new();
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            raw.push('\'');
            loop {
                match chars.next() {
                    Some('\\') => {
                        let c = chars.next().ok_or("unterminated quoted value")?;
                        raw.push('\\');
                        raw.push(c);
                        value.push(c);
                    }
                    Some('\'') => {
                        raw.push('\'');
                        break;
                    }
                    Some(c) => {
                        raw.push(c);
                        value.push(c);
                    }
                    None => return Err("unterminated quoted value in connection string".into()),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                raw.push(c);
                value.push(c);
            }
        }
        if is_tls(&key) {
            tls.push((key, value));
        } else {
            kept.push(format!("{key}={raw}"));
        }
    }
    Ok((kept.join(" "), tls))
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("invalid percent-encoding in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("invalid UTF-8 in {s:?}"))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    Ok(certs)
}

fn webpki_verifier(
    root: &Path,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(root).map_err(|e| format!("sslrootcert {e}"))? {
        roots
            .add(cert)
            .map_err(|e| format!("sslrootcert {}: {e}", root.display()))?;
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| format!("sslrootcert {}: {e}", root.display()))
}

/// The server-certificate check for one `sslmode`. The handshake signatures are always
/// checked, so even without certificate checks the session keys belong to whoever holds the
/// certificate's key.
#[derive(Debug)]
struct ServerCheck {
    /// `None`: no certificate check (`prefer`, `require` without a root certificate).
    webpki: Option<Arc<WebPkiServerVerifier>>,
    /// Whether the certificate must name the host (`verify-full`).
    check_name: bool,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_urls_and_keyword_strings() {
        let cases = [
            (
                "postgres://u@db:5432/x?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=a",
                "postgres://u@db:5432/x?application_name=a",
                vec![("sslmode", "verify-full"), ("sslrootcert", "/etc/ca.pem")],
            ),
            (
                "postgresql://u@db/x?sslmode=require",
                "postgresql://u@db/x",
                vec![("sslmode", "require")],
            ),
            ("postgres://u@db/x", "postgres://u@db/x", vec![]),
            (
                "host=db user=u sslmode=verify-ca sslrootcert='/my certs/ca.pem' password='a\\'b'",
                "host=db user=u password='a\\'b'",
                vec![("sslmode", "verify-ca"), ("sslrootcert", "/my certs/ca.pem")],
            ),
            (
                "host = db sslcert=/c.pem sslkey=/k.pem",
                "host=db",
                vec![("sslcert", "/c.pem"), ("sslkey", "/k.pem")],
            ),
        ];
        for (input, rest, tls) in cases {
            let (r, t) = split_tls_params(input).unwrap();
            assert_eq!(r, rest, "{input}");
            let t: Vec<(&str, &str)> = t.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            assert_eq!(t, tls, "{input}");
        }
        assert!(split_tls_params("host='db").is_err());
    }

    #[test]
    fn sslmode_rules() {
        let p = |s: &str| PgConnect::parse(s, None);
        assert_eq!(p("postgres://u@db/x").unwrap().sslmode, SslMode::Prefer);
        assert_eq!(
            p("postgres://u@db/x?sslmode=disable")
                .unwrap()
                .config
                .get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
        assert_eq!(
            p("host=db sslmode=verify-full sslrootcert=/ca.pem")
                .unwrap()
                .config
                .get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        assert!(p("postgres://u@db/x?sslmode=verify-ca")
            .unwrap_err()
            .contains("needs sslrootcert"));
        assert!(p("postgres://u@db/x?sslmode=maybe")
            .unwrap_err()
            .contains("invalid sslmode"));
        assert!(p("host=db sslcert=/c.pem")
            .unwrap_err()
            .contains("go together"));
        let with_password = p("postgres://u:old@db/x").unwrap();
        assert_eq!(with_password.config.get_password(), Some(&b"old"[..]));
        let replaced = PgConnect::parse("postgres://u:old@db/x", Some("new")).unwrap();
        assert_eq!(replaced.config.get_password(), Some(&b"new"[..]));
    }
}
