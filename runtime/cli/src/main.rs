//! `wbuild`: the command-line interface of the hermetic build runtime.
//!
//! This crate only parses arguments, calls the build driver (`wbuild_driver`: the build
//! session, toolchain resolution, provenance, the worker) and presents progress, results
//! and exit codes. It must never implement build semantics of its own: keys, caching,
//! sandboxing and the build session live in the library crates.

mod aquery;
mod clean;
mod log;
mod query;
mod report;
mod run;
mod toolchain;
mod ui;
mod verify;
mod version;
mod wasi_tool;
mod why;
mod worker;

/// mimalloc instead of glibc malloc: loading and analysing a large graph allocates millions
/// of small strings and vectors (see docs/BENCHMARKS.md, "load").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option: its place in `mi_option_e` (mimalloc 3, as
/// libmimalloc-sys 0.1.49 builds it; the test below checks that it is that option).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory stays resident before mimalloc returns it to the system. mimalloc 3
/// waits a second, longer than most of wbuild's runs: memory freed while a large graph is
/// loaded and analysed (the evaluated packages, once resolved) was never returned, and a
/// cold load of 100,000 targets peaked at about 416 MiB. After 100 ms it peaked at about
/// 327 MiB. Once that load took 1.2 s, the packages freed after resolution were still
/// resident 100 ms later, at the analysis's start: its peak was 262-270 MiB, and 243-247
/// MiB at 30 ms (10 ms: 236-245). Shorter delays cost wbuild's own CPU in a clean build of
/// the C graph (pages a worker frees between actions returned and faulted again: about 5 %
/// at 10 ms; at 30 ms within the noise of 4 runs); with none, every free page was (0.7 s
/// more system time on that load). `MIMALLOC_PURGE_DELAY` overrides it.
const PURGE_DELAY_MS: std::ffi::c_long = 30;

/// Sets mimalloc's options (before any thread but the main one runs).
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a plain integer option of the allocator in use.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use wbuild_graph::{Label, Workspace};
use wbuild_sched::uptodate;
use wbuild_store::{Digest, Store};

#[derive(Parser)]
#[command(
    name = "wbuild",
    version,
    long_version = version::long_version(),
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
    /// Write the build's timeline to FILE: a Chrome trace (Perfetto, chrome://tracing) with
    /// the phases, every action on its worker slot, and the critical path. The last build's
    /// is always in the cache directory (last-build.trace.json).
    #[arg(long, value_name = "FILE")]
    profile: Option<PathBuf>,
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
    /// How native actions (genrule, cc_*) run: in Linux namespaces with every file access
    /// observed (default: access logs, exact path sets, undeclared reads are errors),
    /// `unobserved`: in the same namespaces without observing (same keys), or `none`:
    /// directly on the host, for machines without user namespaces. Results of unsandboxed
    /// actions have their own keys and are never mixed with sandboxed ones.
    #[arg(long, value_enum, default_value_t = SandboxMode::Namespaces)]
    sandbox: SandboxMode,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// Where the remote cache and executor are and how outputs come from them (each overrides
/// `[remote]` in wbuild.toml).
#[derive(clap::Args, Clone)]
struct RemoteArgs {
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
    /// Which outputs of remote results to download (or [remote] download): `all`;
    /// `toplevel`, those of the requested targets (the default with a remote executor);
    /// `minimal`, none. Outputs left on the remote are fetched when an action here needs
    /// them, and rebuilt if the remote has lost them.
    #[arg(long, value_enum, value_name = "WHICH")]
    remote_download: Option<RemoteDownloadArg>,
    #[command(flatten)]
    remote_auth: RemoteAuthArgs,
}

impl RemoteArgs {
    /// The flags as the driver takes them.
    fn request(&self) -> wbuild_driver::RemoteRequest {
        wbuild_driver::RemoteRequest {
            cache: self.remote.clone(),
            executor: self.remote_executor.clone(),
            instance: self.remote_instance.clone(),
            upload: self.remote_upload,
            download: self.remote_download.map(RemoteDownloadArg::mode),
            auth: self.remote_auth.auth(),
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
enum RemoteDownloadArg {
    All,
    Toplevel,
    Minimal,
}

impl RemoteDownloadArg {
    fn mode(self) -> wbuild_graph::RemoteDownload {
        match self {
            RemoteDownloadArg::All => wbuild_graph::RemoteDownload::All,
            RemoteDownloadArg::Toplevel => wbuild_graph::RemoteDownload::Toplevel,
            RemoteDownloadArg::Minimal => wbuild_graph::RemoteDownload::Minimal,
        }
    }
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
    /// A credential helper, as Bazel's --credential_helper: run as `PROGRAM get` at connect
    /// with {"uri": URL} on stdin, it prints {"headers": {"name": ["value"]}}, sent with
    /// every remote call (or [remote] credential_helper); it has 10 s to answer.
    #[arg(long, value_name = "PROGRAM")]
    remote_credential_helper: Option<PathBuf>,
}

impl RemoteAuthArgs {
    /// The flags as the driver takes them.
    pub(crate) fn auth(&self) -> wbuild_driver::RemoteAuth {
        wbuild_driver::RemoteAuth {
            ca: self.remote_ca.clone(),
            client_cert: self.remote_client_cert.clone(),
            client_key: self.remote_client_key.clone(),
            headers: self.remote_header.clone(),
            token_file: self.remote_token_file.clone(),
            credential_helper: self.remote_credential_helper.clone(),
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
enum SandboxMode {
    Namespaces,
    Unobserved,
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
        /// Make sure the listed files are there first: if any is missing (left on the
        /// remote by a build without the bytes, or never built), build the targets,
        /// downloading only their own outputs (`--remote-download=toplevel` unless given).
        #[arg(long)]
        fetch: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Show what the last run of a target's action read, wrote, listed and probed. A target
    /// with several actions (cc_*) names one by its detail: `explain //lib:greet lib/greet.c`.
    Explain {
        target: String,
        detail: Option<String>,
    },
    /// Why the actions of a target ran the last time they ran here: which path they read,
    /// listed or probed changed, or which part of their command or settings did.
    Why { target: String },
    /// Infer a parallel build from a serial script: run its commands once, in order, each
    /// in the sandbox with every file access observed, and write one genrule per step (steps
    /// that rewrite each other's files share one) to WBUILD beside the script, ordered as the
    /// script ordered every conflicting pair; the edges and why go to SCRIPT.deps.json.
    /// `build.sh`: one command per line (`\` continues a line; `#` comments, `set`, `cd DIR`
    /// and `NAME=value` lines allowed); a command is a native one (run in the sandbox) or
    /// `wasi:LABEL ARGS`, a wasi_tool (scripts at the workspace root). Then
    /// `wbuild build //<dir>/...`.
    Infer {
        script: PathBuf,
        /// Infer afresh even if the script did not change since the last inference.
        #[arg(long)]
        reset: bool,
    },
    /// Query the target graph (before analysis), Bazel-style: `wbuild query 'deps(//app)'`.
    Query(query::QueryArgs),
    /// The actions of the targets a query yields, with their action keys and cache state:
    /// `wbuild aquery 'deps(//app)'`.
    Aquery(aquery::AqueryArgs),
    /// List recent builds, or the actions of one build.
    History {
        /// Build id (from the list) to show its actions.
        build: Option<u64>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Write one self-contained HTML page about a recorded build: its timeline, critical
    /// path, cache hit rate by mnemonic, slowest actions, failures, and on a click each
    /// action's accesses. No network is needed to view it.
    Report {
        /// Build id (`wbuild history` lists them); default: the last build.
        build: Option<u64>,
        /// Where to write the page.
        #[arg(long, value_name = "FILE")]
        html: PathBuf,
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
    /// Build one target and run its program (a cc_binary, a wasi_tool) in the workspace
    /// root with the given arguments: `wbuild run //pkg:name -- ARGS`.
    Run(run::RunArgs),
    /// Remove wbuild-out/ and this workspace's up-to-date snapshots and analysis cache
    /// entries (the next build re-materialises from the action cache); --expunge also
    /// removes the whole cache directory.
    Clean(clean::CleanArgs),
    /// Print the shell completion script for bash, zsh, fish, elvish or powershell.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print wbuild's version, the WASI executor, native sandbox and wasmtime versions, and
    /// the git commit it was built from.
    Version {
        #[arg(long, value_enum, default_value_t = version::Format::Text)]
        output: version::Format,
    },
    /// What a recorded build spent its time on: critical-path, slowest, what-ran.
    Log {
        #[command(subcommand)]
        command: log::LogCmd,
    },
    /// Run a WASI tool for a native command (used by the launchers wbuild stages).
    #[command(hide = true)]
    ExecWasiTool(wasi_tool::ExecWasiTool),
}

#[derive(Subcommand)]
enum CacheCmd {
    /// Sizes and counts.
    Stats,
    /// Evict least-recently-used blobs until the store is under a size cap, and drop the
    /// up-to-date snapshots and analysis-cache entries of every workspace (each is loaded
    /// again on its next build)
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
    tune_allocator();
    install_panic_hook();
    let cli = Cli::parse();
    // A worker starts its sandboxes from a small process forked now, while it is
    // single-threaded and small (see wbuild_exec_native's spawner; builds fork it once their
    // up-to-date check found work to do); if it cannot be forked, sandboxes are cloned from
    // wbuild itself.
    if matches!(cli.command, Cmd::Worker(_)) {
        let _ = wbuild_exec_native::start_spawner();
    }
    let _ = CACHE_DIR.set(cli.cache_dir.clone().unwrap_or_else(Store::default_dir));
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    };
    exit_now(code)
}

/// Ends the process once its output is flushed, skipping the C library's exit handlers: the
/// allocator's would hand every page of the heap back to the kernel one region at a time
/// (some 240 `madvise` calls, about 1 ms after an edit of a 1,000-action graph) just before
/// the kernel frees the whole address space anyway. Of wbuild's own, only the directories
/// pooled for sandbox roots are removed.
fn exit_now(code: i32) -> ! {
    use std::io::Write;
    // The one thing that must run at exit: the empty directories kept for sandbox roots.
    wbuild_exec_native::release_sandbox_roots();
    wbuild_sched::release_input_trees();
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` ends the process; every file wbuild writes was written and closed
    // (or, for the store, committed) before `run` returned.
    unsafe { libc::_exit(code) }
}

/// A line for the user, on stderr.
fn note(line: &str) {
    eprintln!("{line}");
}

fn cache_dir(cli: &Cli) -> PathBuf {
    cli.cache_dir.clone().unwrap_or_else(Store::default_dir)
}

fn open_store(cli_dir: &Option<PathBuf>) -> Result<Arc<Store>> {
    let dir = cli_dir.clone().unwrap_or_else(Store::default_dir);
    Ok(wbuild_driver::session::open_store(&dir, &note)?)
}

fn workspace() -> Result<(Workspace, String)> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    Ok(wbuild_driver::session::workspace(&cwd)?)
}

/// The workspace with its pinned toolchains resolved (fetched and verified if needed).
fn workspace_resolved(cli: &Cli) -> Result<(Workspace, String)> {
    Ok(wbuild_driver::session::workspace_resolved(
        &cache_dir(cli),
        &note,
    )?)
}

/// `wbuild infer SCRIPT [--reset]`.
fn infer(script: &std::path::Path, reset: bool) -> Result<i32> {
    let (ws, _) = workspace()?;
    let out = wbuild_driver::infer::infer(
        &ws,
        &wbuild_driver::infer::InferRequest {
            script: script.to_path_buf(),
            reset,
        },
        &note,
    )?;
    let pattern = if out.package.is_empty() {
        "//...".to_owned()
    } else {
        format!("//{}/...", out.package)
    };
    if out.up_to_date {
        println!(
            "{} is up to date with {} ({} steps, {} targets); --reset infers afresh",
            out.build_file.display(),
            script.display(),
            out.steps,
            out.targets
        );
        return Ok(0);
    }
    println!(
        "inferred {} steps: {} targets ({} running several steps), {} edges, critical path {} targets",
        out.steps, out.targets, out.merged, out.edges, out.critical_path
    );
    if !out.left_out.is_empty() {
        println!(
            "left out (they write nothing the build keeps): line{} {}",
            if out.left_out.len() == 1 { "" } else { "s" },
            out.left_out
                .iter()
                .map(|l| l.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!(
        "wrote {} and {}; build with `wbuild build {pattern}`",
        out.build_file.display(),
        out.deps_file.display()
    );
    Ok(0)
}

fn run(cli: Cli) -> Result<i32> {
    match &cli.command {
        Cmd::Build(args) => build(&cli, args, false),
        Cmd::Test(args) => build(&cli, args, true),
        Cmd::Outputs {
            targets,
            platform,
            fetch,
            remote,
        } => outputs(&cli, targets, platform, (*fetch).then_some(remote)),
        Cmd::Explain { target, detail } => explain(&cli, target, detail.as_deref()),
        Cmd::Why { target } => why::run(&cli, target),
        Cmd::Infer { script, reset } => infer(script, *reset),
        Cmd::Query(args) => query::run(&cache_dir(&cli), args),
        Cmd::Aquery(args) => aquery::run(&cache_dir(&cli), args),
        Cmd::History { build, limit } => history(&cli, *build, *limit),
        Cmd::Cache { command } => cache(&cli, command),
        Cmd::Report { build, html } => report::run(&cli, *build, html),
        Cmd::ExecWasiTool(a) => wasi_tool::run(a),
        Cmd::Verify(a) => verify::run(&cache_dir(&cli), cli.cache_dir.is_some(), a),
        Cmd::Serve(args) => serve(&cli, args),
        Cmd::Worker(args) => worker::run(&cli.cache_dir, args),
        Cmd::Toolchain { command } => toolchain::run(&cli.cache_dir, command),
        Cmd::Run(args) => run::run(&cli, args),
        Cmd::Clean(args) => clean::run(&cli, args),
        Cmd::Completions { shell } => version::completions(*shell),
        Cmd::Version { output } => version::run(*output),
        Cmd::Log { command } => log::run(&cli, command),
    }
}

/// The CLI side of a build: the progress display and events file, created when the driver
/// knows how many actions it reports.
struct Presenter<'a> {
    events_file: Option<&'a std::path::Path>,
    ui: std::sync::OnceLock<ui::Ui>,
}

impl wbuild_driver::Frontend for Presenter<'_> {
    fn note(&self, line: &str) {
        note(line);
    }

    fn start(
        &self,
        total: usize,
        scheduling: bool,
    ) -> std::result::Result<&dyn wbuild_sched::EventSink, Box<dyn std::error::Error + Send + Sync>>
    {
        // A build that runs again (after `wbuild infer`'s targets were repaired) goes on
        // with the same display, events file and Ctrl-C handler.
        if let Some(ui) = self.ui.get() {
            ui.restart(total);
            return Ok(ui);
        }
        let ui = ui::Ui::new(total, self.events_file)?;
        let ui = self.ui.get_or_init(|| ui);
        if scheduling {
            ctrlc::set_handler(wbuild_sched::interrupt)
                .context("cannot install the Ctrl-C handler")?;
        }
        Ok(ui)
    }
}

fn build(cli: &Cli, args: &BuildArgs, tests: bool) -> Result<i32> {
    let (ws, pkg) = workspace_resolved(cli)?;
    let request = wbuild_driver::BuildRequest {
        patterns: args.patterns.clone(),
        platforms: args.platform.clone(),
        jobs: args.jobs,
        keep_going: args.keep_going,
        tests,
        show_output: args.show_output,
        sandbox: match args.sandbox {
            SandboxMode::Namespaces => wbuild_driver::SandboxMode::Namespaces,
            SandboxMode::Unobserved => wbuild_driver::SandboxMode::Unobserved,
            SandboxMode::None => wbuild_driver::SandboxMode::None,
        },
        remote: args.remote.request(),
        provenance: args.provenance.clone(),
        sign_key: args.sign_key.clone(),
        cache_dir: cache_dir(cli),
        profile: args.profile.clone(),
    };
    let presenter = Presenter {
        events_file: args.events.as_deref(),
        ui: std::sync::OnceLock::new(),
    };
    let outcome = wbuild_driver::run_build(&ws, &pkg, &request, &presenter)?;
    let summary = &outcome.summary;
    if let Some(ui) = presenter.ui.get() {
        ui.finish(summary, tests);
    }
    let code = if summary.interrupted {
        130
    } else if summary.success() {
        0
    } else {
        1
    };
    // The process exits next: its maps of every action and output need no freeing.
    std::mem::forget(outcome);
    Ok(code)
}

fn outputs(
    cli: &Cli,
    targets: &[String],
    platform_flags: &[String],
    fetch: Option<&RemoteArgs>,
) -> Result<i32> {
    let (ws, pkg) = workspace_resolved(cli)?;
    // As `build` does: platforms, then patterns, then the store.
    wbuild_driver::platform::flag_platforms(platform_flags)?;
    let patterns = wbuild_driver::session::parse_patterns(targets, &pkg)?;
    let store = open_store(&cli.cache_dir)?;
    let paths = wbuild_driver::session::output_paths(&ws, &store, &patterns, platform_flags)?;
    drop(store);
    if let Some(remote) = fetch
        && paths.iter().any(|p| !ws.root.join(p).exists())
    {
        let mut remote = remote.request();
        remote.download = remote
            .download
            .or(Some(wbuild_graph::RemoteDownload::Toplevel));
        let request = wbuild_driver::BuildRequest {
            patterns: targets.to_vec(),
            platforms: platform_flags.to_vec(),
            jobs: None,
            keep_going: false,
            tests: false,
            show_output: false,
            sandbox: wbuild_driver::SandboxMode::Namespaces,
            remote,
            provenance: None,
            sign_key: None,
            cache_dir: cache_dir(cli),
            profile: None,
        };
        let presenter = Presenter {
            events_file: None,
            ui: std::sync::OnceLock::new(),
        };
        let outcome = wbuild_driver::run_build(&ws, &pkg, &request, &presenter)?;
        if let Some(ui) = presenter.ui.get() {
            ui.finish(&outcome.summary, false);
        }
        if !outcome.summary.success() {
            return Ok(if outcome.summary.interrupted { 130 } else { 1 });
        }
    }
    // One write per line was 100,000 system calls for 100,000 outputs.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = paths
        .iter()
        .try_for_each(|path| writeln!(out, "{path}"))
        .and_then(|()| out.flush());
    match written {
        // A reader that stopped early (`| head`) wanted no more.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        other => other.map(|()| 0).map_err(Into::into),
    }
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
                "  no access log recorded: the action was satisfied from the cache without running here, or it ran unobserved because its last observed run read every declared input (`wbuild why {wanted}` says which)"
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
            let (files, bytes) = clean::drop_analysis_entries(store.dir())?;
            println!(
                "gc: dropped {files} analysis cache files ({}); each workspace is loaded again on its next build",
                ui::bytes(bytes)
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

#[cfg(test)]
mod allocator_tests {
    /// [`super::MI_OPTION_PURGE_DELAY`] names mimalloc's purge delay: the one option whose
    /// default is 1000 (ms), and the one [`super::tune_allocator`] sets.
    #[test]
    fn the_option_set_is_the_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        let get = || {
            // SAFETY: reads a plain integer option of the allocator in use.
            unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) }
        };
        assert_eq!(get(), 1000, "not mimalloc 3's purge delay");
        super::tune_allocator();
        assert_eq!(get(), super::PURGE_DELAY_MS);
    }
}
