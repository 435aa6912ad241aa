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

mod merkle;
mod native;
mod safe_fs;
pub mod spec;
pub mod uptodate;
mod validate;

use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use spec::{ExecProps, Kind, RunOutput, Spec};
use wbuild_exec_wasi::{AccessKind, AccessLog, EXECUTOR_VERSION, WasiExecutor};
use wbuild_graph::{ActionGraph, ActionNode, Exec, Workspace};
use wbuild_store::{ActionRecord, Digest, Store, digest_message, reapi};

pub use merkle::{TreeFile, input_root, tree_files};
pub use native::{Platform, toolchain_identity};
pub use validate::{InvalidResult, is_normalised, validate_command, validate_result};

/// Directory under the workspace root where outputs are materialised.
pub const OUT_DIR: &str = "wbuild-out";

#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    #[error(transparent)]
    Store(#[from] wbuild_store::StoreError),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

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
    /// With a remote cache: upload the results of actions executed here.
    pub remote_upload: bool,
    /// A pinned toolchain bundle for `platform`: native actions see it as their whole
    /// system (no host `/usr`), take `$CC` & co. from it, and key on its digest.
    pub native_toolchain: Option<Arc<NativeToolchain>>,
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

/// Result status of one action.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Executed,
    Cached,
    /// Found in the remote cache (outputs fetched from it).
    RemoteCached,
    /// Run by a worker of the remote executor (outputs fetched from the remote CAS).
    RemoteExecuted,
    Failed,
    /// Not run because a dependency failed or the build stopped.
    Skipped,
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Executed => "executed",
            Status::Cached => "cached",
            Status::RemoteCached => "remote_cached",
            Status::RemoteExecuted => "remote_executed",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        }
    }
}

/// Something that happened, for the progress display and the `--events` file.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Action {
        label: String,
        mnemonic: String,
        /// For a target with several actions, what this one works on (the source of a
        /// `CcCompile`); absent for the target's main action.
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
        status: Status,
        duration_ms: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        action_digest: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// Tool output shown to the user (failed actions, warnings, or on request).
        #[serde(skip_serializing_if = "Option::is_none")]
        output: Option<String>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        warnings: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        accesses: Option<serde_json::Value>,
        /// Native actions: the target platform (`linux-x86_64`, `linux-arm64`).
        #[serde(skip_serializing_if = "Option::is_none")]
        platform: Option<String>,
        /// The remote worker that ran it (`remote_executed`, or a failure on a worker).
        #[serde(skip_serializing_if = "Option::is_none")]
        worker: Option<String>,
        /// Whether a speculative second submission (a straggler's) delivered the result.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        resubmitted: bool,
    },
    /// Something about the whole build (e.g. the remote cache became unreachable).
    Warning { message: String },
    BuildFinished {
        executed: u64,
        cached: u64,
        /// Actions satisfied by the remote cache (not counted in `cached`).
        remote_cached: u64,
        /// Actions run by remote workers (not counted in `executed`).
        remote_executed: u64,
        /// RPCs made to the remote cache (absent without one).
        #[serde(skip_serializing_if = "Option::is_none")]
        remote_rpcs: Option<u64>,
        failed: u64,
        skipped: u64,
        /// Files read and hashed because the stat cache could not vouch for them.
        files_hashed: u64,
        /// Tool modules compiled by cranelift in this build (not found in the on-disk cache).
        modules_compiled: u64,
        duration_ms: u64,
        interrupted: bool,
    },
}

/// Receives events; called from worker threads.
pub trait EventSink: Send + Sync {
    fn event(&self, e: &Event);
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
    /// Workspace paths of every source file the actions read (tool modules and data included).
    pub sources: Vec<String>,
    /// Every action that succeeded (executed or cached).
    pub actions: Vec<uptodate::SnapshotAction>,
    pub duration: Duration,
}

impl Summary {
    pub fn success(&self) -> bool {
        self.failed == 0 && self.skipped == 0 && !self.interrupted
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Ask running builds to stop (Ctrl-C): no new actions start, running guests are stopped.
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
    wbuild_exec_wasi::interrupt();
    wbuild_exec_native::interrupt();
}

/// The key of an action and what it takes to run it.
struct Prepared {
    action_digest: Digest,
    /// The REAPI messages of the key (uploaded for remote execution).
    action: reapi::Action,
    command: reapi::Command,
    /// Every `Directory` message of the input root.
    dirs: Vec<merkle::DirectoryBlob>,
    /// What running it takes (staged files are the input root's, minus a WASI module).
    spec: Spec,
    /// Source files (workspace path -> digest) that may need to enter the CAS before staging.
    sources: Vec<(String, Digest)>,
    /// Native actions: launcher scripts of the WASI tools they run (workspace path, text);
    /// they enter the CAS before the action runs.
    launchers: Vec<(String, String)>,
}

/// What finishing an action produced.
struct Finished {
    status: Status,
    outputs: Vec<(String, Digest)>,
    /// Outputs with an executable bit.
    executables: HashSet<String>,
    error: Option<String>,
    output: Option<String>,
    warnings: Vec<String>,
    accesses: Option<serde_json::Value>,
    action_digest: Option<Digest>,
    /// The remote worker that ran it.
    worker: Option<String>,
    /// A straggler's second submission delivered the result.
    resubmitted: bool,
}

impl Finished {
    fn failed(error: String) -> Finished {
        Finished {
            status: Status::Failed,
            outputs: Vec::new(),
            executables: HashSet::new(),
            error: Some(error),
            output: None,
            warnings: Vec::new(),
            accesses: None,
            action_digest: None,
            worker: None,
            resubmitted: false,
        }
    }
}

/// What every worker thread shares.
#[derive(Clone, Copy)]
struct WorkerCtx<'a> {
    graph: &'a ActionGraph,
    opts: &'a Options,
    rdeps: &'a [Vec<usize>],
    prio: &'a [u64],
    shared: &'a Mutex<Shared>,
    cv: &'a Condvar,
    generated: &'a RwLock<HashMap<String, Digest>>,
    first_error: &'a Mutex<Option<SchedError>>,
}

struct Shared {
    ready: BinaryHeap<(u64, std::cmp::Reverse<usize>)>,
    waiting: Vec<usize>,
    done: Vec<Option<Status>>,
    running: usize,
    remaining: usize,
    stop: bool,
    summary: Summary,
}

/// Runs builds against one store and executor.
pub struct Scheduler<'a> {
    ws: &'a Workspace,
    store: Arc<Store>,
    exec: Arc<WasiExecutor>,
    events: &'a dyn EventSink,
    build_id: Option<u64>,
    /// Digests of source files already looked up in this build: a tool module or a shared
    /// header is an input of thousands of actions but is stat'ed once.
    sources: RwLock<HashMap<String, Digest>>,
    /// Generated files of this build that are executable (a test program, a tool built by
    /// an earlier action): staged for native actions with their executable bit.
    executables: RwLock<HashSet<String>>,
    /// The remote cache, if any; keys and blobs use its digest function (the store's).
    remote: Endpoint,
    /// The remote executor, if any (its CAS holds the inputs of what it runs).
    executor: Endpoint,
    /// Durations (ms) of remote runs in this build, by mnemonic (for straggler detection).
    remote_durations: Arc<Mutex<HashMap<String, Vec<u64>>>>,
    /// With a remote executor `-j` may be far above the local core count: local runs (the
    /// fallback, host-toolchain native actions) take one of these slots.
    local_slots: Semaphore,
    /// Native platforms already warned about running here (no pinned bundle).
    warned_local: Mutex<HashSet<String>>,
}

/// How long a remote run of `mnemonic` may take before a copy is submitted: twice the median
/// of this build's earlier remote runs of it (at least [`STRAGGLER_SAMPLES`] of them), and
/// at least [`MIN_STRAGGLER_WAIT`].
fn straggler_wait(
    durations: &Mutex<HashMap<String, Vec<u64>>>,
    mnemonic: &str,
) -> Option<Duration> {
    let mut v = durations.lock().expect("durations").get(mnemonic)?.clone();
    if v.len() < STRAGGLER_SAMPLES {
        return None;
    }
    v.sort_unstable();
    let median = v[v.len() / 2];
    Some(Duration::from_millis(2 * median).max(MIN_STRAGGLER_WAIT))
}

/// A REAPI endpoint a build uses while it works: after its first failure the rest of the
/// build goes on without it, with one warning.
struct Endpoint {
    conn: Option<Arc<wbuild_remote::RemoteCache>>,
    ok: AtomicBool,
    /// "remote cache", "remote executor".
    what: &'static str,
    /// What the build does without it ("runs locally").
    without: &'static str,
}

impl Endpoint {
    fn new(
        conn: Option<Arc<wbuild_remote::RemoteCache>>,
        what: &'static str,
        without: &'static str,
    ) -> Endpoint {
        Endpoint {
            conn,
            ok: AtomicBool::new(true),
            what,
            without,
        }
    }

    fn get(&self) -> Option<&wbuild_remote::RemoteCache> {
        self.conn
            .as_deref()
            .filter(|_| self.ok.load(Ordering::Relaxed))
    }

    fn failed(&self, e: wbuild_remote::ClientError, events: &dyn EventSink) {
        if self.ok.swap(false, Ordering::SeqCst) {
            let url = self.conn.as_ref().map_or("", |r| r.url());
            events.event(&Event::Warning {
                message: format!(
                    "{} {url}: {e}; the rest of this build {}",
                    self.what, self.without
                ),
            });
        }
    }
}

/// A counting semaphore (blocking).
struct Semaphore {
    free: Mutex<usize>,
    cv: Condvar,
}

struct SemaphoreGuard<'a>(&'a Semaphore);

impl Semaphore {
    fn new(n: usize) -> Semaphore {
        Semaphore {
            free: Mutex::new(n.max(1)),
            cv: Condvar::new(),
        }
    }

    fn acquire(&self) -> SemaphoreGuard<'_> {
        let mut free = self.free.lock().expect("semaphore");
        while *free == 0 {
            free = self.cv.wait(free).expect("semaphore");
        }
        *free -= 1;
        SemaphoreGuard(self)
    }
}

impl Drop for SemaphoreGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().expect("semaphore") += 1;
        self.0.cv.notify_one();
    }
}

/// Shortest wait before a straggler is resubmitted (below this, queueing noise dominates).
const MIN_STRAGGLER_WAIT: Duration = Duration::from_millis(500);
/// Earlier remote runs of a mnemonic needed before its stragglers are resubmitted.
const STRAGGLER_SAMPLES: usize = 3;
/// `type_url` of the `auxiliary_metadata` entry a worker adds to a WASI action's result: the
/// `Digest` of the guest's access log (JSON) in the CAS.
pub const ACCESS_LOG_TYPE_URL: &str = "type.googleapis.com/wbuild.AccessLogDigest";

impl<'a> Scheduler<'a> {
    /// `build_id` (from `Store::begin_build`) receives one history record per action.
    pub fn new(
        ws: &'a Workspace,
        store: Arc<Store>,
        exec: Arc<WasiExecutor>,
        events: &'a dyn EventSink,
        build_id: Option<u64>,
    ) -> Scheduler<'a> {
        Scheduler {
            ws,
            store,
            exec,
            events,
            build_id,
            sources: RwLock::new(HashMap::new()),
            executables: RwLock::new(HashSet::new()),
            remote: Endpoint::new(None, "remote cache", "runs without it"),
            executor: Endpoint::new(None, "remote executor", "runs locally"),
            remote_durations: Arc::new(Mutex::new(HashMap::new())),
            local_slots: Semaphore::new(usize::MAX),
            warned_local: Mutex::new(HashSet::new()),
        }
    }

    /// Run cache misses on the workers of the REAPI engine `executor` (whose CAS holds the
    /// inputs; the store must use its digest function). Local runs then take at most
    /// `local_jobs` at once, whatever `-j` is.
    pub fn with_executor(
        mut self,
        executor: Option<Arc<wbuild_remote::RemoteCache>>,
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

    /// Use `remote` as a second-level cache. The store must use its digest function.
    pub fn with_remote(mut self, remote: Option<Arc<wbuild_remote::RemoteCache>>) -> Self {
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
    /// Build every action of `graph`.
    pub fn run(&self, graph: &ActionGraph, opts: &Options) -> Result<Summary, SchedError> {
        Ok(self
            .run_passes(&[(graph, opts.clone())])?
            .pop()
            .expect("one pass"))
    }

    /// Build several graphs one after the other as one build (one per target platform):
    /// one `build_finished` event with the totals, one summary per pass. A pass that fails
    /// (without `keep_going`) or an interruption ends the build.
    pub fn run_passes(
        &self,
        passes: &[(&ActionGraph, Options)],
    ) -> Result<Vec<Summary>, SchedError> {
        INTERRUPTED.store(false, Ordering::SeqCst);
        let start = Instant::now();
        let hashed_before = self.store.hashed_count();
        let mut summaries: Vec<Summary> = Vec::new();
        for (graph, opts) in passes {
            let s = self.run_one(graph, opts)?;
            let stop = s.interrupted || (!s.success() && !opts.keep_going);
            summaries.push(s);
            if stop {
                break;
            }
        }
        let total = |f: fn(&Summary) -> u64| summaries.iter().map(f).sum::<u64>();
        self.events.event(&Event::BuildFinished {
            executed: total(|s| s.executed),
            cached: total(|s| s.cached),
            remote_cached: total(|s| s.remote_cached),
            remote_executed: total(|s| s.remote_executed),
            remote_rpcs: self.remote.conn.as_ref().map(|r| r.rpc_count()),
            failed: total(|s| s.failed),
            skipped: total(|s| s.skipped),
            files_hashed: self.store.hashed_count() - hashed_before,
            modules_compiled: self.exec.compiled_count(),
            duration_ms: start.elapsed().as_millis() as u64,
            interrupted: summaries.iter().any(|s| s.interrupted),
        });
        self.store.flush()?;
        Ok(summaries)
    }

    fn run_one(&self, graph: &ActionGraph, opts: &Options) -> Result<Summary, SchedError> {
        let start = Instant::now();
        let n = graph.actions.len();
        let mut rdeps: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut waiting = vec![0usize; n];
        for (i, a) in graph.actions.iter().enumerate() {
            let mut deps = a.deps.clone();
            deps.sort_unstable();
            deps.dedup();
            waiting[i] = deps.len();
            for d in deps {
                rdeps[d].push(i);
            }
        }
        // Critical path: own expected duration plus the longest path through dependents.
        let mut prio = vec![0u64; n];
        for i in (0..n).rev() {
            let own = self
                .store
                .last_duration_ms(&graph.actions[i].name())?
                .unwrap_or(1)
                .max(1);
            let tail = rdeps[i].iter().map(|&r| prio[r]).max().unwrap_or(0);
            prio[i] = own + tail;
        }
        let mut ready = BinaryHeap::new();
        for (i, w) in waiting.iter().enumerate() {
            if *w == 0 {
                ready.push((prio[i], std::cmp::Reverse(i)));
            }
        }
        let shared = Mutex::new(Shared {
            ready,
            waiting,
            done: vec![None; n],
            running: 0,
            remaining: n,
            stop: false,
            summary: Summary::default(),
        });
        let cv = Condvar::new();
        // Digest of every generated file known so far.
        let generated: RwLock<HashMap<String, Digest>> = RwLock::new(HashMap::new());
        let first_error: Mutex<Option<SchedError>> = Mutex::new(None);

        std::thread::scope(|s| {
            for wid in 0..opts.jobs.max(1).min(n.max(1)) {
                let ctx = WorkerCtx {
                    graph,
                    opts,
                    rdeps: &rdeps,
                    prio: &prio,
                    shared: &shared,
                    cv: &cv,
                    generated: &generated,
                    first_error: &first_error,
                };
                s.spawn(move || self.worker(wid, ctx));
            }
        });

        if let Some(e) = first_error.into_inner().expect("error slot") {
            return Err(e);
        }
        let mut st = shared.into_inner().expect("scheduler state");
        st.summary.skipped = st
            .done
            .iter()
            .filter(|d| matches!(d, None | Some(Status::Skipped)))
            .count() as u64;
        st.summary.interrupted = INTERRUPTED.load(Ordering::SeqCst);
        st.summary.duration = start.elapsed();
        st.summary.outputs = generated
            .into_inner()
            .expect("outputs")
            .into_iter()
            .collect();
        st.summary.sources = self
            .sources
            .read()
            .expect("source digests")
            .keys()
            .cloned()
            .collect();
        Ok(st.summary)
    }

    fn worker(&self, wid: usize, ctx: WorkerCtx<'_>) {
        let WorkerCtx {
            graph,
            opts,
            rdeps,
            prio,
            shared,
            cv,
            generated: all_generated,
            first_error,
        } = ctx;
        // A panic in this worker (a bug, or a damaged cache index making redb panic) must
        // stop the build, not leave the other workers waiting for this one's action.
        struct StopOnPanic<'a>(&'a Mutex<Shared>, &'a Condvar);
        impl Drop for StopOnPanic<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    let mut st = self.0.lock().unwrap_or_else(|p| p.into_inner());
                    st.stop = true;
                    drop(st);
                    self.1.notify_all();
                }
            }
        }
        let _stop_on_panic = StopOnPanic(shared, cv);
        loop {
            let idx = {
                let mut st = shared.lock().expect("scheduler state");
                loop {
                    if INTERRUPTED.load(Ordering::SeqCst) {
                        st.stop = true;
                    }
                    if st.stop || st.remaining == 0 {
                        cv.notify_all();
                        return;
                    }
                    if let Some((_, std::cmp::Reverse(i))) = st.ready.pop() {
                        st.running += 1;
                        break i;
                    }
                    if st.running == 0 {
                        // Nothing ready, nothing running: the rest is blocked by failures.
                        cv.notify_all();
                        return;
                    }
                    st = cv.wait(st).expect("scheduler state");
                }
            };
            let action = &graph.actions[idx];
            let name = action.name();
            // The digests of this action's generated inputs (all producers are done).
            let generated: HashMap<String, Digest> = {
                let all = all_generated.read().expect("outputs");
                action
                    .inputs
                    .iter()
                    .chain(action.wasi_tool().into_iter().flat_map(|t| {
                        t.data
                            .iter()
                            .map(|(_, p)| p)
                            .chain(std::iter::once(&t.module))
                    }))
                    .filter_map(|p| all.get(p).map(|d| (p.clone(), *d)))
                    .collect()
            };
            let t0 = Instant::now();
            let fin = match self.process(wid, graph, action, opts, &generated) {
                Ok(f) => f,
                Err(e) => {
                    let mut st = shared.lock().expect("scheduler state");
                    st.stop = true;
                    st.running -= 1;
                    first_error.lock().expect("error slot").get_or_insert(e);
                    cv.notify_all();
                    return;
                }
            };
            let duration_ms = t0.elapsed().as_millis() as u64;
            let digest_text = fin.action_digest.map(|d| d.to_string());
            if let Some(build) = self.build_id {
                let rec = ActionRecord {
                    label: name,
                    mnemonic: action.mnemonic.clone(),
                    action_digest: digest_text.clone().unwrap_or_default(),
                    status: fin.status.as_str().to_owned(),
                    duration_ms,
                };
                if let Err(e) = self.store.record_action(build, &rec) {
                    first_error
                        .lock()
                        .expect("error slot")
                        .get_or_insert(e.into());
                }
            }
            self.events.event(&Event::Action {
                label: action.label.to_string(),
                mnemonic: action.mnemonic.clone(),
                detail: action.detail.clone(),
                status: fin.status,
                duration_ms,
                action_digest: digest_text,
                error: fin.error.clone(),
                output: fin.output.clone(),
                warnings: fin.warnings.clone(),
                accesses: fin.accesses.clone(),
                platform: (action.exec == Exec::Native).then(|| opts.platform.name().to_owned()),
                worker: fin.worker.clone(),
                resubmitted: fin.resubmitted,
            });
            if fin.status != Status::Failed {
                all_generated
                    .write()
                    .expect("outputs")
                    .extend(fin.outputs.iter().cloned());
                if !fin.executables.is_empty() {
                    self.executables
                        .write()
                        .expect("executables")
                        .extend(fin.executables.iter().cloned());
                }
            }
            let mut st = shared.lock().expect("scheduler state");
            st.running -= 1;
            st.remaining -= 1;
            st.done[idx] = Some(fin.status);
            if let (
                Status::Executed | Status::Cached | Status::RemoteCached | Status::RemoteExecuted,
                Some(d),
            ) = (fin.status, fin.action_digest)
            {
                st.summary.actions.push(uptodate::SnapshotAction {
                    label: action.label.to_string(),
                    detail: action.detail.clone().unwrap_or_default(),
                    mnemonic: action.mnemonic.clone(),
                    action_digest: d.to_string(),
                });
            }
            match fin.status {
                Status::Executed => st.summary.executed += 1,
                Status::Cached => st.summary.cached += 1,
                Status::RemoteCached => st.summary.remote_cached += 1,
                Status::RemoteExecuted => st.summary.remote_executed += 1,
                Status::Failed => st.summary.failed += 1,
                Status::Skipped => {}
            }
            if fin.status == Status::Failed {
                if !opts.keep_going {
                    st.stop = true;
                }
                // Everything downstream of a failure is skipped.
                let mut stack = rdeps[idx].clone();
                while let Some(r) = stack.pop() {
                    if st.done[r].is_none() {
                        st.done[r] = Some(Status::Skipped);
                        st.remaining -= 1;
                        stack.extend(rdeps[r].iter().copied());
                    }
                }
            } else {
                for &r in &rdeps[idx] {
                    st.waiting[r] -= 1;
                    if st.waiting[r] == 0 && st.done[r].is_none() {
                        st.ready.push((prio[r], std::cmp::Reverse(r)));
                    }
                }
            }
            cv.notify_all();
        }
    }

    /// Digest of an input: generated (from the producing action) or a source file.
    fn input_digest(
        &self,
        graph: &ActionGraph,
        path: &str,
        generated: &HashMap<String, Digest>,
    ) -> Result<(Digest, bool), String> {
        if let Some(d) = generated.get(path) {
            return Ok((*d, false));
        }
        if let Some((_, label)) = graph.producers.get(path) {
            return Err(format!(
                "input {path} (produced by {label}) is not available"
            ));
        }
        if let Some(d) = self.sources.read().expect("source digests").get(path) {
            return Ok((*d, true));
        }
        let abs = self.ws.path(path);
        let d = self
            .store
            .file_digest(&abs)
            .map_err(|e| format!("cannot read input {path}: {e}"))?;
        self.sources
            .write()
            .expect("source digests")
            .insert(path.to_owned(), d);
        Ok((d, true))
    }

    /// Compute the action key: REAPI Command, input root and Action.
    fn prepare(
        &self,
        graph: &ActionGraph,
        action: &ActionNode,
        opts: &Options,
        generated: &HashMap<String, Digest>,
    ) -> Result<Prepared, String> {
        let f = self.store.function();
        let mut files = BTreeMap::new();
        let mut sources = Vec::new();
        for path in &action.inputs {
            let (d, is_source) = self.input_digest(graph, path, generated)?;
            if is_source {
                sources.push((path.clone(), d));
            }
            files.insert(path.clone(), d);
        }
        let mut launchers = Vec::new();
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        let mut props = ExecProps::default();
        let mut executables = HashSet::new();
        let (platform, kind): (Vec<(&str, String)>, Kind) = match &action.exec {
            Exec::Wasi(tool) => {
                for (guest, ws_path) in &tool.data {
                    let (d, is_source) = self.input_digest(graph, ws_path, generated)?;
                    if is_source {
                        sources.push((ws_path.clone(), d));
                    }
                    let staged = guest.trim_start_matches('/').to_owned();
                    if let Some(prev) = files.insert(staged.clone(), d)
                        && prev != d
                    {
                        return Err(format!(
                            "tool data {guest} of {} collides with input {staged}",
                            tool.label
                        ));
                    }
                }
                let (m, module_is_source) = self.input_digest(graph, &tool.module, generated)?;
                if module_is_source {
                    sources.push((tool.module.clone(), m));
                }
                props.set("wbuild-executor", EXECUTOR_VERSION);
                props.set("wbuild-memory-limit", opts.memory_limit_bytes.to_string());
                props.set("wbuild-source-date-epoch", opts.epoch_secs.to_string());
                (
                    vec![("OSFamily", "wasi".to_owned())],
                    Kind::Wasi {
                        module: m,
                        memory_limit: opts.memory_limit_bytes,
                    },
                )
            }
            Exec::Native => {
                // The platform's tools (from its toolchain bundle, if one is pinned), unless
                // the rule sets the variable itself.
                match &opts.native_toolchain {
                    Some(tc) => env.extend(tc.env.iter().cloned()),
                    None => {
                        for (k, v) in opts.platform.tool_env() {
                            env.insert(k.to_owned(), v);
                        }
                    }
                }
                props.set("wbuild-executor", wbuild_exec_native::SANDBOX_VERSION);
                props.set(
                    "wbuild-sandbox",
                    if opts.unsandboxed {
                        "none"
                    } else {
                        "namespaces"
                    },
                );
                props.set("wbuild-source-date-epoch", opts.epoch_secs.to_string());
                props.set(
                    "wbuild-toolchain",
                    match &opts.native_toolchain {
                        Some(tc) => format!("bundle {} {}", tc.name, tc.digest),
                        None => native::toolchain_identity(opts.platform),
                    },
                );
                // Executable inputs (tests, tools built earlier) stay executable.
                {
                    let known = self.executables.read().expect("executables");
                    executables.extend(files.keys().filter(|p| known.contains(*p)).cloned());
                }
                // Launchers of the WASI tools the command runs: part of the input root, and
                // the WASI executor's semantics part of the key.
                for (path, tool) in &action.wasi_tools {
                    let script = native::wasi_launcher(path, tool, &action.outputs, opts);
                    files.insert(path.clone(), Digest::of(f, script.as_bytes()));
                    executables.insert(path.clone());
                    launchers.push((path.clone(), script));
                }
                if !action.wasi_tools.is_empty() {
                    props.set("wbuild-wasi-executor", EXECUTOR_VERSION);
                }
                (
                    vec![
                        ("ISA", opts.platform.isa().to_owned()),
                        ("OSFamily", "linux".to_owned()),
                    ],
                    Kind::Native {
                        toolchain: opts.native_toolchain.clone(),
                        unsandboxed: opts.unsandboxed,
                        runs_wasi_tools: !action.wasi_tools.is_empty(),
                    },
                )
            }
        };
        // Pinned toolchain bundles the action uses: their digests are its toolchain identity.
        let mut bundles = BTreeMap::new();
        let tool_paths = action
            .wasi_tool()
            .into_iter()
            .chain(action.wasi_tools.iter().map(|(_, t)| t))
            .flat_map(|t| std::iter::once(&t.module).chain(t.data.iter().map(|(_, p)| p)));
        for p in action.inputs.iter().chain(tool_paths) {
            if let Some((ext, _)) = self.ws.external_of(p) {
                let name = self.ws.external_name(p).expect("external");
                bundles.insert(name, ext.digest.as_str());
            }
        }
        if !bundles.is_empty() {
            let v: Vec<String> = bundles.iter().map(|(n, d)| format!("{n}={d}")).collect();
            props.set("wbuild-toolchain-bundles", v.join(","));
        }
        env.extend(action.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let env: Vec<(String, String)> = env.into_iter().collect();
        let mut keyed = files.clone();
        if let Kind::Wasi { module, .. } = &kind {
            keyed.insert(spec::MODULE_PATH.to_owned(), *module);
        }
        let (root, dirs) = merkle::input_root(f, &keyed, &executables)
            .map_err(|c| format!("input path {} is both a file and a directory", c.0))?;

        let platform = reapi::Platform {
            properties: platform
                .into_iter()
                .map(|(n, v)| reapi::platform::Property {
                    name: n.to_owned(),
                    value: v,
                })
                .collect(),
        };
        #[allow(deprecated)]
        let command = reapi::Command {
            arguments: action.argv.clone(),
            environment_variables: env
                .iter()
                .map(|(k, v)| reapi::command::EnvironmentVariable {
                    name: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            output_paths: action.outputs.clone(),
            platform: Some(platform.clone()),
            ..Default::default()
        };
        let (command_digest, _) = digest_message(f, &command);
        let act = reapi::Action {
            command_digest: Some(command_digest.to_proto()),
            input_root_digest: Some(root.to_proto()),
            timeout: Some(bazel_remote_apis::google::protobuf::Duration {
                seconds: opts.timeout.as_secs() as i64,
                nanos: 0,
            }),
            do_not_cache: false,
            salt: props.encode(),
            platform: Some(platform),
        };
        let (action_digest, _) = digest_message(f, &act);
        let name = match action.wasi_tool() {
            Some(t) => t.label.to_string(),
            None => action.label.to_string(),
        };
        let spec = Spec {
            name,
            argv: action.argv.clone(),
            env,
            files,
            executables,
            outputs: action.outputs.clone(),
            epoch_secs: opts.epoch_secs,
            timeout: opts.timeout,
            seed: action_digest.hash,
            kind,
        };
        Ok(Prepared {
            action_digest,
            action: act,
            command,
            dirs,
            spec,
            sources,
            launchers,
        })
    }

    fn process(
        &self,
        wid: usize,
        graph: &ActionGraph,
        action: &ActionNode,
        opts: &Options,
        generated: &HashMap<String, Digest>,
    ) -> Result<Finished, SchedError> {
        let prep = match self.prepare(graph, action, opts, generated) {
            Ok(p) => p,
            Err(e) => return Ok(Finished::failed(e)),
        };
        if let Some(result) = self.store.ac_get(&prep.action_digest)? {
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
            if let Some(files) = valid {
                let (outputs, executables) = split_outputs(files);
                match self.materialize(&outputs, &executables, &opts.platform.out_dir()) {
                    Ok(()) => {
                        let output = if opts.show_output {
                            self.cached_output(&result)
                        } else {
                            None
                        };
                        return Ok(Finished {
                            status: Status::Cached,
                            outputs,
                            executables,
                            error: None,
                            output,
                            warnings: Vec::new(),
                            accesses: None,
                            action_digest: Some(prep.action_digest),
                            worker: None,
                            resubmitted: false,
                        });
                    }
                    Err(wbuild_store::StoreError::Corrupt { .. })
                    | Err(wbuild_store::StoreError::NotFound { .. }) => {
                        // A blob went bad: forget the entry and run the action again.
                        self.store.ac_remove(&prep.action_digest)?;
                    }
                    Err(e) => return Err(e.into()),
                }
            } else {
                self.store.ac_remove(&prep.action_digest)?;
            }
        }
        if let Some(fin) = self.remote_lookup(graph, action, opts, &prep)? {
            return Ok(fin);
        }
        if let Some(fin) = self.remote_execute(graph, action, opts, &prep)? {
            return Ok(fin);
        }
        self.execute(wid, graph, action, opts, prep)
    }

    /// The remote cache while it works (`None` after its first failure).
    fn remote(&self) -> Option<&wbuild_remote::RemoteCache> {
        self.remote.get()
    }

    /// The remote failed: say so once and go on without it.
    fn remote_failed(&self, e: wbuild_remote::ClientError) {
        self.remote.failed(e, self.events);
    }

    /// Looks the action up in the remote cache; on a hit, fetches the outputs it lacks
    /// (verified), records the entry locally and materialises the outputs.
    fn remote_lookup(
        &self,
        graph: &ActionGraph,
        action: &ActionNode,
        opts: &Options,
        prep: &Prepared,
    ) -> Result<Option<Finished>, SchedError> {
        let Some(remote) = self.remote() else {
            return Ok(None);
        };
        let mut result = match remote.get_action_result(&prep.action_digest, &action.outputs) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.remote_failed(e);
                return Ok(None);
            }
        };
        if result.exit_code != 0 {
            return Ok(None);
        }
        // Only what this action could have produced: exactly its declared outputs, as files.
        let files = match validate_result(self.store.function(), &action.outputs, &result) {
            Ok(v) => v,
            Err(e) => {
                self.invalid_result(&format!("remote cache {}", remote.url()), action, &e);
                return Ok(None);
            }
        };
        let (outputs, executables) = split_outputs(files);
        let (_, _, accesses) = match self.fetch_result(remote, &mut result, &outputs) {
            Ok(Some(x)) => x,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.remote_failed(e);
                return Ok(None);
            }
        };
        // A WASI result whose guest read undeclared inputs or left its sandbox is not used
        // (running the action again reports why).
        if let Some(log) = &accesses {
            if !self.check_accesses(graph, action, prep, log).is_empty() {
                return Ok(None);
            }
            self.store
                .put_access_log(&prep.action_digest, &log.to_json())?;
        }
        self.store
            .ac_put(&prep.action_digest, &result, &action.label.to_string())?;
        self.materialize(&outputs, &executables, &opts.platform.out_dir())?;
        Ok(Some(Finished {
            status: Status::RemoteCached,
            outputs,
            executables,
            error: None,
            output: None,
            warnings: Vec::new(),
            accesses: None,
            action_digest: Some(prep.action_digest),
            worker: None,
            resubmitted: false,
        }))
    }

    /// A slot for running an action here.
    fn local_slot(&self) -> SemaphoreGuard<'_> {
        self.local_slots.acquire()
    }

    /// The executor while it is reachable.
    fn executor(&self) -> Option<&wbuild_remote::RemoteCache> {
        self.executor.get()
    }

    /// The executor cannot be reached: say so once and run the rest here.
    fn executor_failed(&self, e: wbuild_remote::ClientError) {
        self.executor.failed(e, self.events);
    }

    /// Runs the action on a worker of the remote executor: uploads what the engine lacks
    /// (inputs, the `Command`, the input tree, the `Action`), executes it, fetches and
    /// verifies the outputs. `None`: run it here (no executor, one that cannot run this
    /// action, or an executor failure, reported as a warning).
    fn remote_execute(
        &self,
        graph: &ActionGraph,
        action: &ActionNode,
        opts: &Options,
        prep: &Prepared,
    ) -> Result<Option<Finished>, SchedError> {
        let Some(ex) = self.executor() else {
            return Ok(None);
        };
        if let Kind::Native {
            toolchain,
            unsandboxed,
            ..
        } = &prep.spec.kind
        {
            if *unsandboxed {
                return Ok(None);
            }
            if toolchain.is_none() {
                // Keyed on this machine's toolchain: no worker can run it as keyed.
                let platform = opts.platform.name().to_owned();
                if self
                    .warned_local
                    .lock()
                    .expect("warned")
                    .insert(platform.clone())
                {
                    self.events.event(&Event::Warning {
                        message: format!(
                            "native actions for {platform} run here: they use the host's toolchain; pin a toolchain bundle for {platform} in wbuild.toml to run them remotely"
                        ),
                    });
                }
                return Ok(None);
            }
        }
        if let Err(e) = self.stage_sources(prep)? {
            return Ok(Some(Finished::failed(e)));
        }
        let f = self.store.function();
        let mut messages: HashMap<Digest, Vec<u8>> = HashMap::new();
        let (command_digest, command_bytes) = digest_message(f, &prep.command);
        messages.insert(command_digest, command_bytes);
        messages.insert(
            prep.action_digest,
            prost::Message::encode_to_vec(&prep.action),
        );
        for (d, bytes) in &prep.dirs {
            messages.insert(*d, bytes.clone());
        }
        // A copy to submit if this one straggles (the threshold is asked again while it
        // runs: earlier runs of the mnemonic may finish meanwhile).
        let copy = wbuild_remote::speculative_copy(&prep.action);
        let copy_digest = Digest::of(f, &copy);
        messages.insert(copy_digest, copy);
        let durations = self.remote_durations.clone();
        let mnemonic = action.mnemonic.clone();
        let resubmission = Some(wbuild_remote::Resubmission {
            action: copy_digest,
            wait: Box::new(move || straggler_wait(&durations, &mnemonic)),
        });
        let mut blobs: Vec<Digest> = messages.keys().copied().collect();
        blobs.extend(prep.spec.files.values().copied());
        if let Kind::Wasi { module, .. } = &prep.spec.kind {
            blobs.push(*module);
        }
        blobs.sort_by_key(|d| d.hash);
        blobs.dedup();
        let uploaded = ex.upload_missing(&blobs, |d| {
            messages
                .get(d)
                .cloned()
                .or_else(|| self.store.get_bytes(d).ok())
        });
        if let Err(e) = uploaded {
            self.executor_failed(e);
            return Ok(None);
        }
        let t0 = Instant::now();
        let executed = match ex.execute(&prep.action_digest, resubmission) {
            Ok(x) => x,
            Err(e) => {
                self.executor_failed(e);
                return Ok(None);
            }
        };
        let worker = Some(executed.worker())
            .filter(|w| !w.is_empty())
            .unwrap_or("an unnamed worker")
            .to_owned();
        let resubmitted = executed.resubmitted;
        let response = executed.response;
        // The engine answered from its cache (another client ran it since our lookup).
        let cached = response.cached_result;
        let refused = |why: String| {
            self.events.event(&Event::Warning {
                message: format!(
                    "{}: the remote executor did not run it ({why}); running it here",
                    action.name()
                ),
            });
            Ok(None)
        };
        if let Some(status) = response.status.as_ref().filter(|s| s.code != 0) {
            return refused(format!("status {}: {}", status.code, status.message));
        }
        let Some(mut result) = response.result else {
            return refused("no result".to_owned());
        };
        // A successful result must hold exactly the declared outputs; a failed one's outputs
        // are never used (nor fetched).
        let (outputs, executables) = if result.exit_code == 0 {
            match validate_result(self.store.function(), &action.outputs, &result) {
                Ok(v) => split_outputs(v),
                Err(e) => {
                    self.invalid_result(&format!("remote executor ({worker})"), action, &e);
                    return Ok(None);
                }
            }
        } else {
            result.output_files.clear();
            (Vec::new(), HashSet::new())
        };
        let fetched = match self.fetch_result(ex, &mut result, &outputs) {
            Ok(Some(x)) => x,
            Ok(None) => return refused(format!("{worker} sent a malformed result")),
            Err(e) => {
                self.executor_failed(e);
                return Ok(None);
            }
        };
        let elapsed = t0.elapsed().as_millis() as u64;
        if !resubmitted {
            self.remote_durations
                .lock()
                .expect("durations")
                .entry(action.mnemonic.clone())
                .or_default()
                .push(elapsed);
        }
        let (stdout, stderr, accesses) = fetched;
        let mut errors = Vec::new();
        if result.exit_code != 0 {
            errors.push(format!(
                "the command exited with code {} on {worker}",
                result.exit_code
            ));
        }
        if let Some(log) = &accesses {
            self.store
                .put_access_log(&prep.action_digest, &log.to_json())?;
        }
        let ran = RunOutput {
            outputs,
            executables,
            errors,
            exit_code: result.exit_code,
            stdout,
            stderr,
            accesses,
        };
        let mut fin = self.finish_run(graph, action, opts, prep, ran, Some(worker))?;
        fin.resubmitted = resubmitted;
        if cached && fin.status == Status::RemoteExecuted {
            fin.status = Status::RemoteCached;
        }
        Ok(Some(fin))
    }

    /// Downloads (verified) what a remote result references into the store: the (validated)
    /// `outputs`, stdout, stderr and a WASI guest's access log. `None`: the result is
    /// malformed.
    #[allow(clippy::type_complexity)]
    fn fetch_result(
        &self,
        remote: &wbuild_remote::RemoteCache,
        result: &mut reapi::ActionResult,
        outputs: &[(String, Digest)],
    ) -> Result<Option<(Vec<u8>, Vec<u8>, Option<AccessLog>)>, wbuild_remote::ClientError> {
        let f = self.store.function();
        let put = |d: Digest, bytes: &[u8]| self.store.put_bytes(bytes).ok() == Some(d);
        for (d, bytes) in wbuild_remote::take_inlined(result, f)? {
            if !self.store.has(&d) && !put(d, &bytes) {
                return Ok(None);
            }
        }
        let digest = |p: Option<&reapi::Digest>| p.and_then(|d| Digest::from_proto(f, d).ok());
        let access_log = result
            .execution_metadata
            .as_ref()
            .into_iter()
            .flat_map(|m| m.auxiliary_metadata.iter())
            .find(|a| a.type_url == ACCESS_LOG_TYPE_URL)
            .and_then(|a| <reapi::Digest as prost::Message>::decode(&a.value[..]).ok())
            .and_then(|d| Digest::from_proto(f, &d).ok());
        let stdout = digest(result.stdout_digest.as_ref());
        let stderr = digest(result.stderr_digest.as_ref());
        let mut wanted: Vec<Digest> = outputs
            .iter()
            .map(|(_, d)| *d)
            .chain(stdout)
            .chain(stderr)
            .chain(access_log)
            .collect();
        wanted.sort_by_key(|d| d.hash);
        wanted.dedup();
        wanted.retain(|d| !self.store.has(d));
        for (d, bytes) in remote.download(&wanted)? {
            if !put(d, &bytes) {
                return Ok(None);
            }
        }
        let read = |d: Option<Digest>| {
            d.map(|d| self.store.get_bytes(&d).unwrap_or_default())
                .unwrap_or_default()
        };
        let accesses = match access_log {
            Some(d) => {
                let text = String::from_utf8(read(Some(d))).unwrap_or_default();
                match AccessLog::from_json(&text) {
                    Ok(log) => Some(log),
                    Err(_) => return Ok(None),
                }
            }
            None => None,
        };
        Ok(Some((read(stdout), read(stderr), accesses)))
    }

    /// A result from `source` cannot be used: say so (it is a miss; the action runs again).
    fn invalid_result(&self, source: &str, action: &ActionNode, e: &InvalidResult) {
        self.events.event(&Event::Warning {
            message: format!(
                "{source}: the result for {} is not valid ({e}); ignoring it and running the action",
                action.name()
            ),
        });
    }

    /// Uploads an executed action's blobs the remote lacks, then its result.
    fn remote_upload(&self, action_digest: &Digest, result: &reapi::ActionResult) {
        let Some(remote) = self.remote() else {
            return;
        };
        let f = self.store.function();
        let mut blobs: Vec<Digest> = result
            .output_files
            .iter()
            .filter_map(|o| o.digest.as_ref())
            .chain(result.stdout_digest.as_ref())
            .chain(result.stderr_digest.as_ref())
            .filter_map(|d| Digest::from_proto(f, d).ok())
            .collect();
        blobs.sort_by_key(|d| d.hash);
        blobs.dedup();
        let outcome = remote
            .upload_missing(&blobs, |d| self.store.get_bytes(d).ok())
            .and_then(|()| remote.update_action_result(action_digest, result));
        if let Err(e) = outcome {
            self.remote_failed(e);
        }
    }

    fn cached_output(&self, result: &reapi::ActionResult) -> Option<String> {
        let mut text = String::new();
        for d in [&result.stdout_digest, &result.stderr_digest]
            .into_iter()
            .flatten()
        {
            if let Ok(d) = Digest::from_proto(self.store.function(), d)
                && let Ok(bytes) = self.store.get_bytes(&d)
            {
                text.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
        (!text.is_empty()).then_some(text)
    }

    /// Copy outputs into `wbuild-out/`, skipping files that already hold the right bytes.
    fn materialize(
        &self,
        outputs: &[(String, Digest)],
        executables: &HashSet<String>,
        out_dir: &str,
    ) -> Result<(), wbuild_store::StoreError> {
        for (path, d) in outputs {
            // Every path here was validated (or declared by the build files); never write
            // outside the output directory whatever happens upstream.
            if !is_normalised(path) {
                return Err(wbuild_store::StoreError::Io {
                    op: "materialize",
                    path: self.ws.root.join(out_dir),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("output path {path:?} is not a normalised relative path"),
                    ),
                });
            }
            let dest = self.ws.root.join(out_dir).join(path);
            if let Ok(have) = self.store.file_digest(&dest)
                && have == *d
            {
                continue;
            }
            self.store
                .materialize(d, &dest, executables.contains(path))?;
        }
        Ok(())
    }

    /// Puts what staging the action needs into the CAS: its source files (checking they did
    /// not change since they were hashed) and its launcher scripts. `Err(message)` fails it.
    fn stage_sources(&self, prep: &Prepared) -> Result<Result<(), String>, SchedError> {
        for (path, d) in &prep.sources {
            if !self.store.has(d) {
                let got = self.store.put_file(&self.ws.path(path))?;
                if got != *d {
                    return Ok(Err(format!(
                        "input {path} changed while the build was running; run the build again"
                    )));
                }
            }
        }
        for (_, script) in &prep.launchers {
            self.store.put_bytes(script.as_bytes())?;
        }
        Ok(Ok(()))
    }

    fn execute(
        &self,
        wid: usize,
        graph: &ActionGraph,
        action: &ActionNode,
        opts: &Options,
        prep: Prepared,
    ) -> Result<Finished, SchedError> {
        // Sources enter the CAS so they can be staged from it (and shared later).
        if let Err(e) = self.stage_sources(&prep)? {
            return Ok(Finished::failed(e));
        }
        let ran = {
            let _local = self.local_slot();
            spec::run_spec(&self.store, &self.exec, wid, &prep.spec)?
        };
        if let Some(log) = &ran.accesses {
            self.store
                .put_access_log(&prep.action_digest, &log.to_json())?;
        }
        self.finish_run(graph, action, opts, &prep, ran, None)
    }

    /// Turns what a run produced (here or on a worker) into the action's outcome: access
    /// checks, the action-cache entry, the upload and the materialised outputs.
    fn finish_run(
        &self,
        graph: &ActionGraph,
        action: &ActionNode,
        opts: &Options,
        prep: &Prepared,
        ran: RunOutput,
        worker: Option<String>,
    ) -> Result<Finished, SchedError> {
        let RunOutput {
            outputs,
            executables,
            mut errors,
            stdout,
            stderr,
            accesses,
            ..
        } = ran;
        let mut warnings = Vec::new();
        if let Some(log) = &accesses {
            errors.extend(self.check_accesses(graph, action, prep, log));
            // Unused inputs are worth a warning only when the tool did its job.
            if errors.is_empty() {
                warnings = unused_inputs(action, log);
            }
        }
        let accesses = accesses
            .as_ref()
            .and_then(|log| serde_json::from_str(&log.to_json()).ok());
        let status = if worker.is_some() {
            Status::RemoteExecuted
        } else {
            Status::Executed
        };
        let mut text = String::from_utf8_lossy(&stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&stderr));
        if !errors.is_empty() {
            return Ok(Finished {
                status: Status::Failed,
                outputs: Vec::new(),
                executables: HashSet::new(),
                error: Some(errors.join("; ")),
                output: (!text.is_empty()).then_some(text),
                warnings,
                accesses,
                action_digest: Some(prep.action_digest),
                worker,
                resubmitted: false,
            });
        }
        let stdout_digest = (!stdout.is_empty())
            .then(|| self.store.put_bytes(&stdout))
            .transpose()?;
        let stderr_digest = (!stderr.is_empty())
            .then(|| self.store.put_bytes(&stderr))
            .transpose()?;
        let result = reapi::ActionResult {
            output_files: outputs
                .iter()
                .map(|(path, d)| reapi::OutputFile {
                    path: path.clone(),
                    digest: Some(d.to_proto()),
                    is_executable: executables.contains(path),
                    contents: Vec::new(),
                    node_properties: None,
                })
                .collect(),
            exit_code: 0,
            stdout_digest: stdout_digest.map(|d| d.to_proto()),
            stderr_digest: stderr_digest.map(|d| d.to_proto()),
            ..Default::default()
        };
        self.store
            .ac_put(&prep.action_digest, &result, &action.label.to_string())?;
        // Unsandboxed native results are never shared; a worker's are shared already.
        let unsandboxed = opts.unsandboxed && action.exec == Exec::Native;
        if opts.remote_upload && !unsandboxed && worker.is_none() {
            self.remote_upload(&prep.action_digest, &result);
        }
        self.materialize(&outputs, &executables, &opts.platform.out_dir())?;
        let show = opts.show_output || text.to_ascii_lowercase().contains("warning");
        Ok(Finished {
            status,
            outputs,
            executables,
            error: None,
            output: (show && !text.is_empty()).then_some(text),
            warnings,
            accesses,
            action_digest: Some(prep.action_digest),
            worker,
            resubmitted: false,
        })
    }

    /// Undeclared reads and refused accesses become errors naming the path and what to do.
    fn check_accesses(
        &self,
        graph: &ActionGraph,
        action: &ActionNode,
        prep: &Prepared,
        log: &AccessLog,
    ) -> Vec<String> {
        let mut errors = Vec::new();
        for path in log.paths(AccessKind::Missing) {
            if path.starts_with("/tmp") || prep.spec.files.contains_key(path) {
                continue;
            }
            if let Some((_, label)) = graph.producers.get(path) {
                if *label != action.label {
                    errors.push(format!(
                        "read undeclared input {path}, which is produced by {label}: add {label} to srcs of {}",
                        action.label
                    ));
                }
            } else if self.ws.path(path).is_file() {
                errors.push(format!(
                    "read undeclared input {path}: add it to srcs of {}",
                    action.label
                ));
            }
        }
        for path in log.paths(AccessKind::Denied) {
            if path.starts_with('/') || path.starts_with("..") || path.contains("/..") {
                errors.push(format!(
                    "tried to reach {path} outside its sandbox (only declared inputs, outputs and /tmp exist)"
                ));
            } else if prep.spec.files.contains_key(path) {
                errors.push(format!(
                    "tried to modify its input {path}; inputs are read-only"
                ));
            } else {
                errors.push(format!(
                    "tried to write undeclared path {path}: declare it in outs of {} or write scratch files to /tmp",
                    action.label
                ));
            }
        }
        errors
    }
}

/// Validated outputs as `(path, digest)` and the set of executable ones.
fn split_outputs(files: Vec<(String, Digest, bool)>) -> (Vec<(String, Digest)>, HashSet<String>) {
    let executables = files
        .iter()
        .filter(|(_, _, x)| *x)
        .map(|(p, _, _)| p.clone())
        .collect();
    let outputs = files.into_iter().map(|(p, d, _)| (p, d)).collect();
    (outputs, executables)
}

/// Declared inputs the tool never opened, stat'ed or listed.
fn unused_inputs(action: &ActionNode, log: &AccessLog) -> Vec<String> {
    let touched: std::collections::HashSet<&str> = log
        .accesses
        .iter()
        .filter(|a| {
            matches!(
                a.kind,
                AccessKind::Read | AccessKind::Stat | AccessKind::List
            )
        })
        .map(|a| a.path.as_str())
        .collect();
    action
        .inputs
        .iter()
        .filter(|p| !touched.contains(p.as_str()))
        .map(|p| format!("declared input {p} was never read by {}", action.label))
        .collect()
}
