//! The WASI executor: runs one build action's tool, a `wasm32-wasip1` command module, inside
//! wasmtime with a capability-scoped, observed and deterministic view of the world.
//!
//! The guest sees exactly two preopened directories: the action root at `/` (inputs at their
//! workspace paths, read-only by policy; declared outputs writable) and a private empty `/tmp`.
//! There are no sockets, the environment is exactly the one given, the wall clock reads the
//! configured `SOURCE_DATE_EPOCH`, the monotonic clock advances deterministically, random bytes
//! are seeded by the caller (wbuild: from the action's command and settings), directory listings are sorted and file metadata carries
//! fixed times. Every file-system access is recorded in an [`AccessLog`].
//!
//! What it must never do: open a guest-named path with ambient `std::fs` (all guest access goes
//! through wasmtime-wasi and cap-std handles rooted at the action's directories), let a guest
//! write anything but its declared outputs and `/tmp`, or let the host's time, randomness or
//! environment reach a guest.

mod access;
mod observe;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig, ResourceLimiter, Store, Trap, UpdateDeadline,
};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

pub use access::{Access, AccessKind, AccessLog};

/// Version of the sandbox semantics; part of every WASI action key.
pub const EXECUTOR_VERSION: &str = "wbuild-wasi/2";

/// Captured stdout/stderr is cut off at this size.
const OUTPUT_CAPACITY: usize = 16 << 20;
/// How often the epoch advances (time-limit granularity).
const EPOCH_TICK: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot set up the WASI engine: {0}")]
    Engine(String),
    #[error("tool module {module} is not a valid WebAssembly module: {message}")]
    InvalidModule { module: String, message: String },
    /// A valid module that needs a WebAssembly proposal the executor does not enable.
    #[error(
        "tool module {module} uses a WebAssembly feature this executor does not enable: {message}. \
         Enabled: {ENABLED_PROPOSALS}; shared-memory threads are left out on purpose (they make a \
         run depend on scheduling)"
    )]
    UnsupportedFeature { module: String, message: String },
    /// A valid module larger than the executor's instance limits.
    #[error(
        "tool module {module} needs more than the executor allows: {message}. Limits: tables of \
         {MAX_TABLE_ELEMENTS} elements, {MAX_TABLES_PER_MODULE} tables and \
         {MAX_MEMORIES_PER_MODULE} memories per module, {} MiB of instance metadata",
        MAX_INSTANCE_SIZE >> 20
    )]
    OverLimit { module: String, message: String },
    #[error("cannot prepare the sandbox at {path}: {error}")]
    Sandbox {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot instantiate tool module {module}: {message}")]
    Instantiate { module: String, message: String },
}

/// Engine-wide settings.
#[derive(Clone, Debug)]
pub struct ExecConfig {
    /// Where compiled modules are cached (`Store::modules_dir`).
    pub modules_dir: PathBuf,
    /// Upper bound on guests running at once (sizes the pooling allocator).
    pub max_concurrent: u32,
}

/// One action to run.
#[derive(Clone, Debug)]
pub struct Request {
    /// Digest text of the module (its identity; names the compiled-module cache entry).
    pub module_key: String,
    /// Where the module's bytes are (read only on a compile-cache miss).
    pub module_path: PathBuf,
    /// Human name for messages (e.g. the wasi_tool label).
    pub module_name: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Host directory presented at `/` (inputs staged, output parents created).
    pub root: PathBuf,
    /// Host directory presented at `/tmp` (empty).
    pub tmp: PathBuf,
    /// Paths staged under `root` (inputs and tool data). The root directory may hold other
    /// entries (it is reused between actions); the guest sees only these, the outputs and the
    /// directories leading to them.
    pub inputs: Vec<String>,
    /// Workspace paths the guest may write.
    pub outputs: Vec<String>,
    /// Seconds since the Unix epoch the wall clock reads.
    pub epoch_secs: u64,
    /// Seed of the guest's random bytes (derive it from the action digest).
    pub random_seed: [u8; 32],
    pub memory_limit_bytes: u64,
    pub timeout: Duration,
}

/// `items` joined with `, `: all of them, or the first `shown` and how many more.
pub fn summarise(items: &[String], shown: usize) -> String {
    if items.len() <= shown {
        items.join(", ")
    } else {
        format!(
            "{} and {} more",
            items[..shown].join(", "),
            items.len() - shown
        )
    }
}

/// Why a guest did not finish normally.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The guest trapped (e.g. `unreachable`, out-of-bounds access, stack overflow).
    Trap(String),
    /// Ran longer than the time limit.
    Timeout(Duration),
    /// Tried to grow its memory beyond the limit.
    MemoryLimit(u64),
    /// The build was interrupted (Ctrl-C).
    Interrupted,
    /// The tool exited successfully but left temporary files beside its outputs.
    LeftFiles(Vec<String>),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Trap(t) => write!(f, "the tool trapped: {t}"),
            Failure::Timeout(d) => write!(
                f,
                "the tool ran longer than its time limit of {}s and was stopped (raise [wasi] timeout_secs in wbuild.toml if it needs longer)",
                d.as_secs_f64()
            ),
            Failure::MemoryLimit(b) => write!(
                f,
                "the tool tried to use more than its memory limit of {} MiB and was stopped (raise [wasi] memory_limit_mb in wbuild.toml if it needs more)",
                b >> 20
            ),
            Failure::Interrupted => write!(f, "interrupted"),
            Failure::LeftFiles(files) => write!(
                f,
                "the tool left undeclared files beside its outputs: {}; a tool may write \
                 temporary files there but must rename them onto its outputs or remove them \
                 before it exits (declare them in outs to keep them)",
                summarise(files, 5)
            ),
        }
    }
}

/// What happened.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// `proc_exit` code, or 0 when `_start` returned; meaningless if `failure` is set.
    pub exit_code: i32,
    pub failure: Option<Failure>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub accesses: AccessLog,
    pub duration: Duration,
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.failure.is_none() && self.exit_code == 0
    }
}

/// Store data of one guest instance.
pub(crate) struct State {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) obs: observe::Observer,
    limits: Limits,
    stopped: Option<Stop>,
}

#[derive(Clone, Copy)]
enum Stop {
    Timeout,
    Interrupted,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Stop every running guest of this process at its next epoch tick (Ctrl-C).
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

struct Limits {
    memory: usize,
    hit: bool,
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// Wall clock fixed at `SOURCE_DATE_EPOCH`.
struct FixedWallClock(Duration);
impl wasmtime_wasi::HostWallClock for FixedWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }
    fn now(&self) -> Duration {
        self.0
    }
}

/// Monotonic clock that advances one microsecond per reading.
struct CountingClock(AtomicU64);
impl wasmtime_wasi::HostMonotonicClock for CountingClock {
    fn resolution(&self) -> u64 {
        1_000
    }
    fn now(&self) -> u64 {
        self.0.fetch_add(1_000, Ordering::Relaxed)
    }
}

/// Deterministic random bytes: a BLAKE3 XOF stream of the seed, cycled.
fn deterministic_rng(seed: &[u8; 32], domain: &str) -> wasmtime_wasi::Deterministic {
    let mut bytes = vec![0u8; 64 << 10];
    let mut h = blake3::Hasher::new_keyed(seed);
    h.update(domain.as_bytes());
    h.finalize_xof().fill(&mut bytes);
    wasmtime_wasi::Deterministic::new(bytes)
}

/// How many descriptors one guest may hold open: half of the process's soft `RLIMIT_NOFILE`
/// shared among the guests that may run at once, between 64 and 1024. Each guest descriptor is
/// a host descriptor; without a bound, one guest opening files in a loop would make every other
/// action (and the store) fail with "too many open files".
fn max_open_files(max_concurrent: u32) -> usize {
    // Linux: "Max open files  <soft>  <hard>  files" in /proc/self/limits.
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Max open files"))?;
            line["Max open files".len()..]
                .split_whitespace()
                .next()?
                .parse::<usize>()
                .ok()
        })
        .unwrap_or(1024);
    (soft / 2 / max_concurrent.max(1) as usize).clamp(64, 1024)
}

/// The engine, linker and compiled-module caches; one per process, shared by all actions.
pub struct WasiExecutor {
    engine: Engine,
    linker: Linker<State>,
    modules_dir: PathBuf,
    engine_key: String,
    modules: Mutex<HashMap<String, InstancePre<State>>>,
    loading: Mutex<()>,
    stop_ticker: Arc<AtomicBool>,
    compiled: AtomicU64,
    /// Descriptors one guest may hold open (see [`max_open_files`]).
    max_open_files: usize,
}

impl Drop for WasiExecutor {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// The WebAssembly proposals the executor enables, for messages.
pub const ENABLED_PROPOSALS: &str = "bulk memory, multi-value, reference types, SIMD, relaxed SIMD \
     (deterministic), tail calls, extended constants, multi-memory, function references, GC, \
     exception handling, memory64";

/// Largest table (in elements) a guest may define: LLVM-class modules hold tens of thousands
/// of functions in their indirect-call table (clang: ~37,000). Each pooled table slot
/// reserves 8 bytes per element of address space, committed only as it is used.
pub const MAX_TABLE_ELEMENTS: usize = 1 << 20;
/// Largest instance metadata (one entry per imported or defined function, global, table,
/// memory): 16 MiB of address space per slot, committed as used.
pub const MAX_INSTANCE_SIZE: usize = 16 << 20;
/// Linear memories and tables one module may define (multi-memory, several tables).
pub const MAX_MEMORIES_PER_MODULE: u32 = 4;
pub const MAX_TABLES_PER_MODULE: u32 = 8;

/// The engine: the WebAssembly proposals real toolchains emit, each deterministic (floats
/// canonicalised, relaxed SIMD in its deterministic form, no threads), epoch interruption, and
/// a pooling allocator sized for LLVM-class modules.
fn engine_config(max_concurrent: u32) -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.cranelift_nan_canonicalization(true); // deterministic floats
    config
        .wasm_bulk_memory(true)
        .wasm_multi_value(true)
        .wasm_reference_types(true)
        .wasm_simd(true)
        .wasm_relaxed_simd(true)
        .relaxed_simd_deterministic(true)
        .wasm_tail_call(true)
        .wasm_extended_const(true)
        .wasm_multi_memory(true)
        .wasm_function_references(true)
        .wasm_gc(true)
        .wasm_exceptions(true)
        .wasm_memory64(true);
    // Shared memories and threads (wasmtime's `threads` feature, not compiled in) would make
    // a run depend on scheduling.
    let mut pool = PoolingAllocationConfig::default();
    let slots = (max_concurrent.max(1) * 2 + 2).min(1000);
    pool.total_core_instances(slots);
    pool.total_memories(slots * MAX_MEMORIES_PER_MODULE);
    pool.total_tables(slots * MAX_TABLES_PER_MODULE);
    pool.total_stacks(slots);
    pool.total_gc_heaps(slots);
    pool.max_unused_warm_slots(slots);
    pool.table_elements(MAX_TABLE_ELEMENTS);
    pool.max_core_instance_size(MAX_INSTANCE_SIZE);
    pool.max_memories_per_module(MAX_MEMORIES_PER_MODULE);
    pool.max_tables_per_module(MAX_TABLES_PER_MODULE);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// Why a module cannot be compiled or instantiated, told apart by what wasmtime says: a
/// proposal it needs that is not enabled, a limit it exceeds, or a module that is not valid.
fn module_error(module: &str, message: String) -> ExecError {
    let module = module.to_owned();
    let lower = message.to_ascii_lowercase();
    if lower.contains("exceeds the limit") || lower.contains("exceeds the maximum") {
        ExecError::OverLimit { module, message }
    } else if lower.contains("feature")
        || lower.contains("proposal")
        || lower.contains("not enabled")
        || lower.contains("must be enabled")
        || lower.contains("not supported")
    {
        ExecError::UnsupportedFeature { module, message }
    } else {
        ExecError::InvalidModule { module, message }
    }
}

/// A [`WasiExecutor`] made when an action first needs it: a build whose actions are all
/// native never pays for the engine (its start, its epoch thread, and unmapping the pooling
/// allocator's reservations at exit). If it cannot be made, every action that needs it
/// fails with the reason.
pub struct LazyExecutor {
    cfg: ExecConfig,
    made: std::sync::OnceLock<Result<WasiExecutor, String>>,
}

impl LazyExecutor {
    pub fn new(cfg: ExecConfig) -> LazyExecutor {
        LazyExecutor {
            cfg,
            made: std::sync::OnceLock::new(),
        }
    }

    /// The executor, made now if it was not yet.
    pub fn get(&self) -> Result<&WasiExecutor, ExecError> {
        self.made
            .get_or_init(|| {
                WasiExecutor::new(&self.cfg).map_err(|e| match e {
                    ExecError::Engine(why) => why,
                    other => other.to_string(),
                })
            })
            .as_ref()
            .map_err(|why| ExecError::Engine(why.clone()))
    }

    /// Modules compiled by the executor, if it was made (see [`WasiExecutor::compiled_count`]).
    pub fn compiled_count(&self) -> u64 {
        match self.made.get() {
            Some(Ok(e)) => e.compiled_count(),
            _ => 0,
        }
    }
}

impl WasiExecutor {
    pub fn new(cfg: &ExecConfig) -> Result<WasiExecutor, ExecError> {
        let engine_err = |e: wasmtime::Error| ExecError::Engine(format!("{e:#}"));
        let engine = Engine::new(&engine_config(cfg.max_concurrent)).map_err(engine_err)?;

        let mut linker: Linker<State> = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut State| &mut s.wasi)
            .map_err(engine_err)?;
        observe::shadow(&mut linker).map_err(engine_err)?;

        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        EXECUTOR_VERSION.hash(&mut h);
        let engine_key = format!("{:016x}", h.finish());

        let stop_ticker = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = stop_ticker.clone();
            std::thread::Builder::new()
                .name("wasi-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| ExecError::Engine(e.to_string()))?;
        }
        Ok(WasiExecutor {
            engine,
            linker,
            modules_dir: cfg.modules_dir.clone(),
            engine_key,
            modules: Mutex::new(HashMap::new()),
            loading: Mutex::new(()),
            stop_ticker,
            compiled: AtomicU64::new(0),
            max_open_files: max_open_files(cfg.max_concurrent),
        })
    }

    /// How many modules this process compiled with cranelift (not loaded from the disk cache).
    pub fn compiled_count(&self) -> u64 {
        self.compiled.load(Ordering::Relaxed)
    }

    /// Where the compiled form of the module keyed `module_key` is cached.
    pub fn compiled_module_path(&self, module_key: &str) -> PathBuf {
        let file_key: String = module_key
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        self.modules_dir
            .join(format!("{file_key}-{}.cwasm", self.engine_key))
    }

    /// Makes sure the module at `module_path` (keyed `module_key`) is compiled into the
    /// module cache, and returns that file: for WASI tools run by native commands, whose
    /// launchers (`wbuild exec-wasi-tool`) load it read-only instead of compiling the module
    /// on every run. A module that cannot be compiled is the launcher's to report.
    pub fn precompile(
        &self,
        module_key: &str,
        module_path: &Path,
        module_name: &str,
    ) -> Result<PathBuf, ExecError> {
        let path = self.compiled_module_path(module_key);
        if !path.is_file() {
            let _loading = self.loading.lock().expect("module loader");
            self.load_module(module_key, module_path, module_name)?;
        }
        Ok(path)
    }

    /// The module from the on-disk compiled cache, or compiled (and cached, best effort).
    fn load_module(
        &self,
        module_key: &str,
        module_path: &Path,
        module_name: &str,
    ) -> Result<Module, ExecError> {
        let cached = self.compiled_module_path(module_key);
        // SAFETY: files under modules_dir are written only by `Module::serialize` below, via
        // temp file + rename, and keyed by the engine's compatibility hash; wasmtime checks
        // the header and engine settings again on load.
        if let Ok(m) = unsafe { Module::deserialize_file(&self.engine, &cached) } {
            return Ok(m);
        }
        let bytes = std::fs::read(module_path).map_err(|e| ExecError::Sandbox {
            path: module_path.to_owned(),
            error: e,
        })?;
        let m = Module::new(&self.engine, &bytes)
            .map_err(|e| module_error(module_name, format!("{e:#}")))?;
        self.compiled.fetch_add(1, Ordering::Relaxed);
        if let Ok(ser) = m.serialize() {
            let _ = std::fs::create_dir_all(&self.modules_dir);
            if let Ok(mut tmp) = tempfile::NamedTempFile::new_in(&self.modules_dir)
                && std::io::Write::write_all(&mut tmp, &ser).is_ok()
            {
                let _ = tmp.persist(&cached);
            }
        }
        Ok(m)
    }

    /// Load a module: memory cache, then the on-disk compiled cache, then compile.
    fn instance_pre(&self, req: &Request) -> Result<InstancePre<State>, ExecError> {
        let cached = || {
            let modules = self.modules.lock().expect("module cache");
            modules.get(&req.module_key).cloned()
        };
        if let Some(pre) = cached() {
            return Ok(pre);
        }
        // One loader at a time, so workers that need the same new module do not all compile
        // it (cranelift parallelises each compilation on its own).
        let _loading = self.loading.lock().expect("module loader");
        if let Some(pre) = cached() {
            return Ok(pre);
        }
        let module = self.load_module(&req.module_key, &req.module_path, &req.module_name)?;
        let pre = self.linker.instantiate_pre(&module).map_err(|e| {
            match module_error(&req.module_name, format!("{e:#}")) {
                ExecError::InvalidModule { module, message } => {
                    ExecError::Instantiate { module, message }
                }
                other => other,
            }
        })?;
        self.modules
            .lock()
            .expect("module cache")
            .insert(req.module_key.clone(), pre.clone());
        Ok(pre)
    }

    /// Run one action to completion. Errors are problems of the host or the module itself;
    /// everything the guest does (exit codes, traps, limits) is reported in the [`Outcome`].
    pub fn run(&self, req: &Request) -> Result<Outcome, ExecError> {
        let start = Instant::now();
        let pre = self.instance_pre(req)?;
        let sandbox = |path: &Path| {
            let p = path.to_owned();
            move |source| ExecError::Sandbox {
                path: p,
                error: source,
            }
        };
        let root_dir = cap_std::fs::Dir::open_ambient_dir(&req.root, cap_std::ambient_authority())
            .map_err(sandbox(&req.root))?;
        let tmp_dir = cap_std::fs::Dir::open_ambient_dir(&req.tmp, cap_std::ambient_authority())
            .map_err(sandbox(&req.tmp))?;

        let stdout = MemoryOutputPipe::new(OUTPUT_CAPACITY);
        let stderr = MemoryOutputPipe::new(OUTPUT_CAPACITY);
        let mut b = WasiCtxBuilder::new();
        b.args(&req.argv)
            .envs(&req.env)
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .allow_blocking_current_thread(true)
            .wall_clock(FixedWallClock(Duration::from_secs(req.epoch_secs)))
            .monotonic_clock(CountingClock(AtomicU64::new(0)))
            .secure_random(deterministic_rng(&req.random_seed, "secure"))
            .insecure_random(deterministic_rng(&req.random_seed, "insecure"))
            .insecure_random_seed(u128::from_le_bytes(
                req.random_seed[..16].try_into().expect("16 bytes"),
            ));
        // Preopen order fixes the descriptors the observer expects: 3 = "/", 4 = "/tmp".
        b.preopened_dir(&req.root, "/", wasmtime_wasi::FsPerms::ReadWrite)
            .map_err(|e| ExecError::Sandbox {
                path: req.root.clone(),
                error: std::io::Error::other(format!("{e:#}")),
            })?;
        b.preopened_dir(&req.tmp, "/tmp", wasmtime_wasi::FsPerms::ReadWrite)
            .map_err(|e| ExecError::Sandbox {
                path: req.tmp.clone(),
                error: std::io::Error::other(format!("{e:#}")),
            })?;
        let time_ns = req.epoch_secs.saturating_mul(1_000_000_000);
        let state = State {
            wasi: b.build_p1(),
            obs: observe::Observer::new(
                root_dir,
                tmp_dir,
                &req.inputs,
                &req.outputs,
                time_ns,
                self.max_open_files,
            ),
            limits: Limits {
                memory: usize::try_from(req.memory_limit_bytes).unwrap_or(usize::MAX),
                hit: false,
            },
            stopped: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        // Checked every tick: stop on the time limit or when the build is interrupted.
        let deadline = start + req.timeout;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |mut ctx| {
            if INTERRUPTED.load(Ordering::Relaxed) {
                ctx.data_mut().stopped = Some(Stop::Interrupted);
                return Err(Trap::Interrupt.into());
            }
            if Instant::now() >= deadline {
                ctx.data_mut().stopped = Some(Stop::Timeout);
                return Err(Trap::Interrupt.into());
            }
            Ok(UpdateDeadline::Continue(1))
        });

        let mut exit_code = 0;
        let mut failure = None;
        let result = pre.instantiate(&mut store).and_then(|instance| {
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
            start.call(&mut store, ())
        });
        if let Err(e) = result {
            if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                exit_code = exit.0;
            } else if store.data().limits.hit {
                failure = Some(Failure::MemoryLimit(req.memory_limit_bytes));
            } else if let Some(stop) = store.data().stopped {
                failure = Some(match stop {
                    Stop::Timeout => Failure::Timeout(req.timeout),
                    Stop::Interrupted => Failure::Interrupted,
                });
            } else {
                // The trap itself ("wasm `unreachable` instruction executed"); the guest's
                // stderr, shown alongside, usually says why (e.g. a Rust panic message).
                let msg = match e.downcast_ref::<Trap>() {
                    Some(t) => format!("wasm trap: {t}"),
                    None => format!("{}", e.root_cause()),
                };
                failure = Some(Failure::Trap(msg));
            }
        }
        let state = store.into_data();
        drop(state.wasi);
        if failure.is_none() && exit_code == 0 && !state.obs.extra.is_empty() {
            failure = Some(Failure::LeftFiles(
                state.obs.extra.iter().cloned().collect(),
            ));
        }
        Ok(Outcome {
            exit_code,
            failure,
            stdout: stdout.contents().to_vec(),
            stderr: stderr.contents().to_vec(),
            accesses: state.obs.log,
            duration: start.elapsed(),
        })
    }
}

#[cfg(test)]
mod lazy_tests {
    use super::*;

    #[test]
    fn the_lazy_executor_makes_its_engine_once_and_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let lazy = LazyExecutor::new(ExecConfig {
            modules_dir: dir.path().join("modules"),
            max_concurrent: 1,
        });
        assert!(
            lazy.made.get().is_none(),
            "made before anything asked for it"
        );
        assert_eq!(lazy.compiled_count(), 0);
        let first: *const WasiExecutor = lazy.get().unwrap();
        let second: *const WasiExecutor = lazy.get().unwrap();
        assert_eq!(first, second, "a second engine was made");
        assert_eq!(lazy.compiled_count(), 0);
    }
}
