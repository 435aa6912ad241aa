//! Native actions (`genrule`, `cc_*`): target platforms, the toolchain identity in their
//! keys, and running them in the namespace sandbox (or, with `--sandbox=none`, directly).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use wbuild_store::{Digest, Store};

use crate::spec::{RemoveTreeOnDrop, RunOutput, Spec, collect_outputs, io_err};
use crate::{INTERRUPTED, NativeToolchain, Options, SchedError, safe_fs};
use wbuild_graph::Platform;

/// `--sandbox=none`: run the command directly with `root` as its working directory, the same
/// environment as in the sandbox plus a private `TMPDIR`, and the time limit (its process
/// group is killed on expiry or Ctrl-C). Nothing is hidden or protected: the user asked for it.
pub(crate) fn run_unsandboxed(
    req: &wbuild_exec_native::NativeRequest,
    root: &Path,
    tmp: &Path,
) -> Result<wbuild_exec_native::NativeOutcome, wbuild_exec_native::SandboxError> {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let io = |source: std::io::Error| wbuild_exec_native::SandboxError::Io {
        what: "running the command without a sandbox",
        error: source,
    };
    std::fs::create_dir_all(tmp).map_err(io)?;
    let start = Instant::now();
    let mut child = std::process::Command::new(&req.argv[0])
        .args(&req.argv[1..])
        .current_dir(root)
        .env_clear()
        .envs(req.env.iter().map(|(k, v)| (k, v)))
        .env("PATH", wbuild_exec_native::DEFAULT_PATH)
        .env("LANG", "C")
        .env("TZ", "UTC")
        .env("SOURCE_DATE_EPOCH", req.source_date_epoch.to_string())
        .env("TMPDIR", tmp)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(io)?;
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut v);
            }
            v
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let mut timed_out = false;
    // Woken when the command exits (a pidfd; where the kernel has none, every 5 ms), and at
    // least every 50 ms to check for Ctrl-C and the time limit.
    let exited = ChildExit::open(child.id());
    let status = loop {
        if let Some(s) = child.try_wait().map_err(io)? {
            break s;
        }
        let interrupted = INTERRUPTED.load(Ordering::SeqCst);
        if interrupted || start.elapsed() > req.timeout {
            timed_out = !interrupted;
            // SAFETY: kill(2) on the process group this function created (process_group(0)).
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            break child.wait().map_err(io)?;
        }
        let left = req.timeout.saturating_sub(start.elapsed());
        exited.wait(left.min(Duration::from_millis(50)));
    };
    Ok(wbuild_exec_native::NativeOutcome {
        exit_code: status.code(),
        signal: status.signal(),
        timed_out,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        duration: start.elapsed(),
        observed: None,
    })
}

/// Stages `files` for an unsandboxed run in `root` (`n<slot>/work` in the store's temporary
/// directory), a tree kept for the slot from one run to the next: a run's inputs are mostly
/// the last one's (the compiles of one library see the same headers). A regular file at an
/// input's path is kept when its mode is the one staging gives and its bytes are that input's
/// (hashed again: the last run could have written it in place); everything else (outputs and
/// scratch files the last run left, symlinks, directories no input is in) is removed, never
/// following a symlink (`safe_fs::sweep`). The inputs missing then are copied out of the
/// store, each beneath a handle on its directory. `Err`: the tree could not be swept or
/// staged (the caller stages a fresh one).
fn stage_kept(
    store: &Store,
    slot: usize,
    files: &std::collections::BTreeMap<String, Digest>,
    executables: &HashSet<String>,
) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let tmp = store.tmp_dir();
    let rel = format!("n{slot}/work");
    let tmp_dir = safe_fs::open_dir(&tmp)?;
    let root_dir = safe_fs::ensure_dir(&tmp_dir, &rel)?;
    let mut dirs: HashSet<&str> = HashSet::new();
    for path in files.keys() {
        let mut d = path.as_str();
        while let Some((parent, _)) = d.rsplit_once('/') {
            if !dirs.insert(parent) {
                break;
            }
            d = parent;
        }
    }
    // The mode staging gives an input (as `Store::materialize` does).
    let mode_of = |path: &str| {
        if executables.contains(path) {
            0o555
        } else {
            0o444
        }
    };
    let mut present: HashSet<String> = HashSet::new();
    safe_fs::sweep(&root_dir, &|path| dirs.contains(path), &mut |path, file| {
        let Some(d) = files.get(path) else {
            return false;
        };
        let same = file
            .metadata()
            .is_ok_and(|m| m.len() == d.size && m.mode() & 0o7777 == mode_of(path))
            && wbuild_store::digest_of_open(d.function, file, Path::new(path))
                .is_ok_and(|got| got == *d);
        if same {
            present.insert(path.to_owned());
        }
        same
    })?;
    // The missing inputs, each made beneath a handle on its directory (the last run could
    // have left something in the way; nothing is followed).
    for (path, d) in files {
        if present.contains(path) {
            continue;
        }
        let (parent, name) = safe_fs::split(path);
        let dir = safe_fs::ensure_dir(&root_dir, parent)?;
        let mut out = safe_fs::create_file(&dir, name, 0o600)?;
        store
            .copy_into(d, &mut out, Path::new(path))
            .map_err(std::io::Error::other)?;
        out.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode_of(path)))?;
    }
    Ok(tmp.join(&rel))
}

/// A process's exit as something to wait for: its pidfd, readable once it has exited (the
/// process is not reaped by the wait).
struct ChildExit(Option<std::os::fd::OwnedFd>);

impl ChildExit {
    fn open(pid: u32) -> ChildExit {
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open on our own unreaped child; the descriptor is owned below.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) } as i32;
        // SAFETY: a descriptor just returned to us, owned once.
        ChildExit((fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    /// Returns once the process has exited or after about `most`, whichever comes first
    /// (without a pidfd: after at most 5 ms).
    fn wait(&self, most: Duration) {
        use std::os::fd::AsRawFd;
        let Some(fd) = &self.0 else {
            std::thread::sleep(most.min(Duration::from_millis(5)));
            return;
        };
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = most.as_millis().clamp(1, 50) as libc::c_int;
        // SAFETY: poll on one valid pollfd (EINTR only returns early).
        unsafe { libc::poll(&mut p, 1, ms) };
    }
}

/// Where the wbuild binary appears inside the sandbox (for the launchers of WASI tools).
const WBUILD_IN_SANDBOX: &str = "/.wbuild/bin/wbuild";

/// Where the compiled forms of the WASI tools a command runs appear inside the sandbox, each
/// file bound read-only (not the cache's directory: the action sees only its own tools).
const MODULES_IN_SANDBOX: &str = "/.wbuild/modules";

/// The launcher of a WASI tool run by a native command (a genrule `tools` entry that is a
/// `wasi_tool`): a shell script that runs the tool in wbuild's WASI executor
/// (`wbuild exec-wasi-tool`) with the action's tree at `/`, its data at their guest paths,
/// the action's outputs writable, and the action's limits. Part of the action key. `path` is
/// where the launcher lies in the action's tree (it finds the root relative to itself).
pub(crate) fn wasi_launcher(
    path: &str,
    tool: &wbuild_graph::ToolRef,
    module: Option<&Digest>,
    outputs: &[String],
    opts: &Options,
) -> String {
    use wbuild_graph::sh_quote as q;
    let mut args = vec![
        "exec-wasi-tool".to_owned(),
        "--name".to_owned(),
        q(&tool.label.to_string()),
        "--argv0".to_owned(),
        q(&tool.argv0),
        "--modules-dir".to_owned(),
        MODULES_IN_SANDBOX.to_owned(),
        "--module".to_owned(),
        q(&tool.module),
        "--memory-limit".to_owned(),
        opts.memory_limit_bytes.to_string(),
        "--timeout-secs".to_owned(),
        opts.timeout.as_secs().to_string(),
    ];
    if let Some(d) = module {
        args.push("--module-key".to_owned());
        args.push(q(&d.to_string()));
    }
    for (guest, path) in &tool.data {
        args.push("--data".to_owned());
        args.push(q(&format!("{guest}={path}")));
    }
    for out in outputs {
        args.push("--out".to_owned());
        args.push(q(out));
    }
    format!(
        "#!/bin/sh\n# Runs the WASI tool {} (generated by wbuild).\nexec \"${{WBUILD_EXE:-{WBUILD_IN_SANDBOX}}}\" {} --root \"$(dirname \"$0\")/{}\" -- \"$@\"\n",
        tool.label,
        args.join(" "),
        "../".repeat(path.matches('/').count()),
    )
}

/// The directories (workspace paths) to bind writable so that every output can be written:
/// the outputs' parents, without those inside another one (`""` for the workspace root).
fn output_dirs(outputs: &[String]) -> Vec<String> {
    let mut dirs: Vec<String> = outputs
        .iter()
        .map(|o| o.rsplit_once('/').map_or("", |(d, _)| d).to_owned())
        .collect();
    dirs.sort();
    dirs.dedup();
    let mut minimal: Vec<String> = Vec::new();
    for d in dirs {
        let inside = minimal.iter().any(|m| {
            m.is_empty()
                || d.strip_prefix(m.as_str())
                    .is_some_and(|r| r.starts_with('/'))
        });
        if !inside {
            minimal.push(d);
        }
    }
    minimal
}

/// Identity of the toolchain native actions of `platform` run with (part of their keys),
/// computed once per process: the files the compiler driver uses — `$CC`, `$CXX`, `$AR`, the
/// test runner, what the drivers name as `cc1`, `cc1plus`, `as`, `ld` and `collect2`, and the
/// dynamic linker's cache (`/etc/ld.so.cache`, mounted into the sandbox) — and every file under its header and library directories, each by path, size, modification time
/// and inode (package upgrades replace files), so upgrading gcc or libc invalidates exactly
/// the native actions that use them. A command can also run any other program of the host's
/// `/usr`: the package database and the programs in `/usr/bin` and `/usr/sbin` are part of the
/// identity too ([`host_system_lines`]), so installing, removing or upgrading any package (or
/// dropping a program into `/usr/bin` by hand) invalidates host-toolchain native actions.
pub fn toolchain_identity(platform: Platform) -> String {
    host_toolchain(platform).0
}

/// The files and directories whose stats change when the host toolchain of `platform`
/// changes through the package manager: the package database, `/usr/bin`, `/usr/sbin`, the
/// compiler drivers and programs, and the header and library directories the identity
/// walks (a package upgrade renames files into them, which changes their modification
/// time). The up-to-date snapshot of a build with host-toolchain native actions records
/// them, so an upgrade ends the no-op fast path; the identity itself covers every file.
pub fn toolchain_sentinels(platform: Platform) -> Vec<PathBuf> {
    host_toolchain(platform).1
}

/// Host toolchain identities of this process: (platform, identity, sentinels).
static IDS: Mutex<Vec<(Platform, String, Vec<PathBuf>)>> = Mutex::new(Vec::new());

/// Use `identity` (with its `sentinels`) as `platform`'s host toolchain identity in this
/// process instead of computing it: what the up-to-date snapshot recorded when none of the
/// sentinels changed since (the fast paths trust the package manager's traces; a full
/// build computes the identity from every file).
pub fn assume_toolchain_identity(platform: Platform, identity: String, sentinels: Vec<PathBuf>) {
    let mut ids = IDS.lock().expect("toolchain identities");
    if !ids.iter().any(|(p, _, _)| *p == platform) {
        ids.push((platform, identity, sentinels));
    }
}

/// The identity of `platform`'s host toolchain and its sentinels, computed once per process.
fn host_toolchain(platform: Platform) -> (String, Vec<PathBuf>) {
    let mut ids = IDS.lock().expect("toolchain identities");
    if let Some((_, id, sentinels)) = ids.iter().find(|(p, _, _)| *p == platform) {
        return (id.clone(), sentinels.clone());
    }
    let bin = |name: &str| PathBuf::from("/usr/bin").join(name);
    let ask = |driver: &str, flag: &str| -> Option<PathBuf> {
        let out = std::process::Command::new(bin(driver))
            .arg(flag)
            .env_clear()
            .env("PATH", wbuild_exec_native::DEFAULT_PATH)
            .output()
            .ok()?;
        let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
        (!text.is_empty()).then(|| {
            if text.starts_with('/') {
                PathBuf::from(text)
            } else {
                bin(&text)
            }
        })
    };
    let env = platform.tool_env();
    // The dynamic linker's cache is mounted into every host-toolchain sandbox.
    let mut files: Vec<PathBuf> = vec![PathBuf::from(wbuild_exec_native::LD_SO_CACHE)];
    let mut dirs: Vec<PathBuf> = Vec::new();
    // Each question is a compiler-driver run (a few ms each, fourteen of them): asked all at
    // once, on threads, they cost about one.
    const PROGS: [&str; 5] = ["cc1", "cc1plus", "as", "ld", "collect2"];
    let mut questions: Vec<(&str, String)> = Vec::new();
    for (var, value) in &env {
        if let Some(program) = value.split_whitespace().next() {
            files.push(bin(program));
        }
        if *var == "CC" || *var == "CXX" {
            for prog in PROGS {
                questions.push((value, format!("-print-prog-name={prog}")));
            }
            questions.push((value, "-print-file-name=include".to_owned()));
            questions.push((value, "-print-file-name=libc.so".to_owned()));
        }
    }
    let answers: Vec<Option<PathBuf>> = std::thread::scope(|scope| {
        let handles: Vec<_> = questions
            .iter()
            .map(|(driver, flag)| scope.spawn(|| ask(driver, flag)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(None))
            .collect()
    });
    for ((_, flag), answer) in questions.iter().zip(answers) {
        if flag.starts_with("-print-prog-name=") {
            files.extend(answer);
        } else if flag.ends_with("=include") {
            dirs.extend(answer);
        } else {
            dirs.extend(answer.and_then(|p| p.parent().map(Path::to_path_buf)));
        }
    }
    dirs.push(if platform == Platform::host() {
        PathBuf::from("/usr/include")
    } else {
        PathBuf::from(format!("/usr/{}/include", platform.triple()))
    });
    let describe = |p: &Path| -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(p).ok()?;
        Some(format!(
            "{} {} {}.{} {}",
            p.display(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ino()
        ))
    };
    let mut lines: Vec<String> = Vec::new();
    for f in &files {
        let f = std::fs::canonicalize(f).unwrap_or_else(|_| f.clone());
        lines.push(describe(&f).unwrap_or_else(|| format!("{} missing", f.display())));
    }
    // Thousands of files under the header and library directories (about 13,000 on a
    // Debian host, most in one flat library directory): the directories are a shared work
    // list for one thread per core, and each file is stat'ed relative to its open directory
    // (no path walk per file).
    let roots: Vec<PathBuf> = dirs
        .iter()
        .map(|d| std::fs::canonicalize(d).unwrap_or_else(|_| d.clone()))
        .collect();
    let mut sentinels: Vec<PathBuf> = [DPKG_STATUS, "/usr/bin", "/usr/sbin"]
        .iter()
        .map(PathBuf::from)
        .chain(roots.iter().cloned())
        .chain(
            files
                .iter()
                .map(|f| std::fs::canonicalize(f).unwrap_or_else(|_| f.clone())),
        )
        .filter(|p| p.exists())
        .collect();
    sentinels.sort();
    sentinels.dedup();
    lines.extend(walk_tree_lines(roots));
    lines.extend(host_system_lines(
        Path::new(DPKG_STATUS),
        &[Path::new("/usr/bin"), Path::new("/usr/sbin")],
    ));
    lines.sort();
    lines.dedup();
    let id = blake3::hash(lines.join("\n").as_bytes())
        .to_hex()
        .to_string();
    ids.push((platform, id.clone(), sentinels.clone()));
    (id, sentinels)
}

/// `path size mtime.nsec ino` of every file under `roots` (symlinks followed, as
/// `std::fs::metadata` does; what cannot be stat'ed is left out), on one thread per core.
fn walk_tree_lines(roots: Vec<PathBuf>) -> Vec<String> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 8);
    let one_dir = |dir: &Path, out: &mut Vec<String>, subdirs: &mut Vec<PathBuf>| {
        let (Ok(handle), Ok(rd)) = (std::fs::File::open(dir), std::fs::read_dir(dir)) else {
            return;
        };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                subdirs.push(e.path());
                continue;
            }
            let name = e.file_name();
            let Ok(c) = std::ffi::CString::new(name.as_bytes()) else {
                continue;
            };
            // SAFETY: `libc::stat` is plain data, for which all zero bytes are a valid value.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: `handle` is an open directory, `c` a NUL-terminated name and `st` a
            // writable `stat` that outlives the call.
            if unsafe { libc::fstatat(handle.as_raw_fd(), c.as_ptr(), &mut st, 0) } != 0 {
                continue;
            }
            out.push(format!(
                "{} {} {}.{} {}",
                dir.join(&name).display(),
                st.st_size,
                st.st_mtime,
                st.st_mtime_nsec,
                st.st_ino
            ));
        }
    };
    wbuild_graph::work_list(roots, threads, |dir, subdirs| {
        let mut out = Vec::new();
        one_dir(&dir, &mut out, subdirs);
        out
    })
    .into_iter()
    .flatten()
    .collect()
}

/// Debian's package database: rewritten whenever a package is installed, upgraded or removed.
const DPKG_STATUS: &str = "/var/lib/dpkg/status";

/// What the host's toolchain identity records of the rest of the system native commands can
/// run: the package database (`dpkg`) and each program directory's entries, each by path,
/// size, modification time and inode ("missing" for what does not exist).
fn host_system_lines(packages: &Path, program_dirs: &[&Path]) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let describe = |p: &Path| match std::fs::symlink_metadata(p) {
        Ok(m) => format!(
            "system {} {} {}.{} {}",
            p.display(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ino()
        ),
        Err(_) => format!("system {} missing", p.display()),
    };
    let mut lines = vec![describe(packages)];
    for dir in program_dirs {
        match std::fs::read_dir(dir) {
            Ok(rd) => lines.extend(rd.flatten().map(|e| describe(&e.path()))),
            Err(_) => lines.push(format!("system {} missing", dir.display())),
        }
    }
    lines.sort();
    lines
}

/// A native action (`genrule`, `cc_*`): `/bin/sh -c cmd` in the namespace sandbox, with
/// `/work` (the working directory) a private scratch tmpfs holding the inputs at their
/// workspace paths as read-only bind mounts of their verified CAS blobs (no copies; a mount
/// cannot be written, renamed, removed or chmod'ed through) and the outputs' directories
/// as writable binds of the slot's host staging directories, reused between actions
/// (creating files and directories is what staging costs on common file systems; here an
/// action creates none but its outputs). Executable inputs and tool launchers are
/// executable files bound read-only, and the WASI tools' modules compiled once by `exec`
/// (`wasi_modules`) bound read-only under `/.wbuild/modules`; the system directories (the
/// toolchain bundle's, or the host's) are read-only. Without the sandbox, `/work` is a fresh host directory holding
/// copies of the inputs.
/// A compile's inputs (`compile`: it writes nothing in its working directory but its
/// outputs) are instead one read-only tree at `/work`, the slot's (see [`stage_tree`]), with
/// the outputs' directories bound writable on top: one mount where there were as many as it
/// has inputs (a compile of the C graph has 60 to 100); a compile that fails so runs again
/// as any other action.
#[allow(clippy::too_many_arguments)] // The spec's native settings, spelled out.
pub(crate) fn run_native(
    store: &Store,
    exec: &wbuild_exec_wasi::LazyExecutor,
    slot: usize,
    spec: &Spec,
    toolchain: Option<&NativeToolchain>,
    (unsandboxed, observe, compile): (bool, bool, bool),
    runs_wasi_tools: bool,
    wasi_modules: &[Digest],
) -> Result<RunOutput, SchedError> {
    let staging = crate::phases::phase("staging");
    let work = Path::new("/work");
    // Host directory the outputs are written to (at their workspace paths).
    let root: PathBuf;
    let _cleanup;
    let mut mounts = match toolchain {
        Some(tc) => tc.mounts().map_err(io_err(&tc.root))?,
        None => wbuild_exec_native::host_toolchain_mounts(),
    };
    let mut scratch = Vec::new();
    let mut env = spec.env.clone();
    let mut tree_staged = false;
    if unsandboxed {
        // The slot's tree, kept from one run to the next: inputs the last run left as they
        // were staged stay, everything else goes (see `stage_kept`). If it cannot be swept,
        // a fresh tree, removed after the run.
        match stage_kept(store, slot, &spec.files, &spec.executables) {
            Ok(kept) => {
                root = kept;
                _cleanup = None;
            }
            Err(_) => {
                let stage = store
                    .tmp_dir()
                    .join(format!("n{slot}-{}", crate::spec::next_staging()));
                root = stage.join("work");
                std::fs::create_dir_all(&root).map_err(io_err(&root))?;
                _cleanup = Some(RemoveTreeOnDrop(stage));
                for (path, d) in &spec.files {
                    store.materialize(d, &root.join(path), spec.executables.contains(path))?;
                }
            }
        }
        if runs_wasi_tools {
            let exe = std::env::current_exe().map_err(io_err(Path::new("/proc/self/exe")))?;
            env.push(("WBUILD_EXE".to_owned(), exe.display().to_string()));
        }
    } else {
        _cleanup = None;
        let stage = store.tmp_dir().join(format!("nw{slot}"));
        root = stage.join("out");
        let files = stage.join("files");
        // Executable copies of the previous action go.
        if files.exists() {
            std::fs::remove_dir_all(&files).map_err(io_err(&files))?;
        }
        let dirs = output_dirs(&spec.outputs);
        // The slot's output tree is reused, and earlier actions could write anything in it
        // (symlinks to host directories included): it is emptied and its directories made
        // relative to a handle on it, removing (never following) whatever is in their way.
        std::fs::create_dir_all(&root).map_err(io_err(&root))?;
        let root_dir = safe_fs::open_dir(&root).map_err(io_err(&root))?;
        if dirs.iter().any(|d| d.is_empty()) {
            // An output at the workspace root: the whole of /work is the host directory.
            safe_fs::empty(&root_dir).map_err(io_err(&root))?;
            mounts.push(wbuild_exec_native::Mount {
                host: root.clone(),
                sandbox: work.to_path_buf(),
                writable: true,
            });
            scratch.extend(
                inputs_apart(&dirs, &spec.outputs, spec.files.keys())
                    .into_iter()
                    .map(|d| work.join(d)),
            );
        } else {
            let apart = inputs_apart(&dirs, &spec.outputs, spec.files.keys());
            let tree =
                if compile && !runs_wasi_tools && spec.executables.is_empty() && apart.is_empty() {
                    stage_tree(store, slot, &spec.files, &dirs)?
                } else {
                    None
                };
            match &tree {
                Some(tree) => mounts.push(wbuild_exec_native::Mount {
                    host: tree.clone(),
                    sandbox: work.to_path_buf(),
                    writable: false,
                }),
                None => {
                    scratch.push(work.to_path_buf());
                    scratch.extend(apart.into_iter().map(|d| work.join(d)));
                }
            }
            tree_staged = tree.is_some();
            for d in &dirs {
                let host = root.join(d);
                safe_fs::ensure_empty_dir(&root_dir, d).map_err(io_err(&host))?;
                mounts.push(wbuild_exec_native::Mount {
                    host,
                    sandbox: work.join(d),
                    writable: true,
                });
            }
        }
        for (path, d) in spec.files.iter().filter(|_| !tree_staged) {
            let host = if spec.executables.contains(path) {
                let copy = files.join(path);
                store.materialize(d, &copy, true)?;
                copy
            } else {
                store.verified_blob_path(d)?
            };
            mounts.push(wbuild_exec_native::Mount {
                host,
                sandbox: work.join(path),
                writable: false,
            });
        }
        if runs_wasi_tools {
            let exe = std::env::current_exe().map_err(io_err(Path::new("/proc/self/exe")))?;
            mounts.push(wbuild_exec_native::Mount {
                host: exe,
                sandbox: PathBuf::from(WBUILD_IN_SANDBOX),
                writable: false,
            });
            // The tools' modules compiled once, here, for every launcher run to load (a
            // module that does not compile, or an engine that cannot be made, is left for
            // the launcher to report).
            for d in wasi_modules {
                let blob = store.verified_blob_path(d)?;
                if let Ok(exec) = exec.get()
                    && let Ok(compiled) = exec.precompile(&d.to_string(), &blob, &d.to_string())
                    && let Some(name) = compiled.file_name()
                {
                    mounts.push(wbuild_exec_native::Mount {
                        host: compiled.clone(),
                        sandbox: Path::new(MODULES_IN_SANDBOX).join(name),
                        writable: false,
                    });
                }
            }
        }
    }
    {
        let root_dir = safe_fs::open_dir(&root).map_err(io_err(&root))?;
        for out in &spec.outputs {
            let (parent, _) = safe_fs::split(out);
            safe_fs::ensure_dir(&root_dir, parent).map_err(io_err(&root.join(parent)))?;
        }
    }
    let req = wbuild_exec_native::NativeRequest {
        argv: spec.argv.clone(),
        env,
        mounts,
        scratch,
        cwd: work.to_path_buf(),
        source_date_epoch: spec.epoch_secs,
        timeout: spec.timeout,
        observe: observe && !unsandboxed,
    };
    drop(staging);
    let running = crate::phases::phase("execution");
    let outcome = if unsandboxed {
        // The run's own TMPDIR (the last run's, if any, goes first).
        let tmp = root.with_file_name("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        run_unsandboxed(&req, &root, &tmp)
    } else {
        wbuild_exec_native::run(&req)
    };
    drop(running);
    if tree_staged
        && !INTERRUPTED.load(Ordering::Relaxed)
        && outcome
            .as_ref()
            .map_or(true, |o| !o.timed_out && o.exit_code != Some(0))
    {
        // A compile that failed with its inputs as the read-only tree runs again with
        // `/work` a scratch directory, as any other action (an option such as -save-temps
        // writes there): what it reports then is what it reports anyway. A sandbox that
        // could not be made (the tree gone) starts the slot's next tree afresh.
        if outcome.is_err() {
            forget_tree(store, slot);
        }
        return run_native(
            store,
            exec,
            slot,
            spec,
            toolchain,
            (unsandboxed, observe, false),
            runs_wasi_tools,
            wasi_modules,
        );
    }
    let _ingest = crate::phases::phase("output ingestion");
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => return Ok(RunOutput::failed_with(e.to_string())),
    };
    let mut errors = Vec::new();
    if outcome.timed_out {
        errors.push(format!(
            "the command ran longer than its time limit of {}s and was stopped (raise [wasi] timeout_secs in wbuild.toml if it needs longer)",
            spec.timeout.as_secs()
        ));
    } else if let Some(sig) = outcome.signal {
        errors.push(format!("the command was killed by signal {sig}"));
    } else if outcome.exit_code != Some(0) {
        errors.push(format!(
            "the command exited with code {}",
            outcome.exit_code.unwrap_or(-1)
        ));
    }
    let mut executables = HashSet::new();
    let outputs = if errors.is_empty() {
        collect_outputs(store, &spec.outputs, &root, &mut errors, &mut executables)?
    } else {
        Vec::new()
    };
    let mut stderr = outcome.stderr;
    let accesses = match &outcome.observed {
        Some(obs) if obs.truncated => {
            stderr.extend_from_slice(
                format!(
                    "wbuild: the command touched more than {} distinct paths; only its full key \
                     is kept (no access log)\n",
                    wbuild_exec_native::MAX_ACCESSES
                )
                .as_bytes(),
            );
            None
        }
        Some(obs) => Some(access_log(obs)),
        None => None,
    };
    Ok(RunOutput {
        outputs,
        executables,
        exit_code: if errors.is_empty() {
            0
        } else {
            outcome.exit_code.filter(|c| *c != 0).unwrap_or(1)
        },
        errors,
        stdout: outcome.stdout,
        stderr,
        accesses,
        timed_out: outcome.timed_out,
    })
}

/// A slot's input tree (see [`stage_tree`]): the files it holds, by workspace path, each a
/// copy of the blob of its digest, and the directories made for them and for the outputs'
/// mount points. Only wbuild changes it (the sandbox shows it read-only; nothing else may
/// open the process's private directory), so what is recorded here is what is on disk.
#[derive(Default)]
struct Tree {
    files: HashMap<String, Digest>,
    dirs: BTreeSet<String>,
}

/// The input trees of this process's slots, by directory (taken out while one is changed: a
/// slot runs one action at a time).
static TREES: LazyLock<Mutex<HashMap<PathBuf, Tree>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The process's private directory for input trees on a memory file system
/// (`/dev/shm/wbuild-inputs-<pid>-XXXXXX`, mode 0700), made on first use; `None` where
/// `/dev/shm` is not a tmpfs or cannot be written. Those of processes that are gone (killed
/// builds) are removed when it is made; [`release_input_trees`] removes this process's.
static TREES_DIR: LazyLock<Option<PathBuf>> = LazyLock::new(|| {
    use std::os::fd::AsRawFd;
    const SHM: &str = "/dev/shm";
    // SAFETY: statfs into a zeroed struct with a NUL-terminated path.
    let tmpfs = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c"/dev/shm".as_ptr(), &mut st) == 0 && st.f_type == libc::TMPFS_MAGIC
    };
    if !tmpfs {
        return None;
    }
    if let Ok(entries) = std::fs::read_dir(SHM) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix("wbuild-inputs-")
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<libc::pid_t>().ok())
            else {
                continue;
            };
            // SAFETY: signal 0 only checks whether the process exists.
            let gone = unsafe { libc::kill(pid, 0) } != 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
            // A live owner in another pid namespace sharing /dev/shm holds its lock.
            if gone
                && let Ok(d) = std::fs::File::open(e.path())
                // SAFETY: flock on a descriptor we own.
                && unsafe { libc::flock(d.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = tempfile::Builder::new()
        .prefix(&format!("wbuild-inputs-{}-", std::process::id()))
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir_in(SHM)
        .ok()?;
    // A process that ends through `exit` (a test binary) removes it then (never waiting
    // for the lazy value: the path is set first).
    static MADE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    extern "C" fn at_exit() {
        if let Some(dir) = MADE.get() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    let dir = dir.keep();
    // Held (shared) for the process's life: the sweep above never takes a live one.
    if let Ok(d) = std::fs::File::open(&dir) {
        // SAFETY: flock on a descriptor we own, then left open on purpose.
        unsafe { libc::flock(d.as_raw_fd(), libc::LOCK_SH) };
        std::mem::forget(d);
    }
    let _ = MADE.set(dir.clone());
    // SAFETY: registering a plain `extern "C"` function.
    unsafe { libc::atexit(at_exit) };
    Some(dir)
});

/// Removes this process's input trees and their directory (a process that ends with
/// `_exit`, as wbuild's CLI does, calls this first; later compiles then bind each input).
pub fn release_input_trees() {
    TREES.lock().unwrap_or_else(|e| e.into_inner()).clear();
    if let Some(dir) = TREES_DIR.as_ref() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Most bytes of inputs a compile's tree holds: it lives in memory (a tmpfs), once per slot,
/// so a compile with more (a large C++ header set) binds each input instead.
const TREE_MAX_BYTES: u64 = 64 << 20;

/// The slot's input tree for a compile: a directory of the process's private memory file
/// system holding exactly `files` at their workspace paths (verified copies of their blobs,
/// read-only), their directories and those of the outputs (the mount points of their
/// writable binds), and nothing else. The tree is kept from one action to the next and only
/// what differs is changed: the compiles of one library share every header. `None` when it
/// cannot be made here (no tmpfs, more than [`TREE_MAX_BYTES`] of inputs, a file system
/// error): the caller then binds each input as before.
fn stage_tree(
    store: &Store,
    slot: usize,
    files: &BTreeMap<String, Digest>,
    out_dirs: &[String],
) -> Result<Option<PathBuf>, SchedError> {
    let Some(base) = TREES_DIR.as_ref() else {
        return Ok(None);
    };
    let root = tree_root(base, store, slot);
    if files.values().map(|d| d.size).sum::<u64>() > TREE_MAX_BYTES {
        // The slot's tree, if any, goes with its memory.
        forget_tree(store, slot);
        let _ = std::fs::remove_dir_all(&root);
        return Ok(None);
    }
    let taken = TREES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&root);
    let mut tree = match taken {
        Some(t) => t,
        None => {
            let fresh = match std::fs::remove_dir_all(&root) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => std::fs::create_dir(&root),
            };
            if fresh.is_err() {
                return Ok(None);
            }
            Tree::default()
        }
    };
    if update_tree(store, &root, &mut tree, files, out_dirs)? {
        TREES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(root.clone(), tree);
        Ok(Some(root))
    } else {
        // Dropped: the next use starts from an empty directory.
        Ok(None)
    }
}

/// The directory of the slot's tree: one per store and slot (tests open several stores in one
/// process).
fn tree_root(base: &Path, store: &Store, slot: usize) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    store.tmp_dir().hash(&mut h);
    base.join(format!("{:016x}-{slot}", h.finish()))
}

/// Forgets the slot's tree: its next use makes it afresh.
fn forget_tree(store: &Store, slot: usize) {
    if let Some(base) = TREES_DIR.as_ref() {
        TREES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&tree_root(base, store, slot));
    }
}

/// Makes the tree at `root` hold `files` and the directories of them and of `out_dirs`:
/// `Ok(false)` if a file system operation failed (the tree is then in an unknown state).
fn update_tree(
    store: &Store,
    root: &Path,
    tree: &mut Tree,
    files: &BTreeMap<String, Digest>,
    out_dirs: &[String],
) -> Result<bool, SchedError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut dirs = BTreeSet::new();
    let mut add = |path: &str| {
        let mut at = path;
        while let Some((parent, _)) = at.rsplit_once('/') {
            dirs.insert(parent.to_owned());
            at = parent;
        }
    };
    for p in files.keys() {
        add(p);
    }
    for d in out_dirs.iter().filter(|d| !d.is_empty()) {
        add(&format!("{d}/x"));
    }
    // Files that go or change, then directories that go (children first), then new
    // directories (parents first), then the files that are new or changed.
    let stale: Vec<String> = tree
        .files
        .iter()
        .filter(|(p, d)| files.get(*p) != Some(*d))
        .map(|(p, _)| p.clone())
        .collect();
    for p in stale {
        match std::fs::remove_file(root.join(&p)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Ok(false),
            _ => {}
        }
        tree.files.remove(&p);
    }
    let gone: Vec<String> = tree.dirs.difference(&dirs).cloned().collect();
    for d in gone.iter().rev() {
        if std::fs::remove_dir(root.join(d)).is_err() {
            return Ok(false);
        }
    }
    for d in dirs.difference(&tree.dirs) {
        match std::fs::create_dir(root.join(d)) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Ok(false),
            _ => {}
        }
    }
    tree.dirs = dirs;
    for (p, d) in files {
        if tree.files.get(p) == Some(d) {
            continue;
        }
        let path = root.join(p);
        let Ok(mut file) = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&path)
        else {
            return Ok(false);
        };
        store.copy_into(d, &mut file, &path)?;
        tree.files.insert(p.clone(), *d);
    }
    Ok(true)
}

/// An observed run's accesses as an access log, named as a WASI guest names them: paths
/// under the working directory `/work` (the workspace root) relative to it, others
/// absolute (the private `/tmp`, the system).
pub(crate) fn access_log(obs: &wbuild_exec_native::Observation) -> wbuild_exec_wasi::AccessLog {
    use wbuild_exec_native::AccessKind as N;
    use wbuild_exec_wasi::AccessKind as W;
    let mut log = wbuild_exec_wasi::AccessLog::default();
    for (kind, path) in &obs.accesses {
        let kind = match kind {
            N::Read => W::Read,
            N::Write => W::Write,
            N::Stat => W::Stat,
            N::List => W::List,
            N::Missing => W::Missing,
        };
        let path = match path.strip_prefix("/work") {
            Some("") => "",
            Some(rest) if rest.starts_with('/') => &rest[1..],
            _ => path.as_str(),
        };
        log.record(kind, path);
    }
    log
}

/// The subdirectories of output directories that hold inputs and no output (an archive's
/// `_objs/` beside the archive), each the topmost such directory on the way to an input: the
/// sandbox makes each one a scratch tmpfs inside the writable host directory, so the mount
/// points of the inputs in it are made there, not as files and directories of the host's file
/// system (created and removed again for every action).
fn inputs_apart<'i>(
    dirs: &[String],
    outputs: &[String],
    inputs: impl Iterator<Item = &'i String>,
) -> Vec<String> {
    let mut apart = std::collections::BTreeSet::new();
    for input in inputs {
        for d in dirs {
            let rest = if d.is_empty() {
                Some(input.as_str())
            } else {
                input
                    .strip_prefix(d.as_str())
                    .and_then(|r| r.strip_prefix('/'))
            };
            let Some((first, _)) = rest.and_then(|r| r.split_once('/')) else {
                continue;
            };
            let dir = if d.is_empty() {
                first.to_owned()
            } else {
                format!("{d}/{first}")
            };
            let holds_output = outputs.iter().any(|o| {
                o.strip_prefix(dir.as_str())
                    .is_some_and(|r| r.is_empty() || r.starts_with('/'))
            });
            if !holds_output {
                apart.insert(dir);
            }
        }
    }
    apart.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::{host_system_lines, inputs_apart, output_dirs};
    use std::time::Duration;

    fn unsandboxed(script: &str, timeout: Duration) -> wbuild_exec_native::NativeOutcome {
        let dir = tempfile::tempdir().unwrap();
        let req = wbuild_exec_native::NativeRequest {
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: Vec::new(),
            mounts: Vec::new(),
            scratch: Vec::new(),
            cwd: dir.path().to_path_buf(),
            source_date_epoch: 0,
            timeout,
            observe: false,
        };
        super::run_unsandboxed(&req, dir.path(), &dir.path().join("tmp")).unwrap()
    }

    /// Everything under `dir`, as "path" for files and "path/" for directories, sorted.
    fn tree_of(dir: &std::path::Path) -> Vec<String> {
        fn walk(dir: &std::path::Path, rel: &str, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let e = e.unwrap();
                let name = format!("{rel}{}", e.file_name().to_string_lossy());
                if e.file_type().unwrap().is_dir() {
                    out.push(format!("{name}/"));
                    walk(&e.path(), &format!("{name}/"), out);
                } else {
                    out.push(name);
                }
            }
        }
        let mut out = Vec::new();
        walk(dir, "", &mut out);
        out.sort();
        out
    }

    #[test]
    fn a_compile_tree_holds_exactly_its_inputs_and_follows_the_next_compile() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let t = tempfile::tempdir().unwrap();
        let store = wbuild_store::Store::open(&t.path().join("cache")).unwrap();
        let a = store.put_bytes(b"header a\n").unwrap();
        let b = store.put_bytes(b"header b\n").unwrap();
        let b2 = store.put_bytes(b"header b, edited\n").unwrap();
        let src = store.put_bytes(b"int f;\n").unwrap();
        let map = |v: &[(&str, wbuild_store::Digest)]| -> std::collections::BTreeMap<String, wbuild_store::Digest> {
            v.iter().map(|(p, d)| (p.to_string(), *d)).collect()
        };
        let out = ["lib/_objs/m".to_owned()];
        let first = map(&[("lib/a.h", a), ("dep/inc/b.h", b), ("lib/f0.c", src)]);
        let Some(root) = super::stage_tree(&store, 7, &first, &out).unwrap() else {
            // No tmpfs at /dev/shm here: compiles bind each input.
            return;
        };
        assert_eq!(
            tree_of(&root),
            [
                "dep/",
                "dep/inc/",
                "dep/inc/b.h",
                "lib/",
                "lib/_objs/",
                "lib/_objs/m/",
                "lib/a.h",
                "lib/f0.c"
            ]
        );
        let meta = std::fs::metadata(root.join("dep/inc/b.h")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o444);
        let private = std::fs::metadata(root.parent().unwrap()).unwrap();
        assert_eq!(private.permissions().mode() & 0o777, 0o700);
        // The next compile: one header edited, another source, a dependency's directory
        // gone, another come.
        let second = map(&[
            ("lib/a.h", a),
            ("lib/b.h", b2),
            ("lib/f1.c", src),
            ("x/y/z.h", a),
        ]);
        let a_ino = meta_ino(&root.join("lib/a.h"));
        let again = super::stage_tree(&store, 7, &second, &out)
            .unwrap()
            .unwrap();
        assert_eq!(again, root);
        assert_eq!(
            tree_of(&root),
            [
                "lib/",
                "lib/_objs/",
                "lib/_objs/m/",
                "lib/a.h",
                "lib/b.h",
                "lib/f1.c",
                "x/",
                "x/y/",
                "x/y/z.h"
            ]
        );
        assert_eq!(
            std::fs::read(root.join("lib/b.h")).unwrap(),
            b"header b, edited\n"
        );
        assert_eq!(
            meta_ino(&root.join("lib/a.h")),
            a_ino,
            "an input left in place stays"
        );
        // A path that was a file becomes a directory, and back.
        let third = map(&[("lib/a.h/inner.h", a)]);
        super::stage_tree(&store, 7, &third, &[]).unwrap().unwrap();
        assert_eq!(tree_of(&root), ["lib/", "lib/a.h/", "lib/a.h/inner.h"]);
        super::stage_tree(&store, 7, &first, &out).unwrap().unwrap();
        assert_eq!(tree_of(&root).len(), 8);
        assert_eq!(std::fs::read(root.join("lib/a.h")).unwrap(), b"header a\n");
        // Inputs past the memory bound: no tree (each input is bound), and the slot's goes.
        let big = wbuild_store::Digest {
            size: super::TREE_MAX_BYTES,
            ..a
        };
        let large = map(&[("lib/a.h", a), ("lib/big.h", big)]);
        assert!(
            super::stage_tree(&store, 7, &large, &out)
                .unwrap()
                .is_none()
        );
        assert!(!root.exists());
        fn meta_ino(p: &std::path::Path) -> u64 {
            std::fs::metadata(p).unwrap().ino()
        }
    }

    #[test]
    fn a_slot_keeps_the_inputs_left_as_staged_and_nothing_else() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let t = tempfile::tempdir().unwrap();
        let store = wbuild_store::Store::open(&t.path().join("cache")).unwrap();
        let host = t.path().join("host");
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("victim"), "v").unwrap();
        let a = store.put_bytes(b"header a\n").unwrap();
        let b = store.put_bytes(b"header b\n").unwrap();
        let tool = store.put_bytes(b"#!/bin/sh\n").unwrap();
        let files: std::collections::BTreeMap<String, wbuild_store::Digest> = [
            ("lib/a.h".to_owned(), a),
            ("lib/b.h".to_owned(), b),
            ("bin/tool".to_owned(), tool),
        ]
        .into();
        let exec: std::collections::HashSet<String> = ["bin/tool".to_owned()].into();
        let root = super::stage_kept(&store, 3, &files, &exec).unwrap();
        let ino = |p: &str| std::fs::metadata(root.join(p)).unwrap().ino();
        // Second names outside the tree hold the first staging's files (their inodes are
        // not reused): a file kept is still one of them, a file staged again is not.
        std::fs::hard_link(root.join("lib/a.h"), host.join("a")).unwrap();
        std::fs::hard_link(root.join("bin/tool"), host.join("tool")).unwrap();
        let (a_ino, tool_ino) = (ino("lib/a.h"), ino("bin/tool"));
        // What a run could leave: an input rewritten in place, one made writable, outputs and
        // scratch files, links out of the tree, a read-only directory.
        let set_mode = |p: &str, m: u32| {
            std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(m)).unwrap()
        };
        set_mode("lib/b.h", 0o644);
        std::fs::write(root.join("lib/b.h"), "header B\n").unwrap();
        set_mode("lib/b.h", 0o444);
        set_mode("bin/tool", 0o755);
        std::fs::write(root.join("lib/a.o"), "object").unwrap();
        std::fs::create_dir_all(root.join("out/x")).unwrap();
        std::fs::write(root.join("out/x/y"), "y").unwrap();
        set_mode("out", 0o555);
        std::os::unix::fs::symlink(&host, root.join("lib/host")).unwrap();
        std::os::unix::fs::symlink(&host, root.join("elsewhere")).unwrap();
        // The next run's inputs: `a` and the tool again, `b` at another path.
        let next: std::collections::BTreeMap<String, wbuild_store::Digest> = [
            ("lib/a.h".to_owned(), a),
            ("lib/b.h".to_owned(), b),
            ("inc/b.h".to_owned(), b),
            ("bin/tool".to_owned(), tool),
        ]
        .into();
        let again = super::stage_kept(&store, 3, &next, &exec).unwrap();
        assert_eq!(again, root);
        let left: Vec<String> = tree_of(&root)
            .into_iter()
            .filter(|p| !p.ends_with('/'))
            .collect();
        assert_eq!(left, ["bin/tool", "inc/b.h", "lib/a.h", "lib/b.h"]);
        assert_eq!(std::fs::read(root.join("lib/b.h")).unwrap(), b"header b\n");
        assert_eq!(std::fs::read(root.join("inc/b.h")).unwrap(), b"header b\n");
        // Left as staged: the same file. Rewritten, or its mode changed: staged again.
        assert_eq!(ino("lib/a.h"), a_ino);
        assert_ne!(ino("bin/tool"), tool_ino);
        assert_eq!(
            std::fs::metadata(root.join("bin/tool"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o555
        );
        assert_eq!(std::fs::read_to_string(host.join("victim")).unwrap(), "v");
    }

    #[test]
    fn an_unsandboxed_command_is_waited_for_and_stopped_at_its_time_limit() {
        // Its exit, status and output, whether it ends at once or after a while.
        for script in [
            "echo out; echo err >&2; exit 3",
            "sleep 0.3; echo out; echo err >&2; exit 3",
        ] {
            let o = unsandboxed(script, Duration::from_secs(60));
            assert_eq!(o.exit_code, Some(3), "{script}");
            assert!(!o.timed_out);
            assert_eq!(o.stdout, b"out\n");
            assert_eq!(o.stderr, b"err\n");
        }
        // Past its limit the whole process group is killed (the shell's child too, which
        // would otherwise hold the output pipe open for 600 s).
        let o = unsandboxed("sleep 600 & sleep 600", Duration::from_millis(300));
        assert!(o.timed_out);
        assert_eq!(o.signal, Some(libc::SIGKILL));
    }

    #[test]
    fn inputs_in_an_output_directory_are_kept_apart_where_no_output_is() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        // An archive: objects under the directory of the archive.
        let outputs = v(&["lib/liblib.a"]);
        let inputs = v(&[
            "lib/_objs/lib/a.o",
            "lib/_objs/lib/a.d",
            "lib/x.h",
            "other/y.a",
        ]);
        assert_eq!(
            inputs_apart(&output_dirs(&outputs), &outputs, inputs.iter()),
            v(&["lib/_objs"])
        );
        // A directory holding an output too is not.
        let outputs = v(&["gen/a.h", "gen/sub/b.h"]);
        let inputs = v(&["gen/sub/in.txt", "gen/other/in.txt"]);
        assert_eq!(
            inputs_apart(&output_dirs(&outputs), &outputs, inputs.iter()),
            v(&["gen/other"])
        );
        // Outputs at the root: every top directory without an output.
        let outputs = v(&["top.txt", "gen/a.h"]);
        let inputs = v(&["src/a.c", "gen/in.h", "README"]);
        assert_eq!(
            inputs_apart(&output_dirs(&outputs), &outputs, inputs.iter()),
            v(&["src"])
        );
    }

    #[test]
    fn output_dirs_are_the_minimal_parents() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            output_dirs(&v(&["lib/_objs/m/a.o", "lib/_objs/m/a.d"])),
            v(&["lib/_objs/m"])
        );
        assert_eq!(
            output_dirs(&v(&["gen/a.h", "gen/sub/b.h", "gen2/c.h", "genx/d"])),
            v(&["gen", "gen2", "genx"])
        );
        assert_eq!(output_dirs(&v(&["top.txt", "gen/a.h"])), v(&[""]));
        assert!(output_dirs(&[]).is_empty());
    }

    /// Installing or upgrading a package, or a program dropped into a program directory,
    /// changes what the host toolchain's identity records.
    #[test]
    fn package_database_and_programs_are_part_of_the_host_identity() {
        let t = tempfile::tempdir().unwrap();
        let status = t.path().join("status");
        let bin = t.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(&status, "Package: gcc\n").unwrap();
        std::fs::write(bin.join("tr"), "v1").unwrap();
        let sbin = t.path().join("sbin");
        let lines = || host_system_lines(&status, &[bin.as_path(), sbin.as_path()]);
        let first = lines();
        assert_eq!(lines(), first, "stable while nothing changes");
        assert!(
            first.iter().any(|l| l.ends_with("sbin missing")),
            "{first:?}"
        );
        // A new program.
        std::fs::write(bin.join("jq"), "new").unwrap();
        let second = lines();
        assert_ne!(second, first);
        // A package installed (the database rewritten as dpkg does: a new file renamed).
        let new = t.path().join("status-new");
        std::fs::write(&new, "Package: gcc\nPackage: jq\n").unwrap();
        std::fs::rename(&new, &status).unwrap();
        let third = lines();
        assert_ne!(third, second);
        // A program replaced by an upgrade.
        std::fs::remove_file(bin.join("tr")).unwrap();
        std::fs::write(bin.join("tr"), "version 2").unwrap();
        assert_ne!(lines(), third);
    }
}
