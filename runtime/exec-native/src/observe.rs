//! Exact observation of what a native action touches: seccomp user notification.
//!
//! With [`NativeRequest::observe`], the action installs a second seccomp filter (before the
//! main one, which then forbids any further listener) under which every system call that
//! names a path or lists a directory ([`CALLS`]) stops until the host answers. The action
//! sends the filter's listener descriptor to the host over a socket made before the clone;
//! the host's run loop (`parent.rs`) hands it to a thread of its own which, for each call:
//! reads the path from the calling thread's memory (`/proc/<tid>/mem`), makes it absolute
//! (the thread's working directory or the directory descriptor, from `/proc/<tid>/`), looks
//! the path up in the sandbox's root *before* the call runs (`openat2` with
//! `RESOLVE_IN_ROOT` under `/proc/<tid>/root`: does it exist, is it a directory), records
//! the access and lets the call continue (`SECCOMP_USER_NOTIF_FLAG_CONTINUE`). The kernel
//! then runs the call itself: the observer never changes what the action sees.
//!
//! Static binaries are observed like any other (this is the kernel's filter, not a
//! preloaded library). What observation cannot see, and why it does not matter or is
//! refused:
//! - `openat2` and `clone3` fail with `ENOSYS` (the main filter), so libc uses `openat`;
//!   `io_uring`, `open_by_handle_at` and `name_to_handle_at` fail with `EPERM`.
//! - A filter of the action's own with a listener (which could answer calls before ours
//!   sees them) cannot be installed (`EPERM`).
//! - A multi-threaded action can change a path's bytes between the host's read and the
//!   kernel's (the user-notification TOCTOU). The sandbox still shows only declared inputs,
//!   so such an action can at worst hide which declared inputs it read. The same holds for
//!   the working directory and memory descriptor kept for the thread that called last: an
//!   action that makes tens of thousands of processes without one stopped call, so that a
//!   new one gets that thread's id, could have its next path read against the old ones.
//! - `fstat`-like calls on descriptors (`newfstatat`/`statx` with `AT_EMPTY_PATH`) are not
//!   stopped: the path they name is the descriptor's, opened (and recorded) before.

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, c_int, c_void};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::{AccessKind, Observation};

/// How many distinct accesses one run may record; past it the observation is marked
/// truncated (and the caller keeps the action's full key).
pub const MAX_ACCESSES: usize = 100_000;
/// Longest path read from an action's memory (`PATH_MAX`).
const PATH_MAX: usize = 4096;

/// Host directories whose content is the same for every sandbox of this process that mounts
/// them read-only: the host's system directories ([`crate::host_toolchain_mounts`]) and a
/// pinned toolchain bundle's tree ([`register_system_tree`]).
static SYSTEM_TREES: LazyLock<Mutex<HashSet<PathBuf>>> =
    LazyLock::new(|| Mutex::new(HashSet::new()));

/// Marks `host` as a system tree: its lookups, made beneath its mount in one sandbox, are
/// answered from a table shared by every later run of the process (for
/// [`SYSTEM_LOOKUP_LIFETIME`]).
pub fn register_system_tree(host: &Path) {
    SYSTEM_TREES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(host.to_path_buf());
}

pub(crate) fn is_system_tree(host: &Path) -> bool {
    SYSTEM_TREES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(host)
}

/// How long a shared lookup stays: a system tree changed meanwhile (a package upgraded during
/// a long-lived worker's life) is seen again after at most this long. Nothing keyed depends on
/// these lookups (paths outside the workspace never enter a path set); they classify what an
/// action did there (read, probed, missed) for `wbuild explain`.
pub(crate) const SYSTEM_LOOKUP_LIFETIME: Duration = Duration::from_secs(10);

/// Most lookups [`SYSTEM_LOOKUPS`] holds; past it the table starts again empty.
const SYSTEM_LOOKUPS_MAX: usize = 100_000;

/// Lookups of paths beneath system trees, by host tree and relative path (`host\0rel`), each
/// with when it was made, shared by every run of the process: a compile's hundred-odd lookups
/// of the compiler's own files and the system headers are made once, not once per compile.
static SYSTEM_LOOKUPS: LazyLock<RwLock<HashMap<String, (Lookup, Instant)>>> =
    LazyLock::new(|| RwLock::new(HashMap::new()));

fn shared_lookup(key: &str) -> Option<Lookup> {
    let t = SYSTEM_LOOKUPS.read().unwrap_or_else(|e| e.into_inner());
    t.get(key)
        .filter(|(_, at)| at.elapsed() <= SYSTEM_LOOKUP_LIFETIME)
        .map(|(l, _)| *l)
}

fn share_lookup(key: String, l: Lookup) {
    let mut t = SYSTEM_LOOKUPS.write().unwrap_or_else(|e| e.into_inner());
    if t.len() >= SYSTEM_LOOKUPS_MAX {
        t.clear();
    }
    t.insert(key, (l, Instant::now()));
}

/// What a path argument of a call means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Opened; the flags argument says whether for writing.
    Open { flags: u8 },
    /// Created or truncated (`creat`).
    Create,
    /// Metadata or existence (`stat`, `access`, `chdir`).
    Probe,
    /// Content (`execve`, `readlink`).
    Read,
    /// Changed: removed, created, renamed from or to.
    Write,
    /// The directory behind a descriptor is listed (`getdents`).
    List,
}

/// One path (or descriptor) argument: the directory descriptor argument it is relative to
/// (`None`: the working directory), the argument holding it, and its role.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Arg {
    pub(crate) dirfd: Option<u8>,
    pub(crate) path: u8,
    pub(crate) role: Role,
}

/// One observed system call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Call {
    pub(crate) nr: i64,
    /// The flags argument that, with `AT_EMPTY_PATH`, makes the call name a descriptor
    /// instead of a path (not stopped by the filter).
    pub(crate) unless_empty_path: Option<u32>,
    pub(crate) args: &'static [Arg],
}

const fn at(dirfd: u8, path: u8, role: Role) -> Arg {
    Arg {
        dirfd: Some(dirfd),
        path,
        role,
    }
}

const fn cwd(path: u8, role: Role) -> Arg {
    Arg {
        dirfd: None,
        path,
        role,
    }
}

const fn call(nr: i64, args: &'static [Arg]) -> Call {
    Call {
        nr,
        unless_empty_path: None,
        args,
    }
}

/// The calls of every architecture (the `*at` family).
const COMMON: &[Call] = &[
    call(libc::SYS_openat, &[at(0, 1, Role::Open { flags: 2 })]),
    Call {
        nr: libc::SYS_newfstatat,
        unless_empty_path: Some(3),
        args: &[at(0, 1, Role::Probe)],
    },
    Call {
        nr: libc::SYS_statx,
        unless_empty_path: Some(2),
        args: &[at(0, 1, Role::Probe)],
    },
    call(libc::SYS_faccessat, &[at(0, 1, Role::Probe)]),
    call(libc::SYS_faccessat2, &[at(0, 1, Role::Probe)]),
    call(libc::SYS_readlinkat, &[at(0, 1, Role::Read)]),
    call(libc::SYS_execve, &[cwd(0, Role::Read)]),
    call(libc::SYS_execveat, &[at(0, 1, Role::Read)]),
    call(libc::SYS_chdir, &[cwd(0, Role::Probe)]),
    // No path: stopped only so the observer forgets the working directories it knows.
    call(libc::SYS_fchdir, &[]),
    call(
        libc::SYS_renameat,
        &[at(0, 1, Role::Write), at(2, 3, Role::Write)],
    ),
    call(
        libc::SYS_renameat2,
        &[at(0, 1, Role::Write), at(2, 3, Role::Write)],
    ),
    call(libc::SYS_unlinkat, &[at(0, 1, Role::Write)]),
    call(libc::SYS_mkdirat, &[at(0, 1, Role::Write)]),
    call(libc::SYS_mknodat, &[at(0, 1, Role::Write)]),
    call(
        libc::SYS_linkat,
        &[at(0, 1, Role::Read), at(2, 3, Role::Write)],
    ),
    call(libc::SYS_symlinkat, &[at(1, 2, Role::Write)]),
    call(libc::SYS_truncate, &[cwd(0, Role::Write)]),
    call(
        libc::SYS_getdents64,
        &[Arg {
            dirfd: None,
            path: 0,
            role: Role::List,
        }],
    ),
];

/// The older calls that only some architectures have.
#[cfg(target_arch = "x86_64")]
const LEGACY: &[Call] = &[
    call(libc::SYS_open, &[cwd(0, Role::Open { flags: 1 })]),
    call(libc::SYS_creat, &[cwd(0, Role::Create)]),
    call(libc::SYS_stat, &[cwd(0, Role::Probe)]),
    call(libc::SYS_lstat, &[cwd(0, Role::Probe)]),
    call(libc::SYS_access, &[cwd(0, Role::Probe)]),
    call(libc::SYS_readlink, &[cwd(0, Role::Read)]),
    call(
        libc::SYS_rename,
        &[cwd(0, Role::Write), cwd(1, Role::Write)],
    ),
    call(libc::SYS_unlink, &[cwd(0, Role::Write)]),
    call(libc::SYS_rmdir, &[cwd(0, Role::Write)]),
    call(libc::SYS_mkdir, &[cwd(0, Role::Write)]),
    call(libc::SYS_mknod, &[cwd(0, Role::Write)]),
    call(libc::SYS_link, &[cwd(0, Role::Read), cwd(1, Role::Write)]),
    call(libc::SYS_symlink, &[cwd(1, Role::Write)]),
    call(
        libc::SYS_getdents,
        &[Arg {
            dirfd: None,
            path: 0,
            role: Role::List,
        }],
    ),
];
#[cfg(not(target_arch = "x86_64"))]
const LEGACY: &[Call] = &[];

/// Every call the observing filter stops.
pub(crate) fn calls() -> impl Iterator<Item = &'static Call> {
    COMMON.iter().chain(LEGACY)
}

fn find(nr: i64) -> Option<&'static Call> {
    calls().find(|c| c.nr == nr)
}

/// The host side of one observed run: the listener and what it recorded.
pub(crate) struct Observer {
    listener: c_int,
    /// `/proc/<tid>/root` of the first thread that asked (every thread of a sandbox shares
    /// its root: `chroot` is forbidden).
    root: Option<c_int>,
    seen: HashSet<(AccessKind, String)>,
    out: Observation,
    path: Vec<u8>,
    /// The sandbox's mount points and scratch directories (`/tmp` too), each with whether
    /// the action may write there.
    roots: Vec<(String, bool)>,
    /// Lookups of paths only read-only mounts hold: they cannot change during the run.
    stable: HashMap<String, Lookup>,
    /// The system trees' mounts (sandbox path, host path), each with a handle on its root
    /// inside the sandbox once one was needed.
    system: Vec<(String, String, Option<c_int>)>,
    /// Whether the listener wakes this thread synchronously (Linux 6.6): then the `RECV`
    /// ioctl blocks until a call stops or the last process using the filter is gone, and no
    /// `poll` comes first.
    blocking: bool,
    /// The working directory of the thread whose call came last, while no `chdir` or
    /// `fchdir` was stopped since it was read (most calls come in runs from one thread).
    last_cwd: Option<(libc::pid_t, String)>,
    /// `/proc/<tid>/mem` of the thread whose call came last, until that thread calls
    /// `execve` (the descriptor holds the address space it was opened on).
    mem: Option<(libc::pid_t, c_int)>,
}

impl Drop for Observer {
    fn drop(&mut self) {
        // SAFETY: closing descriptors this observer owns.
        unsafe {
            libc::close(self.listener);
            if let Some(r) = self.root {
                libc::close(r);
            }
            if let Some((_, m)) = self.mem {
                libc::close(m);
            }
            for fd in self.system.iter().filter_map(|s| s.2) {
                libc::close(fd);
            }
        }
    }
}

impl Observer {
    /// Takes ownership of `listener` (a seccomp user-notification descriptor). `roots`:
    /// the sandbox's mount points and writable directories, each with whether it is
    /// writable. `files`: the read-only mounts of single files (they exist as files for the
    /// whole run: no lookup needed). `system`: the mounts of system trees (sandbox path, host
    /// path), read-only directories, among `roots`.
    pub(crate) fn new(
        listener: c_int,
        roots: Vec<(String, bool)>,
        files: &[String],
        system: &[(String, String)],
    ) -> Observer {
        // Wake the supervisor on the caller's CPU and switch to it at once (Linux 6.6;
        // refused before): most calls are answered in a few microseconds.
        // SAFETY: an ioctl on our descriptor with a plain flag value.
        let sync = unsafe {
            libc::ioctl(
                listener,
                libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS as _,
                1u64, // SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
            )
        } == 0;
        Observer {
            listener,
            root: None,
            seen: HashSet::new(),
            out: Observation::default(),
            path: Vec::with_capacity(PATH_MAX + 1),
            roots,
            stable: files.iter().map(|f| (f.clone(), Lookup::File)).collect(),
            system: system
                .iter()
                .map(|(s, h)| (s.clone(), h.clone(), None))
                .collect(),
            // The kernels with synchronous wake-up also end a blocked `RECV` once no process
            // uses the filter (`recv_wait_event`).
            blocking: sync,
            last_cwd: None,
            mem: None,
        }
    }

    /// Answers stopped calls on the calling thread until no process uses the filter any
    /// more (the listener hangs up), the listener fails, or `stop` is set (checked at least
    /// every 50 ms: the host sets it once it has reaped the sandbox). Polling the listener
    /// alone, on a thread of its own, keeps each answer to a `poll` and two `ioctl`s: the
    /// stopped caller wakes this thread on its own CPU.
    pub(crate) fn watch(mut self, stop: &AtomicBool) -> Observation {
        if self.blocking {
            return self.watch_blocking(stop);
        }
        loop {
            match self.poll_listener(50) {
                None => break,
                Some(0) => {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                }
                Some(r) if r & libc::POLLIN != 0 => {
                    if self.handle_one().is_err() {
                        break;
                    }
                }
                // POLLHUP: no process uses the filter any more.
                Some(_) => break,
            }
        }
        self.finish()
    }

    /// The listener's `revents` after a `poll` of at most `timeout_ms` (0: timed out or
    /// interrupted); `None` if `poll` failed.
    fn poll_listener(&self, timeout_ms: c_int) -> Option<i16> {
        let mut p = libc::pollfd {
            fd: self.listener,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        if n < 0 {
            let interrupted = io::Error::last_os_error().raw_os_error() == Some(libc::EINTR);
            return interrupted.then_some(0);
        }
        Some(if n == 0 { 0 } else { p.revents })
    }

    /// [`Observer::watch`] where `RECV` itself waits: one `ioctl` fewer per call. `RECV`
    /// fails with `ENOENT` once no process uses the filter (the listener then polls as hung
    /// up) or when a stopped caller was interrupted (it polls as not hung up).
    fn watch_blocking(mut self, stop: &AtomicBool) -> Observation {
        loop {
            match self.receive() {
                Ok(Some(req)) => self.answer(req),
                Ok(None) => match self.poll_listener(0) {
                    None => break,
                    Some(r) if r & (libc::POLLHUP | libc::POLLERR) != 0 => break,
                    Some(r) if stop.load(Ordering::Acquire) && r & libc::POLLIN == 0 => break,
                    Some(_) => {}
                },
                Err(_) => break,
            }
        }
        self.finish()
    }

    pub(crate) fn finish(mut self) -> Observation {
        std::mem::take(&mut self.out)
    }

    /// Answers one stopped call (the listener polled readable). `Err` only if the listener
    /// itself failed; a caller that died meanwhile is not an error.
    pub(crate) fn handle_one(&mut self) -> io::Result<()> {
        if let Some(req) = self.receive()? {
            self.answer(req);
        }
        Ok(())
    }

    /// The next stopped call; `None` if there was none after all (interrupted, the caller
    /// died before it was taken, or no process uses the filter any more).
    fn receive(&mut self) -> io::Result<Option<libc::seccomp_notif>> {
        // SAFETY: zeroed plain-data structs (the kernel requires a zeroed request).
        let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: the RECV ioctl writes one `seccomp_notif` into `req`.
        let r = unsafe {
            libc::ioctl(
                self.listener,
                libc::SECCOMP_IOCTL_NOTIF_RECV as _,
                &mut req as *mut libc::seccomp_notif,
            )
        };
        if r != 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EINTR | libc::ENOENT | libc::EAGAIN) => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(req))
    }

    /// Records what the stopped call names and lets it continue.
    fn answer(&mut self, req: libc::seccomp_notif) {
        self.out.notifications += 1;
        let nr = req.data.nr as i64;
        if let Some(call) = find(nr) {
            let pid = req.pid as libc::pid_t;
            for arg in call.args {
                self.record(pid, &req.data.args, arg);
            }
            if nr == libc::SYS_chdir || nr == libc::SYS_fchdir {
                // Once it runs, this thread's working directory (and that of any thread
                // sharing it) is another.
                self.last_cwd = None;
            }
            if nr == libc::SYS_execve || nr == libc::SYS_execveat {
                // Once it runs, the thread has another address space.
                self.forget_mem();
            }
        }
        let resp = libc::seccomp_notif_resp {
            id: req.id,
            val: 0,
            error: 0,
            flags: libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
        };
        // SAFETY: the SEND ioctl reads one `seccomp_notif_resp`. ENOENT: the caller died
        // (or was interrupted by a signal) meanwhile; nothing to answer.
        unsafe {
            libc::ioctl(
                self.listener,
                libc::SECCOMP_IOCTL_NOTIF_SEND as _,
                &resp as *const libc::seccomp_notif_resp,
            )
        };
    }

    fn forget_mem(&mut self) {
        if let Some((_, fd)) = self.mem.take() {
            // SAFETY: closing a descriptor this observer owns.
            unsafe { libc::close(fd) };
        }
    }

    /// Reads the NUL-terminated string at `addr` in thread `pid`'s memory into `self.path`:
    /// through the `/proc/<pid>/mem` descriptor kept for the thread that called last, else
    /// with `process_vm_readv`.
    fn read_path(&mut self, pid: libc::pid_t, addr: u64) -> Option<()> {
        if self.mem.is_some_and(|(p, _)| p != pid) {
            self.forget_mem();
        }
        if self.mem.is_none()
            && let Ok(c) = CString::new(format!("/proc/{pid}/mem"))
        {
            // SAFETY: opening a path we own as a C string.
            let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            if fd >= 0 {
                self.mem = Some((pid, fd));
            }
        }
        if let Some((_, fd)) = self.mem {
            if read_cstr_with(&mut self.path, addr, |buf, at| {
                // SAFETY: reads at most `buf.len()` bytes into our buffer.
                unsafe { libc::pread(fd, buf.as_mut_ptr().cast::<c_void>(), buf.len(), at as i64) }
            })
            .is_some()
            {
                return Some(());
            }
            // The address space it was opened on is gone (or the address is unmapped).
            self.forget_mem();
        }
        read_cstr(pid, addr, &mut self.path)
    }

    /// The working directory of thread `pid`, as the sandbox names it.
    fn cwd_of(&mut self, pid: libc::pid_t) -> Option<String> {
        if let Some((p, cwd)) = &self.last_cwd
            && *p == pid
        {
            return Some(cwd.clone());
        }
        let cwd = cwd_path(pid)?;
        self.last_cwd = Some((pid, cwd.clone()));
        Some(cwd)
    }

    fn push(&mut self, kind: AccessKind, path: String) {
        if self.seen.len() >= MAX_ACCESSES {
            self.out.truncated = true;
            return;
        }
        if self.seen.insert((kind, path.clone())) {
            self.out.accesses.push((kind, path));
        }
    }

    fn record(&mut self, pid: libc::pid_t, args: &[u64; 6], arg: &Arg) {
        let value = args[arg.path as usize];
        if arg.role == Role::List {
            if let Some(p) = fd_path(pid, value as i32) {
                self.push(AccessKind::List, p);
            }
            return;
        }
        if self.read_path(pid, value).is_none() {
            return;
        }
        let raw = std::mem::take(&mut self.path);
        let abs = if raw.first() == Some(&b'/') {
            Some(String::from_utf8_lossy(&raw).into_owned())
        } else {
            let base = match arg.dirfd.map(|i| args[i as usize] as i32) {
                None | Some(libc::AT_FDCWD) => self.cwd_of(pid),
                Some(fd) => fd_path(pid, fd),
            };
            base.map(|b| format!("{b}/{}", String::from_utf8_lossy(&raw)))
        };
        self.path = raw;
        let Some(abs) = abs else { return };
        let kind = match arg.role {
            Role::Create | Role::Write => AccessKind::Write,
            Role::Open { flags } => {
                let flags = args[flags as usize] as i32;
                // O_TMPFILE includes O_DIRECTORY's bit.
                let writes = flags & libc::O_ACCMODE != libc::O_RDONLY
                    || flags & (libc::O_CREAT | libc::O_TRUNC) != 0
                    || flags & libc::O_TMPFILE == libc::O_TMPFILE;
                if writes {
                    AccessKind::Write
                } else {
                    match self.lookup(pid, &abs) {
                        Lookup::Missing => AccessKind::Missing,
                        Lookup::Dir => AccessKind::Stat,
                        Lookup::File if flags & libc::O_PATH != 0 => AccessKind::Stat,
                        Lookup::File => AccessKind::Read,
                    }
                }
            }
            Role::Probe => match self.lookup(pid, &abs) {
                Lookup::Missing => AccessKind::Missing,
                _ => AccessKind::Stat,
            },
            Role::Read => match self.lookup(pid, &abs) {
                Lookup::Missing => AccessKind::Missing,
                Lookup::Dir => AccessKind::Stat,
                Lookup::File => AccessKind::Read,
            },
            Role::List => unreachable!("handled above"),
        };
        self.push(kind, normalised(abs));
    }

    /// The deepest mount point or writable directory `abs` lies under, if any.
    fn deepest_root(&self, abs: &str) -> Option<&(String, bool)> {
        let under = |root: &str| {
            abs.strip_prefix(root)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        self.roots
            .iter()
            .filter(|(r, _)| under(r))
            .max_by_key(|(r, _)| r.len())
    }

    /// Whether `abs` lies on a read-only mount (the deepest mount point or writable
    /// directory above it is read-only, or there is none: the root is read-only).
    fn is_stable(&self, abs: &str) -> bool {
        self.deepest_root(abs).is_none_or(|(_, writable)| !writable)
    }

    /// Whether `abs` exists in the sandbox (resolved inside its root, as the action would),
    /// before the call runs. Paths on read-only mounts are looked up once per run, paths in
    /// system trees once per process (see [`Observer::system_lookup`]).
    fn lookup(&mut self, pid: libc::pid_t, abs: &str) -> Lookup {
        // The sandbox's /proc names its processes from inside its pid namespace (`self` is
        // the caller); the host cannot look there as the action would. Nothing keys it.
        if abs == "/proc" || abs.starts_with("/proc/") {
            return Lookup::File;
        }
        if let Some(l) = self.stable.get(abs) {
            return *l;
        }
        if let Some(l) = self.system_lookup(pid, abs) {
            self.stable.insert(abs.to_owned(), l);
            return l;
        }
        let l = self.look(pid, abs);
        if self.is_stable(abs) {
            self.stable.insert(abs.to_owned(), l);
        }
        l
    }

    /// The lookup of `abs` if it lies in a system tree and resolves there alone: `abs` is
    /// normal, the deepest mount above it is a system tree's, and the path resolves beneath
    /// that mount without crossing into another (`RESOLVE_BENEATH | RESOLVE_NO_XDEV`: no
    /// absolute symlink, no `..` out of it, no mount inside it). Such a lookup depends on the
    /// host tree alone, so it is shared with every run of the process that mounts the same
    /// tree. `None`: not such a path (the caller looks it up in the sandbox's root).
    fn system_lookup(&mut self, pid: libc::pid_t, abs: &str) -> Option<Lookup> {
        if self.system.is_empty() || !is_normal(abs) {
            return None;
        }
        let (root, _) = self.deepest_root(abs)?;
        let i = self.system.iter().position(|(s, _, _)| s == root)?;
        let rel = abs[root.len()..].trim_start_matches('/');
        let key = format!("{}\0{rel}", self.system[i].1);
        if let Some(l) = shared_lookup(&key) {
            self.out.shared_lookups += 1;
            return Some(l);
        }
        let dir = match self.system[i].2 {
            Some(fd) => fd,
            None => {
                let sandbox = self.system[i].0.clone();
                let fd = self
                    .open_in_root(
                        pid,
                        &sandbox,
                        libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                        libc::RESOLVE_IN_ROOT
                            | libc::RESOLVE_NO_SYMLINKS
                            | libc::RESOLVE_NO_MAGICLINKS,
                    )
                    .ok()?;
                self.system[i].2 = Some(fd);
                fd
            }
        };
        let l = open_how(
            dir,
            if rel.is_empty() { "." } else { rel },
            libc::O_PATH | libc::O_CLOEXEC,
            libc::RESOLVE_BENEATH | libc::RESOLVE_NO_XDEV | libc::RESOLVE_NO_MAGICLINKS,
        )
        .map(kind_of)
        .or_else(|e| match e {
            libc::ENOENT | libc::ENOTDIR => Ok(Lookup::Missing),
            e => Err(e),
        })
        .ok()?;
        share_lookup(key, l);
        Some(l)
    }

    /// Opens `abs` inside the sandbox's root (`/proc/<pid>/root`, opened once): a descriptor,
    /// or the error number.
    fn open_in_root(
        &mut self,
        pid: libc::pid_t,
        abs: &str,
        flags: c_int,
        resolve: u64,
    ) -> Result<c_int, c_int> {
        if self.root.is_none() {
            let Ok(p) = CString::new(format!("/proc/{pid}/root")) else {
                return Err(libc::EINVAL);
            };
            // SAFETY: opening a path we own as a C string.
            let fd = unsafe {
                libc::open(
                    p.as_ptr(),
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                return Err(errno());
            }
            self.root = Some(fd);
        }
        let root = self.root.expect("opened above");
        let rel = abs.trim_start_matches('/');
        open_how(root, if rel.is_empty() { "." } else { rel }, flags, resolve)
    }

    fn look(&mut self, pid: libc::pid_t, abs: &str) -> Lookup {
        match self.open_in_root(
            pid,
            abs,
            libc::O_PATH | libc::O_CLOEXEC,
            libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
        ) {
            Ok(fd) => kind_of(fd),
            Err(libc::ENOENT | libc::ENOTDIR) => Lookup::Missing,
            Err(_) => Lookup::File,
        }
    }
}

fn errno() -> c_int {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// `openat2(dir, rel, {flags, resolve})`: the descriptor, or the error number (`EINVAL` for a
/// path holding NUL).
fn open_how(dir: c_int, rel: &str, flags: c_int, resolve: u64) -> Result<c_int, c_int> {
    let Ok(c) = CString::new(rel) else {
        return Err(libc::EINVAL);
    };
    let how = OpenHow {
        flags: flags as u64,
        mode: 0,
        resolve,
    };
    // SAFETY: openat2 with a valid directory descriptor, C string and `open_how`.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    } as c_int;
    if fd < 0 { Err(errno()) } else { Ok(fd) }
}

/// File or directory, from a descriptor just opened (which this closes).
fn kind_of(fd: c_int) -> Lookup {
    // SAFETY: fstat on a descriptor we own, then closing it.
    let dir = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        let ok = libc::fstat(fd, &mut st) == 0;
        libc::close(fd);
        ok && st.st_mode & libc::S_IFMT == libc::S_IFDIR
    };
    if dir { Lookup::Dir } else { Lookup::File }
}

/// `struct open_how` (libc's is non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lookup {
    Missing,
    File,
    Dir,
}

/// Reads the NUL-terminated string at `addr` in `pid`'s memory into `buf` (at most
/// [`PATH_MAX`] bytes), page by page so an unmapped page after the string does not fail it.
fn read_cstr(pid: libc::pid_t, addr: u64, buf: &mut Vec<u8>) -> Option<()> {
    read_cstr_with(buf, addr, |chunk, at| {
        let local = libc::iovec {
            iov_base: chunk.as_mut_ptr().cast::<c_void>(),
            iov_len: chunk.len(),
        };
        let remote = libc::iovec {
            iov_base: at as *mut c_void,
            iov_len: chunk.len(),
        };
        // SAFETY: reads at most `chunk.len()` bytes into our buffer; the remote address is
        // only dereferenced by the kernel, in the other process.
        unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) }
    })
}

/// The first read of a path: most are far shorter, and every byte asked for is zeroed here
/// and copied from the other address space by the kernel.
const FIRST_READ: usize = 256;

/// The string reader behind [`read_cstr`]: `read(chunk, address)` fills `chunk` from the
/// other address space and returns the bytes read (at most one page at a time; the first
/// read at most [`FIRST_READ`] bytes).
fn read_cstr_with(
    buf: &mut Vec<u8>,
    mut addr: u64,
    mut read: impl FnMut(&mut [u8], u64) -> isize,
) -> Option<()> {
    const PAGE: u64 = 4096;
    buf.clear();
    while buf.len() <= PATH_MAX {
        let most = if buf.is_empty() {
            FIRST_READ
        } else {
            PATH_MAX + 1 - buf.len()
        };
        let want = ((PAGE - addr % PAGE) as usize).min(most);
        let start = buf.len();
        buf.resize(start + want, 0);
        let n = read(&mut buf[start..], addr);
        if n <= 0 {
            return None;
        }
        buf.truncate(start + n as usize);
        if let Some(i) = buf[start..].iter().position(|&b| b == 0) {
            buf.truncate(start + i);
            return Some(());
        }
        addr += n as u64;
    }
    None
}

fn proc_link(path: String) -> Option<String> {
    std::fs::read_link(path)
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p.starts_with('/'))
}

/// The working directory of thread `pid`, as the sandbox names it.
fn cwd_path(pid: libc::pid_t) -> Option<String> {
    proc_link(format!("/proc/{pid}/cwd"))
}

/// The path descriptor `fd` of thread `pid` was opened at, as the sandbox names it.
fn fd_path(pid: libc::pid_t, fd: i32) -> Option<String> {
    if fd < 0 {
        return None;
    }
    proc_link(format!("/proc/{pid}/fd/{fd}"))
}

/// Whether `path` (absolute) is already as [`normalise`] makes it: no empty, `.` or `..`
/// component and no trailing slash (`/` alone is normal).
fn is_normal(path: &str) -> bool {
    path == "/"
        || (path.starts_with('/')
            && !path.ends_with('/')
            && path[1..]
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".."))
}

/// `path` (absolute) without `.`, `..` and repeated slashes, without a copy if it has none.
fn normalised(path: String) -> String {
    if is_normal(&path) {
        path
    } else {
        normalise(&path)
    }
}

/// `path` (absolute) without `.`, `..` and repeated slashes. `..` at the root stays there.
pub(crate) fn normalise(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let mut out = String::with_capacity(path.len());
    for p in parts {
        out.push('/');
        out.push_str(p);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_lexically() {
        assert_eq!(normalise("/work/a/../b/./c"), "/work/b/c");
        assert_eq!(normalise("/../../x"), "/x");
        assert_eq!(normalise("//"), "/");
        assert_eq!(normalise("/work//lib/"), "/work/lib");
    }

    #[test]
    fn a_path_is_kept_exactly_when_it_is_normal() {
        for p in [
            "/",
            "//",
            "/a",
            "/a/",
            "/a//b",
            "/a/./b",
            "/a/../b",
            "/.",
            "/..",
            "/a/.",
            "/a/..",
            "/.a/b..",
            "/a/...",
            "/work/lib/x.h",
            "/ a/b ",
        ] {
            assert_eq!(is_normal(p), normalise(p) == p, "{p}");
            assert_eq!(normalised(p.to_owned()), normalise(p), "{p}");
        }
    }

    #[test]
    fn paths_are_read_whole_whatever_their_length_and_place() {
        // A fake address space: a string at `at` of `len` bytes, NUL after it, an unmapped
        // page after the one holding the NUL.
        for (at, len) in [
            (0u64, 0usize),
            (10, 5),
            (4090, 5),
            (4000, 300),
            (100, 255),
            (100, 256),
            (100, 257),
            (8000, 4096),
            (8000, 5000),
        ] {
            let end = at + len as u64;
            let mapped = (end / 4096 + 1) * 4096;
            let byte = |a: u64| if a < end { b'a' + (a % 26) as u8 } else { 0 };
            let mut calls = 0;
            let mut buf = Vec::new();
            let got = read_cstr_with(&mut buf, at, |chunk, addr| {
                calls += 1;
                assert!(
                    addr / 4096 == (addr + chunk.len() as u64 - 1) / 4096,
                    "one page per read"
                );
                if addr >= mapped {
                    return -1;
                }
                for (i, b) in chunk.iter_mut().enumerate() {
                    *b = byte(addr + i as u64);
                }
                chunk.len() as isize
            });
            if len > PATH_MAX {
                assert!(got.is_none(), "{at} {len}");
                continue;
            }
            assert!(got.is_some(), "{at} {len}");
            let want: Vec<u8> = (at..end).map(byte).collect();
            assert_eq!(buf, want, "{at} {len}");
            if len < FIRST_READ && at % 4096 + (FIRST_READ as u64) <= 4096 {
                assert_eq!(calls, 1, "a short path is one read");
            }
        }
    }

    /// A system tree's lookups are shared with later runs only where the tree alone decides
    /// them: a symlink out of it (absolute, or climbing out) or into a mount inside it is
    /// looked up in each run's own sandbox, so a later run that has something there sees it.
    #[test]
    fn system_tree_lookups_are_shared_only_where_the_tree_alone_decides_them() {
        use std::os::unix::fs::symlink;
        let sys = tempfile::tempdir().unwrap();
        let t = sys.path();
        std::fs::write(t.join("f"), "f").unwrap();
        std::fs::create_dir(t.join("d")).unwrap();
        std::fs::create_dir(t.join("out")).unwrap();
        symlink("f", t.join("inner")).unwrap();
        symlink("/work/x", t.join("abs")).unwrap();
        symlink("../../work/x", t.join("esc")).unwrap();
        symlink("out/made", t.join("into")).unwrap();
        register_system_tree(t);
        let ws = tempfile::tempdir().unwrap();
        std::fs::write(ws.path().join("x"), "x").unwrap();
        let out = ws.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let run = |second: bool| -> Observation {
            let mut mounts = crate::host_toolchain_mounts();
            mounts.push(crate::Mount {
                host: t.to_path_buf(),
                sandbox: "/opt/sys".into(),
                writable: false,
            });
            mounts.push(crate::Mount {
                host: out.clone(),
                sandbox: "/opt/sys/out".into(),
                writable: true,
            });
            if second {
                mounts.push(crate::Mount {
                    host: ws.path().join("x"),
                    sandbox: "/work/x".into(),
                    writable: false,
                });
            }
            let req = crate::NativeRequest {
                argv: vec![
                    "sh".into(),
                    "-c".into(),
                    "cat /opt/sys/f /opt/sys/inner >/dev/null && test -d /opt/sys/d && \
                     for p in none abs esc into; do test -e /opt/sys/$p; done; true"
                        .into(),
                ],
                env: Vec::new(),
                mounts,
                scratch: vec!["/work".into()],
                cwd: "/work".into(),
                source_date_epoch: 0,
                timeout: std::time::Duration::from_secs(60),
                observe: true,
            };
            let o = crate::run(&req).unwrap();
            assert_eq!(
                o.exit_code,
                Some(0),
                "{}",
                String::from_utf8_lossy(&o.stderr)
            );
            o.observed.expect("observed")
        };
        let kinds = |obs: &Observation| -> Vec<(String, AccessKind)> {
            ["f", "inner", "d", "none", "abs", "esc", "into"]
                .iter()
                .map(|n| {
                    let p = format!("/opt/sys/{n}");
                    let k = obs
                        .accesses
                        .iter()
                        .find(|(_, a)| *a == p)
                        .map(|(k, _)| *k)
                        .unwrap_or_else(|| panic!("{p} not observed: {:?}", obs.accesses));
                    (n.to_string(), k)
                })
                .collect()
        };
        use AccessKind::*;
        let first = run(false);
        let want = |abs_etc: AccessKind| {
            [
                ("f", Read),
                ("inner", Read),
                ("d", Stat),
                ("none", Missing),
                ("abs", abs_etc),
                ("esc", abs_etc),
                ("into", abs_etc),
            ]
            .map(|(n, k)| (n.to_string(), k))
            .to_vec()
        };
        assert_eq!(kinds(&first), want(Missing));
        let key = |n: &str| format!("{}\0{n}", t.display());
        {
            let table = SYSTEM_LOOKUPS.read().unwrap();
            for (n, l) in [
                ("f", Lookup::File),
                ("inner", Lookup::File),
                ("d", Lookup::Dir),
                ("none", Lookup::Missing),
            ] {
                assert_eq!(table.get(&key(n)).map(|e| e.0), Some(l), "{n}");
            }
            for n in ["abs", "esc", "into"] {
                assert!(
                    table.get(&key(n)).is_none(),
                    "{n} resolves outside the tree"
                );
            }
        }
        // Now there is something where the links outside the tree lead.
        std::fs::write(out.join("made"), "made").unwrap();
        let second = run(true);
        assert_eq!(kinds(&second), want(Stat));
        assert!(
            second.shared_lookups >= 4,
            "the tree's own paths come from the table: {}",
            second.shared_lookups
        );
    }

    #[test]
    fn every_call_is_listed_once() {
        let mut seen = HashSet::new();
        for c in calls() {
            assert!(seen.insert(c.nr), "syscall {} listed twice", c.nr);
            assert!(!c.args.is_empty() || c.nr == libc::SYS_fchdir);
            for a in c.args {
                assert!(a.path < 6 && a.dirfd.is_none_or(|d| d < 6));
            }
        }
    }
}
