//! Hostile native actions against the host side of staging: a genrule writes symlinks to
//! host directories into its writable output directories, hoping wbuild follows them when
//! it collects the outputs (moving a host file into the CAS) or when it empties the reused
//! staging slot for the next action (deleting a host directory's contents). Each test checks
//! that the host files are intact, that the cache still verifies and that a later clean
//! build gives the reference bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use wbuild_tests::{TestWorkspace, stderr, stdout};

use super::{blake3_hex, ws};

/// A host directory next to the workspace with victim files, and what they held.
struct Victims {
    dir: PathBuf,
    before: BTreeMap<String, String>,
}

impl Victims {
    fn new(w: &TestWorkspace, files: &[(&str, &str)]) -> Victims {
        let dir = w.root.parent().unwrap().join("host-victims");
        for (name, text) in files {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
        }
        let v = Victims {
            before: Self::read(&dir),
            dir,
        };
        assert_eq!(v.before.len(), files.len());
        v
    }

    fn read(dir: &Path) -> BTreeMap<String, String> {
        fn walk(dir: &Path, base: &Path, out: &mut BTreeMap<String, String>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                let rel = p.strip_prefix(base).unwrap().display().to_string();
                let m = std::fs::symlink_metadata(&p).unwrap();
                if m.is_dir() {
                    walk(&p, base, out);
                } else {
                    out.insert(rel, blake3_hex(&std::fs::read(&p).unwrap()));
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(dir, dir, &mut out);
        out
    }

    fn assert_intact(&self) {
        assert_eq!(
            Self::read(&self.dir),
            self.before,
            "host files in {} changed",
            self.dir.display()
        );
    }
}

fn verify_clean(w: &TestWorkspace) {
    let verify = stdout(&w.ok(&["cache", "verify"]));
    assert!(!verify.contains("corrupt"), "{verify}");
}

/// A clean build (empty cache, no outputs) of `target` gives `want` at `out`.
fn clean_build_gives(w: &TestWorkspace, target: &str, out: &str, want: &str) {
    std::fs::remove_dir_all(&w.cache).unwrap();
    let _ = std::fs::remove_dir_all(w.path("wbuild-out"));
    w.ok(&["build", "-j", "1", target]);
    assert_eq!(w.read(out), want);
}

#[test]
fn hostile_host_output_parent_replaced_by_a_symlink_is_not_followed() {
    let w = ws();
    let v = Victims::new(&w, &[("victim.txt", "the host's own bytes\n")]);
    w.write(
        "n/WBUILD",
        &format!(
            r#"
genrule(
    name = "steal",
    outs = ["a.txt", "sub/victim.txt"],
    cmd = "rm -rf n/sub && ln -s {host} n/sub && echo a > n/a.txt",
)
genrule(
    name = "benign",
    outs = ["b.txt"],
    cmd = "echo benign > $@",
)
"#,
            host = v.dir.display()
        ),
    );
    let out = w.fail(&["build", "-j", "1", "//n:steal"]);
    let err = stderr(&out);
    assert!(
        err.contains("n/sub/victim.txt") && err.contains("not a regular file"),
        "{}",
        w.report(&["build", "//n:steal"], &out)
    );
    v.assert_intact();
    assert!(!w.path("wbuild-out/n/sub/victim.txt").exists());
    // Without the sandbox the command can reach the host anyway, but wbuild itself still
    // follows nothing when it collects the outputs.
    let out = w.fail(&["build", "-j", "1", "--sandbox=none", "//n:steal"]);
    let err = stderr(&out);
    assert!(
        err.contains("n/sub/victim.txt") && err.contains("not a regular file"),
        "{}",
        w.report(&["build", "--sandbox=none", "//n:steal"], &out)
    );
    v.assert_intact();
    // The same slot runs the next action normally (the symlink left there is removed, not
    // followed).
    w.ok(&["build", "-j", "1", "//n:benign"]);
    assert_eq!(w.read("wbuild-out/n/b.txt"), "benign\n");
    v.assert_intact();
    verify_clean(&w);
    clean_build_gives(&w, "//n:benign", "wbuild-out/n/b.txt", "benign\n");
    v.assert_intact();
}

#[test]
fn hostile_host_symlinks_left_in_a_reused_slot_are_not_followed() {
    let w = ws();
    let v = Victims::new(
        &w,
        &[
            ("x.txt", "victim x\n"),
            ("keep/y.txt", "victim y\n"),
            ("q2/x.txt", "victim q2\n"),
        ],
    );
    let host = v.dir.display().to_string();
    // //p:plant leaves symlinks to the host directory in the slot's output tree: one where
    // the next action's output directory goes (p/q2), one beside its own output, and one
    // to a host file. //p/q2:after then runs in the same slot (-j 1).
    w.write(
        "p/WBUILD",
        &format!(
            r#"
genrule(
    name = "plant",
    outs = ["top.txt"],
    cmd = "ln -s {host} p/q2 && ln -s {host} p/dirlink && ln -s {host}/x.txt p/filelink && echo t > $@",
)
"#
        ),
    );
    w.write(
        "p/q2/WBUILD",
        r#"
genrule(
    name = "after",
    srcs = ["//p:plant"],
    outs = ["x.txt"],
    cmd = "cat $(location //p:plant) > $@ && ls -A $(RULEDIR) >> $@",
)
"#,
    );
    let (out, ev) = w.events(&["build", "-j", "1", "//p/q2:after"]);
    assert!(
        out.status.success(),
        "{}",
        w.report(&["build", "//p/q2:after"], &out)
    );
    assert!(ev.iter().any(|e| e["label"] == "//p:plant"), "{ev:?}");
    v.assert_intact();
    // The action saw an empty directory of its own, not the host's.
    assert_eq!(w.read("wbuild-out/p/q2/x.txt"), "t\nx.txt\n");
    // And again with the cache warm for //p:plant only: the slot is emptied again.
    w.write(
        "p/q2/WBUILD",
        r#"
genrule(
    name = "after",
    srcs = ["//p:plant"],
    outs = ["x.txt"],
    cmd = "cat $(location //p:plant) > $@ && echo again >> $@",
)
"#,
    );
    w.ok(&["build", "-j", "1", "//p/q2:after"]);
    assert_eq!(w.read("wbuild-out/p/q2/x.txt"), "t\nagain\n");
    v.assert_intact();
    verify_clean(&w);
    clean_build_gives(&w, "//p/q2:after", "wbuild-out/p/q2/x.txt", "t\nagain\n");
    v.assert_intact();
}

#[test]
fn hostile_host_unsandboxed_leftovers_in_a_kept_slot_are_swept_not_followed() {
    // Unsandboxed, a slot's tree of inputs is kept from one action to the next. What an
    // action leaves there (links to host directories and files where inputs and directories
    // were, a read-only directory) is removed before the next one runs, never followed; the
    // next action sees exactly its inputs.
    let w = ws();
    let v = Victims::new(
        &w,
        &[
            ("victim.txt", "the host's own bytes\n"),
            ("d/inner.txt", "inner\n"),
        ],
    );
    w.write("n/in.txt", "in\n");
    w.write(
        "n/WBUILD",
        &format!(
            r#"
genrule(
    name = "plant",
    srcs = ["in.txt"],
    outs = ["a.txt"],
    cmd = "echo a > n/a.txt && ln -s {host} n/planted && rm -f n/in.txt && ln -s {host}/victim.txt n/in.txt && mkdir -p n/deep/er && ln -s {host}/d n/deep/er/link && chmod 555 n/deep n",
)
genrule(
    name = "after",
    srcs = ["in.txt", ":plant"],
    outs = ["b.txt"],
    cmd = "test ! -e n/planted && test ! -e n/deep && test ! -L n/in.txt && cat n/in.txt n/a.txt > n/b.txt",
)
"#,
            host = v.dir.display()
        ),
    );
    w.ok(&["build", "-j", "1", "--sandbox=none", "//n:after"]);
    assert_eq!(w.read("wbuild-out/n/b.txt"), "in\na\n");
    v.assert_intact();
    verify_clean(&w);
}
