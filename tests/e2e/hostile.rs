//! Hostile guests: WASI programs that try every way out of the sandbox (path traversal,
//! symlinks, huge allocations, deep recursion, descriptor exhaustion, writing declared inputs,
//! writing undeclared paths, flooding stdout). Each test checks that the attempt is refused or
//! stopped with a clear message, that nothing outside the sandbox changed (files next to the
//! workspace, the workspace's sources, the cache) and that the host keeps working.
//!
//! The guests are the `probe` modes (tests/guests/probe) and, where Rust cannot express the
//! attack exactly (raw `memory.grow`, `table.grow`, unbounded recursion), WebAssembly text
//! modules (the executor's wasmtime accepts the text format as a tool module).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use wbuild_tests::{TestWorkspace, stderr, stdout};

use super::{blake3_hex, ws};

/// Every file under `dir` (symlinks not followed) with the BLAKE3 of its bytes (or of its link
/// target) and its mode.
fn snapshot(dir: &Path) -> BTreeMap<String, (String, u32)> {
    fn walk(dir: &Path, base: &Path, out: &mut BTreeMap<String, (String, u32)>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let mode = m.permissions().mode();
            if m.file_type().is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                let t = t.into_os_string().into_encoded_bytes();
                out.insert(rel, (format!("-> {}", blake3_hex(&t)), mode));
            } else if m.is_dir() {
                out.insert(format!("{rel}/"), (String::new(), mode));
                walk(&p, base, out);
            } else {
                out.insert(rel, (blake3_hex(&std::fs::read(&p).unwrap()), mode));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The workspace's sources (everything but `wbuild-out/`).
fn sources(w: &TestWorkspace) -> BTreeMap<String, (String, u32)> {
    let mut s = snapshot(&w.root);
    s.retain(|k, _| !k.starts_with("wbuild-out"));
    s
}

/// A directory next to the workspace and the cache (inside the test's temporary directory)
/// holding a canary file whose text must never show up anywhere.
struct Outside {
    dir: PathBuf,
    canary: PathBuf,
    secret: String,
}

fn outside(w: &TestWorkspace) -> Outside {
    let dir = w.root.parent().unwrap().join("outside");
    std::fs::create_dir_all(&dir).unwrap();
    let canary = dir.join("canary.txt");
    let secret = format!("CANARY-{}-do-not-leak", std::process::id());
    std::fs::write(&canary, &secret).unwrap();
    Outside {
        dir,
        canary,
        secret,
    }
}

/// Whether any file under `dir` contains `needle`.
fn any_file_contains(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file()
                && let Ok(b) = std::fs::read(&p)
                && b.windows(needle.len()).any(|x| x == needle.as_bytes())
            {
                found.push(p);
            }
        }
    }
    found
}

/// The secret is nowhere in what wbuild printed, stored or materialised.
fn secret_kept(w: &TestWorkspace, o: &Outside, printed: &[&std::process::Output]) {
    for out in printed {
        assert!(!stdout(out).contains(&o.secret), "{}", stdout(out));
        assert!(!stderr(out).contains(&o.secret), "{}", stderr(out));
    }
    assert_eq!(
        any_file_contains(&w.cache, &o.secret),
        Vec::<PathBuf>::new()
    );
    assert_eq!(
        any_file_contains(&w.path("wbuild-out"), &o.secret),
        Vec::<PathBuf>::new()
    );
}

/// `wbuild cache verify` finds nothing to repair.
fn verify_clean(w: &TestWorkspace) {
    let out = w.ok(&["cache", "verify"]);
    let text = stdout(&out);
    assert!(text.contains("cache is consistent"), "{text}");
    assert!(!text.contains("corrupt"), "{text}");
}

/// After a hostile action, the same process and the next one still build normally.
fn host_still_works(w: &TestWorkspace) {
    w.write("ok/in.txt", "fine\n");
    w.write(
        "ok/WBUILD",
        "wasi_run(name = \"ok\", tool = \"//tools:probe\", srcs = [\"in.txt\"], outs = [\"ok.txt\"], args = [\"concat\", \"$@\", \"$(location in.txt)\", \"$(location in.txt)\"])\n",
    );
    w.ok(&["build", "//ok:ok"]);
    assert_eq!(w.read("wbuild-out/ok/ok.txt"), "fine\nfine\n");
}

/// Every line of `report` (the guest's own account of its attempts) that starts with one of
/// `whats` must say `ERR`; each of them must be there.
fn all_refused(report: &str, whats: &[String]) {
    for what in whats {
        let line = report
            .lines()
            .find(|l| l.contains(&format!("{what}: ")))
            .unwrap_or_else(|| panic!("no attempt {what:?} in\n{report}"));
        assert!(line.contains(": ERR "), "not refused: {line}\n{report}");
    }
}

/// The tools/WBUILD of a workspace: the probe plus WebAssembly-text tools.
fn wat_tools(w: &TestWorkspace, tools: &[(&str, &str)]) {
    let mut build = String::from("wasi_tool(name = \"probe\", src = \"probe.wasm\")\n");
    for (name, wat) in tools {
        w.write(&format!("tools/{name}.wasm"), wat);
        build.push_str(&format!(
            "wasi_tool(name = \"{name}\", src = \"{name}.wasm\")\n"
        ));
    }
    w.write("tools/WBUILD", &build);
}

fn limits(w: &TestWorkspace) {
    w.write(
        "wbuild.toml",
        "[build]\nsource_date_epoch = 0\n[wasi]\nmemory_limit_mb = 64\ntimeout_secs = 60\n",
    );
}

fn quote(args: &[String]) -> String {
    args.iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------
// Path traversal

#[test]
fn traversal_above_the_root_finds_nothing_and_is_recorded_as_misses() {
    let w = ws();
    let o = outside(&w);
    // The host layout is <tmp>/{ws,cache,outside}; the guest's root is somewhere under the
    // cache. Every depth of `..` that could reach `outside/canary.txt` or the workspace.
    let mut paths: Vec<String> = Vec::new();
    for n in 1..=8 {
        paths.push(format!("{}outside/canary.txt", "../".repeat(n)));
        paths.push(format!("{}ws/wbuild.toml", "../".repeat(n)));
    }
    paths.push("t/../../outside/canary.txt".into());
    paths.push("/tmp/../../outside/canary.txt".into());
    paths.push("/tmp/../..".into());
    let whats: Vec<String> = paths.iter().map(|p| format!("read {p}")).collect();
    w.write(
        "t/WBUILD",
        &format!(
            "wasi_run(name = \"up\", tool = \"//tools:probe\", srcs = [], outs = [\"r.txt\"], args = [\"tryread\", \"$@\", {}])\n",
            quote(&paths)
        ),
    );
    let before = (sources(&w), snapshot(&o.dir));
    // Above the root nothing exists: every attempt finds nothing, as a probe of any other
    // missing path does, and the action (which reports and exits 0) succeeds.
    let out = w.ok(&["build", "//t:up", "--show-output"]);
    let err = stderr(&out);
    all_refused(&err, &whats);
    all_refused(
        &err,
        &paths
            .iter()
            .map(|p| format!("list {p}"))
            .collect::<Vec<_>>(),
    );
    for p in &paths {
        assert!(
            err.contains(&format!("read {p}: ERR NotFound")),
            "{p}: {err}"
        );
    }
    // Recorded as misses, as the guest named them.
    let explain = w.ok(&["explain", "//t:up"]);
    let text = stdout(&explain);
    for p in ["../outside/canary.txt", "t/../../outside/canary.txt"] {
        assert!(
            text.lines()
                .any(|l| l.contains("missing") && l.trim_end().ends_with(p)),
            "{p}: {text}"
        );
    }
    secret_kept(&w, &o, &[&out, &explain]);
    assert_eq!((sources(&w), snapshot(&o.dir)), before);
    verify_clean(&w);
    host_still_works(&w);
}

#[test]
fn absolute_and_proc_paths_do_not_exist_for_the_guest() {
    let w = ws();
    let o = outside(&w);
    let canary = o.canary.display().to_string();
    let ws_root = w.root.display().to_string();
    let paths: Vec<String> = vec![
        canary.clone(),
        format!("{ws_root}/wbuild.toml"),
        "/etc/passwd".into(),
        "/proc/self/environ".into(),
        "/proc/self/cmdline".into(),
        format!("/proc/self/root{canary}"),
        "/proc/self/cwd/wbuild.toml".into(),
        "/proc/self/fd/3".into(),
        "/dev/zero".into(),
        format!("/tmp/../{}", canary.trim_start_matches('/')),
    ];
    let whats: Vec<String> = paths.iter().map(|p| format!("read {p}")).collect();
    w.write(
        "t/WBUILD",
        &format!(
            "wasi_run(name = \"abs\", tool = \"//tools:probe\", srcs = [], outs = [\"r.txt\"], args = [\"tryread\", \"$@\", {}])\n",
            quote(&paths)
        ),
    );
    let before = (sources(&w), snapshot(&o.dir));
    let out = w.ok(&["build", "//t:abs", "--show-output"]);
    let text = stderr(&out);
    all_refused(&text, &whats);
    // Absolute paths name files in the guest's own root, where they do not exist, and so do
    // paths through /tmp and `..` above it.
    for p in &paths {
        assert!(
            text.contains(&format!("read {p}: ERR NotFound")),
            "{p}: {text}"
        );
    }
    secret_kept(&w, &o, &[&out]);
    assert_eq!((sources(&w), snapshot(&o.dir)), before);
    verify_clean(&w);
    host_still_works(&w);
}

#[test]
fn undeclared_files_next_to_declared_ones_are_invisible_and_reading_them_fails() {
    let w = ws();
    w.write("p/a.txt", "declared\n");
    w.write("p/b.txt", "undeclared neighbour\n");
    w.write(
        "p/WBUILD",
        r#"
wasi_run(name = "list", tool = "//tools:probe", srcs = ["a.txt"], outs = ["o/r.txt"],
         args = ["tryread", "$@", "p/a.txt", "p", "p/o", "p/o/../a.txt", "wbuild-out/p", "ws"])
wasi_run(name = "next", tool = "//tools:probe", srcs = ["a.txt"], outs = ["o/n.txt"],
         args = ["tryread", "$@", "p/b.txt"])
wasi_run(name = "through_out", tool = "//tools:probe", srcs = ["a.txt"], outs = ["o/t.txt"],
         args = ["tryread", "$@", "p/o/../b.txt", "p/o/../../p/./b.txt"])
"#,
    );
    let before = sources(&w);
    // Listing and reading what is declared works; nothing else is there.
    let out = w.ok(&["build", "//p:list", "--show-output"]);
    let text = stderr(&out);
    assert!(text.contains("read p/a.txt: OK \"declared\\n\""), "{text}");
    assert!(
        text.contains("read p/o/../a.txt: OK \"declared\\n\""),
        "{text}"
    );
    assert!(text.contains("list p: OK [\"a.txt\", \"o\"]"), "{text}");
    assert!(text.contains("list p/o: OK []"), "{text}");
    all_refused(
        &text,
        &["read wbuild-out/p".to_owned(), "list ws".to_owned()],
    );
    assert!(!text.contains("neighbour"), "{text}");

    // Reading the neighbour, directly or through the output directory, fails the action.
    let out = w.fail(&["build", "-k", "//p:next", "//p:through_out"]);
    let err = stderr(&out);
    assert!(!err.contains("neighbour"), "{err}");
    assert!(
        err.contains("read undeclared input p/b.txt: add it to srcs of //p:next"),
        "{err}"
    );
    assert!(
        err.contains("read undeclared input p/b.txt: add it to srcs of //p:through_out"),
        "{err}"
    );
    all_refused(
        &err,
        &[
            "read p/b.txt".to_owned(),
            "read p/o/../b.txt".to_owned(),
            "read p/o/../../p/./b.txt".to_owned(),
        ],
    );
    assert_eq!(sources(&w), before);
    verify_clean(&w);
}

/// `readlink` is held to the same visibility as `stat`: a directory an earlier action of the
/// same worker left in the reused staging root reads as missing (not as "not a symlink",
/// which would tell the guest it exists), and a directory's size does not depend on the host
/// file system or on what the staging root holds.
#[test]
fn readlink_and_directory_sizes_reveal_nothing_hidden() {
    let w = ws();
    w.write("q/hidden/b.txt", "left behind\n");
    w.write(
        "q/WBUILD",
        r#"
wasi_run(name = "first", tool = "//tools:probe", srcs = ["hidden/b.txt"], outs = ["o/first.txt"],
         args = ["concat", "$@", "$(location hidden/b.txt)"])
"#,
    );
    w.write("p/a.txt", "declared\n");
    w.write(
        "p/WBUILD",
        r#"
wasi_run(name = "peek", tool = "//tools:probe", srcs = ["a.txt", "//q:first"],
         outs = ["o/r.txt"], args = ["tryread", "$@", "p/nothing.txt", "q/hidden", "p", "p/o"])
"#,
    );
    let before = sources(&w);
    // One worker, one build: `first` stages q/hidden/b.txt into the root `peek` then reuses.
    let out = w.run(&["build", "-j", "1", "//p:peek", "--show-output"]);
    let text = stderr(&out);
    assert!(
        text.contains("readlink p/nothing.txt: ERR NotFound"),
        "{text}"
    );
    assert!(text.contains("readlink q/hidden: ERR NotFound"), "{text}");
    assert!(text.contains("stat p: OK 0\n"), "{text}");
    assert!(text.contains("stat p/o: OK 0\n"), "{text}");
    // What the guest did is on record: the readlinks of missing paths are probes.
    let out = w.ok(&["explain", "//p:peek"]);
    assert!(stdout(&out).contains("p/nothing.txt"), "{}", stdout(&out));
    assert_eq!(sources(&w), before);
    verify_clean(&w);
}

// ---------------------------------------------------------------------------------------
// Symlinks

#[test]
fn symlinks_made_in_tmp_lead_nowhere_outside() {
    let w = ws();
    let o = outside(&w);
    w.write("s/in.txt", "original\n");
    let mut targets: Vec<String> = vec![
        o.canary.display().to_string(),
        o.dir.display().to_string(),
        "/etc".into(),
        "/".into(),
        "..".into(),
    ];
    for n in 1..=7 {
        targets.push(format!("{}outside/canary.txt", "../".repeat(n)));
        targets.push(format!("{}ws/s/in.txt", "../".repeat(n)));
        targets.push(format!("{}root/s/in.txt", "../".repeat(n)));
    }
    w.write(
        "s/WBUILD",
        &format!(
            "wasi_run(name = \"tmp\", tool = \"//tools:probe\", srcs = [\"in.txt\"], outs = [\"r.txt\"], args = [\"tmplinks\", \"$@\", {}])\n",
            quote(&targets)
        ),
    );
    let before = (sources(&w), snapshot(&o.dir));
    let out = w.run(&["build", "//s:tmp", "--show-output"]);
    let text = stderr(&out);
    // Absolute targets are refused when the link is made; the others are made, and every use
    // of them fails: reads find nothing (nothing exists outside), writes are refused and fail
    // the action, naming the links (summarised: one line, however many).
    let summary = text
        .lines()
        .find(|l| l.contains("FAILED //s:tmp: "))
        .unwrap_or_else(|| panic!("no failure line in {text}"));
    let made_count = targets.iter().filter(|t| !t.starts_with('/')).count();
    assert!(
        summary.contains(&format!(
            "tried to reach {made_count} paths outside its sandbox"
        )),
        "{summary}"
    );
    let mut named = 0;
    for (i, target) in targets.iter().enumerate() {
        let made = text.contains(&format!("symlink /tmp/l{i} -> {target}: OK"));
        assert_eq!(
            made,
            !target.starts_with('/'),
            "/tmp/l{i} -> {target}\n{text}"
        );
        if made {
            let whats: Vec<String> = ["read", "write", "append", "list", "stat"]
                .iter()
                .map(|w| format!("{w} /tmp/l{i}"))
                .collect();
            all_refused(&text, &whats);
            for w in ["read", "list", "stat"] {
                assert!(
                    text.contains(&format!("{w} /tmp/l{i}: ERR NotFound")),
                    "/tmp/l{i} -> {target}\n{text}"
                );
            }
            if summary.contains(&format!("/tmp/l{i},")) || summary.contains(&format!("/tmp/l{i} "))
            {
                named += 1;
            }
        }
    }
    assert_eq!(named, made_count.min(5), "{summary}");
    secret_kept(&w, &o, &[&out]);
    assert_eq!((sources(&w), snapshot(&o.dir)), before);
    verify_clean(&w);
    host_still_works(&w);
}

/// A declared output made a symlink to a declared input (directly, or in /tmp and renamed
/// into place), then written through: the input must not change, in the workspace or in
/// the cache.
#[test]
fn writing_through_an_output_symlink_cannot_reach_an_input() {
    for via in ["direct", "via-tmp"] {
        let w = ws();
        w.write("s/in.txt", "original\n");
        w.write(
            "s/WBUILD",
            &format!(
                "wasi_run(name = \"l\", tool = \"//tools:probe\", srcs = [\"in.txt\"], outs = [\"out.txt\"], args = [\"linkout\", \"$@\", \"in.txt\", \"$(location in.txt)\", \"{via}\", \"replace\"])\n"
            ),
        );
        let before = sources(&w);
        let out = w.run(&["build", "//s:l", "--show-output"]);
        let text = stderr(&out);
        assert!(
            text.contains("input afterwards: OK \"original\\n\""),
            "{via}: {text}"
        );
        // No symlink can be made in the root or moved into it; the writes made a plain file.
        assert!(text.contains("is a symlink: ERR NotFound"), "{via}: {text}");
        let made = if via == "direct" {
            "symlink out: ERR PermissionDenied"
        } else {
            "rename /tmp/link -> out: ERR PermissionDenied"
        };
        assert!(text.contains(made), "{via}: {text}");
        assert!(text.contains("Build succeeded"), "{via}: {text}");
        assert_eq!(w.read("wbuild-out/s/out.txt"), "clean\n", "{via}");
        assert_eq!(sources(&w), before, "{via}");
        verify_clean(&w);
        // The input's blob is intact: a build that reads it sees the original text.
        host_still_works(&w);
        w.write(
            "s/WBUILD",
            "wasi_run(name = \"c\", tool = \"//tools:probe\", srcs = [\"in.txt\"], outs = [\"c.txt\"], args = [\"concat\", \"$@\", \"$(location in.txt)\"])\n",
        );
        w.ok(&["build", "//s:c"]);
        assert_eq!(w.read("wbuild-out/s/c.txt"), "original\n", "{via}");
    }
}

/// An output path under another output that the guest makes a symlink out of the sandbox
/// (`outs = ["x", "x/canary.txt"]`, `x -> ../../outside`): the host must never follow it when
/// it collects or cleans up outputs.
#[test]
fn output_directory_symlinks_are_never_followed_by_the_host() {
    let w = ws();
    let o = outside(&w);
    w.write("s/in.txt", "original\n");
    let mut targets: Vec<String> = vec![o.dir.display().to_string()];
    for n in 1..=7 {
        targets.push(format!("{}outside", "../".repeat(n)));
    }
    let mut build = String::new();
    for (i, t) in targets.iter().enumerate() {
        for via in ["direct", "via-tmp"] {
            build.push_str(&format!(
                "wasi_run(name = \"x{i}_{via}\", tool = \"//tools:probe\", srcs = [\"in.txt\"], outs = [\"x{i}{via}\", \"x{i}{via}/canary.txt\"], args = [\"linkout\", \"s/x{i}{via}\", {t:?}, \"$(location in.txt)\", \"{via}\", \"keep\"])\n"
            ));
        }
    }
    w.write("s/WBUILD", &build);
    let before = (sources(&w), snapshot(&o.dir));
    let out = w.fail(&["build", "-k", "//s:all", "--show-output"]);
    let err = stderr(&out);
    for (i, t) in targets.iter().enumerate() {
        for via in ["direct", "via-tmp"] {
            assert!(err.contains(&format!("FAILED //s:x{i}_{via}: ")), "{err}");
        }
        // Making the link is refused; one that points outside the root (from `s/`: two or
        // more `..`, or absolute) is an escape attempt and named as such.
        if t.starts_with('/') || t.matches("../").count() >= 2 {
            assert!(
                err.contains(&format!("tried to reach {t} outside its sandbox")),
                "{t}: {err}"
            );
        }
    }
    assert!(!err.contains("symlink out: OK"), "{err}");
    assert!(!err.contains("rename /tmp/link -> out: OK"), "{err}");
    assert!(err.contains("0 executed, 0 cached, 16 failed"), "{err}");
    secret_kept(&w, &o, &[&out]);
    assert_eq!((sources(&w), snapshot(&o.dir)), before);
    assert!(o.canary.is_file());
    verify_clean(&w);
    host_still_works(&w);
}

/// A declared input that is itself a symlink to a file outside the workspace: wbuild stages
/// the target's content as a plain file, so the guest reads the declared content and nothing
/// else (no link to follow to the target's neighbours), and cannot change the target.
#[test]
fn declared_input_symlinked_outside_the_workspace_is_content_only() {
    let w = ws();
    let o = outside(&w);
    let target = o.dir.join("declared.txt");
    std::fs::write(&target, "declared through a link\n").unwrap();
    std::fs::create_dir_all(w.path("s")).unwrap();
    std::os::unix::fs::symlink(&target, w.path("s/link.txt")).unwrap();
    w.write(
        "s/WBUILD",
        r#"
wasi_run(name = "read", tool = "//tools:probe", srcs = ["link.txt"], outs = ["r.txt"],
         args = ["tryread", "$@", "$(location link.txt)", "s/link.txt/../canary.txt",
                 "s/canary.txt", "s/link.txt/.."])
wasi_run(name = "write", tool = "//tools:probe", srcs = ["link.txt"], outs = ["w.txt"],
         args = ["inputs", "$@", "$(location link.txt)"])
"#,
    );
    let before = (sources(&w), snapshot(&o.dir));
    let out = w.fail(&["build", "-k", "//s:read", "//s:write", "--show-output"]);
    let text = stderr(&out);
    // The content, as a regular file.
    assert!(
        text.contains("read s/link.txt: OK \"declared through a link\\n\""),
        "{text}"
    );
    assert!(text.contains("lstat s/link.txt: OK false"), "{text}");
    assert!(text.contains("readlink s/link.txt: ERR"), "{text}");
    all_refused(
        &text,
        &[
            "read s/link.txt/../canary.txt".to_owned(),
            "read s/canary.txt".to_owned(),
            "list s/link.txt/..".to_owned(),
        ],
    );
    assert_eq!(w.read("wbuild-out/s/r.txt").lines().count(), 20);
    // Writing it is refused like any input's.
    assert!(
        text.contains(
            "FAILED //s:write: tried to modify its input s/link.txt; inputs are read-only"
        ),
        "{text}"
    );
    assert!(
        text.contains("input afterwards: OK \"declared through a link\\n\""),
        "{text}"
    );
    secret_kept(&w, &o, &[&out]);
    assert_eq!((sources(&w), snapshot(&o.dir)), before);
    assert!(
        std::fs::symlink_metadata(w.path("s/link.txt"))
            .unwrap()
            .is_symlink()
    );
    verify_clean(&w);
}

// ---------------------------------------------------------------------------------------
// Declared inputs and undeclared outputs

#[test]
fn declared_inputs_cannot_be_changed_in_any_way() {
    let w = ws();
    w.write("s/in.txt", "original\n");
    w.write(
        "s/WBUILD",
        "wasi_run(name = \"i\", tool = \"//tools:probe\", srcs = [\"in.txt\"], outs = [\"r.txt\"], args = [\"inputs\", \"$@\", \"$(location in.txt)\"])\n",
    );
    let before = sources(&w);
    let out = w.fail(&["build", "//s:i"]);
    let err = stderr(&out);
    let whats: Vec<String> = [
        "set_len on a read-only fd",
        "write on a read-only fd",
        "set times on a read-only fd",
        "allocate on a read-only fd",
        "set times by path",
        "set times by path (nofollow)",
        "write input",
        "write input via ./ and //",
        "write input via ..",
        "create_new input",
        "append input",
        "truncate input",
        "remove input",
        "rename input",
        "rename over input",
        "symlink over input",
        "hard link input",
        "remove input dir",
        "mkdir at input",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    all_refused(&err, &whats);
    assert!(
        err.contains("tried to modify its input s/in.txt; inputs are read-only"),
        "{err}"
    );
    assert!(
        err.contains("input afterwards: OK \"original\\n\""),
        "{err}"
    );
    assert_eq!(sources(&w), before);
    verify_clean(&w);
    host_still_works(&w);
}

#[test]
fn undeclared_files_and_other_targets_outputs_cannot_be_written() {
    let w = ws();
    w.write("a/in.txt", "a\n");
    w.write(
        "a/WBUILD",
        "wasi_run(name = \"a\", tool = \"//tools:probe\", srcs = [\"in.txt\"], outs = [\"a.txt\"], args = [\"concat\", \"$@\", \"$(location in.txt)\"])\n",
    );
    w.write(
        "x/WBUILD",
        "wasi_run(name = \"x\", tool = \"//tools:probe\", srcs = [], outs = [\"o/x.txt\"], args = [\"extra\", \"$@\", \"a/a.txt\"])\n",
    );
    w.ok(&["build", "//a:a"]);
    let before = sources(&w);
    let out = w.fail(&["build", "//x:x"]);
    let err = stderr(&out);
    all_refused(
        &err,
        &[
            "mkdir next to output".to_owned(),
            "write in root".to_owned(),
            "write another target's output".to_owned(),
            "write wbuild-out".to_owned(),
        ],
    );
    // A file beside a declared output may be written (tools write temporaries there and
    // rename them into place), but one left there at exit fails the action.
    assert!(err.contains("write sibling of output: OK"), "{err}");
    let refused = err
        .lines()
        .find(|l| l.contains("tried to write 4 undeclared paths ("))
        .unwrap_or_else(|| panic!("no summary of the refused writes in {err}"));
    for p in ["x/o/sub", "stray.txt", "a/a.txt", "wbuild-out/x/o/x.txt"] {
        assert!(refused.contains(p), "{p}: {refused}");
    }
    assert!(
        refused.contains("): declare them in outs of //x:x or write scratch files to /tmp"),
        "{refused}"
    );
    assert!(
        err.contains("the tool left undeclared files beside its outputs: x/o/extra.txt;"),
        "{err}"
    );
    for p in ["x/o", "stray.txt", "wbuild-out/x", "wbuild-out/stray.txt"] {
        assert!(!w.path(p).exists(), "{p}");
    }
    assert_eq!(sources(&w), before);
    assert_eq!(w.read("wbuild-out/a/a.txt"), "a\n");
    verify_clean(&w);
}

// ---------------------------------------------------------------------------------------
// Resource exhaustion

const WAT_GROW_HUGE: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "_start")
    ;; 65535 more pages: 4 GiB, far beyond the limit.
    (if (i32.eq (memory.grow (i32.const 65535)) (i32.const -1)) (then unreachable))))
"#;

const WAT_GROW_STEPS: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $again
      (if (i32.ne (memory.grow (i32.const 1)) (i32.const -1)) (then br $again)))
    unreachable))
"#;

const WAT_BIG_INITIAL: &str = r#"(module
  (memory (export "memory") 16384)
  (func (export "_start")))
"#;

const WAT_TABLE_GROW: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (table 1 funcref)
  (func (export "_start")
    (if (i32.eq (table.grow (ref.null func) (i32.const 100000000)) (i32.const -1))
      (then (call $exit (i32.const 7))))
    (call $exit (i32.const 9))))
"#;

const WAT_RECURSE: &str = r#"(module
  (memory (export "memory") 1)
  (func $down (param i64) (result i64)
    (i64.add (call $down (i64.add (local.get 0) (i64.const 1))) (i64.const 1)))
  (func (export "_start") (drop (call $down (i64.const 0)))))
"#;

const WAT_RECURSE_BIG_FRAMES: &str = r#"(module
  (memory (export "memory") 1)
  (func $down (param i64) (result i64)
    (local v128 v128 v128 v128 v128 v128 v128 v128 v128 v128 v128 v128 v128 v128 v128 v128)
    (i64.add (call $down (i64.add (local.get 0) (i64.const 1))) (i64.const 1)))
  (func (export "_start") (drop (call $down (i64.const 0)))))
"#;

#[test]
fn memory_growth_beyond_the_limit_is_stopped_naming_the_limit() {
    let w = ws();
    limits(&w);
    wat_tools(
        &w,
        &[
            ("grow_huge", WAT_GROW_HUGE),
            ("grow_steps", WAT_GROW_STEPS),
            ("big_initial", WAT_BIG_INITIAL),
            ("table_grow", WAT_TABLE_GROW),
        ],
    );
    w.write(
        "m/WBUILD",
        r#"
wasi_run(name = "grow_huge", tool = "//tools:grow_huge", srcs = [], outs = ["a"], args = [])
wasi_run(name = "grow_steps", tool = "//tools:grow_steps", srcs = [], outs = ["b"], args = [])
wasi_run(name = "big_initial", tool = "//tools:big_initial", srcs = [], outs = ["c"], args = [])
wasi_run(name = "table_grow", tool = "//tools:table_grow", srcs = [], outs = ["d"], args = [])
wasi_run(name = "alloc", tool = "//tools:probe", srcs = [], outs = ["e"], args = ["alloc", "4096"])
"#,
    );
    w.write("ok/in.txt", "fine\n");
    w.write(
        "ok/WBUILD",
        "wasi_run(name = \"ok\", tool = \"//tools:probe\", srcs = [\"in.txt\"], outs = [\"ok.txt\"], args = [\"concat\", \"$@\", \"$(location in.txt)\"])\n",
    );
    let out = w.fail(&["build", "-k", "//m:all", "//ok:ok"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for t in ["grow_huge", "grow_steps", "big_initial", "alloc"] {
        assert!(
            err.contains(&format!(
                "FAILED //m:{t}: the tool tried to use more than its memory limit of 64 MiB"
            )),
            "{t}: {err}"
        );
    }
    assert!(
        err.contains("FAILED //m:table_grow: the tool exited with code 7"),
        "{err}"
    );
    // The same process went on to build the well-behaved action.
    assert_eq!(w.read("wbuild-out/ok/ok.txt"), "fine\n");
    verify_clean(&w);
}

#[test]
fn stack_overflow_is_a_clean_trap() {
    let w = ws();
    limits(&w);
    wat_tools(
        &w,
        &[
            ("recurse", WAT_RECURSE),
            ("recurse_big", WAT_RECURSE_BIG_FRAMES),
        ],
    );
    w.write(
        "r/WBUILD",
        r#"
wasi_run(name = "wat", tool = "//tools:recurse", srcs = [], outs = ["a"], args = [])
wasi_run(name = "wat_big", tool = "//tools:recurse_big", srcs = [], outs = ["b"], args = [])
wasi_run(name = "rust", tool = "//tools:probe", srcs = [], outs = ["c"], args = ["recurse"])
"#,
    );
    w.write("ok/in.txt", "fine\n");
    w.write(
        "ok/WBUILD",
        "wasi_run(name = \"ok\", tool = \"//tools:probe\", srcs = [\"in.txt\"], outs = [\"ok.txt\"], args = [\"concat\", \"$@\", \"$(location in.txt)\"])\n",
    );
    let out = w.fail(&["build", "-k", "//r:all", "//ok:ok"]);
    let err = stderr(&out);
    // An ordinary failure exit, not a crash of wbuild.
    assert_eq!(out.status.code(), Some(1), "{err}");
    for t in ["wat", "wat_big", "rust"] {
        assert!(
            err.contains(&format!("FAILED //r:{t}: the tool trapped: wasm trap")),
            "{t}: {err}"
        );
    }
    assert_eq!(w.read("wbuild-out/ok/ok.txt"), "fine\n");
    verify_clean(&w);
}

#[test]
fn descriptor_exhaustion_is_contained() {
    let w = ws();
    limits(&w);
    w.write("f/in.txt", "held\n");
    // The hog opens its input until it is refused, and holds every descriptor for a while.
    w.write(
        "f/WBUILD",
        "wasi_run(name = \"hog\", tool = \"//tools:probe\", srcs = [\"in.txt\"], outs = [\"o.txt\"], args = [\"fdhog\", \"$(location in.txt)\", \"1000000\", \"1500000000\", \"$@\"])\n",
    );
    // Meanwhile (two workers) a chain of ordinary actions stages inputs, runs and stores
    // outputs, one after the other, each needing descriptors of the same process.
    let mut victims = String::new();
    for i in 0..8 {
        let src = if i == 0 {
            "\"in.txt\"".to_owned()
        } else {
            format!("\":v{}\"", i - 1)
        };
        victims.push_str(&format!(
            "wasi_run(name = \"v{i}\", tool = \"//tools:probe\", srcs = [{src}], outs = [\"v{i}.txt\"], args = [\"spin\", \"100000000\", \"$@\"])\n"
        ));
    }
    w.write("v/in.txt", "victim\n");
    w.write("v/WBUILD", &victims);
    let args = [
        "build",
        "-j",
        "2",
        "-k",
        "//f:hog",
        "//v:all",
        "--show-output",
    ];
    let out = w.run(&args);
    let err = stderr(&out);
    assert!(out.status.success(), "{}", w.report(&args, &out));
    // The hog was refused long before the process ran out (its share is at most 1024).
    let line = err
        .lines()
        .find(|l| l.contains("opened "))
        .unwrap_or_else(|| panic!("{err}"));
    let n: usize = line
        .split("opened ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!((16..=1024).contains(&n), "{line}");
    assert!(line.contains("then Some("), "{line}");
    assert_eq!(w.read("wbuild-out/f/o.txt"), "reopened: Ok(5)\n");
    for i in 0..8 {
        assert!(w.path(&format!("wbuild-out/v/v{i}.txt")).is_file(), "{err}");
    }
    verify_clean(&w);
    host_still_works(&w);
}

#[test]
fn stdout_flood_is_capped() {
    let w = ws();
    w.write(
        "o/WBUILD",
        "wasi_run(name = \"flood\", tool = \"//tools:probe\", srcs = [], outs = [\"o.txt\"], args = [\"flood\", \"64\", \"$@\"])\n",
    );
    let out = w.ok(&["build", "//o:flood"]);
    assert_eq!(w.read("wbuild-out/o/o.txt"), "flooded\n");
    // No stored blob holds more than the 16 MiB that are captured.
    let mut stack = vec![w.cache.join("cas")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                assert!(
                    m.len() <= 16 << 20,
                    "{} is {} bytes",
                    e.path().display(),
                    m.len()
                );
            }
        }
    }
    let _ = out;
    verify_clean(&w);
    host_still_works(&w);
}
