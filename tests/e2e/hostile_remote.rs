//! A remote that lies: action-cache entries in a real REAPI server (BuildGrid) that name
//! output paths outside the workspace, climb with `..`, repeat or leave out declared
//! outputs; and a malicious worker that completes leases with such results. wbuild must
//! never write outside `wbuild-out/`, never report an output it does not have, and rebuild
//! the reference bytes.

use std::time::Duration;

use wbuild_tests::buildgrid::{BuildGridExec, run_python};
use wbuild_tests::{TestWorkspace, files_under, finished, stderr};

use crate::ws;

/// Writes poisoned entries into a REAPI server's action cache, or acts as a bot that
/// completes every lease with a poisoned result. BuildGrid's own Python protos; every call
/// has a deadline.
const HOSTILE: &str = r#"
import hashlib, sys, time, grpc
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re, remote_execution_pb2_grpc as re_grpc
from buildgrid._protos.google.devtools.remoteworkers.v1test2 import bots_pb2, bots_pb2_grpc
def digest(b): return re.Digest(hash=hashlib.sha256(b).hexdigest(), size_bytes=len(b))
def result(ch, paths):
    evil = b"EVIL BYTES\n"
    re_grpc.ContentAddressableStorageStub(ch).BatchUpdateBlobs(re.BatchUpdateBlobsRequest(
        requests=[re.BatchUpdateBlobsRequest.Request(digest=digest(evil), data=evil)]), timeout=10)
    return re.ActionResult(exit_code=0, output_files=[re.OutputFile(path=p, digest=digest(evil)) for p in paths])
def main():
    mode, port = sys.argv[1], sys.argv[2]
    ch = grpc.insecure_channel("127.0.0.1:" + port)
    if mode == "poison":
        h, size = sys.argv[3].split("/")
        paths = sys.argv[4:]
        re_grpc.ActionCacheStub(ch).UpdateActionResult(re.UpdateActionResultRequest(
            action_digest=re.Digest(hash=h, size_bytes=int(size)), action_result=result(ch, paths)), timeout=10)
        print("poisoned", h, paths)
    elif mode == "badbot":
        seconds, paths = float(sys.argv[3]), sys.argv[4:]
        bots = bots_pb2_grpc.BotsStub(ch)
        session = bots_pb2.BotSession(bot_id="bad-bot", status=bots_pb2.OK)
        device = session.worker.devices.add(handle="bad")
        device.properties.add(key="OSFamily", value="wasi")
        session = bots.CreateBotSession(bots_pb2.CreateBotSessionRequest(parent="", bot_session=session), timeout=10)
        print("session", session.name, flush=True)
        end = time.time() + seconds
        served = 0
        while time.time() < end:
            for lease in session.leases:
                if lease.state == bots_pb2.LeaseState.ACTIVE:
                    lease.state = bots_pb2.LeaseState.COMPLETED
                    lease.result.Pack(result(ch, paths))
                    served += 1
            session = bots.UpdateBotSession(bots_pb2.UpdateBotSessionRequest(name=session.name, bot_session=session), timeout=5)
            if served and not session.leases:
                break
        print("served", served, flush=True)
"#;

/// Runs the hostile script to completion; returns what it printed.
fn hostile(args: &[&str]) -> String {
    let out = run_python(HOSTILE, args, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "hostile script {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `//p:gen`: one WASI action with one output; `//p:two`: one native action with two.
fn reference(w: &TestWorkspace) {
    w.write("p/in.txt", "reference\n");
    w.write(
        "p/WBUILD",
        r#"
wasi_run(name = "gen", tool = "//tools:probe", srcs = ["in.txt"], outs = ["a.txt"],
         args = ["concat", "$@", "$(location in.txt)", "$(location in.txt)"])
genrule(name = "two", srcs = ["in.txt"], outs = ["b.txt", "c.txt"],
        cmd = "cp $(location in.txt) $(location b.txt) && cat $(location in.txt) $(location in.txt) > $(location c.txt)")
"#,
    );
}

/// The action digest of the only action of a build's events.
fn action_digest(events: &[serde_json::Value]) -> String {
    let digests: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "action")
        .filter_map(|e| e["action_digest"].as_str())
        .collect();
    assert_eq!(digests.len(), 1, "{events:?}");
    digests[0].to_owned()
}

#[test]
fn poisoned_remote_cache_entries_are_never_materialised() {
    let engine = BuildGridExec::start();
    let port = engine.url.rsplit(':').next().unwrap().to_owned();
    let w = ws();
    reference(&w);
    let outside = w.root.parent().unwrap().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    // The reference, and the action's digest under the remote's digest function.
    let args = ["build", "--remote", &engine.url, "//p:two"];
    let (out, ev) = w.events(&args);
    assert!(out.status.success(), "{}", w.report(&args, &out));
    let digest = action_digest(&ev);
    let reference_out = (w.read("wbuild-out/p/b.txt"), w.read("wbuild-out/p/c.txt"));
    assert_eq!(reference_out.1, "reference\nreference\n");

    let escape = outside.join("escape.txt").display().to_string();
    let variants: Vec<Vec<&str>> = vec![
        vec![&escape, "p/c.txt"],
        vec!["../../outside/escape.txt", "p/c.txt"],
        vec!["p/../../../outside/escape.txt", "p/c.txt"],
        vec!["p/b.txt/../../../../outside/escape.txt", "p/c.txt"],
        vec!["./p/b.txt", "p/c.txt"],
        vec!["p//b.txt", "p/c.txt"],
        // Every path declared, one of them twice: the other output would be missing.
        vec!["p/b.txt", "p/b.txt"],
        vec!["p/b.txt", "p/c.txt", "../../outside/escape.txt"],
        vec!["p/b.txt"],
        vec![],
    ];
    for paths in variants {
        let mut poison = vec!["poison", &*port, &*digest];
        poison.extend(paths.iter().copied());
        let said = hostile(&poison);
        assert!(said.contains("poisoned"), "{said}");
        // A checkout with an empty cache asks the remote first.
        std::fs::remove_dir_all(&w.cache).unwrap();
        std::fs::remove_dir_all(w.path("wbuild-out")).unwrap();
        let (out, ev) = w.events(&args);
        assert!(out.status.success(), "{paths:?}\n{}", w.report(&args, &out));
        let f = finished(&ev);
        assert_eq!(f["remote_cached"], 0, "{paths:?}: {ev:?}");
        assert_eq!(f["executed"], 1, "{paths:?}: {ev:?}");
        assert_eq!(
            (w.read("wbuild-out/p/b.txt"), w.read("wbuild-out/p/c.txt")),
            reference_out,
            "{paths:?}"
        );
        assert_eq!(
            files_under(&w.path("wbuild-out")),
            vec!["p/b.txt", "p/c.txt"],
            "{paths:?}"
        );
        assert_eq!(files_under(&outside), Vec::<String>::new(), "{paths:?}");
        assert!(!stderr(&out).contains("EVIL"), "{}", stderr(&out));
        let out = w.ok(&["cache", "verify"]);
        assert!(
            wbuild_tests::stdout(&out).contains("cache is consistent"),
            "{}",
            wbuild_tests::stdout(&out)
        );
    }
}

#[test]
fn a_malicious_worker_cannot_make_the_client_write_outside() {
    let engine = BuildGridExec::start();
    let port = engine.url.rsplit(':').next().unwrap().to_owned();
    let w = ws();
    reference(&w);
    let outside = w.root.parent().unwrap().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let escape = outside.join("escape.txt").display().to_string();
    // The only worker there is completes every lease with a poisoned result.
    let bot = {
        let port = port.clone();
        let escape = escape.clone();
        std::thread::spawn(move || {
            hostile(&[
                "badbot",
                &port,
                "40",
                &escape,
                "../../outside/escape2.txt",
                "p/a.txt",
            ])
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let args = ["build", "--remote-executor", &engine.url, "//p:gen"];
    let (out, ev) = w.events(&args);
    assert!(out.status.success(), "{}", w.report(&args, &out));
    let f = finished(&ev);
    assert_eq!(f["remote_executed"], 0, "{ev:?}");
    assert_eq!(f["executed"], 1, "{ev:?}");
    assert_eq!(w.read("wbuild-out/p/a.txt"), "reference\nreference\n");
    assert_eq!(files_under(&w.path("wbuild-out")), vec!["p/a.txt"]);
    assert_eq!(files_under(&outside), Vec::<String>::new());
    let text = stderr(&out);
    assert!(text.contains("remote executor"), "{text}");
    assert!(!text.contains("EVIL"), "{text}");
    let said = bot.join().unwrap();
    assert!(
        said.lines()
            .any(|l| l.starts_with("served ") && l != "served 0"),
        "the bad bot got no lease: {said}"
    );
}
