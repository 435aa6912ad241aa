//! Builds without the bytes (`--remote-download`): outputs stay on the remote unless the
//! build asked for them or an action here needs them, and a blob the remote lost is made
//! again by the build itself.

use wbuild_store::{Digest, DigestFunction};
use wbuild_tests::{TestWorkspace, finished, stdout};

use crate::{RemoteServer, chain, wbuild_server, ws};

/// 100 KiB of text: `ab.txt` is twice that and `abab.txt` four times, large enough for
/// byte counts to tell which outputs travelled.
fn big_chain() -> TestWorkspace {
    let w = ws();
    chain(&w);
    let line = "0123456789abcdef".repeat(4) + "\n";
    w.write("gen/a.txt", &line.repeat(100 * 1024 / line.len()));
    w
}

const AB: &str = "wbuild-out/gen/ab.txt";
const ABAB: &str = "wbuild-out/gen/abab.txt";

fn warnings(ev: &[serde_json::Value]) -> Vec<String> {
    ev.iter()
        .filter(|e| e["type"] == "warning")
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn build(w: &TestWorkspace, args: &[&str]) -> (Vec<serde_json::Value>, serde_json::Value) {
    let (out, ev) = w.events(args);
    assert!(out.status.success(), "{}", w.report(args, &out));
    let f = finished(&ev).clone();
    (ev, f)
}

fn bytes_down(f: &serde_json::Value) -> u64 {
    f["remote_bytes_downloaded"]
        .as_u64()
        .unwrap_or_else(|| panic!("no remote_bytes_downloaded in {f}"))
}

/// Where `wbuild serve` keeps the blob of `bytes` (BLAKE3, the function wbuild clients pick).
fn served_blob(server: &RemoteServer, bytes: &[u8]) -> std::path::PathBuf {
    let hex = Digest::of(DigestFunction::Blake3, bytes).hex();
    server
        .dir()
        .join("cache")
        .join(DigestFunction::Blake3.cas_subdir())
        .join(&hex[..2])
        .join(hex)
}

#[test]
fn outputs_stay_remote_until_asked_for_or_needed_here() {
    let server = wbuild_server();
    let url = server.url.clone();
    // One checkout fills the remote.
    let first = big_chain();
    build(&first, &["build", "--remote", &url, "//gen:abab"]);
    let ab = std::fs::read(first.path(AB)).unwrap();
    let abab = std::fs::read(first.path(ABAB)).unwrap();
    assert_eq!(abab.len(), 2 * ab.len());

    // Another, with a cache of its own.
    let w = big_chain();
    let minimal = [
        "build",
        "--remote",
        &url,
        "--remote-download=minimal",
        "//gen:abab",
    ];
    let (_, f) = build(&w, &minimal);
    assert_eq!(f["remote_cached"], 2, "{f}");
    assert!(!w.path(AB).exists() && !w.path(ABAB).exists());
    assert!(
        bytes_down(&f) < 16 << 10,
        "minimal downloaded {} bytes (the outputs are {} and {})",
        bytes_down(&f),
        ab.len(),
        abab.len()
    );

    // toplevel: the requested target's output, not the intermediate one.
    let toplevel = [
        "build",
        "--remote",
        &url,
        "--remote-download=toplevel",
        "//gen:abab",
    ];
    let (_, f) = build(&w, &toplevel);
    assert_eq!(f["executed"], 0, "{f}");
    assert_eq!(std::fs::read(w.path(ABAB)).unwrap(), abab);
    assert!(!w.path(AB).exists());
    let got = bytes_down(&f);
    assert!(
        got >= abab.len() as u64 && got < (abab.len() + (16 << 10)) as u64,
        "toplevel downloaded {got} bytes for a {}-byte output (the intermediate one is {})",
        abab.len(),
        ab.len()
    );
    // Nothing changed: a no-op that leaves the intermediate output where it is.
    let (_, f) = build(&w, &toplevel);
    assert_eq!(
        (f["executed"].as_u64(), f["remote_cached"].as_u64()),
        (Some(0), Some(0)),
        "{f}"
    );
    assert!(!w.path(AB).exists());

    // A local action needs the intermediate output: it is fetched, the action runs here.
    w.write(
        "gen/WBUILD",
        &w.read("gen/WBUILD").replace(
            r#"args = ["concat", "$@", "$(location :ab)", "$(location :ab)"]"#,
            r#"args = ["concat", "$@", "$(location :ab)", "$(location :ab)", "$(location :ab)"]"#,
        ),
    );
    let (_, f) = build(&w, &toplevel);
    assert_eq!(f["executed"], 1, "{f}");
    assert_eq!(std::fs::read(w.path(ABAB)).unwrap(), ab.repeat(3));

    // `all` writes every output.
    let (_, f) = build(
        &w,
        &[
            "build",
            "--remote",
            &url,
            "--remote-download=all",
            "//gen:abab",
        ],
    );
    assert_eq!(f["executed"], 0, "{f}");
    assert_eq!(std::fs::read(w.path(AB)).unwrap(), ab);

    // `wbuild run` of a tool built remotely brings its module (and data) back, whatever
    // the download mode.
    for w in [&first, &w] {
        w.write("g/extra.txt", "from a generated data file\n");
        w.copy_guest("probe", "g/probe.wasm");
        w.write(
            "g/WBUILD",
            r#"
genrule(name = "mod", srcs = ["probe.wasm"], outs = ["gprobe.wasm"], cmd = "cp $< $@")
genrule(name = "data", srcs = ["extra.txt"], outs = ["said.txt"], cmd = "cp $< $@")
wasi_tool(name = "gprobe", src = ":mod", data = [":data"], data_dir = "/opt/g")
"#,
        );
    }
    build(&first, &["build", "--remote", &url, "//g:gprobe"]);
    let run = w.run(&[
        "run",
        "--remote",
        &url,
        "--remote-download=minimal",
        "//g:gprobe",
        "--",
        "read",
        "/opt/g/said.txt",
    ]);
    assert_eq!(run.status.code(), Some(0), "{}", w.report(&["run"], &run));
    assert_eq!(stdout(&run), "from a generated data file\n");

    // `wbuild outputs` lists without fetching; with --fetch the listed files are there.
    let w = big_chain();
    build(&w, &minimal);
    let listed = stdout(&w.ok(&["outputs", "//gen:abab"]));
    assert_eq!(listed.trim(), ABAB);
    assert!(!w.path(ABAB).exists());
    let listed = stdout(&w.ok(&["outputs", "--fetch", "--remote", &url, "//gen:abab"]));
    assert_eq!(listed.trim(), ABAB);
    assert_eq!(std::fs::read(w.path(ABAB)).unwrap(), abab);
    assert!(!w.path(AB).exists());
}

#[test]
fn an_evicted_intermediate_output_is_made_again_by_the_build() {
    // `abab` reads `ab` and a source of its own, so an edit of that source reruns it alone.
    let chain_with_extra = || {
        let w = big_chain();
        w.write("gen/extra.txt", "one\n");
        w.write(
            "gen/WBUILD",
            &w.read("gen/WBUILD")
                .replace(r#"srcs = [":ab"]"#, r#"srcs = [":ab", "extra.txt"]"#)
                .replace(
                    r#""$(location :ab)", "$(location :ab)"]"#,
                    r#""$(location :ab)", "$(location extra.txt)"]"#,
                ),
        );
        w
    };
    let server = wbuild_server();
    let url = server.url.clone();
    let first = chain_with_extra();
    build(&first, &["build", "--remote", &url, "//gen:abab"]);
    let ab = std::fs::read(first.path(AB)).unwrap();

    let w = chain_with_extra();
    let toplevel = [
        "build",
        "--remote",
        &url,
        "--remote-download=toplevel",
        "//gen:abab",
    ];
    build(&w, &toplevel);
    assert!(!w.path(AB).exists());
    // The remote evicts the intermediate output; then an edit makes a local action need it
    // (the up-to-date snapshot vouches for `ab`, so nothing asks the remote about it first).
    let blob = served_blob(&server, &ab);
    std::fs::remove_file(&blob)
        .unwrap_or_else(|e| panic!("remove the served blob {}: {e}", blob.display()));
    w.write("gen/extra.txt", "two\n");
    let (ev, f) = build(&w, &toplevel);
    let warned = warnings(&ev);
    assert!(
        warned
            .iter()
            .any(|m| m.contains("no longer has") && m.contains("running the build again")),
        "{warned:?}"
    );
    let mut want = ab.clone();
    want.extend_from_slice(b"two\n");
    assert_eq!(std::fs::read(w.path(ABAB)).unwrap(), want, "{f}");
    assert_eq!(f["failed"], 0, "{f}");
    // The producer ran again here and shared its output: the remote has the blob again.
    assert!(blob.exists(), "the re-made output was not uploaded");

    // Another checkout (a cache of its own) asks the remote about `ab`, whose entry names a
    // blob the remote no longer has: a miss, and `ab` runs again without a second attempt.
    std::fs::remove_file(&blob).unwrap();
    let other = chain_with_extra();
    other.write("gen/extra.txt", "three\n");
    let (ev, f) = build(&other, &toplevel);
    assert!(warnings(&ev).is_empty(), "{:?}", warnings(&ev));
    assert_eq!(f["executed"], 2, "{f}");
}
