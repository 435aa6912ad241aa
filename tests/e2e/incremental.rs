//! The edit loop: after an edit, the up-to-date snapshot vouches for the results of the
//! actions the edit does not reach, so only the rest compute keys.

use super::*;

/// How each action of a build was answered: `executed`, `cached` (key computed, action
/// cache), or `known` (from the snapshot, no key computed).
fn answers(ev: &[serde_json::Value]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = ev
        .iter()
        .filter(|e| e["type"] == "action")
        .map(|e| {
            let phases = e["phases"].as_array().cloned().unwrap_or_default();
            let known = phases
                .iter()
                .any(|p| p["name"] == "known from the up-to-date snapshot")
                && !phases.iter().any(|p| p["name"] == "key");
            let how = match (e["status"].as_str().unwrap(), known) {
                ("cached", true) => "known",
                (s, _) => s,
            };
            (e["label"].as_str().unwrap().to_owned(), how.to_owned())
        })
        .collect();
    v.sort();
    v
}

/// The chain workspace, its sources old enough for the snapshot to trust, built once.
fn built_chain() -> TestWorkspace {
    let w = ws();
    chain(&w);
    for f in ["gen/a.txt", "gen/b.txt", "other/c.txt", "tools/probe.wasm"] {
        wbuild_tests::backdate(&w.path(f));
    }
    w.ok(&["build"]);
    w
}

/// The next build of the chain is answered by the snapshot's no-op path: its three actions
/// cached, nothing keyed or looked up.
fn assert_no_op(w: &TestWorkspace) {
    let (_, ev) = w.events(&["build"]);
    let actions: Vec<&serde_json::Value> = ev.iter().filter(|e| e["type"] == "action").collect();
    assert_eq!(actions.len(), 3, "{ev:?}");
    for a in actions {
        assert_eq!(a["status"], "cached", "{a}");
        assert!(a["phases"].is_null(), "not a no-op: {a}");
    }
}

#[test]
fn an_edit_computes_keys_only_for_what_it_reaches() {
    let w = ws();
    chain(&w);
    w.ok(&["build"]);
    // Old enough to be trusted by the snapshot (a fresh file always counts as changed).
    for f in ["gen/a.txt", "gen/b.txt", "other/c.txt"] {
        wbuild_tests::backdate(&w.path(f));
    }
    w.ok(&["build"]);

    w.write("gen/b.txt", "there\n");
    let (out, ev) = w.events(&["build"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    assert_eq!(
        answers(&ev),
        [
            s("//gen:ab", "executed"),
            s("//gen:abab", "executed"),
            s("//other:c", "known")
        ]
    );
    assert_eq!(
        w.read("wbuild-out/gen/abab.txt"),
        "hello\nthere\nhello\nthere\n"
    );
    // Only the edited file was read to be hashed.
    assert_eq!(finished(&ev)["files_hashed"], 1, "{ev:?}");

    // Edited again at once (the file is too fresh to trust): still exact.
    w.write("gen/b.txt", "world\n");
    let (_, ev) = w.events(&["build"]);
    let a = answers(&ev);
    assert_eq!(a[2], s("//other:c", "known"), "{a:?}");
    assert_eq!(
        w.read("wbuild-out/gen/abab.txt"),
        "hello\nworld\nhello\nworld\n"
    );

    // An output deleted by hand: its action is not vouched for and is restored.
    wbuild_tests::backdate(&w.path("gen/b.txt"));
    w.ok(&["build"]);
    std::fs::remove_file(w.path("wbuild-out/other/c2.txt")).unwrap();
    let (_, ev) = w.events(&["build"]);
    let a = answers(&ev);
    assert_eq!(a[2], s("//other:c", "cached"), "{a:?}");
    assert_eq!(w.read("wbuild-out/other/c2.txt"), "c\nc\n");
    // An output edited by hand is put back too.
    w.write("wbuild-out/gen/abab.txt", "tampered\n");
    let (_, ev) = w.events(&["build"]);
    assert_eq!(answers(&ev)[1], s("//gen:abab", "cached"));
    assert_eq!(
        w.read("wbuild-out/gen/abab.txt"),
        "hello\nworld\nhello\nworld\n"
    );
}

#[test]
fn files_no_target_names_leave_the_snapshot_vouching_for_every_action() {
    let w = built_chain();
    assert_no_op(&w);
    // An editor's swap file beside the sources and a new directory of notes: the workspace
    // signature changes (a glob could have named them), so the build files are evaluated
    // again, but the graph comes out the same and nothing is keyed.
    w.write("gen/.a.txt.swp", "swap");
    w.write("docs/notes.md", "notes");
    let (out, ev) = w.events(&["build"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    assert_eq!(
        answers(&ev),
        [
            s("//gen:ab", "known"),
            s("//gen:abab", "known"),
            s("//other:c", "known")
        ]
    );
    assert_no_op(&w);
    // A file a glob picks up changes the graph: what it reaches is keyed and run again.
    w.write(
        "other/WBUILD",
        &w.read("other/WBUILD")
            .replace("srcs = [\"c.txt\"]", "srcs = glob([\"*.txt\"])"),
    );
    w.ok(&["build"]);
    w.write("other/d.txt", "d\n");
    let (_, ev) = w.events(&["build"]);
    let a = answers(&ev);
    assert_eq!(a[2].0, "//other:c");
    assert_ne!(a[2].1, "known", "{a:?}");
    // wbuild.toml changes how actions run (here their clock) without changing the graph:
    // nothing is vouched for.
    w.write("wbuild.toml", "[build]\nsource_date_epoch = 86400\n");
    let (_, ev) = w.events(&["build"]);
    let a = answers(&ev);
    assert!(a.iter().all(|(_, how)| how != "known"), "{a:?}");
}

#[test]
fn a_rerun_that_gives_the_same_bytes_leaves_its_consumers_known() {
    let w = ws();
    // `pre` keeps only the first line of its input; `post` consumes it.
    w.write("p/in.txt", "first\nsecond\n");
    w.write(
        "p/WBUILD",
        r#"
wasi_run(name = "pre", tool = "//tools:probe", srcs = ["in.txt"], outs = ["pre.txt"],
         args = ["exists", "$(location in.txt)", "$@"])
wasi_run(name = "post", tool = "//tools:probe", srcs = [":pre"], outs = ["post.txt"],
         args = ["concat", "$@", "$(location :pre)", "$(location :pre)"])
"#,
    );
    w.ok(&["build"]);
    wbuild_tests::backdate(&w.path("p/in.txt"));
    w.ok(&["build"]);
    // The edit changes in.txt, but `pre` only asks whether it exists: same output.
    w.write("p/in.txt", "first\nchanged\n");
    let (_, ev) = w.events(&["build"]);
    assert_eq!(
        answers(&ev),
        [s("//p:post", "known"), s("//p:pre", "executed")]
    );
    assert_eq!(w.read("wbuild-out/p/post.txt"), "true\ntrue\n");
}

#[test]
fn the_build_after_a_first_build_is_proven_a_no_op() {
    // The first build creates wbuild-out/: that must not change the workspace signature
    // the next build is checked against.
    let w = built_chain();
    assert_no_op(&w);
}

#[test]
fn the_build_after_an_edit_is_a_no_op_and_the_history_counts_what_was_known() {
    // The snapshot written after an edit records again, without a second stat, what the
    // check found unchanged; the outputs the edit's actions wrote are stat'ed anew (recording
    // their old stats would make the next build rerun them).
    let w = built_chain();
    w.write("gen/b.txt", "there\n");
    wbuild_tests::backdate(&w.path("gen/b.txt"));
    let (out, ev) = w.events(&["build"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    assert_eq!(
        answers(&ev),
        [
            s("//gen:ab", "executed"),
            s("//gen:abab", "executed"),
            s("//other:c", "known")
        ]
    );
    // The history lists what ran and counts the action the snapshot answered.
    let log = stdout(&w.ok(&["log", "what-ran"]));
    assert!(
        log.contains("2 of 3 actions ran (1 known up to date from the snapshot, not listed)"),
        "{log}"
    );
    assert_no_op(&w);
    assert_eq!(
        w.read("wbuild-out/gen/abab.txt"),
        "hello\nthere\nhello\nthere\n"
    );
}
