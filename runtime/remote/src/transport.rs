//! How the client reaches a remote: the URL scheme (`grpc://` plain text, `grpcs://` TLS),
//! which certificate authorities it trusts (Mozilla's roots, plus `--remote-ca`), the client
//! certificate it presents, and the metadata it sends on every RPC (`--remote-header`, and
//! `authorization: Bearer <token>` from `--remote-token-file`).
//!
//! Credentials are never printed: the `Debug` impls show header names only, and error
//! messages name the header or the file at fault, never a value.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Request, Status};

use crate::client::ClientError;

/// A channel whose every request carries the remote's credentials.
pub type AuthChannel = InterceptedService<Channel, Credentials>;

/// How to reach a remote besides its URL: TLS trust and identity, and the metadata sent
/// with every call. Paths are read at connect time (a rotated token file is picked up by
/// the next connection).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConnectOptions {
    /// A CA certificate bundle (PEM) trusted for `grpcs://` in addition to Mozilla's roots.
    pub ca: Option<PathBuf>,
    /// A client certificate chain (PEM) for servers that ask for one; needs `client_key`.
    pub client_cert: Option<PathBuf>,
    /// The private key of `client_cert` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub client_key: Option<PathBuf>,
    /// Metadata sent with every RPC, as `(name, value)`; a later entry with the same name
    /// replaces an earlier one.
    pub headers: Vec<(String, String)>,
    /// A file holding a bearer token, sent as `authorization: Bearer <token>`.
    pub token_file: Option<PathBuf>,
    /// A credential helper (the protocol Bazel's `--credential_helper` speaks): run as
    /// `PROGRAM get` at connect with `{"uri": URL}` on stdin, it prints
    /// `{"headers": {"name": ["value", ...]}}`; those headers go with every call.
    pub credential_helper: Option<PathBuf>,
}

/// Why a header cannot be sent.
enum BadMetadata {
    /// A `-bin` name (binary metadata).
    Binary,
    Name,
    Value,
}

/// A header as gRPC metadata: a lowercase ASCII name (not `-bin`) and a printable-ASCII value,
/// marked sensitive (it may be a credential).
fn metadata(
    name: &str,
    value: &str,
) -> Result<(AsciiMetadataKey, AsciiMetadataValue), BadMetadata> {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with("-bin") {
        return Err(BadMetadata::Binary);
    }
    let key = AsciiMetadataKey::from_bytes(lower.as_bytes()).map_err(|_| BadMetadata::Name)?;
    // gRPC metadata values are printable ASCII (http would let bytes >= 0x80 pass).
    if !value.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(BadMetadata::Value);
    }
    let mut value = AsciiMetadataValue::try_from(value).map_err(|_| BadMetadata::Value)?;
    value.set_sensitive(true);
    Ok((key, value))
}

/// How long a credential helper may take.
pub const CREDENTIAL_HELPER_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);
/// Most bytes a credential helper may print.
const CREDENTIAL_HELPER_MAX_OUTPUT: usize = 1 << 20;

/// Runs the credential helper `program` for `uri` (`program get`, `{"uri": ...}` on stdin),
/// at most `deadline`; its headers as `(name, value)`, in order.
pub fn run_credential_helper(
    program: &Path,
    uri: &str,
    deadline: std::time::Duration,
) -> Result<Vec<(String, String)>, ClientError> {
    use std::io::{Read, Write};
    let shown = program.display();
    let fail = |why: String| {
        ClientError::Options(format!(
            "the credential helper {shown} (--remote-credential-helper) {why}"
        ))
    };
    let mut child = std::process::Command::new(program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot be started: {e}")))?;
    let request = format!("{{\"uri\":{}}}", serde_json::Value::from(uri));
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that does not read its input is its own business.
        let _ = stdin.write_all(request.as_bytes());
    }
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut stdout)
            .take(CREDENTIAL_HELPER_MAX_OUTPUT as u64 + 1)
            .read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut stderr).take(4096).read_to_end(&mut buf);
        buf
    });
    let t0 = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if t0.elapsed() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!(
                    "did not answer within {} s",
                    deadline.as_secs()
                )));
            }
            Err(e) => return Err(fail(format!("cannot be waited for: {e}"))),
        }
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if !status.success() {
        let text = String::from_utf8_lossy(&err);
        return Err(fail(format!("failed ({status}): {}", text.trim())));
    }
    if out.len() > CREDENTIAL_HELPER_MAX_OUTPUT {
        return Err(fail(format!(
            "printed more than {CREDENTIAL_HELPER_MAX_OUTPUT} bytes"
        )));
    }
    let answer: serde_json::Value = serde_json::from_slice(&out).map_err(|e| {
        fail(format!(
            "printed no JSON object ({e}; the output is not shown)"
        ))
    })?;
    let Some(headers) = answer.get("headers") else {
        return Ok(Vec::new());
    };
    let Some(headers) = headers.as_object() else {
        return Err(fail("printed \"headers\" that is not an object".to_owned()));
    };
    let mut out = Vec::new();
    for (name, values) in headers {
        let values = values.as_array().ok_or_else(|| {
            fail(format!(
                "printed header {name:?} whose values are not a list of strings"
            ))
        })?;
        for v in values {
            let v = v.as_str().ok_or_else(|| {
                fail(format!(
                    "printed header {name:?} whose values are not a list of strings"
                ))
            })?;
            out.push((name.clone(), v.to_owned()));
        }
    }
    Ok(out)
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .headers
            .iter()
            .map(|(n, _)| format!("{n}=<redacted>"))
            .collect();
        f.debug_struct("ConnectOptions")
            .field("ca", &self.ca)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("headers", &names)
            .field("token_file", &self.token_file)
            .field("credential_helper", &self.credential_helper)
            .finish()
    }
}

/// Splits a `--remote-header` argument, `NAME=VALUE`.
pub fn parse_header(arg: &str) -> Result<(String, String), ClientError> {
    match arg.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.to_owned()))
        }
        _ => {
            let name = arg.split_once('=').map_or(arg, |(n, _)| n);
            Err(ClientError::Options(format!(
                "--remote-header {name:?}: expected NAME=VALUE (for example \
                 --remote-header x-team=infra)"
            )))
        }
    }
}

/// How a URL's scheme says to connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scheme {
    Plain,
    Tls,
}

/// The scheme of `url` and the `http(s)://` form tonic takes.
pub(crate) fn endpoint_uri(url: &str) -> Result<(Scheme, String), ClientError> {
    match url.split_once("://") {
        Some(("grpc" | "http", rest)) => Ok((Scheme::Plain, format!("http://{rest}"))),
        Some(("grpcs" | "https", rest)) => Ok((Scheme::Tls, format!("https://{rest}"))),
        Some((scheme, _)) => Err(ClientError::Url {
            url: url.into(),
            message: format!(
                "scheme {scheme}:// is not supported; use grpc://host:port (plain text) or \
                 grpcs://host:port (TLS)"
            ),
        }),
        None => Ok((Scheme::Plain, format!("http://{url}"))),
    }
}

/// Whether the host of `url` is this machine (`localhost`, `127.0.0.0/8`, `::1`).
fn is_loopback(url: &str) -> bool {
    let Ok((_, http)) = endpoint_uri(url) else {
        return false;
    };
    let Ok(uri) = http.parse::<tonic::codegen::http::Uri>() else {
        return false;
    };
    let Some(host) = uri.host() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl ConnectOptions {
    /// Whether a credential is configured: the token file, or a header whose name says it
    /// holds one (`authorization`, `x-api-key`, `cookie`, ...).
    pub fn has_credentials(&self) -> bool {
        const SECRET: [&str; 7] = [
            "auth", "token", "key", "secret", "cookie", "pass", "session",
        ];
        self.token_file.is_some()
            || self.credential_helper.is_some()
            || self.headers.iter().any(|(n, _)| {
                let n = n.to_ascii_lowercase();
                SECRET.iter().any(|s| n.contains(s))
            })
    }

    /// A warning when credentials would travel in clear text: a plain `grpc://` URL whose
    /// host is not this machine.
    pub fn cleartext_warning(&self, url: &str) -> Option<String> {
        let plain = matches!(endpoint_uri(url), Ok((Scheme::Plain, _)));
        (plain && self.has_credentials() && !is_loopback(url)).then(|| {
            format!(
                "warning: the remote credentials (--remote-token-file, or a header such as \
                 authorization) go to {url} in clear text: anyone on the path can read and \
                 reuse them; use grpcs:// (a server started with --tls-cert)"
            )
        })
    }

    /// The metadata every RPC carries: the headers, then the token (no credential helper is
    /// run: see [`ConnectOptions::credentials_for`]).
    pub fn credentials(&self) -> Result<Credentials, ClientError> {
        self.credentials_with(&[])
    }

    /// The metadata every RPC to `url` carries: the headers, then those the credential
    /// helper gives for `url` (each name replacing a header's), then the token. Names and
    /// values are checked here, so a bad one stops the command before anything is sent.
    pub fn credentials_for(&self, url: &str) -> Result<Credentials, ClientError> {
        let helped = match &self.credential_helper {
            Some(program) => run_credential_helper(program, url, CREDENTIAL_HELPER_DEADLINE)?,
            None => Vec::new(),
        };
        self.credentials_with(&helped)
    }

    fn credentials_with(&self, helped: &[(String, String)]) -> Result<Credentials, ClientError> {
        let mut headers: Vec<(AsciiMetadataKey, AsciiMetadataValue)> = Vec::new();
        let add = |headers: &mut Vec<(AsciiMetadataKey, AsciiMetadataValue)>,
                   key: AsciiMetadataKey,
                   value: AsciiMetadataValue| {
            headers.retain(|(k, _)| *k != key);
            headers.push((key, value));
        };
        for (name, value) in &self.headers {
            let (key, value) = metadata(name, value).map_err(|bad| {
                ClientError::Options(match bad {
                    BadMetadata::Binary => {
                        format!("--remote-header {name}: binary (-bin) metadata is not supported")
                    }
                    BadMetadata::Name => format!(
                        "--remote-header {name:?}: not a valid header name (letters, digits, \
                         '-', '_', '.')"
                    ),
                    BadMetadata::Value => format!(
                        "--remote-header {name}: the value is not a valid header value (printable \
                         ASCII only; the value is not shown)"
                    ),
                })
            })?;
            add(&mut headers, key, value);
        }
        // The helper's headers replace the flags' of the same name; a name may repeat.
        let mut replaced = std::collections::HashSet::new();
        for (name, value) in helped {
            let (key, value) = metadata(name, value).map_err(|bad| {
                let helper = self
                    .credential_helper
                    .as_deref()
                    .map_or_else(String::new, |p| p.display().to_string());
                ClientError::Options(match bad {
                    BadMetadata::Binary | BadMetadata::Name => format!(
                        "the credential helper {helper} printed header {name:?}, not a valid ASCII header name"
                    ),
                    BadMetadata::Value => format!(
                        "the credential helper {helper} printed a value for {name} that is not a valid header value (printable ASCII only; the value is not shown)"
                    ),
                })
            })?;
            if replaced.insert(key.clone()) {
                headers.retain(|(k, _)| *k != key);
            }
            headers.push((key, value));
        }
        if let Some(path) = &self.token_file {
            let token = read_token(path)?;
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ClientError::Options(format!(
                    "the token file {}: the token may hold only visible ASCII, no spaces \
                     (it is not shown)",
                    path.display()
                )));
            }
            let mut value =
                AsciiMetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
                    ClientError::Options(format!(
                        "the token file {}: the token may hold only visible ASCII (it is \
                         not shown)",
                        path.display()
                    ))
                })?;
            value.set_sensitive(true);
            add(
                &mut headers,
                AsciiMetadataKey::from_static("authorization"),
                value,
            );
        }
        Ok(Credentials {
            headers: Arc::new(headers),
        })
    }

    /// The TLS settings for a `grpcs://` URL: Mozilla's roots and `ca`, the client identity.
    /// Each file is checked on its own, so an error names the one at fault.
    pub(crate) fn tls_config(&self, uri: &str) -> Result<ClientTlsConfig, ClientError> {
        let endpoint = || {
            tonic::transport::Endpoint::from_shared(uri.to_owned()).map_err(|e| ClientError::Url {
                url: uri.into(),
                message: e.to_string(),
            })
        };
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(mozilla_roots_pem()))
            .timeout(crate::client::CONNECT_TIMEOUT);
        if let Some(ca) = &self.ca {
            let pem = read_file(ca, "CA certificate (--remote-ca)")?;
            if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                return Err(ClientError::Options(format!(
                    "the CA certificate (--remote-ca) {} holds no PEM certificate \
                     (-----BEGIN CERTIFICATE-----)",
                    ca.display()
                )));
            }
            let cert = Certificate::from_pem(pem);
            endpoint()?
                .tls_config(ClientTlsConfig::new().ca_certificate(cert.clone()))
                .map_err(|e| {
                    ClientError::Options(format!(
                        "the CA certificate (--remote-ca) {} cannot be used: {}",
                        ca.display(),
                        crate::client::error_chain(&e)
                    ))
                })?;
            config = config.ca_certificate(cert);
        }
        match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let identity = Identity::from_pem(
                    read_file(cert, "client certificate (--remote-client-cert)")?,
                    read_file(key, "client key (--remote-client-key)")?,
                );
                endpoint()?
                    .tls_config(ClientTlsConfig::new().identity(identity.clone()))
                    .map_err(|e| {
                        ClientError::Options(format!(
                            "the client certificate {} and key {} cannot be used (both PEM; \
                             the key PKCS#8, PKCS#1 or SEC1): {}",
                            cert.display(),
                            key.display(),
                            crate::client::error_chain(&e)
                        ))
                    })?;
                config = config.identity(identity);
            }
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => {
                return Err(ClientError::Options(
                    "--remote-client-cert and --remote-client-key go together: give both or \
                     neither"
                        .into(),
                ));
            }
        }
        Ok(config)
    }
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|e| {
        ClientError::Options(format!("cannot read the {what} {}: {e}", path.display()))
    })
}

/// The token in `path`: its contents without surrounding white space.
fn read_token(path: &Path) -> Result<String, ClientError> {
    let text = read_file(path, "token file (--remote-token-file)")?;
    let text = String::from_utf8(text).map_err(|_| {
        ClientError::Options(format!(
            "the token file {} is not UTF-8 text",
            path.display()
        ))
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ClientError::Options(format!(
            "the token file {} is empty",
            path.display()
        )));
    }
    Ok(token.to_owned())
}

/// The metadata sent with every RPC (a tonic [`Interceptor`]). Its `Debug` shows header
/// names only.
#[derive(Clone, Default)]
pub struct Credentials {
    headers: Arc<Vec<(AsciiMetadataKey, AsciiMetadataValue)>>,
}

impl Credentials {
    /// The names of the headers sent.
    pub fn names(&self) -> Vec<&str> {
        self.headers.iter().map(|(k, _)| k.as_str()).collect()
    }

    /// `channel` with these credentials on every request.
    pub fn wrap(&self, channel: Channel) -> AuthChannel {
        InterceptedService::new(channel, self.clone())
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.headers.iter().map(|(k, _)| format!("{k}: <redacted>")))
            .finish()
    }
}

impl Interceptor for Credentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let md = request.metadata_mut();
        let mut last: Option<&AsciiMetadataKey> = None;
        for (k, v) in self.headers.iter() {
            // A name given several values (by a credential helper) is sent with each.
            if last == Some(k) {
                md.append(k.clone(), v.clone());
            } else {
                md.insert(k.clone(), v.clone());
            }
            last = Some(k);
        }
        Ok(request)
    }
}

/// Mozilla's root certificates (`webpki-root-certs`) as one PEM bundle.
fn mozilla_roots_pem() -> Vec<u8> {
    static PEM: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PEM.get_or_init(|| {
        let mut out = Vec::new();
        for der in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
            out.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
            let b64 = base64(der.as_ref());
            for line in b64.as_bytes().chunks(64) {
                out.extend_from_slice(line);
                out.push(b'\n');
            }
            out.extend_from_slice(b"-----END CERTIFICATE-----\n");
        }
        out
    })
    .clone()
}

/// Standard base64 with padding.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want, "{input:?}");
        }
    }

    #[test]
    fn mozilla_roots_make_a_usable_tls_config() {
        let pem = String::from_utf8(mozilla_roots_pem()).unwrap();
        let certs = pem.matches("-----BEGIN CERTIFICATE-----").count();
        assert_eq!(certs, webpki_root_certs::TLS_SERVER_ROOT_CERTS.len());
        assert!(certs > 100, "{certs}");
        let opts = ConnectOptions::default();
        let config = opts.tls_config("https://example.com:443").unwrap();
        tonic::transport::Endpoint::from_static("https://example.com:443")
            .tls_config(config)
            .unwrap();
    }

    #[test]
    fn debug_never_shows_header_values_or_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret-token\n").unwrap();
        let opts = ConnectOptions {
            headers: vec![("x-api-key".into(), "hunter2".into())],
            token_file: Some(token),
            ..Default::default()
        };
        let shown = format!("{opts:?}");
        assert!(
            shown.contains("x-api-key") && !shown.contains("hunter2"),
            "{shown}"
        );
        let creds = opts.credentials().unwrap();
        let shown = format!("{creds:?}");
        assert!(shown.contains("authorization"), "{shown}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert_eq!(creds.names(), ["x-api-key", "authorization"]);
    }

    #[test]
    fn the_interceptor_adds_every_header_and_the_token_replaces_authorization() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "  t0k  \n").unwrap();
        let opts = ConnectOptions {
            headers: vec![
                ("X-Team".into(), "infra".into()),
                ("authorization".into(), "Bearer from-header".into()),
            ],
            token_file: Some(token),
            ..Default::default()
        };
        let mut creds = opts.credentials().unwrap();
        let req = creds.call(Request::new(())).unwrap();
        assert_eq!(req.metadata().get("x-team").unwrap(), "infra");
        assert_eq!(req.metadata().get("authorization").unwrap(), "Bearer t0k");
        assert_eq!(req.metadata().get_all("authorization").iter().count(), 1);
    }

    /// A credential helper script in `dir` with `body` (a shell script). Written by a child
    /// process: had this (multi-threaded) test process held it open for writing, a fork by
    /// another test meanwhile could keep that descriptor alive in its child and make running
    /// the script fail with "Text file busy".
    fn helper(dir: &Path, name: &str, body: &str) -> PathBuf {
        use std::io::Write;
        let p = dir.join(name);
        let mut child = std::process::Command::new("sh")
            .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
            .arg(&p)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(format!("#!/bin/sh\n{body}\n").as_bytes())
            .unwrap();
        drop(stdin);
        assert!(child.wait().unwrap().success());
        p
    }

    #[test]
    fn a_credential_helper_gives_the_headers_of_every_call() {
        let dir = tempfile::tempdir().unwrap();
        // It is asked `get` with the URL on stdin, as Bazel asks its helpers.
        let ok = helper(
            dir.path(),
            "ok",
            r#"[ "$1" = get ] || exit 9
read -r req
case "$req" in *'"uri":"grpcs://cache.example:443"'*) ;; *) echo "asked $req" >&2; exit 8 ;; esac
echo '{"headers": {"Authorization": ["Bearer from-helper"], "x-two": ["a", "b"]}, "expires": "2030-01-01T00:00:00Z"}'"#,
        );
        let opts = ConnectOptions {
            headers: vec![
                ("authorization".into(), "Bearer from-flag".into()),
                ("x-team".into(), "infra".into()),
            ],
            credential_helper: Some(ok),
            ..Default::default()
        };
        assert!(opts.has_credentials());
        let mut creds = opts.credentials_for("grpcs://cache.example:443").unwrap();
        let req = creds.call(Request::new(())).unwrap();
        let md = req.metadata();
        assert_eq!(md.get("authorization").unwrap(), "Bearer from-helper");
        assert_eq!(md.get_all("authorization").iter().count(), 1);
        assert_eq!(md.get("x-team").unwrap(), "infra");
        let two: Vec<_> = md.get_all("x-two").iter().collect();
        assert_eq!(two, ["a", "b"]);
        assert!(!format!("{opts:?}").contains("from-flag"));
    }

    #[test]
    fn a_credential_helper_that_fails_hangs_or_lies_is_named_and_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let failing = helper(
            dir.path(),
            "failing",
            "echo 'no credentials for you' >&2; exit 1",
        );
        let e = run_credential_helper(&failing, "grpc://h:1", CREDENTIAL_HELPER_DEADLINE)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("failing") && e.contains("no credentials for you"),
            "{e}"
        );
        let hanging = helper(dir.path(), "hanging", "exec sleep 30");
        let t0 = std::time::Instant::now();
        let e = run_credential_helper(&hanging, "grpc://h:1", std::time::Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("did not answer within 1 s"), "{e}");
        assert!(t0.elapsed() < std::time::Duration::from_secs(10));
        let garbage = helper(dir.path(), "garbage", "echo 'Bearer s3cret'");
        let e = run_credential_helper(&garbage, "grpc://h:1", CREDENTIAL_HELPER_DEADLINE)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no JSON") && !e.contains("s3cret"), "{e}");
        let bad_value = helper(
            dir.path(),
            "bad_value",
            r#"printf '%s\n' '{"headers": {"authorization": ["line\nbreak s3cret"]}}'"#,
        );
        let opts = ConnectOptions {
            credential_helper: Some(bad_value),
            ..Default::default()
        };
        let e = opts.credentials_for("grpc://h:1").unwrap_err().to_string();
        assert!(e.contains("authorization") && !e.contains("s3cret"), "{e}");
        let missing = ConnectOptions {
            credential_helper: Some(dir.path().join("nope")),
            ..Default::default()
        };
        let e = missing
            .credentials_for("grpc://h:1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope") && e.contains("cannot be started"), "{e}");
    }

    #[test]
    fn bad_headers_and_token_files_are_named() {
        let bad_value = ConnectOptions {
            headers: vec![
                ("x-ok".into(), "fine".into()),
                ("x-bad".into(), "line\nbreak".into()),
            ],
            ..Default::default()
        };
        let e = bad_value.credentials().unwrap_err().to_string();
        assert!(e.contains("x-bad") && !e.contains("line"), "{e}");
        let non_ascii = ConnectOptions {
            headers: vec![("x-latin".into(), "caf\u{e9}".into())],
            ..Default::default()
        };
        let e = non_ascii.credentials().unwrap_err().to_string();
        assert!(e.contains("x-latin") && !e.contains("caf"), "{e}");
        let bad_name = ConnectOptions {
            headers: vec![("bad name".into(), "v".into())],
            ..Default::default()
        };
        let e = bad_name.credentials().unwrap_err().to_string();
        assert!(e.contains("bad name"), "{e}");
        let binary = ConnectOptions {
            headers: vec![("x-trace-bin".into(), "v".into())],
            ..Default::default()
        };
        assert!(binary.credentials().is_err());
        assert!(parse_header("novalue").is_err());
        assert!(parse_header("=v").is_err());
        assert_eq!(
            parse_header("authorization=Bearer a=b").unwrap(),
            ("authorization".to_owned(), "Bearer a=b".to_owned())
        );
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n").unwrap();
        // A token that would smuggle another header into the request.
        let smuggler = dir.path().join("smuggler");
        std::fs::write(&smuggler, "tok\r\nx-admin: yes\n").unwrap();
        for path in [empty, smuggler, dir.path().join("missing")] {
            let opts = ConnectOptions {
                token_file: Some(path.clone()),
                ..Default::default()
            };
            let e = opts.credentials().unwrap_err().to_string();
            assert!(e.contains(&path.display().to_string()), "{e}");
        }
    }

    #[test]
    fn clear_text_credentials_off_loopback_are_warned_about() {
        let token = ConnectOptions {
            token_file: Some("t".into()),
            ..Default::default()
        };
        let header = ConnectOptions {
            headers: vec![("Authorization".into(), "Bearer x".into())],
            ..Default::default()
        };
        for opts in [&token, &header] {
            let w = opts
                .cleartext_warning("grpc://cache.example.com:8980")
                .unwrap();
            assert!(w.contains("clear text") && w.contains("grpcs://"), "{w}");
            for quiet in [
                "grpcs://cache.example.com:8980",
                "grpc://127.0.0.1:8980",
                "grpc://localhost:8980",
                "grpc://[::1]:8980",
            ] {
                assert!(opts.cleartext_warning(quiet).is_none(), "{quiet}");
            }
        }
        let api_key = ConnectOptions {
            headers: vec![("X-Api-Key".into(), "k".into())],
            ..Default::default()
        };
        assert!(
            api_key
                .cleartext_warning("grpc://cache.example.com:8980")
                .is_some()
        );
        let none = ConnectOptions {
            headers: vec![("x-team".into(), "infra".into())],
            ..Default::default()
        };
        assert!(
            none.cleartext_warning("grpc://cache.example.com:8980")
                .is_none()
        );
    }

    #[test]
    fn client_certificate_and_key_go_together() {
        let opts = ConnectOptions {
            client_cert: Some("cert.pem".into()),
            ..Default::default()
        };
        let e = opts.tls_config("https://h:1").unwrap_err().to_string();
        assert!(e.contains("--remote-client-key"), "{e}");
    }
}
