//! The scheduler with fakes: a tiny in-memory action graph, a real store in a temporary
//! directory, a fake local runner and fake remote endpoints.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wbuild_graph::{ActionGraph, ActionNode, Exec, Label, ToolRef, Workspace};
use wbuild_remote::{ClientError, Executed, Resubmission};
use wbuild_store::{ActionRecord, Digest, DigestFunction, Store, reapi};

use crate::remote::{MIN_STRAGGLER_WAIT, straggler_wait};
use crate::spec::{RunOutput, Spec};
use crate::{
    ActionError, Event, EventSink, LocalRunner, Options, Platform, RemoteCacheApi, RemoteExecApi,
    SchedError, Scheduler, Status, Summary,
};

const MODULE: &str = "tools/t.wasm";

fn label(name: &str) -> Label {
    Label::new("p".to_owned(), name.to_owned())
}

fn out(name: &str) -> String {
    format!("p/{name}.out")
}

/// A workspace holding the tool module (and `p/src.txt`), with its own store.
struct Fixture {
    _dir: tempfile::TempDir,
    ws: Workspace,
    store: Arc<Store>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("ws/tools")).unwrap();
    std::fs::create_dir_all(dir.path().join("ws/p")).unwrap();
    let root = dir.path().join("ws").canonicalize().unwrap();
    std::fs::write(
        root.join(MODULE),
        b"not really wasm; the fake runner never reads it",
    )
    .unwrap();
    std::fs::write(root.join("p/src.txt"), b"a source file").unwrap();
    let store = Arc::new(Store::open(&dir.path().join("store")).unwrap());
    let ws = Workspace {
        root,
        config: Default::default(),
        externals: Default::default(),
    };
    Fixture {
        _dir: dir,
        ws,
        store,
    }
}

/// An action graph from `(name, deps, extra source inputs)`: action `name` runs the tool
/// with `["t", name]`, reads its dependencies' outputs and writes `p/<name>.out`.
fn graph(spec: &[(&str, &[usize], &[&str])]) -> ActionGraph {
    let tool = ToolRef {
        label: Label::new("tools".to_owned(), "t".to_owned()),
        argv0: "t".to_owned(),
        module: MODULE.to_owned(),
        data: Vec::new(),
    };
    let mut producers = BTreeMap::new();
    let mut actions = Vec::new();
    for (i, (name, deps, sources)) in spec.iter().enumerate() {
        let mut inputs: Vec<String> = deps.iter().map(|&d| out(spec[d].0)).collect();
        inputs.extend(sources.iter().map(|s| s.to_string()));
        inputs.sort();
        producers.insert(out(name), (i, label(name)));
        actions.push(ActionNode {
            label: label(name),
            mnemonic: "WasiRun".to_owned(),
            detail: None,
            exec: Exec::Wasi(std::sync::Arc::new(tool.clone())),
            argv: vec!["t".to_owned(), name.to_string()],
            env: BTreeMap::new(),
            inputs: inputs.into(),
            outputs: vec![out(name)],
            deps: deps.to_vec(),
            is_test: false,
            wasi_tools: Vec::new(),
        });
    }
    ActionGraph {
        actions,
        target_files: BTreeMap::new(),
        producers,
        root_platforms: BTreeMap::new(),
        root_tools: BTreeMap::new(),
    }
}

fn options(jobs: usize, keep_going: bool) -> Options {
    Options {
        jobs,
        keep_going,
        epoch_secs: 0,
        memory_limit_bytes: 1 << 20,
        timeout: Duration::from_secs(60),
        show_output: false,
        platform: Platform::host(),
        unsandboxed: false,
        observe_native: true,
        remote_upload: false,
        native_toolchain: None,
        known: None,
        download: crate::Download::All,
    }
}

/// Runs actions by writing `"<name> made <output>"` to each output; fails those in `fail`.
#[derive(Default)]
struct FakeRunner {
    fail: HashSet<String>,
    runs: Mutex<Vec<String>>,
}

impl FakeRunner {
    fn failing(names: &[&str]) -> FakeRunner {
        FakeRunner {
            fail: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        }
    }

    fn runs(&self) -> Vec<String> {
        self.runs.lock().unwrap().clone()
    }
}

impl LocalRunner for FakeRunner {
    fn run(&self, store: &Store, _slot: usize, spec: &Spec) -> Result<RunOutput, SchedError> {
        let name = spec.argv[1].clone();
        self.runs.lock().unwrap().push(name.clone());
        if self.fail.contains(&name) {
            return Ok(RunOutput::failed_with(format!("{name} exited with code 1")));
        }
        let mut outputs = Vec::new();
        for o in &spec.outputs {
            let d = store.put_bytes(format!("{name} made {o}").as_bytes())?;
            outputs.push((o.clone(), d));
        }
        Ok(RunOutput {
            outputs,
            ..Default::default()
        })
    }

    fn compiled_count(&self) -> u64 {
        0
    }
}

#[derive(Default)]
struct Events(Mutex<Vec<Event>>);

impl EventSink for Events {
    fn event(&self, e: &Event) {
        self.0.lock().unwrap().push(e.clone());
    }
}

impl Events {
    /// `(label, status, error)` of every action event, in order.
    fn actions(&self) -> Vec<(String, Status, Option<String>)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Event::Action {
                    label,
                    status,
                    error,
                    ..
                } => Some((label.clone(), *status, error.clone())),
                _ => None,
            })
            .collect()
    }

    /// The remote worker of every action event, in order.
    fn workers(&self) -> Vec<Option<String>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Event::Action { worker, .. } => Some(worker.clone()),
                _ => None,
            })
            .collect()
    }

    fn labels(&self) -> Vec<String> {
        self.actions().into_iter().map(|(l, _, _)| l).collect()
    }

    fn warnings(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Event::Warning { message } => Some(message.clone()),
                _ => None,
            })
            .collect()
    }

    fn digest_of(&self, of: &str, f: DigestFunction) -> Digest {
        let events = self.0.lock().unwrap();
        let text = events
            .iter()
            .find_map(|e| match e {
                Event::Action {
                    label,
                    action_digest: Some(d),
                    ..
                } if label == of => Some(d.clone()),
                _ => None,
            })
            .expect("an action digest");
        let (hash, size) = text.split_once('/').expect("hash/size");
        Digest::from_hex(f, hash, size.parse().unwrap()).unwrap()
    }
}

fn build(
    fx: &Fixture,
    g: &ActionGraph,
    opts: &Options,
    runner: Arc<FakeRunner>,
    configure: impl FnOnce(Scheduler<'_>) -> Scheduler<'_>,
) -> (Summary, Events) {
    let events = Events::default();
    let summary = {
        let sched = configure(Scheduler::new(
            &fx.ws,
            fx.store.clone(),
            runner,
            &events,
            None,
        ));
        sched.run(g, opts).unwrap()
    };
    (summary, events)
}

fn materialised(fx: &Fixture, path: &str) -> Option<String> {
    std::fs::read_to_string(fx.ws.root.join(Platform::host().out_dir()).join(path)).ok()
}

/// An in-memory REAPI cache and executor (`down`: neither can be reached).
struct FakeRemote {
    function: DigestFunction,
    ac: Mutex<HashMap<Digest, reapi::ActionResult>>,
    cas: Mutex<HashMap<Digest, Vec<u8>>>,
    /// Blobs it sends with other bytes than they hash to.
    lies: Mutex<HashSet<Digest>>,
    calls: AtomicUsize,
    down: bool,
    /// Outputs (paths) whose blobs are evicted as soon as a run makes them, once each.
    evict_once: Mutex<HashSet<String>>,
}

impl FakeRemote {
    fn new(function: DigestFunction) -> FakeRemote {
        FakeRemote {
            function,
            ac: Mutex::default(),
            cas: Mutex::default(),
            lies: Mutex::default(),
            calls: AtomicUsize::new(0),
            down: false,
            evict_once: Mutex::default(),
        }
    }

    fn down(function: DigestFunction) -> FakeRemote {
        FakeRemote {
            down: true,
            ..FakeRemote::new(function)
        }
    }

    fn call(&self) -> Result<(), ClientError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down {
            return Err(ClientError::Url {
                url: "grpc://fake".to_owned(),
                message: "connection refused".to_owned(),
            });
        }
        Ok(())
    }

    fn put(&self, bytes: &[u8]) -> Digest {
        let d = Digest::of(self.function, bytes);
        self.cas.lock().unwrap().insert(d, bytes.to_vec());
        d
    }
}

impl RemoteCacheApi for FakeRemote {
    fn url(&self) -> &str {
        "grpc://fake"
    }

    fn function(&self) -> DigestFunction {
        self.function
    }

    fn rpc_count(&self) -> u64 {
        self.calls.load(Ordering::SeqCst) as u64
    }

    fn get_action_result(
        &self,
        action: &Digest,
        _inline_paths: &[String],
    ) -> Result<Option<reapi::ActionResult>, ClientError> {
        self.call()?;
        Ok(self.ac.lock().unwrap().get(action).cloned())
    }

    fn update_action_result(
        &self,
        action: &Digest,
        result: &reapi::ActionResult,
    ) -> Result<(), ClientError> {
        self.call()?;
        self.ac.lock().unwrap().insert(*action, result.clone());
        Ok(())
    }

    fn find_missing(&self, blobs: &[Digest]) -> Result<Vec<Digest>, ClientError> {
        self.call()?;
        let cas = self.cas.lock().unwrap();
        Ok(blobs
            .iter()
            .filter(|d| !cas.contains_key(d))
            .copied()
            .collect())
    }

    fn upload(&self, blobs: &[(Digest, Vec<u8>)]) -> Result<(), ClientError> {
        self.call()?;
        let mut cas = self.cas.lock().unwrap();
        for (d, bytes) in blobs {
            cas.insert(*d, bytes.clone());
        }
        Ok(())
    }

    fn download(&self, blobs: &[Digest]) -> Result<Vec<(Digest, Vec<u8>)>, ClientError> {
        self.call()?;
        let cas = self.cas.lock().unwrap();
        let lies = self.lies.lock().unwrap();
        blobs
            .iter()
            .map(|d| match cas.get(d) {
                Some(_) if lies.contains(d) => Ok((*d, b"something else".to_vec())),
                Some(b) => Ok((*d, b.clone())),
                None => Err(ClientError::MissingBlob(*d)),
            })
            .collect()
    }
}

impl RemoteExecApi for FakeRemote {
    /// Runs the action as worker `w1` would: each output holds `"w1 made <path>"`.
    fn execute(
        &self,
        action: &Digest,
        resubmit: Option<Resubmission>,
    ) -> Result<Executed, ClientError> {
        self.call()?;
        let blob = |d: &Digest| self.cas.lock().unwrap().get(d).cloned();
        let missing = |d: &Digest| ClientError::MissingBlob(*d);
        // Everything it needs, and the copy for a resubmission, was uploaded first.
        let copy = resubmit.expect("a resubmission copy").action;
        blob(&copy).ok_or_else(|| missing(&copy))?;
        let a: reapi::Action =
            prost::Message::decode(&blob(action).ok_or_else(|| missing(action))?[..]).unwrap();
        let cd = Digest::from_proto(self.function, a.command_digest.as_ref().unwrap()).unwrap();
        let c: reapi::Command =
            prost::Message::decode(&blob(&cd).ok_or_else(|| missing(&cd))?[..]).unwrap();
        let input_root =
            Digest::from_proto(self.function, a.input_root_digest.as_ref().unwrap()).unwrap();
        blob(&input_root).ok_or_else(|| missing(&input_root))?;
        let output_files = c
            .output_paths
            .iter()
            .map(|p| {
                let d = self.put(format!("w1 made {p}").as_bytes());
                if self.evict_once.lock().unwrap().remove(p) {
                    self.cas.lock().unwrap().remove(&d);
                }
                reapi::OutputFile {
                    path: p.clone(),
                    digest: Some(d.to_proto()),
                    ..Default::default()
                }
            })
            .collect();
        let result = reapi::ActionResult {
            output_files,
            execution_metadata: Some(reapi::ExecutedActionMetadata {
                worker: "w1".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        };
        Ok(Executed {
            response: reapi::ExecuteResponse {
                result: Some(result),
                ..Default::default()
            },
            operation: "operations/1".to_owned(),
            resubmitted: false,
        })
    }
}

#[test]
fn dependencies_run_first_and_the_longest_path_first() {
    let fx = fixture();
    // a alone; b -> c -> d a chain of three: with one slot the chain starts first.
    let g = graph(&[
        ("a", &[], &[]),
        ("b", &[], &[]),
        ("c", &[1], &[]),
        ("d", &[2], &[]),
    ]);
    let runner = Arc::new(FakeRunner::default());
    let (s, events) = build(&fx, &g, &options(1, false), runner.clone(), |s| s);
    assert!(s.success());
    assert_eq!(s.executed, 4);
    assert_eq!(runner.runs(), ["b", "c", "a", "d"]);
    assert_eq!(events.labels(), ["//p:b", "//p:c", "//p:a", "//p:d"]);
    // d read c's output, which read b's.
    assert_eq!(materialised(&fx, "p/d.out").unwrap(), "d made p/d.out");
}

#[test]
fn remembered_durations_decide_the_critical_path() {
    let fx = fixture();
    // a took 100 ms last time: longer than the whole b -> c -> d chain (1 ms each).
    let b = fx.store.begin_build("build", &[]).unwrap();
    let rec = ActionRecord {
        label: "//p:a".to_owned(),
        mnemonic: "WasiRun".to_owned(),
        action_digest: String::new(),
        status: "executed".to_owned(),
        duration_ms: 100,
        ..ActionRecord::default()
    };
    fx.store.record_action(b, &rec).unwrap();
    // a comes last in the graph: only its remembered duration puts it first.
    let g = graph(&[
        ("b", &[], &[]),
        ("c", &[0], &[]),
        ("d", &[1], &[]),
        ("a", &[], &[]),
    ]);
    let runner = Arc::new(FakeRunner::default());
    build(&fx, &g, &options(1, false), runner.clone(), |s| s);
    assert_eq!(runner.runs(), ["a", "b", "c", "d"]);
}

#[test]
fn without_remembered_durations_the_largest_compile_starts_first() {
    // A compile's detail is its source, one of its inputs.
    let fx = fixture();
    for (name, size) in [("a.c", 300), ("b.c", 30_000), ("c.c", 3_000)] {
        std::fs::write(fx.ws.root.join("p").join(name), vec![b'x'; size]).unwrap();
    }
    let mut g = graph(&[
        ("a", &[], &["p/a.c"]),
        ("b", &[], &["p/b.c"]),
        ("c", &[], &["p/c.c"]),
        ("d", &[], &[]),
    ]);
    for a in &mut g.actions[..3] {
        a.mnemonic = "CcCompile".to_owned();
        a.detail = a.inputs.first().cloned();
    }
    let runner = Arc::new(FakeRunner::default());
    build(&fx, &g, &options(1, false), runner.clone(), |s| s);
    assert_eq!(runner.runs(), ["b", "c", "a", "d"]);
}

#[test]
fn a_failure_stops_the_build_without_keep_going() {
    let fx = fixture();
    // f (fails) has the longest path, so it runs first; g is independent; h needs f.
    let g = graph(&[("f", &[], &[]), ("g", &[], &[]), ("h", &[0], &[])]);
    let runner = Arc::new(FakeRunner::failing(&["f"]));
    let (s, events) = build(&fx, &g, &options(1, false), runner.clone(), |s| s);
    assert_eq!(runner.runs(), ["f"]);
    assert_eq!((s.failed, s.skipped, s.executed), (1, 2, 0));
    assert!(!s.success());
    let actions = events.actions();
    assert_eq!(actions.len(), 1);
    assert_eq!(actions[0].1, Status::Failed);
    assert_eq!(actions[0].2.as_deref(), Some("f exited with code 1"));
    assert!(materialised(&fx, "p/f.out").is_none());
    // Nothing of a failed action enters the action cache.
    assert!(fx.store.ac_find_by_label("//p:f").unwrap().is_empty());
}

#[test]
fn keep_going_runs_independent_actions_and_skips_dependents() {
    let fx = fixture();
    let g = graph(&[("f", &[], &[]), ("g", &[], &[]), ("h", &[0], &[])]);
    let runner = Arc::new(FakeRunner::failing(&["f"]));
    let (s, _) = build(&fx, &g, &options(1, true), runner.clone(), |s| s);
    assert_eq!(runner.runs(), ["f", "g"]);
    assert_eq!((s.failed, s.skipped, s.executed), (1, 1, 1));
    assert_eq!(materialised(&fx, "p/g.out").unwrap(), "g made p/g.out");
}

#[test]
fn a_local_cache_hit_never_calls_the_runner() {
    let fx = fixture();
    let g = graph(&[("a", &[], &["p/src.txt"]), ("b", &[0], &[])]);
    let first = Arc::new(FakeRunner::default());
    let (s, _) = build(&fx, &g, &options(2, false), first.clone(), |s| s);
    assert_eq!(s.executed, 2);
    std::fs::remove_dir_all(fx.ws.root.join(Platform::host().out_dir())).unwrap();
    let second = Arc::new(FakeRunner::default());
    let (s, events) = build(&fx, &g, &options(2, false), second.clone(), |s| s);
    assert_eq!((s.cached, s.executed), (2, 0));
    assert!(second.runs().is_empty());
    assert!(events.warnings().is_empty());
    // Outputs are materialised again from the CAS.
    assert_eq!(materialised(&fx, "p/b.out").unwrap(), "b made p/b.out");
    // A changed source is a new key: a runs again, b (same input bytes) does not.
    std::fs::write(fx.ws.root.join("p/src.txt"), b"changed").unwrap();
    let third = Arc::new(FakeRunner::default());
    build(&fx, &g, &options(2, false), third.clone(), |s| s);
    assert_eq!(third.runs(), ["a"]);
}

#[test]
fn a_missing_source_fails_the_action_with_its_path() {
    let fx = fixture();
    let g = graph(&[("a", &[], &["p/missing.txt"]), ("b", &[], &[])]);
    let runner = Arc::new(FakeRunner::default());
    let (s, events) = build(&fx, &g, &options(1, true), runner.clone(), |s| s);
    assert_eq!((s.failed, s.executed), (1, 1));
    assert_eq!(runner.runs(), ["b"]);
    let err = events
        .actions()
        .into_iter()
        .find_map(|(l, _, e)| (l == "//p:a").then_some(e))
        .flatten()
        .unwrap();
    assert!(
        err.starts_with("cannot read input p/missing.txt: "),
        "{err}"
    );
}

#[test]
fn a_remote_hit_is_recorded_locally() {
    let upstream = fixture();
    let remote = Arc::new(FakeRemote::new(upstream.store.function()));
    let g = graph(&[("a", &[], &["p/src.txt"]), ("b", &[0], &[])]);
    let mut opts = options(1, false);
    opts.remote_upload = true;
    let r = remote.clone();
    build(&upstream, &g, &opts, Arc::new(FakeRunner::default()), |s| {
        s.with_remote_api(Some(r))
    });
    assert_eq!(remote.ac.lock().unwrap().len(), 2, "both results uploaded");

    let fx = fixture();
    let runner = Arc::new(FakeRunner::default());
    let r = remote.clone();
    let (s, events) = build(&fx, &g, &options(1, false), runner.clone(), |s| {
        s.with_remote_api(Some(r))
    });
    assert_eq!((s.remote_cached, s.executed), (2, 0));
    assert!(runner.runs().is_empty());
    assert!(events.warnings().is_empty());
    assert_eq!(materialised(&fx, "p/b.out").unwrap(), "b made p/b.out");
    // The next build finds them here, without the remote.
    let d = events.digest_of("//p:b", fx.store.function());
    assert!(fx.store.ac_get(&d).unwrap().is_some());
    let again = Arc::new(FakeRunner::default());
    let (s, _) = build(&fx, &g, &options(1, false), again.clone(), |s| s);
    assert_eq!(s.cached, 2);
    assert!(again.runs().is_empty());
}

/// What a hostile remote cache sends for an action: an output outside the declared ones.
#[test]
fn an_invalid_remote_result_is_a_miss_with_one_warning() {
    let probe = fixture();
    let g = graph(&[("a", &[], &[])]);
    let (_, events) = build(&probe, &g, &options(1, false), Default::default(), |s| s);
    let digest = events.digest_of("//p:a", probe.store.function());

    let remote = Arc::new(FakeRemote::new(probe.store.function()));
    let good = remote.put(b"a made p/a.out");
    let evil = remote.put(b"#!/bin/sh\necho owned\n");
    let file = |path: &str, d: Digest| reapi::OutputFile {
        path: path.to_owned(),
        digest: Some(d.to_proto()),
        ..Default::default()
    };
    let hostile = reapi::ActionResult {
        output_files: vec![file("p/a.out", good), file("../../escape.sh", evil)],
        ..Default::default()
    };
    remote.ac.lock().unwrap().insert(digest, hostile);

    let fx = fixture();
    let runner = Arc::new(FakeRunner::default());
    let r = remote.clone();
    let (s, events) = build(&fx, &g, &options(1, false), runner.clone(), |s| {
        s.with_remote_api(Some(r))
    });
    assert_eq!((s.executed, s.remote_cached), (1, 0));
    assert_eq!(runner.runs(), ["a"]);
    let warnings = events.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("remote cache grpc://fake: the result for //p:a is not valid ("),
        "{}",
        warnings[0]
    );
    assert!(!fx.ws.root.join("../escape.sh").exists());
    assert!(!fx.ws.root.parent().unwrap().join("escape.sh").exists());
    // The entry recorded here is this run's, not the remote's.
    let local = fx.store.ac_get(&digest).unwrap().unwrap();
    assert_eq!(local.output_files.len(), 1);
}

/// A remote that sends other bytes than the digest it names: never used, the action runs.
#[test]
fn remote_bytes_that_do_not_match_their_digest_are_a_miss() {
    let upstream = fixture();
    let remote = Arc::new(FakeRemote::new(upstream.store.function()));
    let g = graph(&[("a", &[], &[])]);
    let mut opts = options(1, false);
    opts.remote_upload = true;
    let r = remote.clone();
    build(&upstream, &g, &opts, Default::default(), |s| {
        s.with_remote_api(Some(r))
    });
    let blobs: Vec<Digest> = remote.cas.lock().unwrap().keys().copied().collect();
    remote.lies.lock().unwrap().extend(blobs);

    let fx = fixture();
    let runner = Arc::new(FakeRunner::default());
    let r = remote.clone();
    let (s, _) = build(&fx, &g, &options(1, false), runner.clone(), |s| {
        s.with_remote_api(Some(r))
    });
    assert_eq!((s.executed, s.remote_cached), (1, 0));
    assert_eq!(runner.runs(), ["a"]);
    assert_eq!(materialised(&fx, "p/a.out").unwrap(), "a made p/a.out");
}

#[test]
fn a_remote_executor_runs_misses_and_the_result_is_kept_here() {
    let fx = fixture();
    let exec = Arc::new(FakeRemote::new(fx.store.function()));
    let g = graph(&[("a", &[], &["p/src.txt"]), ("b", &[0], &[])]);
    let runner = Arc::new(FakeRunner::default());
    let e = exec.clone();
    let (s, events) = build(&fx, &g, &options(4, false), runner.clone(), |s| {
        s.with_executor_api(Some(e), 1)
    });
    assert_eq!((s.remote_executed, s.executed), (2, 0));
    assert!(runner.runs().is_empty());
    assert!(events.warnings().is_empty(), "{:?}", events.warnings());
    assert_eq!(
        events.workers(),
        [Some("w1".to_owned()), Some("w1".to_owned())]
    );
    assert_eq!(materialised(&fx, "p/b.out").unwrap(), "w1 made p/b.out");
    // The source entered the engine's CAS; the results entered the local action cache.
    let src = Digest::of(
        fx.store.function(),
        &std::fs::read(fx.ws.root.join("p/src.txt")).unwrap(),
    );
    assert!(exec.cas.lock().unwrap().contains_key(&src));
    let again = Arc::new(FakeRunner::default());
    let (s, _) = build(&fx, &g, &options(1, false), again.clone(), |s| s);
    assert_eq!(s.cached, 2);
    assert!(again.runs().is_empty());
}

#[test]
fn minimal_downloads_leave_outputs_remote_and_a_lost_input_reruns_its_producer() {
    let fx = fixture();
    let exec = Arc::new(FakeRemote::new(fx.store.function()));
    let g = graph(&[
        ("a", &[], &["p/src.txt"]),
        ("b", &[0], &[]),
        ("c", &[1], &[]),
    ]);
    let mut opts = options(1, false);
    opts.download = crate::Download::Only(Arc::new(HashSet::from([out("c")])));
    let e = exec.clone();
    let (s, events) = build(&fx, &g, &opts, Arc::new(FakeRunner::default()), |s| {
        s.with_executor_api(Some(e), 1)
    });
    assert_eq!(s.remote_executed, 3);
    assert!(events.warnings().is_empty(), "{:?}", events.warnings());
    // Only the requested output came back; the others are remote-only, not files here.
    assert_eq!(materialised(&fx, "p/c.out").unwrap(), "w1 made p/c.out");
    assert_eq!(materialised(&fx, "p/a.out"), None);
    assert_eq!(
        s.remote_only,
        BTreeSet::from([
            format!("{}/{}", Platform::host().out_dir(), out("a")),
            format!("{}/{}", Platform::host().out_dir(), out("b"))
        ])
    );
    let a_out = Digest::of(fx.store.function(), b"w1 made p/a.out");
    assert!(!fx.store.has(&a_out));

    // The engine evicts `b`'s output as soon as it is made; `c` then needs it, nobody has
    // it: the build runs again and `b` with it.
    let fx = fixture();
    let exec = Arc::new(FakeRemote::new(fx.store.function()));
    exec.evict_once.lock().unwrap().insert(out("b"));
    let e = exec.clone();
    let (s, events) = build(&fx, &g, &opts, Arc::new(FakeRunner::default()), |s| {
        s.with_executor_api(Some(e), 1)
    });
    assert!(s.success());
    assert_eq!(s.remote_executed, 3);
    let warnings = events.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("no longer has 1 blob"), "{warnings:?}");
    assert_eq!(materialised(&fx, "p/c.out").unwrap(), "w1 made p/c.out");
}

#[test]
fn an_unreachable_executor_falls_back_to_local_runs_with_one_warning() {
    let fx = fixture();
    let exec = Arc::new(FakeRemote::down(fx.store.function()));
    let g = graph(&[("a", &[], &[]), ("b", &[], &[]), ("c", &[0, 1], &[])]);
    let runner = Arc::new(FakeRunner::default());
    let e = exec.clone();
    let (s, events) = build(&fx, &g, &options(4, false), runner.clone(), |s| {
        s.with_executor_api(Some(e), 1)
    });
    assert_eq!((s.executed, s.remote_executed), (3, 0));
    assert_eq!(runner.runs().len(), 3);
    // a and b start together: both may reach the executor before the first failure marks
    // it down; c, which waits for them, never does.
    let calls = exec.calls.load(Ordering::SeqCst);
    assert!((1..=2).contains(&calls), "tried {calls} times");
    let warnings = events.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(
        warnings[0],
        "remote executor grpc://fake: bad remote address \"grpc://fake\": connection refused; the rest of this build runs locally"
    );
}

#[test]
fn an_unreachable_remote_cache_is_left_after_its_first_failure() {
    let fx = fixture();
    let remote = Arc::new(FakeRemote::down(fx.store.function()));
    let g = graph(&[("a", &[], &[]), ("b", &[], &[])]);
    let r = remote.clone();
    let (s, events) = build(&fx, &g, &options(1, false), Default::default(), |s| {
        s.with_remote_api(Some(r))
    });
    assert_eq!(s.executed, 2);
    assert_eq!(remote.calls.load(Ordering::SeqCst), 1);
    let warnings = events.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].ends_with("; the rest of this build runs without it"));
}

#[test]
fn stragglers_wait_twice_the_median_of_earlier_runs() {
    let durations = Mutex::new(HashMap::new());
    assert_eq!(straggler_wait(&durations, "CcCompile"), None);
    durations
        .lock()
        .unwrap()
        .insert("CcCompile".to_owned(), vec![3000, 1000]);
    assert_eq!(straggler_wait(&durations, "CcCompile"), None, "two samples");
    durations
        .lock()
        .unwrap()
        .get_mut("CcCompile")
        .unwrap()
        .push(2000);
    assert_eq!(
        straggler_wait(&durations, "CcCompile"),
        Some(Duration::from_millis(4000))
    );
    // Even count: the upper median.
    durations
        .lock()
        .unwrap()
        .get_mut("CcCompile")
        .unwrap()
        .push(9000);
    assert_eq!(
        straggler_wait(&durations, "CcCompile"),
        Some(Duration::from_millis(6000))
    );
    // Fast actions: never below the floor; other mnemonics are not mixed in.
    durations
        .lock()
        .unwrap()
        .insert("WasiRun".to_owned(), vec![5, 5, 5]);
    assert_eq!(
        straggler_wait(&durations, "WasiRun"),
        Some(MIN_STRAGGLER_WAIT)
    );
    assert_eq!(straggler_wait(&durations, "CcLink"), None);
}

#[test]
fn errors_print_their_cause_once() {
    use std::error::Error;
    let io = SchedError::Io {
        path: PathBuf::from("/x"),
        error: std::io::Error::other("disk full"),
    };
    assert_eq!(io.to_string(), "cannot write /x: disk full");
    assert!(io.source().is_none());
    let read = ActionError::ReadInput {
        path: "p/a".to_owned(),
        error: Box::new(wbuild_store::StoreError::Io {
            op: "read",
            path: Path::new("/ws/p/a").to_owned(),
            error: std::io::Error::other("gone"),
        }),
    };
    assert!(read.to_string().starts_with("cannot read input p/a: "));
    assert!(read.source().is_none());
}

#[test]
fn passes_merge_into_one_summary_and_a_stopped_build_skips_the_passes_left() {
    let fx = fixture();
    let host = options(1, false);
    let mut other = options(1, false);
    other.platform = Platform::ALL
        .into_iter()
        .find(|p| *p != Platform::host())
        .unwrap();
    let g = graph(&[("a", &[], &[])]);
    let runner = Arc::new(FakeRunner::default());
    let events = Events::default();
    let s = Scheduler::new(&fx.ws, fx.store.clone(), runner, &events, None)
        .run_passes(&[(&g, host.clone()), (&g, other.clone())])
        .unwrap();
    assert!(s.success());
    // The action is the same in both passes (its key does not depend on the platform): the
    // second pass finds it cached and materialises it under its own directory.
    assert_eq!((s.executed, s.cached), (1, 1));
    let keys: Vec<&String> = s.outputs.keys().collect();
    let mut want = [
        format!("{}/p/a.out", host.platform.out_dir()),
        format!("{}/p/a.out", other.platform.out_dir()),
    ];
    want.sort();
    assert_eq!(keys, want.iter().collect::<Vec<_>>());

    // The first pass fails and the build stops: the second pass's three actions are skipped
    // work, in the summary and in the build_finished event.
    let first = graph(&[("f", &[], &[])]);
    let second = graph(&[("x", &[], &[]), ("y", &[], &[]), ("z", &[], &[])]);
    let runner = Arc::new(FakeRunner::failing(&["f"]));
    let events = Events::default();
    let s = Scheduler::new(&fx.ws, fx.store.clone(), runner.clone(), &events, None)
        .run_passes(&[(&first, host), (&second, other)])
        .unwrap();
    assert_eq!((s.failed, s.skipped, s.executed), (1, 3, 0));
    assert!(!s.success());
    assert_eq!(runner.runs(), ["f"]);
    let finished: Vec<(u64, u64)> = events
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::BuildFinished {
                failed, skipped, ..
            } => Some((*failed, *skipped)),
            _ => None,
        })
        .collect();
    assert_eq!(finished, [(1, 3)]);
}
