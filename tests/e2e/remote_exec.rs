//! Remote execution: BuildGrid (PyPI buildgrid==0.4.4 on PostgreSQL) schedules, `wbuild
//! worker` processes execute, `wbuild build --remote-executor` submits.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wbuild_tests::buildgrid::BuildGridExec;
use wbuild_tests::{TestWorkspace, finished, statuses, stdout};

use crate::toolchains::shared_bundles;
use crate::{BIN, example, ws};

/// A `wbuild worker` process with its own cache; killed when dropped.
struct Worker {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Worker {
    fn start(engine: &BuildGridExec, name: &str, extra: &[&str]) -> Worker {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("worker.log");
        let child = Command::new(BIN)
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .args(["worker", "--engine", &engine.url, "--name", name])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let w = Worker {
            child,
            log,
            _dir: dir,
        };
        // Ready when it holds a session.
        let t0 = Instant::now();
        while !w.log().contains(": session ") {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "worker {name} did not open a session:\n{}\n--- engine ---\n{}",
                w.log(),
                engine.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        w
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- worker log ---\n{}", self.log());
        }
    }
}

/// `--toolchain`/`--key` flags installing the shared gcc bundle for `platform` on a worker.
fn toolchain_flags(platform: &str) -> Vec<String> {
    let b = shared_bundles();
    let file = match platform {
        "linux-arm64" => "gcc-aarch64-linux.bundle",
        _ => "gcc-x86_64-linux.bundle",
    };
    vec![
        "--platform".into(),
        platform.into(),
        "--toolchain".into(),
        b.dir.join(file).display().to_string(),
        "--key".into(),
        b.dir.join("example.pub").display().to_string(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Every file under `dir` (relative path -> bytes).
fn tree(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// The files under `a` and `b` are the same; else which differ, by name.
fn same_tree(a: &Path, b: &Path) {
    let (ta, tb) = (tree(a), tree(b));
    let differ: Vec<&String> = ta
        .keys()
        .chain(tb.keys())
        .filter(|k| ta.get(*k) != tb.get(*k))
        .collect();
    assert!(
        differ.is_empty(),
        "{} and {} differ in {differ:?}",
        a.display(),
        b.display()
    );
}

/// c-hello with its pinned bundles at ../.toolchains.
fn c_hello() -> TestWorkspace {
    let w = example("c-hello");
    std::os::unix::fs::symlink(&shared_bundles().dir, w.root.join("../.toolchains")).unwrap();
    w
}

/// `//d:world`: the probe guest writes what it sees of the world, random bytes included.
fn world(w: &TestWorkspace) {
    w.copy_guest("probe", "d/probe.wasm");
    w.write("d/in.txt", "input\n");
    w.write(
        "d/WBUILD",
        r#"
wasi_tool(name = "probe", src = "probe.wasm")
wasi_run(name = "world", tool = ":probe", srcs = ["in.txt"], outs = ["world.txt"],
         args = ["world", "$@", "$(location in.txt)"])
"#,
    );
}

/// Starts `build --remote-executor URL -j JOBS PATTERN` with an events file, output piped.
fn spawn_build(w: &TestWorkspace, url: &str, jobs: &str, pattern: &str) -> Child {
    let events = w.path("../events.jsonl");
    w.cmd(&[
        "build",
        "--remote-executor",
        url,
        "-j",
        jobs,
        pattern,
        "--events",
        events.to_str().unwrap(),
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

/// Waits for a build from [`spawn_build`], asserts it succeeded, returns its events.
fn finish_build(w: &TestWorkspace, build: Child, engine: &BuildGridExec) -> Vec<serde_json::Value> {
    let out = build.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        engine.log()
    );
    let text = std::fs::read_to_string(w.path("../events.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn action_events(ev: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    ev.iter().filter(|e| e["type"] == "action").collect()
}

#[test]
fn builds_run_entirely_on_workers_and_arm64_actions_go_to_the_arm64_worker() {
    let engine = BuildGridExec::start();
    let _x86 = Worker::start(&engine, "wx86", &strs(&toolchain_flags("linux-x86_64")));
    let _arm = Worker::start(&engine, "warm", &strs(&toolchain_flags("linux-arm64")));

    // The C example for both platforms: WASI, x86_64 and arm64 native actions; and a guest
    // that writes what it sees of the world (random bytes included: a worker seeds them as
    // the local executor does).
    let w = c_hello();
    world(&w);
    let args = [
        "build",
        "--remote-executor",
        &engine.url,
        "-j",
        "8",
        "--platform",
        "linux-x86_64,linux-arm64",
        "//...",
    ];
    let (out, ev) = w.events(&args);
    assert!(out.status.success(), "{}", w.report(&args, &out));
    // //d:world is a WASI action, the same action in both platform passes: it runs once.
    let (world_runs, actions): (Vec<_>, Vec<_>) = action_events(&ev)
        .into_iter()
        .partition(|a| a["label"] == "//d:world");
    let mut world_runs: Vec<&str> = world_runs
        .iter()
        .map(|a| a["status"].as_str().unwrap())
        .collect();
    world_runs.sort_unstable();
    assert_eq!(world_runs, ["cached", "remote_executed"], "{ev:?}");
    assert!(!actions.is_empty());
    for a in &actions {
        assert_eq!(a["status"], "remote_executed", "{a}");
        match a["platform"].as_str() {
            Some("linux-arm64") => assert_eq!(a["worker"], "warm", "{a}"),
            Some("linux-x86_64") => assert_eq!(a["worker"], "wx86", "{a}"),
            _ => assert!(a["worker"] == "warm" || a["worker"] == "wx86", "{a}"),
        }
    }
    assert_eq!(finished(&ev)["executed"], 0, "{ev:?}");
    assert_eq!(
        finished(&ev)["remote_executed"].as_u64().unwrap() as usize,
        actions.len() + 1
    );
    let run = Command::new(w.path("wbuild-out/app/hello"))
        .output()
        .unwrap();
    assert_eq!(stdout(&run), "hello from wbuild 5 (greet 1.2)\n");

    // The same outputs as a local build.
    let local = c_hello();
    world(&local);
    local.ok(&["build", "--platform", "linux-x86_64,linux-arm64", "//..."]);
    assert_eq!(
        w.read("wbuild-out/d/world.txt"),
        local.read("wbuild-out/d/world.txt")
    );
    // By default (`--remote-download=toplevel` with an executor) the targets' outputs came
    // back and the compiles' objects and depfiles stayed on the engine.
    let (remote_tree, local_tree) = (tree(&w.path("wbuild-out")), tree(&local.path("wbuild-out")));
    let left_remote: Vec<&String> = local_tree
        .keys()
        .filter(|k| !remote_tree.contains_key(*k))
        .collect();
    assert!(
        !left_remote.is_empty() && left_remote.iter().all(|k| k.contains("/_objs/")),
        "{left_remote:?}"
    );
    for (k, v) in &remote_tree {
        assert_eq!(
            local_tree.get(k),
            Some(v),
            "{k} differs from a local build's"
        );
    }

    // The WASI example runs on the workers too.
    let g = example("wasi-codegen");
    let (out, ev) = g.events(&["build", "--remote-executor", &engine.url, "//..."]);
    assert!(out.status.success(), "{}", g.report(&["build"], &out));
    let st = statuses(&ev);
    assert!(!st.is_empty());
    assert!(st.iter().all(|(_, s)| s == "remote_executed"), "{st:?}");

    // A second client with an empty cache gets everything from the engine's cache, every
    // output downloaded.
    let second = c_hello();
    world(&second);
    let all: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--remote-download=all"])
        .collect();
    let (out, ev) = second.events(&all);
    assert!(out.status.success(), "{}", second.report(&args, &out));
    // (//d:world's second platform pass finds the first pass's result locally.)
    let st = statuses(&ev);
    assert!(
        st.iter()
            .all(|(a, s)| s == "remote_cached" || (a == "//d:world" && s == "cached")),
        "{st:?}"
    );
    same_tree(&second.path("wbuild-out"), &local.path("wbuild-out"));
}

#[test]
fn killing_a_worker_mid_build_still_completes_the_build() {
    let engine = BuildGridExec::start();
    let mut a = Worker::start(&engine, "wa", &["-j", "2"]);
    let _b = Worker::start(&engine, "wb", &["-j", "2"]);
    let w = ws();
    // Slow WASI actions (the probe guest burns CPU), two per worker slot.
    let mut rules = String::new();
    for i in 0..8 {
        rules.push_str(&format!(
            "wasi_run(name = \"s{i}\", tool = \"//tools:probe\", outs = [\"s{i}.txt\"], args = [\"spin\", \"{}\", \"$@\"])\n",
            300_000_000 + i
        ));
    }
    w.write("slow/WBUILD", &rules);
    let build = spawn_build(&w, &engine.url, "8", "//slow/...");
    // Kill worker a while it runs something.
    let t0 = Instant::now();
    while !a.log().contains(" started") && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    a.kill();
    let log = a.log();
    let started = log.matches(" started").count();
    let done = log.matches(" done in ").count();
    assert!(started > done, "worker a finished all it took:\n{log}");
    let ev = finish_build(&w, build, &engine);
    // The outputs of a local build.
    let local = ws();
    local.write("slow/WBUILD", &rules);
    local.ok(&["build", "//slow/..."]);
    same_tree(&w.path("wbuild-out"), &local.path("wbuild-out"));
    let acts = action_events(&ev);
    assert_eq!(acts.len(), 8);
    assert!(
        acts.iter().all(|e| e["status"] == "remote_executed"),
        "{ev:?}"
    );
    // What a held when it died was reassigned to b.
    assert!(acts.iter().any(|e| e["worker"] == "wb"), "{ev:?}");
}

#[test]
fn an_unreachable_executor_builds_locally_with_one_warning() {
    let w = ws();
    crate::chain(&w);
    let url = format!("grpc://127.0.0.1:{}", wbuild_tests::oci::free_port());
    let (out, ev) = w.events(&["build", "--remote-executor", &url, "//..."]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    assert_eq!(finished(&ev)["executed"], 3, "{ev:?}");
    let err = wbuild_tests::stderr(&out);
    assert_eq!(err.matches("warning:").count(), 1, "{err}");
    assert!(err.contains("remote executor"), "{err}");
}

#[test]
fn a_straggler_is_resubmitted_and_the_first_result_wins() {
    let engine = BuildGridExec::start();
    let a = Worker::start(&engine, "wa", &["-j", "1"]);
    let _b = Worker::start(&engine, "wb", &["-j", "1"]);
    let w = ws();
    let mut rules = String::new();
    for i in 0..12 {
        rules.push_str(&format!(
            "wasi_run(name = \"q{i}\", tool = \"//tools:probe\", outs = [\"q{i}.txt\"], args = [\"say\", \"{i}\", \"$@\"])\n"
        ));
    }
    w.write("quick/WBUILD", &rules);
    let build = spawn_build(&w, &engine.url, "2", "//quick/...");
    // Worker a stalls (SIGSTOP) as it starts its third action: it keeps its session for the
    // engine's keepalive, so only the client's resubmission gets the action done in time.
    let t0 = Instant::now();
    while a.log().matches(" started").count() < 3 && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = a.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let ev = finish_build(&w, build, &engine);
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    let resubmitted: Vec<_> = action_events(&ev)
        .into_iter()
        .filter(|e| e["resubmitted"] == true)
        .collect();
    assert!(!resubmitted.is_empty(), "{ev:?}\n{}", a.log());
    for e in &resubmitted {
        assert_eq!(e["worker"], "wb", "{e}");
        assert_eq!(e["status"], "remote_executed", "{e}");
    }
    for i in 0..12 {
        assert_eq!(
            w.read(&format!("wbuild-out/quick/q{i}.txt")),
            format!("{i}\n")
        );
    }
}
