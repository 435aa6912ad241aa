//! The spawner: a small process, forked from wbuild before it grows, that clones each
//! sandbox's init on wbuild's behalf.
//!
//! Why: a sandbox's init is a `clone` of the process that starts it. Cloned from wbuild in
//! the middle of a build, it copies the page tables of tens of MiB of heap, and marks every
//! one of those pages copy-on-write in wbuild too: each page wbuild writes afterwards takes a
//! fault (a copy while init lives). Measured on a clean build of the suite's C graph (992
//! sandboxed actions, wbuild holding 58 MiB of heap): page faults in wbuild were 58 % of its
//! own CPU time, about 3.6 s. The spawner's memory is what wbuild's was at startup, a few
//! MiB, and wbuild's heap is never shared with a sandbox. Where it may, it also keeps the
//! sandboxes' network namespaces, one per running sandbox ([`Nets`]).
//!
//! How: [`start`] forks the spawner while the process is still single-threaded and small
//! (`wbuild build` once its up-to-date check found work to do, `wbuild worker` at startup). For each run, [`parent::execute`] makes the plan as before, encodes the
//! part init needs ([`encode`]: the setup steps, argv, environment, limits; the seccomp
//! filters are rebuilt by the spawner, which is the same program) and sends it with the
//! run's descriptors (output pipes, report pipe, observation socket) and a socket for the
//! answer. The spawner clones init exactly as wbuild would (init runs [`init_main`] on the
//! decoded plan), answers with init's pid and a pidfd (signals go through it: no pid reuse
//! race), and, once init has exited and been reaped, with its wait status. Everything else
//! (the output pipes, observation, the deadline, interruption) stays in wbuild.
//!
//! Ways out: a spawner that does not answer within [`ANSWER_DEADLINE`], or has died, is
//! dropped for the rest of the process and runs clone init directly, as without a spawner.
//! The spawner exits (killing the inits it started) when wbuild's end of its socket closes,
//! whether wbuild exited or was killed. A client that stops sending in the middle of a plan
//! is given up on after [`ANSWER_DEADLINE`].

use std::ffi::{CString, c_int, c_void};
use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::*;

/// How long either side waits for the other's next message before giving up.
pub(crate) const ANSWER_DEADLINE: Duration = Duration::from_secs(10);

const MAGIC: u32 = 0x7762_7370; // "wbsp"

// ---------------------------------------------------------------------------------------
// The plan's encoding

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn cstr(&mut self, c: &CString) {
        self.bytes(c.as_bytes());
    }
    fn cstrs(&mut self, v: &[CString]) {
        self.u32(v.len() as u32);
        for c in v {
            self.cstr(c);
        }
    }
}

struct Reader<'a>(&'a [u8]);

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("bad plan: {what}"))
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> io::Result<&[u8]> {
        if self.0.len() < n {
            return Err(bad("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn bytes(&mut self) -> io::Result<Vec<u8>> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn cstr(&mut self) -> io::Result<CString> {
        CString::new(self.bytes()?).map_err(|_| bad("a NUL inside a string"))
    }
    fn cstrs(&mut self) -> io::Result<Vec<CString>> {
        let n = self.u32()? as usize;
        (0..n).map(|_| self.cstr()).collect()
    }
}

/// What init needs of `plan`, as bytes.
pub(crate) fn encode(plan: &Plan) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(4096));
    w.u32(MAGIC);
    w.u8(plan.probe as u8);
    w.u8(plan.harden as u8);
    w.u8(plan.observer.is_some() as u8);
    w.u32(plan.fd_limit as u32);
    w.u64(plan.nproc.rlim_cur);
    w.u64(plan.nproc.rlim_max);
    w.cstr(&plan.cwd);
    w.cstr(&plan.dev_null);
    w.cstrs(&plan.candidates);
    w.cstrs(&plan._argv);
    w.cstrs(&plan._envp);
    w.u32(plan.steps.len() as u32);
    for s in &plan.steps {
        match &s.op {
            Op::WriteFile { path, data } => {
                w.u8(0);
                w.cstr(path);
                w.bytes(data);
            }
            Op::MakeMountsPrivate => w.u8(1),
            Op::SetHostname { name } => {
                w.u8(2);
                w.bytes(name);
            }
            Op::MountTmpfs { dst, data, flags } => {
                w.u8(3);
                w.cstr(dst);
                w.cstr(data);
                w.u64(*flags);
            }
            Op::Mkdir { path } => {
                w.u8(4);
                w.cstr(path);
            }
            Op::Touch { path } => {
                w.u8(5);
                w.cstr(path);
            }
            Op::Symlink { target, link } => {
                w.u8(6);
                w.cstr(target);
                w.cstr(link);
            }
            Op::Bind { src, dst } => {
                w.u8(7);
                w.cstr(src);
                w.cstr(dst);
            }
            Op::SetAttr {
                dst,
                set,
                legacy_flags,
            } => {
                w.u8(8);
                w.cstr(dst);
                w.u64(*set);
                w.u64(*legacy_flags);
            }
            Op::MountProc { dst } => {
                w.u8(9);
                w.cstr(dst);
            }
            Op::PivotRoot { new_root } => {
                w.u8(10);
                w.cstr(new_root);
            }
            Op::RemountRootReadOnly => w.u8(11),
            Op::UnshareCgroup => w.u8(12),
        }
    }
    w.0
}

/// The plan init runs, from [`encode`]'s bytes; the seccomp filters are this process's own.
/// What only the host side uses (step descriptions, the roots the observer checks, the
/// pooled root directory and cgroup, which wbuild holds) is left empty.
pub(crate) fn decode(bytes: &[u8]) -> io::Result<Plan> {
    let mut r = Reader(bytes);
    if r.u32()? != MAGIC {
        return Err(bad("not a plan"));
    }
    let probe = r.u8()? != 0;
    let harden = r.u8()? != 0;
    let observe = r.u8()? != 0;
    let fd_limit = r.u32()? as c_int;
    let nproc = libc::rlimit {
        rlim_cur: r.u64()?,
        rlim_max: r.u64()?,
    };
    let cwd = r.cstr()?;
    let dev_null = r.cstr()?;
    let candidates = r.cstrs()?;
    let argv = r.cstrs()?;
    let envp = r.cstrs()?;
    let n = r.u32()? as usize;
    let mut steps = Vec::with_capacity(n.min(1 << 16));
    for _ in 0..n {
        let op = match r.u8()? {
            0 => Op::WriteFile {
                path: r.cstr()?,
                data: r.bytes()?,
            },
            1 => Op::MakeMountsPrivate,
            2 => Op::SetHostname { name: r.bytes()? },
            3 => Op::MountTmpfs {
                dst: r.cstr()?,
                data: r.cstr()?,
                flags: r.u64()? as _,
            },
            4 => Op::Mkdir { path: r.cstr()? },
            5 => Op::Touch { path: r.cstr()? },
            6 => Op::Symlink {
                target: r.cstr()?,
                link: r.cstr()?,
            },
            7 => Op::Bind {
                src: r.cstr()?,
                dst: r.cstr()?,
            },
            8 => Op::SetAttr {
                dst: r.cstr()?,
                set: r.u64()?,
                legacy_flags: r.u64()? as _,
            },
            9 => Op::MountProc { dst: r.cstr()? },
            10 => Op::PivotRoot {
                new_root: r.cstr()?,
            },
            11 => Op::RemountRootReadOnly,
            12 => Op::UnshareCgroup,
            _ => return Err(bad("unknown step")),
        };
        steps.push(Step {
            op,
            what: String::new(),
            hint: "",
            userns: false,
        });
    }
    if !r.0.is_empty() {
        return Err(bad("trailing bytes"));
    }
    let filter = if harden {
        harden::filter().map_err(|e| io::Error::other(e.to_string()))?
    } else {
        &[]
    };
    let observer = if observe {
        Some(harden::observer_filter().map_err(|e| io::Error::other(e.to_string()))?)
    } else {
        None
    };
    let argv_ptrs = c_ptrs(&argv);
    let envp_ptrs = c_ptrs(&envp);
    Ok(Plan {
        steps,
        cwd,
        cwd_path: PathBuf::new(),
        program: String::new(),
        search_path: String::new(),
        candidates,
        _argv: argv,
        _envp: envp,
        argv_ptrs,
        envp_ptrs,
        dev_null,
        probe,
        fd_limit,
        harden,
        nproc,
        filter,
        observer,
        roots: Vec::new(),
        files: Vec::new(),
        system: Vec::new(),
        _cgroup: None,
        _root_dir: PooledRoot::none(),
    })
}

// ---------------------------------------------------------------------------------------
// Descriptors over Unix sockets

/// Sends `data` with `fds` attached (`SCM_RIGHTS`).
fn send_fds(sock: c_int, data: &[u8], fds: &[c_int]) -> io::Result<()> {
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    let space = unsafe { libc::CMSG_SPACE((fds.len() * 4) as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast::<c_void>(),
        iov_len: data.len(),
    };
    // SAFETY: a zeroed msghdr pointing at our buffers; the control message is laid out with
    // the libc macros inside `control`, which is large enough for `fds`.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            msg.msg_control = control.as_mut_ptr().cast::<c_void>();
            msg.msg_controllen = control.len() as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN((fds.len() * 4) as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                fds.len() * 4,
            );
        }
        loop {
            let n = libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL);
            if n >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// Receives one message into `buf` and up to `max_fds` descriptors (close-on-exec). Returns
/// the byte count (0: end of file) and the descriptors, owned by the caller.
pub(crate) fn recv_fds(
    sock: c_int,
    buf: &mut [u8],
    max_fds: usize,
) -> io::Result<(usize, Vec<Fd>)> {
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    let space = unsafe { libc::CMSG_SPACE((max_fds * 4) as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast::<c_void>(),
        iov_len: buf.len(),
    };
    // SAFETY: a zeroed msghdr pointing at our buffers; control messages are walked with the
    // libc macros within `msg_controllen`.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast::<c_void>();
        msg.msg_controllen = control.len() as _;
        let n = loop {
            let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        let mut fds = Vec::new();
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let k = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                let data = libc::CMSG_DATA(cmsg).cast::<c_int>();
                for i in 0..k {
                    fds.push(Fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(bad("too many descriptors"));
        }
        Ok((n, fds))
    }
}

/// Waits until `fd` is readable (or hung up), at most until `deadline`.
fn wait_readable(fd: c_int, deadline: Instant) -> io::Result<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the sandbox spawner did not answer in time",
            ));
        }
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, c_int::MAX as u128) as c_int;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        if n > 0 {
            return Ok(());
        }
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

fn socket_pair(kind: c_int) -> io::Result<(Fd, Fd)> {
    parent::socket_pair(kind).map_err(|e| io::Error::other(e.to_string()))
}

fn write_all(fd: c_int, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: writing from our buffer to a descriptor we hold.
        let n = unsafe {
            libc::send(
                fd,
                data.as_ptr().cast::<c_void>(),
                data.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes, each wait bounded by `deadline`.
fn read_exact(fd: c_int, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        wait_readable(fd, deadline)?;
        // SAFETY: reading into our buffer from a descriptor we hold.
        let n = unsafe {
            libc::read(
                fd,
                buf[got..].as_mut_ptr().cast::<c_void>(),
                buf.len() - got,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the other side closed",
            ));
        }
        got += n as usize;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// wbuild's side

/// wbuild's end of the spawner's request socket; `None` once it failed (or never started).
static CLIENT: Mutex<Option<Fd>> = Mutex::new(None);

/// Forks the spawner, once per process; later runs in this process then have their
/// sandboxes started by it. Without it, or if it fails, runs clone their sandboxes directly.
/// Call it before the process grows; it refuses (an error, nothing started) once the process
/// has a second thread, since the forked spawner allocates.
pub fn start() -> io::Result<()> {
    let mut client = CLIENT.lock().unwrap_or_else(|e| e.into_inner());
    if client.is_some() {
        return Ok(());
    }
    // A thread just joined can still be listed for a moment (its tid is cleared, and its
    // joiner woken, before the kernel lets it go): asked a few times, 0.5 ms at most.
    let mut threads = std::fs::read_dir("/proc/self/task")?.count();
    for _ in 0..5 {
        if threads == 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_micros(100));
        threads = std::fs::read_dir("/proc/self/task")?.count();
    }
    if threads != 1 {
        return Err(io::Error::other(format!(
            "the process has {threads} threads; the spawner is forked from a single-threaded one"
        )));
    }
    let (ours, theirs) = socket_pair(libc::SOCK_SEQPACKET)?;
    // SAFETY: fork in a single-threaded process (the caller's promise); the child only runs
    // `serve`, which allocates freely (no lock can be held by another thread), and exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        drop(ours);
        // Terminal signals are wbuild's to handle (it stops the sandboxes through their
        // pidfds); the spawner ends when wbuild's socket closes.
        // Nor does it hold wbuild's standard streams open (a caller reading wbuild's output
        // to its end would wait for the spawner too).
        // SAFETY: setting dispositions and descriptors of this (single-threaded) process.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            libc::signal(libc::SIGQUIT, libc::SIG_IGN);
            libc::signal(libc::SIGTSTP, libc::SIG_IGN);
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            if null >= 0 {
                for fd in 0..3 {
                    libc::dup2(null, fd);
                }
                if null > 2 {
                    libc::close(null);
                }
            }
        }
        let code = match serve(theirs.0) {
            Ok(()) => 0,
            Err(_) => 1,
        };
        // SAFETY: leaving the forked child without running the parent's exit handlers.
        unsafe { libc::_exit(code) };
    }
    drop(theirs);
    *client = Some(ours);
    Ok(())
}

/// Drops the spawner for the rest of the process (it failed): runs clone directly.
fn give_up() {
    CLIENT.lock().unwrap_or_else(|e| e.into_inner()).take();
}

/// A sandbox init started by the spawner: its pid (as seen from here), a pidfd to signal it
/// with, and the socket its wait status arrives on.
pub(crate) struct Spawned {
    pub(crate) pid: libc::pid_t,
    pub(crate) pidfd: Fd,
    answers: Fd,
}

impl Spawned {
    /// SIGKILL to init (through its pidfd: never another process that reused the pid).
    pub(crate) fn kill(&self) {
        kill_pidfd(self.pidfd.0);
    }

    /// Init's wait status, once the spawner has reaped it; `None` if the spawner did not say
    /// by `deadline` (or died).
    pub(crate) fn status(&self, deadline: Instant) -> Option<c_int> {
        let mut b = [0u8; 4];
        read_exact(self.answers.0, &mut b, deadline).ok()?;
        Some(c_int::from_ne_bytes(b))
    }
}

/// Asks the spawner to start init for `plan` with the child's ends of the run's descriptors.
/// `None`: no spawner (not started, or it failed now; it is then dropped for good), and the
/// caller clones init itself.
pub(crate) fn spawn(plan: &Plan, fds: &ChildFds) -> Option<Spawned> {
    let deadline = Instant::now() + ANSWER_DEADLINE;
    let attempt = || -> io::Result<Option<Spawned>> {
        let (ours, theirs) = socket_pair(libc::SOCK_STREAM)?;
        let mut passed = vec![theirs.0, fds.out, fds.err, fds.report];
        if fds.notify >= 0 {
            passed.push(fds.notify);
        }
        {
            // One request is one message; the rest of the exchange is on its own socket.
            let guard = CLIENT.lock().unwrap_or_else(|e| e.into_inner());
            let Some(client) = guard.as_ref() else {
                return Ok(None);
            };
            send_fds(client.0, b"r", &passed)?;
        }
        drop(theirs);
        let bytes = encode(plan);
        let mut msg = (bytes.len() as u64).to_le_bytes().to_vec();
        msg.extend_from_slice(&bytes);
        write_all(ours.0, &msg)?;
        wait_readable(ours.0, deadline)?;
        let mut answer = [0u8; 8];
        let (n, mut got) = recv_fds(ours.0, &mut answer, 1)?;
        if n != 8 {
            return Err(bad("short answer"));
        }
        let pid = i32::from_ne_bytes(answer[0..4].try_into().expect("4 bytes"));
        if pid <= 0 {
            // The spawner could not start this one (e.g. clone failed; its errno follows):
            // this run clones init itself, which says why if it fails the same way.
            return Ok(None);
        }
        let pidfd = got.pop().ok_or_else(|| bad("no pidfd"))?;
        Ok(Some(Spawned {
            pid,
            pidfd,
            answers: ours,
        }))
    };
    match attempt() {
        Ok(s) => s,
        Err(_) => {
            give_up();
            None
        }
    }
}

// ---------------------------------------------------------------------------------------
// The spawner's side

/// One init the spawner started: its pidfd (readable once it exited) and where its status
/// goes.
struct Child {
    pid: libc::pid_t,
    pidfd: Fd,
    answers: Fd,
    /// The network namespace it was started in, if one of [`Nets`]'.
    net: Option<Fd>,
}

/// The network namespaces the spawner keeps, so that a sandbox does not make one of its own.
///
/// Making a network namespace is most of what cloning a sandbox's init costs (the kernel
/// registers a loopback device and its sysctl tables, about 0.3 ms here), and tearing one
/// down is work for the kernel's own threads afterwards. The spawner makes one when no
/// idle one is left, enters it before cloning an init (which then shares it instead of
/// making its own) and takes it back once that init has been reaped. So no two running
/// sandboxes ever share one (two actions could otherwise reach each other through abstract
/// Unix sockets), and a namespace is reused only after every process that had it is gone
/// (their sockets with them): the pid namespace dies with its init. The action can change
/// nothing in it: the namespace belongs to the spawner's user namespace, in which the action
/// (in a user namespace of its own, without capabilities) has none; its loopback stays down.
/// As root the spawner makes them as it is; unprivileged, in a user namespace of its own
/// ([`Nets::new`]). Where neither works, each init makes its own, as without the spawner.
struct Nets {
    /// Not in use by a live sandbox.
    idle: Vec<Fd>,
    /// Whether this process may make and enter network namespaces (until it once could not).
    enabled: bool,
}

impl Nets {
    /// The spawner's namespaces, made at its start. As root it may make network namespaces
    /// as it is. Otherwise it first makes a user namespace of its own, mapping wbuild's uid
    /// and gid to themselves: its maker holds every capability in it, so it may make network
    /// namespaces there, and the inits it clones write the same maps as before (wbuild's ids,
    /// which that namespace maps). A spawner that made the user namespace but could not map
    /// it exits: it cannot go back, and wbuild then clones its sandboxes itself.
    fn new() -> Nets {
        let mut nets = Nets {
            idle: Vec::new(),
            enabled: true,
        };
        let made = nets.make().or_else(|| {
            let refused = parent::errno() == libc::EPERM;
            nets.enabled = refused && own_user_namespace();
            nets.make()
        });
        nets.release(made);
        nets
    }

    /// Enters a network namespace no live sandbox has (a new one if none is idle); `None`
    /// (pooling is off, or just failed): the next init makes its own.
    fn enter(&mut self) -> Option<Fd> {
        if !self.enabled {
            return None;
        }
        let Some(fd) = self.idle.pop() else {
            return self.make();
        };
        // SAFETY: setns on a namespace descriptor this process holds.
        if unsafe { libc::setns(fd.0, libc::CLONE_NEWNET) } == 0 {
            return Some(fd);
        }
        self.enabled = false;
        None
    }

    /// Makes a network namespace and enters it; `None` (and no more tries) if it cannot.
    fn make(&mut self) -> Option<Fd> {
        if !self.enabled {
            return None;
        }
        // SAFETY: a plain syscall in the spawner's single thread.
        let fd = if unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0 {
            // SAFETY: opening a NUL-terminated path; the descriptor is ours.
            let fd = unsafe {
                libc::open(
                    c"/proc/thread-self/ns/net".as_ptr(),
                    libc::O_RDONLY | libc::O_CLOEXEC,
                )
            };
            (fd >= 0).then_some(Fd(fd))
        } else {
            None
        };
        self.enabled = fd.is_some();
        fd
    }

    /// Takes back the namespace of a reaped init.
    fn release(&mut self, net: Option<Fd>) {
        if let Some(fd) = net {
            self.idle.push(fd);
        }
    }
}

/// Moves the spawner into a new user namespace mapping its uid and gid to themselves (see
/// [`Nets::new`]); `false` if none could be made (nothing changed). Exits the spawner if the
/// namespace was made but could not be mapped.
fn own_user_namespace() -> bool {
    // SAFETY: trivial getters.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    // SAFETY: a plain syscall in the spawner's single thread.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
        return false;
    }
    // The spawner allocates freely (see `start`).
    let mapped = std::fs::write("/proc/self/setgroups", "deny").is_ok()
        && std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1\n")).is_ok()
        && std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1\n")).is_ok();
    if !mapped {
        // SAFETY: leaving the forked spawner without running wbuild's exit handlers.
        unsafe { libc::_exit(1) };
    }
    true
}

/// The spawner's loop: requests on `sock`, inits' exits on their pidfds. Returns when `sock`
/// reaches end of file (wbuild is gone), after killing and reaping what is still running.
fn serve(sock: c_int) -> io::Result<()> {
    let mut children: Vec<Child> = Vec::new();
    let mut nets = Nets::new();
    loop {
        let mut pfds = Vec::with_capacity(children.len() + 1);
        pfds.push(libc::pollfd {
            fd: sock,
            events: libc::POLLIN,
            revents: 0,
        });
        for c in &children {
            pfds.push(libc::pollfd {
                fd: c.pidfd.0,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: valid array of pollfd.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        // Exits first (their slots are freed before new ones are added).
        let mut i = children.len();
        while i > 0 {
            i -= 1;
            if pfds[i + 1].revents != 0 {
                let c = children.swap_remove(i);
                let status = parent::wait_for(c.pid);
                let _ = write_all(c.answers.0, &status.to_ne_bytes());
                nets.release(c.net);
            }
        }
        if pfds[0].revents != 0 {
            let mut b = [0u8; 1];
            let (n, got) = match recv_fds(sock, &mut b, 5) {
                Ok(x) => x,
                Err(_) => break,
            };
            if n == 0 {
                break; // wbuild is gone.
            }
            if let Some(c) = start_one(got, &mut nets) {
                children.push(c);
            }
        }
    }
    for c in &children {
        kill_pidfd(c.pidfd.0);
    }
    for c in children {
        parent::wait_for(c.pid);
    }
    Ok(())
}

/// SIGKILL to the process behind `pidfd` (the caller holds the pidfd open).
pub(crate) fn kill_pidfd(pidfd: c_int) {
    // SAFETY: pidfd_send_signal on a descriptor the caller holds; no siginfo.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd,
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
}

/// One request: its descriptors (answer socket, stdout, stderr, report pipe, and the
/// observation socket if observed), then the plan on the answer socket. Answers with init's
/// pid and a pidfd, or with pid 0 and an errno.
fn start_one(mut fds: Vec<Fd>, nets: &mut Nets) -> Option<Child> {
    if fds.len() < 4 {
        return None;
    }
    let notify = if fds.len() > 4 { fds.pop() } else { None };
    let report = fds.pop().expect("4 descriptors");
    let err = fds.pop().expect("3 descriptors");
    let out = fds.pop().expect("2 descriptors");
    let answers = fds.pop().expect("1 descriptor");
    let deadline = Instant::now() + ANSWER_DEADLINE;
    let fail = |errno: i32| {
        let mut a = [0u8; 8];
        a[4..8].copy_from_slice(&errno.to_ne_bytes());
        let _ = send_fds(answers.0, &a, &[]);
    };
    let plan = (|| -> io::Result<Plan> {
        let mut len = [0u8; 8];
        read_exact(answers.0, &mut len, deadline)?;
        let len = u64::from_le_bytes(len) as usize;
        if len > 1 << 30 {
            return Err(bad("too large"));
        }
        let mut bytes = vec![0u8; len];
        read_exact(answers.0, &mut bytes, deadline)?;
        decode(&bytes)
    })();
    let plan = match plan {
        Ok(p) => p,
        Err(e) => {
            fail(e.raw_os_error().unwrap_or(libc::EINVAL));
            return None;
        }
    };
    let child_fds = ChildFds {
        out: out.0,
        err: err.0,
        report: report.0,
        notify: notify.as_ref().map_or(-1, |f| f.0),
    };
    let net = nets.enter();
    let pid = match parent::clone_init_in(&plan, &child_fds, net.is_none()) {
        Ok(pid) => pid,
        Err(e) => {
            nets.release(net);
            fail(e.raw_os_error().unwrap_or(libc::EINVAL));
            return None;
        }
    };
    // SAFETY: pidfd_open on our unreaped child.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as c_int;
    if pidfd < 0 {
        let e = parent::errno();
        // SAFETY: our unreaped child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        parent::wait_for(pid);
        nets.release(net);
        fail(e);
        return None;
    }
    let pidfd = Fd(pidfd);
    let mut a = [0u8; 8];
    a[0..4].copy_from_slice(&pid.to_ne_bytes());
    if send_fds(answers.0, &a, &[pidfd.0]).is_err() {
        // SAFETY: our unreaped child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        parent::wait_for(pid);
        nets.release(net);
        return None;
    }
    // The run's descriptors are init's now; ours close here.
    drop((out, err, report, notify));
    Some(Child {
        pid,
        pidfd,
        answers,
        net,
    })
}
