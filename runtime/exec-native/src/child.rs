//! The child side: everything here runs between `clone` and `execve`/`_exit` — raw syscalls
//! on memory prepared by `Plan::build` only: no allocation, no locks, no panics.

use std::ffi::{c_char, c_int, c_ulong, c_void};

use super::*;

pub(crate) struct ChildFds {
    pub(crate) out: c_int,
    pub(crate) err: c_int,
    pub(crate) report: c_int,
    /// The socket the observing filter's listener is sent through (-1: not observed).
    pub(crate) notify: c_int,
}

pub(crate) unsafe fn report(fd: c_int, kind: i32, index: i32, err: i32, status: i32) {
    let mut rec = [0u8; 16];
    rec[0..4].copy_from_slice(&kind.to_ne_bytes());
    rec[4..8].copy_from_slice(&index.to_ne_bytes());
    rec[8..12].copy_from_slice(&err.to_ne_bytes());
    rec[12..16].copy_from_slice(&status.to_ne_bytes());
    // SAFETY: writing 16 bytes from a stack buffer; atomic on a pipe (< PIPE_BUF).
    unsafe { libc::write(fd, rec.as_ptr().cast::<c_void>(), rec.len()) };
}

/// Closes every descriptor except those in `keep` (sorted ascending, non-negative).
pub(crate) unsafe fn close_all_except(keep: &[c_int], fd_limit: c_int) {
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

pub(crate) unsafe fn run_op(op: &Op) -> Result<(), c_int> {
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
pub(crate) unsafe fn init_main(plan: &Plan, fds: &ChildFds) -> ! {
    // SAFETY: (whole function) async-signal-safe syscalls only, on prepared memory.
    unsafe {
        let mut keep = [fds.out, fds.err, fds.report, fds.notify];
        keep.sort_unstable();
        let first = keep.iter().position(|&k| k >= 0).unwrap_or(keep.len());
        close_all_except(&keep[first..], plan.fd_limit);
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
        // Start the action as `posix_spawn` does: sharing init's memory (`CLONE_VM`, on a
        // stack of its own) until its `execve`, while init waits (`CLONE_VFORK`). Init's
        // memory is a copy of the host process's, tens of MiB while wbuild builds: a fork
        // would copy its page tables again and tear them down at the action's `execve`.
        // (Not glibc's fork: it would run atfork handlers and take locks that another
        // thread of the original process may have held; glibc's `clone` is a bare wrapper.)
        let stack = libc::mmap(
            std::ptr::null_mut(),
            ACTION_STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        );
        if stack == libc::MAP_FAILED {
            report(fds.report, REPORT_CLONE, 0, errno(), 0);
            libc::_exit(1);
        }
        // The lowest page stays unmapped-in-effect: an overflow faults instead of writing
        // below the stack.
        libc::mprotect(stack, 4096, libc::PROT_NONE);
        let top = (stack as *mut u8).add(ACTION_STACK).cast::<libc::c_void>();
        let start = ActionStart { plan, fds };
        let child = libc::clone(
            action_entry,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&start as *const ActionStart)
                .cast_mut()
                .cast::<libc::c_void>(),
        );
        if child < 0 {
            report(fds.report, REPORT_CLONE, 0, errno(), 0);
            libc::_exit(1);
        }
        // The action has called `execve` (or exited): its stack is no longer used.
        libc::munmap(stack, ACTION_STACK);
        libc::close(fds.out);
        libc::close(fds.err);
        if fds.notify >= 0 {
            libc::close(fds.notify);
        }
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

/// Size of the stack the action runs on until its `execve` (the lowest page a guard).
const ACTION_STACK: usize = 256 * 1024;

/// What [`action_entry`] is handed through `clone`.
struct ActionStart<'a> {
    plan: &'a Plan,
    fds: &'a ChildFds,
}

/// Entry point of the action process under `clone` (its argument is an [`ActionStart`] on
/// init's stack, valid while init waits for the `execve`).
extern "C" fn action_entry(arg: *mut libc::c_void) -> c_int {
    // SAFETY: `arg` points at the `ActionStart` init made, alive while init is suspended
    // (`CLONE_VFORK`); `action_main` never returns.
    unsafe {
        let start = &*(arg.cast::<ActionStart>());
        action_main(start.plan, start.fds)
    }
}

/// Body of the action process (child of init), up to `execve`. It shares init's memory
/// until then (init waits): it writes only to its own stack.
pub(crate) unsafe fn action_main(plan: &Plan, fds: &ChildFds) -> ! {
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
            && let Err((stage, e)) = confine(plan, fds)
        {
            report(fds.report, REPORT_CONFINE, stage, e, 0);
            libc::_exit(127);
        }
        if !plan.harden
            && let Err((stage, e)) = observe(plan, fds)
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
pub(crate) const CONFINE_STAGES: [&str; 9] = [
    "set RLIMIT_NPROC",
    "lock the securebits (PR_SET_SECUREBITS)",
    "drop the bounding set (PR_CAPBSET_DROP)",
    "clear the ambient capabilities",
    "drop all capabilities (capset)",
    "set PR_SET_NO_NEW_PRIVS",
    "install the seccomp filter",
    "install the observing seccomp filter (SECCOMP_FILTER_FLAG_NEW_LISTENER; Linux 5.5 or later)",
    "send the observing filter's listener to wbuild",
];

/// Installs the observing filter (if the run is observed) and sends its listener to the
/// host, which must answer every stopped call from now on (`execve` is the first). Raw
/// syscalls on prepared data only. On failure: (stage, errno).
pub(crate) unsafe fn observe(plan: &Plan, fds: &ChildFds) -> Result<(), (i32, c_int)> {
    let Some(filter) = plan.observer else {
        return Ok(());
    };
    // SAFETY: (whole function) plain syscalls with pointers to stack data or to the filter,
    // which lives for the whole process.
    unsafe {
        let prog = libc::sock_fprog {
            len: filter.len() as libc::c_ushort,
            filter: filter.as_ptr().cast_mut(),
        };
        let listener = libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER as c_ulong,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &prog as *const libc::sock_fprog,
        );
        if listener < 0 {
            return Err((7, errno()));
        }
        let listener = listener as c_int;
        // One SCM_RIGHTS message carrying the listener; the buffer is u64-aligned.
        let mut control = [0u64; 4];
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast::<c_void>(),
            iov_len: 1,
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast::<c_void>();
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<c_int>() as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<c_int>(), listener);
        let sent = libc::sendmsg(fds.notify, &msg, libc::MSG_NOSIGNAL);
        let e = errno();
        libc::close(listener);
        libc::close(fds.notify);
        if sent != 1 {
            return Err((8, e));
        }
    }
    Ok(())
}

#[repr(C)]
pub(crate) struct CapHeader {
    pub(crate) version: u32,
    pub(crate) pid: c_int,
}

#[repr(C)]
pub(crate) struct CapData {
    pub(crate) effective: u32,
    pub(crate) permitted: u32,
    pub(crate) inheritable: u32,
}

pub(crate) const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Takes every privilege from the action process, just before `execve`: the process limit,
/// no capabilities in any set (the bounding set too, so executing a file as uid 0 or a
/// setuid/file-capability binary grants none), locked securebits, no_new_privs, and the
/// seccomp filters. Raw syscalls on prepared data only. On failure: (stage, errno).
pub(crate) unsafe fn confine(plan: &Plan, fds: &ChildFds) -> Result<(), (i32, c_int)> {
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
        // Before the main filter, which refuses any further listener.
        observe(plan, fds)?;
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
