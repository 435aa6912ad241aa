//! The host side of a run: the clone, the report pipe, the timeout and interruption, reaping
//! init, collecting stdout/stderr.

use std::ffi::{c_int, c_ulong, c_void};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::*;

pub(crate) const REPORT_SETUP: i32 = 1;
pub(crate) const REPORT_EXEC: i32 = 2;
pub(crate) const REPORT_CWD: i32 = 3;
pub(crate) const REPORT_STATUS: i32 = 4;
pub(crate) const REPORT_CLONE: i32 = 5;
pub(crate) const REPORT_CONFINE: i32 = 6;

/// The calling thread's errno (async-signal-safe: a TLS read, no allocation).
pub(crate) fn errno() -> c_int {
    // SAFETY: `__errno_location` always returns a valid pointer for the calling thread.
    unsafe { *libc::__errno_location() }
}

pub(crate) struct Fd(pub(crate) c_int);

impl Fd {
    /// The descriptor, no longer closed by this `Fd`.
    pub(crate) fn into_raw(self) -> c_int {
        let fd = self.0;
        std::mem::forget(self);
        fd
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own this descriptor.
        unsafe { libc::close(self.0) };
    }
}

/// A close-on-exec pipe whose ends are both >= 3 (so they never collide with stdio in the
/// child, even if the host process closed its stdio).
pub(crate) fn pipe() -> Result<(Fd, Fd), SandboxError> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: valid out-array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(SandboxError::Io {
            what: "pipe2",
            error: io::Error::last_os_error(),
        });
    }
    above_stdio(fds)
}

/// Owns both descriptors, moved to numbers >= 3 (close-on-exec) where they are below.
fn above_stdio(fds: [c_int; 2]) -> Result<(Fd, Fd), SandboxError> {
    let mut out = [Fd(fds[0]), Fd(fds[1])];
    for f in &mut out {
        if f.0 < 3 {
            // SAFETY: duplicating a descriptor we own.
            let n = unsafe { libc::fcntl(f.0, libc::F_DUPFD_CLOEXEC, 3) };
            if n < 0 {
                return Err(SandboxError::Io {
                    what: "fcntl(F_DUPFD_CLOEXEC)",
                    error: io::Error::last_os_error(),
                });
            }
            *f = Fd(n);
        }
    }
    let [a, b] = out;
    Ok((a, b))
}

/// Kills and reaps init if `execute` leaves early (error or panic). Init is this process's
/// child, or the spawner's ([`crate::spawner`]: then it is signalled through its pidfd and
/// its wait status comes from the spawner).
pub(crate) struct InitGuard {
    pub(crate) pid: libc::pid_t,
    pub(crate) spawned: Option<crate::spawner::Spawned>,
    pub(crate) reaped: bool,
}

impl InitGuard {
    pub(crate) fn unregister(&self) {
        lock_running().retain(|r| r.pid != self.pid);
    }

    pub(crate) fn kill(&self) {
        match &self.spawned {
            Some(s) => s.kill(),
            // SAFETY: our unreaped child.
            None => unsafe {
                libc::kill(self.pid, libc::SIGKILL);
            },
        }
    }

    pub(crate) fn reap(&mut self) -> i32 {
        self.unregister();
        self.reaped = true;
        if let Some(s) = &self.spawned {
            // Init exits once the action has (its pipes are closed by then, or it was
            // killed): the spawner reaps it and says so at once.
            let deadline = Instant::now() + crate::spawner::ANSWER_DEADLINE;
            if let Some(status) = s.status(deadline) {
                return status;
            }
            s.kill();
            return 0;
        }
        wait_for(self.pid)
    }
}

/// Waits for this process's child `pid` to exit and reaps it; its wait status.
pub(crate) fn wait_for(pid: libc::pid_t) -> c_int {
    let mut status = 0;
    loop {
        // SAFETY: `pid` is our child; valid out-parameter.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if r == pid || (r < 0 && errno() != libc::EINTR) {
            return status;
        }
    }
}

impl Drop for InitGuard {
    fn drop(&mut self) {
        if !self.reaped {
            self.unregister();
            self.kill();
            self.reap();
        }
    }
}

/// Clones the sandbox's init (new user, mount, pid, network, IPC and UTS namespaces) running
/// [`init_main`] on `plan` with `fds`. Returns its pid.
pub(crate) fn clone_init(plan: &Plan, fds: &ChildFds) -> io::Result<libc::pid_t> {
    clone_init_in(plan, fds, true)
}

/// [`clone_init`]; with `new_net` false, init stays in this process's network namespace (one
/// the spawner keeps for one sandbox at a time, see `spawner::Nets`).
pub(crate) fn clone_init_in(plan: &Plan, fds: &ChildFds, new_net: bool) -> io::Result<libc::pid_t> {
    let mut flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS;
    if new_net {
        flags |= libc::CLONE_NEWNET;
    }
    // SAFETY: raw clone with fork semantics (no CLONE_VM, no new stack): the child gets a
    // copy of this address space and runs only `init_main`, which performs async-signal-safe
    // syscalls on memory prepared above and never returns.
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
        unsafe { init_main(plan, fds) }
    }
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as libc::pid_t)
}

/// A close-on-exec Unix socket pair of `kind` (both ends >= 3): for sending the observing
/// filter's listener from the action to the host, and between wbuild and the spawner.
pub(crate) fn socket_pair(kind: c_int) -> Result<(Fd, Fd), SandboxError> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: valid out-array of two ints.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            kind | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } != 0
    {
        return Err(SandboxError::Io {
            what: "socketpair",
            error: io::Error::last_os_error(),
        });
    }
    above_stdio(fds)
}

/// The thread that answers the observing filter's stopped calls ([`Observer::watch`]).
/// Dropped without [`Watcher::finish`] (an early return), it is told to stop and left to
/// end on its own: the sandbox's processes are killed, so the listener hangs up.
///
/// [`Observer::watch`]: crate::observe::Observer::watch
struct Watcher {
    stop: Arc<AtomicBool>,
    done: Option<std::sync::mpsc::Receiver<crate::Observation>>,
}

/// How long [`Watcher::finish`] waits for the observing thread once the sandbox is reaped
/// (it ends as soon as the listener reports that no process uses the filter).
const WATCHER_DEADLINE: Duration = Duration::from_secs(5);

impl Watcher {
    fn start(observer: crate::observe::Observer) -> Result<Watcher, SandboxError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("wbuild-observe".into())
            .spawn(move || {
                let _ = tx.send(observer.watch(&flag));
            })
            .map_err(|error| SandboxError::Io {
                what: "spawn of the thread observing the action",
                error,
            })?;
        Ok(Watcher {
            stop,
            done: Some(rx),
        })
    }

    /// What was observed; called once the sandbox is reaped. A thread that does not end
    /// within [`WATCHER_DEADLINE`] (or panicked) leaves the observation marked truncated:
    /// the action then keeps its full key.
    fn finish(mut self) -> crate::Observation {
        self.stop.store(true, Ordering::Release);
        let done = self.done.take().expect("finished once");
        done.recv_timeout(WATCHER_DEADLINE)
            .unwrap_or_else(|_| crate::Observation {
                truncated: true,
                ..Default::default()
            })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

pub(crate) fn execute(plan: &Plan, timeout: Duration) -> Result<NativeOutcome, SandboxError> {
    let start = Instant::now();
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (rep_r, rep_w) = pipe()?;
    let (sock_r, sock_w) = match plan.observer {
        Some(_) => {
            let (r, w) = socket_pair(libc::SOCK_SEQPACKET)?;
            (Some(r), Some(w))
        }
        None => (None, None),
    };
    let fds = ChildFds {
        out: out_w.0,
        err: err_w.0,
        report: rep_w.0,
        notify: sock_w.as_ref().map_or(-1, |f| f.0),
    };
    let interrupted = Arc::new(AtomicBool::new(false));

    let pid;
    let spawned;
    {
        // Held across the start so `interrupt` cannot miss a sandbox that has started.
        let mut running = lock_running();
        spawned = crate::spawner::spawn(plan, &fds);
        pid = match &spawned {
            Some(s) => s.pid,
            None => clone_init(plan, &fds).map_err(|e| match e.raw_os_error() {
                Some(libc::EPERM | libc::ENOSPC | libc::EUSERS | libc::EINVAL) => {
                    SandboxError::UserNamespacesUnavailable {
                        detail: format!("clone(CLONE_NEWUSER|CLONE_NEWPID|...) failed: {e}"),
                    }
                }
                _ => SandboxError::Io {
                    what: "clone of the sandbox init process",
                    error: e,
                },
            })?,
        };
        running.push(Running {
            pid,
            pidfd: spawned.as_ref().map(|s| s.pidfd.0),
            interrupted: interrupted.clone(),
        });
    }
    let mut guard = InitGuard {
        pid,
        spawned,
        reaped: false,
    };
    drop(out_w);
    drop(err_w);
    drop(rep_w);
    drop(sock_w);
    let mut sock = sock_r;
    // The thread answering the observing filter's stopped calls, once its listener arrived.
    let mut watcher: Option<Watcher> = None;

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
            guard.kill();
            deadline = now + Duration::from_secs(2);
            continue;
        }
        let mut pfds: Vec<libc::pollfd> = Vec::with_capacity(5);
        let mut idx = Vec::with_capacity(5);
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
        // The socket the observing filter's listener arrives on (index 3).
        if let Some(s) = &sock {
            pfds.push(libc::pollfd {
                fd: s.0,
                events: libc::POLLIN,
                revents: 0,
            });
            idx.push(3);
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
                error: io::Error::last_os_error(),
            });
        }
        for (p, &i) in pfds.iter().zip(&idx) {
            if p.revents == 0 {
                continue;
            }
            if i == 3 {
                // The observing filter's listener: one descriptor (`SCM_RIGHTS`).
                let listener = sock
                    .as_ref()
                    .and_then(|s| crate::spawner::recv_fds(s.0, &mut [0u8; 1], 1).ok())
                    .and_then(|(_, mut fds)| fds.pop());
                if let Some(fd) = listener {
                    watcher = Some(Watcher::start(crate::observe::Observer::new(
                        fd.into_raw(),
                        plan.roots.clone(),
                        &plan.files,
                        &plan.system,
                    ))?);
                }
                sock = None;
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
        guard.kill();
    }
    let init_status = guard.reap();
    // Every process of the sandbox is gone: the watcher sees the listener hang up.
    let observed = watcher.map(Watcher::finish);
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
                    error: source,
                    hint: step.hint,
                });
            }
            REPORT_CLONE => {
                return Err(SandboxError::Setup {
                    step: "fork the action inside the sandbox".into(),
                    error: source,
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
                    error: source,
                    hint: "the native sandbox needs Linux 5.4 or later with seccomp \
                           (CONFIG_SECCOMP_FILTER); inside a container, allow prctl and \
                           seccomp in its seccomp profile",
                });
            }
            REPORT_EXEC => {
                return Err(SandboxError::Exec {
                    program: plan.program.clone(),
                    path: plan.search_path.clone(),
                    error: source,
                });
            }
            REPORT_CWD => {
                return Err(SandboxError::Cwd {
                    cwd: plan.cwd_path.clone(),
                    error: source,
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
        observed,
    })
}
