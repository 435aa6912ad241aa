//! `wbuild`: the command-line interface of the hermetic build runtime.
//!
//! This crate only parses arguments, wires the layers together (graph -> sched -> store /
//! exec-wasi) and presents progress and results. It must never implement build semantics of
//! its own: keys, caching and sandboxing live in the library crates.

mod provenance;
mod toolchain;
mod ui;
mod verify;
mod wasi_tool;
mod worker;

/// mimalloc instead of glibc malloc: loading and analysing a large graph allocates millions
/// of small strings and vectors (see docs/BENCHMARKS.md, "load").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use wbuild_exec_wasi::{ExecConfig, WasiExecutor};
use wbuild_graph::{Label, TargetPattern, Workspace};
use wbuild_sched::{Event, EventSink, Options, Platform, Scheduler, Status, uptodate};
use wbuild_store::{Digest, Store};

#[derive(Parser)]
#[command(
    name = "wbuild",
    version,
    about = "Hermetic, cached builds of WASI tools"
)]
struct Cli {
    /// Cache directory (CAS, action cache, history). Default: $XDG_CACHE_HOME/wbuild.
    #[arg(long, global = true, env = "WBUILD_CACHE")]
    cache_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Clone)]
struct BuildArgs {
    /// Targets: //pkg:name, :name, //pkg/..., //... (default //...).
    patterns: Vec<String>,
    /// Actions to run at once (default: number of cores, or [build] jobs in wbuild.toml).
    #[arg(short, long)]
    jobs: Option<usize>,
    /// Keep building what does not depend on a failed action.
    #[arg(short, long)]
    keep_going: bool,
    /// Write one JSON object per line for every event to FILE.
    #[arg(long, value_name = "FILE")]
    events: Option<PathBuf>,
    /// Write an in-toto statement with SLSA provenance for the targets' outputs to FILE.
    #[arg(long, value_name = "FILE")]
    provenance: Option<PathBuf>,
    /// Sign the provenance (a DSSE envelope) with this minisign secret key (from
    /// `wbuild toolchain keygen`).
    #[arg(long, value_name = "KEY", requires = "provenance")]
    sign_key: Option<PathBuf>,
    /// Show the output of successful actions too.
    #[arg(long)]
    show_output: bool,
    /// Target platform of native actions: linux-x86_64 or linux-arm64; several (comma
    /// separated or repeated) build every target for each. Default: a target's own
    /// `platform` attribute, else [build] platform in wbuild.toml, else the host. Outputs for
    /// another platform than the host's go to wbuild-out/<platform>/.
    #[arg(long, value_delimiter = ',')]
    platform: Vec<String>,
    /// How native actions (genrule, cc_*) run: in Linux namespaces (default), or `none`:
    /// directly on the host, for machines without user namespaces. Results of unsandboxed
    /// actions have their own keys and are never mixed with sandboxed ones.
    #[arg(long, value_enum, default_value_t = SandboxMode::Namespaces)]
    sandbox: SandboxMode,
    /// A REAPI cache shared with others, `grpc://host:port` or over TLS `grpcs://host:port`
    /// (or [remote] url in wbuild.toml):
    /// looked up after the local cache; results built here are uploaded. If it is down or
    /// fails, the build goes on locally.
    #[arg(long)]
    remote: Option<String>,
    /// The remote's instance name (or [remote] instance).
    #[arg(long)]
    remote_instance: Option<String>,
    /// Upload results built here to the remote (or [remote] upload; default true).
    #[arg(long)]
    remote_upload: Option<bool>,
    /// A REAPI remote executor, `grpc://host:port` or `grpcs://host:port` (or [remote]
    /// executor): actions missing
    /// from the caches run on its workers (`wbuild worker`), and it serves as the remote
    /// cache. `-j` may then be far above the local core count; local runs stay within the
    /// cores. If it is unreachable, the build goes on locally.
    #[arg(long, value_name = "URL")]
    remote_executor: Option<String>,
    #[command(flatten)]
    remote_auth: RemoteAuthArgs,
}

/// How to reach a remote (`--remote`, `--remote-executor`, a worker's `--engine`): TLS
/// trust and identity for `grpcs://`, and the credentials sent with every call. These flags
/// override `[remote]` ca, client_cert, client_key, headers and token_file in wbuild.toml.
#[derive(clap::Args, Clone, Debug, Default)]
pub(crate) struct RemoteAuthArgs {
    /// Trust this CA certificate (PEM) for grpcs:// remotes, in addition to Mozilla's roots
    /// (or [remote] ca).
    #[arg(long, value_name = "FILE")]
    remote_ca: Option<PathBuf>,
    /// Present this client certificate (PEM) to grpcs:// remotes that require one; needs
    /// --remote-client-key (or [remote] client_cert).
    #[arg(long, value_name = "FILE")]
    remote_client_cert: Option<PathBuf>,
    /// The private key of --remote-client-cert (PEM; or [remote] client_key).
    #[arg(long, value_name = "FILE")]
    remote_client_key: Option<PathBuf>,
    /// Send this header with every remote call, NAME=VALUE; repeatable (adds to and
    /// overrides [remote] headers).
    #[arg(long = "remote-header", value_name = "NAME=VALUE")]
    remote_header: Vec<String>,
    /// A file holding a bearer token, sent as `authorization: Bearer <token>` with every
    /// remote call (or [remote] token_file); read at connect, so it can be rotated between
    /// builds. Needed to write to a `wbuild serve --token-file` server.
    #[arg(long, value_name = "FILE")]
    remote_token_file: Option<PathBuf>,
}

impl RemoteAuthArgs {
    /// The connection options: `[remote]` of `file` (paths relative to the workspace root),
    /// overridden by the flags. A malformed `--remote-header` is an error.
    pub(crate) fn options(
        &self,
        file: Option<(&wbuild_graph::RemoteConfig, &std::path::Path)>,
    ) -> Result<wbuild_remote::ConnectOptions> {
        let mut o = wbuild_remote::ConnectOptions::default();
        if let Some((cfg, root)) = file {
            o.ca = cfg.ca.as_ref().map(|p| root.join(p));
            o.client_cert = cfg.client_cert.as_ref().map(|p| root.join(p));
            o.client_key = cfg.client_key.as_ref().map(|p| root.join(p));
            o.token_file = cfg.token_file.as_ref().map(|p| root.join(p));
            o.headers = cfg
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect();
        }
        if let Some(p) = &self.remote_ca {
            o.ca = Some(p.clone());
        }
        if self.remote_client_cert.is_some() || self.remote_client_key.is_some() {
            o.client_cert = self.remote_client_cert.clone();
            o.client_key = self.remote_client_key.clone();
        }
        if let Some(p) = &self.remote_token_file {
            o.token_file = Some(p.clone());
        }
        for h in &self.remote_header {
            o.headers.push(wbuild_remote::parse_header(h)?);
        }
        Ok(o)
    }
}

/// Connects to `url` with `options`, first warning (on stderr) when credentials would go
/// in clear text off this machine.
pub(crate) fn connect_remote_with(
    url: &str,
    instance: &str,
    options: &wbuild_remote::ConnectOptions,
) -> Result<wbuild_remote::RemoteCache, wbuild_remote::ClientError> {
    if let Some(w) = options.cleartext_warning(url) {
        eprintln!("{w}");
    }
    wbuild_remote::RemoteCache::connect_with(url, instance, options)
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
enum SandboxMode {
    Namespaces,
    None,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build targets.
    Build(BuildArgs),
    /// Build and run wasi_test targets (results are cached like any action).
    Test(BuildArgs),
    /// Print the output files of targets, one path per line (relative to the workspace root).
    Outputs {
        #[arg(required = true)]
        targets: Vec<String>,
        /// The platforms whose outputs to list (as for `build`).
        #[arg(long, value_delimiter = ',')]
        platform: Vec<String>,
    },
    /// Show what the last run of a target's action read, wrote, listed and probed. A target
    /// with several actions (cc_*) names one by its detail: `explain //lib:greet lib/greet.c`.
    Explain {
        target: String,
        detail: Option<String>,
    },
    /// List recent builds, or the actions of one build.
    History {
        /// Build id (from the list) to show its actions.
        build: Option<u64>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Inspect and maintain the cache.
    Cache {
        #[command(subcommand)]
        command: CacheCmd,
    },
    /// Execute actions for a REAPI engine (Remote Workers API): take leases, run them with
    /// the WASI executor or the namespace sandbox, report results. Give each worker its own
    /// --cache-dir.
    Worker(worker::WorkerArgs),
    /// Serve the local cache over REAPI v2 (Capabilities, CAS, ByteStream, ActionCache; SHA-256
    /// and BLAKE3) to any REAPI client, until SIGTERM or Ctrl-C.
    Serve(ServeArgs),
    /// Rebuild targets several times from scratch (fresh workspace copies, empty caches),
    /// varying path, environment, umask, time, -j and file order, and compare every output.
    Verify(verify::VerifyArgs),
    /// Toolchain bundles: keygen, pack, sign, publish, fetch, list, verify.
    Toolchain {
        #[command(subcommand)]
        command: toolchain::ToolchainCmd,
    },
    /// Run a WASI tool for a native command (used by the launchers wbuild stages).
    #[command(hide = true)]
    ExecWasiTool(wasi_tool::ExecWasiTool),
}

#[derive(Subcommand)]
enum CacheCmd {
    /// Sizes and counts.
    Stats,
    /// Evict least-recently-used blobs until the store is under a size cap.
    Gc {
        /// Size cap, e.g. 500M, 1G, 1048576.
        #[arg(long)]
        max_size: String,
    },
    /// Re-hash every blob; evict corrupt ones and drop entries that refer to them.
    Verify,
    /// Drop action-cache entries known to be bad, by target label or action digest.
    Invalidate {
        #[arg(required = true)]
        what: Vec<String>,
    },
}

/// Set once a panic inside redb was reported.
static REDB_PANICKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The cache directory in use, for the panic hook.
static CACHE_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// A panic inside redb means the cache index is damaged (redb trusts its pages on ordinary
/// reads): say so plainly, and have the next open check and repair the index.
fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_redb = info.location().is_some_and(|l| l.file().contains("/redb-"));
        if in_redb && wbuild_store::redb_panic_is_handled() {
            return; // the store turns it into an error and repairs
        }
        // After a redb panic in a worker, the panics it causes elsewhere say nothing new.
        if REDB_PANICKED.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        if in_redb && let Some(dir) = CACHE_DIR.get() {
            REDB_PANICKED.store(true, std::sync::atomic::Ordering::SeqCst);
            Store::request_index_check(dir);
            let what = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            eprintln!(
                "error: the cache index {} is damaged (redb: {what}); nothing was built from it. The next wbuild command checks and repairs it; `wbuild cache verify` does so now.",
                dir.join("index.redb").display()
            );
            return;
        }
        default(info);
    }));
}

fn main() {
    install_panic_hook();
    let cli = Cli::parse();
    let _ = CACHE_DIR.set(cli.cache_dir.clone().unwrap_or_else(Store::default_dir));
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

fn open_store(cli_dir: &Option<PathBuf>) -> Result<Arc<Store>> {
    open_store_with(cli_dir, wbuild_store::DigestFunction::Blake3)
}

/// The store, hashing with `f` (a remote cache's function, so keys match the remote's).
fn open_store_with(
    cli_dir: &Option<PathBuf>,
    f: wbuild_store::DigestFunction,
) -> Result<Arc<Store>> {
    let dir = cli_dir.clone().unwrap_or_else(Store::default_dir);
    let store = match Store::open_with_timeout(&dir, f, Duration::from_millis(200)) {
        Err(wbuild_store::StoreError::Locked { .. }) => {
            eprintln!(
                "waiting for another wbuild process that is using the cache {}",
                dir.display()
            );
            Store::open_with(&dir, f)
        }
        other => other,
    };
    let store = store.with_context(|| format!("cannot open cache {}", dir.display()))?;
    match store.index_check() {
        Some(wbuild_store::IndexCheck::Repaired) => {
            eprintln!("note: the cache index was damaged; redb repaired it")
        }
        Some(wbuild_store::IndexCheck::Replaced { aside, reason }) => eprintln!(
            "warning: the cache index was damaged beyond repair ({reason}); moved aside to {} and rebuilt: actions whose cache entries were lost run again",
            aside.display()
        ),
        _ => {}
    }
    Ok(Arc::new(store))
}

fn workspace() -> Result<(Workspace, String)> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let ws = Workspace::discover(&cwd)?;
    let pkg = ws.package_of_dir(&cwd);
    Ok((ws, pkg))
}

/// The workspace with its pinned toolchains resolved (fetched and verified if needed).
fn workspace_resolved(cli: &Cli) -> Result<(Workspace, String)> {
    let (mut ws, pkg) = workspace()?;
    toolchain::resolve_workspace(&mut ws, &cli.cache_dir)?;
    Ok((ws, pkg))
}

fn run(cli: Cli) -> Result<i32> {
    match &cli.command {
        Cmd::Build(args) => build(&cli, args, false),
        Cmd::Test(args) => build(&cli, args, true),
        Cmd::Outputs { targets, platform } => outputs(&cli, targets, platform),
        Cmd::Explain { target, detail } => explain(&cli, target, detail.as_deref()),
        Cmd::History { build, limit } => history(&cli, *build, *limit),
        Cmd::Cache { command } => cache(&cli, command),
        Cmd::ExecWasiTool(a) => wasi_tool::run(a),
        Cmd::Verify(a) => verify::run(cli.cache_dir.is_some(), a),
        Cmd::Serve(args) => serve(&cli, args),
        Cmd::Worker(args) => worker::run(&cli.cache_dir, args),
        Cmd::Toolchain { command } => toolchain::run(&cli.cache_dir, command),
    }
}

/// `WBUILD_PROFILE=1` prints how long each phase of a command took.
struct Phases(Option<std::time::Instant>);
impl Phases {
    fn new() -> Phases {
        Phases(
            std::env::var_os("WBUILD_PROFILE")
                .is_some()
                .then(std::time::Instant::now),
        )
    }
    fn mark(&mut self, what: &str) {
        if let Some(t) = &mut self.0 {
            eprintln!(
                "[profile] {what}: {:.1} ms",
                t.elapsed().as_secs_f64() * 1e3
            );
            *t = std::time::Instant::now();
        }
    }
}

/// The platforms named with `--platform` (none: see [`default_platform`]).
fn flag_platforms(flags: &[String]) -> Result<Vec<Platform>> {
    let mut out: Vec<Platform> = Vec::new();
    for f in flags {
        let p = Platform::parse(f.trim()).map_err(|e| anyhow::anyhow!("--platform: {e}"))?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// The platform of targets without a `platform` attribute when `--platform` is not given:
/// `[build] platform`, else the host.
fn default_platform(ws: &Workspace) -> Result<Platform> {
    let Some(name) = ws.config.build.platform.as_deref() else {
        return Ok(Platform::host());
    };
    Platform::parse(name).map_err(|e| {
        anyhow::anyhow!(
            "[build] platform in {}: {e}",
            ws.root.join("wbuild.toml").display()
        )
    })
}

/// What to build for which platform: with `--platform`, every root for each platform named;
/// otherwise roots grouped by their `platform` attribute (the rest on the default platform).
/// `None` stands for the whole graph.
fn platform_passes(
    ws: &Workspace,
    flags: &[Platform],
    graph: &wbuild_graph::ActionGraph,
    roots: &[Label],
) -> Result<Vec<(Platform, Option<Vec<Label>>)>> {
    if !flags.is_empty() {
        return Ok(flags.iter().map(|p| (*p, None)).collect());
    }
    let default = default_platform(ws)?;
    let mut groups: BTreeMap<&'static str, (Platform, Vec<Label>)> = BTreeMap::new();
    for r in roots {
        let p = match graph.root_platforms.get(r) {
            Some(name) => Platform::parse(name).map_err(|e| anyhow::anyhow!("{r}: {e}"))?,
            None => default,
        };
        groups
            .entry(p.name())
            .or_insert((p, Vec::new()))
            .1
            .push(r.clone());
    }
    Ok(match groups.len() {
        0 | 1 => vec![(groups.into_values().next().map_or(default, |g| g.0), None)],
        _ => groups.into_values().map(|(p, r)| (p, Some(r))).collect(),
    })
}

/// A clear error up front when the cross toolchain for `p` is not installed.
fn check_cross_toolchain(p: Platform) -> Result<()> {
    if p == Platform::host() {
        return Ok(());
    }
    for (_, tool) in p.tool_env() {
        let Some(program) = tool.split_whitespace().next() else {
            continue;
        };
        if !std::path::Path::new("/usr/bin").join(program).exists() {
            let t = p.triple();
            let package = if program.starts_with("qemu") {
                "qemu-user-static".to_owned()
            } else if program.ends_with("-g++") {
                format!("g++-{t}")
            } else if program.ends_with("-gcc") {
                format!("gcc-{t}")
            } else {
                format!("binutils-{t}")
            };
            bail!(
                "building for {} needs /usr/bin/{program}, which is not installed: install the Debian package {package} (apt-get install {package})",
                p.name()
            );
        }
    }
    Ok(())
}

fn build(cli: &Cli, args: &BuildArgs, tests: bool) -> Result<i32> {
    let mut phases = Phases::new();
    let (ws, pkg) = workspace_resolved(cli)?;
    let flags = flag_platforms(&args.platform)?;
    let patterns = parse_patterns(&args.patterns, &pkg)?;
    let (remote, executor) = connect_remote(&ws, args)?;
    phases.mark("remote");
    let function = remote
        .as_ref()
        .map_or(wbuild_store::DigestFunction::Blake3, |r| r.function());
    let store = open_store_with(&cli.cache_dir, function)?;
    phases.mark("open store");
    let command = if tests { "test" } else { "build" };
    let signature = wbuild_graph::workspace_signature(&ws)?;
    let snapshot = uptodate::snapshot_path(
        store.dir(),
        &snapshot_key(&ws, &patterns, tests, &flags, args.sandbox, function),
    );
    let pattern_names: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
    if !args.show_output
        && args.provenance.is_none()
        && let Some(done) = uptodate::check(&snapshot, signature.as_bytes())
    {
        phases.mark("up-to-date check");
        return up_to_date(&store, command, &pattern_names, &done, args, tests);
    }
    phases.mark("up-to-date check");
    let started = std::time::SystemTime::now();
    let (actions, roots, analysis_cached) = analyse(&ws, &store, &patterns, tests, &signature)?;
    let passes: Vec<(Platform, std::borrow::Cow<'_, wbuild_graph::ActionGraph>)> =
        platform_passes(&ws, &flags, &actions, &roots)?
            .into_iter()
            .map(|(p, roots)| {
                let g = match roots {
                    Some(r) => std::borrow::Cow::Owned(actions.subgraph(&r)),
                    None => std::borrow::Cow::Borrowed(&actions),
                };
                (p, g)
            })
            .collect();
    let is_native = |g: &wbuild_graph::ActionGraph| {
        g.actions
            .iter()
            .any(|a| a.exec == wbuild_graph::Exec::Native)
    };
    let mut bundles = BTreeMap::new();
    for (p, g) in &passes {
        let bundle = toolchain::native_for(&ws, p.name())?;
        if is_native(g) {
            match &bundle {
                Some(tc) if args.sandbox == SandboxMode::None => bail!(
                    "the pinned toolchain {} for {} is the whole system of native actions, which needs the sandbox; drop --sandbox=none",
                    tc.name,
                    p.name()
                ),
                Some(_) => {}
                None => check_cross_toolchain(*p)?,
            }
        }
        bundles.insert(p.name(), bundle);
    }
    if passes.iter().any(|(_, g)| is_native(g)) {
        match args.sandbox {
            SandboxMode::Namespaces => wbuild_exec_native::probe().map_err(|e| {
                anyhow::anyhow!(
                    "{e}\n(or run native actions unsandboxed with --sandbox=none; their results are marked as such)"
                )
            })?,
            SandboxMode::None => eprintln!(
                "warning: --sandbox=none: native actions run directly on this machine, unisolated; their results are keyed apart and must never be shared"
            ),
        }
    }
    phases.mark(if analysis_cached {
        "load + analyse (cached)"
    } else {
        "load + analyse"
    });
    let jobs = args
        .jobs
        .or(ws.config.build.jobs)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let exec = Arc::new(WasiExecutor::new(&ExecConfig {
        modules_dir: store.modules_dir(),
        max_concurrent: jobs as u32,
    })?);
    let opts = Options {
        jobs,
        keep_going: args.keep_going,
        epoch_secs: ws.config.build.source_date_epoch,
        memory_limit_bytes: ws.config.wasi.memory_limit_mb << 20,
        timeout: Duration::from_secs(ws.config.wasi.timeout_secs),
        show_output: args.show_output,
        platform: Platform::host(),
        unsandboxed: args.sandbox == SandboxMode::None,
        remote_upload: args
            .remote_upload
            .or(ws.config.remote.upload)
            .unwrap_or(true),
        native_toolchain: None,
    };
    let build_id = store.begin_build(command, &pattern_names)?;
    phases.mark("engine + history");
    let total: usize = passes.iter().map(|(_, g)| g.actions.len()).sum();
    let ui = ui::Ui::new(total, args.events.as_deref())?;
    ctrlc::set_handler(wbuild_sched::interrupt).context("cannot install the Ctrl-C handler")?;
    let local_jobs = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(jobs);
    let sched = Scheduler::new(&ws, store.clone(), exec, &ui, Some(build_id))
        .with_remote(remote)
        .with_executor(executor, local_jobs);
    let runs: Vec<(&wbuild_graph::ActionGraph, Options)> = passes
        .iter()
        .map(|(p, g)| {
            let mut o = opts.clone();
            o.platform = *p;
            o.native_toolchain = bundles.get(p.name()).cloned().flatten();
            (g.as_ref(), o)
        })
        .collect();
    let summaries = sched.run_passes(&runs);
    phases.mark("schedule");
    let summary = summaries.map(|all| merge_summaries(all, &passes));
    let outcome = match &summary {
        Ok(s) if s.interrupted => "interrupted",
        Ok(s) if s.success() => "success",
        _ => "failed",
    };
    store.finish_build(build_id, outcome)?; // flushes durably
    phases.mark("record + flush");
    let summary = summary?;
    if summary.success() {
        let abs = |p: &String| ws.path(p);
        let sources: Vec<PathBuf> = summary.sources.iter().map(abs).collect();
        let outputs: Vec<PathBuf> = summary.outputs.keys().map(|p| ws.root.join(p)).collect();
        // Best effort: without a snapshot the next no-op build takes the full path.
        let _ = uptodate::save(
            &snapshot,
            signature.as_bytes(),
            &sources,
            &outputs,
            &summary.actions,
        );
    } else {
        let _ = std::fs::remove_file(&snapshot);
    }
    if summary.success()
        && let Some(out) = &args.provenance
    {
        let mut subjects = Vec::new();
        let mut platforms = Vec::new();
        for (p, g) in &passes {
            for files in g.target_files.values() {
                for f in files.iter().filter(|f| g.producers.contains_key(*f)) {
                    subjects.push(format!("{}/{f}", p.out_dir()));
                }
            }
            // A platform with a pinned bundle is identified by it (in `toolchains`).
            let host_toolchain = bundles.get(p.name()).is_some_and(|b| b.is_none());
            platforms.push((
                p.name().to_owned(),
                (is_native(g) && host_toolchain).then(|| wbuild_sched::toolchain_identity(*p)),
            ));
        }
        subjects.sort();
        subjects.dedup();
        let facts = provenance::BuildFacts {
            ws: &ws,
            subjects,
            sources: &summary.sources,
            patterns: &pattern_names,
            platforms,
            source_date_epoch: opts.epoch_secs,
            sandbox: if opts.unsandboxed {
                "none"
            } else {
                "namespaces"
            },
            build_id,
            started,
        };
        provenance::write(out, &facts, args.sign_key.as_deref())?;
    }
    ui.finish(&summary, tests);
    Ok(if summary.interrupted {
        130
    } else if summary.success() {
        0
    } else {
        1
    })
}

/// One summary for a build of several platform passes; outputs keyed by their place under the
/// workspace (`wbuild-out/<platform>/...`). A pass that never ran (the build stopped before
/// it) counts as skipped work.
fn merge_summaries(
    all: Vec<wbuild_sched::Summary>,
    passes: &[(Platform, std::borrow::Cow<'_, wbuild_graph::ActionGraph>)],
) -> wbuild_sched::Summary {
    let mut total = wbuild_sched::Summary::default();
    let mut sources = std::collections::BTreeSet::new();
    let ran = all.len();
    for (s, (p, _)) in all.into_iter().zip(passes) {
        total.executed += s.executed;
        total.cached += s.cached;
        total.remote_cached += s.remote_cached;
        total.remote_executed += s.remote_executed;
        total.failed += s.failed;
        total.skipped += s.skipped;
        total.interrupted |= s.interrupted;
        total.duration += s.duration;
        sources.extend(s.sources);
        total.actions.extend(s.actions);
        let dir = p.out_dir();
        total.outputs.extend(
            s.outputs
                .into_iter()
                .map(|(k, d)| (format!("{dir}/{k}"), d)),
        );
    }
    for (_, g) in passes.iter().skip(ran) {
        total.skipped += g.actions.len() as u64;
    }
    total.sources = sources.into_iter().collect();
    total
}

/// Load and analyse, reusing the analysis cached in the store when the workspace is unchanged.
fn analyse(
    ws: &Workspace,
    store: &Store,
    patterns: &[TargetPattern],
    tests: bool,
    signature: &wbuild_graph::Signature,
) -> Result<(wbuild_graph::ActionGraph, Vec<Label>, bool)> {
    Ok(wbuild_graph::load_and_analyse_cached(
        ws,
        patterns,
        tests,
        &store.dir().join("analysis"),
        signature,
    )?)
}

/// Names the snapshot of one (workspace, patterns, command) for this version of wbuild.
fn snapshot_key(
    ws: &Workspace,
    patterns: &[TargetPattern],
    tests: bool,
    platforms: &[Platform],
    sandbox: SandboxMode,
    function: wbuild_store::DigestFunction,
) -> String {
    let names: Vec<&str> = platforms.iter().map(|p| p.name()).collect();
    let mut text = format!(
        "{}\0{}\0{}\0{}\0{}\0{sandbox:?}\0{tests}\0{}",
        env!("CARGO_PKG_VERSION"),
        wbuild_graph::binary_identity(),
        wbuild_exec_wasi::EXECUTOR_VERSION,
        ws.root.display(),
        names.join(","),
        function.name()
    );
    for p in patterns {
        text.push('\0');
        text.push_str(&p.to_string());
    }
    wbuild_store::Digest::of(wbuild_store::DigestFunction::Blake3, text.as_bytes()).hex()
}

/// A no-op build proven by the up-to-date snapshot: report every action as cached.
fn up_to_date(
    store: &Store,
    command: &str,
    patterns: &[String],
    done: &[uptodate::SnapshotAction],
    args: &BuildArgs,
    tests: bool,
) -> Result<i32> {
    let start = std::time::Instant::now();
    let build_id = store.begin_build(command, patterns)?;
    let ui = ui::Ui::new(done.len(), args.events.as_deref())?;
    for a in done {
        ui.event(&Event::Action {
            label: a.label.clone(),
            mnemonic: a.mnemonic.clone(),
            detail: (!a.detail.is_empty()).then(|| a.detail.clone()),
            status: Status::Cached,
            duration_ms: 0,
            action_digest: Some(a.action_digest.clone()),
            error: None,
            output: None,
            warnings: Vec::new(),
            accesses: None,
            platform: None,
            worker: None,
            resubmitted: false,
        });
    }
    let summary = wbuild_sched::Summary {
        cached: done.len() as u64,
        duration: start.elapsed(),
        ..Default::default()
    };
    ui.event(&Event::BuildFinished {
        executed: 0,
        cached: summary.cached,
        remote_cached: 0,
        remote_executed: 0,
        remote_rpcs: None,
        failed: 0,
        skipped: 0,
        files_hashed: 0,
        modules_compiled: 0,
        duration_ms: summary.duration.as_millis() as u64,
        interrupted: false,
    });
    store.record_up_to_date(build_id, summary.cached)?;
    store.finish_build(build_id, "success")?;
    ui.finish(&summary, tests);
    Ok(0)
}

fn parse_patterns(patterns: &[String], pkg: &str) -> Result<Vec<TargetPattern>> {
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

fn outputs(cli: &Cli, targets: &[String], platform_flags: &[String]) -> Result<i32> {
    let (ws, pkg) = workspace_resolved(cli)?;
    let flags = flag_platforms(platform_flags)?;
    let patterns = parse_patterns(targets, &pkg)?;
    let store = open_store(&cli.cache_dir)?;
    let signature = wbuild_graph::workspace_signature(&ws)?;
    let (actions, roots, _) = analyse(&ws, &store, &patterns, false, &signature)?;
    for (platform, group) in platform_passes(&ws, &flags, &actions, &roots)? {
        let out_dir = platform.out_dir();
        for label in group.as_deref().unwrap_or(&roots) {
            for path in actions.target_files.get(label).into_iter().flatten() {
                if actions.producers.contains_key(path) {
                    println!("{out_dir}/{path}");
                } else {
                    println!("{path}");
                }
            }
        }
    }
    Ok(0)
}

fn explain(cli: &Cli, target: &str, detail: Option<&str>) -> Result<i32> {
    let (_ws, pkg) = workspace()?;
    let label = Label::parse(target, &pkg)?;
    let store = open_store(&cli.cache_dir)?;
    // History names actions as `ActionNode::name()` does: the label, then the detail.
    let wanted = match detail {
        Some(d) => format!("{label} {d}"),
        None => label.to_string(),
    };
    // The most recent builds are enough: an action older than that has been rebuilt or is
    // long out of date.
    for b in store.builds(100)? {
        let found = store
            .build_actions(b.id)?
            .into_iter()
            .find(|a| a.label == wanted && !a.action_digest.is_empty());
        let Some(rec) = found else { continue };
        println!("{wanted}");
        println!("  action digest: {}", rec.action_digest);
        println!(
            "  last seen in build {} ({}), status {}, {} ms",
            b.id, b.command, rec.status, rec.duration_ms
        );
        let digest: Digest = rec
            .action_digest
            .parse()
            .with_context(|| format!("bad digest in history: {}", rec.action_digest))?;
        match store.access_log(&digest)? {
            Some(json) => {
                let log = wbuild_exec_wasi::AccessLog::from_json(&json)?;
                println!("  accesses ({}):", log.accesses.len());
                for a in &log.accesses {
                    println!(
                        "    {:<8} {}",
                        format!("{:?}", a.kind).to_lowercase(),
                        a.path
                    );
                }
            }
            None => println!(
                "  no access log recorded (the action was satisfied from the cache without running here)"
            ),
        }
        return Ok(0);
    }
    bail!("{wanted} has not been built with this cache yet: run `wbuild build {wanted}` first")
}

fn history(cli: &Cli, build: Option<u64>, limit: usize) -> Result<i32> {
    let store = open_store(&cli.cache_dir)?;
    match build {
        None => {
            println!(
                "{:>5}  {:<6}  {:<11}  {:>8}  {:>6}  {:>6}  {:>6}  targets",
                "id", "cmd", "outcome", "ms", "exec", "cached", "failed"
            );
            for b in store.builds(limit)? {
                let ms = b.end_unix_ms.map(|e| e.saturating_sub(b.start_unix_ms));
                println!(
                    "{:>5}  {:<6}  {:<11}  {:>8}  {:>6}  {:>6}  {:>6}  {}",
                    b.id,
                    b.command,
                    b.outcome.as_deref().unwrap_or("unfinished"),
                    ms.map_or("-".to_owned(), |m| m.to_string()),
                    b.executed,
                    b.cached,
                    b.failed,
                    b.targets.join(" ")
                );
            }
        }
        Some(id) => {
            let actions = store.build_actions(id)?;
            if actions.is_empty()
                && let Some(b) = store.builds(usize::MAX)?.into_iter().find(|b| b.id == id)
                && b.cached > 0
            {
                println!(
                    "all {} actions were up to date (a no-op build: their stats matched the snapshot of the build before)",
                    b.cached
                );
            }
            for a in actions {
                println!(
                    "{:<9} {:>7} ms  {}  {}",
                    a.status, a.duration_ms, a.label, a.action_digest
                );
            }
        }
    }
    Ok(0)
}

type Remote = Option<Arc<wbuild_remote::RemoteCache>>;

/// The remote cache of `--remote` or `[remote] url` and the remote executor of
/// `--remote-executor` or `[remote] executor` (which is the remote cache too, unless another
/// is named), each if set and answering; otherwise a warning and a local build.
fn connect_remote(ws: &Workspace, args: &BuildArgs) -> Result<(Remote, Remote)> {
    let cache_url = args.remote.as_ref().or(ws.config.remote.url.as_ref());
    let exec_url = args
        .remote_executor
        .as_ref()
        .or(ws.config.remote.executor.as_ref());
    let instance = args
        .remote_instance
        .as_ref()
        .or(ws.config.remote.instance.as_ref())
        .map_or("", String::as_str);
    if let (Some(c), Some(e)) = (cache_url, exec_url)
        && c != e
    {
        bail!(
            "--remote {c} and --remote-executor {e} differ: the executor's workers read inputs from and write results to its own CAS, so use one endpoint (drop --remote)"
        );
    }
    let Some(url) = exec_url.or(cache_url) else {
        return Ok((None, None));
    };
    let what = if exec_url.is_some() {
        "remote executor"
    } else {
        "remote cache"
    };
    let options = args
        .remote_auth
        .options(Some((&ws.config.remote, &ws.root)))?;
    match connect_remote_with(url, instance, &options) {
        Ok(r) => {
            let r = Arc::new(r);
            let executor = exec_url.is_some().then(|| r.clone());
            Ok((Some(r), executor))
        }
        // Options that cannot be used are a mistake to fix, not an outage to build through.
        Err(e @ wbuild_remote::ClientError::Options(_)) => {
            Err(anyhow::Error::new(e).context(format!("cannot use the {what} {url}")))
        }
        Err(e) => {
            eprintln!("warning: {e}; building without the {what}");
            Ok((None, None))
        }
    }
}

/// `wbuild serve`: who may read and write, TLS, and the bounds of an upload.
#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:50051 (port 0: any free port, printed).
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: String,
    /// File holding the bearer token (`authorization: Bearer <token>`) that every write
    /// (UpdateActionResult, BatchUpdateBlobs, ByteStream Write) must present.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Accept writes without the token: anyone who can connect may write (and poison) the
    /// cache. Needed when no --token-file is given.
    #[arg(long)]
    allow_anonymous_writes: bool,
    /// Every read needs the token too.
    #[arg(long, requires = "token_file")]
    require_token_for_reads: bool,
    /// The instance name served; requests naming another are refused.
    #[arg(long, default_value = "")]
    instance: String,
    /// Largest blob a ByteStream upload may declare (e.g. 512M, 4G).
    #[arg(long, value_name = "SIZE", default_value = "4G")]
    max_blob_size: String,
    /// Serve over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require clients to present a certificate signed by this CA (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
}

fn serve(cli: &Cli, args: &ServeArgs) -> Result<i32> {
    let token = match &args.token_file {
        Some(p) => {
            let t = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the token file {}", p.display()))?;
            let t = t.trim().to_owned();
            if t.is_empty() {
                bail!("the token file {} is empty", p.display());
            }
            Some(t)
        }
        None => None,
    };
    let read = |p: &PathBuf, what: &str| {
        std::fs::read(p).with_context(|| format!("cannot read the {what} {}", p.display()))
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(wbuild_remote::TlsConfig {
            cert_pem: read(cert, "TLS certificate (--tls-cert)")?,
            key_pem: read(key, "TLS key (--tls-key)")?,
            client_ca_pem: match &args.tls_client_ca {
                Some(ca) => Some(read(ca, "client CA (--tls-client-ca)")?),
                None => None,
            },
        }),
        _ => None,
    };
    let max_blob_size = parse_size(&args.max_blob_size).context("--max-blob-size")?;
    let config = wbuild_remote::ServeConfig {
        token,
        allow_anonymous_writes: args.allow_anonymous_writes,
        require_token_for_reads: args.require_token_for_reads,
        instance: args.instance.clone(),
        max_blob_size,
        tls,
        ..Default::default()
    };
    // Refuse a server anyone may write to unless the operator asked for one, before the
    // cache is touched.
    config.validate()?;
    // The cache stays usable by local builds: the server holds it only while it has
    // requests to answer (released after 200 ms idle; requests wait up to 30 s for a build).
    let dir = cli.cache_dir.clone().unwrap_or_else(Store::default_dir);
    let store = Arc::new(
        wbuild_remote::SharedStore::new(
            dir.clone(),
            wbuild_store::DigestFunction::Blake3,
            Duration::from_millis(200),
            Duration::from_secs(30),
        )
        .with_context(|| format!("cannot open cache {}", dir.display()))?,
    );
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let listen = args.listen.as_str();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        eprintln!(
            "serving {} over REAPI v2 on {addr} (SHA-256 and BLAKE3; {}; writes {}{})",
            store.dir().display(),
            if config.tls.is_some() {
                "TLS"
            } else {
                "plain text"
            },
            if config.token.is_some() && !config.allow_anonymous_writes {
                "need the bearer token"
            } else {
                "are open to every client"
            },
            if config.require_token_for_reads {
                ", reads need it too"
            } else {
                ""
            }
        );
        if let Some(w) = config.cleartext_token_warning(addr) {
            eprintln!("{w}");
        }
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            eprintln!("shutting down: finishing requests in flight");
        };
        wbuild_remote::serve(store.clone(), listener, config, shutdown).await?;
        store.close();
        anyhow::Ok(())
    })?;
    Ok(0)
}

fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = s[i..].to_ascii_uppercase();
            let m = match unit.as_str() {
                "B" => 1,
                "K" | "KB" | "KIB" => 1 << 10,
                "M" | "MB" | "MIB" => 1 << 20,
                "G" | "GB" | "GIB" => 1 << 30,
                "T" | "TB" | "TIB" => 1u64 << 40,
                _ => bail!("unknown size unit in {s:?}: use K, M, G or T"),
            };
            (&s[..i], m)
        }
        None => (s, 1),
    };
    let n: f64 = num
        .trim()
        .parse()
        .with_context(|| format!("not a size: {s:?} (examples: 500M, 1G)"))?;
    Ok((n * mult as f64) as u64)
}

fn cache(cli: &Cli, cmd: &CacheCmd) -> Result<i32> {
    if matches!(cmd, CacheCmd::Verify) {
        // Verify checks every page of the index too (as the open after a redb panic does).
        let dir = cli.cache_dir.clone().unwrap_or_else(Store::default_dir);
        if dir.join("index.redb").exists() {
            Store::request_index_check(&dir);
        }
    }
    let store = open_store(&cli.cache_dir)?;
    let index_damaged = match store.index_check() {
        Some(wbuild_store::IndexCheck::Repaired) => {
            println!(
                "index {}: damaged pages found and repaired",
                store.dir().join("index.redb").display()
            );
            true
        }
        Some(wbuild_store::IndexCheck::Replaced { aside, reason }) => {
            println!(
                "index {}: damaged beyond repair ({reason}); moved aside to {} and rebuilt (blobs are kept; actions whose cache entries were lost run again)",
                store.dir().join("index.redb").display(),
                aside.display()
            );
            true
        }
        _ => false,
    };
    if !matches!(cmd, CacheCmd::Stats) {
        // Whatever these change, the next build must look at the action cache again.
        uptodate::forget_all(store.dir());
    }
    match cmd {
        CacheCmd::Stats => {
            let s = store.stats()?;
            println!("cache directory:    {}", store.dir().display());
            println!(
                "blobs:              {} ({})",
                s.blobs,
                ui::bytes(s.blob_bytes)
            );
            println!("action-cache:       {} entries", s.ac_entries);
            println!("access logs:        {}", s.access_logs);
            println!("stat cache:         {} files", s.stat_cache_entries);
            println!("builds recorded:    {}", s.builds);
        }
        CacheCmd::Gc { max_size } => {
            let max = parse_size(max_size)?;
            let r = store.gc(max)?;
            println!(
                "gc: {} blobs ({}) -> {} blobs ({}); deleted {} blobs ({}), dropped {} action-cache entries, removed {} stale temp entries",
                r.blobs_before,
                ui::bytes(r.bytes_before),
                r.blobs_after,
                ui::bytes(r.bytes_after),
                r.blobs_deleted,
                ui::bytes(r.bytes_deleted),
                r.ac_entries_dropped,
                r.tmp_entries_removed
            );
        }
        CacheCmd::Verify => {
            let r = store.verify()?;
            store.flush()?;
            println!(
                "verified {} blobs ({})",
                r.blobs_checked,
                ui::bytes(r.bytes_checked)
            );
            for c in &r.corrupt {
                println!(
                    "corrupt blob {} at {} (evicted; actions that produced it will run again)",
                    c.digest,
                    c.path.display()
                );
            }
            for p in &r.stray_files_removed {
                println!("removed stray file {}", p.display());
            }
            if r.ac_entries_dropped > 0 {
                println!(
                    "dropped {} action-cache entries that referred to missing or corrupt blobs",
                    r.ac_entries_dropped
                );
            }
            println!(
                "repaired index: {} metadata rows added, {} removed, {} stale stat entries, {} temp entries cleaned",
                r.metadata_added, r.metadata_removed, r.stat_entries_dropped, r.tmp_entries_removed
            );
            // Index rows lost in a crash are routine repairs; damaged data is not.
            if index_damaged
                || !r.corrupt.is_empty()
                || !r.stray_files_removed.is_empty()
                || r.ac_entries_dropped > 0
            {
                println!("the cache was inconsistent; see above for what was repaired");
                return Ok(1);
            }
            println!("cache is consistent");
        }
        CacheCmd::Invalidate { what } => {
            let mut n = 0;
            for w in what {
                if w.starts_with("//") || w.starts_with(':') {
                    let pkg = workspace().map(|(_, p)| p).unwrap_or_default();
                    let label = Label::parse(w, &pkg)?.to_string();
                    for d in store.ac_find_by_label(&label)? {
                        n += store.ac_remove(&d)? as u64;
                    }
                } else {
                    let d: Digest = w.parse().with_context(|| {
                        format!("{w:?} is neither a target label (//pkg:name) nor an action digest")
                    })?;
                    n += store.ac_remove(&d)? as u64;
                }
            }
            store.flush()?;
            println!("dropped {n} action-cache entries");
        }
    }
    Ok(0)
}
