//! What it takes to run one action, without the build graph: the scheduler builds a [`Spec`]
//! for a local run, `wbuild worker` builds one from a REAPI `Action` an engine leased to it
//! ([`Spec::from_reapi`]), and both run it with [`run_spec`], so a remote run is the same run.
//!
//! An action's REAPI platform holds only the standard properties engines match workers on
//! (`OSFamily=wasi` for WASI actions, so any worker can take them and their results are shared
//! across hosts; `OSFamily=linux` and `ISA` for native ones). wbuild's own execution settings
//! (executor versions, limits, toolchain identity) are part of the key too, as
//! [`ExecProps`] lines in the `Action`'s `salt`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use wbuild_exec_wasi::{AccessLog, EXECUTOR_VERSION, LazyExecutor, Request, WasiExecutor};
use wbuild_store::{Digest, DigestFunction, Store, digest_message, reapi};

use crate::native;
use crate::safe_fs;
use crate::{NativeToolchain, SchedError};
use wbuild_graph::Platform;

/// Where a WASI action's module lies in its keyed input root.
pub const MODULE_PATH: &str = ".wbuild/tool.wasm";

/// Why a worker refuses an action an engine leased to it ([`Spec::from_reapi`]).
#[derive(Debug, thiserror::Error)]
pub enum RefusedAction {
    /// The `Command` itself is malformed or hostile (the engine or client at fault).
    #[error(transparent)]
    Invalid(#[from] crate::InvalidCommand),
    #[error(
        "the action's salt is not wbuild execution properties{}",
        if *.other_version { " (it was not built by a wbuild client of this version)" } else { "" }
    )]
    NotExecProps { other_version: bool },
    #[error("bad execution property line {0:?}")]
    BadPropertyLine(String),
    #[error("the action lacks execution property {0}")]
    MissingProperty(String),
    #[error("bad {name} {value:?}")]
    BadProperty { name: &'static str, value: String },
    #[error("the action wants {what} {want}; this worker has {have}")]
    VersionMismatch {
        what: &'static str,
        want: String,
        have: &'static str,
    },
    #[error("the WASI action has no {MODULE_PATH}")]
    NoModule,
    #[error("the native action has no ISA property")]
    NoIsa,
    #[error("unknown ISA {0}")]
    UnknownIsa(String),
    #[error("actions built without the sandbox are never run remotely")]
    Unsandboxed,
    #[error(
        "toolchain bundle {name} {digest} is not installed on this worker (start it with --toolchain SOURCE)"
    )]
    ToolchainNotInstalled { name: String, digest: String },
    /// The worker's toolchain resolver failed (its message).
    #[error("{0}")]
    Toolchain(String),
    #[error(
        "the action was keyed with another machine's host toolchain for {0}; pin a toolchain bundle to run native actions remotely"
    )]
    HostToolchain(&'static str),
    #[error("this worker runs OSFamily=wasi and OSFamily=linux actions, not {0:?}")]
    OsFamily(Option<String>),
}

impl RefusedAction {
    /// The command is malformed (INVALID_ARGUMENT), not merely beyond this worker
    /// (FAILED_PRECONDITION).
    pub fn is_invalid(&self) -> bool {
        matches!(self, RefusedAction::Invalid(_))
    }
}

/// wbuild's execution settings of an action, as sorted `name=value` lines (the `Action`'s
/// `salt`). Names: `wbuild-executor`, `wbuild-memory-limit`, `wbuild-source-date-epoch`,
/// `wbuild-sandbox`, `wbuild-toolchain`, `wbuild-toolchain-bundles`, `wbuild-wasi-executor`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecProps(pub BTreeMap<String, String>);

impl ExecProps {
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.0.insert(name.to_owned(), value.into());
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = String::from("wbuild-exec-props/1\n");
        for (k, v) in &self.0 {
            out.push_str(k);
            out.push('=');
            out.push_str(v);
            out.push('\n');
        }
        out.into_bytes()
    }

    pub fn decode(salt: &[u8]) -> Result<ExecProps, RefusedAction> {
        let text = std::str::from_utf8(salt).map_err(|_| RefusedAction::NotExecProps {
            other_version: false,
        })?;
        let mut lines = text.lines();
        if lines.next() != Some("wbuild-exec-props/1") {
            return Err(RefusedAction::NotExecProps {
                other_version: true,
            });
        }
        let mut props = ExecProps::default();
        for line in lines {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| RefusedAction::BadPropertyLine(line.to_owned()))?;
            props.set(k, v);
        }
        Ok(props)
    }

    fn require(&self, name: &str) -> Result<&str, RefusedAction> {
        self.get(name)
            .ok_or_else(|| RefusedAction::MissingProperty(name.to_owned()))
    }

    /// Property `name` parsed as a number.
    fn require_u64(&self, name: &'static str) -> Result<u64, RefusedAction> {
        let value = self.require(name)?;
        value.parse().map_err(|_| RefusedAction::BadProperty {
            name,
            value: value.to_owned(),
        })
    }
}

/// How the action runs.
#[derive(Clone, Debug)]
pub enum Kind {
    /// A WASI tool module in wbuild's executor.
    Wasi { module: Digest, memory_limit: u64 },
    /// `argv` in the namespace sandbox (or directly, `--sandbox=none`).
    Native {
        /// Its pinned toolchain bundle, mounted as the whole system; `None`: the host's.
        toolchain: Option<Arc<NativeToolchain>>,
        unsandboxed: bool,
        /// Observe its file accesses (sandboxed runs only): the run's access log.
        observe: bool,
        /// The command runs WASI tools through launchers (they need the wbuild binary).
        runs_wasi_tools: bool,
        /// The modules of those tools, compiled before the run for the launchers to load
        /// (none known: each launcher compiles its module).
        wasi_modules: Vec<Digest>,
        /// A compile: it writes nothing in its working directory but its outputs, so the
        /// sandbox may show its inputs as one read-only tree (see `native::stage_tree`).
        compile: bool,
    },
    /// The builtin archiver (`crate::archive`), in-process.
    Archive,
}

/// One action, ready to run: everything is content (digests) or settings from its key.
#[derive(Clone, Debug)]
pub struct Spec {
    /// For messages (the tool's label, or the command).
    pub name: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Staged files (workspace path -> digest); for WASI actions, without the module.
    pub files: BTreeMap<String, Digest>,
    /// Staged files that are executable (tests, tools built earlier, launchers).
    pub executables: HashSet<String>,
    pub outputs: Vec<String>,
    pub epoch_secs: u64,
    pub timeout: Duration,
    /// Seed of a guest's random bytes: for a WASI action `observed::guest_seed` (set after a
    /// miss of its full key), else the action digest.
    pub seed: [u8; 32],
    pub kind: Kind,
}

/// What running a spec produced (outputs already in the store).
#[derive(Debug, Default)]
pub struct RunOutput {
    pub outputs: Vec<(String, Digest)>,
    pub executables: HashSet<String>,
    /// Why the action failed (empty: it succeeded, unless access checks say otherwise).
    pub errors: Vec<String>,
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// WASI actions: what the guest touched.
    pub accesses: Option<AccessLog>,
    /// It ran past its time limit and was stopped.
    pub timed_out: bool,
}

impl RunOutput {
    pub(crate) fn failed_with(error: String) -> RunOutput {
        RunOutput {
            errors: vec![error],
            exit_code: 1,
            ..Default::default()
        }
    }
}

/// Resolves a `wbuild-toolchain=bundle NAME DIGEST` property on a worker.
pub type ToolchainResolver<'a> =
    &'a dyn Fn(&str, &str) -> Result<Option<Arc<NativeToolchain>>, String>;

impl Spec {
    /// The spec of an `Action` (with its `Command` and input-tree files) an engine leased to
    /// a worker. `key` is the action's digest without `do_not_cache` (a native action's seed; a
    /// WASI guest's is `observed::guest_seed`). Refuses what
    /// this worker cannot run exactly as keyed, saying why.
    pub fn from_reapi(
        key: &Digest,
        action: &reapi::Action,
        command: &reapi::Command,
        files: BTreeMap<String, (Digest, bool)>,
        resolve_toolchain: ToolchainResolver<'_>,
    ) -> Result<Spec, RefusedAction> {
        // Before anything else: what the command names decides where files are written.
        {
            let inputs: std::collections::BTreeSet<&str> =
                files.keys().map(String::as_str).collect();
            crate::validate::validate_command(command, &inputs)?;
        }
        let props = ExecProps::decode(&action.salt)?;
        let platform = action.platform.clone().unwrap_or_default();
        let prop = |name: &str| {
            platform
                .properties
                .iter()
                .find(|p| p.name == name)
                .map(|p| p.value.as_str())
        };
        let timeout = action
            .timeout
            .as_ref()
            .map_or(Duration::from_secs(600), |t| {
                Duration::from_secs(t.seconds.max(1) as u64)
            });
        let epoch_secs = props.require_u64("wbuild-source-date-epoch")?;
        let mut executables = HashSet::new();
        let mut staged = BTreeMap::new();
        for (path, (d, exec)) in files {
            if exec {
                executables.insert(path.clone());
            }
            staged.insert(path, d);
        }
        let kind = match prop("OSFamily") {
            Some("wasi") => {
                let want = props.require("wbuild-executor")?;
                if want != EXECUTOR_VERSION {
                    return Err(RefusedAction::VersionMismatch {
                        what: "WASI executor",
                        want: want.to_owned(),
                        have: EXECUTOR_VERSION,
                    });
                }
                let module = staged.remove(MODULE_PATH).ok_or(RefusedAction::NoModule)?;
                let memory_limit = props.require_u64("wbuild-memory-limit")?;
                Kind::Wasi {
                    module,
                    memory_limit,
                }
            }
            Some("linux") => {
                let isa = prop("ISA").ok_or(RefusedAction::NoIsa)?;
                let platform = Platform::ALL
                    .into_iter()
                    .find(|p| p.isa() == isa)
                    .ok_or_else(|| RefusedAction::UnknownIsa(isa.to_owned()))?;
                let want = props.require("wbuild-executor")?;
                if want != wbuild_exec_native::SANDBOX_VERSION {
                    return Err(RefusedAction::VersionMismatch {
                        what: "sandbox",
                        want: want.to_owned(),
                        have: wbuild_exec_native::SANDBOX_VERSION,
                    });
                }
                if props.get("wbuild-sandbox") != Some("namespaces") {
                    return Err(RefusedAction::Unsandboxed);
                }
                if let Some(w) = props.get("wbuild-wasi-executor")
                    && w != EXECUTOR_VERSION
                {
                    return Err(RefusedAction::VersionMismatch {
                        what: "WASI executor",
                        want: w.to_owned(),
                        have: EXECUTOR_VERSION,
                    });
                }
                let identity = props.require("wbuild-toolchain")?;
                let toolchain = match identity.strip_prefix("bundle ") {
                    Some(rest) => {
                        let (name, digest) =
                            rest.split_once(' ')
                                .ok_or_else(|| RefusedAction::BadProperty {
                                    name: "wbuild-toolchain",
                                    value: identity.to_owned(),
                                })?;
                        let found =
                            resolve_toolchain(name, digest).map_err(RefusedAction::Toolchain)?;
                        Some(found.ok_or_else(|| RefusedAction::ToolchainNotInstalled {
                            name: name.to_owned(),
                            digest: digest.to_owned(),
                        })?)
                    }
                    None => {
                        if identity != native::toolchain_identity(platform) {
                            return Err(RefusedAction::HostToolchain(platform.name()));
                        }
                        None
                    }
                };
                Kind::Native {
                    toolchain,
                    unsandboxed: false,
                    observe: true,
                    runs_wasi_tools: props.get("wbuild-wasi-executor").is_some(),
                    wasi_modules: Vec::new(),
                    compile: false,
                }
            }
            Some("wbuild") => {
                let want = props.require("wbuild-executor")?;
                if want != crate::archive::ARCHIVE_VERSION {
                    return Err(RefusedAction::VersionMismatch {
                        what: "builtin archiver",
                        want: want.to_owned(),
                        have: crate::archive::ARCHIVE_VERSION,
                    });
                }
                Kind::Archive
            }
            other => return Err(RefusedAction::OsFamily(other.map(str::to_owned))),
        };
        // A WASI guest's random bytes are seeded as in the scheduler.
        let seed = match &kind {
            Kind::Wasi { .. } => crate::observed::guest_seed(command, action),
            Kind::Native { .. } | Kind::Archive => key.hash,
        };
        Ok(Spec {
            name: command.arguments.first().cloned().unwrap_or_default(),
            argv: command.arguments.clone(),
            env: command
                .environment_variables
                .iter()
                .map(|e| (e.name.clone(), e.value.clone()))
                .collect(),
            files: staged,
            executables,
            outputs: command.output_paths.clone(),
            epoch_secs,
            timeout,
            seed,
            kind,
        })
    }
}

/// The digest that keys `action`: that of the action with `do_not_cache` cleared (a
/// speculative copy runs exactly like the original).
pub fn key_of(f: DigestFunction, action: &reapi::Action) -> Digest {
    let mut a = action.clone();
    a.do_not_cache = false;
    digest_message(f, &a).0
}

/// Runs `spec` in staging slot `slot` (one per concurrent runner; its directories are reused
/// between actions) and moves the outputs into the store.
pub fn run_spec(
    store: &Store,
    exec: &LazyExecutor,
    slot: usize,
    spec: &Spec,
) -> Result<RunOutput, SchedError> {
    match &spec.kind {
        Kind::Wasi {
            module,
            memory_limit,
        } => match exec.get() {
            Ok(exec) => run_wasi(store, exec, slot, spec, module, *memory_limit),
            Err(e) => Ok(RunOutput::failed_with(e.to_string())),
        },
        Kind::Native {
            toolchain,
            unsandboxed,
            observe,
            runs_wasi_tools,
            wasi_modules,
            compile,
        } => native::run_native(
            store,
            exec,
            slot,
            spec,
            toolchain.as_deref(),
            (*unsandboxed, *observe, *compile),
            *runs_wasi_tools,
            wasi_modules,
        ),
        Kind::Archive => crate::archive::run(store, spec),
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SchedError + use<> {
    let path = path.to_owned();
    move |error| SchedError::Io { path, error }
}

fn run_wasi(
    store: &Store,
    exec: &WasiExecutor,
    slot: usize,
    spec: &Spec,
    module: &Digest,
    memory_limit: u64,
) -> Result<RunOutput, SchedError> {
    let staging = crate::phases::phase("staging");
    // Each slot reuses one staging directory: creating and deleting directories is the
    // costliest part of staging on common file systems. Files are removed after every
    // action; directories left behind are invisible to later guests (the executor shows
    // only an action's own inputs, outputs and the directories leading to them).
    let stage = store.tmp_dir().join(format!("w{slot}"));
    let root = stage.join("root");
    let tmp = stage.join("tmp");
    std::fs::create_dir_all(&root).map_err(io_err(&root))?;
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let cleanup = StageGuard {
        root: root.clone(),
        tmp: tmp.clone(),
        files: spec
            .files
            .keys()
            .chain(spec.outputs.iter())
            .cloned()
            .collect(),
    };
    // The directories leading to inputs and outputs are made real directories beneath the
    // root (whatever an earlier action left in their way is removed, never followed), so
    // linking the inputs in cannot be redirected outside the slot.
    let root_dir = safe_fs::open_dir(&root).map_err(io_err(&root))?;
    let mut dirs_done: HashSet<&str> = HashSet::new();
    for path in spec.files.keys().chain(spec.outputs.iter()) {
        let (parent, _) = safe_fs::split(path);
        if dirs_done.insert(parent) {
            safe_fs::ensure_dir(&root_dir, parent).map_err(io_err(&root.join(parent)))?;
        }
    }
    for (path, d) in &spec.files {
        store.link_into(d, &root.join(path))?;
    }
    let module_path = stage.join("tool.wasm");
    store.link_into(module, &module_path)?;
    let _module_guard = RemoveOnDrop(module_path.clone());

    let req = Request {
        module_key: module.to_string(),
        module_path,
        module_name: spec.name.clone(),
        argv: spec.argv.clone(),
        env: spec.env.clone(),
        root: root.clone(),
        tmp,
        inputs: spec.files.keys().cloned().collect(),
        outputs: spec.outputs.clone(),
        epoch_secs: spec.epoch_secs,
        random_seed: spec.seed,
        memory_limit_bytes: memory_limit,
        timeout: spec.timeout,
    };
    drop(staging);
    let running = crate::phases::phase("execution");
    let outcome = match exec.run(&req) {
        Ok(o) => o,
        Err(e) => return Ok(RunOutput::failed_with(e.to_string())),
    };
    drop(running);
    let _ingest = crate::phases::phase("output ingestion");
    let mut errors = Vec::new();
    if let Some(f) = &outcome.failure {
        errors.push(f.to_string());
    } else if outcome.exit_code != 0 {
        errors.push(format!("the tool exited with code {}", outcome.exit_code));
    }
    // Outputs are written under the cache directory: a tool that could not write one says so
    // in its own words; this says why (checked before the staged files are removed).
    if !errors.is_empty()
        && let Some(note) = store.full_device_note()
    {
        errors.push(note);
    }
    let mut executables = HashSet::new();
    let outputs = if errors.is_empty() {
        collect_outputs(store, &spec.outputs, &root, &mut errors, &mut executables)?
    } else {
        Vec::new()
    };
    drop(cleanup);
    Ok(RunOutput {
        outputs,
        executables,
        errors,
        exit_code: if outcome.failure.is_some() {
            1
        } else {
            outcome.exit_code
        },
        stdout: outcome.stdout,
        stderr: outcome.stderr,
        accesses: Some(outcome.accesses),
        timed_out: false,
    })
}

/// Moves each declared output from `root` into the CAS; names the ones missing. Nothing is
/// followed: each output is opened beneath `root` with no symlink resolution (a symlink in
/// its path or at it fails it) and must be a regular file, moved by its directory handle.
pub(crate) fn collect_outputs(
    store: &Store,
    declared: &[String],
    root: &Path,
    errors: &mut Vec<String>,
    executables: &mut HashSet<String>,
) -> Result<Vec<(String, Digest)>, SchedError> {
    let root_dir = safe_fs::open_dir(root).map_err(io_err(root))?;
    let mut outputs = Vec::new();
    for out in declared {
        let (parent, name) = safe_fs::split(out);
        let dir = match safe_fs::open_beneath(&root_dir, parent, libc::O_RDONLY | libc::O_DIRECTORY)
        {
            Ok(d) => d,
            Err(e) if safe_fs::is_symlink_refusal(&e) => {
                errors.push(format!(
                    "declared output {out} is not a regular file: a directory in its path was replaced by a symlink or a file (outputs must be regular files written in place)"
                ));
                continue;
            }
            Err(_) => {
                errors.push(format!("the tool did not create declared output {out}"));
                continue;
            }
        };
        let shown = root.join(out);
        match store.put_file_move_at(&dir, std::ffi::OsStr::new(name), &shown) {
            Ok((d, mode)) => {
                if mode & 0o111 != 0 {
                    executables.insert(out.clone());
                }
                outputs.push((out.clone(), d));
            }
            Err(wbuild_store::StoreError::NotAFile { .. }) => errors.push(format!(
                "declared output {out} is not a regular file (a symlink, directory or other special file; outputs must be regular files)"
            )),
            Err(wbuild_store::StoreError::Io { error: source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                errors.push(format!("the tool did not create declared output {out}"))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(outputs)
}

/// Numbers native staging directories of unsandboxed runs (each gets a fresh one).
pub(crate) static NATIVE_STAGING: AtomicU64 = AtomicU64::new(0);

pub(crate) fn next_staging() -> u64 {
    NATIVE_STAGING.fetch_add(1, Ordering::Relaxed)
}

pub(crate) struct RemoveTreeOnDrop(pub PathBuf);
impl Drop for RemoveTreeOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Empties a slot's staging directory when an action is done: the files staged or written
/// there, and everything in its `/tmp`.
struct StageGuard {
    root: PathBuf,
    tmp: PathBuf,
    files: Vec<String>,
}
impl Drop for StageGuard {
    fn drop(&mut self) {
        // Relative to directory handles, never following a symlink: what cannot be reached
        // that way stays (the next action's staging replaces it).
        if let Ok(root) = safe_fs::open_dir(&self.root) {
            // One handle per directory (an action may stage thousands of files in a few).
            let mut dirs: std::collections::HashMap<&str, Option<std::fs::File>> =
                std::collections::HashMap::new();
            for f in &self.files {
                let (parent, name) = safe_fs::split(f);
                let dir = dirs.entry(parent).or_insert_with(|| {
                    safe_fs::open_beneath(&root, parent, libc::O_RDONLY | libc::O_DIRECTORY).ok()
                });
                if let Some(dir) = dir {
                    let _ = safe_fs::remove_beneath(dir, name);
                }
            }
        }
        if let Ok(tmp) = safe_fs::open_dir(&self.tmp) {
            let _ = safe_fs::empty(&tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_props_round_trip_and_refuse_foreign_salt() {
        let mut p = ExecProps::default();
        p.set("wbuild-toolchain", "bundle gcc sha256:ab");
        p.set("wbuild-executor", "wasi-1");
        let back = ExecProps::decode(&p.encode()).unwrap();
        assert_eq!(back, p);
        assert!(
            String::from_utf8(p.encode())
                .unwrap()
                .starts_with("wbuild-exec-props/1\nwbuild-executor=wasi-1\n")
        );
        assert!(ExecProps::decode(b"salt").is_err());
    }
    #[test]
    fn hostile_leases_are_refused_before_anything_is_staged() {
        let key = Digest::of(DigestFunction::Blake3, b"k");
        let action = reapi::Action::default();
        let refuse = |outputs: &[&str], wd: &str| {
            let command = reapi::Command {
                arguments: vec!["/bin/sh".into(), "-c".into(), "true".into()],
                output_paths: outputs.iter().map(|s| s.to_string()).collect(),
                working_directory: wd.to_owned(),
                ..Default::default()
            };
            let files: BTreeMap<String, (Digest, bool)> =
                [("src/a.c".to_owned(), (key, false))].into();
            Spec::from_reapi(&key, &action, &command, files, &|_, _| Ok(None)).unwrap_err()
        };
        for (outputs, wd, says) in [
            (&["../../x"], "", "../../x"),
            (&["/tmp/x"], "", "/tmp/x"),
            (&["src/a.c"], "", "also an input"),
            (&["out"], "..", "working directory"),
        ] {
            let e = refuse(outputs, wd);
            assert!(e.is_invalid(), "{e:?}");
            assert!(e.to_string().contains(says), "{e}");
        }
        // A good command gets past validation to the execution properties: beyond this
        // worker, not invalid.
        let e = refuse(&["out/x"], "");
        assert!(!e.is_invalid());
        assert!(e.to_string().contains("salt"), "{e}");
    }

    #[test]
    fn collecting_outputs_follows_no_symlink() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(&t.path().join("cache")).unwrap();
        let host = t.path().join("host");
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("x.txt"), "victim").unwrap();
        std::fs::write(host.join("hard.txt"), "shared").unwrap();
        let root = store.tmp_dir().join("collect");
        std::fs::create_dir_all(root.join("gen")).unwrap();
        std::fs::write(root.join("gen/ok.txt"), "ok").unwrap();
        symlink(&host, root.join("gen/sub")).unwrap();
        symlink(host.join("x.txt"), root.join("gen/link.txt")).unwrap();
        std::fs::hard_link(host.join("hard.txt"), root.join("gen/hard.txt")).unwrap();
        let declared: Vec<String> = [
            "gen/ok.txt",
            "gen/sub/x.txt",
            "gen/link.txt",
            "gen/hard.txt",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut errors = Vec::new();
        let mut exec = HashSet::new();
        let outs = collect_outputs(&store, &declared, &root, &mut errors, &mut exec).unwrap();
        let names: Vec<&str> = outs.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(names, ["gen/ok.txt", "gen/hard.txt"]);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("gen/sub/x.txt"), "{errors:?}");
        assert!(errors[1].contains("gen/link.txt"), "{errors:?}");
        assert_eq!(
            std::fs::read_to_string(host.join("x.txt")).unwrap(),
            "victim"
        );
        assert_eq!(
            std::fs::read_to_string(host.join("hard.txt")).unwrap(),
            "shared"
        );
        // The hard-linked output was copied: the host file keeps its own inode and mode.
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(host.join("hard.txt")).unwrap();
        assert_eq!(m.nlink(), 1);
        assert_ne!(m.mode() & 0o200, 0);
        assert_eq!(store.get_bytes(&outs[1].1).unwrap(), b"shared");
        assert_eq!(store.get_bytes(&outs[0].1).unwrap(), b"ok");
        assert!(!root.join("gen/ok.txt").exists());
    }
}
