//! Publishing and fetching toolchain bundles as OCI artifacts.
//!
//! A small blocking client for the OCI Distribution Spec (v1.0/v1.1) HTTP API: blob
//! existence checks, monolithic blob uploads (from memory or streamed from a file),
//! manifest push and pull, and blob downloads verified against their sha256 digest.
//!
//! References look like `oci://host[:port]/repo/path[:tag][@sha256:<hex>]`.
//!
//! # Transport
//!
//! `oci://host/...` is reached over **HTTPS**, except loopback registries (`localhost`,
//! `127.0.0.0/8`, `[::1]`), which are reached over plain HTTP unless `WBUILD_OCI_TLS=1`
//! (or [`ClientOptions::force_tls`]). No other host can be reached over plain HTTP, and an
//! https registry is never left for http (not through an upload `Location`, a redirect or
//! a token realm).
//!
//! TLS is rustls (with the ring provider). Trusted roots: Mozilla's, compiled in (webpki
//! roots; the host's certificate store is not read), plus the PEM certificates of the file
//! named by `$WBUILD_OCI_CA_FILE` ([`ClientOptions::ca_file`]), for a registry with its own
//! CA.
//!
//! # Authentication
//!
//! Credentials ([`ClientOptions::from_env`]): `$WBUILD_OCI_USERNAME` +
//! `$WBUILD_OCI_PASSWORD`, or `$WBUILD_OCI_TOKEN` (a bearer token, sent as is); else the
//! registry's `auths` entry (`auth`: base64 of `user:password`) in
//! `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, as `docker login` writes it
//! (credential helpers are not run).
//!
//! Requests go out anonymous until the registry answers 401, then as Docker clients do:
//! - `WWW-Authenticate: Basic`: retried with the credentials, which are then sent with every
//!   request to the registry;
//! - `WWW-Authenticate: Bearer realm=...,service=...,scope=...`: a token is fetched with
//!   `GET <realm>?service=...&scope=...` (Basic credentials if any, else anonymous; pushes
//!   ask for `repository:<repo>:pull,push`), cached per scope for the client's lifetime
//!   (shared by its clones), and the request retried with `Authorization: Bearer`; a cached
//!   token the registry no longer accepts is replaced once.
//!
//! A 401 or 403 after that is an [`OciError::Unauthorized`] that names the registry and the
//! ways to give credentials. Authorization is sent only to the registry's own
//! scheme/host/port (upload locations there included) and to its token realm, never to
//! other hosts (blob storage redirects, ...). Passwords and tokens appear in no error and
//! no `Debug` output.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use ureq::config::RedirectAuthHeaders;
use ureq::http::{Response, StatusCode};
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig, TlsProvider};
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

    /// The client's configuration (environment, docker config, CA file) is unusable.
    #[error("{reason}")]
    Config { reason: String },

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
// Client options: TLS trust and credentials.
// ---------------------------------------------------------------------------------------

/// User name for registry authentication (with [`ENV_PASSWORD`]).
pub const ENV_USERNAME: &str = "WBUILD_OCI_USERNAME";
/// Password (or access token used as a password) for [`ENV_USERNAME`].
pub const ENV_PASSWORD: &str = "WBUILD_OCI_PASSWORD";
/// A registry bearer token, sent as is (instead of a user name and password).
pub const ENV_TOKEN: &str = "WBUILD_OCI_TOKEN";
/// A PEM file of CA certificates trusted besides the built-in roots.
pub const ENV_CA_FILE: &str = "WBUILD_OCI_CA_FILE";
/// `1` to use HTTPS for loopback registries too (`0` or unset: plain HTTP for them).
pub const ENV_TLS: &str = "WBUILD_OCI_TLS";

/// Largest token-endpoint answer read.
const MAX_TOKEN_RESPONSE: u64 = 1024 * 1024;

/// Registry credentials. Their `Debug` output never shows the password or the token.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A user name and password (or an access token used as a password): sent with HTTP
    /// Basic authentication to registries that ask for it, and to their token servers.
    Basic { username: String, password: String },
    /// A registry bearer token, sent as `Authorization: Bearer <token>` when the registry
    /// asks for a bearer token.
    Bearer(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

impl Credentials {
    /// The credentials for `registry` in a Docker `config.json` (`auths.<registry>.auth`,
    /// base64 `user:password`; or its `username` + `password`, or `registrytoken`). Keys
    /// may carry a scheme and path (`https://host/v1/`). `Ok(None)` when the file does not
    /// exist or has no usable entry for the registry (credential helpers are not run).
    pub fn from_docker_config(
        path: &Path,
        registry: &str,
    ) -> Result<Option<Credentials>, OciError> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(OciError::Io {
                    action: "reading the docker config",
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        docker_config_lookup(&bytes, registry)
            .map(|found| found.map(|(_, c)| c))
            .map_err(|reason| OciError::Config {
                reason: format!("docker config {}: {reason}", path.display()),
            })
    }
}

/// How a [`Client`] reaches its registry.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// A PEM file of CA certificates to trust besides the built-in (Mozilla) roots.
    pub ca_file: Option<PathBuf>,
    /// Credentials for registries (and token servers) that ask for authentication.
    pub credentials: Option<Credentials>,
    /// Use HTTPS for a loopback registry too (other registries always use HTTPS).
    pub force_tls: bool,
}

impl ClientOptions {
    /// Options from the environment: [`ENV_TLS`], [`ENV_CA_FILE`], and credentials from
    /// [`ENV_USERNAME`] + [`ENV_PASSWORD`] or [`ENV_TOKEN`], else from the docker config
    /// (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`).
    pub fn from_env(registry: &str) -> Result<ClientOptions, OciError> {
        Ok(Self::from_env_with_source(registry)?.0)
    }

    /// Also says where the credentials came from (for error messages).
    fn from_env_with_source(registry: &str) -> Result<(ClientOptions, Option<String>), OciError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let config_err = |reason: String| OciError::Config { reason };
        // Values are never echoed: some of these variables hold secrets.
        let force_tls = match var(ENV_TLS).as_deref() {
            None | Some("0" | "false" | "no") => false,
            Some("1" | "true" | "yes") => true,
            Some(_) => return Err(config_err(format!("${ENV_TLS} must be 1 or 0"))),
        };
        let ca_file = var(ENV_CA_FILE).map(PathBuf::from);
        let (credentials, source) = match (var(ENV_USERNAME), var(ENV_PASSWORD), var(ENV_TOKEN)) {
            (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
                return Err(config_err(format!(
                    "set either ${ENV_USERNAME} and ${ENV_PASSWORD}, or ${ENV_TOKEN}, not both"
                )));
            }
            (Some(username), Some(password), None) => (
                Some(Credentials::Basic { username, password }),
                Some(format!("from ${ENV_USERNAME} and ${ENV_PASSWORD}")),
            ),
            (Some(_), None, None) => {
                return Err(config_err(format!(
                    "${ENV_USERNAME} is set but ${ENV_PASSWORD} is not"
                )));
            }
            (None, Some(_), None) => {
                return Err(config_err(format!(
                    "${ENV_PASSWORD} is set but ${ENV_USERNAME} is not"
                )));
            }
            (None, None, Some(token)) => (
                Some(Credentials::Bearer(token)),
                Some(format!("from ${ENV_TOKEN}")),
            ),
            (None, None, None) => match docker_config_path() {
                None => (None, None),
                Some(path) => {
                    let creds = Credentials::from_docker_config(&path, registry)?;
                    let source = creds
                        .as_ref()
                        .map(|_| format!("from auths.\"{registry}\" in {}", path.display()));
                    (creds, source)
                }
            },
        };
        Ok((
            ClientOptions {
                ca_file,
                credentials,
                force_tls,
            },
            source,
        ))
    }
}

/// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// Finds `registry`'s entry in a docker `config.json`: (its key, its credentials).
/// Error messages never quote the file's content.
fn docker_config_lookup(
    json: &[u8],
    registry: &str,
) -> Result<Option<(String, Credentials)>, String> {
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        auths: std::collections::BTreeMap<String, AuthEntry>,
    }
    #[derive(serde::Deserialize)]
    struct AuthEntry {
        #[serde(default)]
        auth: Option<String>,
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        password: Option<String>,
        #[serde(default)]
        registrytoken: Option<String>,
    }
    let config: Config = serde_json::from_slice(json).map_err(|e| {
        format!(
            "not a valid docker config (JSON error at line {} column {})",
            e.line(),
            e.column()
        )
    })?;
    /// `https://host/v1/` -> `host`.
    fn host_of_key(key: &str) -> &str {
        let k = key
            .strip_prefix("https://")
            .or_else(|| key.strip_prefix("http://"))
            .unwrap_or(key);
        k.split('/').next().unwrap_or(k)
    }
    const DOCKER_HUB: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];
    let is_hub = |h: &str| DOCKER_HUB.iter().any(|d| d.eq_ignore_ascii_case(h));
    let entry = config
        .auths
        .iter()
        .find(|(k, _)| k.as_str() == registry)
        .or_else(|| {
            config.auths.iter().find(|(k, _)| {
                let host = host_of_key(k);
                host.eq_ignore_ascii_case(registry) || (is_hub(host) && is_hub(registry))
            })
        });
    let Some((key, entry)) = entry else {
        return Ok(None);
    };
    let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    if let Some(auth) = non_empty(&entry.auth) {
        use base64::Engine as _;
        let auth = auth.trim();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(auth))
            .map_err(|_| format!("auths.{key:?}.auth is not valid base64"))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| format!("auths.{key:?}.auth does not decode to UTF-8 text"))?;
        let Some((username, password)) = decoded.split_once(':') else {
            return Err(format!(
                "auths.{key:?}.auth does not decode to \"user:password\""
            ));
        };
        return Ok(Some((
            key.clone(),
            Credentials::Basic {
                username: username.to_string(),
                password: password.to_string(),
            },
        )));
    }
    if let (Some(username), Some(password)) =
        (non_empty(&entry.username), non_empty(&entry.password))
    {
        return Ok(Some((
            key.clone(),
            Credentials::Basic { username, password },
        )));
    }
    if let Some(token) = non_empty(&entry.registrytoken) {
        return Ok(Some((key.clone(), Credentials::Bearer(token))));
    }
    Ok(None)
}

/// Reads the PEM certificates of a CA file.
fn load_ca_file(path: &Path) -> Result<Vec<Certificate<'static>>, OciError> {
    let bytes = fs::read(path).map_err(|source| OciError::Io {
        action: "reading the CA certificates ($WBUILD_OCI_CA_FILE)",
        path: path.to_path_buf(),
        source,
    })?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&bytes) {
        match item {
            Ok(PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => {
                return Err(OciError::Config {
                    reason: format!(
                        "CA file {} (${ENV_CA_FILE}): not valid PEM: {e}",
                        path.display()
                    ),
                });
            }
        }
    }
    if certs.is_empty() {
        return Err(OciError::Config {
            reason: format!(
                "CA file {} (${ENV_CA_FILE}) has no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ),
        });
    }
    Ok(certs)
}

// ---------------------------------------------------------------------------------------
// Client.
// ---------------------------------------------------------------------------------------

/// A blocking client for one registry.
#[derive(Clone)]
pub struct Client {
    registry: String,
    /// `http[s]://host[:port]`, without a trailing slash.
    base: String,
    agent: ureq::Agent,
    credentials: Option<Credentials>,
    /// Where the credentials came from (`from $WBUILD_OCI_TOKEN`, ...), for errors.
    credentials_source: Option<String>,
    /// What the registry asked for, and bearer tokens: shared by clones.
    auth: Arc<Mutex<AuthState>>,
}

#[derive(Default)]
struct AuthState {
    /// The scheme the registry asked for (sent preemptively once known).
    scheme: Option<AuthScheme>,
    /// Bearer tokens by scope (`""` for requests without a repository).
    tokens: HashMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AuthScheme {
    Basic,
    Bearer,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("registry", &self.registry)
            .field("base", &self.base)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

/// The scope a request on `repository` needs.
fn repo_scope(repository: &str, push: bool) -> String {
    let actions = if push { "pull,push" } else { "pull" };
    format!("repository:{repository}:{actions}")
}

fn with_auth<B>(rb: ureq::RequestBuilder<B>, auth: Option<&str>) -> ureq::RequestBuilder<B> {
    match auth {
        Some(value) => rb.header("Authorization", value),
        None => rb,
    }
}

fn basic_header(username: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
    )
}

fn check_registry_arg(registry: &str) -> Result<Host<'_>, OciError> {
    if registry.contains("://") {
        return Err(invalid(
            "registry",
            registry,
            "give host[:port] without a scheme (e.g. 127.0.0.1:5000)".to_string(),
        ));
    }
    let (host, _port) = parse_registry(registry).map_err(|r| invalid("registry", registry, r))?;
    Ok(host)
}

impl Client {
    /// A client configured from the environment (see [`ClientOptions::from_env`]):
    /// HTTPS, except plain HTTP for loopback registries unless `WBUILD_OCI_TLS=1`.
    pub fn new(registry: &str) -> Result<Client, OciError> {
        check_registry_arg(registry)?;
        let (options, source) = ClientOptions::from_env_with_source(registry)?;
        let mut client = Client::with_options(registry, &options)?;
        client.credentials_source = source;
        Ok(client)
    }

    /// A client with explicit options (the environment is not read).
    pub fn with_options(registry: &str, options: &ClientOptions) -> Result<Client, OciError> {
        let host = check_registry_arg(registry)?;
        let tls = options.force_tls || !host.is_loopback();
        let root_certs = match &options.ca_file {
            None => RootCerts::WebPki,
            Some(path) => {
                let mut certs: Vec<Certificate<'static>> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
                    .iter()
                    .map(|c| Certificate::from_der(c.as_ref()))
                    .collect();
                certs.extend(load_ca_file(path)?);
                RootCerts::from(certs)
            }
        };
        let tls_config = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(root_certs)
            .build();
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // An https registry never falls back to http, not even through a redirect.
            .https_only(tls)
            .max_redirects(5)
            .redirect_auth_headers(RedirectAuthHeaders::SameHost)
            .tls_config(tls_config)
            .user_agent(concat!("wbuild/", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(IO_TIMEOUT))
            .timeout_per_read(Some(IO_TIMEOUT))
            .timeout_per_write(Some(IO_TIMEOUT))
            .timeout_per_call(Some(REQUEST_TIMEOUT))
            .build();
        Ok(Client {
            registry: registry.to_string(),
            base: format!("{}://{registry}", if tls { "https" } else { "http" }),
            agent: config.new_agent(),
            credentials: options.credentials.clone(),
            credentials_source: None,
            auth: Arc::default(),
        })
    }

    /// The registry this client talks to (`host[:port]`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// `http://host[:port]` or `https://host[:port]`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET /v2/`: checks that the registry speaks the distribution API (authenticating
    /// if it asks).
    pub fn ping(&self) -> Result<(), OciError> {
        let url = format!("{}/v2/", self.base);
        let mut resp = self.send("GET", &url, None, true, |auth| {
            with_auth(self.agent.get(&url), auth).call()
        })?;
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

    fn state(&self) -> std::sync::MutexGuard<'_, AuthState> {
        self.auth.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `url` is on the registry itself (credentials go nowhere else).
    fn same_origin(&self, url: &str) -> bool {
        let n = self.base.len();
        url.get(..n)
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(&self.base))
            && matches!(url.as_bytes().get(n), None | Some(b'/' | b'?'))
    }

    /// The `Authorization` value for a request, once the registry has asked for one.
    fn authorization(&self, url: &str, scope: Option<&str>) -> Option<String> {
        if !self.same_origin(url) {
            return None;
        }
        let state = self.state();
        match (state.scheme?, &self.credentials) {
            (AuthScheme::Basic, Some(Credentials::Basic { username, password })) => {
                Some(basic_header(username, password))
            }
            (AuthScheme::Basic, _) => None,
            (AuthScheme::Bearer, Some(Credentials::Bearer(token))) => {
                Some(format!("Bearer {token}"))
            }
            (AuthScheme::Bearer, _) => state
                .tokens
                .get(scope.unwrap_or_default())
                .map(|t| format!("Bearer {t}")),
        }
    }

    /// Sends a request (built by `send` with the `Authorization` value to use), answering
    /// a 401 challenge once: Basic with the credentials, Bearer with a token from the
    /// realm. A connection-level failure is retried once when `idempotent`. A final 401
    /// or 403 is an [`OciError::Unauthorized`].
    fn send(
        &self,
        method: &'static str,
        url: &str,
        scope: Option<&str>,
        idempotent: bool,
        mut send: impl FnMut(Option<&str>) -> Result<Response<Body>, ureq::Error>,
    ) -> Result<Response<Body>, OciError> {
        let mut reauthenticated = false;
        loop {
            let auth = self.authorization(url, scope);
            let mut resp = match send(auth.as_deref()) {
                Ok(r) => r,
                Err(e) if idempotent && is_retryable(&e) => {
                    std::thread::sleep(Duration::from_millis(200));
                    send(auth.as_deref()).map_err(|e| transport(method, url, e))?
                }
                Err(e) => return Err(transport(method, url, e)),
            };
            let status = resp.status().as_u16();
            if status == 401
                && !reauthenticated
                && self.same_origin(url)
                && self.authenticate(&resp, scope, auth.as_deref())?
            {
                reauthenticated = true;
                continue;
            }
            if status == 401 || status == 403 {
                return Err(self.unauthorized(method, url, &mut resp, scope));
            }
            return Ok(resp);
        }
    }

    /// Answers a 401's `WWW-Authenticate` challenge: true when the request is worth
    /// retrying with the (new) authorization.
    fn authenticate(
        &self,
        resp: &Response<Body>,
        scope: Option<&str>,
        sent: Option<&str>,
    ) -> Result<bool, OciError> {
        let challenges: Vec<Challenge> = resp
            .headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(parse_challenges)
            .collect();
        if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            if let Some(Credentials::Bearer(_)) = &self.credentials {
                // A static token: useful only if it was not sent yet.
                if sent.is_some() {
                    return Ok(false);
                }
                self.state().scheme = Some(AuthScheme::Bearer);
                return Ok(true);
            }
            let Some(realm) = bearer.param("realm") else {
                return Ok(false);
            };
            // Our scope first (pushes need pull,push), then what the registry names.
            let mut scopes: Vec<&str> = scope.into_iter().collect();
            for s in bearer.param("scope").unwrap_or_default().split_whitespace() {
                if !scopes.contains(&s) {
                    scopes.push(s);
                }
            }
            let token = self.fetch_token(realm, bearer.param("service"), &scopes)?;
            let mut state = self.state();
            state.scheme = Some(AuthScheme::Bearer);
            state
                .tokens
                .insert(scope.unwrap_or_default().to_string(), token);
            return Ok(true);
        }
        if challenges.iter().any(|c| c.scheme == "basic")
            && let Some(Credentials::Basic { .. }) = &self.credentials
            && !sent.is_some_and(|s| s.starts_with("Basic "))
        {
            self.state().scheme = Some(AuthScheme::Basic);
            return Ok(true);
        }
        Ok(false)
    }

    /// `GET <realm>?service=...&scope=...` (Basic credentials if any, else anonymous);
    /// returns the `token` (or `access_token`) of the JSON answer.
    fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[&str],
    ) -> Result<String, OciError> {
        let secure = realm
            .get(..8)
            .is_some_and(|p| p.eq_ignore_ascii_case("https://"));
        let loopback_http = !self.base.starts_with("https://")
            && realm
                .get(..7)
                .is_some_and(|p| p.eq_ignore_ascii_case("http://"))
            && parse_registry(realm[7..].split(['/', '?']).next().unwrap_or_default())
                .is_ok_and(|(host, _)| host.is_loopback());
        if !(secure || loopback_http) {
            return Err(OciError::Protocol {
                method: "GET",
                url: realm.to_string(),
                reason: "the registry's token realm is not an https URL (plain http is \
                         accepted only for a loopback token server of a loopback registry)"
                    .to_string(),
            });
        }
        let mut url = realm.to_string();
        let mut sep = if realm.contains('?') { '&' } else { '?' };
        for (name, value) in service
            .map(|s| ("service", s))
            .into_iter()
            .chain(scopes.iter().map(|s| ("scope", *s)))
        {
            url.push(sep);
            url.push_str(name);
            url.push('=');
            url.push_str(&query_encode(value));
            sep = '&';
        }
        let auth = match &self.credentials {
            Some(Credentials::Basic { username, password }) => {
                Some(basic_header(username, password))
            }
            _ => None,
        };
        let send = || with_auth(self.agent.get(&url), auth.as_deref()).call();
        let mut resp = match send() {
            Ok(r) => r,
            Err(e) if is_retryable(&e) => {
                std::thread::sleep(Duration::from_millis(200));
                send().map_err(|e| transport("GET", &url, e))?
            }
            Err(e) => return Err(transport("GET", &url, e)),
        };
        let status = resp.status().as_u16();
        if status == 401 || status == 403 {
            let scope = scopes.first().copied();
            return Err(self.unauthorized("GET", &url, &mut resp, scope));
        }
        if !resp.status().is_success() {
            return Err(registry_error("GET", &url, &mut resp));
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_TOKEN_RESPONSE)
            .read_to_vec()
            .map_err(|e| transport("GET", &url, e))?;
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
        }
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|_| OciError::Protocol {
                method: "GET",
                url: url.clone(),
                reason: "the token server's answer is not the expected JSON object".to_string(),
            })?;
        parsed
            .token
            .filter(|t| !t.is_empty())
            .or(parsed.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| OciError::Protocol {
                method: "GET",
                url,
                reason: "the token server's answer has no \"token\" or \"access_token\""
                    .to_string(),
            })
    }

    /// The error for a final 401/403: names the registry and where credentials come from.
    fn unauthorized(
        &self,
        method: &'static str,
        url: &str,
        resp: &mut Response<Body>,
        scope: Option<&str>,
    ) -> OciError {
        let status = resp.status().as_u16();
        let (_, message) = error_details(method, resp);
        let registry = &self.registry;
        let access = match scope {
            Some(s) if s.ends_with("push") => "push",
            _ => "pull",
        };
        let how = format!(
            "set {ENV_USERNAME} and {ENV_PASSWORD} (or {ENV_TOKEN} for a bearer token), or \
             add auths.\"{registry}\".auth (base64 of user:password) to \
             $DOCKER_CONFIG/config.json or ~/.docker/config.json (e.g. with `docker login \
             {registry}`)"
        );
        let advice = match &self.credentials {
            None => format!("no credentials are set for {registry}: {how}"),
            Some(creds) => {
                let source = self
                    .credentials_source
                    .as_deref()
                    .unwrap_or("given to the client");
                let (who, plural) = match creds {
                    Credentials::Basic { username, .. } => (
                        format!("the credentials of user {username:?} ({source})"),
                        true,
                    ),
                    Credentials::Bearer(_) => (format!("the bearer token ({source})"), false),
                };
                if status == 403 {
                    let verb = if plural { "do" } else { "does" };
                    format!(
                        "{who} {verb} not grant {access} access to this repository; to use \
                         other credentials, {how}"
                    )
                } else {
                    let verb = if plural { "were" } else { "was" };
                    format!("{who} {verb} not accepted; check them, or {how}")
                }
            }
        };
        OciError::Unauthorized {
            method,
            url: url.to_string(),
            registry: registry.clone(),
            status,
            message,
            advice,
        }
    }

    /// `HEAD /v2/<repo>/blobs/<digest>`.
    pub fn blob_exists(&self, repository: &str, digest: &str) -> Result<bool, OciError> {
        validate_repository(repository)?;
        validate_digest(digest)?;
        self.blob_exists_in_scope(repository, digest, &repo_scope(repository, false))
    }

    fn blob_exists_in_scope(
        &self,
        repository: &str,
        digest: &str,
        scope: &str,
    ) -> Result<bool, OciError> {
        let url = self.blob_url(repository, digest);
        let mut resp = self.send("HEAD", &url, Some(scope), true, |auth| {
            with_auth(self.agent.head(&url), auth).call()
        })?;
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
        let scope = repo_scope(repository, true);
        if self.blob_exists_in_scope(repository, digest, &scope)? {
            return Ok(false);
        }
        let location = self.start_upload(repository, &scope)?;
        let url = upload_url(&location, digest);
        let result = self.send("PUT", &url, Some(&scope), false, |auth| {
            with_auth(self.agent.put(&url), auth)
                .header("Content-Type", "application/octet-stream")
                .send(bytes)
        });
        self.finish_upload(&location, &url, digest, &scope, result)?;
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
        let scope = repo_scope(repository, true);
        if self.blob_exists_in_scope(repository, digest, &scope)? {
            return Ok(false);
        }
        let location = self.start_upload(repository, &scope)?;
        let url = upload_url(&location, digest);
        // (bytes sent, their digest) of the last attempt; a retry after an authentication
        // challenge reads the file again from the start.
        let mut sent: Option<(u64, String)> = None;
        let mut file = Some(file);
        let result = self.send("PUT", &url, Some(&scope), false, |auth| {
            let f = match file.take() {
                Some(f) => f,
                None => File::open(path).map_err(ureq::Error::Io)?,
            };
            let mut reader = HashingReader::new(f.take(size));
            let r = with_auth(self.agent.put(&url), auth)
                .header("Content-Type", "application/octet-stream")
                .header("Content-Length", size.to_string())
                .send(SendBody::from_reader(&mut reader));
            sent = Some(reader.finish());
            r
        });
        if result.is_ok()
            && let Some((count, actual)) = sent
            && count == size
            && actual != digest
        {
            self.cancel_upload(&location, &scope);
            return Err(OciError::ContentMismatch {
                what: format!("file {}", path.display()),
                digest: digest.to_string(),
                actual,
            });
        }
        self.finish_upload(&location, &url, digest, &scope, result)?;
        Ok(true)
    }

    /// `POST /v2/<repo>/blobs/uploads/`: returns the absolute upload URL.
    fn start_upload(&self, repository: &str, scope: &str) -> Result<String, OciError> {
        let url = format!("{}/v2/{repository}/blobs/uploads/", self.base);
        let mut resp = self.send("POST", &url, Some(scope), false, |auth| {
            with_auth(self.agent.post(&url), auth).send_empty()
        })?;
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
    /// absolute-path or relative to the request URL). An https registry's uploads never
    /// go to a plain http URL.
    fn resolve_location(&self, request_url: &str, location: &str) -> Result<String, OciError> {
        let tls = self.base.starts_with("https://");
        let has_scheme = |scheme: &str| {
            location
                .get(..scheme.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(scheme))
        };
        if has_scheme("https://") {
            return Ok(location.to_string());
        }
        if has_scheme("http://") {
            if tls {
                return Err(OciError::Protocol {
                    method: "POST",
                    url: request_url.to_string(),
                    reason: format!(
                        "the upload Location {location:?} is plain http, but the registry is \
                         reached over https: refusing to send the blob unencrypted (check the \
                         registry's external URL / proxy headers)"
                    ),
                });
            }
            return Ok(location.to_string());
        }
        if let Some(rest) = location.strip_prefix("//") {
            let scheme = if tls { "https" } else { "http" };
            return Ok(format!("{scheme}://{rest}"));
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
        scope: &str,
        result: Result<Response<Body>, OciError>,
    ) -> Result<(), OciError> {
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => {
                self.cancel_upload(location, scope);
                return Err(e);
            }
        };
        if !resp.status().is_success() {
            let err = registry_error("PUT", url, &mut resp);
            self.cancel_upload(location, scope);
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

    fn cancel_upload(&self, location: &str, scope: &str) {
        let auth = self.authorization(location, Some(scope));
        let _ = with_auth(self.agent.delete(location), auth.as_deref()).call();
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
        let scope = repo_scope(repository, true);
        let mut resp = self.send("PUT", &url, Some(&scope), false, |auth| {
            with_auth(self.agent.put(&url), auth)
                .header("Content-Type", media_type)
                .send(bytes)
        })?;
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
        let scope = repo_scope(repository, false);
        let mut resp = self.send("GET", &url, Some(&scope), true, |auth| {
            with_auth(self.agent.get(&url), auth)
                .header("Accept", &accept)
                .call()
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
        let mut resp = self.get_blob(repository, &url)?;
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
        let mut resp = self.get_blob(repository, &url)?;

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

    fn get_blob(&self, repository: &str, url: &str) -> Result<Response<Body>, OciError> {
        let scope = repo_scope(repository, false);
        let mut resp = self.send("GET", url, Some(&scope), true, |auth| {
            with_auth(self.agent.get(url), auth).call()
        })?;
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
    match e {
        // rustls reports TLS failures as InvalidData I/O errors: retrying does not help.
        ureq::Error::Io(io) => io.kind() != io::ErrorKind::InvalidData,
        ureq::Error::ConnectionFailed => true,
        _ => false,
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

fn transport(method: &'static str, url: &str, e: ureq::Error) -> OciError {
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
        source: Box::new(e),
    }
}

/// Builds an [`OciError::Registry`] from an error response, reading its (JSON) body.
fn registry_error(method: &'static str, url: &str, resp: &mut Response<Body>) -> OciError {
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
fn error_details(method: &'static str, resp: &mut Response<Body>) -> (Option<String>, String) {
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

/// One challenge of a `WWW-Authenticate` header: scheme (lowercase) and parameters.
#[derive(Debug, PartialEq, Eq)]
struct Challenge {
    scheme: String,
    params: Vec<(String, String)>,
}

impl Challenge {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `Bearer realm="https://auth/token",service="registry",scope="repository:r:pull"`
/// (several challenges may share one header: `Basic realm="x", Bearer realm="y"`).
fn parse_challenges(header: &str) -> Vec<Challenge> {
    let s = header.as_bytes();
    let sep = |b: u8| b == b',' || b.is_ascii_whitespace();
    let mut out: Vec<Challenge> = Vec::new();
    let mut i = 0;
    while i < s.len() {
        while i < s.len() && sep(s[i]) {
            i += 1;
        }
        let start = i;
        while i < s.len() && !sep(s[i]) && s[i] != b'=' {
            i += 1;
        }
        if start == i {
            i += 1; // a stray '='
            continue;
        }
        let token = &header[start..i];
        let mut j = i;
        while j < s.len() && s[j] == b' ' {
            j += 1;
        }
        if j < s.len() && s[j] == b'=' {
            j += 1;
            while j < s.len() && s[j] == b' ' {
                j += 1;
            }
            let value = if j < s.len() && s[j] == b'"' {
                j += 1;
                let mut v = Vec::new();
                while j < s.len() && s[j] != b'"' {
                    if s[j] == b'\\' && j + 1 < s.len() {
                        j += 1;
                    }
                    v.push(s[j]);
                    j += 1;
                }
                j += 1; // the closing quote
                String::from_utf8_lossy(&v).into_owned()
            } else {
                let st = j;
                while j < s.len() && !sep(s[j]) {
                    j += 1;
                }
                header[st..j].to_string()
            };
            if let Some(c) = out.last_mut() {
                c.params.push((token.to_ascii_lowercase(), value));
            }
        } else {
            out.push(Challenge {
                scheme: token.to_ascii_lowercase(),
                params: Vec::new(),
            });
        }
        i = j;
    }
    out
}

/// Percent-encodes a query parameter value (everything but RFC 3986 unreserved bytes).
fn query_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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

    fn client(registry: &str, options: &ClientOptions) -> Client {
        Client::with_options(registry, options).unwrap_or_else(|e| panic!("{registry}: {e}"))
    }

    #[test]
    fn https_except_loopback() {
        let plain = ClientOptions::default();
        let tls = ClientOptions {
            force_tls: true,
            ..ClientOptions::default()
        };
        for ok in [
            "localhost:5000",
            "127.0.0.1:1234",
            "127.8.9.10",
            "[::1]:5000",
            "LOCALHOST",
        ] {
            let c = client(ok, &plain);
            assert_eq!(c.registry(), ok);
            assert_eq!(c.base_url(), format!("http://{ok}"));
            assert_eq!(client(ok, &tls).base_url(), format!("https://{ok}"));
        }
        for remote in [
            "ghcr.io",
            "registry.example.com:5000",
            "10.0.0.1:5000",
            "[2001:db8::1]",
        ] {
            assert_eq!(
                client(remote, &plain).base_url(),
                format!("https://{remote}")
            );
            assert_eq!(client(remote, &tls).base_url(), format!("https://{remote}"));
        }
        let e = Client::with_options("http://localhost:5000", &plain)
            .unwrap_err()
            .to_string();
        assert!(e.contains("without a scheme"), "{e}");
        let e = Client::new("local_host").unwrap_err().to_string();
        assert!(e.contains("invalid registry \"local_host\""), "{e}");
    }

    #[test]
    fn ca_file_errors() {
        let dir = tempfile::tempdir().unwrap();
        let options = |path: &Path| ClientOptions {
            ca_file: Some(path.to_path_buf()),
            ..ClientOptions::default()
        };
        let missing = dir.path().join("missing.pem");
        let e = Client::with_options("ghcr.io", &options(&missing))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing.pem") && e.contains("WBUILD_OCI_CA_FILE"),
            "{e}"
        );
        let empty = dir.path().join("empty.pem");
        fs::write(&empty, "no certificates here\n").unwrap();
        let e = Client::with_options("ghcr.io", &options(&empty))
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no PEM certificate"), "{e}");
    }

    #[test]
    fn credentials_are_never_shown() {
        let basic = Credentials::Basic {
            username: "alice".into(),
            password: "hunter2".into(),
        };
        let bearer = Credentials::Bearer("tok-secret".into());
        let shown = format!("{basic:?} {bearer:?}");
        assert!(shown.contains("alice"), "{shown}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("tok-secret"),
            "{shown}"
        );
        let c = client(
            "ghcr.io",
            &ClientOptions {
                credentials: Some(basic),
                ..ClientOptions::default()
            },
        );
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn docker_config_entries() {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let config = format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{hub}"}},
                "https://ghcr.io": {{"auth": "{gh}"}},
                "registry.example.com:5000": {{"auth": "{ex}"}},
                "tok.example.com": {{"registrytoken": "t0k"}},
                "split.example.com": {{"username": "u", "password": "p"}},
                "helper.example.com": {{}},
                "bad.example.com": {{"auth": "{bad}"}}
            }}, "credsStore": "desktop"}}"#,
            hub = b64("hubuser:hubpass"),
            gh = b64("ghuser:gh:pass"),
            ex = b64("exuser:expass"),
            bad = b64("no-colon-secret"),
        );
        let lookup = |registry: &str| docker_config_lookup(config.as_bytes(), registry);
        let basic = |u: &str, p: &str| Credentials::Basic {
            username: u.into(),
            password: p.into(),
        };
        assert_eq!(
            lookup("ghcr.io").unwrap(),
            Some(("https://ghcr.io".to_string(), basic("ghuser", "gh:pass")))
        );
        assert_eq!(
            lookup("registry.example.com:5000").unwrap().unwrap().1,
            basic("exuser", "expass")
        );
        assert_eq!(
            lookup("registry.example.com").unwrap(),
            None,
            "the port is part of the key"
        );
        assert_eq!(
            lookup("registry-1.docker.io").unwrap().unwrap().1,
            basic("hubuser", "hubpass")
        );
        assert_eq!(
            lookup("tok.example.com").unwrap().unwrap().1,
            Credentials::Bearer("t0k".into())
        );
        assert_eq!(
            lookup("split.example.com").unwrap().unwrap().1,
            basic("u", "p")
        );
        assert_eq!(lookup("helper.example.com").unwrap(), None);
        assert_eq!(lookup("other.example.com").unwrap(), None);
        let e = lookup("bad.example.com").unwrap_err();
        assert!(e.contains("user:password") && !e.contains("secret"), "{e}");
        let e = docker_config_lookup(br#"{"auths": {"x": "s3cret"}}"#, "x").unwrap_err();
        assert!(e.contains("line 1") && !e.contains("s3cret"), "{e}");
        assert_eq!(docker_config_lookup(b"{}", "x").unwrap(), None);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        assert_eq!(
            Credentials::from_docker_config(&path, "ghcr.io").unwrap(),
            None
        );
        fs::write(&path, &config).unwrap();
        assert_eq!(
            Credentials::from_docker_config(&path, "ghcr.io").unwrap(),
            Some(basic("ghuser", "gh:pass"))
        );
    }

    #[test]
    fn www_authenticate_challenges() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.example.com/token"));
        assert_eq!(c[0].param("Service"), Some("registry.example.com"));
        assert_eq!(c[0].param("scope"), Some("repository:a/b:pull,push"));
        assert_eq!(c[0].param("error"), None);

        let c = parse_challenges(
            r#"Basic realm="Registry \"x\"", Bearer realm=http://h/t , error=insufficient_scope"#,
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("realm"), Some("Registry \"x\""));
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(c[1].param("realm"), Some("http://h/t"));
        assert_eq!(c[1].param("error"), Some("insufficient_scope"));
        assert!(parse_challenges("").is_empty());
        assert_eq!(parse_challenges("Basic")[0].scheme, "basic");

        assert_eq!(
            query_encode("repository:a/b:pull,push x"),
            "repository%3Aa%2Fb%3Apull%2Cpush%20x"
        );
        assert_eq!(query_encode("reg.example-1_~"), "reg.example-1_~");
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
        let c = client("127.0.0.1:5000", &ClientOptions::default());
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
        assert_eq!(
            c.resolve_location(req, "https://cdn.example.com/u")
                .unwrap(),
            "https://cdn.example.com/u"
        );
        assert!(c.same_origin("http://127.0.0.1:5000/v2/"));
        assert!(!c.same_origin("http://127.0.0.1:50000/v2/"));
        assert!(!c.same_origin("http://127.0.0.1:5001/up"));

        // An https registry: never downgraded to http.
        let c = client("registry.example.com", &ClientOptions::default());
        let req = "https://registry.example.com/v2/r/blobs/uploads/";
        assert_eq!(
            c.resolve_location(req, "/v2/r/blobs/uploads/u").unwrap(),
            "https://registry.example.com/v2/r/blobs/uploads/u"
        );
        assert_eq!(
            c.resolve_location(req, "//storage.example.com/u").unwrap(),
            "https://storage.example.com/u"
        );
        let e = c
            .resolve_location(req, "http://registry.example.com/v2/r/blobs/uploads/u")
            .unwrap_err();
        assert!(matches!(e, OciError::Protocol { .. }), "{e:?}");
        assert!(e.to_string().contains("plain http"), "{e}");
        assert!(c.same_origin("https://REGISTRY.example.com/v2/r?x"));
        assert!(!c.same_origin("https://registry.example.com.evil/v2/"));
        assert!(!c.same_origin("http://registry.example.com/v2/"));
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
        let c = client("127.0.0.1:1", &ClientOptions::default());
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
