//! Native sandbox executor for wbuild (`runtime/exec-native`).
//!
//! Runs one native build action (a compiler, linker, test binary, ...) inside fresh Linux
//! namespaces — user, mount, pid, network, ipc and uts — implemented in-process on top of
//! raw syscalls (`libc`), so users never install a separate sandbox program.
//!
//! # What the action sees
//!
//! * A new root on a private tmpfs (read-only once set up), so nothing from the host exists
//!   unless it was listed in [`NativeRequest::mounts`]: typically the staged inputs
//!   (read-only), the output directory (writable) and the toolchain (read-only host
//!   directories such as `/usr`; a host path that is a symlink, like Debian's `/bin ->
//!   usr/bin`, becomes the same symlink in the new root). Bind mounts are made read-only
//!   recursively, so inputs are presented without copying and cannot be modified.
//! * Inside a read-only mount of a host tree, the host directories no action key covers
//!   ([`HIDDEN_HOST_DIRS`]: `/usr/local`, `/usr/share`, `/usr/src`, `/usr/games`) are
//!   empty read-only directories, so gcc never finds a header in `/usr/local/include` that
//!   the cache would not notice changing. The rest of the host (`/etc`, `/opt`, `/home`,
//!   `/root`, `/var`, `/srv`, `/mnt`, `/media`, `/run`, ...) does not exist unless mounted.
//! * A private, empty `/tmp`; a read-only `/proc` for its own pid namespace; a `/dev` holding only
//!   `null`, `zero` and `urandom` (read-only binds of the host nodes; `mknod` is not allowed
//!   in a user namespace) plus the `fd`/`stdin`/`stdout`/`stderr` symlinks.
//! * No network: a fresh network namespace whose loopback is left down, so even a connect
//!   to `127.0.0.1` fails.
//! * Hostname `wbuild`, umask `022`, uid/gid 0 inside (mapped to the caller's euid/egid,
//!   so files it writes belong to the caller) but without any capability,
//!   stdin `/dev/null`, and exactly the declared environment plus `PATH` (default
//!   [`DEFAULT_PATH`]), `LANG=C`, `TZ=UTC` and `SOURCE_DATE_EPOCH`. No `$HOME`.
//! * stdout and stderr are captured through pipes, at most [`OUTPUT_CAP`] bytes each (the
//!   rest is read and discarded so the action never blocks on a full pipe). No other
//!   descriptor reaches it.
//!
//! # What the action cannot do
//!
//! Just before `execve` the action process (never init) is confined, with raw syscalls on
//! data prepared before the clone:
//!
//! * It has no capabilities: effective, permitted, inheritable and ambient sets are empty,
//!   the bounding set is dropped too and the securebits (`NOROOT`, `NO_SETUID_FIXUP`, no
//!   ambient raise) are locked, so executing anything as uid 0, a setuid file or a file with
//!   capabilities grants none. `no_new_privs` is set. Without `CAP_SYS_ADMIN` it cannot
//!   mount, remount (so a read-only input or `/usr` stays read-only: the mounts are the
//!   kernel's, the caps to change them are gone), `pivot_root`, `chroot`, `mknod` a device
//!   or change the hostname; it cannot write `/proc` (mounted read-only: when wbuild runs as
//!   root, the action's uid *is* the host's root, and `/proc/sys` and `/proc/sysrq-trigger`
//!   check only the uid), and init, being non-dumpable, cannot be reached through
//!   `/proc/1/{mem,root,fd,environ}`.
//! * A seccomp filter makes these fail with `EPERM`: `mount`, `umount2`, `pivot_root`,
//!   `chroot`, the new mount API (`open_tree`, `open_tree_attr`, `move_mount`, `fsopen`,
//!   `fsconfig`, `fsmount`, `fspick`, `mount_setattr`), `unshare`, `setns`, `clone` with any
//!   namespace flag, `keyctl`/`add_key`/`request_key`, `bpf`, `perf_event_open`, `ptrace`,
//!   `process_vm_readv`/`writev`, `pidfd_getfd`, `userfaultfd`, `io_uring_*` (its operations
//!   would bypass the filter), `kexec_*`, module loading, `reboot`, `swapon`/`swapoff`,
//!   `syslog`, `acct`, `quotactl*`, `lookup_dcookie`, `name_to_handle_at`,
//!   `open_by_handle_at`, `settimeofday`, `clock_settime`, `adjtimex`, `clock_adjtime`
//!   and (x86_64) `iopl`/`ioperm`. Setting a setuid or setgid bit fails with `EPERM` too
//!   (`chmod`, `fchmod`, `fchmodat`, `fchmodat2`, and `open`/`openat`/`creat`/`mknod`
//!   creating a file with one): the action's uid is the caller's, so such a file left in an
//!   output directory would be a setuid binary of the caller (root, in CI) on the host.
//!   `clone3` and `openat2` fail with `ENOSYS` (their flags are in memory, where a filter
//!   cannot look), so glibc falls back to `clone`/`openat`; on x86_64 every x32-ABI
//!   number fails with `ENOSYS`; a system call of another architecture (32-bit entry
//!   points) kills the action. The filter is a binary search over the sorted numbers, built
//!   once per process (the kernel emulates a filter for every syscall number when it is
//!   installed, so a linear chain would cost ~0.2 ms per action).
//! * At most [`PIDS_LIMIT`] tasks at a time: `RLIMIT_NPROC` (counted per user namespace and
//!   uid; the kernel does not apply it to the host's root user) and, where wbuild may create
//!   cgroups in a cgroup v1 `pids` hierarchy (as root), a `pids` cgroup per sandbox (pooled)
//!   that init joins before forking anything; the action then sees its own cgroup
//!   namespace. A fork bomb stalls at the limit until the action's timeout kills the tree.
//!   As root without such a cgroup (e.g. on cgroup v2, where joining costs an RCU grace
//!   period per action unless `clone3(CLONE_INTO_CGROUP)` is used, which wbuild does not do
//!   yet), no task limit applies, only the timeout.
//!
//! Nested user namespaces (whose mounts the kernel locks) are not used: with no
//! capabilities, no `unshare`/`setns`/namespace `clone` and no mount system calls, the action
//! has no way to reach a mount at all.
//!
//! # Design
//!
//! The caller (the scheduler) is multi-threaded, so after `fork` only async-signal-safe
//! work is allowed. [`run`] therefore prepares *everything* in the parent first — every
//! path as a `CString`, the argv/envp pointer arrays, the candidate executable paths for
//! the `PATH` lookup, the uid/gid map contents and the ordered list of setup steps — and
//! then calls the raw `clone` syscall (fork semantics, no `CLONE_VM`) with
//! `CLONE_NEWUSER|NEWNS|NEWPID|NEWNET|NEWIPC|NEWUTS`. The child is pid 1 ("init") of the
//! new pid namespace. It only walks the prepared plan with thin syscall wrappers (no
//! allocation, no locks, no glibc `fork` with its atfork handlers): it closes every
//! inherited descriptor it does not need (another worker thread may have had pipes open at
//! the moment of the clone), writes its own `uid_map` (`0 <euid> 1`), joins the sandbox's
//! `pids` cgroup (if any) and enters a new cgroup namespace, makes all mounts private,
//! mounts the root tmpfs on an empty per-run directory, performs the binds (and the empty
//! directories over [`HIDDEN_HOST_DIRS`]), mounts `/tmp`, `/dev` nodes and `/proc`,
//! `pivot_root`s into the new root, detaches the old root, remounts `/` read-only and makes
//! itself non-dumpable. It then forks (raw `clone` again) the action, which resets signal
//! dispositions and mask, sets up stdio, umask and cwd, confines itself (see above), marks
//! every other fd close-on-exec and `execve`s the first `PATH` candidate that exists.
//!
//! Init reaps every process in the namespace until the action exits, sends the wait status
//! to the parent over a report pipe and exits; the kernel then kills whatever the action
//! left behind (the pid namespace dies with its init). A setup failure is reported over
//! the same pipe as (step index, errno) and turned into a typed [`SandboxError`] that names
//! the step. On timeout or [`interrupt`] the parent sends `SIGKILL` to init, which tears
//! down the whole process tree exactly. The parent never reaps init before removing it
//! from the registry used by [`interrupt`], so a pid can never be reused under a kill.
//!
//! # What it must never do
//!
//! * Never run an action with anything host-visible that was not declared: no host `/tmp`,
//!   `$HOME`, `/etc`, network or environment variables leak in.
//! * Never write into a read-only mount source (mount points inside read-only mounts must
//!   already exist in the source; the sandbox does not create them there).
//! * Never leave a process behind after [`run`] returns, whatever happened.
//! * Never allocate, lock or call non-async-signal-safe code between `clone` and `execve`.
//! * Never run an action with a capability, without `no_new_privs` or without the seccomp
//!   filter: if confining it fails, the run fails with a [`SandboxError::Setup`] naming the
//!   stage.
//! * Never silently fall back to running unsandboxed: if user namespaces are unavailable,
//!   [`run`] and [`probe`] fail with [`SandboxError::UserNamespacesUnavailable`], which says
//!   how to enable them.
//!
//! [`SANDBOX_VERSION`] is part of every action key; bump it whenever anything here changes
//! what an action can observe.

use std::ffi::{CString, c_char, c_int, c_ulong, c_void};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod harden;

pub use harden::{HIDDEN_HOST_DIRS, PIDS_LIMIT};

/// Whether actions are confined after setup (capabilities, no_new_privs, seccomp, process
/// limit, hidden host directories). Always on, except in the overhead benchmark.
static HARDENING: AtomicBool = AtomicBool::new(true);

/// Turns the confinement of actions off (`false`) or on, for the whole process. Only for
/// measuring its cost (`examples/overhead.rs`); never use it to run real actions.
#[cfg(feature = "bench")]
#[doc(hidden)]
pub fn set_hardening_for_benchmark(on: bool) {
    HARDENING.store(on, Ordering::SeqCst);
}

/// Version of the sandbox semantics; part of every action key.
pub const SANDBOX_VERSION: &str = "wbuild-native/2";

/// `PATH` inside the sandbox when the request does not set one.
pub const DEFAULT_PATH: &str = "/usr/bin:/bin";

/// Maximum number of bytes of stdout (and, separately, of stderr) kept per action.
pub const OUTPUT_CAP: usize = 16 << 20;

/// Hostname inside the sandbox.
pub const HOSTNAME: &str = "wbuild";

/// How to enable user namespaces; part of [`SandboxError::UserNamespacesUnavailable`].
pub const ENABLE_USERNS_HINT: &str = "wbuild's native sandbox needs unprivileged user \
namespaces. Enable them with `sysctl -w kernel.unprivileged_userns_clone=1` (Debian, older \
Ubuntu) and make sure `sysctl user.max_user_namespaces` is greater than 0 (e.g. `sysctl -w \
user.max_user_namespaces=15000`); on Ubuntu 23.10 and later AppArmor restricts them: add an \
AppArmor profile with `userns,` for wbuild or set `sysctl -w \
kernel.apparmor_restrict_unprivileged_userns=0`. Inside a container, allow \
clone(CLONE_NEWUSER) in its seccomp profile (e.g. `docker run --security-opt \
seccomp=unconfined`). Persist sysctls in /etc/sysctl.d/.";

/// One host path made visible inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Absolute host path (directory, file, or symlink — a symlink is recreated as the
    /// same symlink instead of being mounted).
    pub host: PathBuf,
    /// Absolute path inside the sandbox. Must not be `/` or lie under `/proc`, `/dev` or
    /// `/tmp`, which the sandbox provides itself.
    pub sandbox: PathBuf,
    /// Whether the action may write through this mount (outputs). Otherwise the mount is
    /// read-only, recursively.
    pub writable: bool,
}

/// One action to run in a fresh sandbox.
#[derive(Debug, Clone)]
pub struct NativeRequest {
    /// Program and arguments; `argv[0]` is looked up in the sandbox's `PATH` if it does not
    /// contain a `/`.
    pub argv: Vec<String>,
    /// Exactly these variables, plus `PATH` (if not given: [`DEFAULT_PATH`]), `LANG=C`,
    /// `TZ=UTC` and `SOURCE_DATE_EPOCH`. Setting `LANG`, `TZ` or `SOURCE_DATE_EPOCH` here
    /// is an error.
    pub env: Vec<(String, String)>,
    /// Host paths to present, e.g. staged inputs at `/work` (read-only), the output
    /// directory (writable) and toolchain directories (`/usr`, `/bin`, ...; read-only).
    pub mounts: Vec<Mount>,
    /// Empty, writable directories on a private tmpfs (e.g. `/work`, with the inputs and the
    /// output directories mounted inside it): the action may create files there, which vanish
    /// with the sandbox. Mounted before [`NativeRequest::mounts`]; none may lie inside a mount.
    pub scratch: Vec<PathBuf>,
    /// Working directory inside the sandbox, e.g. `/work`.
    pub cwd: PathBuf,
    /// Value of `SOURCE_DATE_EPOCH`.
    pub source_date_epoch: u64,
    /// Wall-clock limit; the whole process tree is killed when it passes.
    pub timeout: Duration,
}

/// What happened to an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeOutcome {
    /// Exit code, if the action exited normally.
    pub exit_code: Option<i32>,
    /// Signal that killed the action; `Some(SIGKILL)` after a timeout.
    pub signal: Option<i32>,
    /// The action ran past [`NativeRequest::timeout`] and was killed.
    pub timed_out: bool,
    /// Captured stdout (at most [`OUTPUT_CAP`] bytes).
    pub stdout: Vec<u8>,
    /// Captured stderr (at most [`OUTPUT_CAP`] bytes).
    pub stderr: Vec<u8>,
    /// Wall time of the whole run, sandbox setup and teardown included.
    pub duration: Duration,
}

impl NativeOutcome {
    /// The action exited with code 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// Why a sandboxed run could not be performed (the action's own failure is not an error:
/// see [`NativeOutcome`]).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The kernel refused to create or use a user namespace.
    #[error("user namespaces are unavailable ({detail}). {hint}", hint = ENABLE_USERNS_HINT)]
    UserNamespacesUnavailable {
        /// Which operation failed and with what error.
        detail: String,
    },
    /// The request itself is malformed.
    #[error("invalid sandbox request: {0}")]
    InvalidRequest(String),
    /// A mount's host path cannot be used.
    #[error(
        "sandbox mount source {} (for {} inside the sandbox) cannot be used: {source}; \
         create or stage it before running the action, or remove the mount",
        host.display(), sandbox.display()
    )]
    MountSource {
        /// Host path of the mount.
        host: PathBuf,
        /// Where it was to appear inside the sandbox.
        sandbox: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A step of building the sandbox failed inside the sandbox's init process.
    #[error("sandbox setup failed: could not {step}: {source}. {hint}")]
    Setup {
        /// What was being done, with the paths involved.
        step: String,
        /// The errno reported by the kernel.
        source: io::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// The program could not be executed inside the sandbox.
    #[error(
        "cannot run `{program}` inside the sandbox: {source} (looked in PATH={path}); \
         make sure the toolchain directory that contains it, and the libraries it needs, \
         are mounted"
    )]
    Exec {
        /// `argv[0]` as requested.
        program: String,
        /// The `PATH` searched.
        path: String,
        /// The errno from `execve`.
        source: io::Error,
    },
    /// The working directory does not exist inside the sandbox.
    #[error(
        "cannot change to working directory {} inside the sandbox: {source}; it must be \
         a mounted directory or lie inside one",
        cwd.display()
    )]
    Cwd {
        /// The requested working directory.
        cwd: PathBuf,
        /// The errno from `chdir`.
        source: io::Error,
    },
    /// A host-side system call failed.
    #[error("sandbox host-side {what} failed: {source}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// The sandbox's init process died without reporting a result.
    #[error(
        "sandbox init process died unexpectedly (wait status {status:#x}) without reporting \
         a result; check the kernel log (OOM killer?)"
    )]
    InitDied {
        /// Raw wait status of init.
        status: i32,
    },
    /// [`interrupt`] killed the sandbox.
    #[error("the action was interrupted (Ctrl-C); its whole process tree was killed")]
    Interrupted,
}

/// Runs one action in a fresh sandbox and waits for it (or its timeout).
///
/// Safe to call from many threads at once.
pub fn run(req: &NativeRequest) -> Result<NativeOutcome, SandboxError> {
    let plan = Plan::build(req, false)?;
    execute(&plan, req.timeout)
}

/// The host's system directories (`/usr`, `/bin`, `/lib`, `/lib64`, `/sbin`, those that exist)
/// as read-only mounts at the same paths: a toolchain made of the host's installed packages.
/// Symlinks such as Debian's `/bin -> usr/bin` are recreated as symlinks in the sandbox.
/// Inside them, [`HIDDEN_HOST_DIRS`] (`/usr/local`, `/usr/share`, ...) are empty: nothing
/// keys their contents.
pub fn host_toolchain_mounts() -> Vec<Mount> {
    ["/usr", "/bin", "/lib", "/lib64", "/sbin"]
        .iter()
        .filter(|p| Path::new(p).symlink_metadata().is_ok())
        .map(|p| Mount {
            host: PathBuf::from(p),
            sandbox: PathBuf::from(p),
            writable: false,
        })
        .collect()
}

/// Checks that sandboxes can be created here (user, mount, pid, network namespaces,
/// mounting tmpfs and `/proc`, `pivot_root`), by building an empty sandbox whose action
/// exits immediately. The error explains how to enable what is missing.
pub fn probe() -> Result<(), SandboxError> {
    let req = NativeRequest {
        argv: vec!["probe".into()],
        env: Vec::new(),
        mounts: Vec::new(),
        scratch: Vec::new(),
        cwd: PathBuf::from("/"),
        source_date_epoch: 0,
        timeout: Duration::from_secs(10),
    };
    let plan = Plan::build(&req, true)?;
    let out = execute(&plan, req.timeout)?;
    if out.exit_code == Some(0) {
        Ok(())
    } else {
        Err(SandboxError::Setup {
            step: "run the probe sandbox".into(),
            source: io::Error::other(format!("{out:?}")),
            hint: "this is a bug in wbuild's sandbox; please report it",
        })
    }
}

/// Kills the whole process tree of every sandbox that is running at the time of the call
/// (for Ctrl-C); their [`run`] calls return [`SandboxError::Interrupted`]. Not
/// async-signal-safe: call it from a normal thread (e.g. a `ctrlc` handler), and stop
/// dispatching new actions first.
pub fn interrupt() {
    let running = lock_running();
    for r in running.iter() {
        r.interrupted.store(true, Ordering::SeqCst);
        // SAFETY: `r.pid` is our unreaped child (entries are removed before reaping).
        unsafe { libc::kill(r.pid, libc::SIGKILL) };
    }
}

// ---------------------------------------------------------------------------------------
// Registry of running sandboxes (for `interrupt`).

struct Running {
    pid: libc::pid_t,
    interrupted: Arc<AtomicBool>,
}

static RUNNING: Mutex<Vec<Running>> = Mutex::new(Vec::new());

fn lock_running() -> std::sync::MutexGuard<'static, Vec<Running>> {
    RUNNING.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------
// The plan: everything the child needs, prepared before `clone`.

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const AT_RECURSIVE: c_int = 0x8000;
const CLOSE_RANGE_CLOEXEC: c_int = 1 << 2;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

enum Op {
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

struct Step {
    op: Op,
    what: String,
    hint: &'static str,
    /// An `EPERM`/`EACCES` here means user namespaces are not usable.
    userns: bool,
}

struct Plan {
    steps: Vec<Step>,
    cwd: CString,
    cwd_path: PathBuf,
    program: String,
    search_path: String,
    candidates: Vec<CString>,
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    envp_ptrs: Vec<*const c_char>,
    dev_null: CString,
    probe: bool,
    fd_limit: c_int,
    /// Confine the action before `execve` (see [`confine`]).
    harden: bool,
    /// `RLIMIT_NPROC` for the action.
    nproc: libc::rlimit,
    /// The seccomp filter (classic BPF).
    filter: &'static [libc::sock_filter],
    /// The sandbox's pids cgroup, back to the pool when the plan is dropped (after init was
    /// reaped).
    _cgroup: Option<harden::PidsCgroup>,
    /// Empty host directory the new root is mounted on (in the child's mount namespace
    /// only). Returned to the pool when the plan is dropped.
    _root_dir: PooledRoot,
}

/// Empty directories sandbox roots are mounted on, kept for the next sandbox: the tmpfs is
/// mounted only in the sandbox's own mount namespace, so the host directory stays empty, and
/// creating (and deleting) a directory per action is a measurable cost on ext4.
static ROOT_POOL: Mutex<Vec<tempfile::TempDir>> = Mutex::new(Vec::new());

struct PooledRoot(Option<tempfile::TempDir>);

impl PooledRoot {
    fn take() -> io::Result<PooledRoot> {
        let reused = ROOT_POOL.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let dir = match reused {
            Some(d) => d,
            None => tempfile::Builder::new()
                .prefix("wbuild-sandbox-root-")
                .tempdir()?,
        };
        Ok(PooledRoot(Some(dir)))
    }

    fn path(&self) -> &Path {
        self.0.as_ref().expect("root directory").path()
    }
}

impl Drop for PooledRoot {
    fn drop(&mut self) {
        if let Some(d) = self.0.take()
            // Still empty, as it must be; anything else is dropped (and removed).
            && std::fs::read_dir(d.path()).is_ok_and(|mut r| r.next().is_none())
        {
            ROOT_POOL.lock().unwrap_or_else(|e| e.into_inner()).push(d);
        }
    }
}

const HINT_BUG: &str = "this is unexpected; please report it with the kernel version";
const HINT_USERNS: &str = "user namespaces seem to be restricted here (see `wbuild` docs: \
    sysctl kernel.unprivileged_userns_clone / user.max_user_namespaces, AppArmor \
    kernel.apparmor_restrict_unprivileged_userns)";
const HINT_MOUNT: &str = "check that the mount source exists and that a mount point for a \
    nested mount already exists inside its (read-only) parent mount's source";
const HINT_PROC: &str = "mounting /proc for the sandbox's pid namespace was refused; inside \
    a container /proc must be fully visible (e.g. `docker run --security-opt \
    systempaths=unconfined`)";
const HINT_CGROUP: &str = "the sandbox's pids cgroup (its process limit) could not be \
    joined; check that the cgroup file system is writable for wbuild";
const HINT_PIVOT: &str = "pivot_root is not possible when the host root is an initramfs \
    (rootfs); run wbuild on a system booted from a real root file system";

fn cstr(s: impl AsRef<[u8]>, what: &str) -> Result<CString, SandboxError> {
    CString::new(s.as_ref().to_vec())
        .map_err(|_| SandboxError::InvalidRequest(format!("{what} contains a NUL byte")))
}

fn join_root(root: &Path, sandbox: &Path) -> PathBuf {
    let rel = sandbox.strip_prefix("/").unwrap_or(sandbox);
    root.join(rel)
}

/// Plans `mkdir` of each of `dirs` (a path's ancestors, deepest first) inside the new root
/// that is not made yet, outermost first.
fn make_dirs<'p>(
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
fn check_sandbox_path(p: &Path, what: &str) -> Result<(), SandboxError> {
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
fn locked_flags(host: &Path) -> c_ulong {
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
fn hide_unkeyed(
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
    fn build(req: &NativeRequest, probe: bool) -> Result<Plan, SandboxError> {
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

        // Environment: exactly the declared variables plus the fixed ones, sorted by name.
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
            source,
        })?;
        let root = root_dir.path().to_path_buf();

        // SAFETY: trivial getters.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let mut steps = Vec::new();
        let mut push = |op: Op, what: String, hint: &'static str, userns: bool| {
            steps.push(Step {
                op,
                what,
                hint,
                userns,
            })
        };
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
        let harden = HARDENING.load(Ordering::Relaxed);
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
        let root_c = cstr(root.as_os_str().as_bytes(), "temp directory")?;
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

        // Sets, not lists: an action may have thousands of input mounts.
        let mut made: std::collections::HashSet<PathBuf> =
            std::iter::once(PathBuf::from("/")).collect();
        let mut points: std::collections::HashSet<&Path> = std::collections::HashSet::new();

        // Scratch tmpfs directories, then the user mounts (parents before children), so
        // mount points inside a scratch directory are made on its tmpfs.
        let mut scratch: Vec<&PathBuf> = req.scratch.iter().collect();
        scratch.sort_by_key(|p| p.components().count());
        for dir in scratch {
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
            if let Some(m) = req
                .mounts
                .iter()
                .find(|m| dir.starts_with(&m.sandbox) || m.sandbox == *dir)
            {
                return Err(SandboxError::InvalidRequest(format!(
                    "scratch directory {} lies inside the mount {}",
                    dir.display(),
                    m.sandbox.display()
                )));
            }
            make_dirs(&mut made, &mut push, &root, dir.ancestors())?;
            push(
                Op::MountTmpfs {
                    dst: cstr(join_root(&root, dir).as_os_str().as_bytes(), "scratch")?,
                    data: c"mode=0755".into(),
                    flags: libc::MS_NOSUID | libc::MS_NODEV,
                },
                format!("mount a scratch tmpfs at {}", dir.display()),
                HINT_MOUNT,
                false,
            );
        }

        let mut mounts: Vec<&Mount> = req.mounts.iter().collect();
        mounts.sort_by_key(|m| m.sandbox.components().count());
        let mut symlinks: Vec<&Path> = Vec::new();
        for m in &mounts {
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
                    source,
                })?;
            // Parent directories inside the new root.
            make_dirs(&mut made, &mut push, &root, m.sandbox.ancestors().skip(1))?;
            let dst = cstr(
                join_root(&root, &m.sandbox).as_os_str().as_bytes(),
                "mount point",
            )?;
            made.insert(m.sandbox.clone());
            if meta.file_type().is_symlink() {
                let target =
                    std::fs::read_link(&m.host).map_err(|source| SandboxError::MountSource {
                        host: m.host.clone(),
                        sandbox: m.sandbox.clone(),
                        source,
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
                (Op::Mkdir { path: dst.clone() }, "directory")
            } else {
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
                hide_unkeyed(req, m, &root, &mut push)?;
            }
        }

        // /dev: only null, zero, urandom (read-only binds of the host nodes) + fd links.
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

        // Private /tmp and /proc.
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

        let mut argv_ptrs: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut envp_ptrs: Vec<*const c_char> = envp.iter().map(|a| a.as_ptr()).collect();
        envp_ptrs.push(std::ptr::null());

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
        let filter = if harden { harden::filter()? } else { &[] };

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
            _cgroup: cgroup,
            _root_dir: root_dir,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Host side.

const REPORT_SETUP: i32 = 1;
const REPORT_EXEC: i32 = 2;
const REPORT_CWD: i32 = 3;
const REPORT_STATUS: i32 = 4;
const REPORT_CLONE: i32 = 5;
const REPORT_CONFINE: i32 = 6;

/// The calling thread's errno (async-signal-safe: a TLS read, no allocation).
fn errno() -> c_int {
    // SAFETY: `__errno_location` always returns a valid pointer for the calling thread.
    unsafe { *libc::__errno_location() }
}

struct Fd(c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own this descriptor.
        unsafe { libc::close(self.0) };
    }
}

/// A close-on-exec pipe whose ends are both >= 3 (so they never collide with stdio in the
/// child, even if the host process closed its stdio).
fn pipe() -> Result<(Fd, Fd), SandboxError> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: valid out-array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(SandboxError::Io {
            what: "pipe2",
            source: io::Error::last_os_error(),
        });
    }
    let mut out = [Fd(fds[0]), Fd(fds[1])];
    for f in &mut out {
        if f.0 < 3 {
            // SAFETY: duplicating a descriptor we own.
            let n = unsafe { libc::fcntl(f.0, libc::F_DUPFD_CLOEXEC, 3) };
            if n < 0 {
                return Err(SandboxError::Io {
                    what: "fcntl(F_DUPFD_CLOEXEC)",
                    source: io::Error::last_os_error(),
                });
            }
            *f = Fd(n);
        }
    }
    let [r, w] = out;
    Ok((r, w))
}

/// Kills and reaps init if `execute` leaves early (error or panic).
struct InitGuard {
    pid: libc::pid_t,
    reaped: bool,
}

impl InitGuard {
    fn unregister(&self) {
        lock_running().retain(|r| r.pid != self.pid);
    }

    fn reap(&mut self) -> i32 {
        self.unregister();
        let mut status = 0;
        loop {
            // SAFETY: `pid` is our child; valid out-parameter.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::__WALL) };
            if r == self.pid || (r < 0 && errno() != libc::EINTR) {
                break;
            }
        }
        self.reaped = true;
        status
    }
}

impl Drop for InitGuard {
    fn drop(&mut self) {
        if !self.reaped {
            self.unregister();
            // SAFETY: our unreaped child.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            self.reap();
        }
    }
}

fn execute(plan: &Plan, timeout: Duration) -> Result<NativeOutcome, SandboxError> {
    let start = Instant::now();
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (rep_r, rep_w) = pipe()?;
    let fds = ChildFds {
        out: out_w.0,
        err: err_w.0,
        report: rep_w.0,
    };
    let interrupted = Arc::new(AtomicBool::new(false));

    let flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS;
    let pid;
    {
        // Held across the clone so `interrupt` cannot miss a sandbox that has started.
        let mut running = lock_running();
        // SAFETY: raw clone with fork semantics (no CLONE_VM, no new stack): the child
        // gets a copy of this address space and runs only `init_main`, which performs
        // async-signal-safe syscalls on memory prepared above and never returns.
        let r = unsafe {
            libc::syscall(
                libc::SYS_clone,
                (flags | libc::SIGCHLD) as c_ulong,
                0usize,
                0usize,
                0usize,
                0usize,
            )
        };
        if r == 0 {
            // SAFETY: we are the freshly cloned child.
            unsafe { init_main(plan, &fds) }
        }
        if r < 0 {
            let e = io::Error::last_os_error();
            drop(running);
            return Err(match e.raw_os_error() {
                Some(libc::EPERM | libc::ENOSPC | libc::EUSERS | libc::EINVAL) => {
                    SandboxError::UserNamespacesUnavailable {
                        detail: format!("clone(CLONE_NEWUSER|CLONE_NEWPID|...) failed: {e}"),
                    }
                }
                _ => SandboxError::Io {
                    what: "clone of the sandbox init process",
                    source: e,
                },
            });
        }
        pid = r as libc::pid_t;
        running.push(Running {
            pid,
            interrupted: interrupted.clone(),
        });
    }
    let mut guard = InitGuard { pid, reaped: false };
    drop(out_w);
    drop(err_w);
    drop(rep_w);

    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut report = Vec::new();
    let mut open = [Some(out_r), Some(err_r), Some(rep_r)];
    let mut deadline = start + timeout;
    let mut timed_out = false;
    let mut buf = vec![0u8; 64 * 1024];
    while open.iter().any(Option::is_some) {
        let now = Instant::now();
        if now >= deadline {
            if timed_out {
                break; // Teardown grace period over; stop waiting for stragglers.
            }
            timed_out = true;
            // SAFETY: our unreaped child (still registered).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            deadline = now + Duration::from_secs(2);
            continue;
        }
        let mut pfds: Vec<libc::pollfd> = Vec::with_capacity(3);
        let mut idx = Vec::with_capacity(3);
        for (i, f) in open.iter().enumerate() {
            if let Some(f) = f {
                pfds.push(libc::pollfd {
                    fd: f.0,
                    events: libc::POLLIN,
                    revents: 0,
                });
                idx.push(i);
            }
        }
        let wait_ms = (deadline - now).as_millis().clamp(1, c_int::MAX as u128) as c_int;
        // SAFETY: valid array of pollfd.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, wait_ms) };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return Err(SandboxError::Io {
                what: "poll on the sandbox's output pipes",
                source: io::Error::last_os_error(),
            });
        }
        for (p, &i) in pfds.iter().zip(&idx) {
            if p.revents == 0 {
                continue;
            }
            let fd = open[i].as_ref().map(|f| f.0).unwrap_or(-1);
            // SAFETY: reading into our buffer from a descriptor we own.
            let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast::<c_void>(), buf.len()) };
            if r < 0 {
                if errno() == libc::EINTR || errno() == libc::EAGAIN {
                    continue;
                }
                open[i] = None;
                continue;
            }
            if r == 0 {
                open[i] = None;
                continue;
            }
            let data = &buf[..r as usize];
            let sink = match i {
                0 => &mut stdout,
                1 => &mut stderr,
                _ => &mut report,
            };
            let cap = if i == 2 { 4096 } else { OUTPUT_CAP };
            let room = cap.saturating_sub(sink.len());
            sink.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    if timed_out {
        // SAFETY: our unreaped child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let init_status = guard.reap();
    let duration = start.elapsed();
    if interrupted.load(Ordering::SeqCst) {
        return Err(SandboxError::Interrupted);
    }

    let mut status = None;
    for rec in report.chunks_exact(16) {
        let w = |i: usize| i32::from_ne_bytes(rec[i * 4..i * 4 + 4].try_into().unwrap());
        let (kind, index, err, st) = (w(0), w(1), w(2), w(3));
        let source = io::Error::from_raw_os_error(err);
        match kind {
            REPORT_SETUP => {
                let Some(step) = plan.steps.get(index as usize) else {
                    return Err(SandboxError::InitDied {
                        status: init_status,
                    });
                };
                if step.userns && matches!(err, libc::EPERM | libc::EACCES) {
                    return Err(SandboxError::UserNamespacesUnavailable {
                        detail: format!("could not {}: {source}", step.what),
                    });
                }
                return Err(SandboxError::Setup {
                    step: step.what.clone(),
                    source,
                    hint: step.hint,
                });
            }
            REPORT_CLONE => {
                return Err(SandboxError::Setup {
                    step: "fork the action inside the sandbox".into(),
                    source,
                    hint: "check the process limit (ulimit -u)",
                });
            }
            REPORT_CONFINE => {
                return Err(SandboxError::Setup {
                    step: format!(
                        "confine the action: {}",
                        CONFINE_STAGES
                            .get(index as usize)
                            .copied()
                            .unwrap_or("unknown stage")
                    ),
                    source,
                    hint: "the native sandbox needs Linux 5.4 or later with seccomp \
                           (CONFIG_SECCOMP_FILTER); inside a container, allow prctl and \
                           seccomp in its seccomp profile",
                });
            }
            REPORT_EXEC => {
                return Err(SandboxError::Exec {
                    program: plan.program.clone(),
                    path: plan.search_path.clone(),
                    source,
                });
            }
            REPORT_CWD => {
                return Err(SandboxError::Cwd {
                    cwd: plan.cwd_path.clone(),
                    source,
                });
            }
            REPORT_STATUS => status = Some(st),
            _ => {}
        }
    }
    let (exit_code, signal) = match status {
        Some(st) if libc::WIFEXITED(st) => (Some(libc::WEXITSTATUS(st)), None),
        Some(st) if libc::WIFSIGNALED(st) => (None, Some(libc::WTERMSIG(st))),
        Some(_) => (None, None),
        None if timed_out => (None, Some(libc::SIGKILL)),
        None => {
            return Err(SandboxError::InitDied {
                status: init_status,
            });
        }
    };
    Ok(NativeOutcome {
        exit_code,
        signal,
        timed_out: timed_out && status.is_none(),
        stdout,
        stderr,
        duration,
    })
}

// ---------------------------------------------------------------------------------------
// Child side. Everything below runs between `clone` and `execve`/`_exit`: raw syscalls on
// memory prepared by `Plan::build` only — no allocation, no locks, no panics.

struct ChildFds {
    out: c_int,
    err: c_int,
    report: c_int,
}

unsafe fn report(fd: c_int, kind: i32, index: i32, err: i32, status: i32) {
    let mut rec = [0u8; 16];
    rec[0..4].copy_from_slice(&kind.to_ne_bytes());
    rec[4..8].copy_from_slice(&index.to_ne_bytes());
    rec[8..12].copy_from_slice(&err.to_ne_bytes());
    rec[12..16].copy_from_slice(&status.to_ne_bytes());
    // SAFETY: writing 16 bytes from a stack buffer; atomic on a pipe (< PIPE_BUF).
    unsafe { libc::write(fd, rec.as_ptr().cast::<c_void>(), rec.len()) };
}

/// Closes every descriptor except those in `keep` (sorted ascending).
unsafe fn close_all_except(keep: &[c_int; 3], fd_limit: c_int) {
    let mut lo: c_int = 0;
    for &k in keep.iter().chain(std::iter::once(&c_int::MAX)) {
        if k > lo {
            let hi = if k == c_int::MAX {
                u32::MAX
            } else {
                (k - 1) as u32
            };
            // SAFETY: raw close_range on our own descriptor table.
            let r = unsafe { libc::syscall(libc::SYS_close_range, lo as u32, hi, 0u32) };
            if r != 0 {
                let top = if k == c_int::MAX { fd_limit } else { k };
                for fd in lo..top {
                    // SAFETY: closing descriptors of this (single-threaded) process.
                    unsafe { libc::close(fd) };
                }
            }
        }
        lo = k.saturating_add(1);
    }
}

unsafe fn run_op(op: &Op) -> Result<(), c_int> {
    let null = std::ptr::null::<c_char>();
    let check = |r: c_int| if r == 0 { Ok(()) } else { Err(errno()) };
    // SAFETY: (whole function) thin syscall wrappers on NUL-terminated strings prepared
    // by `Plan::build`.
    unsafe {
        match op {
            Op::WriteFile { path, data } => {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(errno());
                }
                let n = libc::write(fd, data.as_ptr().cast::<c_void>(), data.len());
                let e = errno();
                libc::close(fd);
                if n != data.len() as isize {
                    return Err(if n < 0 { e } else { libc::EIO });
                }
                Ok(())
            }
            Op::MakeMountsPrivate => check(libc::mount(
                null,
                c"/".as_ptr(),
                null,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )),
            Op::SetHostname { name } => check(libc::sethostname(name.as_ptr().cast(), name.len())),
            Op::MountTmpfs { dst, data, flags } => check(libc::mount(
                c"tmpfs".as_ptr(),
                dst.as_ptr(),
                c"tmpfs".as_ptr(),
                *flags,
                data.as_ptr().cast(),
            )),
            Op::Mkdir { path } => {
                if libc::mkdir(path.as_ptr(), 0o755) == 0 || errno() == libc::EEXIST {
                    Ok(())
                } else {
                    Err(errno())
                }
            }
            Op::Touch { path } => {
                if libc::mknod(path.as_ptr(), libc::S_IFREG | 0o644, 0) == 0
                    || errno() == libc::EEXIST
                {
                    Ok(())
                } else {
                    Err(errno())
                }
            }
            Op::Symlink { target, link } => check(libc::symlink(target.as_ptr(), link.as_ptr())),
            Op::Bind { src, dst } => check(libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                null,
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            )),
            Op::SetAttr {
                dst,
                set,
                legacy_flags,
            } => {
                let attr = MountAttr {
                    attr_set: *set,
                    attr_clr: 0,
                    propagation: 0,
                    userns_fd: 0,
                };
                let r = libc::syscall(
                    libc::SYS_mount_setattr,
                    libc::AT_FDCWD,
                    dst.as_ptr(),
                    AT_RECURSIVE as c_ulong,
                    &attr as *const MountAttr,
                    std::mem::size_of::<MountAttr>(),
                );
                if r == 0 {
                    return Ok(());
                }
                if errno() != libc::ENOSYS {
                    return Err(errno());
                }
                check(libc::mount(
                    null,
                    dst.as_ptr(),
                    null,
                    libc::MS_REMOUNT | libc::MS_BIND | *legacy_flags,
                    std::ptr::null(),
                ))
            }
            // Read-only: when wbuild runs as root, the action's uid is the host's root, and
            // write permission on /proc/sys and /proc/sysrq-trigger is only that uid's.
            Op::MountProc { dst } => check(libc::mount(
                c"proc".as_ptr(),
                dst.as_ptr(),
                c"proc".as_ptr(),
                libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            )),
            Op::PivotRoot { new_root } => {
                check(libc::chdir(new_root.as_ptr()))?;
                if libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0 {
                    return Err(errno());
                }
                check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
                check(libc::chdir(c"/".as_ptr()))
            }
            Op::UnshareCgroup => check(libc::unshare(libc::CLONE_NEWCGROUP)),
            Op::RemountRootReadOnly => check(libc::mount(
                null,
                c"/".as_ptr(),
                null,
                libc::MS_REMOUNT
                    | libc::MS_BIND
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV,
                std::ptr::null(),
            )),
        }
    }
}

/// Body of the sandbox's init (pid 1 of the new pid namespace).
unsafe fn init_main(plan: &Plan, fds: &ChildFds) -> ! {
    // SAFETY: (whole function) async-signal-safe syscalls only, on prepared memory.
    unsafe {
        let mut keep = [fds.out, fds.err, fds.report];
        keep.sort_unstable();
        close_all_except(&keep, plan.fd_limit);
        // Leave the caller's session: terminal signals (Ctrl-C) go through `interrupt`.
        libc::setsid();
        for (i, step) in plan.steps.iter().enumerate() {
            if let Err(e) = run_op(&step.op) {
                report(fds.report, REPORT_SETUP, i as i32, e, 0);
                libc::_exit(1);
            }
        }
        // Init keeps its capabilities (it is never exec'd); non-dumpable, the action cannot
        // reach its memory, descriptors or root through /proc/1.
        libc::prctl(
            libc::PR_SET_DUMPABLE,
            0 as c_ulong,
            0 as c_ulong,
            0 as c_ulong,
            0 as c_ulong,
        );
        // Fork the action (raw clone: glibc's fork would run atfork handlers and take
        // locks that another thread of the original process may have held).
        let child = libc::syscall(
            libc::SYS_clone,
            libc::SIGCHLD as c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        );
        if child < 0 {
            report(fds.report, REPORT_CLONE, 0, errno(), 0);
            libc::_exit(1);
        }
        if child == 0 {
            action_main(plan, fds);
        }
        let child = child as libc::pid_t;
        libc::close(fds.out);
        libc::close(fds.err);
        // Reap everything; when the action itself exits, report and exit, which makes the
        // kernel kill whatever it left running in the namespace.
        loop {
            let mut st: c_int = 0;
            let r = libc::waitpid(-1, &mut st, libc::__WALL);
            if r == child {
                report(fds.report, REPORT_STATUS, 0, 0, st);
                libc::_exit(0);
            }
            if r < 0 && errno() == libc::ECHILD {
                libc::_exit(1);
            }
        }
    }
}

/// Body of the action process (child of init), up to `execve`.
unsafe fn action_main(plan: &Plan, fds: &ChildFds) -> ! {
    // SAFETY: (whole function) async-signal-safe syscalls only, on prepared memory.
    unsafe {
        // Default signal dispositions (ignored ones survive execve; Rust ignores SIGPIPE)
        // and an empty signal mask.
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = libc::SIG_DFL;
        for sig in 1..65 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());

        let null_fd = libc::open(plan.dev_null.as_ptr(), libc::O_RDONLY);
        if null_fd > 0 {
            libc::dup2(null_fd, 0);
            libc::close(null_fd);
        }
        libc::dup2(fds.out, 1);
        libc::dup2(fds.err, 2);
        libc::umask(0o022);
        if libc::chdir(plan.cwd.as_ptr()) != 0 {
            report(fds.report, REPORT_CWD, 0, errno(), 0);
            libc::_exit(127);
        }
        if plan.harden
            && let Err((stage, e)) = confine(plan)
        {
            report(fds.report, REPORT_CONFINE, stage, e, 0);
            libc::_exit(127);
        }
        if plan.probe {
            libc::_exit(0);
        }
        // Everything but stdio is closed by execve (the report pipe too, so a successful
        // exec is signalled by nothing).
        if libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            CLOSE_RANGE_CLOEXEC as u32,
        ) != 0
        {
            for fd in 3..plan.fd_limit {
                if fd != fds.report {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
        }
        let mut err = libc::ENOENT;
        let mut saw_eacces = false;
        for c in &plan.candidates {
            libc::execve(c.as_ptr(), plan.argv_ptrs.as_ptr(), plan.envp_ptrs.as_ptr());
            match errno() {
                libc::EACCES => saw_eacces = true,
                libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::ENAMETOOLONG => {}
                e => {
                    err = e;
                    break;
                }
            }
        }
        if saw_eacces && err == libc::ENOENT {
            err = libc::EACCES;
        }
        report(fds.report, REPORT_EXEC, 0, err, 0);
        libc::_exit(127);
    }
}

/// What [`confine`] was doing, by the stage number it reports.
const CONFINE_STAGES: [&str; 7] = [
    "set RLIMIT_NPROC",
    "lock the securebits (PR_SET_SECUREBITS)",
    "drop the bounding set (PR_CAPBSET_DROP)",
    "clear the ambient capabilities",
    "drop all capabilities (capset)",
    "set PR_SET_NO_NEW_PRIVS",
    "install the seccomp filter",
];

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: c_int,
}

#[repr(C)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Takes every privilege from the action process, just before `execve`: the process limit,
/// no capabilities in any set (the bounding set too, so executing a file as uid 0 or a
/// setuid/file-capability binary grants none), locked securebits, no_new_privs, and the
/// seccomp filters. Raw syscalls on prepared data only. On failure: (stage, errno).
unsafe fn confine(plan: &Plan) -> Result<(), (i32, c_int)> {
    let z = 0 as c_ulong;
    // SAFETY: (whole function) plain syscalls with valid pointers to stack data or to the
    // filters, which live for the whole process.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_NPROC, &plan.nproc) != 0 {
            return Err((0, errno()));
        }
        let bits = libc::SECBIT_NOROOT
            | libc::SECBIT_NOROOT_LOCKED
            | libc::SECBIT_NO_SETUID_FIXUP
            | libc::SECBIT_NO_SETUID_FIXUP_LOCKED
            | libc::SECBIT_KEEP_CAPS_LOCKED
            | libc::SECBIT_NO_CAP_AMBIENT_RAISE
            | libc::SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
        if libc::prctl(libc::PR_SET_SECUREBITS, bits as c_ulong, z, z, z) != 0 {
            return Err((1, errno()));
        }
        // Every capability the kernel knows (EINVAL past the last one).
        for cap in 0..64 as c_ulong {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, z, z, z) != 0 {
                if errno() == libc::EINVAL {
                    break;
                }
                return Err((2, errno()));
            }
        }
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as c_ulong,
            z,
            z,
            z,
        ) != 0
            && errno() != libc::EINVAL
        {
            return Err((3, errno()));
        }
        let header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data: [CapData; 2] = std::mem::zeroed();
        if libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) != 0 {
            return Err((4, errno()));
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as c_ulong, z, z, z) != 0 {
            return Err((5, errno()));
        }
        if !plan.filter.is_empty() {
            let prog = libc::sock_fprog {
                len: plan.filter.len() as libc::c_ushort,
                filter: plan.filter.as_ptr().cast_mut(),
            };
            if libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as c_ulong,
                &prog as *const libc::sock_fprog,
                z,
                z,
            ) != 0
            {
                return Err((6, errno()));
            }
        }
    }
    Ok(())
}
