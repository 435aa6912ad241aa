//! Poisoned action-cache entries: results whose output paths are absolute, climb with `..`,
//! are named twice, are not declared, or lack a declared output, written for the action
//! digest of a real target into a remote cache (`wbuild serve`, through REAPI) and straight
//! into the local index. wbuild must treat each as a miss (one warning naming where it came
//! from and the action), write nothing outside `wbuild-out/`, rebuild the target with its
//! reference bytes, and leave a cache that verifies.

use std::path::{Path, PathBuf};

use wbuild_store::{Digest, DigestFunction, Store, reapi};
use wbuild_tests::{TestWorkspace, stdout};

use super::{BIN, RemoteServer, buildgrid_server, free_port, ws};

const LABEL: &str = "//p:t";
const OUT: &str = "p/out.txt";
const REFERENCE: &str = "hello\nhello\n";

fn target(w: &TestWorkspace) {
    w.write("p/a.txt", "hello\n");
    w.write(
        "p/WBUILD",
        r#"
wasi_run(
    name = "t",
    tool = "//tools:probe",
    srcs = ["a.txt"],
    outs = ["out.txt"],
    args = ["concat", "$@", "$(location a.txt)", "$(location a.txt)"],
)
"#,
    );
}

/// `wbuild serve` on its own cache, open to anonymous writes (as the attacker needs).
fn open_server() -> RemoteServer {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = std::process::Command::new(BIN)
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .args([
            "serve",
            "--allow-anonymous-writes",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    RemoteServer::listening(child, port, dir)
}

/// Where the poisoned entries try to write, outside the workspace.
struct Targets {
    absolute: PathBuf,
    climbing: PathBuf,
}

impl Targets {
    fn new(w: &TestWorkspace) -> Targets {
        let tmp = w.root.parent().unwrap();
        Targets {
            absolute: tmp.join("poison-absolute.txt"),
            // <ws>/wbuild-out/../../poison-climb.txt
            climbing: tmp.join("poison-climb.txt"),
        }
    }

    fn assert_untouched(&self, w: &TestWorkspace) {
        for p in [&self.absolute, &self.climbing] {
            assert!(!p.exists(), "{} was written", p.display());
        }
        assert!(!w.path("wbuild-out/p/extra.txt").exists());
    }
}

const EVIL: &[u8] = b"attacker's bytes\n";
const EVIL2: &[u8] = b"more attacker's bytes\n";

fn file(f: DigestFunction, path: &str, bytes: &[u8]) -> reapi::OutputFile {
    reapi::OutputFile {
        path: path.to_owned(),
        digest: Some(Digest::of(f, bytes).to_proto()),
        is_executable: false,
        contents: Vec::new(),
        node_properties: None,
    }
}

/// The poisoned results, by name (blob digests of function `f`).
fn poisoned(t: &Targets, f: DigestFunction) -> Vec<(&'static str, reapi::ActionResult)> {
    let file = |path: &str, bytes: &[u8]| file(f, path, bytes);
    let result = |files: Vec<reapi::OutputFile>| reapi::ActionResult {
        output_files: files,
        exit_code: 0,
        ..Default::default()
    };
    vec![
        (
            "absolute path",
            result(vec![
                file(OUT, EVIL),
                file(t.absolute.to_str().unwrap(), EVIL),
            ]),
        ),
        (
            "climbing path",
            result(vec![file(OUT, EVIL), file("../../poison-climb.txt", EVIL)]),
        ),
        (
            "climbing declared path",
            result(vec![file("p/../p/out.txt", EVIL)]),
        ),
        ("duplicate", result(vec![file(OUT, EVIL), file(OUT, EVIL2)])),
        (
            "undeclared extra",
            result(vec![file(OUT, EVIL), file("p/extra.txt", EVIL)]),
        ),
        ("missing declared output", result(vec![])),
    ]
}

/// Warning events naming `source` and the target.
fn warnings<'a>(ev: &'a [serde_json::Value], source: &str) -> Vec<&'a str> {
    ev.iter()
        .filter(|e| e["type"] == "warning")
        .filter_map(|e| e["message"].as_str())
        .filter(|m| m.contains(source) && m.contains(LABEL))
        .collect()
}

fn status(ev: &[serde_json::Value]) -> String {
    ev.iter()
        .find(|e| e["type"] == "action" && e["label"] == LABEL)
        .and_then(|e| e["status"].as_str())
        .unwrap_or("none")
        .to_owned()
}

/// The action's digest (`<hex>/<size>` in its event) under digest function `f`.
fn action_digest(ev: &[serde_json::Value], f: DigestFunction) -> Digest {
    let text = ev
        .iter()
        .find(|e| e["type"] == "action" && e["label"] == LABEL)
        .and_then(|e| e["action_digest"].as_str())
        .expect("the action's digest in its event");
    let (hex, size) = text.split_once('/').expect("<hex>/<size>");
    Digest::from_hex(f, hex, size.parse().unwrap()).unwrap()
}

fn fresh_outputs(w: &TestWorkspace) {
    let _ = std::fs::remove_dir_all(w.path("wbuild-out"));
}

fn verify_clean(w: &TestWorkspace) {
    let verify = stdout(&w.ok(&["cache", "verify"]));
    assert!(!verify.contains("corrupt"), "{verify}");
}

fn remove_cache(cache: &Path) {
    if cache.exists() {
        std::fs::remove_dir_all(cache).unwrap();
    }
}

/// Poisons `server`'s entry for the target with each result in turn and builds with an
/// empty local cache: every one is a miss, warned about once, and the target is rebuilt.
fn remote_entries_are_misses(server: &RemoteServer, f: DigestFunction) {
    let w = ws();
    target(&w);
    let t = Targets::new(&w);
    let url = server.url.clone();
    let (out, ev) = w.events(&["build", LABEL, "--remote", &url]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    assert_eq!(w.read("wbuild-out/p/out.txt"), REFERENCE);
    let digest = action_digest(&ev, f);
    let remote = wbuild_remote::RemoteCache::connect(&url, "").unwrap();
    assert_eq!(remote.function(), f);
    for (name, result) in poisoned(&t, f) {
        // The attacker's blobs are present, so the server accepts the entry.
        let blobs = [EVIL, EVIL2];
        let digests: Vec<Digest> = blobs.iter().map(|b| Digest::of(f, b)).collect();
        remote
            .upload_missing(&digests, |d| {
                blobs
                    .iter()
                    .find(|b| Digest::of(f, b) == *d)
                    .map(|b| b.to_vec())
            })
            .unwrap();
        remote
            .update_action_result(&digest, &result)
            .unwrap_or_else(|e| panic!("{name}: the server refused the entry: {e}"));
        let back = remote.get_action_result(&digest, &[]).unwrap();
        assert_eq!(
            back.map(|r| r.output_files.len()),
            Some(result.output_files.len()),
            "{name}: the server does not hold the poisoned entry"
        );
        // An empty local cache: the remote entry is the only answer.
        remove_cache(&w.cache);
        fresh_outputs(&w);
        let (out, ev) = w.events(&["build", LABEL, "--remote", &url]);
        assert!(
            out.status.success(),
            "{name}: {}",
            w.report(&["build"], &out)
        );
        assert_eq!(w.read("wbuild-out/p/out.txt"), REFERENCE, "{name}");
        assert_eq!(status(&ev), "executed", "{name}: {ev:?}");
        let warned = warnings(&ev, &format!("remote cache {url}"));
        assert_eq!(warned.len(), 1, "{name}: {ev:?}");
        t.assert_untouched(&w);
        verify_clean(&w);
    }
    // The build put its own result back: a later clean build is a remote hit with the
    // reference bytes.
    remove_cache(&w.cache);
    fresh_outputs(&w);
    let (out, ev) = w.events(&["build", LABEL, "--remote", &url]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    assert_eq!(status(&ev), "remote_cached", "{ev:?}");
    assert_eq!(w.read("wbuild-out/p/out.txt"), REFERENCE);
    t.assert_untouched(&w);
}

#[test]
fn hostile_cache_entries_from_wbuild_serve_are_misses() {
    remote_entries_are_misses(&open_server(), DigestFunction::Blake3);
}

#[test]
fn hostile_cache_entries_from_buildgrid_are_misses() {
    remote_entries_are_misses(&buildgrid_server(), DigestFunction::Sha256);
}

#[test]
fn hostile_cache_entries_in_the_local_index_are_misses() {
    let w = ws();
    target(&w);
    let t = Targets::new(&w);
    let (out, ev) = w.events(&["build", LABEL]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    let digest = action_digest(&ev, DigestFunction::Blake3);
    for (name, result) in poisoned(&t, DigestFunction::Blake3) {
        {
            let store = Store::open(&w.cache).unwrap();
            store.put_bytes(EVIL).unwrap();
            store.put_bytes(EVIL2).unwrap();
            store.ac_put(&digest, &result, LABEL).unwrap();
            store.flush().unwrap();
        }
        // Without its output the up-to-date snapshot cannot vouch for the build: the
        // action cache is asked.
        fresh_outputs(&w);
        let (out, ev) = w.events(&["build", LABEL]);
        assert!(
            out.status.success(),
            "{name}: {}",
            w.report(&["build"], &out)
        );
        assert_eq!(w.read("wbuild-out/p/out.txt"), REFERENCE, "{name}");
        assert_eq!(status(&ev), "executed", "{name}: {ev:?}");
        let warned = warnings(&ev, "local cache entry");
        assert_eq!(warned.len(), 1, "{name}: {ev:?}");
        t.assert_untouched(&w);
        verify_clean(&w);
        // The entry the rerun wrote is good: the next lookup is a clean hit.
        fresh_outputs(&w);
        let (_, ev) = w.events(&["build", LABEL]);
        assert_eq!(status(&ev), "cached", "{name}: {ev:?}");
        assert!(warnings(&ev, "local cache entry").is_empty(), "{ev:?}");
        assert_eq!(w.read("wbuild-out/p/out.txt"), REFERENCE);
    }
    remove_cache(&w.cache);
    fresh_outputs(&w);
    w.ok(&["build", LABEL]);
    assert_eq!(w.read("wbuild-out/p/out.txt"), REFERENCE);
    t.assert_untouched(&w);
}
