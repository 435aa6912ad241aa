//! One build session: load → analyse → platform passes → schedule → materialise →
//! up-to-date snapshot.
//!
//! [`run_build`] takes a [`BuildRequest`] (what to build, how, with which remotes) and
//! returns a [`BuildOutcome`] (the merged summary). It first asks the up-to-date snapshot
//! whether anything can have changed; if not, every action of the last successful build is
//! reported as cached and nothing is loaded. Otherwise it analyses the patterns, splits the
//! graph into one pass per target platform, checks what native passes need (sandbox, cross
//! toolchain or pinned bundle), runs the passes with the scheduler and records the build.
//! The snapshot is written only after a fully successful build and deleted after any other.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use wbuild_exec_wasi::{ExecConfig, LazyExecutor};
use wbuild_graph::{ActionGraph, Label, TargetPattern, Workspace};
use wbuild_remote::{ConnectOptions, RemoteCache};
use wbuild_sched::{
    Event, EventSink, NativeToolchain, Options, Platform, Scheduler, Status, Summary, uptodate,
};
use wbuild_store::{DigestFunction, Store};

use crate::platform::{check_cross_toolchain, flag_platforms, has_native, platform_passes};
use crate::snapshot::SnapshotKey;
use crate::{DriverError, Result, provenance, toolchain};

/// How native actions (genrule, cc_*) run.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SandboxMode {
    /// In Linux namespaces, every file access observed (the default).
    Namespaces,
    /// In Linux namespaces without observing file accesses (`--sandbox=unobserved`): no
    /// access log, no undeclared-read checks, path sets from compilers' depfiles only.
    /// Same keys as `Namespaces` (observing never changes what an action sees).
    Unobserved,
    /// Directly on the host (`--sandbox=none`), keyed apart.
    None,
}

/// Where a build's messages and events go. The driver prints nothing itself.
pub trait Frontend {
    /// A line for the user (warnings, notes, `WBUILD_PROFILE` timings), in order.
    fn note(&self, line: &str);
    /// The build is about to report `total` actions: the sink for its events. `scheduling`
    /// is false for a build proven up to date by the snapshot (nothing runs).
    fn start(
        &self,
        total: usize,
        scheduling: bool,
    ) -> std::result::Result<&dyn EventSink, Box<dyn std::error::Error + Send + Sync>>;
}

/// How to reach a remote: TLS trust and identity for `grpcs://`, and the credentials sent
/// with every call; each field overrides the `[remote]` setting of `wbuild.toml`. `Debug`
/// shows header names only (their values may be credentials).
#[derive(Clone, Default)]
pub struct RemoteAuth {
    pub ca: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// `NAME=VALUE` headers, added to (and overriding) `[remote] headers`.
    pub headers: Vec<String>,
    pub token_file: Option<PathBuf>,
    /// A credential helper program (Bazel's protocol; see `wbuild_remote::ConnectOptions`).
    pub credential_helper: Option<PathBuf>,
}

impl std::fmt::Debug for RemoteAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|h| match h.split_once('=') {
                Some((name, _)) => format!("{name}=<redacted>"),
                None => "<malformed>".to_owned(),
            })
            .collect();
        f.debug_struct("RemoteAuth")
            .field("ca", &self.ca)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("headers", &headers)
            .field("token_file", &self.token_file)
            .field("credential_helper", &self.credential_helper)
            .finish()
    }
}

impl RemoteAuth {
    /// The connection options: `[remote]` of `file` (paths relative to the workspace root),
    /// overridden by these settings. A malformed header is an error.
    pub fn options(
        &self,
        file: Option<(&wbuild_graph::RemoteConfig, &Path)>,
    ) -> Result<ConnectOptions> {
        let mut o = ConnectOptions::default();
        if let Some((cfg, root)) = file {
            o.ca = cfg.ca.as_ref().map(|p| root.join(p));
            o.client_cert = cfg.client_cert.as_ref().map(|p| root.join(p));
            o.client_key = cfg.client_key.as_ref().map(|p| root.join(p));
            o.token_file = cfg.token_file.as_ref().map(|p| root.join(p));
            // A path with a directory is the workspace's; a bare name is looked up on PATH.
            o.credential_helper = cfg.credential_helper.as_ref().map(|p| {
                if p.components().count() > 1 {
                    root.join(p)
                } else {
                    p.clone()
                }
            });
            o.headers = cfg
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect();
        }
        if let Some(p) = &self.ca {
            o.ca = Some(p.clone());
        }
        if self.client_cert.is_some() || self.client_key.is_some() {
            o.client_cert = self.client_cert.clone();
            o.client_key = self.client_key.clone();
        }
        if let Some(p) = &self.token_file {
            o.token_file = Some(p.clone());
        }
        if let Some(p) = &self.credential_helper {
            o.credential_helper = Some(p.clone());
        }
        for h in &self.headers {
            o.headers.push(wbuild_remote::parse_header(h)?);
        }
        Ok(o)
    }
}

/// The remotes of a build (flags; `[remote]` of `wbuild.toml` fills what is unset).
#[derive(Clone, Debug, Default)]
pub struct RemoteRequest {
    /// A REAPI cache (`--remote`).
    pub cache: Option<String>,
    /// A REAPI executor (`--remote-executor`), which is the remote cache too.
    pub executor: Option<String>,
    pub instance: Option<String>,
    /// Upload results built here (default true).
    pub upload: Option<bool>,
    /// Which outputs to download (`--remote-download`; default `[remote] download`, else
    /// `toplevel` with an executor and `all` without).
    pub download: Option<wbuild_graph::RemoteDownload>,
    pub auth: RemoteAuth,
}

impl RemoteRequest {
    /// What `--remote-download` amounts to for `ws` (flags over `wbuild.toml`, then the
    /// default): with no remote at all, everything is here, so `all`.
    pub fn download_mode(
        &self,
        ws: &Workspace,
        connected: bool,
        executor: bool,
    ) -> wbuild_graph::RemoteDownload {
        use wbuild_graph::RemoteDownload;
        if !connected {
            return RemoteDownload::All;
        }
        self.download
            .or(ws.config.remote.download)
            .unwrap_or(if executor {
                RemoteDownload::Toplevel
            } else {
                RemoteDownload::All
            })
    }
}

/// What to build and how.
#[derive(Clone, Debug)]
pub struct BuildRequest {
    /// Target patterns as typed (relative to the package of the current directory);
    /// none means `//...`.
    pub patterns: Vec<String>,
    /// `--platform` values (comma-split).
    pub platforms: Vec<String>,
    /// Actions at once (default: `[build] jobs`, else the number of cores).
    pub jobs: Option<usize>,
    pub keep_going: bool,
    /// `wbuild test`: build and run the test targets.
    pub tests: bool,
    pub show_output: bool,
    pub sandbox: SandboxMode,
    pub remote: RemoteRequest,
    /// Write the build's provenance here (only after a successful build).
    pub provenance: Option<PathBuf>,
    /// Sign the provenance with this minisign secret key.
    pub sign_key: Option<PathBuf>,
    /// The cache directory.
    pub cache_dir: PathBuf,
    /// Write the build's timeline (a Chrome trace) here too; it is always written to
    /// `<cache>/last-build.trace.json`.
    pub profile: Option<PathBuf>,
}

/// What a build did.
#[derive(Debug)]
pub struct BuildOutcome {
    /// The totals of every pass; outputs keyed by their place under the workspace
    /// (`wbuild-out/<platform>/...`).
    pub summary: Summary,
    /// Proven a no-op by the up-to-date snapshot: nothing was loaded or run.
    pub up_to_date: bool,
}

/// How long each phase of a build took: for the trace, and with `WBUILD_PROFILE=1` as notes.
struct Phases<'a> {
    since_unix_us: u64,
    notes: bool,
    ui: &'a dyn Frontend,
    spans: Vec<crate::profile::Span>,
}

impl Phases<'_> {
    fn mark(&mut self, what: &str) {
        let now = wbuild_sched::clock_us();
        let took_us = now.saturating_sub(self.since_unix_us);
        if self.notes {
            self.ui
                .note(&format!("[profile] {what}: {:.1} ms", took_us as f64 / 1e3));
        }
        self.spans.push(crate::profile::Span {
            name: what.to_owned(),
            start_us: self.since_unix_us,
            duration_us: took_us,
        });
        self.since_unix_us = now;
    }
}

/// The workspace around `cwd` and the package `cwd` is in.
pub fn workspace(cwd: &Path) -> Result<(Workspace, String)> {
    let ws = Workspace::discover(cwd)?;
    let pkg = ws.package_of_dir(cwd);
    Ok((ws, pkg))
}

/// The workspace around the current directory with its pinned toolchains resolved (fetched
/// and verified if needed, see [`toolchain::resolve_workspace`]).
pub fn workspace_resolved(cache_dir: &Path, note: &dyn Fn(&str)) -> Result<(Workspace, String)> {
    let cwd = std::env::current_dir().map_err(|source| DriverError::Io {
        what: "cannot read the current directory".to_owned(),
        source,
    })?;
    let (mut ws, pkg) = workspace(&cwd)?;
    toolchain::resolve_workspace(&mut ws, cache_dir, note)?;
    Ok((ws, pkg))
}

/// The patterns as typed, relative to `pkg` (none: `//...`).
pub fn parse_patterns(patterns: &[String], pkg: &str) -> Result<Vec<TargetPattern>> {
    let default = ["//...".to_owned()];
    let patterns = if patterns.is_empty() {
        &default[..]
    } else {
        patterns
    };
    patterns
        .iter()
        .map(|p| TargetPattern::parse(p, pkg).map_err(Into::into))
        .collect()
}

/// The store at `dir`, hashing with BLAKE3.
pub fn open_store(dir: &Path, note: &dyn Fn(&str)) -> Result<Arc<Store>> {
    open_store_with(dir, DigestFunction::Blake3, note)
}

/// The store at `dir`, hashing with `f` (a remote cache's function, so keys match the
/// remote's). Waits for another process holding it (saying so), and reports an index that
/// was repaired or rebuilt.
pub fn open_store_with(dir: &Path, f: DigestFunction, note: &dyn Fn(&str)) -> Result<Arc<Store>> {
    opened_store(
        Store::open_with_timeout(dir, f, STORE_LOCK_FIRST_WAIT),
        dir,
        f,
        note,
    )
}

/// How long the first attempt to open the store waits for another process's lock before
/// saying so and waiting on.
const STORE_LOCK_FIRST_WAIT: Duration = Duration::from_millis(200);

/// [`open_store_with`] after its first attempt, `first`.
fn opened_store(
    first: std::result::Result<Store, wbuild_store::StoreError>,
    dir: &Path,
    f: DigestFunction,
    note: &dyn Fn(&str),
) -> Result<Arc<Store>> {
    let store = match first {
        Err(wbuild_store::StoreError::Locked { .. }) => {
            note(&format!(
                "waiting for another wbuild process that is using the cache {}",
                dir.display()
            ));
            Store::open_with(dir, f)
        }
        other => other,
    };
    let store = store.map_err(|source| DriverError::OpenStore {
        path: dir.to_owned(),
        source: Box::new(source),
    })?;
    match store.index_check() {
        Some(wbuild_store::IndexCheck::Repaired) => {
            note("note: the cache index was damaged; redb repaired it")
        }
        Some(wbuild_store::IndexCheck::Replaced { aside, reason }) => note(&format!(
            "warning: the cache index was damaged beyond repair ({reason}); moved aside to {} and rebuilt: actions whose cache entries were lost run again",
            aside.display()
        )),
        _ => {}
    }
    Ok(Arc::new(store))
}

/// Connects to `url` with `options`, first warning (through `note`) when credentials would
/// go in clear text off this machine.
pub fn connect_with(
    url: &str,
    instance: &str,
    options: &ConnectOptions,
    note: &dyn Fn(&str),
) -> std::result::Result<RemoteCache, wbuild_remote::ClientError> {
    if let Some(w) = options.cleartext_warning(url) {
        note(&w);
    }
    RemoteCache::connect_with(url, instance, options)
}

type Remote = Option<Arc<RemoteCache>>;

/// The remote cache (`--remote` or `[remote] url`) and the remote executor
/// (`--remote-executor` or `[remote] executor`, which is the remote cache too), each if set
/// and answering; otherwise a warning and a local build. Options that cannot be used are an
/// error.
pub fn connect_remote(
    ws: &Workspace,
    req: &RemoteRequest,
    note: &dyn Fn(&str),
) -> Result<(Remote, Remote)> {
    let cache_url = req.cache.as_ref().or(ws.config.remote.url.as_ref());
    let exec_url = req.executor.as_ref().or(ws.config.remote.executor.as_ref());
    let instance = req
        .instance
        .as_ref()
        .or(ws.config.remote.instance.as_ref())
        .map_or("", String::as_str);
    if let (Some(c), Some(e)) = (cache_url, exec_url)
        && c != e
    {
        return Err(DriverError::Config(format!(
            "--remote {c} and --remote-executor {e} differ: the executor's workers read inputs from and write results to its own CAS, so use one endpoint (drop --remote)"
        )));
    }
    let Some(url) = exec_url.or(cache_url) else {
        return Ok((None, None));
    };
    let what = if exec_url.is_some() {
        "remote executor"
    } else {
        "remote cache"
    };
    let options = req.auth.options(Some((&ws.config.remote, &ws.root)))?;
    match connect_with(url, instance, &options, note) {
        Ok(r) => {
            let r = Arc::new(r);
            let executor = exec_url.is_some().then(|| r.clone());
            Ok((Some(r), executor))
        }
        // Options that cannot be used are a mistake to fix, not an outage to build through.
        Err(source @ wbuild_remote::ClientError::Options(_)) => Err(DriverError::RemoteOptions {
            what,
            url: url.clone(),
            source: Box::new(source),
        }),
        Err(e) => {
            note(&format!("warning: {e}; building without the {what}"));
            Ok((None, None))
        }
    }
}

/// Load and analyse, reusing the analysis cached in the store when the workspace is
/// unchanged: the action graph, its roots, and whether it came from the cache.
pub fn analyse(
    ws: &Workspace,
    store: &Store,
    patterns: &[TargetPattern],
    tests: bool,
    signature: &wbuild_graph::Signature,
) -> Result<wbuild_graph::Analysed> {
    analyse_at(ws, store.dir(), patterns, tests, signature)
}

/// [`analyse`] with the analysis cache of the store at `store_dir`, before (or while) the
/// store itself is opened.
fn analyse_at(
    ws: &Workspace,
    store_dir: &Path,
    patterns: &[TargetPattern],
    tests: bool,
    signature: &wbuild_graph::Signature,
) -> Result<wbuild_graph::Analysed> {
    Ok(wbuild_graph::load_and_analyse_cached(
        ws,
        patterns,
        tests,
        &store_dir.join("analysis"),
        signature,
    )?)
}

/// The output files of the targets matching `patterns` for each platform pass, as paths
/// relative to the workspace root (generated files under their pass's output directory).
/// After a fresh analysis they are listed while its cache entry is written.
pub fn output_paths(
    ws: &Workspace,
    store: &Store,
    patterns: &[TargetPattern],
    platform_flags: &[String],
) -> Result<Vec<String>> {
    let flags = flag_platforms(platform_flags)?;
    let signature = wbuild_graph::workspace_signature(ws)?;
    let (analysed, out) = wbuild_graph::load_and_analyse_cached_then(
        ws,
        patterns,
        false,
        &store.dir().join("analysis"),
        &signature,
        |actions, roots| -> Result<Vec<String>> {
            let mut out = Vec::new();
            for (platform, group) in platform_passes(ws, &flags, actions, roots)? {
                let out_dir = platform.out_dir();
                let mut push = |path: &String| {
                    if actions.producers.contains_key(path) {
                        out.push(format!("{out_dir}/{path}"));
                    } else {
                        out.push(path.clone());
                    }
                };
                match &group {
                    // Every root: `target_files` holds exactly the roots' files, in the
                    // roots' (label) order.
                    None => actions.target_files.values().flatten().for_each(&mut push),
                    Some(group) => group
                        .iter()
                        .flat_map(|l| actions.target_files.get(l))
                        .flatten()
                        .for_each(&mut push),
                }
            }
            Ok(out)
        },
    )?;
    wbuild_graph::drop_elsewhere(analysed);
    out
}

/// A `wasi_tool` as `wbuild run` runs it: its `ToolRef`, and each data file's guest path
/// with the host file holding it (generated ones under `wbuild-out/`).
pub type RunnableTool = (wbuild_graph::ToolRef, Vec<(String, PathBuf)>);

/// How the `wasi_tool` `label` runs (`None`: it is not one). For `wbuild run`, after a
/// build of `label`.
pub fn root_tool(
    ws: &Workspace,
    store: &Store,
    label: &wbuild_graph::Label,
) -> Result<Option<RunnableTool>> {
    let patterns = parse_patterns(&[label.to_string()], "")?;
    let signature = wbuild_graph::workspace_signature(ws)?;
    let actions = analyse(ws, store, &patterns, false, &signature)?.graph;
    let Some(tool) = actions.root_tools.get(label).cloned() else {
        return Ok(None);
    };
    let data = tool
        .data
        .iter()
        .map(|(guest, path)| {
            let host = if actions.producers.contains_key(path) {
                ws.root.join(wbuild_graph::OUT_DIR).join(path)
            } else {
                ws.path(path)
            };
            (guest.clone(), host)
        })
        .collect();
    Ok(Some((tool, data)))
}

/// One platform pass: its platform and the part of the graph it builds.
pub type Pass<'g> = (Platform, Cow<'g, ActionGraph>);

/// The native toolchain bundle of each platform (none: the host's or a cross toolchain).
pub type Bundles = BTreeMap<&'static str, Option<Arc<NativeToolchain>>>;

/// The platform passes of an analysed build of `roots` (see [`platform_passes`]).
pub fn split_passes<'g>(
    ws: &Workspace,
    flags: &[Platform],
    actions: &'g ActionGraph,
    roots: &[Label],
) -> Result<Vec<Pass<'g>>> {
    Ok(platform_passes(ws, flags, actions, roots)?
        .into_iter()
        .map(|(p, roots)| {
            let g = match roots {
                Some(r) => Cow::Owned(actions.subgraph(&r)),
                None => Cow::Borrowed(actions),
            };
            (p, g)
        })
        .collect())
}

/// The scheduler options of a build of `ws` as `req` asks for it, before its platform
/// passes (see [`pass_options`]); `jobs` is the number of actions at once.
pub fn build_options(ws: &Workspace, req: &BuildRequest, jobs: usize) -> Options {
    Options {
        jobs,
        keep_going: req.keep_going,
        epoch_secs: ws.config.build.source_date_epoch,
        memory_limit_bytes: ws.config.wasi.memory_limit_mb << 20,
        timeout: Duration::from_secs(ws.config.wasi.timeout_secs),
        show_output: req.show_output,
        platform: Platform::host(),
        unsandboxed: req.sandbox == SandboxMode::None,
        observe_native: req.sandbox == SandboxMode::Namespaces,
        remote_upload: req
            .remote
            .upload
            .or(ws.config.remote.upload)
            .unwrap_or(true),
        native_toolchain: None,
        known: None,
        download: wbuild_sched::Download::All,
    }
}

/// The options of the pass for `platform`: its platform and its native toolchain bundle.
pub fn pass_options(opts: &Options, platform: Platform, bundles: &Bundles) -> Options {
    let mut o = opts.clone();
    o.platform = platform;
    o.native_toolchain = bundles.get(platform.name()).cloned().flatten();
    o
}

/// Runs one build of `ws` (as resolved by [`workspace_resolved`]; `pkg` is the package of
/// the current directory).
pub fn run_build(
    ws: &Workspace,
    pkg: &str,
    req: &BuildRequest,
    ui: &dyn Frontend,
) -> Result<BuildOutcome> {
    let mut round = 0;
    loop {
        // A round that repaired inferred targets returns first, so the cache (and its lock)
        // is released before the next round opens it.
        match run_build_round(ws, pkg, req, ui, round)? {
            Round::Done(outcome) => return Ok(*outcome),
            Round::Repaired => {
                ui.note("building again with the inferred edges");
                round += 1;
            }
        }
    }
}

/// How one round of a build ended.
enum Round {
    Done(Box<BuildOutcome>),
    /// `wbuild infer`'s targets were repaired: build again.
    Repaired,
}

/// Builds once more after `wbuild infer`'s targets were repaired, at most this many times.
const INFER_REPAIR_ROUNDS: usize = 3;

fn run_build_round(
    ws: &Workspace,
    pkg: &str,
    req: &BuildRequest,
    ui: &dyn Frontend,
    round: usize,
) -> Result<Round> {
    let note = |line: &str| ui.note(line);
    let mut phases = Phases {
        since_unix_us: wbuild_sched::clock_us(),
        notes: std::env::var_os("WBUILD_PROFILE").is_some(),
        ui,
        spans: Vec::new(),
    };
    let flags = flag_platforms(&req.platforms)?;
    let patterns = parse_patterns(&req.patterns, pkg)?;
    let (remote, executor) = connect_remote(ws, &req.remote, &note)?;
    phases.mark("remote");
    let function = remote
        .as_ref()
        .map_or(DigestFunction::Blake3, |r| r.function());
    let download = req
        .remote
        .download_mode(ws, remote.is_some(), executor.is_some());
    let command = if req.tests { "test" } else { "build" };
    // The store's directory as the store names it; the no-op path below never opens it.
    let cache_dir = std::path::absolute(&req.cache_dir).unwrap_or_else(|_| req.cache_dir.clone());
    // Directories and build files unchanged since the last build are not read again.
    let signature =
        wbuild_graph::workspace_signature_memo(ws, &uptodate::listings_path(&cache_dir, &ws.root))?;
    let binary = wbuild_graph::binary_identity();
    let key = SnapshotKey {
        version: env!("CARGO_PKG_VERSION"),
        binary: &binary,
        executor_version: wbuild_exec_wasi::EXECUTOR_VERSION,
        root: &ws.root,
        platforms: &flags,
        sandbox: req.sandbox,
        tests: req.tests,
        function,
        patterns: &patterns,
        download: download.name(),
    };
    let snapshot = uptodate::snapshot_path(&cache_dir, &key.hex());
    let pattern_names: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
    // The snapshot of the last successful build: nothing changed, a no-op; some sources or
    // outputs changed, the results of what they do not reach are known (`Options::known`).
    let snapshot_allowed = !req.show_output && req.provenance.is_none();
    let mut snap = if snapshot_allowed {
        uptodate::check(&snapshot, signature.as_bytes(), None)
    } else {
        None
    };
    if let Some(snap) = &snap
        && snap.changed.is_empty()
    {
        phases.mark("up-to-date check");
        let summary = up_to_date(&cache_dir, command, &pattern_names, &snap.actions, ui)?;
        return Ok(Round::Done(Box::new(BuildOutcome {
            summary,
            up_to_date: true,
        })));
    }
    phases.mark("up-to-date check");
    // There is work to do: native sandboxes will be started by a spawner forked now, while
    // this process is still single-threaded and small (a no-op never pays for the fork; if
    // it cannot be forked, sandboxes are cloned from wbuild itself).
    let _ = wbuild_exec_native::start_spawner();
    // With no snapshot at all (a fresh cache, or after a failed build) nothing vouches for
    // the host toolchain: its identity (thousands of files stat'ed, the compiler driver
    // asked where its programs are) is needed before the first native action's key, so it
    // is computed on a thread of its own from here, while the store opens and the workspace
    // loads. A build without native actions never waits for it.
    let no_snapshot = snapshot_allowed && !snapshot.exists();
    if no_snapshot {
        let _ = std::thread::Builder::new()
            .name("toolchain".into())
            .spawn(|| wbuild_sched::toolchain_identity(Platform::host()));
    }
    // The workspace is loaded (or its cached analysis read) here while the store opens on a
    // thread. When the snapshot says the last build ran native actions on this machine's
    // toolchain, or there is no snapshot to say anything (a first build: the sandbox is
    // started once for nothing if all its actions are WASI), the sandbox is probed on
    // another meanwhile, instead of after the analysis (a sandbox started and reaped: about
    // 2 ms of an edit build's start, 5 to 12 ms of a first build's, while the spawner is
    // still starting).
    let speculative_probe = matches!(
        req.sandbox,
        SandboxMode::Namespaces | SandboxMode::Unobserved
    ) && (no_snapshot
        || snap.as_ref().is_some_and(|s| !s.toolchains.is_empty()));
    let started = SystemTime::now();
    let (store, analysed, mut probed) = std::thread::scope(|s| {
        let probe = speculative_probe.then(|| {
            std::thread::Builder::new()
                .name("probe".into())
                .spawn_scoped(s, wbuild_exec_native::probe)
        });
        // The first attempt at the store's lock, off this thread (the heap this thread
        // warmed up in the up-to-date check serves the analysis best).
        let store = std::thread::Builder::new()
            .name("store".into())
            .spawn_scoped(s, || {
                Store::open_with_timeout(&req.cache_dir, function, STORE_LOCK_FIRST_WAIT)
            });
        let analysed = analyse_at(ws, &cache_dir, &patterns, req.tests, &signature);
        let store = match store {
            Ok(h) => join_scoped(h),
            Err(_) => Store::open_with_timeout(&req.cache_dir, function, STORE_LOCK_FIRST_WAIT),
        };
        (store, analysed, probe.and_then(Result::ok).map(join_scoped))
    });
    let store = opened_store(store, &req.cache_dir, function, &note)?;
    let wbuild_graph::Analysed {
        graph: actions,
        roots,
        cached: analysis_cached,
        digest: analysis_digest,
    } = analysed?;
    // The signature changed, but what changed may not reach the graph (a file no glob or
    // reference names, an editor's swap file): the same analysis as the snapshot's build
    // means the same actions built the same way, so the snapshot still vouches for them.
    if snap.is_none() && snapshot_allowed {
        snap = analysis_digest
            .and_then(|d| uptodate::check(&snapshot, signature.as_bytes(), Some(d.as_bytes())));
    }
    let passes = split_passes(ws, &flags, &actions, &roots)?;
    let bundles = pass_bundles(ws, &passes, req.sandbox)?;
    if passes.iter().any(|(_, g)| has_native(g)) {
        match req.sandbox {
            SandboxMode::Namespaces | SandboxMode::Unobserved => probed.take().unwrap_or_else(wbuild_exec_native::probe).map_err(|e| {
                DriverError::Config(format!(
                    "{e}\n(or run native actions unsandboxed with --sandbox=none; their results are marked as such)"
                ))
            })?,
            SandboxMode::None => note(
                "warning: --sandbox=none: native actions run directly on this machine, unisolated; their results are keyed apart and must never be shared",
            ),
        }
    }
    phases.mark(if analysis_cached {
        "open store + load + analyse (cached)"
    } else {
        "open store + load + analyse"
    });
    let jobs = req
        .jobs
        .or(ws.config.build.jobs)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let exec = Arc::new(LazyExecutor::new(ExecConfig {
        modules_dir: store.modules_dir(),
        max_concurrent: jobs as u32,
    }));
    let mut opts = build_options(ws, req, jobs);
    opts.download = match download {
        wbuild_graph::RemoteDownload::All => wbuild_sched::Download::All,
        wbuild_graph::RemoteDownload::Minimal => {
            wbuild_sched::Download::Only(Arc::new(HashSet::new()))
        }
        wbuild_graph::RemoteDownload::Toplevel => {
            wbuild_sched::Download::Only(Arc::new(toplevel_outputs(&actions, &roots)))
        }
    };
    let build_id = store.begin_build(command, &pattern_names)?;
    phases.mark("engine + history");
    let total: usize = passes.iter().map(|(_, g)| g.actions.len()).sum();
    let events = ui.start(total, true).map_err(DriverError::Frontend)?;
    let recorder = crate::profile::Recorder::new(events);
    let events: &dyn EventSink = &recorder;
    // With a remote an action is mostly a round trip (a lookup, a remote run): up to
    // REMOTE_IN_FLIGHT actions are processed at once, while runs here stay within -j (within
    // the cores, with an executor).
    let local_jobs = if executor.is_some() {
        std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(jobs)
    } else {
        jobs
    };
    if remote.is_some() {
        opts.jobs = jobs.max(REMOTE_IN_FLIGHT);
    } else {
        // While -j actions run here, as many more workers key and look up the actions that
        // come next (after a header edit, most of the compiles that can see it are found in
        // the cache by their path sets): a free slot goes to the one with the longest path.
        opts.jobs = jobs.saturating_mul(2);
    }
    let sched = Scheduler::new(ws, store.clone(), exec, events, Some(build_id))
        .with_remote(remote)
        .with_local_jobs(local_jobs)
        .with_executor(executor, local_jobs);
    if let Some(snap) = &snap {
        for t in &snap.toolchains {
            if let Some(p) = Platform::ALL.into_iter().find(|p| p.name() == t.platform) {
                wbuild_sched::assume_toolchain_identity(p, t.identity.clone(), t.sentinels.clone());
            }
        }
    }
    // What the snapshot vouches for, pass by pass.
    let mut known = snap
        .as_mut()
        .map(|s| {
            let graphs: Vec<(String, &ActionGraph)> = passes
                .iter()
                .map(|(p, g)| (p.out_dir(), g.as_ref()))
                .collect();
            known_results(ws, s, &graphs, function)
        })
        .unwrap_or_default()
        .into_iter();
    let runs: Vec<(&ActionGraph, Options)> = passes
        .iter()
        .map(|(p, g)| {
            let mut o = pass_options(&opts, *p, &bundles);
            o.known = known.next().map(Arc::new);
            (g.as_ref(), o)
        })
        .collect();
    let summary = sched.run_passes(&runs);
    phases.mark("schedule");
    drop(sched);
    let outcome = match &summary {
        Ok(s) if s.interrupted => "interrupted",
        Ok(s) if s.success() => "success",
        _ => "failed",
    };
    let write_trace = |phases: &Phases| -> Result<()> {
        let graphs: Vec<&ActionGraph> = passes.iter().map(|(_, g)| g.as_ref()).collect();
        let text = recorder.trace(command, &phases.spans, &graphs);
        // Best effort for the cache's copy; the one asked for must be written.
        let _ = std::fs::write(req.cache_dir.join(LAST_TRACE), &text);
        if let Some(path) = &req.profile {
            std::fs::write(path, &text).map_err(|source| DriverError::Io {
                what: format!("cannot write the profile {}", path.display()),
                source,
            })?;
        }
        Ok(())
    };
    let summary = match summary {
        Ok(summary) if summary.success() => {
            // The store's durable commit and its close (four fsyncs between them) run on a
            // thread while the snapshot is written beside its place; it is put in place once
            // the results it vouches for are durable.
            let written = std::thread::scope(|s| {
                let flushed = s.spawn(move || {
                    let flushed = store.finish_build(build_id, outcome);
                    drop(store); // the last reference: the index is closed
                    flushed
                });
                let written = write_snapshot(
                    ws,
                    &snapshot,
                    &signature,
                    analysis_digest.as_ref(),
                    snap.as_ref(),
                    &summary,
                    &passes,
                    &bundles,
                );
                join_scoped(flushed).map(|()| written)
            })?;
            if let Some(written) = written {
                // Best effort: without a snapshot the next no-op build takes the full path.
                let _ = written.persist();
            }
            phases.mark("record + flush + snapshot");
            write_trace(&phases)?;
            phases.mark("write trace");
            summary
        }
        summary => {
            let _ = std::fs::remove_file(&snapshot);
            store.finish_build(build_id, outcome)?; // flushes durably
            phases.mark("record + flush");
            write_trace(&phases)?;
            phases.mark("write trace");
            let summary = summary?;
            // Inferred targets whose observed runs found conflicts the inference did not
            // see: the edges are added (ordered by the script) and the build runs again.
            if !summary.interrupted
                && round < INFER_REPAIR_ROUNDS
                && crate::infer::repair(ws, &store, &summary.failed_actions, &note)?
            {
                return Ok(Round::Repaired);
            }
            summary
        }
    };
    if summary.success()
        && let Some(out) = &req.provenance
    {
        let facts = provenance::BuildFacts {
            ws,
            subjects: provenance_subjects(&passes),
            sources: &summary.sources,
            patterns: &pattern_names,
            platforms: passes
                .iter()
                .map(|(p, g)| {
                    // A platform with a pinned bundle is identified by it (in `toolchains`).
                    let host_toolchain = bundles.get(p.name()).is_some_and(|b| b.is_none());
                    (
                        p.name().to_owned(),
                        (has_native(g) && host_toolchain)
                            .then(|| wbuild_sched::toolchain_identity(*p)),
                    )
                })
                .collect(),
            source_date_epoch: opts.epoch_secs,
            sandbox: if opts.unsandboxed {
                "none"
            } else {
                "namespaces"
            },
            build_id,
            started,
        };
        provenance::write(out, &facts, req.sign_key.as_deref())?;
    }
    // The graph and the snapshot are freed on a thread of their own: entry by entry, that
    // was about 4 ms per 10,000 actions between the last action and the exit.
    drop(runs);
    drop(passes);
    wbuild_graph::drop_elsewhere((actions, snap));
    Ok(Round::Done(Box::new(BuildOutcome {
        summary,
        up_to_date: false,
    })))
}

/// What a scoped thread returned (its panic goes on here).
fn join_scoped<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
    h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Actions processed at once when a remote is in use (see `run_build`).
pub const REMOTE_IN_FLIGHT: usize = 32;

/// The generated outputs of the targets `roots` (paths under a pass's output directory),
/// with the module and data files of those that are `wasi_tool`s (`wbuild run` reads them):
/// what `--remote-download=toplevel` downloads.
fn toplevel_outputs(actions: &ActionGraph, roots: &[Label]) -> HashSet<String> {
    let tool_files = roots
        .iter()
        .filter_map(|l| actions.root_tools.get(l))
        .flat_map(|t| std::iter::once(&t.module).chain(t.data.iter().map(|(_, p)| p)));
    roots
        .iter()
        .flat_map(|l| actions.target_files.get(l).into_iter().flatten())
        .chain(tool_files)
        .filter(|p| actions.producers.contains_key(*p))
        .cloned()
        .collect()
}

/// The up-to-date snapshot of a successful build, written beside `path` (see
/// [`uptodate::write`]); `None` if none can be written (best effort: without one the next
/// no-op build takes the full path). `snap` is the snapshot checked at the start, if any.
#[allow(clippy::too_many_arguments)]
fn write_snapshot(
    ws: &Workspace,
    path: &Path,
    signature: &wbuild_graph::Signature,
    analysis: Option<&blake3::Hash>,
    snap: Option<&uptodate::Snapshot>,
    summary: &wbuild_sched::Summary,
    passes: &[Pass<'_>],
    bundles: &Bundles,
) -> Option<uptodate::Written> {
    let sources: Vec<PathBuf> = summary.sources.iter().map(|p| ws.path(p)).collect();
    // Native actions keyed on this machine's toolchain: a package upgrade must end the
    // fast paths as it changes their keys.
    let toolchains: Vec<uptodate::SnapshotToolchain> = passes
        .iter()
        .filter(|(p, g)| has_native(g) && bundles.get(p.name()).is_some_and(|b| b.is_none()))
        .map(|(p, _)| uptodate::SnapshotToolchain {
            platform: p.name().to_owned(),
            identity: wbuild_sched::toolchain_identity(*p),
            sentinels: wbuild_sched::toolchain_sentinels(*p),
        })
        .collect();
    // Outputs left on the remote are not files here.
    let outputs: Vec<PathBuf> = summary
        .outputs
        .keys()
        .filter(|p| !summary.remote_only.contains(*p))
        .map(|p| ws.root.join(p))
        .collect();
    // What the check of the snapshot before found unchanged is recorded again without a
    // second stat, except outputs this build may have written.
    let unchanged = snap.map(|s| s.unchanged());
    let rewritten: HashSet<PathBuf> = summary.rewritten.iter().map(|p| ws.root.join(p)).collect();
    let known = |p: &Path| {
        unchanged
            .as_ref()?
            .get(p)
            .filter(|_| !rewritten.contains(p))
    };
    uptodate::write(
        path,
        uptodate::Basis {
            signature: signature.as_bytes(),
            analysis: analysis.map(|d| d.as_bytes()),
        },
        &sources,
        &outputs,
        &summary.actions,
        &toolchains,
        &known,
    )
    .ok()
    .flatten()
}

/// What the snapshot `snap` vouches for in each pass (its output directory and graph): the
/// recorded result of every action, marked touched when one of its direct sources or outputs
/// changed (a consumer of an action that ran again is known too if the run gave the same
/// bytes). The recorded actions are moved out of `snap`.
fn known_results(
    ws: &Workspace,
    snap: &mut uptodate::Snapshot,
    passes: &[(String, &ActionGraph)],
    function: DigestFunction,
) -> Vec<wbuild_sched::Known> {
    // Which recorded action each action of each pass is. The snapshot lists them pass by
    // pass in graph order, so each is first looked for at its own position; only when that
    // fails are they looked up by (output directory, label, mnemonic, detail).
    let same = |a: &uptodate::SnapshotAction, out_dir: &str, action: &wbuild_graph::ActionNode| {
        a.out_dir == out_dir
            && a.mnemonic == action.mnemonic
            && a.detail == action.detail.as_deref().unwrap_or("")
            && a.label.strip_prefix("//").and_then(|l| l.rsplit_once(':'))
                == Some((action.label.package.as_str(), action.label.name.as_str()))
    };
    let mut offset = 0;
    let mut by_position = true;
    for (out_dir, graph) in passes {
        by_position &= graph.actions.iter().enumerate().all(|(i, action)| {
            snap.actions
                .get(offset + i)
                .is_some_and(|a| same(a, out_dir, action))
        });
        offset += graph.actions.len();
    }
    let matches: Vec<Vec<Option<usize>>> = if by_position {
        let mut offset = 0;
        passes
            .iter()
            .map(|(_, graph)| {
                let m = (offset..offset + graph.actions.len()).map(Some).collect();
                offset += graph.actions.len();
                m
            })
            .collect()
    } else {
        let mut recorded: HashMap<(&str, &str, &str, &str, &str), usize> = HashMap::new();
        for (i, a) in snap.actions.iter().enumerate() {
            if let Some((package, name)) =
                a.label.strip_prefix("//").and_then(|l| l.rsplit_once(':'))
            {
                recorded.insert((&a.out_dir, package, name, &a.mnemonic, &a.detail), i);
            }
        }
        passes
            .iter()
            .map(|(out_dir, graph)| {
                graph
                    .actions
                    .iter()
                    .map(|action| {
                        let id = (
                            out_dir.as_str(),
                            action.label.package.as_str(),
                            action.label.name.as_str(),
                            action.mnemonic.as_str(),
                            action.detail.as_deref().unwrap_or(""),
                        );
                        recorded.get(&id).copied()
                    })
                    .collect()
            })
            .collect()
    };
    let mut slots: Vec<Option<uptodate::SnapshotAction>> = std::mem::take(&mut snap.actions)
        .into_iter()
        .map(Some)
        .collect();
    passes
        .iter()
        .zip(matches)
        .map(|((out_dir, graph), matched)| {
            // What changed, as workspace paths and as paths under the output directory.
            let out_root = ws.root.join(out_dir);
            // Every direct source of every action is looked up here: FxHash, not SipHash.
            let mut changed_sources: rustc_hash::FxHashSet<&str> = Default::default();
            let mut changed_outputs: rustc_hash::FxHashSet<&str> = Default::default();
            for p in &snap.changed {
                if let Some(o) = p.strip_prefix(&out_root).ok().and_then(Path::to_str) {
                    changed_outputs.insert(o);
                } else if let Some(s) = p.strip_prefix(&ws.root).ok().and_then(Path::to_str) {
                    changed_sources.insert(s);
                }
            }
            let produced = wbuild_sched::Produced::of(graph);
            let actions = graph
                .actions
                .iter()
                .zip(matched)
                .map(|(action, m)| {
                    let recorded = slots.get_mut(m?)?.take()?;
                    // `hex/size` under the build's digest function (`FromStr` would say BLAKE3).
                    let digest = recorded.action_digest.split_once('/').and_then(|(h, n)| {
                        wbuild_store::Digest::from_hex(function, h, n.parse().ok()?).ok()
                    })?;
                    let touched = wbuild_sched::direct_sources(&produced, action)
                        .any(|p| changed_sources.contains(p))
                        || action
                            .outputs
                            .iter()
                            .any(|o| changed_outputs.contains(o.as_str()));
                    Some(wbuild_sched::KnownAction {
                        digest,
                        recorded: Arc::new(recorded),
                        touched,
                    })
                })
                .collect();
            wbuild_sched::Known { actions }
        })
        .collect()
}

/// The native toolchain bundle of each pass's platform (none: the host's toolchain, or a
/// cross compiler under `/usr/bin`, which must then be installed). A pinned bundle is the
/// whole system of native actions, so it refuses `--sandbox=none`.
pub fn pass_bundles(ws: &Workspace, passes: &[Pass<'_>], sandbox: SandboxMode) -> Result<Bundles> {
    let mut bundles = BTreeMap::new();
    for (p, g) in passes {
        let bundle = toolchain::native_for(ws, p.name())?;
        if has_native(g) {
            match &bundle {
                Some(tc) if sandbox == SandboxMode::None => {
                    return Err(DriverError::Config(format!(
                        "the pinned toolchain {} for {} is the whole system of native actions, which needs the sandbox; drop --sandbox=none",
                        tc.name,
                        p.name()
                    )));
                }
                Some(_) => {}
                None => check_cross_toolchain(*p)?,
            }
        }
        bundles.insert(p.name(), bundle);
    }
    Ok(bundles)
}

/// The provenance subjects of a build: every generated file of the requested targets, under
/// its pass's output directory, sorted, each once.
pub fn provenance_subjects(passes: &[(Platform, Cow<'_, ActionGraph>)]) -> Vec<String> {
    let mut subjects = BTreeSet::new();
    for (p, g) in passes {
        for files in g.target_files.values() {
            for f in files.iter().filter(|f| g.producers.contains_key(*f)) {
                subjects.insert(format!("{}/{f}", p.out_dir()));
            }
        }
    }
    subjects.into_iter().collect()
}

/// The timeline of the last build, in the cache directory.
pub const LAST_TRACE: &str = "last-build.trace.json";

/// A no-op build proven by the up-to-date snapshot: every action reported as cached.
fn up_to_date(
    cache_dir: &Path,
    command: &str,
    patterns: &[String],
    done: &[uptodate::SnapshotAction],
    ui: &dyn Frontend,
) -> Result<Summary> {
    let start = Instant::now();
    let start_unix_ms = wbuild_sched::clock_us() / 1000;
    let events = ui.start(done.len(), false).map_err(DriverError::Frontend)?;
    for a in done {
        events.event(&Event::Action {
            label: a.label.clone(),
            mnemonic: a.mnemonic.clone(),
            detail: (!a.detail.is_empty()).then(|| a.detail.clone()),
            status: Status::Cached,
            duration_ms: 0,
            start_us: wbuild_sched::clock_us(),
            duration_us: 0,
            slot: 0,
            action_digest: Some(a.action_digest.clone()),
            error: None,
            output: None,
            warnings: Vec::new(),
            accesses: None,
            platform: None,
            worker: None,
            resubmitted: false,
            phases: Vec::new(),
        });
    }
    let summary = Summary {
        cached: done.len() as u64,
        duration: start.elapsed(),
        ..Default::default()
    };
    events.event(&Event::BuildFinished {
        executed: 0,
        cached: summary.cached,
        remote_cached: 0,
        remote_executed: 0,
        remote_rpcs: None,
        remote_bytes_downloaded: None,
        failed: 0,
        skipped: 0,
        files_hashed: 0,
        modules_compiled: 0,
        duration_ms: summary.duration.as_millis() as u64,
        interrupted: false,
    });
    // Recorded without opening the index (the next store open folds it into the history).
    // A record that cannot be written costs the history a line, not the build.
    if let Err(e) = wbuild_store::record_pending_build(
        cache_dir,
        &wbuild_store::BuildRecord {
            id: 0,
            command: command.to_owned(),
            targets: patterns.to_vec(),
            start_unix_ms,
            end_unix_ms: Some(wbuild_sched::clock_us() / 1000),
            outcome: Some("success".to_owned()),
            executed: 0,
            cached: summary.cached,
            failed: 0,
        },
    ) {
        ui.note(&format!("warning: this build is not in the history: {e}"));
    }
    Ok(summary)
}
