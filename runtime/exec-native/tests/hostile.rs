//! Hostile actions: each test runs an attack inside the native sandbox (as CI does, as root)
//! and checks both that it failed and that nothing outside the sandbox changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use wbuild_exec_native::{Mount, NativeOutcome, NativeRequest, PIDS_LIMIT, run};

fn req(argv: &[&str]) -> NativeRequest {
    NativeRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: Vec::new(),
        mounts: wbuild_exec_native::host_toolchain_mounts(),
        scratch: Vec::new(),
        cwd: PathBuf::from("/"),
        source_date_epoch: 1_700_000_000,
        timeout: Duration::from_secs(120),
        observe: false,
    }
}

fn sh(script: &str) -> NativeRequest {
    req(&["sh", "-c", script])
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn show(out: &NativeOutcome) -> String {
    format!(
        "stdout: {}\nstderr: {}\nexit {:?} signal {:?}",
        text(&out.stdout),
        text(&out.stderr),
        out.exit_code,
        out.signal
    )
}

/// A unique name for files the tests plant on the host.
fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("wbuild-hostile-{tag}-{}-{nanos}", std::process::id())
}

/// Removes the planted host files when the test ends, however it ends.
struct Planted(Vec<PathBuf>);

impl Drop for Planted {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p).or_else(|_| std::fs::remove_dir_all(p));
        }
    }
}

/// Runs `script` with the C program `src` mounted at /src/prog.c; the script compiles it
/// with the host gcc inside the sandbox.
fn with_c(src: &str, script: &str) -> NativeOutcome {
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("prog.c");
    std::fs::write(&c, src).unwrap();
    let mut r = sh(script);
    r.mounts.push(Mount {
        host: c,
        sandbox: "/src/prog.c".into(),
        writable: false,
    });
    run(&r).unwrap()
}

/// Lines `name=value` of the action's stdout.
fn results(out: &NativeOutcome) -> BTreeMap<String, String> {
    text(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn remounting_a_read_only_input_rw_fails_and_the_blob_is_unchanged() {
    let cas = tempfile::tempdir().unwrap();
    let blob = cas.path().join("blob");
    std::fs::write(&blob, "reference bytes\n").unwrap();
    let mut r = sh(
        "mount -o remount,bind,rw /work/in/blob.txt && echo REMOUNTED; \
         mount -o remount,rw /work/in/blob.txt && echo REMOUNTED; \
         umount -l /work/in/blob.txt && echo UNMOUNTED; \
         mount -o remount,rw / && echo REMOUNTED-ROOT; \
         echo PWNED > /work/in/blob.txt && echo WROTE; \
         cat /work/in/blob.txt",
    );
    r.scratch.push("/work".into());
    r.mounts.push(Mount {
        host: blob.clone(),
        sandbox: "/work/in/blob.txt".into(),
        writable: false,
    });
    let out = run(&r).unwrap();
    let s = text(&out.stdout);
    assert_eq!(s, "reference bytes\n", "{}", show(&out));
    assert!(
        text(&out.stderr).contains("ermission denied"),
        "{}",
        show(&out)
    );
    assert_eq!(std::fs::read_to_string(&blob).unwrap(), "reference bytes\n");
    assert_eq!(std::fs::read_dir(cas.path()).unwrap().count(), 1);
}

#[test]
fn remounting_the_toolchain_rw_fails_and_host_usr_is_unchanged() {
    let name = unique("usr");
    let host = Path::new("/usr").join(&name);
    let _planted = Planted(vec![host.clone(), Path::new("/usr/local").join(&name)]);
    let script = format!(
        "mount -o remount,bind,rw /usr && echo REMOUNTED; \
         umount -l /usr/local && echo UNMOUNTED; \
         mount -t tmpfs none /usr/lib && echo MOUNTED; \
         touch /usr/{name} && echo WROTE; \
         mkdir /usr/local/{name} && echo WROTE-LOCAL; \
         echo done"
    );
    let out = run(&sh(&script)).unwrap();
    assert_eq!(text(&out.stdout), "done\n", "{}", show(&out));
    assert!(!host.exists(), "{} appeared on the host", host.display());
    assert!(!Path::new("/usr/local").join(&name).exists());
}

#[test]
fn namespace_tools_are_refused() {
    let out = run(&sh("unshare -U true && echo UNSHARE-U; \
         unshare -m true && echo UNSHARE-M; \
         unshare -Ur true && echo UNSHARE-UR; \
         unshare -p -f true && echo UNSHARE-P; \
         nsenter -t 1 -m true && echo NSENTER-INIT; \
         nsenter --mount=/proc/self/ns/mnt true && echo NSENTER-SELF; \
         chroot /usr true && echo CHROOT; \
         mkdir -p /tmp/new/old && pivot_root /tmp/new /tmp/new/old && echo PIVOT; \
         echo done"))
    .unwrap();
    assert_eq!(text(&out.stdout), "done\n", "{}", show(&out));
}

const SYSCALLS_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

static void res(const char *name, long r) {
    printf("%s=%d\n", name, r < 0 ? errno : 0);
    fflush(stdout);
}

/* A raw clone: the child exits at once, the parent reaps it. */
static long try_clone(unsigned long flags) {
    long r = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
    if (r == 0) _exit(0);
    if (r > 0) waitpid(r, 0, 0);
    return r < 0 ? r : 0;
}

static void *thread_main(void *arg) { return arg; }

int main(void) {
    char buf[64];
    res("mount", syscall(SYS_mount, 0, "/usr", 0, MS_REMOUNT | MS_BIND, 0));
    res("umount2", syscall(SYS_umount2, "/usr/local", MNT_DETACH));
    res("unshare_user", syscall(SYS_unshare, CLONE_NEWUSER));
    res("unshare_mnt", syscall(SYS_unshare, CLONE_NEWNS));
    res("clone_newuser", try_clone(CLONE_NEWUSER));
    res("clone_newns", try_clone(CLONE_NEWNS));
    res("clone_newnet", try_clone(CLONE_NEWNET));
    res("clone_newcgroup", try_clone(CLONE_NEWCGROUP));
    res("clone_newtime", try_clone(0x80));
    res("clone_plain", try_clone(0));
    struct clone_args ca;
    memset(&ca, 0, sizeof ca);
    ca.exit_signal = SIGCHLD;
    ca.flags = CLONE_NEWUSER;
    long c3 = syscall(SYS_clone3, &ca, sizeof ca);
    if (c3 == 0) _exit(0);
    res("clone3", c3);
    pid_t f = fork();
    if (f == 0) _exit(0);
    if (f > 0) waitpid(f, 0, 0);
    res("fork", f);
    pthread_t t;
    int e = pthread_create(&t, 0, thread_main, 0);
    if (e == 0) pthread_join(t, 0);
    errno = e;
    res("pthread", e ? -1 : 0);
    int ns = open("/proc/self/ns/mnt", O_RDONLY);
    res("setns", syscall(SYS_setns, ns, 0));
    res("pivot_root", syscall(SYS_pivot_root, ".", "."));
    res("chroot", syscall(SYS_chroot, "/tmp"));
    res("ptrace_attach_init", syscall(SYS_ptrace, 16 /* PTRACE_ATTACH */, 1, 0, 0));
    res("ptrace_traceme", syscall(SYS_ptrace, 0 /* PTRACE_TRACEME */, 0, 0, 0));
    struct iovec l = {buf, sizeof buf}, rm = {(void *)0x400000, sizeof buf};
    res("process_vm_readv", syscall(SYS_process_vm_readv, 1, &l, 1, &rm, 1, 0));
    res("process_vm_writev", syscall(SYS_process_vm_writev, 1, &l, 1, &rm, 1, 0));
    res("open_proc1_mem", open("/proc/1/mem", O_RDONLY));
    res("readlink_proc1_root", readlink("/proc/1/root", buf, sizeof buf));
    res("keyctl", syscall(SYS_keyctl, 0, 0, 0, 0, 0));
    res("add_key", syscall(SYS_add_key, "user", "k", "v", 1, -2));
    res("request_key", syscall(SYS_request_key, "user", "k", 0, 0));
    res("bpf", syscall(SYS_bpf, 0, 0, 0));
    res("perf_event_open", syscall(SYS_perf_event_open, 0, 0, -1, -1, 0));
    res("userfaultfd", syscall(SYS_userfaultfd, 0));
    res("open_tree", syscall(SYS_open_tree, AT_FDCWD, "/usr", 1 /* OPEN_TREE_CLONE */));
    res("fsopen", syscall(SYS_fsopen, "tmpfs", 0));
    res("fspick", syscall(SYS_fspick, AT_FDCWD, "/usr", 0));
    res("move_mount", syscall(SYS_move_mount, -1, "", -1, "/usr", 0));
    res("mount_setattr", syscall(SYS_mount_setattr, AT_FDCWD, "/usr", 0, 0, 0));
    res("init_module", syscall(SYS_init_module, 0, 0, ""));
    res("finit_module", syscall(SYS_finit_module, -1, "", 0));
    res("delete_module", syscall(SYS_delete_module, "x", 0));
    res("kexec_load", syscall(SYS_kexec_load, 0, 0, 0, 0));
    res("reboot", syscall(SYS_reboot, 0xfee1dead, 672274793, 0x4321fedc, 0));
    res("swapon", syscall(SYS_swapon, "/tmp/swap", 0));
    res("acct", syscall(SYS_acct, 0));
    res("syslog", syscall(SYS_syslog, 3, buf, sizeof buf));
    res("settimeofday", syscall(SYS_settimeofday, 0, 0));
    res("clock_settime", syscall(SYS_clock_settime, 0, 0));
    res("name_to_handle_at", syscall(SYS_name_to_handle_at, AT_FDCWD, "/", 0, 0, 0));
    res("open_by_handle_at", syscall(SYS_open_by_handle_at, AT_FDCWD, 0, 0));
    res("io_uring_setup", syscall(SYS_io_uring_setup, 1, 0));
    res("mknod_char", mknod("/tmp/null2", S_IFCHR | 0666, makedev(1, 3)));
    res("mknod_block", mknod("/tmp/sda", S_IFBLK | 0600, makedev(8, 0)));
    res("mkfifo", mkfifo("/tmp/fifo", 0600));
    int tf = open("/tmp/plain", O_CREAT | O_WRONLY, 0644);
    res("open_create_plain", tf);
    res("chmod_plain", chmod("/tmp/plain", 0755));
    res("chmod_setuid", chmod("/tmp/plain", 04755));
    res("chmod_setgid", chmod("/tmp/plain", 02755));
    res("fchmod_setuid", fchmod(tf, 04755));
    res("fchmodat_setuid", syscall(SYS_fchmodat, AT_FDCWD, "/tmp/plain", 04755));
    res("fchmodat2_setuid", syscall(452, AT_FDCWD, "/tmp/plain", 04755, 0));
    res("open_create_setuid", open("/tmp/suid", O_CREAT | O_WRONLY, 04755));
    res("openat_create_setgid",
        syscall(SYS_openat, AT_FDCWD, "/tmp/sgid", O_CREAT | O_WRONLY, 02755));
    res("mknod_setuid", mknod("/tmp/suid3", S_IFREG | 04755, 0));
    res("openat2", syscall(437, AT_FDCWD, "/tmp/plain", buf, 24));
    res("open_existing", open("/tmp/plain", O_RDONLY));
    struct stat st;
    stat("/tmp/plain", &st);
    printf("plain_mode=%o\n", st.st_mode & 07777);
    /* A filter of its own with a listener could answer (and hide) file-system calls from
       wbuild's observer; one without a listener is harmless. */
    struct sock_filter allow[] = {BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
    struct sock_fprog prog = {1, allow};
    res("seccomp_listener", syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                                    SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog));
    res("seccomp_plain", syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog));
#ifdef __x86_64__
    res("x32_getpid", syscall(0x40000000 | SYS_getpid));
    res("iopl", syscall(SYS_iopl, 3));
#endif
    return 0;
}
"#;

#[test]
fn dangerous_syscalls_fail_with_an_errno() {
    let out = with_c(
        SYSCALLS_C,
        "gcc -O -pthread -o /tmp/prog /src/prog.c && /tmp/prog",
    );
    assert_eq!(out.exit_code, Some(0), "{}", show(&out));
    let got = results(&out);
    let eperm = libc::EPERM.to_string();
    let enosys = libc::ENOSYS.to_string();
    let mut want: BTreeMap<&str, String> = BTreeMap::new();
    for name in [
        "mount",
        "umount2",
        "unshare_user",
        "unshare_mnt",
        "clone_newuser",
        "clone_newns",
        "clone_newnet",
        "clone_newcgroup",
        "clone_newtime",
        "setns",
        "pivot_root",
        "chroot",
        "ptrace_attach_init",
        "ptrace_traceme",
        "process_vm_readv",
        "process_vm_writev",
        "keyctl",
        "add_key",
        "request_key",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "open_tree",
        "fsopen",
        "fspick",
        "move_mount",
        "mount_setattr",
        "init_module",
        "finit_module",
        "delete_module",
        "kexec_load",
        "reboot",
        "swapon",
        "acct",
        "syslog",
        "settimeofday",
        "clock_settime",
        "name_to_handle_at",
        "open_by_handle_at",
        "io_uring_setup",
        "seccomp_listener",
        "mknod_char",
        "mknod_block",
    ] {
        want.insert(name, eperm.clone());
    }
    want.insert("clone3", enosys.clone());
    // What must keep working: fork, threads (glibc falls back from clone3 to clone), fifos.
    for name in [
        "clone_plain",
        "fork",
        "pthread",
        "mkfifo",
        "open_create_plain",
        "chmod_plain",
        "open_existing",
        "seccomp_plain",
    ] {
        want.insert(name, "0".into());
    }
    // No setuid/setgid bits: the action's files are the caller's on the host.
    for name in [
        "chmod_setuid",
        "chmod_setgid",
        "fchmod_setuid",
        "fchmodat_setuid",
        "fchmodat2_setuid",
        "open_create_setuid",
        "openat_create_setgid",
        "mknod_setuid",
    ] {
        want.insert(name, eperm.clone());
    }
    want.insert("openat2", enosys.clone());
    want.insert("plain_mode", "755".into());
    // Init is not dumpable: the kernel's ptrace access check refuses these.
    want.insert("open_proc1_mem", libc::EACCES.to_string());
    want.insert("readlink_proc1_root", libc::EACCES.to_string());
    if cfg!(target_arch = "x86_64") {
        want.insert("x32_getpid", enosys.clone());
        want.insert("iopl", eperm.clone());
    }
    for (name, errno) in &want {
        assert_eq!(
            got.get(*name),
            Some(errno),
            "{name}: want errno {errno}\n{}",
            show(&out)
        );
    }
}

#[test]
fn proc_cannot_be_written() {
    let out = run(&sh("v=$(cat /proc/sys/kernel/printk_ratelimit); \
         echo $v > /proc/sys/kernel/printk_ratelimit && echo WROTE-SYSCTL; \
         echo wbuild-x > /proc/sys/kernel/hostname && echo WROTE-HOSTNAME; \
         echo h > /proc/sysrq-trigger && echo WROTE-SYSRQ; \
         echo 1000 > /proc/self/oom_score_adj && echo WROTE-OOM; \
         ls /proc/1/root/ && echo READ-INIT-ROOT; \
         cat /proc/1/environ && echo READ-INIT-ENV; \
         readlink /proc/1/fd/* && echo READ-INIT-FD; \
         echo via-proc > /proc/self/fd/1; hostname"))
    .unwrap();
    assert_eq!(text(&out.stdout), "via-proc\nwbuild\n", "{}", show(&out));
    let host_value = std::fs::read_to_string("/proc/sys/kernel/printk_ratelimit").unwrap();
    assert!(!host_value.trim().is_empty());
}

#[test]
fn no_privileges_even_through_setuid_files() {
    let outputs = tempfile::tempdir().unwrap();
    let src = r#"
#include <stdio.h>
#include <unistd.h>
int main(void) {
    printf("euid=%d\n", (int)geteuid());
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    while (fgets(line, sizeof line, f)) {
        char k[64], v[128];
        if (sscanf(line, "%63[^:]:%127s", k, v) == 2) printf("%s=%s\n", k, v);
    }
    return 0;
}
"#;
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("prog.c");
    std::fs::write(&c, src).unwrap();
    let mut r = sh("gcc -O -o /out/status /src/prog.c && { \
         chmod 4755 /out/status && echo CHMOD-SETUID; \
         cp /out/status /tmp/status; chmod u+s,g+s /tmp/status && echo CHMOD-TMP; \
         /out/status; echo --; /tmp/status; }");
    r.mounts.push(Mount {
        host: c,
        sandbox: "/src/prog.c".into(),
        writable: false,
    });
    r.mounts.push(Mount {
        host: outputs.path().into(),
        sandbox: "/out".into(),
        writable: true,
    });
    let out = run(&r).unwrap();
    assert_eq!(out.exit_code, Some(0), "{}", show(&out));
    let s = text(&out.stdout);
    let runs: Vec<&str> = s.split("--\n").collect();
    assert_eq!(runs.len(), 2, "{}", show(&out));
    for run in runs {
        let got: BTreeMap<&str, &str> = run.lines().filter_map(|l| l.split_once('=')).collect();
        for (k, v) in [
            ("NoNewPrivs", "1"),
            ("CapInh", "0000000000000000"),
            ("CapPrm", "0000000000000000"),
            ("CapEff", "0000000000000000"),
            ("CapBnd", "0000000000000000"),
            ("CapAmb", "0000000000000000"),
            ("Seccomp", "2"),
        ] {
            assert_eq!(got.get(k), Some(&v), "{k}\n{}", show(&out));
        }
    }
    assert!(!s.contains("CHMOD"), "{}", show(&out));
    // The file the action left on the host (the caller's: root's, in CI) has no setuid or
    // setgid bit.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(outputs.path().join("status"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o6000, 0, "mode {mode:o}");
}

#[test]
fn strace_of_init_is_refused() {
    // Refused, strace exits at once with 1; attached, it would run until `timeout` stops it.
    let out = run(&sh(
        "command -v strace >/dev/null || { echo no-strace; exit 0; }; \
         timeout 20 strace -p 1 -e trace=none -o /dev/null; echo rc=$?",
    ))
    .unwrap();
    let s = text(&out.stdout);
    assert!(
        !s.contains("no-strace"),
        "strace is not installed on the host: run tests/setup.sh"
    );
    assert_eq!(s, "rc=1\n", "{}", show(&out));
    assert!(
        text(&out.stderr).contains("Operation not permitted"),
        "{}",
        show(&out)
    );
}

#[test]
fn only_stdio_descriptors_reach_the_action() {
    // A descriptor the host process leaked (no close-on-exec), as a careless library might.
    let f = tempfile::NamedTempFile::new().unwrap();
    let path = std::ffi::CString::new(f.path().to_str().unwrap()).unwrap();
    // SAFETY: opening a file we own; closed below.
    let leaked = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
    assert!(leaked > 2);
    // The program the action execs lists its descriptors (leaving out the directory's own).
    let src = r#"
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
int main(void) {
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int mine = dirfd(d), fds[64], n = 0;
    while ((e = readdir(d)) && n < 64)
        if (e->d_name[0] != '.' && atoi(e->d_name) != mine) fds[n++] = atoi(e->d_name);
    for (int i = 0; i < n; i++) printf("%d ", fds[i]);
    return 0;
}
"#;
    let out = with_c(src, "gcc -O -o /tmp/fds /src/prog.c && exec /tmp/fds");
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(leaked) };
    assert_eq!(text(&out.stdout), "0 1 2 ", "{}", show(&out));
}

#[test]
fn process_count_is_bounded_and_a_fork_bomb_does_not_take_the_host_down() {
    // Bounded first: at most 3000 attempts, counted with shell builtins only (no fork).
    // (The subshell exits when a fork fails; its sleeps stay.)
    let mut r = sh(
        "(i=0; while [ $i -lt 3000 ]; do sleep 300 & i=$((i+1)); done) 2>/dev/null; \
         n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; echo $n",
    );
    r.timeout = Duration::from_secs(120);
    let out = run(&r).unwrap();
    let n: u64 = text(&out.stdout).trim().parse().unwrap_or(u64::MAX);
    assert!(
        n <= PIDS_LIMIT,
        "{n} processes in one sandbox (limit {PIDS_LIMIT})\n{}",
        show(&out)
    );
    // Then a real fork bomb, until its deadline.
    let mut r = sh("f() { f | f & }; f; wait");
    r.timeout = Duration::from_secs(5);
    let out = run(&r).unwrap();
    assert!(out.timed_out || out.exit_code.is_some(), "{}", show(&out));
    // The host (and the next sandbox) still work.
    assert!(
        std::process::Command::new("true")
            .status()
            .unwrap()
            .success()
    );
    let out = run(&req(&["true"])).unwrap();
    assert_eq!(out.exit_code, Some(0), "{}", show(&out));
}

#[test]
fn unkeyed_host_directories_are_invisible() {
    let name = unique("planted");
    let dirs = [
        "/usr/local",
        "/usr/local/include",
        "/usr/local/bin",
        "/usr/share",
        "/usr/src",
        "/usr/games",
        "/opt",
        "/etc",
        "/home",
        "/root",
        "/var",
        "/srv",
        "/mnt",
        "/media",
        "/run",
    ];
    let planted: Vec<PathBuf> = dirs
        .iter()
        .map(|d| Path::new(d).join(&name))
        .filter(|p| p.parent().is_some_and(Path::is_dir))
        .collect();
    let _guard = Planted(planted.clone());
    for p in &planted {
        std::fs::write(p, "planted\n").unwrap();
    }
    assert!(planted.iter().any(|p| p.starts_with("/usr/local")));
    assert!(planted.iter().any(|p| p.starts_with("/usr/share")));
    let mut script = String::new();
    for p in &planted {
        script.push_str(&format!("test -e {0} && echo VISIBLE {0}; ", p.display()));
    }
    script.push_str("ls -A /usr/local /usr/share /usr/src /usr/games; echo done");
    let out = run(&sh(&script)).unwrap();
    let s = text(&out.stdout);
    assert!(!s.contains("VISIBLE"), "{}", show(&out));
    assert!(s.ends_with("done\n"), "{}", show(&out));
    // The masks are empty directories.
    assert!(!s.contains(&name), "{}", show(&out));
    // gcc still works, and does not find a header planted in /usr/local/include.
    let header = Path::new("/usr/local/include").join(format!("{name}.h"));
    let _h = Planted(vec![header.clone()]);
    std::fs::write(&header, "#define PLANTED 1\n").unwrap();
    let out = with_c(
        &format!(
            "#include <stdio.h>\n#if __has_include(<{name}.h>)\n#error planted header visible\n\
             #endif\nint main(void) {{ puts(\"compiled\"); return 0; }}\n"
        ),
        "gcc -O -o /tmp/p /src/prog.c && /tmp/p",
    );
    assert_eq!(text(&out.stdout), "compiled\n", "{}", show(&out));
}

/// Why the sandbox needs a pids cgroup when wbuild runs as root: in a fresh user namespace
/// whose root is the host's root, the kernel does not enforce `RLIMIT_NPROC` (it exempts
/// the host's root user), so a fork bomb would only be stopped by the timeout. As any other
/// user, the limit holds.
#[test]
fn rlimit_nproc_alone_does_not_bound_the_host_root() {
    let src = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
static void put(const char *path, const char *s) {
    int fd = open(path, O_WRONLY);
    if (fd >= 0) { if (write(fd, s, strlen(s)) < 0) {} close(fd); }
}
int main(void) {
    char map[64];
    snprintf(map, sizeof map, "0 %d 1\n", (int)geteuid());
    if (unshare(CLONE_NEWUSER) != 0) { perror("unshare"); return 2; }
    put("/proc/self/setgroups", "deny");
    put("/proc/self/uid_map", map);
    struct rlimit rl = {20, 20};
    if (setrlimit(RLIMIT_NPROC, &rl) != 0) { perror("setrlimit"); return 2; }
    pid_t kids[50];
    int n = 0;
    for (int i = 0; i < 50; i++) {
        pid_t p = fork();
        if (p == 0) { pause(); _exit(0); }
        if (p < 0) break;
        kids[n++] = p;
    }
    for (int i = 0; i < n; i++) kill(kids[i], SIGKILL);
    while (wait(0) > 0) {}
    printf("%d\n", n);
    return 0;
}
"#;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("nproc.c"), src).unwrap();
    let exe = dir.path().join("nproc");
    let cc = std::process::Command::new("gcc")
        .arg("-O")
        .arg("-o")
        .arg(&exe)
        .arg(dir.path().join("nproc.c"))
        .output()
        .unwrap();
    assert!(cc.status.success(), "{}", text(&cc.stderr));
    let out = std::process::Command::new(&exe).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let forked: u32 = text(&out.stdout).trim().parse().unwrap();
    // SAFETY: trivial getter.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(
            forked, 50,
            "RLIMIT_NPROC is enforced for root: the cgroup is optional"
        );
    } else {
        assert!(
            forked < 50,
            "RLIMIT_NPROC is not enforced: {forked} of 50 forks"
        );
    }
}
