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
//! * No network: a network namespace of its own whose loopback is down, so even a connect
//!   to `127.0.0.1` fails. It is new, or (started by the spawner) one the spawner
//!   keeps and no running sandbox has: reused only after the sandbox that had it is gone,
//!   and not one the action has any capability in (see `spawner::Nets`).
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
//! The action makes no user namespace of its own (whose mounts the kernel would lock): with
//! no capabilities, no `unshare`/`setns`/namespace `clone` and no mount system calls, it has
//! no way to reach a mount at all. (An unprivileged spawner's sandboxes are made inside the
//! spawner's own user namespace, which maps nothing but wbuild's ids; see `spawner::Nets`.)
//!
//! # Design
//!
//! Files: `plan.rs` (`Plan::build`: everything prepared before the clone), `parent.rs` (the
//! host side: clone, report pipe, timeout, interruption, reaping, output capture),
//! `child.rs` (init and the action between `clone` and `execve`: async-signal-safe code
//! only), `harden.rs` (the seccomp filter, the pids cgroup, the hidden host directories).
//!
//! The caller (the scheduler) is multi-threaded, so after `fork` only async-signal-safe
//! work is allowed. [`run`] therefore prepares *everything* in the parent first — every
//! path as a `CString`, the argv/envp pointer arrays, the candidate executable paths for
//! the `PATH` lookup, the uid/gid map contents and the ordered list of setup steps — and
//! then calls the raw `clone` syscall (fork semantics, no `CLONE_VM`) with
//! `CLONE_NEWUSER|NEWNS|NEWPID|NEWNET|NEWIPC|NEWUTS` (without `NEWNET` from the spawner when
//! it has entered a network namespace it keeps). The child is pid 1 ("init") of the
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

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod child;
mod harden;
mod observe;
mod parent;
mod plan;
mod spawner;

use child::*;
use parent::*;
use plan::*;

pub use harden::{HIDDEN_HOST_DIRS, PIDS_LIMIT};
pub use observe::{MAX_ACCESSES, register_system_tree};
pub use spawner::start as start_spawner;

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
pub const SANDBOX_VERSION: &str = "wbuild-native/4";

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
    /// with the sandbox. Mounted with [`NativeRequest::mounts`], parents first; one may lie
    /// inside a writable directory mount (then the mount points of what is mounted inside it
    /// are made on its tmpfs, not in the host directory), never inside a read-only one.
    pub scratch: Vec<PathBuf>,
    /// Working directory inside the sandbox, e.g. `/work`.
    pub cwd: PathBuf,
    /// Value of `SOURCE_DATE_EPOCH`.
    pub source_date_epoch: u64,
    /// Wall-clock limit; the whole process tree is killed when it passes.
    pub timeout: Duration,
    /// Record every path the action's processes open, stat, probe, list, execute, rename,
    /// create or remove ([`NativeOutcome::observed`]), through a seccomp filter with user
    /// notification. The action sees exactly what it would see unobserved.
    pub observe: bool,
}

/// What an observed action did with a path.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AccessKind {
    /// Opened an existing file for reading, executed it or read a symlink.
    Read,
    /// Opened for writing, created, truncated, removed, renamed (from or to), linked to.
    Write,
    /// Asked for metadata or existence of an existing path, or opened a directory.
    Stat,
    /// Listed a directory.
    List,
    /// Looked up (opened, stat'ed, executed) a path that did not exist.
    Missing,
}

/// Every access of an observed run, in order, without repeats.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observation {
    /// Kind and absolute path inside the sandbox (`.`/`..` resolved lexically), in the order
    /// of first occurrence.
    pub accesses: Vec<(AccessKind, String)>,
    /// System calls the host answered (repeats included).
    pub notifications: u64,
    /// Lookups of paths in system trees answered from the table earlier runs of the process
    /// filled (see [`register_system_tree`]) instead of in the sandbox.
    pub shared_lookups: u64,
    /// More than [`MAX_ACCESSES`] distinct accesses: the rest were not kept.
    pub truncated: bool,
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
    /// What the action touched, if [`NativeRequest::observe`] was set.
    pub observed: Option<Observation>,
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
        "sandbox mount source {} (for {} inside the sandbox) cannot be used: {error}; \
         create or stage it before running the action, or remove the mount",
        host.display(), sandbox.display()
    )]
    MountSource {
        /// Host path of the mount.
        host: PathBuf,
        /// Where it was to appear inside the sandbox.
        sandbox: PathBuf,
        /// The underlying error.
        error: io::Error,
    },
    /// A step of building the sandbox failed inside the sandbox's init process.
    #[error("sandbox setup failed: could not {step}: {error}. {hint}")]
    Setup {
        /// What was being done, with the paths involved.
        step: String,
        /// The errno reported by the kernel.
        error: io::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// The program could not be executed inside the sandbox.
    #[error(
        "cannot run `{program}` inside the sandbox: {error} (looked in PATH={path}); \
         make sure the toolchain directory that contains it, and the libraries it needs, \
         are mounted"
    )]
    Exec {
        /// `argv[0]` as requested.
        program: String,
        /// The `PATH` searched.
        path: String,
        /// The errno from `execve`.
        error: io::Error,
    },
    /// The working directory does not exist inside the sandbox.
    #[error(
        "cannot change to working directory {} inside the sandbox: {error}; it must be \
         a mounted directory or lie inside one",
        cwd.display()
    )]
    Cwd {
        /// The requested working directory.
        cwd: PathBuf,
        /// The errno from `chdir`.
        error: io::Error,
    },
    /// A host-side system call failed.
    #[error("sandbox host-side {what} failed: {error}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The underlying error.
        error: io::Error,
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

/// The dynamic linker's cache of where the host's libraries are (`ldconfig` rewrites it).
pub const LD_SO_CACHE: &str = "/etc/ld.so.cache";

/// The host's system directories (`/usr`, `/bin`, `/lib`, `/lib64`, `/sbin`, those that exist)
/// as read-only mounts at the same paths: a toolchain made of the host's installed packages.
/// Symlinks such as Debian's `/bin -> usr/bin` are recreated as symlinks in the sandbox.
/// Inside them, [`HIDDEN_HOST_DIRS`] (`/usr/local`, `/usr/share`, ...) are empty: nothing
/// keys their contents.
///
/// The dynamic linker's cache, [`LD_SO_CACHE`], is mounted too (read-only, when it exists).
/// Without it every dynamically linked program of an action (`sh`, `gcc`, `cc1`, `as`, `ld`,
/// ...) searches the library directories for each library it needs: about 30 failed
/// lookups per library, each stopped and answered when the action is observed (a small
/// compile made 330 such calls with the cache hidden, 186 with it). It only says where the
/// libraries under the mounted directories are; the host toolchain's identity records it.
pub fn host_toolchain_mounts() -> Vec<Mount> {
    const HOST: [&str; 6] = ["/usr", "/bin", "/lib", "/lib64", "/sbin", LD_SO_CACHE];
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        for p in HOST {
            register_system_tree(Path::new(p));
        }
    });
    HOST.iter()
        .filter(|p| Path::new(p).symlink_metadata().is_ok())
        .map(|p| Mount {
            host: PathBuf::from(p),
            sandbox: PathBuf::from(p),
            writable: false,
        })
        .collect()
}

/// Removes the empty directories kept for later sandboxes' roots (see `plan::ROOT_POOL`),
/// and lets the sweep of those left by killed processes finish (20 ms at most).
/// A process that ends without running destructors (wbuild's CLI ends with `_exit`) calls
/// this first, or every run would leave its pooled directories in the temporary directory.
/// Sandboxes started afterwards make new ones.
pub fn release_sandbox_roots() {
    let pooled = std::mem::take(&mut *plan::ROOT_POOL.lock().unwrap_or_else(|e| e.into_inner()));
    drop(pooled); // each `TempDir` removes its directory
    // The sweep of directories left by killed processes (started with the first sandbox,
    // usually over in well under a millisecond) is given a moment to end; a temporary
    // directory too large to list in that time is swept on, in part, by later runs.
    plan::await_sweep(std::time::Duration::from_millis(20));
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
        observe: false,
    };
    let plan = Plan::build(&req, true)?;
    let out = execute(&plan, req.timeout)?;
    if out.exit_code == Some(0) {
        Ok(())
    } else {
        Err(SandboxError::Setup {
            step: "run the probe sandbox".into(),
            error: io::Error::other(format!("{out:?}")),
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
        match r.pidfd {
            // A pidfd its run holds while the entry is registered.
            Some(fd) => spawner::kill_pidfd(fd),
            // SAFETY: `r.pid` is our unreaped child (entries are removed before reaping).
            None => unsafe {
                libc::kill(r.pid, libc::SIGKILL);
            },
        }
    }
}

// ---------------------------------------------------------------------------------------
// Registry of running sandboxes (for `interrupt`).

struct Running {
    pid: libc::pid_t,
    /// Init's pidfd when the spawner started it (init is then not our child).
    pidfd: Option<std::ffi::c_int>,
    interrupted: Arc<AtomicBool>,
}

static RUNNING: Mutex<Vec<Running>> = Mutex::new(Vec::new());

fn lock_running() -> std::sync::MutexGuard<'static, Vec<Running>> {
    RUNNING.lock().unwrap_or_else(|e| e.into_inner())
}
