//! The workspace root (`wbuild.toml`) and its configuration.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use crate::GraphError;

/// Name of the file that marks the workspace root.
pub const WORKSPACE_FILE: &str = "wbuild.toml";
/// Name of the Starlark file that makes a directory a package.
pub const BUILD_FILE: &str = "WBUILD";
/// Directory (at the workspace root) where outputs are materialised; never part of a package.
pub const OUT_DIR: &str = "wbuild-out";

/// A workspace: the directory holding `wbuild.toml`, and that file's settings.
#[derive(Clone, Debug)]
pub struct Workspace {
    /// Absolute, canonical path of the workspace root.
    pub root: PathBuf,
    pub config: Config,
    /// Pinned toolchains, installed and verified (set by the caller after resolving
    /// `[toolchains]`): their files appear at `.wbuild/toolchains/<name>/<path>` and are
    /// referenced from build files as `@<name>//<path>`.
    pub externals: BTreeMap<String, External>,
}

/// Workspace paths of toolchain files start with this (then `<name>/<path>`).
pub const EXTERNAL_PREFIX: &str = ".wbuild/toolchains/";

/// An installed toolchain bundle as the build sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct External {
    /// The bundle digest (`sha256:...`): its identity in action keys.
    pub digest: String,
    pub platform: String,
    /// Host directory holding the bundle's files.
    pub root: PathBuf,
    /// Paths of the bundle's regular files.
    pub files: BTreeSet<String>,
    /// Entry-point name -> path.
    pub entry_points: BTreeMap<String, String>,
    /// The environment the bundle's tools need (native bundles: `CC`, `CXX`, `AR`,
    /// `TEST_RUNNER`).
    pub env: BTreeMap<String, String>,
}

/// Settings from `wbuild.toml`. Every key is optional; unknown keys are an error.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub build: BuildConfig,
    pub wasi: WasiConfig,
    pub remote: RemoteConfig,
    /// `[toolchains.<name>]`: toolchain bundles pinned by source and digest.
    pub toolchains: BTreeMap<String, ToolchainPin>,
    pub trust: TrustConfig,
}

/// `[toolchains.<name>]` in `wbuild.toml`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ToolchainPin {
    /// Where to fetch it: `oci://host/repo:tag` (or `@sha256:...`), or a bundle file
    /// (relative to the workspace root).
    pub source: String,
    /// The bundle digest (`sha256:...`). Without it, the first resolution records the
    /// digest in `wbuild.lock` and later builds use that.
    #[serde(default)]
    pub digest: Option<String>,
}

/// `[trust]` in `wbuild.toml`: public keys (minisign `.pub` files relative to the root, or
/// the `RW...` key itself) whose signatures make a toolchain bundle acceptable.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrustConfig {
    pub keys: Vec<String>,
}

/// `[remote]` in `wbuild.toml`: a REAPI cache shared with others (`--remote` overrides).
/// Its `Debug` shows header names only (their values may be credentials).
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteConfig {
    /// `grpc://host:port` (plain text) or `grpcs://host:port` (TLS).
    pub url: Option<String>,
    /// REAPI instance name (default: empty).
    pub instance: Option<String>,
    /// Upload local results (default true).
    pub upload: Option<bool>,
    /// Which outputs of remote results are downloaded (`--remote-download` overrides;
    /// default `toplevel` with an executor, else `all`).
    pub download: Option<RemoteDownload>,
    /// A REAPI remote executor, `grpc://host:port` (`--remote-executor` overrides): cache
    /// misses run on its workers; it is the remote cache too unless `url` names another.
    pub executor: Option<String>,
    /// A CA certificate (PEM, relative to the workspace root) trusted for `grpcs://` in
    /// addition to Mozilla's roots (`--remote-ca` overrides).
    pub ca: Option<PathBuf>,
    /// A client certificate (PEM, relative to the root) for servers that ask for one; needs
    /// `client_key` (`--remote-client-cert` overrides).
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM, relative to the root).
    pub client_key: Option<PathBuf>,
    /// Metadata sent with every remote call, `{ NAME = "VALUE" }` (`--remote-header` adds
    /// to and overrides them).
    pub headers: BTreeMap<String, String>,
    /// A file (relative to the root) holding a bearer token, sent as
    /// `authorization: Bearer <token>` (`--remote-token-file` overrides).
    pub token_file: Option<PathBuf>,
    /// A credential helper (Bazel's protocol): a path relative to the root, or a program on
    /// PATH (`--remote-credential-helper` overrides).
    pub credential_helper: Option<PathBuf>,
}

impl std::fmt::Debug for RemoteConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<String> = self
            .headers
            .keys()
            .map(|n| format!("{n}=<redacted>"))
            .collect();
        f.debug_struct("RemoteConfig")
            .field("url", &self.url)
            .field("instance", &self.instance)
            .field("upload", &self.upload)
            .field("download", &self.download)
            .field("executor", &self.executor)
            .field("ca", &self.ca)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("headers", &headers)
            .field("token_file", &self.token_file)
            .field("credential_helper", &self.credential_helper)
            .finish()
    }
}

/// Which outputs a build with a remote writes to `wbuild-out/` (`--remote-download`,
/// `[remote] download`): builds without the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RemoteDownload {
    /// Every output of every action.
    All,
    /// The outputs of the requested targets; intermediate ones stay remote until an action
    /// here needs them.
    Toplevel,
    /// None: outputs stay remote unless an action here needs them (or they were made here).
    Minimal,
}

impl RemoteDownload {
    pub fn name(self) -> &'static str {
        match self {
            RemoteDownload::All => "all",
            RemoteDownload::Toplevel => "toplevel",
            RemoteDownload::Minimal => "minimal",
        }
    }
}

/// `[build]` in `wbuild.toml`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BuildConfig {
    /// Parallel actions; `None` = number of CPUs.
    pub jobs: Option<usize>,
    /// Wall clock seen by WASI actions (seconds since the Unix epoch). Default 0.
    pub source_date_epoch: u64,
    /// Target platform of native actions (`linux-x86_64`, `linux-arm64`); default: the host.
    pub platform: Option<String>,
}

/// `[wasi]` in `wbuild.toml`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WasiConfig {
    /// Linear-memory limit per WASI action, in MiB. Default 512.
    pub memory_limit_mb: u64,
    /// Time limit per WASI action, in seconds. Default 300.
    pub timeout_secs: u64,
}

impl Default for WasiConfig {
    fn default() -> Self {
        WasiConfig {
            memory_limit_mb: 512,
            timeout_secs: 300,
        }
    }
}

impl Config {
    /// Parses the text of a `wbuild.toml`; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, GraphError> {
        let err = |message: String| GraphError::Config {
            path: path.to_owned(),
            message,
        };
        let config: Config = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        if config.build.jobs == Some(0) {
            return Err(err("[build] jobs must be at least 1 (or left out)".into()));
        }
        if config.wasi.memory_limit_mb == 0 {
            return Err(err("[wasi] memory_limit_mb must be at least 1".into()));
        }
        for name in config.toolchains.keys() {
            let ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
                && name.as_bytes()[0].is_ascii_alphanumeric();
            if !ok {
                return Err(err(format!(
                    "[toolchains.{name}]: a toolchain name is 1-64 characters of a-z, 0-9, \
                     '.', '_', '-'"
                )));
            }
        }
        if config.remote.client_cert.is_some() != config.remote.client_key.is_some() {
            return Err(err(
                "[remote] client_cert and client_key go together: give both or neither".into(),
            ));
        }
        if config.wasi.timeout_secs == 0 {
            return Err(err("[wasi] timeout_secs must be at least 1".into()));
        }
        Ok(config)
    }
}

impl Workspace {
    /// Finds the workspace containing `start` by walking up to the directory holding
    /// `wbuild.toml`, and opens it.
    pub fn discover(start: &Path) -> Result<Workspace, GraphError> {
        let abs = absolute(start)?;
        let mut dir: Option<&Path> = Some(&abs);
        while let Some(d) = dir {
            if d.join(WORKSPACE_FILE).is_file() {
                return Workspace::open(d);
            }
            dir = d.parent();
        }
        Err(GraphError::NoWorkspace { start: abs })
    }

    /// Opens the workspace whose root is `root` (which must hold `wbuild.toml`).
    pub fn open(root: &Path) -> Result<Workspace, GraphError> {
        let root = root.canonicalize().map_err(|source| GraphError::Io {
            path: root.to_owned(),
            error: source,
        })?;
        let file = root.join(WORKSPACE_FILE);
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(GraphError::NoWorkspace { start: root });
            }
            Err(source) => {
                return Err(GraphError::Io {
                    path: file,
                    error: source,
                });
            }
        };
        let config = Config::parse(&text, &file)?;
        Ok(Workspace {
            root,
            config,
            externals: BTreeMap::new(),
        })
    }

    /// Workspace path of a directory inside the root (`""` for the root itself, and for a
    /// directory outside the workspace). Relative `dir`s are taken relative to the current
    /// directory.
    pub fn package_of_dir(&self, dir: &Path) -> String {
        let abs = dir
            .canonicalize()
            .or_else(|_| absolute(dir))
            .unwrap_or_else(|_| dir.to_owned());
        match abs.strip_prefix(&self.root) {
            Ok(rel) => rel
                .components()
                .filter_map(|c| match c {
                    Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("/"),
            Err(_) => String::new(),
        }
    }

    /// Host path of a workspace path (a source file, a package directory, or a file of a
    /// pinned toolchain under `.wbuild/toolchains/<name>/`).
    pub fn path(&self, ws_path: &str) -> PathBuf {
        if ws_path.is_empty() {
            self.root.clone()
        } else if let Some((ext, rel)) = self.external_of(ws_path) {
            ext.root.join(rel)
        } else {
            self.root.join(ws_path)
        }
    }

    /// The pinned toolchain a workspace path belongs to, and the path inside it.
    pub fn external_of<'a>(&self, ws_path: &'a str) -> Option<(&External, &'a str)> {
        let rest = ws_path.strip_prefix(EXTERNAL_PREFIX)?;
        let (name, rel) = rest.split_once('/')?;
        Some((self.externals.get(name)?, rel))
    }

    /// Name of the toolchain a workspace path belongs to.
    pub fn external_name<'a>(&self, ws_path: &'a str) -> Option<&'a str> {
        let rest = ws_path.strip_prefix(EXTERNAL_PREFIX)?;
        let (name, _) = rest.split_once('/')?;
        self.externals.contains_key(name).then_some(name)
    }

    /// Host directory where outputs are materialised (`<root>/wbuild-out`).
    pub fn out_dir(&self) -> PathBuf {
        self.root.join(OUT_DIR)
    }

    /// Whether the directory at workspace path `dir` is a package (holds a `WBUILD` file).
    pub fn is_package(&self, dir: &str) -> bool {
        self.path(dir).join(BUILD_FILE).is_file()
    }
}

fn absolute(p: &Path) -> Result<PathBuf, GraphError> {
    std::path::absolute(p).map_err(|source| GraphError::Io {
        path: p.to_owned(),
        error: source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discover_and_config() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::write(
            root.join(WORKSPACE_FILE),
            "[build]\njobs = 3\nsource_date_epoch = 7\n[wasi]\ntimeout_secs = 9\n",
        )
        .unwrap();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        let ws = Workspace::discover(&root.join("a/b")).unwrap();
        assert_eq!(ws.root, root.canonicalize().unwrap());
        assert_eq!(ws.config.build.jobs, Some(3));
        assert_eq!(ws.config.build.source_date_epoch, 7);
        assert_eq!(ws.config.wasi.timeout_secs, 9);
        assert_eq!(ws.config.wasi.memory_limit_mb, 512);
        assert_eq!(ws.package_of_dir(&root.join("a/b")), "a/b");
        assert_eq!(ws.package_of_dir(root), "");
        assert_eq!(ws.package_of_dir(Path::new("/")), "");
    }

    #[test]
    fn empty_config_is_default() {
        let c = Config::parse("", Path::new("wbuild.toml")).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.build.source_date_epoch, 0);
        assert_eq!(c.wasi.memory_limit_mb, 512);
        assert_eq!(c.wasi.timeout_secs, 300);
    }

    #[test]
    fn unknown_key_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(WORKSPACE_FILE), "[build]\njbos = 3\n").unwrap();
        let err = Workspace::open(tmp.path()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, GraphError::Config { .. }), "{err:?}");
        assert!(msg.contains("wbuild.toml"), "{msg}");
        assert!(msg.contains("jbos"), "{msg}");
        let err = Config::parse("[remotes]\nx = 1\n", Path::new("w.toml")).unwrap_err();
        assert!(err.to_string().contains("remotes"), "{err}");
        let err = Config::parse("[remote]\nuri = \"x\"\n", Path::new("w.toml")).unwrap_err();
        assert!(err.to_string().contains("uri"), "{err}");
        let c = Config::parse(
            "[remote]\nurl = \"grpc://h:1\"\nupload = false\n",
            Path::new("w.toml"),
        )
        .unwrap();
        assert_eq!(c.remote.url.as_deref(), Some("grpc://h:1"));
        assert_eq!(c.remote.upload, Some(false));
        assert_eq!(c.remote.download, None);
        let c = Config::parse("[remote]\ndownload = \"minimal\"\n", Path::new("w.toml")).unwrap();
        assert_eq!(c.remote.download, Some(RemoteDownload::Minimal));
        let err =
            Config::parse("[remote]\ndownload = \"some\"\n", Path::new("w.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("w.toml") && msg.contains("toplevel"), "{msg}");
        let err = Config::parse("[build]\njobs = 0\n", Path::new("w.toml")).unwrap_err();
        assert!(err.to_string().contains("jobs"), "{err}");
    }

    #[test]
    fn remote_transport_settings() {
        let c = Config::parse(
            "[remote]\nurl = \"grpcs://cache:443\"\nca = \"certs/ca.pem\"\n\
             client_cert = \"c.pem\"\nclient_key = \"k.pem\"\ntoken_file = \"tok\"\n\
             headers = { x-team = \"infra\", authorization = \"Bearer s3cret\" }\n",
            Path::new("w.toml"),
        )
        .unwrap();
        let r = &c.remote;
        assert_eq!(r.ca.as_deref(), Some(Path::new("certs/ca.pem")));
        assert_eq!(r.client_cert.as_deref(), Some(Path::new("c.pem")));
        assert_eq!(r.client_key.as_deref(), Some(Path::new("k.pem")));
        assert_eq!(r.token_file.as_deref(), Some(Path::new("tok")));
        assert_eq!(r.headers["x-team"], "infra");
        // Header values may be credentials: never shown.
        let shown = format!("{c:?}");
        assert!(
            shown.contains("authorization") && !shown.contains("s3cret"),
            "{shown}"
        );
        let err =
            Config::parse("[remote]\nclient_cert = \"c.pem\"\n", Path::new("w.toml")).unwrap_err();
        assert!(err.to_string().contains("client_key"), "{err}");
        let err = Config::parse("[remote]\ntoken = \"x\"\n", Path::new("w.toml")).unwrap_err();
        assert!(err.to_string().contains("token"), "{err}");
        let err =
            Config::parse("[remote]\nheaders = { x = 1 }\n", Path::new("w.toml")).unwrap_err();
        assert!(err.to_string().contains("headers"), "{err}");
    }

    #[test]
    fn no_workspace() {
        let tmp = tempfile::tempdir().unwrap();
        let err = Workspace::discover(tmp.path()).unwrap_err();
        assert!(matches!(err, GraphError::NoWorkspace { .. }));
        assert!(err.to_string().contains(WORKSPACE_FILE), "{err}");
    }
}
