//! The cache-first parallel scheduler: turns an analysed [`ActionGraph`] into results.
//!
//! For each action whose dependencies are done it computes the action key (REAPI `Action` +
//! `Command` + input-root Merkle tree, hashed with the store's digest function), looks it up
//! in the action cache, and either materialises the cached outputs or stages the inputs from
//! the CAS, runs the tool in the WASI executor, checks what it touched, stores the outputs and
//! writes the action-cache entry. Misses run on `jobs` threads, longest remaining critical
//! path first (durations remembered from earlier builds).
//!
//! What it must never do: put anything in a key that is not content (no absolute host paths,
//! no user, no time), write an action-cache entry for a failed action or before its blobs are
//! stored, or materialise an output as a writable alias of a CAS blob.
//!
//! Where things are: `events` (statuses, events, the sink), `keys` (the action key and
//! [`spec::Spec`]), `queue` (ready queue, workers, critical path, keep-going, interruption),
//! `local` (runs here, behind [`LocalRunner`]), `remote` (remote cache and executor, behind
//! [`RemoteCacheApi`] and [`RemoteExecApi`]), `finish` (the outcome of a run, the
//! action-cache entry, materialised outputs) and `access` (checks of a guest's access log).

mod access;
pub mod archive;
mod describe;
mod download;
mod events;
mod finish;
mod keys;
mod local;
mod merkle;
mod native;
mod observed;
mod phases;
mod queue;
mod remote;
mod safe_fs;
pub mod spec;
#[cfg(test)]
mod tests;
pub mod uptodate;
mod validate;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use wbuild_graph::{ActionGraph, ActionNode, Workspace};
use wbuild_store::{Digest, Store};

pub use describe::{ActionKey, Described, describe_passes};
pub use download::Download;
pub use events::{Event, EventSink, Status};
pub use finish::action_result;
use finish::{Finished, split_outputs};
pub use keys::{ActionError, command_env};
pub use local::LocalRunner;
use local::Semaphore;
pub use merkle::{TreeFile, input_root, tree_files};
pub use native::{
    assume_toolchain_identity, release_input_trees, toolchain_identity, toolchain_sentinels,
};
pub use observed::{KeyManifest, MAX_PATH_SET, UNOBSERVED_RUNS, identity as action_identity};
pub use phases::{KNOWN_PHASE, Phase, clock_us};
use remote::Endpoint;
pub use remote::{ACCESS_LOG_TYPE_URL, RemoteCacheApi, RemoteExecApi};
pub use validate::{
    InvalidCommand, InvalidResult, is_normalised, validate_command, validate_result,
};
pub use wbuild_graph::Platform;

/// Directory under the workspace root where outputs are materialised.
pub use wbuild_graph::OUT_DIR;

/// What stops a build (an action's own failure is an event, not one of these).
#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    #[error(transparent)]
    Store(#[from] wbuild_store::StoreError),
    /// The I/O error is part of the message (it is not a `source`).
    #[error("cannot write {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Blobs an action needs that only the remote held, and it no longer does (evicted):
    /// the pass stops and [`Scheduler::run_passes`] runs the build again.
    #[error("the remote no longer has {} blob(s) this build needs, such as {}", blobs.len(), blobs.first().map(|d| d.to_string()).unwrap_or_default())]
    LostInputs { blobs: Vec<Digest> },
}

/// How many times a build runs again after the remote lost blobs it needed.
pub const LOST_INPUT_RETRIES: usize = 3;

/// Settings of one build.
#[derive(Clone, Debug)]
pub struct Options {
    pub jobs: usize,
    pub keep_going: bool,
    /// Wall clock the guests see (`SOURCE_DATE_EPOCH`).
    pub epoch_secs: u64,
    pub memory_limit_bytes: u64,
    pub timeout: Duration,
    /// Show the output of successful actions too.
    pub show_output: bool,
    /// Target platform of native actions.
    pub platform: Platform,
    /// Run native actions without the namespace sandbox (`--sandbox=none`). Their keys say
    /// so, so their results never mix with sandboxed ones (and are never uploaded).
    pub unsandboxed: bool,
    /// Observe every file access of sandboxed native actions (seccomp user notification):
    /// their access logs, exact path sets and undeclared-read errors, as for WASI actions.
    pub observe_native: bool,
    /// With a remote cache: upload the results of actions executed here.
    pub remote_upload: bool,
    /// A pinned toolchain bundle for `platform`: native actions see it as their whole
    /// system (no host `/usr`), take `$CC` & co. from it, and key on its digest.
    pub native_toolchain: Option<Arc<NativeToolchain>>,
    /// Results the up-to-date snapshot vouches for after an edit (see [`Known`]).
    pub known: Option<Arc<Known>>,
    /// Which outputs are written to `wbuild-out/` (`--remote-download`).
    pub download: Download,
}

/// Results of the last successful build that an edit did not touch: an action whose direct
/// sources and outputs are unchanged (by stat) and whose generated inputs come out with the
/// digests recorded is cached without computing its key or reading the action cache.
#[derive(Clone, Debug, Default)]
pub struct Known {
    /// By index of the action in the pass's graph: its recorded result, if the snapshot has
    /// one.
    pub actions: Vec<Option<KnownAction>>,
}

/// One action's recorded result: as the snapshot holds it (what the next snapshot records
/// again) and its action digest.
#[derive(Clone, Debug)]
pub struct KnownAction {
    pub digest: Digest,
    pub recorded: Arc<uptodate::SnapshotAction>,
    /// A direct source or an output of it changed: it must run (or be looked up) again, and
    /// its recorded outputs only tell its consumers whether they came out the same.
    pub touched: bool,
}

/// The digest of every generated file known so far in a pass, by workspace path (hashed with
/// FxHash: after an edit of a large graph the up-to-date snapshot's results fill it first,
/// one entry per output).
pub(crate) type Generated = rustc_hash::FxHashMap<String, Digest>;

/// The generated paths of a graph, hashed (its `producers` is a B-tree of strings: looking
/// up every input of 10,000 actions there cost milliseconds).
pub struct Produced<'g>(rustc_hash::FxHashSet<&'g str>);

impl<'g> Produced<'g> {
    pub fn of(graph: &'g ActionGraph) -> Produced<'g> {
        Produced(graph.producers.keys().map(String::as_str).collect())
    }
}

/// The source files (workspace paths) `action` reads directly: its inputs, tool module and
/// tool data that no action of the graph (`produced`) produces.
pub fn direct_sources<'g>(
    produced: &Produced<'_>,
    action: &'g ActionNode,
) -> impl Iterator<Item = &'g str> {
    let tools = action
        .wasi_tool()
        .into_iter()
        .chain(action.wasi_tools.iter().map(|(_, t)| t))
        .flat_map(|t| std::iter::once(&t.module).chain(t.data.iter().map(|(_, p)| p)));
    action
        .inputs
        .iter()
        .chain(tools)
        .map(String::as_str)
        .filter(|p| !produced.0.contains(p))
}

/// A toolchain bundle native actions run with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NativeToolchain {
    /// The name it is pinned under in `wbuild.toml`.
    pub name: String,
    /// The bundle digest: the toolchain's identity in action keys.
    pub digest: String,
    /// Host directory holding the bundle's tree (mirrors `/`: `usr/`, `bin -> usr/bin`, ...).
    pub root: PathBuf,
    /// `CC`, `CXX`, `AR`, `TEST_RUNNER` (absolute paths inside the sandbox).
    pub env: Vec<(String, String)>,
}

impl NativeToolchain {
    /// The bundle's top-level entries as read-only mounts at `/<entry>` (symlinks such as
    /// `bin -> usr/bin` are recreated as symlinks).
    pub fn mounts(&self) -> std::io::Result<Vec<wbuild_exec_native::Mount>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.root)? {
            let e = e?;
            // A pinned bundle's tree never changes (it is installed by digest).
            wbuild_exec_native::register_system_tree(&e.path());
            out.push(wbuild_exec_native::Mount {
                host: e.path(),
                sandbox: Path::new("/").join(e.file_name()),
                writable: false,
            });
        }
        out.sort_by(|a, b| a.sandbox.cmp(&b.sandbox));
        Ok(out)
    }
}

/// Outcome of a build.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub executed: u64,
    pub cached: u64,
    pub remote_cached: u64,
    pub remote_executed: u64,
    pub failed: u64,
    pub skipped: u64,
    pub interrupted: bool,
    /// Digests of every output produced or restored, by workspace path.
    pub outputs: BTreeMap<String, Digest>,
    /// The outputs among them left on the remote (`--remote-download`), not written to
    /// `wbuild-out/`, by workspace path.
    pub remote_only: BTreeSet<String>,
    /// Workspace paths of every source file the actions read (tool modules and data included).
    pub sources: Vec<String>,
    /// Every action that succeeded (executed or cached). Shared: an action the up-to-date
    /// snapshot answered for is the snapshot's record, not a copy of it.
    pub actions: Vec<Arc<uptodate::SnapshotAction>>,
    /// The outputs (workspace paths) of the actions that succeeded without the up-to-date
    /// snapshot answering for them: those this build may have written.
    pub rewritten: Vec<String>,
    /// Every action that failed, with its action digest if it got that far.
    pub failed_actions: Vec<(wbuild_graph::Label, Option<Digest>)>,
    pub duration: Duration,
}

impl Summary {
    pub fn success(&self) -> bool {
        self.failed == 0 && self.skipped == 0 && !self.interrupted
    }

    /// Adds the summary of one pass, whose outputs are materialised under `out_dir` (its
    /// platform's output directory): outputs are then keyed by their place under the
    /// workspace root.
    fn absorb(&mut self, pass: Summary, out_dir: &str) {
        self.executed += pass.executed;
        self.cached += pass.cached;
        self.remote_cached += pass.remote_cached;
        self.remote_executed += pass.remote_executed;
        self.failed += pass.failed;
        self.skipped += pass.skipped;
        self.interrupted |= pass.interrupted;
        self.duration += pass.duration;
        self.sources.extend(pass.sources);
        self.actions.extend(pass.actions);
        self.rewritten
            .extend(pass.rewritten.into_iter().map(|k| format!("{out_dir}/{k}")));
        self.failed_actions.extend(pass.failed_actions);
        self.remote_only.extend(
            pass.remote_only
                .into_iter()
                .map(|k| format!("{out_dir}/{k}")),
        );
        self.outputs.extend(
            pass.outputs
                .into_iter()
                .map(|(k, d)| (format!("{out_dir}/{k}"), d)),
        );
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Ask running builds to stop (Ctrl-C): no new actions start, running guests are stopped.
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
    wbuild_exec_wasi::interrupt();
    wbuild_exec_native::interrupt();
}

/// Runs builds against one store and executor.
pub struct Scheduler<'a> {
    ws: &'a Workspace,
    store: Arc<Store>,
    /// Runs cache misses here (the WASI executor and the native sandbox).
    runner: Arc<dyn LocalRunner>,
    events: &'a dyn EventSink,
    build_id: Option<u64>,
    /// Digests of source files already looked up in this build: a tool module or a shared
    /// header is an input of thousands of actions but is stat'ed once.
    sources: RwLock<HashMap<String, Digest>>,
    /// Generated files of this build that are executable (a test program, a tool built by
    /// an earlier action): staged for native actions with their executable bit.
    executables: RwLock<HashSet<String>>,
    /// The remote cache, if any; keys and blobs use its digest function (the store's).
    remote: Endpoint<dyn RemoteCacheApi>,
    /// The remote executor, if any (its CAS holds the inputs of what it runs).
    executor: Endpoint<dyn RemoteExecApi>,
    /// Durations (ms) of remote runs in this build, by mnemonic (for straggler detection).
    remote_durations: Arc<Mutex<HashMap<String, Vec<u64>>>>,
    /// With a remote executor `-j` may be far above the local core count: local runs (the
    /// fallback, host-toolchain native actions) take one of these slots.
    local_slots: Semaphore,
    /// Native platforms already warned about running here (no pinned bundle).
    warned_local: Mutex<HashSet<String>>,
    /// Blobs the remote no longer has (see `download.rs`): results naming them are not used
    /// unless the blob is here.
    lost: Mutex<HashSet<Digest>>,
    /// Outputs of the current pass left on the remote (paths under its output directory).
    remote_only: Mutex<HashSet<String>>,
}

impl<'a> Scheduler<'a> {
    /// `build_id` (from `Store::begin_build`) receives one history record per action; its
    /// `Store::finish_build` is then the caller's, and commits the run durably (without a
    /// build, `run_passes` does).
    /// `runner` runs cache misses here (an `Arc<WasiExecutor>`: WASI actions in it, native
    /// ones in the namespace sandbox).
    pub fn new(
        ws: &'a Workspace,
        store: Arc<Store>,
        runner: Arc<dyn LocalRunner>,
        events: &'a dyn EventSink,
        build_id: Option<u64>,
    ) -> Scheduler<'a> {
        Scheduler {
            ws,
            store,
            runner,
            events,
            build_id,
            sources: RwLock::new(HashMap::new()),
            executables: RwLock::new(HashSet::new()),
            remote: Endpoint::new(None, "remote cache", "runs without it"),
            executor: Endpoint::new(None, "remote executor", "runs locally"),
            remote_durations: Arc::new(Mutex::new(HashMap::new())),
            local_slots: Semaphore::new(usize::MAX),
            warned_local: Mutex::new(HashSet::new()),
            lost: Mutex::new(HashSet::new()),
            remote_only: Mutex::new(HashSet::new()),
        }
    }

    /// Run cache misses on the workers of the REAPI engine `executor` (whose CAS holds the
    /// inputs; the store must use its digest function). Local runs then take at most
    /// `local_jobs` at once, whatever `-j` is.
    pub fn with_executor(
        self,
        executor: Option<Arc<wbuild_remote::RemoteCache>>,
        local_jobs: usize,
    ) -> Self {
        self.with_executor_api(executor.map(|r| r as Arc<dyn RemoteExecApi>), local_jobs)
    }

    /// [`Scheduler::with_executor`] with any [`RemoteExecApi`].
    pub fn with_executor_api(
        mut self,
        executor: Option<Arc<dyn RemoteExecApi>>,
        local_jobs: usize,
    ) -> Self {
        if let Some(r) = &executor {
            assert_eq!(
                r.function(),
                self.store.function(),
                "the store must use the executor's digest function"
            );
            self.local_slots = Semaphore::new(local_jobs);
        }
        self.executor.conn = executor;
        self
    }

    /// Run at most `n` actions here at once, whatever `Options::jobs` is (with a remote,
    /// `jobs` may be far above what this machine runs: the rest wait on round trips).
    pub fn with_local_jobs(mut self, n: usize) -> Self {
        self.local_slots = Semaphore::new(n);
        self
    }

    /// Use `remote` as a second-level cache. The store must use its digest function.
    pub fn with_remote(self, remote: Option<Arc<wbuild_remote::RemoteCache>>) -> Self {
        self.with_remote_api(remote.map(|r| r as Arc<dyn RemoteCacheApi>))
    }

    /// [`Scheduler::with_remote`] with any [`RemoteCacheApi`].
    pub fn with_remote_api(mut self, remote: Option<Arc<dyn RemoteCacheApi>>) -> Self {
        if let Some(r) = &remote {
            assert_eq!(
                r.function(),
                self.store.function(),
                "the store must use the remote's digest function"
            );
        }
        self.remote.conn = remote;
        self
    }
}

impl Scheduler<'_> {
    /// Build every action of `graph` (one pass; see [`Scheduler::run_passes`]).
    pub fn run(&self, graph: &ActionGraph, opts: &Options) -> Result<Summary, SchedError> {
        self.run_passes(&[(graph, opts.clone())])
    }

    /// Build several graphs one after the other as one build (one per target platform), with
    /// one `build_finished` event and one summary of them all: outputs keyed by their place
    /// under the workspace (`wbuild-out[/<platform>]/...`), sources merged. A pass that fails
    /// (without `keep_going`) or an interruption ends the build, and the actions of the passes
    /// that never ran count as skipped, so an unfinished build is never a success.
    pub fn run_passes(&self, passes: &[(&ActionGraph, Options)]) -> Result<Summary, SchedError> {
        INTERRUPTED.store(false, Ordering::SeqCst);
        let start = Instant::now();
        let hashed_before = self.store.hashed_count();
        let mut attempt = 0;
        let mut total = loop {
            match self.attempt(passes) {
                Err(SchedError::LostInputs { blobs }) if attempt < LOST_INPUT_RETRIES => {
                    self.warn_lost(&blobs, attempt, LOST_INPUT_RETRIES);
                    attempt += 1;
                }
                other => break other?,
            }
        };
        total.sources.sort();
        total.sources.dedup();
        self.events.event(&Event::BuildFinished {
            executed: total.executed,
            cached: total.cached,
            remote_cached: total.remote_cached,
            remote_executed: total.remote_executed,
            remote_rpcs: self.remote.conn.as_ref().map(|r| r.rpc_count()),
            remote_bytes_downloaded: self.remote.conn.as_ref().map(|r| r.bytes_downloaded()),
            failed: total.failed,
            skipped: total.skipped,
            files_hashed: self.store.hashed_count() - hashed_before,
            modules_compiled: self.runner.compiled_count(),
            duration_ms: start.elapsed().as_millis() as u64,
            interrupted: total.interrupted,
        });
        // A build recorded in the history is flushed durably by its `Store::finish_build`,
        // which the driver calls next: one durable commit (about 2 to 4 ms here) instead
        // of two.
        if self.build_id.is_none() {
            self.store.flush()?;
        }
        Ok(total)
    }

    /// The passes one after the other (see [`Scheduler::run_passes`]).
    fn attempt(&self, passes: &[(&ActionGraph, Options)]) -> Result<Summary, SchedError> {
        let mut total = Summary::default();
        let mut ran = 0;
        for (graph, opts) in passes {
            let s = self.run_one(graph, opts)?;
            ran += 1;
            let stop = s.interrupted || (!s.success() && !opts.keep_going);
            total.absorb(s, &opts.platform.out_dir());
            if stop {
                break;
            }
        }
        for (graph, _) in &passes[ran..] {
            total.skipped += graph.actions.len() as u64;
        }
        Ok(total)
    }

    /// One action: its key, then the local cache, the remote cache, the remote executor and
    /// a local run, the first that delivers.
    fn process(
        &self,
        priority: u64,
        graph: &ActionGraph,
        action: &ActionNode,
        opts: &Options,
        generated: &crate::Generated,
    ) -> Result<Finished, SchedError> {
        let key = phases::phase("key");
        let mut prep = match self.prepare(graph, action, opts, generated) {
            Ok(p) => p,
            Err(e) => return Ok(Finished::failed(e.to_string())),
        };
        drop(key);
        {
            let _lookup = phases::phase("cache lookup");
            if let Some(result) = self.store.ac_get(&prep.action_digest)?
                && let Some(fin) = self.serve_entry(action, opts, &prep.action_digest, result)?
            {
                return Ok(fin);
            }
        }
        let weak = {
            let _lookup = phases::phase("observed-input lookup");
            let weak = prep.weak_key(self.store.function(), action);
            if let spec::Kind::Wasi { .. } = &prep.spec.kind {
                prep.spec.seed = observed::guest_seed(&prep.command, &prep.action);
            }
            let latest = match self.observed_lookup(action, opts, &prep, &weak)? {
                observed::Lookup::Served(fin) => return Ok(*fin),
                observed::Lookup::Missed(latest) => latest,
            };
            let last = self.last_manifest(action, opts)?;
            prep.why = Some(self.why_now(last.as_ref(), &prep, &weak));
            let unobserved =
                self.elide(graph, action, &prep, &weak, latest.as_ref(), last.as_ref());
            prep.set_unobserved(unobserved);
            weak
        };
        prep.weak = Some(weak);
        if let Some(fin) = {
            let _remote = phases::phase("remote cache lookup");
            self.remote_lookup(graph, action, opts, &prep)?
        } {
            return Ok(fin);
        }
        if let Some(fin) = {
            let _remote = phases::phase("remote execution");
            self.remote_execute(graph, action, opts, &prep)?
        } {
            return Ok(fin);
        }
        self.execute(priority, graph, action, opts, prep)
    }

    /// The outcome of the cached `result` of the action-cache entry `entry`: outputs checked
    /// and materialised (status `Cached`), or `None` if the entry is unusable (it is then
    /// dropped, and the action looked up further or run).
    fn serve_entry(
        &self,
        action: &ActionNode,
        opts: &Options,
        entry: &Digest,
        result: wbuild_store::reapi::ActionResult,
    ) -> Result<Option<Finished>, SchedError> {
        let valid = if result.exit_code != 0 {
            None
        } else {
            match validate_result(self.store.function(), &action.outputs, &result) {
                Ok(v) => Some(v),
                Err(e) => {
                    self.invalid_result("local cache entry", action, &e);
                    None
                }
            }
        };
        let Some(files) = valid else {
            self.store.ac_remove(entry)?;
            return Ok(None);
        };
        let (outputs, executables) = split_outputs(files);
        if self.names_lost(&outputs) {
            self.store.ac_remove(entry)?;
            return Ok(None);
        }
        match self.deliver(opts, &outputs, &executables) {
            Ok(()) => {
                let output = if opts.show_output {
                    self.cached_output(&result)
                } else {
                    None
                };
                let report = finish::RunReport {
                    output,
                    ..Default::default()
                };
                Ok(Some(Finished::succeeded(
                    Status::Cached,
                    *entry,
                    outputs,
                    executables,
                    report,
                )))
            }
            Err(download::FetchError::Sched(SchedError::Store(
                wbuild_store::StoreError::Corrupt { .. }
                | wbuild_store::StoreError::NotFound { .. },
            )))
            | Err(download::FetchError::Lost(_)) => {
                // A blob went bad or is nowhere: forget the entry and run the action again.
                self.store.ac_remove(entry)?;
                Ok(None)
            }
            Err(download::FetchError::Sched(e)) => Err(e),
        }
    }
}
