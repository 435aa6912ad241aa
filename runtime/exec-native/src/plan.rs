//! The plan: everything the sandbox's child processes need, prepared before `clone`: every
//! path as a C string, the mounts and other setup steps in order, argv/envp arrays, the
//! uid/gid maps, the seccomp filters.

use std::collections::HashSet;
use std::ffi::{CString, c_char, c_int, c_ulong};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use super::*;

// mount_setattr(2) attributes (linux/mount.h), not in libc.
pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub(crate) const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub(crate) const MOUNT_ATTR_NODEV: u64 = 0x4;
pub(crate) const MOUNT_ATTR_NOEXEC: u64 = 0x8;
pub(crate) const AT_RECURSIVE: c_int = libc::AT_RECURSIVE;
pub(crate) const CLOSE_RANGE_CLOEXEC: c_int = libc::CLOSE_RANGE_CLOEXEC as c_int;

#[repr(C)]
pub(crate) struct MountAttr {
    pub(crate) attr_set: u64,
    pub(crate) attr_clr: u64,
    pub(crate) propagation: u64,
    pub(crate) userns_fd: u64,
}

pub(crate) enum Op {
    WriteFile {
        path: CString,
        data: Vec<u8>,
    },
    MakeMountsPrivate,
    SetHostname {
        name: Vec<u8>,
    },
    MountTmpfs {
        dst: CString,
        data: CString,
        flags: c_ulong,
    },
    Mkdir {
        path: CString,
    },
    /// Creates an empty regular file (a mount point for a file bind).
    Touch {
        path: CString,
    },
    Symlink {
        target: CString,
        link: CString,
    },
    Bind {
        src: CString,
        dst: CString,
    },
    /// Recursively sets mount attributes (`mount_setattr`); on kernels older than 5.12
    /// falls back to a non-recursive bind remount with `legacy_flags`.
    SetAttr {
        dst: CString,
        set: u64,
        legacy_flags: c_ulong,
    },
    MountProc {
        dst: CString,
    },
    PivotRoot {
        new_root: CString,
    },
    RemountRootReadOnly,
    /// A new cgroup namespace (after joining the sandbox's cgroup, which becomes its root).
    UnshareCgroup,
}

pub(crate) struct Step {
    pub(crate) op: Op,
    pub(crate) what: String,
    pub(crate) hint: &'static str,
    /// An `EPERM`/`EACCES` here means user namespaces are not usable.
    pub(crate) userns: bool,
}

pub(crate) struct Plan {
    pub(crate) steps: Vec<Step>,
    pub(crate) cwd: CString,
    pub(crate) cwd_path: PathBuf,
    pub(crate) program: String,
    pub(crate) search_path: String,
    pub(crate) candidates: Vec<CString>,
    pub(crate) _argv: Vec<CString>,
    pub(crate) _envp: Vec<CString>,
    pub(crate) argv_ptrs: Vec<*const c_char>,
    pub(crate) envp_ptrs: Vec<*const c_char>,
    pub(crate) dev_null: CString,
    pub(crate) probe: bool,
    pub(crate) fd_limit: c_int,
    /// Confine the action before `execve` (see [`confine`]).
    pub(crate) harden: bool,
    /// `RLIMIT_NPROC` for the action.
    pub(crate) nproc: libc::rlimit,
    /// The seccomp filter (classic BPF).
    pub(crate) filter: &'static [libc::sock_filter],
    /// The observing filter, installed (before `filter`) when the run is observed.
    pub(crate) observer: Option<&'static [libc::sock_filter]>,
    /// Mount points and writable directories inside the sandbox, with whether each is
    /// writable (for the observer).
    pub(crate) roots: Vec<(String, bool)>,
    /// The read-only mounts of single files (normalised sandbox paths, for the observer).
    pub(crate) files: Vec<String>,
    /// The read-only mounts of system trees (normalised sandbox path, host path), whose
    /// lookups the observer shares between runs.
    pub(crate) system: Vec<(String, String)>,
    /// The sandbox's pids cgroup, back to the pool when the plan is dropped (after init was
    /// reaped).
    pub(crate) _cgroup: Option<harden::PidsCgroup>,
    /// Empty host directory the new root is mounted on (in the child's mount namespace
    /// only). Returned to the pool when the plan is dropped.
    pub(crate) _root_dir: PooledRoot,
}

/// Empty directories sandbox roots are mounted on, kept for the next sandbox: the tmpfs is
/// mounted only in the sandbox's own mount namespace, so the host directory stays empty, and
/// creating (and deleting) a directory per action is a measurable cost on ext4.
pub(crate) static ROOT_POOL: Mutex<Vec<Pooled>> = Mutex::new(Vec::new());

/// A pooled directory, with the lock that tells other processes' sweeps it is in use (see
/// [`sweep_dead_owners`]): a `flock` on the directory itself, held while the directory is.
pub(crate) struct Pooled {
    dir: tempfile::TempDir,
    _lock: std::fs::File,
}

impl Pooled {
    fn new() -> io::Result<Pooled> {
        use std::os::fd::AsRawFd;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{ROOT_PREFIX}{}-", std::process::id()))
            .tempdir()?;
        let lock = std::fs::File::open(dir.path())?;
        // SAFETY: flock on a descriptor we hold.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Pooled { dir, _lock: lock })
    }
}

pub(crate) struct PooledRoot(Option<Pooled>);

/// What the first pooled directory of a process sets going: the removal of the pool when
/// the process exits through `exit` (a program that returns from `main`, a test binary),
/// which runs no destructor of a static (the CLI ends with `_exit` and calls
/// [`crate::release_sandbox_roots`] itself), and the sweep of killed processes' directories.
fn first_pooled_dir() {
    extern "C" fn at_exit() {
        // Never waits: a thread stopped while holding the pool's lock keeps its directories.
        if let Ok(mut pool) = ROOT_POOL.try_lock() {
            drop(std::mem::take(&mut *pool));
        }
    }
    static FIRST: std::sync::Once = std::sync::Once::new();
    FIRST.call_once(|| {
        // SAFETY: registering a handler that only takes a lock without waiting and removes
        // directories.
        unsafe { libc::atexit(at_exit) };
        sweep_dead_owners();
    });
}

/// Wakes when the sweep of dead owners' directories has ended.
static SWEEP_FINISHED: Mutex<Option<std::sync::mpsc::Receiver<()>>> = Mutex::new(None);

/// Lets a sweep still running finish, for at most `limit` (a process about to end would
/// otherwise cut it short).
pub(crate) fn await_sweep(limit: std::time::Duration) {
    let finished = SWEEP_FINISHED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(finished) = finished {
        let _ = finished.recv_timeout(limit);
    }
}

/// The name of every pooled directory starts with this, then the owner's pid and a `-`.
const ROOT_PREFIX: &str = "wbuild-sandbox-root-";

/// Removes, on a thread of its own, the empty pooled directories of processes that are gone
/// (killed: nothing of theirs ran at exit). Left: a directory whose pid is alive, one locked
/// by its owner (whose pid may not be visible from here: another pid namespace sharing the
/// temporary directory), one made in the last [`SWEEP_MIN_AGE`] (its owner may not have
/// locked it yet), and anything not empty. Should a live owner's directory be removed all
/// the same, it makes a new one ([`PooledRoot::take`]).
fn sweep_dead_owners() {
    let own = std::process::id();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    *SWEEP_FINISHED.lock().unwrap_or_else(|e| e.into_inner()) = Some(finished);
    let _ = std::thread::Builder::new()
        .name("sweep".into())
        .spawn(move || {
            let _done = done; // dropped (the receiver wakes) however this ends
            let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
                return;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                let Some(pid) = name
                    .to_str()
                    .and_then(|n| n.strip_prefix(ROOT_PREFIX))
                    .and_then(|rest| rest.split_once('-'))
                    .and_then(|(pid, _)| pid.parse::<u32>().ok())
                else {
                    continue;
                };
                if pid != own && !Path::new(&format!("/proc/{pid}")).exists() {
                    remove_if_abandoned(&e.path());
                }
            }
        });
}

/// How old a pooled directory of a process that is gone must be to be swept.
const SWEEP_MIN_AGE: std::time::Duration = std::time::Duration::from_secs(10);

/// Removes `dir` if it is empty, old enough and locked by no one.
fn remove_if_abandoned(dir: &Path) {
    use std::os::fd::AsRawFd;
    let Ok(d) = std::fs::File::open(dir) else {
        return;
    };
    let old = d
        .metadata()
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().is_ok_and(|age| age >= SWEEP_MIN_AGE));
    // SAFETY: flock on a descriptor we hold; released when it closes.
    if old && unsafe { libc::flock(d.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        // Only an empty directory is removed.
        let _ = std::fs::remove_dir(dir);
    }
}

impl PooledRoot {
    pub(crate) fn take() -> io::Result<PooledRoot> {
        let reused = loop {
            let Some(d) = ROOT_POOL.lock().unwrap_or_else(|e| e.into_inner()).pop() else {
                break None;
            };
            // Removed meanwhile (by hand, or by another process's sweep): dropped.
            if d.dir.path().is_dir() {
                break Some(d);
            }
        };
        let dir = match reused {
            Some(d) => d,
            None => {
                first_pooled_dir();
                Pooled::new()?
            }
        };
        Ok(PooledRoot(Some(dir)))
    }

    /// No directory: the spawner's copy of a plan (wbuild holds the directory).
    pub(crate) fn none() -> PooledRoot {
        PooledRoot(None)
    }

    pub(crate) fn path(&self) -> &Path {
        self.0.as_ref().expect("root directory").dir.path()
    }
}

impl Drop for PooledRoot {
    fn drop(&mut self) {
        if let Some(d) = self.0.take()
            // Still empty, as it must be; anything else is dropped (and removed).
            && std::fs::read_dir(d.dir.path()).is_ok_and(|mut r| r.next().is_none())
        {
            ROOT_POOL.lock().unwrap_or_else(|e| e.into_inner()).push(d);
        }
    }
}

pub(crate) const HINT_BUG: &str = "this is unexpected; please report it with the kernel version";
pub(crate) const HINT_USERNS: &str = "user namespaces seem to be restricted here (see `wbuild` docs: \
    sysctl kernel.unprivileged_userns_clone / user.max_user_namespaces, AppArmor \
    kernel.apparmor_restrict_unprivileged_userns)";
pub(crate) const HINT_MOUNT: &str = "check that the mount source exists and that a mount point for a \
    nested mount already exists inside its (read-only) parent mount's source";
pub(crate) const HINT_PROC: &str = "mounting /proc for the sandbox's pid namespace was refused; inside \
    a container /proc must be fully visible (e.g. `docker run --security-opt \
    systempaths=unconfined`)";
pub(crate) const HINT_CGROUP: &str = "the sandbox's pids cgroup (its process limit) could not be \
    joined; check that the cgroup file system is writable for wbuild";
pub(crate) const HINT_PIVOT: &str = "pivot_root is not possible when the host root is an initramfs \
    (rootfs); run wbuild on a system booted from a real root file system";

/// A NULL-terminated array of pointers to `strings` (argv/envp for `execve`), valid while
/// they are.
pub(crate) fn c_ptrs(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

pub(crate) fn cstr(s: impl AsRef<[u8]>, what: &str) -> Result<CString, SandboxError> {
    CString::new(s.as_ref().to_vec())
        .map_err(|_| SandboxError::InvalidRequest(format!("{what} contains a NUL byte")))
}

pub(crate) fn join_root(root: &Path, sandbox: &Path) -> PathBuf {
    let rel = sandbox.strip_prefix("/").unwrap_or(sandbox);
    root.join(rel)
}

/// Plans `mkdir` of each of `dirs` (a path's ancestors, deepest first) inside the new root
/// that is not made yet, outermost first.
pub(crate) fn make_dirs<'p>(
    made: &mut std::collections::HashSet<PathBuf>,
    push: &mut impl FnMut(Op, String, &'static str, bool),
    root: &Path,
    dirs: impl Iterator<Item = &'p Path>,
) -> Result<(), SandboxError> {
    let mut dirs: Vec<&Path> = dirs.collect();
    dirs.reverse();
    for a in dirs {
        if made.insert(a.to_path_buf()) {
            push(
                Op::Mkdir {
                    path: cstr(join_root(root, a).as_os_str().as_bytes(), "mount point")?,
                },
                format!("create directory {} inside the sandbox", a.display()),
                HINT_MOUNT,
                false,
            );
        }
    }
    Ok(())
}

/// Checks that `p` is absolute and made only of normal components.
pub(crate) fn check_sandbox_path(p: &Path, what: &str) -> Result<(), SandboxError> {
    let mut comps = p.components();
    if comps.next() != Some(Component::RootDir) {
        return Err(SandboxError::InvalidRequest(format!(
            "{what} {} must be an absolute path inside the sandbox",
            p.display()
        )));
    }
    if !comps.all(|c| matches!(c, Component::Normal(_))) {
        return Err(SandboxError::InvalidRequest(format!(
            "{what} {} must not contain `.` or `..` components",
            p.display()
        )));
    }
    Ok(())
}

/// Mount flags that a bind remount inside a user namespace must keep (they are locked).
pub(crate) fn locked_flags(host: &Path) -> c_ulong {
    let Ok(c) = CString::new(host.as_os_str().as_bytes()) else {
        return 0;
    };
    // SAFETY: `c` is a valid C string and `st` a properly sized out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    let f = st.f_flag;
    let mut out = 0;
    for (st_bit, ms_bit) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if f & st_bit != 0 {
            out |= ms_bit;
        }
    }
    if f & (libc::ST_NOATIME | libc::ST_RELATIME) == 0 {
        out |= libc::MS_STRICTATIME;
    }
    out
}

/// Mounts an empty read-only directory over each of [`HIDDEN_HOST_DIRS`] that the read-only
/// mount `m` would show, unless the request mounts something there itself: one read-only
/// tmpfs, bound at the other places (a bind is cheaper than a new file system).
pub(crate) fn hide_unkeyed(
    req: &NativeRequest,
    m: &Mount,
    root: &Path,
    push: &mut impl FnMut(Op, String, &'static str, bool),
) -> Result<(), SandboxError> {
    let mut empty: Option<CString> = None;
    for hidden in HIDDEN_HOST_DIRS.iter().map(Path::new) {
        let Ok(rel) = hidden.strip_prefix(&m.host) else {
            continue;
        };
        if rel.as_os_str().is_empty() {
            continue;
        }
        let inside = m.sandbox.join(rel);
        if req.mounts.iter().any(|o| o.sandbox.starts_with(&inside))
            || !std::fs::symlink_metadata(hidden).is_ok_and(|md| md.is_dir())
        {
            continue;
        }
        let dst = cstr(
            join_root(root, &inside).as_os_str().as_bytes(),
            "mount point",
        )?;
        let op = match &empty {
            Some(src) => Op::Bind {
                src: src.clone(),
                dst,
            },
            None => {
                empty = Some(dst.clone());
                Op::MountTmpfs {
                    dst,
                    data: c"mode=0755,size=4k".into(),
                    flags: libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                }
            }
        };
        push(
            op,
            format!(
                "hide the host's {} (an empty directory at {})",
                hidden.display(),
                inside.display()
            ),
            HINT_MOUNT,
            false,
        );
    }
    Ok(())
}

impl Plan {
    pub(crate) fn build(req: &NativeRequest, probe: bool) -> Result<Plan, SandboxError> {
        if req.argv.is_empty() || req.argv[0].is_empty() {
            return Err(SandboxError::InvalidRequest(
                "argv is empty; give the program to run as argv[0]".into(),
            ));
        }
        check_sandbox_path(&req.cwd, "working directory").or_else(|e| {
            if req.cwd == Path::new("/") {
                Ok(())
            } else {
                Err(e)
            }
        })?;

        let (env, search_path) = Self::environment(req)?;
        let envp: Vec<CString> = env
            .iter()
            .map(|(k, v)| cstr(format!("{k}={v}"), &format!("environment variable {k}")))
            .collect::<Result<_, _>>()?;
        let argv: Vec<CString> = req
            .argv
            .iter()
            .map(|a| cstr(a, "an argv element"))
            .collect::<Result<_, _>>()?;

        // execvp-style candidates for argv[0].
        let program = &req.argv[0];
        let candidates: Vec<CString> = if program.contains('/') {
            vec![cstr(program, "argv[0]")?]
        } else {
            search_path
                .split(':')
                .map(|d| if d.is_empty() { "." } else { d })
                .map(|d| cstr(format!("{}/{program}", d.trim_end_matches('/')), "PATH"))
                .collect::<Result<_, _>>()?
        };

        let root_dir = PooledRoot::take().map_err(|source| SandboxError::Io {
            what: "creating the sandbox root mount point in the temp directory",
            error: source,
        })?;
        let root = root_dir.path().to_path_buf();

        let harden = HARDENING.load(Ordering::Relaxed);
        let root_c = cstr(root.as_os_str().as_bytes(), "temp directory")?;
        let mut steps = Vec::new();
        let mut push = |op: Op, what: String, hint: &'static str, userns: bool| {
            steps.push(Step {
                op,
                what,
                hint,
                userns,
            })
        };
        let cgroup = Self::namespace_steps(harden, &root, &root_c, &mut push)?;
        let mut made: HashSet<PathBuf> = std::iter::once(PathBuf::from("/")).collect();
        let mut files = Vec::new();
        let mut system = Vec::new();
        Self::mount_steps(
            req,
            &root,
            harden,
            &mut made,
            (&mut files, &mut system),
            &mut push,
        )?;
        Self::dev_steps(&root, &mut push)?;
        Self::final_steps(&root, root_c, &mut push)?;

        let argv_ptrs = c_ptrs(&argv);
        let envp_ptrs = c_ptrs(&envp);

        let (fd_limit, nproc) = Self::limits();
        let filter = if harden { harden::filter()? } else { &[] };
        let observer = if req.observe && !probe {
            Some(harden::observer_filter()?)
        } else {
            None
        };

        Ok(Plan {
            steps,
            cwd: cstr(req.cwd.as_os_str().as_bytes(), "working directory")?,
            cwd_path: req.cwd.clone(),
            program: program.clone(),
            search_path,
            candidates,
            _argv: argv,
            _envp: envp,
            argv_ptrs,
            envp_ptrs,
            dev_null: c"/dev/null".into(),
            probe,
            fd_limit,
            harden,
            nproc,
            filter,
            observer,
            roots: req
                .mounts
                .iter()
                .map(|m| (m.sandbox.to_string_lossy().into_owned(), m.writable))
                .chain(
                    req.scratch
                        .iter()
                        .map(|s| (s.to_string_lossy().into_owned(), true)),
                )
                .chain([("/tmp".to_owned(), true)])
                .map(|(p, w)| (crate::observe::normalise(&p), w))
                .collect(),
            files,
            system,
            _cgroup: cgroup,
            _root_dir: root_dir,
        })
    }

    /// The environment: exactly the declared variables plus the fixed ones, sorted by name; and
    /// the `PATH` that argv[0] is searched in.
    fn environment(req: &NativeRequest) -> Result<(Vec<(String, String)>, String), SandboxError> {
        let mut env: Vec<(String, String)> = Vec::with_capacity(req.env.len() + 4);
        for (k, v) in &req.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(SandboxError::InvalidRequest(format!(
                    "environment variable name {k:?} is not valid"
                )));
            }
            if matches!(k.as_str(), "LANG" | "TZ" | "SOURCE_DATE_EPOCH") {
                return Err(SandboxError::InvalidRequest(format!(
                    "environment variable {k} is fixed by the sandbox (LANG=C, TZ=UTC, \
                 SOURCE_DATE_EPOCH from the request); remove it from the action's env"
                )));
            }
            if env.iter().any(|(e, _)| e == k) {
                return Err(SandboxError::InvalidRequest(format!(
                    "environment variable {k} is declared twice"
                )));
            }
            env.push((k.clone(), v.clone()));
        }
        if !env.iter().any(|(k, _)| k == "PATH") {
            env.push(("PATH".into(), DEFAULT_PATH.into()));
        }
        env.push(("LANG".into(), "C".into()));
        env.push(("TZ".into(), "UTC".into()));
        env.push((
            "SOURCE_DATE_EPOCH".into(),
            req.source_date_epoch.to_string(),
        ));
        env.sort();
        let search_path = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        Ok((env, search_path))
    }

    /// Steps in the new namespaces before any mount: the identity maps, the pids cgroup (when
    /// hardening), private mount propagation, the hostname and the root tmpfs. Returns the
    /// cgroup, held for as long as the sandbox runs.
    fn namespace_steps(
        harden: bool,
        root: &Path,
        root_c: &CString,
        push: &mut impl FnMut(Op, String, &'static str, bool),
    ) -> Result<Option<harden::PidsCgroup>, SandboxError> {
        // SAFETY: trivial getters.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        push(
            Op::WriteFile {
                path: c"/proc/self/setgroups".into(),
                data: b"deny".to_vec(),
            },
            "write /proc/self/setgroups in the new user namespace".into(),
            HINT_USERNS,
            true,
        );
        push(
            Op::WriteFile {
                path: c"/proc/self/uid_map".into(),
                data: format!("0 {uid} 1\n").into_bytes(),
            },
            format!("map uid {uid} to root in the new user namespace"),
            HINT_USERNS,
            true,
        );
        push(
            Op::WriteFile {
                path: c"/proc/self/gid_map".into(),
                data: format!("0 {gid} 1\n").into_bytes(),
            },
            format!("map gid {gid} to root in the new user namespace"),
            HINT_USERNS,
            true,
        );
        let cgroup = if harden { harden::pids_cgroup()? } else { None };
        if let Some(cg) = &cgroup {
            let tasks = cg.tasks();
            push(
                Op::WriteFile {
                    path: cstr(tasks.as_os_str().as_bytes(), "cgroup path")?,
                    data: b"0".to_vec(),
                },
                format!("join the sandbox's pids cgroup ({})", tasks.display()),
                HINT_CGROUP,
                false,
            );
            push(
                Op::UnshareCgroup,
                "enter a new cgroup namespace".into(),
                HINT_CGROUP,
                false,
            );
        }
        push(
            Op::MakeMountsPrivate,
            "make all mounts private in the new mount namespace".into(),
            HINT_USERNS,
            true,
        );
        push(
            Op::SetHostname {
                name: HOSTNAME.as_bytes().to_vec(),
            },
            format!("set the hostname to {HOSTNAME}"),
            HINT_USERNS,
            true,
        );
        push(
            Op::MountTmpfs {
                dst: root_c.clone(),
                data: c"mode=0755,size=4m".into(),
                flags: libc::MS_NOSUID | libc::MS_NODEV,
            },
            format!("mount the root tmpfs on {}", root.display()),
            HINT_USERNS,
            true,
        );

        Ok(cgroup)
    }

    /// One scratch tmpfs directory. It may lie inside a writable mount (a directory of an
    /// action's outputs holding no output, with inputs inside it: their mount points are then
    /// made on the tmpfs, not in the host directory), never inside a read-only one.
    fn scratch_step(
        req: &NativeRequest,
        dir: &Path,
        root: &Path,
        made: &mut HashSet<PathBuf>,
        push: &mut impl FnMut(Op, String, &'static str, bool),
    ) -> Result<(), SandboxError> {
        check_sandbox_path(dir, "scratch directory")?;
        let first = dir.components().nth(1);
        let reserved = ["proc", "dev", "tmp"]
            .iter()
            .any(|r| first == Some(Component::Normal(r.as_ref())));
        if dir == Path::new("/") || reserved {
            return Err(SandboxError::InvalidRequest(format!(
                "scratch directory {} is reserved: the sandbox provides /, /proc, /dev \
             and /tmp itself",
                dir.display()
            )));
        }
        if let Some(m) = req.mounts.iter().find(|m| {
            m.sandbox == *dir
                || (dir.starts_with(&m.sandbox)
                    && !(m.writable && std::fs::metadata(&m.host).is_ok_and(|md| md.is_dir())))
        }) {
            return Err(SandboxError::InvalidRequest(format!(
                "scratch directory {} lies inside the mount {}{}",
                dir.display(),
                m.sandbox.display(),
                if m.sandbox == *dir {
                    ""
                } else {
                    " (only a writable directory may hold one)"
                }
            )));
        }
        make_dirs(made, push, root, dir.ancestors())?;
        push(
            Op::MountTmpfs {
                dst: cstr(join_root(root, dir).as_os_str().as_bytes(), "scratch")?,
                data: c"mode=0755".into(),
                flags: libc::MS_NOSUID | libc::MS_NODEV,
            },
            format!("mount a scratch tmpfs at {}", dir.display()),
            HINT_MOUNT,
            false,
        );
        Ok(())
    }

    /// The scratch directories and the request's mounts, parents before children (a scratch
    /// directory before a mount as deep), so mount points inside a tmpfs are made on it: for a
    /// mount, bind, attributes, and (when hardening) the unkeyed host directories hidden under
    /// read-only ones.
    fn mount_steps(
        req: &NativeRequest,
        root: &Path,
        harden: bool,
        made: &mut HashSet<PathBuf>,
        (files, system): (&mut Vec<String>, &mut Vec<(String, String)>),
        push: &mut impl FnMut(Op, String, &'static str, bool),
    ) -> Result<(), SandboxError> {
        // A set, not a list: an action may have thousands of input mounts.
        let mut points: HashSet<&Path> = HashSet::new();
        let mut entries: Vec<(usize, bool, Result<&Mount, &PathBuf>)> = req
            .scratch
            .iter()
            .map(|d| (d.components().count(), false, Err(d)))
            .chain(
                req.mounts
                    .iter()
                    .map(|m| (m.sandbox.components().count(), true, Ok(m))),
            )
            .collect();
        entries.sort_by_key(|(depth, is_mount, _)| (*depth, *is_mount));
        let mut symlinks: Vec<&Path> = Vec::new();
        for (_, _, entry) in entries {
            let m = match entry {
                Ok(m) => m,
                Err(dir) => {
                    Self::scratch_step(req, dir, root, made, push)?;
                    continue;
                }
            };
            check_sandbox_path(&m.sandbox, "mount point")?;
            let first = m.sandbox.components().nth(1);
            let reserved = ["proc", "dev", "tmp"]
                .iter()
                .any(|r| first == Some(Component::Normal(r.as_ref())));
            if m.sandbox == Path::new("/") || reserved {
                return Err(SandboxError::InvalidRequest(format!(
                    "mount point {} is reserved: the sandbox provides /, /proc, /dev and \
                 /tmp itself",
                    m.sandbox.display()
                )));
            }
            if !m.host.is_absolute() {
                return Err(SandboxError::InvalidRequest(format!(
                    "mount source {} must be an absolute host path",
                    m.host.display()
                )));
            }
            if !points.insert(&m.sandbox) {
                return Err(SandboxError::InvalidRequest(format!(
                    "mount point {} is given twice",
                    m.sandbox.display()
                )));
            }
            if let Some(s) = symlinks.iter().find(|s| m.sandbox.starts_with(s)) {
                return Err(SandboxError::InvalidRequest(format!(
                    "mount point {} lies under {}, which is a symlink in the sandbox; mount \
                 it at the symlink's target instead",
                    m.sandbox.display(),
                    s.display()
                )));
            }
            let meta =
                std::fs::symlink_metadata(&m.host).map_err(|source| SandboxError::MountSource {
                    host: m.host.clone(),
                    sandbox: m.sandbox.clone(),
                    error: source,
                })?;
            // Parent directories inside the new root.
            make_dirs(made, push, root, m.sandbox.ancestors().skip(1))?;
            let dst = cstr(
                join_root(root, &m.sandbox).as_os_str().as_bytes(),
                "mount point",
            )?;
            made.insert(m.sandbox.clone());
            if meta.file_type().is_symlink() {
                let target =
                    std::fs::read_link(&m.host).map_err(|source| SandboxError::MountSource {
                        host: m.host.clone(),
                        sandbox: m.sandbox.clone(),
                        error: source,
                    })?;
                symlinks.push(&m.sandbox);
                push(
                    Op::Symlink {
                        target: cstr(target.as_os_str().as_bytes(), "symlink target")?,
                        link: dst,
                    },
                    format!(
                        "create symlink {} -> {} inside the sandbox",
                        m.sandbox.display(),
                        target.display()
                    ),
                    HINT_MOUNT,
                    false,
                );
                continue;
            }
            let src = cstr(m.host.as_os_str().as_bytes(), "mount source")?;
            let (mk, kind) = if meta.is_dir() {
                if !m.writable && crate::observe::is_system_tree(&m.host) {
                    system.push((
                        crate::observe::normalise(&m.sandbox.to_string_lossy()),
                        m.host.to_string_lossy().into_owned(),
                    ));
                }
                (Op::Mkdir { path: dst.clone() }, "directory")
            } else {
                if !m.writable && meta.is_file() {
                    files.push(crate::observe::normalise(&m.sandbox.to_string_lossy()));
                }
                (Op::Touch { path: dst.clone() }, "file")
            };
            push(
                mk,
                format!(
                    "create mount point {} ({kind}) inside the sandbox",
                    m.sandbox.display()
                ),
                HINT_MOUNT,
                false,
            );
            push(
                Op::Bind {
                    src,
                    dst: dst.clone(),
                },
                format!("bind-mount {} at {}", m.host.display(), m.sandbox.display()),
                HINT_MOUNT,
                false,
            );
            let (set, mut legacy) = if m.writable {
                (MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0)
            } else {
                (
                    MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                    libc::MS_RDONLY,
                )
            };
            legacy |= locked_flags(&m.host) | libc::MS_NOSUID | libc::MS_NODEV;
            push(
                Op::SetAttr {
                    dst,
                    set,
                    legacy_flags: legacy,
                },
                format!(
                    "make the mount {} {}",
                    m.sandbox.display(),
                    if m.writable {
                        "nosuid,nodev"
                    } else {
                        "read-only,nosuid,nodev"
                    }
                ),
                HINT_MOUNT,
                false,
            );
            if harden && !m.writable {
                hide_unkeyed(req, m, root, push)?;
            }
        }

        Ok(())
    }

    /// `/dev`: only null, zero, urandom (read-only binds of the host nodes) and the fd links.
    fn dev_steps(
        root: &Path,
        push: &mut impl FnMut(Op, String, &'static str, bool),
    ) -> Result<(), SandboxError> {
        let dev = root.join("dev");
        push(
            Op::Mkdir {
                path: cstr(dev.as_os_str().as_bytes(), "dev")?,
            },
            "create /dev inside the sandbox".into(),
            HINT_BUG,
            false,
        );
        let dev_locked = locked_flags(Path::new("/dev/null"));
        for node in ["null", "zero", "urandom"] {
            let host = format!("/dev/{node}");
            let dst = cstr(dev.join(node).as_os_str().as_bytes(), "dev")?;
            push(
                Op::Touch { path: dst.clone() },
                format!("create the mount point /dev/{node} inside the sandbox"),
                HINT_BUG,
                false,
            );
            push(
                Op::Bind {
                    src: cstr(&host, "dev")?,
                    dst: dst.clone(),
                },
                format!("bind-mount the host's {host}"),
                "the host must have /dev/null, /dev/zero and /dev/urandom",
                false,
            );
            push(
                Op::SetAttr {
                    dst,
                    set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC,
                    legacy_flags: dev_locked | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
                },
                format!("make /dev/{node} read-only inside the sandbox"),
                HINT_BUG,
                false,
            );
        }
        for (name, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            push(
                Op::Symlink {
                    target: cstr(target, "dev")?,
                    link: cstr(dev.join(name).as_os_str().as_bytes(), "dev")?,
                },
                format!("create symlink /dev/{name} inside the sandbox"),
                HINT_BUG,
                false,
            );
        }

        Ok(())
    }

    /// A private `/tmp` and `/proc`, then into the new root, made read-only.
    fn final_steps(
        root: &Path,
        root_c: CString,
        push: &mut impl FnMut(Op, String, &'static str, bool),
    ) -> Result<(), SandboxError> {
        let tmp = cstr(root.join("tmp").as_os_str().as_bytes(), "tmp")?;
        push(
            Op::Mkdir { path: tmp.clone() },
            "create /tmp inside the sandbox".into(),
            HINT_BUG,
            false,
        );
        push(
            Op::MountTmpfs {
                dst: tmp,
                data: c"mode=1777".into(),
                flags: libc::MS_NOSUID | libc::MS_NODEV,
            },
            "mount a private tmpfs at /tmp".into(),
            HINT_BUG,
            false,
        );
        let proc_ = cstr(root.join("proc").as_os_str().as_bytes(), "proc")?;
        push(
            Op::Mkdir {
                path: proc_.clone(),
            },
            "create /proc inside the sandbox".into(),
            HINT_BUG,
            false,
        );
        push(
            Op::MountProc { dst: proc_ },
            "mount /proc for the sandbox's pid namespace".into(),
            HINT_PROC,
            true,
        );
        push(
            Op::PivotRoot { new_root: root_c },
            format!("pivot_root into {}", root.display()),
            HINT_PIVOT,
            false,
        );
        push(
            Op::RemountRootReadOnly,
            "remount the sandbox root read-only".into(),
            HINT_BUG,
            false,
        );

        Ok(())
    }

    /// The bound for closing descriptors when close_range is unavailable, and the process limit
    /// of the action.
    fn limits() -> (c_int, libc::rlimit) {
        // Fallback bound for closing descriptors when close_range is unavailable.
        // SAFETY: plain getrlimit with a valid out-parameter.
        let mut rl: libc::rlimit = unsafe { std::mem::zeroed() };
        // SAFETY: getrlimit writes into the valid out-parameter.
        let fd_limit = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 {
            rl.rlim_cur.min(1 << 20) as c_int
        } else {
            65536
        };

        let nproc = {
            // SAFETY: plain getrlimit with a valid out-parameter.
            let mut rl: libc::rlimit = unsafe { std::mem::zeroed() };
            // SAFETY: getrlimit writes into the valid out-parameter.
            if unsafe { libc::getrlimit(libc::RLIMIT_NPROC, &mut rl) } != 0 {
                rl.rlim_max = libc::RLIM_INFINITY;
            }
            let max = rl.rlim_max.min(PIDS_LIMIT as libc::rlim_t);
            libc::rlimit {
                rlim_cur: max,
                rlim_max: max,
            }
        };
        (fd_limit, nproc)
    }
}
