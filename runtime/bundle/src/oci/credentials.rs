//! Client options: TLS trust (the CA file) and registry credentials (environment, docker
//! config).

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ureq::tls::{Certificate, PemItem};

use super::error::OciError;

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
            Err(error) => {
                return Err(OciError::Io {
                    action: "reading the docker config",
                    path: path.to_path_buf(),
                    error,
                });
            }
        };
        docker_config_lookup(&bytes, registry)
            .map(|found| found.map(|(_, c)| c))
            .map_err(|error| OciError::DockerConfig {
                path: path.to_path_buf(),
                error,
            })
    }
}

/// How a [`Client`](super::Client) reaches its registry.
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
    pub(super) fn from_env_with_source(
        registry: &str,
    ) -> Result<(ClientOptions, Option<String>), OciError> {
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

/// Why a docker `config.json` cannot be used. Messages never quote the file's content
/// (it holds secrets).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DockerConfigError {
    #[error("not a valid docker config (JSON error at line {line} column {column})")]
    Json { line: usize, column: usize },
    #[error("auths.{0:?}.auth is not valid base64")]
    Base64(String),
    #[error("auths.{0:?}.auth does not decode to UTF-8 text")]
    Utf8(String),
    #[error("auths.{0:?}.auth does not decode to \"user:password\"")]
    NoColon(String),
}

/// Finds `registry`'s entry in a docker `config.json`: (its key, its credentials).
/// Error messages never quote the file's content.
fn docker_config_lookup(
    json: &[u8],
    registry: &str,
) -> Result<Option<(String, Credentials)>, DockerConfigError> {
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
    let config: Config = serde_json::from_slice(json).map_err(|e| DockerConfigError::Json {
        line: e.line(),
        column: e.column(),
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
            .map_err(|_| DockerConfigError::Base64(key.clone()))?;
        let decoded =
            String::from_utf8(decoded).map_err(|_| DockerConfigError::Utf8(key.clone()))?;
        let Some((username, password)) = decoded.split_once(':') else {
            return Err(DockerConfigError::NoColon(key.clone()));
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
pub(super) fn load_ca_file(path: &Path) -> Result<Vec<Certificate<'static>>, OciError> {
    let bytes = fs::read(path).map_err(|error| OciError::Io {
        action: "reading the CA certificates ($WBUILD_OCI_CA_FILE)",
        path: path.to_path_buf(),
        error,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Client;

    fn client(registry: &str, options: &ClientOptions) -> Client {
        Client::with_options(registry, options).unwrap_or_else(|e| panic!("{registry}: {e}"))
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
        let e = lookup("bad.example.com").unwrap_err().to_string();
        assert!(e.contains("user:password") && !e.contains("secret"), "{e}");
        let e = docker_config_lookup(br#"{"auths": {"x": "s3cret"}}"#, "x")
            .unwrap_err()
            .to_string();
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
}
