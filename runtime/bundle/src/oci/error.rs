//! [`OciError`], and the errors made from a registry's answers.

use std::io::{self, Read};
use std::path::PathBuf;

use ureq::Body;
use ureq::http::Response;

use super::credentials::DockerConfigError;
use super::reference::{InvalidName, REFERENCE_FORMAT, ReferenceError};

/// How much of an error response body is read to build an error message.
const MAX_ERROR_BODY: u64 = 64 * 1024;

/// Errors from parsing references and talking to a registry. A message includes its cause
/// (the transport or I/O error), and `source()` returns none, so a report that walks the
/// chain (`{e:#}`) shows each cause once.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// A reference string could not be parsed.
    #[error("invalid OCI reference {input:?}: {reason} (expected {REFERENCE_FORMAT})")]
    InvalidReference {
        input: String,
        reason: ReferenceError,
    },

    /// A registry, repository, tag or digest passed to the client is malformed.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidArgument {
        what: &'static str,
        value: String,
        reason: InvalidName,
    },

    /// The client's configuration (environment, docker config, CA file) is unusable.
    #[error("{reason}")]
    Config { reason: String },

    /// The docker config (`$DOCKER_CONFIG/config.json`, `~/.docker/config.json`) is unusable.
    #[error("docker config {}: {error}", path.display())]
    DockerConfig {
        path: PathBuf,
        error: DockerConfigError,
    },

    /// The registry (or its token server) refused access: HTTP 401 or 403 after
    /// authenticating with what was available.
    #[error("{method} {url}: registry {registry} answered HTTP {status} ({}): {message}; {advice}",
        if *status == 403 { "access denied" } else { "authentication required" })]
    Unauthorized {
        method: &'static str,
        url: String,
        registry: String,
        status: u16,
        /// The registry's error message.
        message: String,
        /// Which credentials were used and how to set others (never the secrets).
        advice: String,
    },

    /// The HTTP exchange failed (connection refused, timeout, protocol error, ...).
    #[error("{method} {url}: {error}{hint}")]
    Transport {
        method: &'static str,
        url: String,
        hint: &'static str,
        /// Printed in the message (not returned by `source()`, so that it is shown once).
        error: Box<ureq::Error>,
    },

    /// The registry answered with an error status.
    #[error("{method} {url}: registry answered HTTP {status}{}: {message}{hint}",
        code.as_deref().map(|c| format!(" {c}")).unwrap_or_default())]
    Registry {
        method: &'static str,
        url: String,
        status: u16,
        /// The first error code of the registry's JSON error body (e.g. `BLOB_UNKNOWN`).
        code: Option<String>,
        /// The registry's error message(s), or the start of a non-JSON body.
        message: String,
        hint: &'static str,
    },

    /// The registry's answer does not follow the protocol (missing header, ...).
    #[error("{method} {url}: unexpected response from the registry: {reason}")]
    Protocol {
        method: &'static str,
        url: String,
        reason: String,
    },

    /// The registry served (or reports) content whose digest is not the expected one.
    #[error(
        "digest mismatch for {expected} from {url}: the registry served content with digest \
         {actual}; the registry (or something between it and us) returned different bytes, \
         which must not be used"
    )]
    DigestMismatch {
        url: String,
        expected: String,
        actual: String,
    },

    /// Local content does not hash to the digest it is being pushed under.
    #[error(
        "{what} does not match digest {digest}: its content hashes to {actual}; refusing to \
         push it (recompute the digest, or check that the file was not modified)"
    )]
    ContentMismatch {
        what: String,
        digest: String,
        actual: String,
    },

    /// A blob or manifest is larger than the caller's limit.
    #[error("{digest} from {url} is larger than the limit of {limit} bytes")]
    TooLarge {
        url: String,
        digest: String,
        limit: u64,
    },

    /// A local file operation failed.
    #[error("{action} {}: {error}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        /// Printed in the message (not returned by `source()`).
        error: io::Error,
    },
}

impl OciError {
    /// The registry answered 404 (unknown blob, manifest or repository).
    pub fn is_not_found(&self) -> bool {
        matches!(self, OciError::Registry { status: 404, .. })
    }

    /// The registry (or its token server) refused access (401/403).
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, OciError::Unauthorized { .. })
    }

    /// The HTTP status the registry answered with, for [`OciError::Registry`] and
    /// [`OciError::Unauthorized`].
    pub fn status(&self) -> Option<u16> {
        match self {
            OciError::Registry { status, .. } | OciError::Unauthorized { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }
}

pub(super) fn invalid(what: &'static str, value: &str, reason: InvalidName) -> OciError {
    OciError::InvalidArgument {
        what,
        value: value.to_string(),
        reason,
    }
}

/// A hint for a TLS failure, from the (rustls) error's text.
fn tls_hint(text: &str) -> &'static str {
    if text.contains("certificate") || text.contains("Certificate") {
        "; the registry's TLS certificate is not trusted (or not valid for this address): if \
         it comes from a private CA, point WBUILD_OCI_CA_FILE at that CA's certificate (PEM)"
    } else if text.contains("corrupt message") || text.contains("InvalidContentType") {
        "; the TLS handshake failed: is the registry serving plain HTTP? (only loopback \
         registries can, and they are reached over http unless WBUILD_OCI_TLS=1)"
    } else {
        "; the TLS handshake with the registry failed"
    }
}

pub(super) fn transport(method: &'static str, url: &str, e: ureq::Error) -> OciError {
    let hint = match &e {
        ureq::Error::Io(io) if io.kind() == io::ErrorKind::ConnectionRefused => {
            "; is the registry running and listening at that address?"
        }
        ureq::Error::Io(io) if io.kind() == io::ErrorKind::InvalidData => tls_hint(&io.to_string()),
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
            "; is the registry running and listening at that address?"
        }
        ureq::Error::Timeout(_) => "; the registry did not answer in time (retry, or check it)",
        ureq::Error::Rustls(tls) => tls_hint(&tls.to_string()),
        ureq::Error::Tls(text) => tls_hint(text),
        ureq::Error::TlsRequired => {
            "; refusing plain HTTP: this registry is reached over HTTPS, and so is everything \
             it redirects to"
        }
        _ => "",
    };
    OciError::Transport {
        method,
        url: url.to_string(),
        hint,
        error: Box::new(e),
    }
}

/// Builds an [`OciError::Registry`] from an error response, reading its (JSON) body.
pub(super) fn registry_error(
    method: &'static str,
    url: &str,
    resp: &mut Response<Body>,
) -> OciError {
    let status = resp.status().as_u16();
    let (code, message) = error_details(method, resp);
    let hint = if status == 400 && message.contains("HTTP request to an HTTPS server") {
        " (the registry serves HTTPS: set WBUILD_OCI_TLS=1 to use TLS with a loopback registry)"
    } else {
        error_hint(status, code.as_deref())
    };
    OciError::Registry {
        method,
        url: url.to_string(),
        status,
        hint,
        code,
        message,
    }
}

/// (first error code, message) of an error response, from its (JSON) body.
pub(super) fn error_details(
    method: &'static str,
    resp: &mut Response<Body>,
) -> (Option<String>, String) {
    let mut body = Vec::new();
    if method != "HEAD" {
        let _ = resp
            .body_mut()
            .as_reader()
            .take(MAX_ERROR_BODY)
            .read_to_end(&mut body);
    }
    let (code, message) = parse_error_body(&body);
    let message = message.unwrap_or_else(|| {
        resp.status()
            .canonical_reason()
            .unwrap_or("unknown status")
            .to_lowercase()
    });
    (code, message)
}

/// Parses `{"errors":[{"code","message","detail"}]}`; falls back to the start of the text.
fn parse_error_body(body: &[u8]) -> (Option<String>, Option<String>) {
    #[derive(serde::Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
        #[serde(default)]
        detail: Option<serde_json::Value>,
    }
    if let Ok(parsed) = serde_json::from_slice::<Errors>(body)
        && !parsed.errors.is_empty()
    {
        let code = Some(parsed.errors[0].code.clone()).filter(|c| !c.is_empty());
        let messages: Vec<String> = parsed
            .errors
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let mut m = if i == 0 || e.code.is_empty() {
                    e.message.clone()
                } else {
                    format!("{}: {}", e.code, e.message)
                };
                match &e.detail {
                    None | Some(serde_json::Value::Null) => {}
                    Some(serde_json::Value::String(s)) if s.is_empty() => {}
                    Some(serde_json::Value::String(s)) => m.push_str(&format!(" ({s})")),
                    Some(other) => m.push_str(&format!(" ({other})")),
                }
                m
            })
            .collect();
        return (code, Some(messages.join("; ")));
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return (None, None);
    }
    let short: String = text.chars().take(300).collect();
    (None, Some(short))
}

fn error_hint(status: u16, code: Option<&str>) -> &'static str {
    match (status, code) {
        (_, Some("MANIFEST_BLOB_UNKNOWN")) => {
            " (push the config and layer blobs before the manifest)"
        }
        (_, Some("DIGEST_INVALID")) => " (the uploaded content does not match its digest)",
        (_, Some("MANIFEST_INVALID")) => " (the registry rejected the manifest's content)",
        (_, Some("NAME_INVALID")) => " (the repository name is not valid for this registry)",
        (_, Some("TAG_INVALID")) => " (the tag is not valid for this registry)",
        (404, _) => " (not found: check the repository name and the tag or digest)",
        (401 | 403, _) => {
            " (authentication failed: set WBUILD_OCI_USERNAME and WBUILD_OCI_PASSWORD, or \
             WBUILD_OCI_TOKEN, or add the registry to the docker config)"
        }
        (405, _) => " (the registry does not allow this operation; is it a read-only mirror?)",
        (429, _) => " (rate limited: retry later)",
        (500..=599, _) => " (registry-side failure: see the registry's logs, then retry)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_error_bodies() {
        let body = br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry","detail":"sha256:ab"}]}"#;
        let (code, message) = parse_error_body(body);
        assert_eq!(code.as_deref(), Some("BLOB_UNKNOWN"));
        assert_eq!(
            message.as_deref(),
            Some("blob unknown to registry (sha256:ab)")
        );
        let (code, message) = parse_error_body(b"<html>oops</html>");
        assert_eq!(code, None);
        assert_eq!(message.as_deref(), Some("<html>oops</html>"));
        assert_eq!(parse_error_body(b""), (None, None));
    }
}
