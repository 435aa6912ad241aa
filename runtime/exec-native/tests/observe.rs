//! Observed runs: every path a native action's processes open, stat, probe, list, execute,
//! rename, create or remove is recorded (seccomp user notification), for dynamic and static
//! programs alike, and the action sees what it would see unobserved.

use std::path::{Path, PathBuf};
use std::time::Duration;

use wbuild_exec_native::{AccessKind, Mount, NativeOutcome, NativeRequest, Observation, run};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A workspace at /work (read-only) with `a.txt`, `dir/b.txt`, `dir/sub/`, and a writable
/// `/work/out`; the script runs observed in /work.
fn observed(ws: &Path, script: &str) -> (NativeOutcome, Observation) {
    let out = ws.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let mut mounts = wbuild_exec_native::host_toolchain_mounts();
    for name in ["a.txt", "dir", "prog.c"] {
        if ws.join(name).exists() {
            mounts.push(Mount {
                host: ws.join(name),
                sandbox: PathBuf::from("/work").join(name),
                writable: false,
            });
        }
    }
    mounts.push(Mount {
        host: out,
        sandbox: "/work/out".into(),
        writable: true,
    });
    let req = NativeRequest {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: Vec::new(),
        mounts,
        scratch: vec!["/work".into()],
        cwd: "/work".into(),
        source_date_epoch: 1_700_000_000,
        timeout: Duration::from_secs(120),
        observe: true,
    };
    let o = run(&req).unwrap();
    assert_eq!(
        o.exit_code,
        Some(0),
        "stdout: {}\nstderr: {}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let obs = o
        .observed
        .clone()
        .expect("an observed run reports its accesses");
    (o, obs)
}

fn workspace() -> tempfile::TempDir {
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(ws.path().join("a.txt"), "A\n").unwrap();
    std::fs::create_dir_all(ws.path().join("dir/sub")).unwrap();
    std::fs::write(ws.path().join("dir/b.txt"), "B\n").unwrap();
    ws
}

fn has(obs: &Observation, kind: AccessKind, path: &str) -> bool {
    obs.accesses.iter().any(|(k, p)| *k == kind && p == path)
}

/// Asserts that every one of `want` was recorded.
fn assert_has_all(obs: &Observation, want: &[(AccessKind, &str)]) {
    for (kind, path) in want {
        assert!(
            has(obs, *kind, path),
            "no {kind:?} {path} in\n{}",
            show(obs)
        );
    }
}

fn show(obs: &Observation) -> String {
    obs.accesses
        .iter()
        .map(|(k, p)| format!("{k:?} {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_shell_script_is_observed_exactly() {
    let ws = workspace();
    let (o, obs) = observed(
        ws.path(),
        "cat a.txt; ls dir; test -e missing.h || echo no; cat nothere 2>/dev/null; \
         echo x > out/o.tmp && mv out/o.tmp out/o; cd dir && cat ../a.txt b.txt; \
         mkdir ../out/d && rmdir ../out/d",
    );
    assert_eq!(text(&o.stdout), "A\nb.txt\nsub\nno\nA\nB\n");
    let want = [
        (AccessKind::Read, "/work/a.txt"),
        (AccessKind::List, "/work/dir"),
        (AccessKind::Missing, "/work/missing.h"),
        (AccessKind::Missing, "/work/nothere"),
        (AccessKind::Write, "/work/out/o.tmp"),
        (AccessKind::Write, "/work/out/o"),
        (AccessKind::Read, "/work/dir/b.txt"),
        (AccessKind::Write, "/work/out/d"),
        (AccessKind::Read, "/usr/bin/cat"),
    ];
    for (kind, path) in want {
        assert!(
            has(&obs, kind, path),
            "no {kind:?} {path} in\n{}",
            show(&obs)
        );
    }
    // `cd dir` then `../a.txt`: one path, the same as `a.txt` from /work.
    assert!(!obs.accesses.iter().any(|(_, p)| p.contains("..")));
    assert!(obs.notifications > 0 && !obs.truncated);
    // The files the action wrote are there.
    assert_eq!(std::fs::read(ws.path().join("out/o")).unwrap(), b"x\n");
}

#[test]
fn long_paths_are_observed_whole() {
    // Paths longer than the observer's first read of an action's memory (256 bytes), made
    // and probed by the action; one of 4,004 bytes nearly fills PATH_MAX.
    let ws = workspace();
    let seg = "d".repeat(60);
    let deep: Vec<String> = (0..6).map(|i| format!("{seg}{i}")).collect();
    let dir = format!("out/{}", deep.join("/"));
    let long_name = "n".repeat(250);
    let very_long = format!("/tmp/{}", vec!["m".repeat(199); 20].join("/"));
    assert_eq!(very_long.len(), 4004);
    let script = format!(
        "mkdir -p {dir} && echo x > {dir}/f && cat {dir}/f >/dev/null && \
         test -e {dir}/{long_name} || test -e {very_long} || echo done"
    );
    let (o, obs) = observed(ws.path(), &script);
    assert_eq!(text(&o.stdout), "done\n");
    let abs = format!("/work/{dir}");
    assert!(abs.len() > 256);
    assert_has_all(
        &obs,
        &[
            (AccessKind::Write, format!("{abs}/f").as_str()),
            (AccessKind::Read, format!("{abs}/f").as_str()),
            (AccessKind::Missing, format!("{abs}/{long_name}").as_str()),
            (AccessKind::Missing, very_long.as_str()),
        ],
    );
}

#[test]
fn a_static_program_is_observed_too() {
    // A static binary makes its system calls itself (no libc to preload into): the
    // kernel's filter still stops them.
    let ws = workspace();
    std::fs::write(
        ws.path().join("prog.c"),
        r#"
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void) {
    char buf[8];
    long fd = syscall(SYS_openat, AT_FDCWD, "a.txt", O_RDONLY);
    if (fd < 0 || read((int)fd, buf, sizeof buf) != 2) return 1;
    long dir = syscall(SYS_openat, AT_FDCWD, "dir", O_RDONLY | O_DIRECTORY);
    struct stat st;
    if (fstatat((int)dir, "b.txt", &st, 0) != 0) return 2;
    if (fstatat((int)dir, "sub/none", &st, 0) == 0) return 3;
    return 0;
}
"#,
    )
    .unwrap();
    let (_, obs) = observed(
        ws.path(),
        "gcc -static -O -o /tmp/prog prog.c 2>/dev/null || gcc -O -o /tmp/prog prog.c; \
         cd out && /tmp/prog_missing 2>/dev/null; cd /work && /tmp/prog",
    );
    assert_has_all(
        &obs,
        &[
            (AccessKind::Read, "/work/a.txt"),
            (AccessKind::Stat, "/work/dir"),
            (AccessKind::Stat, "/work/dir/b.txt"),
            (AccessKind::Missing, "/work/dir/sub/none"),
            (AccessKind::Missing, "/tmp/prog_missing"),
            (AccessKind::Read, "/tmp/prog"),
            (AccessKind::Read, "/work/prog.c"),
            (AccessKind::Write, "/tmp/prog"),
        ],
    );
}

#[test]
fn an_unobserved_run_reports_nothing() {
    let mut req = NativeRequest {
        argv: vec!["true".into()],
        env: Vec::new(),
        mounts: wbuild_exec_native::host_toolchain_mounts(),
        scratch: Vec::new(),
        cwd: "/".into(),
        source_date_epoch: 0,
        timeout: Duration::from_secs(30),
        observe: false,
    };
    assert_eq!(run(&req).unwrap().observed, None);
    req.observe = true;
    let o = run(&req).unwrap();
    assert!(o.success());
    let obs = o.observed.unwrap();
    assert!(
        has(&obs, AccessKind::Read, "/usr/bin/true"),
        "{}",
        show(&obs)
    );
}

#[test]
fn many_threads_and_processes_are_observed_without_deadlock() {
    // 40 processes at once, each touching its own file: every access arrives, and the run
    // ends (the supervisor answers calls from any of them in any order).
    let ws = workspace();
    let (_, obs) = observed(
        ws.path(),
        "for i in $(seq 1 40); do (test -e /work/p$i; cat a.txt >/dev/null) & done; wait",
    );
    for i in 1..=40 {
        let p = format!("/work/p{i}");
        assert!(
            has(&obs, AccessKind::Missing, &p),
            "no {p} in\n{}",
            show(&obs)
        );
    }
}

#[test]
fn a_hostile_action_cannot_flood_or_confuse_the_observer() {
    // More distinct paths than an observation keeps, a path at an unmapped address, and a
    // path longer than PATH_MAX: the run ends normally, the observation says it is
    // truncated (the caller then keeps only the full key), and the calls fail as they
    // would unobserved.
    let ws = workspace();
    std::fs::write(
        ws.path().join("prog.c"),
        r#"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
static char big[9000];
int main(void) {
    struct stat st;
    char p[64];
    for (int i = 0; i < 100100; i++) {
        snprintf(p, sizeof p, "/work/none%d", i);
        if (stat(p, &st) == 0) return 1;
    }
    if (syscall(SYS_openat, AT_FDCWD, (char *)8, O_RDONLY) >= 0 || errno != EFAULT) return 2;
    memset(big, 'a', sizeof big - 1);
    if (open(big, O_RDONLY) >= 0 || errno != ENAMETOOLONG) return 3;
    return 0;
}
"#,
    )
    .unwrap();
    let (_, obs) = observed(ws.path(), "gcc -O -o /tmp/flood prog.c && /tmp/flood");
    assert!(obs.truncated);
    assert_eq!(obs.accesses.len(), wbuild_exec_native::MAX_ACCESSES);
    assert!(obs.notifications > 100_000);
}

#[test]
fn relative_paths_follow_chdir_fchdir_and_exec() {
    // The observer keeps the working directory and the memory of the thread that called
    // last: `fchdir` and `chdir` make it read the directory again, and a process that
    // `posix_spawn`s (sharing its parent's memory until `execve`) and then runs another
    // image is read from its own memory.
    let ws = workspace();
    std::fs::write(
        ws.path().join("prog.c"),
        r#"
#include <fcntl.h>
#include <spawn.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
extern char **environ;
int main(int argc, char **argv) {
    struct stat st;
    if (argc > 1) return stat("from_the_child", &st) == 0 ? 9 : 0;
    int d = open("dir", O_RDONLY | O_DIRECTORY);
    if (d < 0 || stat("a.txt", &st) != 0) return 1;
    if (fchdir(d) != 0) return 2;
    if (stat("b.txt", &st) != 0) return 3;
    if (stat("none_after_fchdir", &st) == 0) return 4;
    if (chdir("sub") != 0) return 5;
    if (stat("none_after_chdir", &st) == 0) return 6;
    char *child[] = {"/tmp/rel", "child", 0};
    pid_t pid;
    if (posix_spawn(&pid, "/tmp/rel", 0, 0, child, environ) != 0) return 7;
    int status;
    if (waitpid(pid, &status, 0) != pid || status != 0) return 8;
    return stat("after_the_child", &st) == 0 ? 10 : 0;
}
"#,
    )
    .unwrap();
    let (_, obs) = observed(
        ws.path(),
        "gcc -O -o /tmp/rel prog.c && cd /work && /tmp/rel",
    );
    assert_has_all(
        &obs,
        &[
            (AccessKind::Stat, "/work/a.txt"),
            (AccessKind::Stat, "/work/dir/b.txt"),
            (AccessKind::Missing, "/work/dir/none_after_fchdir"),
            (AccessKind::Missing, "/work/dir/sub/none_after_chdir"),
            (AccessKind::Missing, "/work/dir/sub/from_the_child"),
            (AccessKind::Missing, "/work/dir/sub/after_the_child"),
        ],
    );
    for wrong in [
        "/work/b.txt",
        "/work/none_after_fchdir",
        "/work/from_the_child",
    ] {
        assert!(
            !obs.accesses.iter().any(|(_, p)| p == wrong),
            "{wrong} recorded in\n{}",
            show(&obs)
        );
    }
}
