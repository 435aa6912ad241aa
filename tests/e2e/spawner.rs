//! The sandbox spawner (a small process `wbuild build` forks at startup, which clones each
//! native sandbox's init): when it dies, builds go on without it; when wbuild dies, the
//! sandboxes it started die with it.

use std::process::Stdio;
use std::time::{Duration, Instant};

use super::ws;

/// Pids whose parent is `pid` (from `/proc/*/stat`).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`: comm may hold spaces; the rest follows the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let ppid = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// Pids of processes whose command line contains `needle`.
fn processes_running(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{p}/cmdline"))
            && String::from_utf8_lossy(&cmd)
                .replace('\0', " ")
                .contains(needle)
        {
            out.push(p);
        }
    }
    out
}

fn wait_for(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The spawner killed with SIGKILL while a sandbox it started is running: that action still
/// finishes with its status, and every later action is started without the spawner.
#[test]
fn a_killed_spawner_leaves_the_build_to_finish_without_it() {
    let w = ws();
    let mut build = String::from(
        "genrule(name = \"first\", outs = [\"first.txt\"], \
         cmd = \"sleep 1.5 && echo first > $@\")\n",
    );
    for i in 0..4 {
        let dep = if i == 0 {
            ":first".to_owned()
        } else {
            format!(":n{}", i - 1)
        };
        build.push_str(&format!(
            "genrule(name = \"n{i}\", srcs = [\"{dep}\"], outs = [\"n{i}.txt\"], \
             cmd = \"cat $(location {dep}) > $@ && echo {i} >> $@\")\n"
        ));
    }
    w.write("s/WBUILD", &build);
    let mut child = w
        .cmd(&["build", "-j", "1", "//s:n3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The spawner is the child of wbuild whose children are the sandboxes (wbuild's other
    // children, such as the compiler questions of the host toolchain's identity, come and
    // go). Wait until the first action's sandbox runs.
    let mut spawner = 0;
    wait_for(
        "the first sandbox",
        Duration::from_secs(30),
        || match children_of(child.id())
            .into_iter()
            .find(|&c| !children_of(c).is_empty())
        {
            Some(c) => {
                spawner = c;
                true
            }
            None => false,
        },
    );
    let status = std::process::Command::new("kill")
        .args(["-KILL", &spawner.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(120);
    let out = loop {
        if child.try_wait().unwrap().is_some() {
            break child.wait_with_output().unwrap();
        }
        assert!(Instant::now() < deadline, "the build did not finish");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(w.read("wbuild-out/s/n3.txt"), "first\n0\n1\n2\n3\n");
    // And the next build is a no-op on the same results.
    let (_, ev) = w.events(&["build", "-j", "1", "//s:n3"]);
    assert_eq!(super::finished(&ev)["executed"], 0);
}

/// wbuild killed with SIGKILL while an action runs: the spawner sees wbuild's socket close
/// and kills the sandbox; nothing of the build is left running.
#[test]
fn killing_wbuild_stops_the_sandboxes_it_started() {
    let w = ws();
    let marker = format!("123.{}", std::process::id());
    w.write(
        "s/WBUILD",
        &format!(
            "genrule(name = \"long\", outs = [\"long.txt\"], cmd = \"sleep {marker} && echo done > $@\")\n"
        ),
    );
    let mut child = w
        .cmd(&["build", "//s:long"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let needle = format!("sleep {marker}");
    wait_for("the action to start", Duration::from_secs(30), || {
        !processes_running(&needle).is_empty()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    wait_for(
        "the action to be killed with wbuild",
        Duration::from_secs(10),
        || processes_running(&needle).is_empty(),
    );
}

/// What a sandbox started by the spawner holds open is its own stdio only: not the
/// spawner's request socket, nor the answer sockets, pidfds or pipes of the other sandboxes
/// running at the same time (each init is cloned from the spawner while those are open).
#[test]
fn sandboxes_started_together_hold_no_descriptor_of_the_spawner_or_each_other() {
    let w = ws();
    let mut build = String::new();
    for i in 0..6 {
        // `ls` lists its own descriptors: stdio and the directory it reads (3).
        build.push_str(&format!(
            "genrule(name = \"fd{i}\", outs = [\"fd{i}.txt\"], \
             cmd = \"sleep 0.{i} && ls /proc/self/fd | tr '\\\\n' ' ' > $@\")\n"
        ));
    }
    w.write("f/WBUILD", &build);
    let out = w.run(&["build", "-j", "3", "//f:all"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    for i in 0..6 {
        assert_eq!(
            w.read(&format!("wbuild-out/f/fd{i}.txt")),
            "0 1 2 3 ",
            "fd{i}"
        );
    }
}

/// Runs `wbuild ARGS` in `w` with `tmp` as its temporary directory; it must succeed.
fn build_with_tmpdir(w: &wbuild_tests::TestWorkspace, args: &[&str], tmp: &std::path::Path) {
    let out = wbuild_tests::process::output_with_deadline(
        w.cmd(args).env("TMPDIR", tmp),
        wbuild_tests::process::default_deadline(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "{}", w.report(args, &out));
}

/// The empty directories sandbox roots are mounted on are reused while a build runs and
/// removed when it ends: builds leave nothing in the temporary directory (before, every
/// `wbuild build` that ran a native action left one or more there, thousands a day).
#[test]
fn builds_leave_no_sandbox_roots_in_the_temporary_directory() {
    let w = ws();
    let mut build = String::new();
    for i in 0..4 {
        build.push_str(&format!(
            "genrule(name = \"g{i}\", outs = [\"g{i}.txt\"], cmd = \"echo {i} > $@\")\n"
        ));
    }
    w.write("s/WBUILD", &build);
    let tmp = tempfile::tempdir().unwrap();
    let leftovers = || -> Vec<String> {
        std::fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    for args in [
        &["build", "-j", "2", "//s:all"][..],
        &["build", "-j", "2", "//s:all"][..], // a no-op
    ] {
        build_with_tmpdir(&w, args, tmp.path());
        assert_eq!(leftovers(), Vec::<String>::new(), "after wbuild {args:?}");
    }
    w.write("s/WBUILD", &build.replace("echo 3", "echo three"));
    build_with_tmpdir(&w, &["build", "//s:all"], tmp.path());
    assert_eq!(leftovers(), Vec::<String>::new(), "after an edit");
}

/// Directories pooled by a build that was killed (nothing of its ran at exit) are removed by
/// the next build that starts a sandbox, if they are empty and their owner is gone; those of
/// live processes, those not empty and those wbuild did not name are left.
#[test]
fn a_build_removes_the_empty_sandbox_roots_of_killed_builds() {
    let w = ws();
    w.write(
        "s/WBUILD",
        "genrule(name = \"g\", outs = [\"g.txt\"], cmd = \"echo g > $@\")\n",
    );
    let tmp = tempfile::tempdir().unwrap();
    // A pid that is gone: a child that has exited and been reaped.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let live = std::process::id();
    // Made a minute ago: a sweep leaves the directories of the last few seconds alone.
    let make = |name: &str| {
        let p = tmp.path().join(name);
        std::fs::create_dir(&p).unwrap();
        std::fs::File::open(&p)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(60))
            .unwrap();
        p
    };
    let stale = make(&format!("wbuild-sandbox-root-{dead}-aaaaaa"));
    let kept_full = make(&format!("wbuild-sandbox-root-{dead}-bbbbbb"));
    std::fs::write(kept_full.join("x"), "not empty").unwrap();
    let kept_live = make(&format!("wbuild-sandbox-root-{live}-cccccc"));
    let kept_unnamed = make("wbuild-sandbox-root-dddddd");
    // Locked: in use by a process whose pid is not visible here (another pid namespace).
    let kept_locked = make(&format!("wbuild-sandbox-root-{dead}-eeeeee"));
    let lock = std::fs::File::open(&kept_locked).unwrap();
    // SAFETY: flock on a descriptor held until the end of the test.
    let locked = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_SH) };
    assert_eq!(locked, 0);
    let recent = make(&format!("wbuild-sandbox-root-{dead}-ffffff"));
    std::fs::File::open(&recent)
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
    build_with_tmpdir(&w, &["build", "//s:g"], tmp.path());
    assert!(
        !stale.exists(),
        "the empty directory of a dead build is left"
    );
    for p in [&kept_full, &kept_live, &kept_unnamed, &kept_locked, &recent] {
        assert!(p.exists(), "{} was removed", p.display());
    }
}
