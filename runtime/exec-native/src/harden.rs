//! What confines the action after the sandbox is built: the seccomp filter (compiled once
//! per process, before any clone), the process limit (a `pids` cgroup per sandbox where the
//! host lets wbuild create one, and `RLIMIT_NPROC`), and the host directories that are hidden
//! inside a mounted toolchain tree because no action key covers them.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::SandboxError;

/// Most tasks (processes and threads, init included) one sandbox may hold at a time.
pub const PIDS_LIMIT: u64 = 1024;

/// Host directories inside the toolchain trees that are hidden (an empty read-only
/// directory is mounted over them) whenever a read-only mount would show them: nothing keys
/// their contents, so an action that read them could be served stale from the cache.
/// `/usr/local/include` is on gcc's default include path.
pub const HIDDEN_HOST_DIRS: &[&str] = &["/usr/local", "/usr/share", "/usr/src", "/usr/games"];

// Namespace flags of clone(2).
const CLONE_NEWTIME: u32 = libc::CLONE_NEWTIME as u32;
const NAMESPACE_FLAGS: u32 = libc::CLONE_NEWUSER as u32
    | libc::CLONE_NEWNS as u32
    | libc::CLONE_NEWPID as u32
    | libc::CLONE_NEWNET as u32
    | libc::CLONE_NEWIPC as u32
    | libc::CLONE_NEWUTS as u32
    | libc::CLONE_NEWCGROUP as u32
    | CLONE_NEWTIME;

/// open_tree_attr(2) (Linux 6.15; the same number on every architecture since 5.1's
/// unified numbering), not yet in libc.
const SYS_OPEN_TREE_ATTR: i64 = 467;

/// System calls that fail with `EPERM` in the action: changing mounts or namespaces,
/// reaching other processes' memory, loading code into the kernel, and host-wide state.
fn denied_syscalls() -> Vec<i64> {
    let mut v: Vec<i64> = vec![
        // Mounts and the root directory.
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_open_tree,
        SYS_OPEN_TREE_ATTR,
        libc::SYS_move_mount,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_mount_setattr,
        // Namespaces (clone with namespace flags is handled by a rule).
        libc::SYS_unshare,
        libc::SYS_setns,
        // Keys, BPF, perf, other processes.
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_pidfd_getfd,
        libc::SYS_userfaultfd,
        // io_uring runs operations this filter never sees.
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        // The kernel itself.
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_syslog,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_quotactl_fd,
        libc::SYS_lookup_dcookie,
        // File handles bypass the mount tree.
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        // Clocks.
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_adjtimex,
        libc::SYS_clock_adjtime,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([libc::SYS_iopl, libc::SYS_ioperm]);
    v
}

/// What the filter does with one system call number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// Always fail with this errno.
    Errno(u32),
    /// Fail with `EPERM` when the low 32 bits of argument `arg` have any bit of `mask` set
    /// (clone's flags, a mode; the kernel ignores the high halves).
    ArgBits { arg: u32, mask: u32 },
    /// Fail with `EPERM` when argument `flags` has `O_CREAT` or `O_TMPFILE` and argument
    /// `mode` has any bit of `mask` set (open creating a file with these mode bits).
    CreateWith { flags: u32, mode: u32, mask: u32 },
    /// Hand to the supervisor (the observing filter), unless the low half of argument `arg`
    /// has any bit of `mask` set (`mask` 0: always).
    Notify { arg: u32, mask: u32 },
}

/// Setuid and setgid bits. The action's uid is the caller's (the host's root when wbuild
/// runs as root): a setuid file it left in an output directory would be the caller's on
/// the host, so it may not set them (chmod, or open/mknod creating a file with them).
const SET_ID_BITS: u32 = libc::S_ISUID | libc::S_ISGID;
/// O_CREAT, and O_TMPFILE without O_DIRECTORY.
const CREATE_FLAGS: u32 = (libc::O_CREAT | (libc::O_TMPFILE & !libc::O_DIRECTORY)) as u32;

/// fchmodat2(2) (Linux 6.6; one number on every architecture; libc declares it for x86_64
/// only).
const SYS_FCHMODAT2: i64 = 452;
/// openat2(2): its flags and mode are in memory, where a filter cannot look, so it fails with
/// ENOSYS (callers fall back to openat).
const SYS_OPENAT2: i64 = libc::SYS_openat2;

/// The rules about setuid/setgid bits, by system call.
fn set_id_rules() -> Vec<(i64, Rule)> {
    let bits = |arg| Rule::ArgBits {
        arg,
        mask: SET_ID_BITS,
    };
    let mut v = vec![
        (libc::SYS_fchmod, bits(1)),
        (libc::SYS_fchmodat, bits(2)),
        (SYS_FCHMODAT2, bits(2)),
        (libc::SYS_mknodat, bits(2)),
        (
            libc::SYS_openat,
            Rule::CreateWith {
                flags: 2,
                mode: 3,
                mask: SET_ID_BITS,
            },
        ),
        (SYS_OPENAT2, Rule::Errno(libc::ENOSYS as u32)),
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        (libc::SYS_chmod, bits(1)),
        (libc::SYS_mknod, bits(1)),
        (libc::SYS_creat, bits(1)),
        (
            libc::SYS_open,
            Rule::CreateWith {
                flags: 1,
                mode: 2,
                mask: SET_ID_BITS,
            },
        ),
    ]);
    v
}

/// `seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, ...)` fails with
/// `EPERM`: an action that installed a filter of its own with a listener could answer its
/// own file-system calls (`SECCOMP_USER_NOTIF_FLAG_CONTINUE`), and the kernel would then
/// never ask wbuild's observing filter about them. Filters without a listener stay allowed
/// (sandboxes inside actions use them).
fn listener_rule() -> Rule {
    Rule::ArgBits {
        arg: 1,
        mask: libc::SECCOMP_FILTER_FLAG_NEW_LISTENER as u32,
    }
}

/// Every system call the filter does not allow, by number, sorted.
fn rules() -> Vec<(u32, Rule)> {
    let mut rules: Vec<(u32, Rule)> = denied_syscalls()
        .into_iter()
        .map(|nr| (nr as u32, Rule::Errno(libc::EPERM as u32)))
        .collect();
    rules.push((
        libc::SYS_clone as u32,
        Rule::ArgBits {
            arg: 0,
            mask: NAMESPACE_FLAGS,
        },
    ));
    rules.push((libc::SYS_seccomp as u32, listener_rule()));
    rules.extend(set_id_rules().into_iter().map(|(nr, r)| (nr as u32, r)));
    // clone3 passes its flags in memory, which a filter cannot read: ENOSYS makes glibc
    // fall back to clone, whose flags the rule above inspects.
    rules.push((libc::SYS_clone3 as u32, Rule::Errno(libc::ENOSYS as u32)));
    rules.sort_by_key(|r| r.0);
    rules.dedup_by_key(|r| r.0);
    rules
}

// Classic BPF, as seccomp runs it (linux/filter.h, linux/seccomp.h).
const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
/// Low half of args[i]: `DATA_ARGS + 8 * i` (little-endian: x86_64 and aarch64).
const DATA_ARGS: u32 = 16;
const RET_ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const RET_KILL_PROCESS: u32 = libc::SECCOMP_RET_KILL_PROCESS;
const RET_ERRNO: u32 = libc::SECCOMP_RET_ERRNO;
const RET_USER_NOTIF: u32 = libc::SECCOMP_RET_USER_NOTIF;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

fn ins(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// A forward jump of `n` instructions.
fn off(n: usize) -> u8 {
    u8::try_from(n).expect("seccomp filter jump within 255 instructions")
}

/// Code deciding the sorted `rules` with the syscall number in A, as a binary search: the
/// kernel emulates the filter for every system call number when it is installed (to cache
/// the always-allowed ones), so a linear chain of comparisons would cost about 0.2 ms per
/// sandbox; the tree costs a few µs. Every path ends in a return.
fn decide(rules: &[(u32, Rule)]) -> Vec<libc::sock_filter> {
    if rules.len() <= 3 {
        let mut code = Vec::new();
        for &(nr, rule) in rules {
            let body = match rule {
                Rule::Errno(e) => vec![ins(RET_K, 0, 0, RET_ERRNO | e)],
                Rule::ArgBits { arg, mask } => vec![
                    ins(LD_W_ABS, 0, 0, DATA_ARGS + 8 * arg),
                    ins(JSET_K, 0, 1, mask),
                    ins(RET_K, 0, 0, RET_ERRNO | libc::EPERM as u32),
                    ins(RET_K, 0, 0, RET_ALLOW),
                ],
                Rule::CreateWith { flags, mode, mask } => vec![
                    ins(LD_W_ABS, 0, 0, DATA_ARGS + 8 * flags),
                    ins(JSET_K, 0, 3, CREATE_FLAGS),
                    ins(LD_W_ABS, 0, 0, DATA_ARGS + 8 * mode),
                    ins(JSET_K, 0, 1, mask),
                    ins(RET_K, 0, 0, RET_ERRNO | libc::EPERM as u32),
                    ins(RET_K, 0, 0, RET_ALLOW),
                ],
                Rule::Notify { mask: 0, .. } => vec![ins(RET_K, 0, 0, RET_USER_NOTIF)],
                Rule::Notify { arg, mask } => vec![
                    ins(LD_W_ABS, 0, 0, DATA_ARGS + 8 * arg),
                    ins(JSET_K, 1, 0, mask),
                    ins(RET_K, 0, 0, RET_USER_NOTIF),
                    ins(RET_K, 0, 0, RET_ALLOW),
                ],
            };
            code.push(ins(JEQ_K, 0, off(body.len()), nr));
            code.extend(body);
        }
        code.push(ins(RET_K, 0, 0, RET_ALLOW));
        return code;
    }
    let mid = rules.len() / 2;
    let below = decide(&rules[..mid]);
    let above = decide(&rules[mid..]);
    let mut code = Vec::with_capacity(below.len() + above.len() + 1);
    // nr >= first of the upper half: jump over the lower half's code.
    code.push(ins(JGE_K, off(below.len()), 0, rules[mid].0));
    code.extend(below);
    code.extend(above);
    code
}

/// `AUDIT_ARCH_*` of the architecture wbuild was built for.
fn audit_arch() -> Result<u32, String> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(0xc000_003e),
        "aarch64" => Ok(0xc000_00b7),
        other => Err(format!(
            "the native sandbox's seccomp filter supports x86_64 and aarch64, not {other}"
        )),
    }
}

/// The action's seccomp filter. A system call of another architecture (32-bit compat
/// entry points, whose numbers mean other calls) kills the action; on x86_64 every x32-ABI
/// number (bit 30 set: the same calls under a second number) fails with `ENOSYS`.
fn compile(arch: u32) -> Vec<libc::sock_filter> {
    let mut code = prologue(arch, RET_KILL_PROCESS, RET_ERRNO | libc::ENOSYS as u32);
    code.extend(decide(&rules()));
    code
}

/// The start of a filter: a call of another architecture returns `other_arch`, on x86_64 an
/// x32-ABI number returns `x32`; otherwise the syscall number is loaded into A.
fn prologue(arch: u32, other_arch: u32, x32: u32) -> Vec<libc::sock_filter> {
    let mut code = vec![
        ins(LD_W_ABS, 0, 0, DATA_ARCH),
        ins(JEQ_K, 1, 0, arch),
        ins(RET_K, 0, 0, other_arch),
        ins(LD_W_ABS, 0, 0, DATA_NR),
    ];
    if arch == 0xc000_003e {
        code.push(ins(JGE_K, 0, 1, X32_SYSCALL_BIT));
        code.push(ins(RET_K, 0, 0, x32));
    }
    code
}

/// The observing filter: every system call that names a path or lists a directory
/// ([`crate::observe::calls`]) waits for the supervisor, which records it and lets it
/// continue. `fstat`-like calls on a descriptor (`newfstatat`/`statx` with `AT_EMPTY_PATH`)
/// are let through: they name no path. Other architectures' calls are left to the main
/// filter (which kills the action).
fn compile_observer(arch: u32) -> Vec<libc::sock_filter> {
    let mut code = prologue(arch, RET_ALLOW, RET_ALLOW);
    let mut rules: Vec<(u32, Rule)> = crate::observe::calls()
        .map(|c| {
            let rule = match c.unless_empty_path {
                Some(arg) => Rule::Notify {
                    arg,
                    mask: libc::AT_EMPTY_PATH as u32,
                },
                None => Rule::Notify { arg: 0, mask: 0 },
            };
            (c.nr as u32, rule)
        })
        .collect();
    rules.sort_by_key(|r| r.0);
    rules.dedup_by_key(|r| r.0);
    code.extend(decide(&rules));
    code
}

type Compiled = OnceLock<Result<Vec<libc::sock_filter>, String>>;

/// The filter `build` makes for this architecture, compiled once per process into `cell`.
fn compiled(
    cell: &'static Compiled,
    build: fn(u32) -> Vec<libc::sock_filter>,
    what: &str,
) -> Result<&'static [libc::sock_filter], SandboxError> {
    match cell.get_or_init(|| audit_arch().map(build)) {
        Ok(p) => Ok(p),
        Err(e) => Err(SandboxError::Setup {
            step: format!("build the action's {what}"),
            error: io::Error::other(e.clone()),
            hint: "wbuild's native sandbox runs on Linux x86_64 and aarch64",
        }),
    }
}

/// The observing filter, compiled once per process.
pub(crate) fn observer_filter() -> Result<&'static [libc::sock_filter], SandboxError> {
    static FILTER: Compiled = OnceLock::new();
    compiled(&FILTER, compile_observer, "observing seccomp filter")
}

/// The action's seccomp filter, compiled once per process.
pub(crate) fn filter() -> Result<&'static [libc::sock_filter], SandboxError> {
    static FILTER: Compiled = OnceLock::new();
    compiled(&FILTER, compile, "seccomp filter")
}

// ---------------------------------------------------------------------------------------
// The pids cgroup.

/// A `pids` cgroup limited to [`PIDS_LIMIT`] for one sandbox at a time. Dropped (after init
/// was reaped, so it is empty), it goes back to a pool for the next sandbox: creating and
/// removing a cgroup per action costs ~50 µs. The pool is removed when the process exits
/// normally; cgroups left behind by a wbuild process that was killed are removed by the
/// next one.
pub(crate) struct PidsCgroup {
    dir: PathBuf,
}

static CGROUP_POOL: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Prefix of the sandbox cgroups' names; the wbuild process id follows.
const CGROUP_PREFIX: &str = "wbuild-sandbox-";

impl PidsCgroup {
    /// The file init writes `0` to, joining the cgroup before it forks anything: `tasks`,
    /// which moves only the writing thread (init has one). Writing `cgroup.procs` would move
    /// a whole thread group, for which the kernel takes a global lock whose write side waits
    /// for an RCU grace period (~10 ms on a busy machine) whenever no other migration
    /// happened recently: once per action.
    pub(crate) fn tasks(&self) -> PathBuf {
        self.dir.join("tasks")
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        // Init has been reaped, so the pid namespace is dead: whatever the kernel still
        // lists in the cgroup is exiting and leaves it in a moment.
        CGROUP_POOL
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(std::mem::take(&mut self.dir));
    }
}

/// Removes the pooled cgroups at exit (`atexit`; skipped if another thread holds the pool).
extern "C" fn remove_pool() {
    if let Ok(mut pool) = CGROUP_POOL.try_lock() {
        for dir in pool.drain(..) {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Removes the (empty) sandbox cgroups of wbuild processes that no longer exist.
fn remove_stale(base: &Path) {
    let Ok(rd) = std::fs::read_dir(base) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(CGROUP_PREFIX)) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

/// The directory of this process's own cgroup in a hierarchy with the `pids` controller,
/// if wbuild may create child cgroups there (as root, or with a delegated cgroup).
fn pids_base() -> Option<&'static Path> {
    static BASE: OnceLock<Option<PathBuf>> = OnceLock::new();
    BASE.get_or_init(|| {
        let base = find_pids_base()?;
        // Usable only if a child cgroup gets a pids.max.
        let probe = base.join(format!("{CGROUP_PREFIX}{}-probe", std::process::id()));
        std::fs::create_dir(&probe).ok()?;
        let usable = probe.join("pids.max").exists() && probe.join("tasks").exists();
        let _ = std::fs::remove_dir(&probe);
        if usable {
            remove_stale(&base);
        }
        usable.then_some(base)
    })
    .as_deref()
}

/// The `pids` hierarchy of cgroup v1 only. (cgroup v2 has no `tasks` file: joining through
/// `cgroup.procs` costs a grace period per action, and `clone3(CLONE_INTO_CGROUP)`, which
/// avoids it, is not used yet.)
fn find_pids_base() -> Option<PathBuf> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // cgroup v1: "N:pids[,...]:/path".
    let mut v1 = None;
    for line in cgroups.lines() {
        let mut f = line.splitn(3, ':');
        let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
        if ctrl.split(',').any(|c| c == "pids") {
            v1 = Some(path.to_owned());
        }
    }
    for line in mountinfo.lines() {
        let (pre, post) = line.split_once(" - ")?;
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 {
            continue;
        }
        let (root, point, fstype, opts) = (pre[3], pre[4], post[0], post[2]);
        let own = match fstype {
            "cgroup" if opts.split(',').any(|o| o == "pids") => v1.as_deref(),
            _ => None,
        };
        let Some(own) = own else { continue };
        let rel = Path::new(own).strip_prefix(root).ok()?;
        return Some(Path::new(point).join(rel));
    }
    None
}

/// Makes a `pids` cgroup limited to [`PIDS_LIMIT`] tasks for one sandbox, or `None` where
/// the host gives wbuild no cgroup (then `RLIMIT_NPROC` is the only bound, which the kernel
/// does not apply to the host's root user).
pub(crate) fn pids_cgroup() -> Result<Option<PidsCgroup>, SandboxError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let Some(base) = pids_base() else {
        return Ok(None);
    };
    let reused = CGROUP_POOL.lock().unwrap_or_else(|e| e.into_inner()).pop();
    if let Some(dir) = reused {
        return Ok(Some(PidsCgroup { dir }));
    }
    static AT_EXIT: std::sync::Once = std::sync::Once::new();
    // SAFETY: registers a plain function without captured state.
    AT_EXIT.call_once(|| unsafe {
        libc::atexit(remove_pool);
    });
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let dir = base.join(format!("{CGROUP_PREFIX}{}-{n}", std::process::id()));
    let failed = |step: String| {
        move |source: io::Error| SandboxError::Setup {
            step,
            error: source,
            hint: "wbuild limits each sandbox's processes with a pids cgroup next to its own; \
                   check that the cgroup file system is writable and not full",
        }
    };
    std::fs::create_dir(&dir).map_err(failed(format!("create the cgroup {}", dir.display())))?;
    let cg = PidsCgroup { dir };
    let max = cg.dir.join("pids.max");
    std::fs::write(&max, PIDS_LIMIT.to_string())
        .map_err(failed(format!("write {}", max.display())))?;
    Ok(Some(cg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };

    /// Runs a classic BPF seccomp program (the instructions these filters use) on
    /// (arch, nr, low halves of args[0..4]).
    fn eval(prog: &[(u16, u8, u8, u32)], arch: u32, nr: u32, args: [u32; 4]) -> u32 {
        run(prog, arch, nr, args).0
    }

    /// The result and the number of instructions executed.
    fn run(prog: &[(u16, u8, u8, u32)], arch: u32, nr: u32, args: [u32; 4]) -> (u32, usize) {
        let mut a = 0u32;
        let mut pc = 0usize;
        for steps in 1.. {
            let (code, jt, jf, k) = prog[pc];
            pc += 1;
            let jump = |taken: bool| if taken { jt as usize } else { jf as usize };
            match code {
                LD_W_ABS => {
                    a = match k {
                        DATA_NR => nr,
                        DATA_ARCH => arch,
                        16 | 24 | 32 | 40 => args[(k as usize - 16) / 8],
                        // High halves: 0.
                        20 | 28 | 36 | 44 => 0,
                        _ => panic!("load of offset {k}"),
                    }
                }
                JEQ_K => pc += jump(a == k),
                JGE_K => pc += jump(a >= k),
                0x25 => pc += jump(a > k), // JGT
                JSET_K => pc += jump(a & k != 0),
                0x05 => pc += k as usize, // JA
                0x54 => a &= k,           // ALU AND K
                RET_K => return (k, steps),
                _ => panic!("instruction {code:#x}"),
            }
        }
        unreachable!()
    }

    fn ours() -> Vec<(u16, u8, u8, u32)> {
        compile(audit_arch().unwrap())
            .iter()
            .map(|i| (i.code, i.jt, i.jf, i.k))
            .collect()
    }

    /// The same policy written with seccompiler (one filter per errno, as seccompiler
    /// gives all rules of a filter one action): the reference the tree is checked against.
    fn reference() -> Vec<Vec<(u16, u8, u8, u32)>> {
        let arch = TargetArch::try_from(std::env::consts::ARCH).unwrap();
        let cond = |arg: u32, bit: u32| {
            SeccompCondition::new(
                arg as u8,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(bit as u64),
                bit as u64,
            )
            .unwrap()
        };
        let bits = |mask: u32| (0..32).map(|b| 1u32 << b).filter(move |b| mask & b != 0);
        let mut eperm: std::collections::BTreeMap<i64, Vec<SeccompRule>> = denied_syscalls()
            .into_iter()
            .map(|nr| (nr, Vec::new()))
            .collect();
        let mut enosys: std::collections::BTreeMap<i64, Vec<SeccompRule>> =
            [(libc::SYS_clone3, Vec::new())].into_iter().collect();
        let mut conditional = set_id_rules();
        conditional.push((
            libc::SYS_clone,
            Rule::ArgBits {
                arg: 0,
                mask: NAMESPACE_FLAGS,
            },
        ));
        conditional.push((libc::SYS_seccomp, listener_rule()));
        for (nr, rule) in conditional {
            match rule {
                Rule::Errno(e) => {
                    assert_eq!(e, libc::ENOSYS as u32);
                    enosys.insert(nr, Vec::new());
                }
                Rule::ArgBits { arg, mask } => {
                    let rules = bits(mask)
                        .map(|b| SeccompRule::new(vec![cond(arg, b)]).unwrap())
                        .collect();
                    eperm.insert(nr, rules);
                }
                Rule::CreateWith { flags, mode, mask } => {
                    let rules = bits(CREATE_FLAGS)
                        .flat_map(|f| bits(mask).map(move |m| (f, m)))
                        .map(|(f, m)| {
                            SeccompRule::new(vec![cond(flags, f), cond(mode, m)]).unwrap()
                        })
                        .collect();
                    eperm.insert(nr, rules);
                }
                Rule::Notify { .. } => unreachable!("the main filter notifies nothing"),
            }
        }
        let filter = |rules, errno: i32| {
            SeccompFilter::new(
                rules,
                SeccompAction::Allow,
                SeccompAction::Errno(errno as u32),
                arch,
            )
            .unwrap()
        };
        [filter(eperm, libc::EPERM), filter(enosys, libc::ENOSYS)]
            .into_iter()
            .map(|f| {
                BpfProgram::try_from(f)
                    .unwrap()
                    .iter()
                    .map(|i| (i.code, i.jt, i.jf, i.k))
                    .collect()
            })
            .collect()
    }

    /// Argument vectors: each argument alone, and each pair, over values that matter
    /// (namespace flags, O_CREAT/O_TMPFILE, setuid/setgid modes) and some that do not.
    fn arg_samples() -> Vec<[u32; 4]> {
        let values = [
            0,
            libc::SIGCHLD as u32,
            libc::CLONE_VM as u32 | libc::CLONE_THREAD as u32 | libc::CLONE_SIGHAND as u32,
            libc::CLONE_NEWUSER as u32,
            libc::CLONE_NEWNS as u32 | libc::SIGCHLD as u32,
            libc::CLONE_NEWPID as u32,
            libc::CLONE_NEWNET as u32,
            libc::CLONE_NEWCGROUP as u32,
            CLONE_NEWTIME,
            libc::O_CREAT as u32,
            libc::O_TMPFILE as u32,
            (libc::O_WRONLY | libc::O_TRUNC) as u32,
            0o755,
            0o4755,
            0o2750,
            u32::MAX,
        ];
        let mut out = Vec::new();
        for i in 0..4 {
            for &v in &values {
                let mut a = [0; 4];
                a[i] = v;
                out.push(a);
                for j in i + 1..4 {
                    for &w in &values {
                        let mut b = a;
                        b[j] = w;
                        out.push(b);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn the_tree_decides_like_seccompilers_linear_filters() {
        let arch = audit_arch().unwrap();
        let ours = ours();
        let reference = reference();
        let samples = arg_samples();
        let mut denied = 0;
        for nr in 0..1024u32 {
            for &args in &samples {
                let got = eval(&ours, arch, nr, args);
                // Several filters: the kernel takes the most restrictive (ERRNO < ALLOW).
                let want = reference
                    .iter()
                    .map(|p| eval(p, arch, nr, args))
                    .min()
                    .unwrap();
                assert_eq!(got, want, "nr {nr} args {args:x?}");
                denied += usize::from(got != RET_ALLOW);
            }
        }
        assert!(denied > 40 * samples.len(), "{denied}");
        // Another architecture's calls kill the process, as seccompiler's arch check does.
        assert_eq!(eval(&ours, 0x4000_0003, 1, [0; 4]), RET_KILL_PROCESS);
        assert_eq!(
            eval(&reference[0], 0x4000_0003, 1, [0; 4]),
            RET_KILL_PROCESS
        );
    }

    #[test]
    fn x32_numbers_fail_on_x86_64() {
        let ours = ours();
        let arch = audit_arch().unwrap();
        let getpid = X32_SYSCALL_BIT | libc::SYS_getpid as u32;
        let want = if cfg!(target_arch = "x86_64") {
            RET_ERRNO | libc::ENOSYS as u32
        } else {
            RET_ALLOW
        };
        assert_eq!(eval(&ours, arch, getpid, [0; 4]), want);
    }

    #[test]
    fn every_decision_is_a_short_walk() {
        // The kernel emulates the filter for every syscall number when it is installed; the
        // binary search keeps each walk to O(log n) comparisons (a linear chain of the ~50
        // rules walks ~50 for every allowed call).
        let ours = ours();
        let arch = audit_arch().unwrap();
        let longest = (0..1024)
            .map(|nr| run(&ours, arch, nr, [0; 4]).1)
            .max()
            .unwrap();
        assert!(longest <= 16, "{longest} instructions");
        let linear = (0..1024)
            .map(|nr| run(&reference()[0], arch, nr, [0; 4]).1)
            .max()
            .unwrap();
        assert!(linear > 3 * longest, "{linear} vs {longest}");
    }

    #[test]
    fn the_observing_filter_stops_exactly_the_path_calls() {
        let arch = audit_arch().unwrap();
        let prog: Vec<(u16, u8, u8, u32)> = compile_observer(arch)
            .iter()
            .map(|i| (i.code, i.jt, i.jf, i.k))
            .collect();
        let calls: Vec<&crate::observe::Call> = crate::observe::calls().collect();
        for nr in 0..1024u32 {
            let call = calls.iter().find(|c| c.nr as u32 == nr);
            let got = eval(&prog, arch, nr, [0; 4]);
            let want = if call.is_some() {
                RET_USER_NOTIF
            } else {
                RET_ALLOW
            };
            assert_eq!(got, want, "nr {nr}");
            // `fstat`-like calls on a descriptor are let through.
            if let Some(arg) = call.and_then(|c| c.unless_empty_path) {
                let mut args = [0; 4];
                args[arg as usize] = libc::AT_EMPTY_PATH as u32;
                assert_eq!(eval(&prog, arch, nr, args), RET_ALLOW, "nr {nr}");
                args[arg as usize] = libc::AT_SYMLINK_NOFOLLOW as u32;
                assert_eq!(eval(&prog, arch, nr, args), RET_USER_NOTIF, "nr {nr}");
            }
        }
        assert_eq!(
            eval(&prog, arch, libc::SYS_openat as u32, [0; 4]),
            RET_USER_NOTIF
        );
        // Other architectures are the main filter's (which kills them).
        assert_eq!(eval(&prog, 0x4000_0003, 5, [0; 4]), RET_ALLOW);
    }
}
