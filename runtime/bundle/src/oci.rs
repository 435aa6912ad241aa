//! Publishing and fetching toolchain bundles as OCI artifacts.
//!
//! A small blocking client for the OCI Distribution Spec (v1.0/v1.1) HTTP API: blob
//! existence checks, monolithic blob uploads (from memory or streamed from a file),
//! manifest push and pull, and blob downloads verified against their sha256 digest.
//!
//! References look like `oci://host[:port]/repo/path[:tag][@sha256:<hex>]`.
//!
//! This build has no TLS backend: only registries on loopback addresses (`localhost`,
//! `127.0.0.0/8`, `[::1]`) are reachable, over plain HTTP. Any other registry is refused
//! with [`OciError::TlsUnsupported`]. No registry authentication is attempted either.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use ureq::http::{Response, StatusCode};
use ureq::{Body, SendBody};

/// Media type of an OCI image manifest (also used for artifacts).
pub const MEDIA_TYPE_IMAGE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image index.
pub const MEDIA_TYPE_IMAGE_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Largest manifest [`Client::pull_manifest`] accepts (the limit distribution enforces too).
pub const MAX_MANIFEST_SIZE: u64 = 4 * 1024 * 1024;

/// How much of an error response body is read to build an error message.
const MAX_ERROR_BODY: u64 = 64 * 1024;
/// Connect / per-read / per-write timeout.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Whole-request budget (headers + body), generous enough for large blobs.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Longest repository name accepted (clients SHOULD limit names to 255 characters).
const MAX_REPOSITORY_LEN: usize = 255;
/// Longest tag (per the spec's tag regex).
const MAX_TAG_LEN: usize = 128;

const REFERENCE_FORMAT: &str = "oci://host[:port]/repository[:tag][@sha256:<64 hex digits>]";

/// Errors from parsing references and talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// A reference string could not be parsed.
    #[error("invalid OCI reference {input:?}: {reason} (expected {REFERENCE_FORMAT})")]
    InvalidReference { input: String, reason: String },

    /// A registry, repository, tag or digest passed to the client is malformed.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidArgument {
        what: &'static str,
        value: String,
        reason: String,
    },

    /// The registry is not on a loopback address, so it would need HTTPS.
    #[error(
        "registry {registry} needs HTTPS, but TLS registries are not supported yet (this build \
         has no TLS backend); use a registry or mirror on a loopback address (localhost, \
         127.0.0.1, [::1]), which is reached over plain HTTP"
    )]
    TlsUnsupported { registry: String },

    /// The HTTP exchange failed (connection refused, timeout, protocol error, ...).
    #[error("{method} {url}: {source}{hint}")]
    Transport {
        method: &'static str,
        url: String,
        hint: &'static str,
        #[source]
        source: Box<ureq::Error>,
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
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl OciError {
    /// The registry answered 404 (unknown blob, manifest or repository).
    pub fn is_not_found(&self) -> bool {
        matches!(self, OciError::Registry { status: 404, .. })
    }

    /// The HTTP status the registry answered with, for [`OciError::Registry`].
    pub fn status(&self) -> Option<u16> {
        match self {
            OciError::Registry { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// `"sha256:<hex>"` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

// ---------------------------------------------------------------------------------------
// References.
// ---------------------------------------------------------------------------------------

/// `oci://host[:port]/repo/path[:tag][@sha256:hex]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Reference {
    /// Parses `oci://host[:port]/repo/path[:tag][@sha256:hex]`.
    ///
    /// The repository must follow the OCI name grammar (lowercase `[a-z0-9]` components
    /// joined by `.`, `_`, `__` or dashes, separated by `/`), the tag the spec's
    /// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}` and the digest `sha256:<64 lowercase hex>`.
    /// When neither tag nor digest is given both stay `None`: callers decide the default.
    pub fn parse(s: &str) -> Result<Reference, OciError> {
        let err = |reason: String| OciError::InvalidReference {
            input: s.to_string(),
            reason,
        };
        let Some(rest) = s.strip_prefix("oci://") else {
            return Err(err(match s.split_once("://") {
                Some((scheme, _)) => format!(
                    "unsupported scheme {scheme:?}: bundle references start with \"oci://\""
                ),
                None => "missing the \"oci://\" scheme".to_string(),
            }));
        };
        let Some((registry, path)) = rest.split_once('/') else {
            return Err(err(if rest.is_empty() {
                "missing the registry host and repository".to_string()
            } else {
                format!("missing the repository after the registry {rest:?}")
            }));
        };
        if registry.is_empty() {
            return Err(err(
                "missing the registry host before the repository".to_string()
            ));
        }
        parse_registry(registry).map_err(|r| err(format!("registry {registry:?}: {r}")))?;

        let (name_and_tag, digest) = match path.split_once('@') {
            Some((n, d)) => {
                check_digest(d).map_err(|r| err(format!("digest {d:?}: {r}")))?;
                (n, Some(d.to_string()))
            }
            None => (path, None),
        };
        let (repository, tag) = match name_and_tag.split_once(':') {
            Some((r, t)) => {
                check_tag(t).map_err(|reason| err(format!("tag {t:?}: {reason}")))?;
                (r, Some(t.to_string()))
            }
            None => (name_and_tag, None),
        };
        check_repository(repository)
            .map_err(|reason| err(format!("repository {repository:?}: {reason}")))?;
        Ok(Reference {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag,
            digest,
        })
    }

    /// The manifest reference to use in URLs: the digest if present, else the tag.
    pub fn manifest_ref(&self) -> Option<&str> {
        self.digest.as_deref().or(self.tag.as_deref())
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "oci://{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Reference {
    type Err = OciError;
    fn from_str(s: &str) -> Result<Reference, OciError> {
        Reference::parse(s)
    }
}

/// Host part of a registry address.
#[derive(Debug, PartialEq, Eq)]
enum Host<'a> {
    Name(&'a str),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

impl Host<'_> {
    fn is_loopback(&self) -> bool {
        match self {
            Host::Name(n) => n.eq_ignore_ascii_case("localhost"),
            Host::V4(a) => a.is_loopback(),
            Host::V6(a) => a.is_loopback(),
        }
    }
}

/// Splits `host[:port]` / `[v6]:port` and checks both parts.
fn parse_registry(s: &str) -> Result<(Host<'_>, Option<u16>), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return Err("IPv6 address is missing its closing ']'".to_string());
        };
        let addr: Ipv6Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not a valid IPv6 address"))?;
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(p) => Some(p),
                None => return Err(format!("unexpected {after:?} after the IPv6 address")),
            },
        };
        (Host::V6(addr), port)
    } else {
        let (host, port) = match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        if host.is_empty() {
            return Err("the host is empty".to_string());
        }
        let host = if let Ok(v4) = host.parse::<Ipv4Addr>() {
            Host::V4(v4)
        } else {
            for label in host.split('.') {
                if label.is_empty()
                    || label.starts_with('-')
                    || label.ends_with('-')
                    || !label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                {
                    return Err(format!(
                        "host {host:?} is not a valid host name (letters, digits, '-' and '.' \
                         only) or IP address"
                    ));
                }
            }
            Host::Name(host)
        };
        (host, port)
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return Err(format!("port {p:?} is not a number between 1 and 65535")),
        },
    };
    Ok((host, port))
}

/// OCI repository name grammar:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
fn check_repository(repo: &str) -> Result<(), String> {
    const ALLOWED: &str = "lowercase letters, digits, '.', '_', '-' and '/'";
    if repo.is_empty() {
        return Err("the repository name is empty".to_string());
    }
    if repo.len() > MAX_REPOSITORY_LEN {
        return Err(format!(
            "is {} characters long, more than the {MAX_REPOSITORY_LEN} allowed",
            repo.len()
        ));
    }
    if repo.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "must be lowercase (repository names allow only {ALLOWED})"
        ));
    }
    if let Some(c) = repo
        .chars()
        .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c)))
    {
        return Err(format!(
            "contains {c:?}; repository names allow only {ALLOWED}"
        ));
    }
    for component in repo.split('/') {
        if component.is_empty() {
            return Err("has an empty path component (leading, trailing or doubled '/')".into());
        }
        let bytes = component.as_bytes();
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
            return Err(format!(
                "component {component:?} must start and end with a lowercase letter or digit"
            ));
        }
        let mut i = 0;
        while i < bytes.len() {
            if alnum(bytes[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < bytes.len() && !alnum(bytes[i]) {
                i += 1;
            }
            let sep = &component[start..i];
            if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-')) {
                return Err(format!(
                    "component {component:?} has the separator {sep:?}; letters and digits may \
                     be joined only by one '.', one or two '_', or any number of '-'"
                ));
            }
        }
    }
    Ok(())
}

/// Tag grammar: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
fn check_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() {
        return Err("the tag is empty".to_string());
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(format!(
            "is {} characters long, more than the {MAX_TAG_LEN} allowed",
            tag.len()
        ));
    }
    let first = tag.as_bytes()[0];
    if !(first.is_ascii_alphanumeric() || first == b'_') {
        return Err("must start with a letter, digit or '_'".to_string());
    }
    if let Some(c) = tag
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "._-".contains(c)))
    {
        return Err(format!(
            "contains {c:?}; tags allow only letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// `sha256:<64 lowercase hex>`.
fn check_digest(digest: &str) -> Result<(), String> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err("must be sha256:<64 lowercase hex digits>".to_string());
    };
    if algorithm != "sha256" {
        return Err(format!(
            "unsupported algorithm {algorithm:?}: only sha256 digests are supported"
        ));
    }
    if hex.len() != 64 {
        return Err(format!(
            "has {} hex digits after \"sha256:\", expected 64",
            hex.len()
        ));
    }
    if let Some(c) = hex.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!("contains {c:?}, which is not a hex digit"));
    }
    if hex.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("hex digits must be lowercase".to_string());
    }
    Ok(())
}

fn invalid(what: &'static str, value: &str, reason: String) -> OciError {
    OciError::InvalidArgument {
        what,
        value: value.to_string(),
        reason,
    }
}

fn validate_repository(repo: &str) -> Result<(), OciError> {
    check_repository(repo).map_err(|r| invalid("repository", repo, r))
}

fn validate_digest(digest: &str) -> Result<(), OciError> {
    check_digest(digest).map_err(|r| invalid("digest", digest, r))
}

/// A manifest reference: a digest when it contains ':', else a tag.
fn validate_manifest_ref(reference: &str) -> Result<bool, OciError> {
    if reference.contains(':') {
        check_digest(reference).map_err(|r| invalid("manifest digest", reference, r))?;
        Ok(true)
    } else {
        check_tag(reference).map_err(|r| invalid("tag", reference, r))?;
        Ok(false)
    }
}

// ---------------------------------------------------------------------------------------
// Client.
// ---------------------------------------------------------------------------------------

/// A blocking client for one registry.
#[derive(Clone)]
pub struct Client {
    registry: String,
    /// `http://host[:port]`, without a trailing slash.
    base: String,
    agent: ureq::Agent,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("registry", &self.registry)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Plain HTTP for loopback registries (localhost, 127.0.0.0/8, [::1]); any other host
    /// would need https, which this build cannot do: that is an [`OciError::TlsUnsupported`].
    pub fn new(registry: &str) -> Result<Client, OciError> {
        if registry.contains("://") {
            return Err(invalid(
                "registry",
                registry,
                "give host[:port] without a scheme (e.g. 127.0.0.1:5000)".to_string(),
            ));
        }
        let (host, _port) =
            parse_registry(registry).map_err(|r| invalid("registry", registry, r))?;
        if !host.is_loopback() {
            return Err(OciError::TlsUnsupported {
                registry: registry.to_string(),
            });
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .https_only(false)
            .max_redirects(5)
            .user_agent(concat!("wbuild/", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(IO_TIMEOUT))
            .timeout_per_read(Some(IO_TIMEOUT))
            .timeout_per_write(Some(IO_TIMEOUT))
            .timeout_per_call(Some(REQUEST_TIMEOUT))
            .build();
        Ok(Client {
            registry: registry.to_string(),
            base: format!("http://{registry}"),
            agent: config.new_agent(),
        })
    }

    /// The registry this client talks to (`host[:port]`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// `GET /v2/`: checks that the registry speaks the distribution API and needs no auth.
    pub fn ping(&self) -> Result<(), OciError> {
        let url = format!("{}/v2/", self.base);
        let mut resp = self.idempotent("GET", &url, || self.agent.get(&url).call())?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(registry_error("GET", &url, &mut resp))
        }
    }

    fn blob_url(&self, repository: &str, digest: &str) -> String {
        format!("{}/v2/{repository}/blobs/{digest}", self.base)
    }

    fn manifest_url(&self, repository: &str, reference: &str) -> String {
        format!("{}/v2/{repository}/manifests/{reference}", self.base)
    }

    /// Runs a GET/HEAD, retrying once after a connection-level failure.
    fn idempotent(
        &self,
        method: &'static str,
        url: &str,
        mut send: impl FnMut() -> Result<Response<Body>, ureq::Error>,
    ) -> Result<Response<Body>, OciError> {
        match send() {
            Ok(r) => Ok(r),
            Err(e) if is_retryable(&e) => {
                std::thread::sleep(Duration::from_millis(200));
                send().map_err(|e| transport(method, url, e))
            }
            Err(e) => Err(transport(method, url, e)),
        }
    }

    /// `HEAD /v2/<repo>/blobs/<digest>`.
    pub fn blob_exists(&self, repository: &str, digest: &str) -> Result<bool, OciError> {
        validate_repository(repository)?;
        validate_digest(digest)?;
        let url = self.blob_url(repository, digest);
        let mut resp = self.idempotent("HEAD", &url, || self.agent.head(&url).call())?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(registry_error("HEAD", &url, &mut resp)),
        }
    }

    /// Upload unless present (HEAD first). `POST /v2/<repo>/blobs/uploads/` then
    /// `PUT <Location>?digest=...` (monolithic). Returns whether it uploaded.
    pub fn push_blob(
        &self,
        repository: &str,
        digest: &str,
        bytes: &[u8],
    ) -> Result<bool, OciError> {
        validate_repository(repository)?;
        validate_digest(digest)?;
        let actual = sha256_digest(bytes);
        if actual != digest {
            return Err(OciError::ContentMismatch {
                what: format!("blob of {} bytes", bytes.len()),
                digest: digest.to_string(),
                actual,
            });
        }
        if self.blob_exists(repository, digest)? {
            return Ok(false);
        }
        let location = self.start_upload(repository)?;
        let url = upload_url(&location, digest);
        let result = self
            .agent
            .put(&url)
            .header("Content-Type", "application/octet-stream")
            .send(bytes);
        self.finish_upload(&location, &url, digest, result)?;
        Ok(true)
    }

    /// Like [`Client::push_blob`], streaming `size` bytes from the file at `path`
    /// (hashed while sending; a file that does not match `digest` is an error).
    pub fn push_blob_file(
        &self,
        repository: &str,
        digest: &str,
        size: u64,
        path: &Path,
    ) -> Result<bool, OciError> {
        validate_repository(repository)?;
        validate_digest(digest)?;
        let io_err = |action, source| OciError::Io {
            action,
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(|e| io_err("opening", e))?;
        let len = file
            .metadata()
            .map_err(|e| io_err("reading metadata of", e))?
            .len();
        if len != size {
            return Err(io_err(
                "uploading",
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the file is {len} bytes, but the blob {digest} should be {size}"),
                ),
            ));
        }
        if self.blob_exists(repository, digest)? {
            return Ok(false);
        }
        let location = self.start_upload(repository)?;
        let url = upload_url(&location, digest);
        let mut reader = HashingReader::new(file.take(size));
        let result = self
            .agent
            .put(&url)
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", size.to_string())
            .send(SendBody::from_reader(&mut reader));
        if result.is_ok() {
            let (count, actual) = reader.finish();
            if count == size && actual != digest {
                self.cancel_upload(&location);
                return Err(OciError::ContentMismatch {
                    what: format!("file {}", path.display()),
                    digest: digest.to_string(),
                    actual,
                });
            }
        }
        self.finish_upload(&location, &url, digest, result)?;
        Ok(true)
    }

    /// `POST /v2/<repo>/blobs/uploads/`: returns the absolute upload URL.
    fn start_upload(&self, repository: &str) -> Result<String, OciError> {
        let url = format!("{}/v2/{repository}/blobs/uploads/", self.base);
        let mut resp = self
            .agent
            .post(&url)
            .send_empty()
            .map_err(|e| transport("POST", &url, e))?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(registry_error("POST", &url, &mut resp));
        }
        let location = header(&resp, "location").ok_or_else(|| OciError::Protocol {
            method: "POST",
            url: url.clone(),
            reason: "202 Accepted without a Location header for the upload".to_string(),
        })?;
        self.resolve_location(&url, &location)
    }

    /// Makes a Location header absolute (it may be absolute, scheme-relative,
    /// absolute-path or relative to the request URL).
    fn resolve_location(&self, request_url: &str, location: &str) -> Result<String, OciError> {
        if let Some(rest) = location.strip_prefix("https://") {
            let registry = rest.split(['/', '?']).next().unwrap_or_default();
            return Err(OciError::TlsUnsupported {
                registry: registry.to_string(),
            });
        }
        if location.starts_with("http://") {
            return Ok(location.to_string());
        }
        if let Some(rest) = location.strip_prefix("//") {
            return Ok(format!("http://{rest}"));
        }
        if location.starts_with('/') {
            return Ok(format!("{}{location}", self.base));
        }
        if location.contains("://") {
            return Err(OciError::Protocol {
                method: "POST",
                url: request_url.to_string(),
                reason: format!("upload Location {location:?} has an unsupported scheme"),
            });
        }
        // Relative reference: resolve against the request URL's directory.
        let path = request_url.split('?').next().unwrap_or(request_url);
        let dir = &path[..path.rfind('/').map_or(path.len(), |i| i + 1)];
        Ok(format!("{dir}{location}"))
    }

    /// Checks the answer to the upload PUT; on failure, best-effort cancels the upload.
    fn finish_upload(
        &self,
        location: &str,
        url: &str,
        digest: &str,
        result: Result<Response<Body>, ureq::Error>,
    ) -> Result<(), OciError> {
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => {
                self.cancel_upload(location);
                return Err(transport("PUT", url, e));
            }
        };
        if !resp.status().is_success() {
            let err = registry_error("PUT", url, &mut resp);
            self.cancel_upload(location);
            return Err(err);
        }
        if let Some(reported) = header(&resp, "docker-content-digest")
            && reported != digest
        {
            return Err(OciError::DigestMismatch {
                url: url.to_string(),
                expected: digest.to_string(),
                actual: reported,
            });
        }
        Ok(())
    }

    fn cancel_upload(&self, location: &str) {
        let _ = self.agent.delete(location).call();
    }

    /// `PUT /v2/<repo>/manifests/<reference>` with Content-Type `media_type`; returns the
    /// manifest digest (computed locally, checked against `Docker-Content-Digest`).
    pub fn push_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<String, OciError> {
        validate_repository(repository)?;
        let by_digest = validate_manifest_ref(reference)?;
        if media_type.is_empty() || !media_type.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "media type",
                media_type,
                "must be a non-empty type/subtype without spaces".to_string(),
            ));
        }
        let digest = sha256_digest(bytes);
        if by_digest && digest != reference {
            return Err(OciError::ContentMismatch {
                what: format!("manifest of {} bytes", bytes.len()),
                digest: reference.to_string(),
                actual: digest,
            });
        }
        let url = self.manifest_url(repository, reference);
        let mut resp = self
            .agent
            .put(&url)
            .header("Content-Type", media_type)
            .send(bytes)
            .map_err(|e| transport("PUT", &url, e))?;
        if !resp.status().is_success() {
            return Err(registry_error("PUT", &url, &mut resp));
        }
        if let Some(reported) = header(&resp, "docker-content-digest")
            && reported != digest
        {
            return Err(OciError::DigestMismatch {
                url,
                expected: digest,
                actual: reported,
            });
        }
        Ok(digest)
    }

    /// `GET /v2/<repo>/manifests/<reference>` accepting OCI image manifests and indexes;
    /// returns (media type, bytes, digest). The digest is computed locally and checked
    /// against `reference` when that is a digest, and against `Docker-Content-Digest`.
    pub fn pull_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<(String, Vec<u8>, String), OciError> {
        validate_repository(repository)?;
        let by_digest = validate_manifest_ref(reference)?;
        let url = self.manifest_url(repository, reference);
        let accept = format!("{MEDIA_TYPE_IMAGE_MANIFEST}, {MEDIA_TYPE_IMAGE_INDEX}");
        let mut resp = self.idempotent("GET", &url, || {
            self.agent.get(&url).header("Accept", &accept).call()
        })?;
        if resp.status() != StatusCode::OK {
            return Err(registry_error("GET", &url, &mut resp));
        }
        let content_type = header(&resp, "content-type");
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_MANIFEST_SIZE)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => OciError::TooLarge {
                    url: url.clone(),
                    digest: format!("manifest {reference}"),
                    limit: MAX_MANIFEST_SIZE,
                },
                e => transport("GET", &url, e),
            })?;
        let digest = sha256_digest(&bytes);
        let expected = if by_digest {
            Some(reference.to_string())
        } else {
            header(&resp, "docker-content-digest")
        };
        if let Some(expected) = expected
            && expected != digest
        {
            return Err(OciError::DigestMismatch {
                url,
                expected,
                actual: digest,
            });
        }
        let media_type = content_type
            .map(|ct| ct.split(';').next().unwrap_or_default().trim().to_string())
            .filter(|ct| !ct.is_empty())
            .or_else(|| {
                let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
                Some(v.get("mediaType")?.as_str()?.to_string())
            })
            .ok_or_else(|| OciError::Protocol {
                method: "GET",
                url: url.clone(),
                reason: "the manifest has neither a Content-Type header nor a mediaType field"
                    .to_string(),
            })?;
        Ok((media_type, bytes, digest))
    }

    /// `GET /v2/<repo>/blobs/<digest>` (following redirects), at most `max_size` bytes,
    /// verified against `digest`.
    pub fn pull_blob(
        &self,
        repository: &str,
        digest: &str,
        max_size: u64,
    ) -> Result<Vec<u8>, OciError> {
        validate_repository(repository)?;
        validate_digest(digest)?;
        let url = self.blob_url(repository, digest);
        let mut resp = self.get_blob(&url)?;
        let too_large = || OciError::TooLarge {
            url: url.clone(),
            digest: digest.to_string(),
            limit: max_size,
        };
        if resp.body().content_length().is_some_and(|n| n > max_size) {
            return Err(too_large());
        }
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(max_size)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => too_large(),
                e => transport("GET", &url, e),
            })?;
        let actual = sha256_digest(&bytes);
        if actual != digest {
            return Err(OciError::DigestMismatch {
                url,
                expected: digest.to_string(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Streams a blob to `dest`: written to a temporary file next to it, verified while
    /// streaming, then renamed into place. Returns the blob's size.
    pub fn pull_blob_to(
        &self,
        repository: &str,
        digest: &str,
        dest: &Path,
    ) -> Result<u64, OciError> {
        validate_repository(repository)?;
        validate_digest(digest)?;
        let url = self.blob_url(repository, digest);
        let mut resp = self.get_blob(&url)?;

        let mut temp = TempFile::create_next_to(dest)?;
        let io_err = |action, path: &Path, source| OciError::Io {
            action,
            path: path.to_path_buf(),
            source,
        };
        let mut hasher = Sha256::new();
        let mut total: u64 = 0;
        let mut buf = vec![0u8; 64 * 1024];
        let mut reader = resp.body_mut().as_reader();
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(transport("GET", &url, ureq::Error::Io(e)));
                }
            };
            hasher.update(&buf[..n]);
            temp.file
                .write_all(&buf[..n])
                .map_err(|e| io_err("writing", &temp.path, e))?;
            total += n as u64;
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != digest {
            // `temp` is removed on drop.
            return Err(OciError::DigestMismatch {
                url,
                expected: digest.to_string(),
                actual,
            });
        }
        temp.file
            .sync_all()
            .map_err(|e| io_err("syncing", &temp.path, e))?;
        temp.persist(dest)?;
        Ok(total)
    }

    fn get_blob(&self, url: &str) -> Result<Response<Body>, OciError> {
        let mut resp = self.idempotent("GET", url, || self.agent.get(url).call())?;
        if resp.status() != StatusCode::OK {
            return Err(registry_error("GET", url, &mut resp));
        }
        Ok(resp)
    }
}

/// Appends `digest=<digest>` to an upload URL that may already have a query string.
fn upload_url(location: &str, digest: &str) -> String {
    let sep = if location.contains('?') {
        if location.ends_with('?') || location.ends_with('&') {
            ""
        } else {
            "&"
        }
    } else {
        "?"
    };
    format!("{location}{sep}digest={}", digest.replace(':', "%3A"))
}

fn header(resp: &Response<Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
}

fn is_retryable(e: &ureq::Error) -> bool {
    matches!(e, ureq::Error::Io(_) | ureq::Error::ConnectionFailed)
}

fn transport(method: &'static str, url: &str, e: ureq::Error) -> OciError {
    let hint = match &e {
        ureq::Error::Io(io) if io.kind() == io::ErrorKind::ConnectionRefused => {
            "; is the registry running and listening at that address?"
        }
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
            "; is the registry running and listening at that address?"
        }
        ureq::Error::Timeout(_) => "; the registry did not answer in time (retry, or check it)",
        ureq::Error::Tls(_) | ureq::Error::TlsRequired => {
            "; TLS is not supported yet: use a loopback registry or mirror over plain HTTP"
        }
        _ => "",
    };
    OciError::Transport {
        method,
        url: url.to_string(),
        hint,
        source: Box::new(e),
    }
}

/// Builds an [`OciError::Registry`] from an error response, reading its (JSON) body.
fn registry_error(method: &'static str, url: &str, resp: &mut Response<Body>) -> OciError {
    let status = resp.status().as_u16();
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
    OciError::Registry {
        method,
        url: url.to_string(),
        status,
        hint: error_hint(status, code.as_deref()),
        code,
        message,
    }
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
            " (the registry requires authentication, which wbuild does not support yet)"
        }
        (405, _) => " (the registry does not allow this operation; is it a read-only mirror?)",
        (429, _) => " (rate limited: retry later)",
        (500..=599, _) => " (registry-side failure: see the registry's logs, then retry)",
        _ => "",
    }
}

/// Hashes and counts what is read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// (bytes read, "sha256:<hex>" of them)
    fn finish(self) -> (u64, String) {
        (
            self.count,
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
        )
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// A temporary file next to its destination, removed on drop unless persisted.
struct TempFile {
    file: File,
    path: PathBuf,
    persisted: bool,
}

impl TempFile {
    fn create_next_to(dest: &Path) -> Result<TempFile, OciError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "blob".to_string());
        let mut attempt = 0;
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!(".{name}.{}.{n}.part", std::process::id()));
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => {
                    return Ok(TempFile {
                        file,
                        path,
                        persisted: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => {
                    attempt += 1;
                }
                Err(source) => {
                    return Err(OciError::Io {
                        action: "creating a temporary file",
                        path,
                        source,
                    });
                }
            }
        }
    }

    fn persist(mut self, dest: &Path) -> Result<(), OciError> {
        fs::rename(&self.path, dest).map_err(|source| OciError::Io {
            action: "renaming the downloaded blob to",
            path: dest.to_path_buf(),
            source,
        })?;
        self.persisted = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parse_err(s: &str) -> String {
        match Reference::parse(s) {
            Ok(r) => panic!("{s:?} parsed as {r:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn assert_err(s: &str, needles: &[&str]) {
        let msg = parse_err(s);
        assert!(
            msg.contains(&format!("{s:?}")),
            "error does not name the input: {msg}"
        );
        for needle in needles {
            assert!(
                msg.contains(needle),
                "error for {s:?} lacks {needle:?}: {msg}"
            );
        }
    }

    fn round_trip(s: &str) -> Reference {
        let r = Reference::parse(s).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.to_string(), s);
        assert_eq!(Reference::parse(&r.to_string()).unwrap(), r);
        r
    }

    #[test]
    fn parses_tag() {
        let r = round_trip("oci://localhost:5000/wbuild/toolchains/clang:18.1.8");
        assert_eq!(
            r,
            Reference {
                registry: "localhost:5000".into(),
                repository: "wbuild/toolchains/clang".into(),
                tag: Some("18.1.8".into()),
                digest: None,
            }
        );
        assert_eq!(r.manifest_ref(), Some("18.1.8"));
    }

    #[test]
    fn parses_digest_and_tag_plus_digest() {
        let r = round_trip(&format!("oci://127.0.0.1:5000/a/b@{D}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(D));
        assert_eq!(r.manifest_ref(), Some(D));

        let r = round_trip(&format!("oci://127.0.0.1/a:v1@{D}"));
        assert_eq!(r.registry, "127.0.0.1");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.manifest_ref(), Some(D), "digest wins over the tag");
    }

    #[test]
    fn parses_without_tag_or_digest() {
        let r = round_trip("oci://registry.example.com/wasi-tools");
        assert_eq!(r.registry, "registry.example.com");
        assert_eq!(r.repository, "wasi-tools");
        assert_eq!(r.tag, None);
        assert_eq!(r.digest, None);
        assert_eq!(r.manifest_ref(), None);
    }

    #[test]
    fn parses_ports_ipv6_and_nested_repositories() {
        let r = round_trip("oci://[::1]:5000/x/y/z/w:latest");
        assert_eq!(r.registry, "[::1]:5000");
        assert_eq!(r.repository, "x/y/z/w");
        round_trip("oci://[::1]/x");
        round_trip("oci://my-registry.local:65535/a.b/c_d/e__f/g--h/i-j:_Tag.1-x");
        let max_tag = format!("oci://h/r:{}", "a".repeat(128));
        round_trip(&max_tag);
        let s: Reference = "oci://h/r:t".parse().unwrap();
        assert_eq!(s.tag.as_deref(), Some("t"));
    }

    #[test]
    fn rejects_bad_schemes_and_hosts() {
        assert_err("localhost:5000/a:b", &["missing the \"oci://\" scheme"]);
        assert_err("https://localhost/a", &["unsupported scheme \"https\""]);
        assert_err("docker://localhost/a", &["unsupported scheme \"docker\""]);
        assert_err("oci:///repo:tag", &["missing the registry host"]);
        assert_err("oci://", &["missing the registry host and repository"]);
        assert_err("oci://localhost:5000", &["missing the repository"]);
        assert_err("oci://localhost:5000/", &["repository \"\"", "empty"]);
        assert_err("oci://local_host/a", &["not a valid host name"]);
        assert_err("oci://localhost:0/a", &["port \"0\""]);
        assert_err("oci://localhost:99999/a", &["port \"99999\""]);
        assert_err("oci://localhost:+5/a", &["port \"+5\""]);
        assert_err("oci://[::1/a", &["closing ']'"]);
        assert_err("oci://[zz]:5/a", &["not a valid IPv6 address"]);
    }

    #[test]
    fn rejects_bad_repositories() {
        assert_err(
            "oci://localhost/Wbuild/clang:1",
            &["repository \"Wbuild/clang\"", "lowercase"],
        );
        assert_err("oci://localhost/a//b", &["empty path component"]);
        assert_err("oci://localhost/a/:t", &["empty path component"]);
        assert_err("oci://localhost/-a", &["must start and end"]);
        assert_err("oci://localhost/a.", &["must start and end"]);
        assert_err("oci://localhost/a..b", &["separator \"..\""]);
        assert_err("oci://localhost/a___b", &["separator \"___\""]);
        assert_err("oci://localhost/a.-b", &["separator \".-\""]);
        assert_err("oci://localhost/a b", &["contains ' '"]);
        let long = format!("oci://localhost/{}", "a".repeat(256));
        assert_err(&long, &["more than the 255 allowed"]);
    }

    #[test]
    fn rejects_bad_tags_and_digests() {
        assert_err("oci://localhost/a:", &["tag \"\"", "empty"]);
        assert_err("oci://localhost/a:.x", &["must start with"]);
        assert_err("oci://localhost/a:x:y", &["contains ':'"]);
        assert_err(
            &format!("oci://h/r:{}", "a".repeat(129)),
            &["more than the 128 allowed"],
        );
        assert_err("oci://localhost/a@", &["digest \"\""]);
        assert_err(
            "oci://localhost/a@sha256:abc",
            &["has 3 hex digits", "expected 64"],
        );
        assert_err(
            &format!(
                "oci://localhost/a@{}",
                D.to_uppercase().replace("SHA256", "sha256")
            ),
            &["lowercase"],
        );
        assert_err(
            &format!("oci://localhost/a@{}", D.replace('0', "g")),
            &["'g'", "not a hex digit"],
        );
        assert_err(
            &format!("oci://localhost/a@sha512:{}", "0".repeat(128)),
            &["only sha256 digests are supported"],
        );
        assert_err(&format!("oci://localhost/a@{}", &D[7..]), &["sha256:<64"]);
    }

    #[test]
    fn digest_helper() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn client_requires_loopback() {
        for ok in [
            "localhost:5000",
            "127.0.0.1:1234",
            "127.8.9.10",
            "[::1]:5000",
            "LOCALHOST",
        ] {
            let c = Client::new(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(c.registry(), ok);
        }
        for remote in [
            "ghcr.io",
            "registry.example.com:5000",
            "10.0.0.1:5000",
            "[2001:db8::1]",
        ] {
            let e = Client::new(remote).unwrap_err();
            assert!(
                matches!(e, OciError::TlsUnsupported { .. }),
                "{remote}: {e:?}"
            );
            let msg = e.to_string();
            assert!(msg.contains(remote), "{msg}");
            assert!(
                msg.contains("TLS registries are not supported yet"),
                "{msg}"
            );
            assert!(msg.contains("loopback"), "{msg}");
        }
        let e = Client::new("http://localhost:5000")
            .unwrap_err()
            .to_string();
        assert!(e.contains("without a scheme"), "{e}");
        let e = Client::new("local_host").unwrap_err().to_string();
        assert!(e.contains("invalid registry \"local_host\""), "{e}");
    }

    #[test]
    fn upload_urls() {
        assert_eq!(
            upload_url("http://h/v2/r/blobs/uploads/u", D),
            format!(
                "http://h/v2/r/blobs/uploads/u?digest={}",
                D.replace(':', "%3A")
            )
        );
        assert_eq!(
            upload_url("http://h/v2/r/blobs/uploads/u?_state=abc", D),
            format!(
                "http://h/v2/r/blobs/uploads/u?_state=abc&digest={}",
                D.replace(':', "%3A")
            )
        );
        let c = Client::new("127.0.0.1:5000").unwrap();
        let req = "http://127.0.0.1:5000/v2/r/blobs/uploads/";
        assert_eq!(
            c.resolve_location(req, "/v2/r/blobs/uploads/u?x=1")
                .unwrap(),
            "http://127.0.0.1:5000/v2/r/blobs/uploads/u?x=1"
        );
        assert_eq!(
            c.resolve_location(req, "http://127.0.0.1:5001/up/u")
                .unwrap(),
            "http://127.0.0.1:5001/up/u"
        );
        assert_eq!(
            c.resolve_location(req, "//127.0.0.1:5001/up").unwrap(),
            "http://127.0.0.1:5001/up"
        );
        assert_eq!(
            c.resolve_location(req, "u?x=1").unwrap(),
            "http://127.0.0.1:5000/v2/r/blobs/uploads/u?x=1"
        );
        assert!(matches!(
            c.resolve_location(req, "https://cdn.example.com/u"),
            Err(OciError::TlsUnsupported { .. })
        ));
    }

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

    #[test]
    fn client_methods_validate_arguments() {
        let c = Client::new("127.0.0.1:1").unwrap();
        let e = c.blob_exists("Bad", D).unwrap_err().to_string();
        assert!(
            e.contains("invalid repository \"Bad\"") && e.contains("lowercase"),
            "{e}"
        );
        let e = c.pull_blob("ok", "sha256:xyz", 10).unwrap_err().to_string();
        assert!(e.contains("invalid digest \"sha256:xyz\""), "{e}");
        let e = c.pull_manifest("ok", "bad tag").unwrap_err().to_string();
        assert!(e.contains("invalid tag \"bad tag\""), "{e}");
        let e = c.push_blob("ok", D, b"hello").unwrap_err().to_string();
        assert!(e.contains(D) && e.contains(&sha256_digest(b"hello")), "{e}");
    }
}
