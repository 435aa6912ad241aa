//! The everyday commands: `wbuild clean`, `run`, `completions`, `version` and `log`; and what
//! every C build does: archiving a library.

use std::path::Path;

use wbuild_tests::process::{default_deadline, output_with_deadline, wait_until};
use wbuild_tests::{TestWorkspace, repo_root, statuses, stderr, stdout};

use super::ws;

/// gen/a.txt -> //gen:a1 -> //gen:a2 -> //gen:a3 (a chain); //other:c independent.
fn project(w: &TestWorkspace) {
    w.write("gen/a.txt", "hello\n");
    w.write(
        "gen/WBUILD",
        r#"
wasi_run(name = "a1", tool = "//tools:probe", srcs = ["a.txt"], outs = ["a1.txt"],
         args = ["concat", "$@", "$(location a.txt)"])
wasi_run(name = "a2", tool = "//tools:probe", srcs = [":a1"], outs = ["a2.txt"],
         args = ["concat", "$@", "$(location :a1)", "$(location :a1)"])
wasi_run(name = "a3", tool = "//tools:probe", srcs = [":a2"], outs = ["a3.txt"],
         args = ["concat", "$@", "$(location :a2)", "$(location :a2)"])
filegroup(name = "two_tools", srcs = ["one.wasm", "two.wasm"])
"#,
    );
    w.copy_guest("probe", "gen/one.wasm");
    w.copy_guest("probe", "gen/two.wasm");
    w.write("other/c.txt", "c\n");
    w.write(
        "other/WBUILD",
        r#"
wasi_run(name = "c", tool = "//tools:probe", srcs = ["c.txt"], outs = ["c2.txt"],
         args = ["concat", "$@", "$(location c.txt)", "$(location c.txt)"])
"#,
    );
}

/// The files directly in `dir` (none if it does not exist).
fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

/// The analysis-cache entries in `dir`: each is a graph (`.bin`) and, beside it, what its
/// loading read (`.reads`).
fn analysis_entries(dir: &Path) -> usize {
    let bins = count_ext(dir, "bin");
    assert_eq!(
        count_ext(dir, "reads"),
        bins,
        "an entry without its reads in {dir:?}"
    );
    bins
}

fn count_ext(dir: &Path, ext: &str) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == ext))
        })
        .count()
    })
}

/// The action lines of a `wbuild log` report (those with a duration column).
fn action_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.contains(" ms  ")).collect()
}

#[test]
fn clean_then_build_rematerialises_with_every_action_a_cache_hit() {
    let w = ws();
    project(&w);
    w.ok(&["build", "//gen:a3", "//other:c"]);
    // The second build sees wbuild-out/ in the root listing: a new signature, so it rewrites
    // the analysis entry and the snapshot.
    w.ok(&["build", "//gen:a3", "//other:c"]);
    assert_eq!(entries(&w.cache.join("uptodate")), 1);
    assert_eq!(analysis_entries(&w.cache.join("analysis")), 1);
    // Another workspace sharing the cache: its entries are not this workspace's to clean.
    let other = ws();
    project(&other);
    other.write("extra.txt", "a different workspace signature\n");
    for _ in 0..2 {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_wbuild"));
        cmd.current_dir(&other.root)
            .arg("--cache-dir")
            .arg(&w.cache)
            .args(["build", "//other:c"]);
        let out =
            output_with_deadline(&mut cmd, default_deadline()).unwrap_or_else(|e| panic!("{e}"));
        assert!(out.status.success(), "{}", other.report(&["build"], &out));
    }
    assert_eq!(entries(&w.cache.join("uptodate")), 2);
    assert_eq!(analysis_entries(&w.cache.join("analysis")), 2);

    let out = stdout(&w.ok(&["clean"]));
    assert!(
        out.contains(&format!("removed {}", w.path("wbuild-out").display())),
        "{out}"
    );
    assert!(out.contains("4 files"), "{out}");
    assert!(
        out.contains("removed 1 up-to-date snapshot and 1 analysis cache entry"),
        "{out}"
    );
    assert!(!w.path("wbuild-out").exists());
    assert_eq!(entries(&w.cache.join("uptodate")), 1);
    assert_eq!(analysis_entries(&w.cache.join("analysis")), 1);

    let (out, ev) = w.events(&["build", "//gen:a3", "//other:c"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    let st = statuses(&ev);
    assert_eq!(st.len(), 4, "{st:?}");
    assert!(st.iter().all(|(_, s)| s == "cached"), "{st:?}");
    assert_eq!(w.read("wbuild-out/gen/a3.txt"), "hello\n".repeat(4));
    // Not a no-op: every action was looked up (and recorded) again.
    let log = stdout(&w.ok(&["log", "what-ran"]));
    assert!(log.contains("0 of 4 actions ran"), "{log}");

    // Clean twice: nothing left to remove is not an error.
    w.ok(&["clean"]);
    let out = stdout(&w.ok(&["clean"]));
    assert!(
        out.contains("no ") && out.contains("wbuild-out to remove"),
        "{out}"
    );
}

#[test]
fn clean_removes_a_symlinked_wbuild_out_but_never_what_it_points_to() {
    let w = ws();
    project(&w);
    // Hostile: wbuild-out is a symlink to a directory outside the workspace.
    let outside = w.root.parent().unwrap().join("precious");
    std::fs::create_dir_all(outside.join("sub")).unwrap();
    std::fs::write(outside.join("sub/keep.txt"), "keep").unwrap();
    std::os::unix::fs::symlink(&outside, w.path("wbuild-out")).unwrap();
    let out = stdout(&w.ok(&["clean"]));
    assert!(out.contains("removed the symlink"), "{out}");
    assert!(std::fs::symlink_metadata(w.path("wbuild-out")).is_err());
    assert_eq!(
        std::fs::read_to_string(outside.join("sub/keep.txt")).unwrap(),
        "keep"
    );

    // A symlink inside wbuild-out, to a directory and to a file outside: the links go.
    w.ok(&["build", "//other:c"]);
    std::os::unix::fs::symlink(&outside, w.path("wbuild-out/other/escape")).unwrap();
    std::os::unix::fs::symlink(outside.join("sub/keep.txt"), w.path("wbuild-out/file")).unwrap();
    w.ok(&["clean"]);
    assert!(!w.path("wbuild-out").exists());
    assert_eq!(
        std::fs::read_to_string(outside.join("sub/keep.txt")).unwrap(),
        "keep"
    );
}

#[test]
fn clean_expunge_removes_the_cache_directory() {
    let w = ws();
    project(&w);
    w.ok(&["build", "//other:c"]);
    assert!(w.cache.join("index.redb").is_file());
    let out = stdout(&w.ok(&["clean", "--expunge"]));
    assert!(
        out.contains(&format!(
            "removed the cache directory {}",
            w.cache.display()
        )),
        "{out}"
    );
    assert!(!w.cache.exists() && !w.path("wbuild-out").exists());
    // Nothing moved aside is left behind.
    let parent = w.cache.parent().unwrap();
    let left: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("expunging"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // The next build starts from an empty cache.
    let (out, ev) = w.events(&["build", "//other:c"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    assert_eq!(
        statuses(&ev),
        vec![("//other:c".to_owned(), "executed".to_owned())]
    );

    // A cache directory that is a symlink: the link goes, its target stays.
    let real = w.cache.parent().unwrap().join("real-cache");
    std::fs::rename(&w.cache, &real).unwrap();
    std::os::unix::fs::symlink(&real, &w.cache).unwrap();
    let out = stdout(&w.ok(&["clean", "--expunge"]));
    assert!(out.contains("removed the symlink"), "{out}");
    assert!(real.join("index.redb").is_file());
}

#[test]
fn clean_expunge_waits_for_another_wbuild_holding_the_cache() {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let w = ws();
    project(&w);
    w.ok(&["build", "//other:c"]);
    // This process holds the store, as a running build would.
    let held = wbuild_store::Store::open(&w.cache).unwrap();
    let mut child = w
        .cmd(&["clean", "--expunge"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + default_deadline();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("waiting for another wbuild process") => break,
            Ok(_) => {}
            Err(_) => {
                let _ = wait_until(&mut child, std::time::Instant::now());
                panic!("wbuild clean --expunge did not wait for the store's holder");
            }
        }
    }
    // Nothing was removed while another process held the cache.
    assert!(w.cache.join("index.redb").is_file());
    drop(held);
    let status = wait_until(&mut child, deadline).expect("clean --expunge finished");
    assert!(status.success(), "{status:?}");
    assert!(!w.cache.exists());
}

#[test]
fn run_a_native_cc_binary_with_args_environment_and_exit_code() {
    let w = ws();
    w.write("data.txt", "from the workspace root\n");
    w.write(
        "app/main.c",
        r#"#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) printf("arg %s\n", argv[i]);
    const char *v = getenv("EVERYDAY_VAR");
    printf("env %s\n", v ? v : "(unset)");
    FILE *f = fopen("data.txt", "r");
    char line[64] = "(missing)";
    if (f && fgets(line, sizeof line, f)) fclose(f);
    printf("cwd %s", line);
    int c = getchar();
    printf("stdin %c\n", c == EOF ? '-' : c);
    return argc > 1 ? atoi(argv[1]) : 0;
}
"#,
    );
    // Writes until its reader goes away; notes a write error (a SIGPIPE it did not die of).
    w.write(
        "app/spam.c",
        r#"#include <stdio.h>
int main(void) {
    for (;;) {
        if (puts("y") == EOF || fflush(stdout) == EOF) {
            FILE *f = fopen("epipe.txt", "w");
            if (f) fclose(f);
            return 42;
        }
    }
}
"#,
    );
    w.write(
        "app/WBUILD",
        "cc_binary(name = \"tool\", srcs = [\"main.c\"])\ncc_binary(name = \"spam\", srcs = [\"spam.c\"])\n",
    );
    // From a package directory, stdin redirected from a file.
    let mut cmd = std::process::Command::new("sh");
    cmd.current_dir(w.path("app"))
        .args([
            "-c",
            "exec \"$0\" --cache-dir \"$1\" run :tool -- 7 'two words' < ../data.txt",
            env!("CARGO_BIN_EXE_wbuild"),
        ])
        .arg(&w.cache)
        .env("EVERYDAY_VAR", "set by the user");
    let out = output_with_deadline(&mut cmd, default_deadline()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "arg 7\narg two words\nenv set by the user\ncwd from the workspace root\nstdin f\n"
    );
    let out = w.run(&["run", "//app:tool"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // SIGPIPE is the program's as if run by hand: `wbuild run //app:spam | head -n 1` ends it.
    let mut cmd = std::process::Command::new("sh");
    cmd.current_dir(&w.root)
        .args([
            "-c",
            "\"$0\" --cache-dir \"$1\" run //app:spam | head -n 1",
            env!("CARGO_BIN_EXE_wbuild"),
        ])
        .arg(&w.cache);
    let out = output_with_deadline(&mut cmd, default_deadline()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stdout(&out), "y\n", "{}", stderr(&out));
    assert!(
        !w.path("epipe.txt").exists(),
        "the program ran with SIGPIPE ignored"
    );
}

#[test]
fn run_a_wasi_tool_in_the_workspace_root() {
    let w = ws();
    project(&w);
    let out = w.run(&["run", "//tools:probe", "--", "read", "gen/a.txt"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello\n");
    let out = w.run(&["run", "//tools:probe", "--", "exit", "3"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("probe: exiting with 3"),
        "{}",
        stderr(&out)
    );
    // A tool runs as in its actions: under its argv0, with its data at the guest paths.
    w.write("tools/share/greeting.txt", "hi from data\n");
    w.write(
        "tools/WBUILD",
        &format!(
            "{}wasi_tool(name = \"named\", src = \"probe.wasm\", argv0 = \"renamed\", data = [\"share/greeting.txt\"], data_dir = \"/opt/tool\")\n",
            w.read("tools/WBUILD")
        ),
    );
    let out = w.run(&["run", "//tools:named", "--", "whoami"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "renamed\n");
    let out = w.run(&[
        "run",
        "//tools:named",
        "--",
        "read",
        "/opt/tool/share/greeting.txt",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hi from data\n");
    // It may write in the workspace, as a program run by hand may.
    let out = w.run(&[
        "run",
        "//tools:probe",
        "--",
        "concat",
        "copy.txt",
        "gen/a.txt",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(w.read("copy.txt"), "hello\n");
    // A reader that goes away ends the guest as it would a program run by hand (SIGPIPE),
    // rather than handing it write errors: it never gets to write its file.
    let mut cmd = std::process::Command::new("sh");
    cmd.current_dir(&w.root)
        .args([
            "-c",
            "\"$0\" --cache-dir \"$1\" run //tools:probe -- flood 100000 flooded.txt | head -c 3",
            env!("CARGO_BIN_EXE_wbuild"),
        ])
        .arg(&w.cache);
    let out = output_with_deadline(&mut cmd, default_deadline()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stdout(&out), "xxx", "{}", stderr(&out));
    assert!(!w.path("flooded.txt").exists(), "the guest saw EPIPE");
}

#[test]
fn run_refuses_targets_without_exactly_one_runnable_output() {
    let w = ws();
    project(&w);
    let err = stderr(&w.fail(&["run", "//gen:a1"]));
    assert!(
        err.contains("//gen:a1 has nothing to run") && err.contains("wbuild-out/gen/a1.txt"),
        "{err}"
    );
    let err = stderr(&w.fail(&["run", "//gen:two_tools"]));
    assert!(
        err.contains("//gen:two_tools provides several runnable files")
            && err.contains("gen/one.wasm")
            && err.contains("gen/two.wasm"),
        "{err}"
    );
    let err = stderr(&w.fail(&["run", "//gen:a1", "//gen:a2"]));
    assert!(err.contains("exactly one target"), "{err}");
    // A failed build runs nothing and fails as the build did.
    w.write("gen/WBUILD", "wasi_run(name = \"bad\", tool = \"//tools:probe\", outs = [\"x\"], args = [\"exit\", \"1\"])\n");
    let out = w.fail(&["run", "//gen:bad"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

#[test]
fn completions_for_bash_name_the_subcommands() {
    let w = ws();
    let script = stdout(&w.ok(&["completions", "bash"]));
    // The words offered after `wbuild ` (the first non-empty `opts=` line is the top level's).
    let top: Vec<&str> = script
        .lines()
        .find_map(|l| l.trim().strip_prefix("opts=\"").filter(|o| o.len() > 1))
        .expect("an opts line")
        .trim_end_matches('"')
        .split_whitespace()
        .collect();
    for sub in [
        "build",
        "test",
        "clean",
        "run",
        "log",
        "version",
        "completions",
        "history",
    ] {
        assert!(top.contains(&sub), "no {sub} in {top:?}");
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        assert!(stdout(&w.ok(&["completions", shell])).contains("critical-path"));
    }
    w.fail(&["completions", "tcsh"]);
}

#[test]
fn version_prints_the_executor_sandbox_and_wasmtime_versions() {
    let w = ws();
    let lock = std::fs::read_to_string(repo_root().join("Cargo.lock")).unwrap();
    let wasmtime = lock
        .split("[[package]]")
        .find(|p| p.contains("\nname = \"wasmtime\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
        .map(|v| v.trim_end_matches('"').to_owned())
        .expect("wasmtime in Cargo.lock");
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&w.ok(&["version", "--output", "json"]))).unwrap();
    assert_eq!(json["wbuild"], env!("CARGO_PKG_VERSION"));
    assert!(
        json["wasi_executor"]
            .as_str()
            .unwrap()
            .starts_with("wbuild-wasi/"),
        "{json}"
    );
    assert!(
        json["native_sandbox"]
            .as_str()
            .unwrap()
            .starts_with("wbuild-native/"),
        "{json}"
    );
    assert_eq!(json["wasmtime"], wasmtime.as_str());
    if let Some(c) = json["git_commit"].as_str() {
        assert!(
            c.len() == 40 && c.bytes().all(|b| b.is_ascii_hexdigit()),
            "{json}"
        );
    }
    let text = stdout(&w.ok(&["version"]));
    let long = stdout(&w.ok(&["--version"]));
    for v in [
        &json["wasi_executor"],
        &json["native_sandbox"],
        &json["wasmtime"],
    ] {
        let v = v.as_str().unwrap();
        assert!(
            text.contains(v) && long.contains(v),
            "{v} in\n{text}\n{long}"
        );
    }
    assert!(
        long.starts_with(&format!("wbuild {}", env!("CARGO_PKG_VERSION"))),
        "{long}"
    );
}

#[test]
fn log_what_ran_after_one_edit_lists_exactly_that_action() {
    let w = ws();
    project(&w);
    w.ok(&["build", "//gen:a3", "//other:c"]);
    w.write("other/c.txt", "changed\n");
    w.ok(&["build", "//gen:a3", "//other:c"]);
    let log = stdout(&w.ok(&["log", "what-ran"]));
    let lines = action_lines(&log);
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].starts_with("WasiRun") && lines[0].ends_with(" //other:c"),
        "{log}"
    );
    assert!(log.contains("1 of 4 actions ran"), "{log}");
    // The first build, by id, ran all four.
    let first = stdout(&w.ok(&["log", "what-ran", "1"]));
    assert_eq!(action_lines(&first).len(), 4, "{first}");
    // An unknown build says how to find ids.
    let err = stderr(&w.fail(&["log", "what-ran", "999"]));
    assert!(
        err.contains("no build 999") && err.contains("wbuild history"),
        "{err}"
    );
    // A no-op build says so.
    w.ok(&["build", "//gen:a3", "//other:c"]);
    let noop = stdout(&w.ok(&["log", "what-ran"]));
    assert!(noop.contains("a no-op build"), "{noop}");
}

#[test]
fn log_slowest_lists_the_top_n_by_duration() {
    let w = ws();
    project(&w);
    w.ok(&["build", "//gen:a3", "//other:c"]);
    let log = stdout(&w.ok(&["log", "slowest", "-n", "2"]));
    let lines = action_lines(&log);
    assert_eq!(lines.len(), 2, "{log}");
    let ms: Vec<u64> = lines
        .iter()
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert!(ms[0] >= ms[1], "{log}");
    let all = stdout(&w.ok(&["log", "slowest"]));
    assert_eq!(action_lines(&all).len(), 4, "{all}");
    assert!(stderr(&w.fail(&["log", "slowest", "42"])).contains("wbuild history"));
}

#[test]
fn log_critical_path_follows_a_chain_of_dependencies() {
    let w = ws();
    project(&w);
    w.ok(&["build", "//gen:a3"]);
    let log = stdout(&w.ok(&["log", "critical-path"]));
    let lines = action_lines(&log);
    let labels: Vec<&str> = lines
        .iter()
        .map(|l| l.split_whitespace().last().unwrap())
        .collect();
    assert_eq!(labels, ["//gen:a1", "//gen:a2", "//gen:a3"], "{log}");
    assert!(log.contains("over 3 actions"), "{log}");
    // The history records the dependency edges: outside the workspace, the same path.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_wbuild"));
    cmd.current_dir(w.root.parent().unwrap())
        .arg("--cache-dir")
        .arg(&w.cache)
        .args(["log", "critical-path"]);
    let out = output_with_deadline(&mut cmd, default_deadline()).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(action_lines(&stdout(&out)), lines, "{}", stdout(&out));
}

/// The `executor:` line of the first action of `mnemonic` in `wbuild aquery` text.
fn executor_of<'a>(aquery: &'a str, mnemonic: &str) -> &'a str {
    aquery
        .lines()
        .skip_while(|l| l.trim() != format!("mnemonic: {mnemonic}"))
        .find_map(|l| l.trim().strip_prefix("executor: "))
        .unwrap_or_else(|| panic!("no {mnemonic} action in:\n{aquery}"))
}

#[test]
fn a_cc_library_is_archived_in_process_as_ar_would_and_an_lto_library_by_ar() {
    let w = ws();
    w.write("l/a.c", "int a(void) { return 1; }\n");
    w.write(
        "l/a_file_name_longer_than_an_ar_header_holds.c",
        "int b(void) { return 2; }\nint common_c;\n",
    );
    w.write("l/c.c", "int c(void) { return 3; }\n");
    w.write(
        "l/main.c",
        "int a(void); int b(void); int c(void);\n\
         int main(void) { return a() + b() + c() == 6 ? 0 : 1; }\n",
    );
    w.write(
        "l/WBUILD",
        r#"
cc_library(name = "l", srcs = ["a.c", "a_file_name_longer_than_an_ar_header_holds.c"], copts = ["-fcommon"])
cc_library(name = "lto", srcs = ["c.c"], copts = ["-flto"])
cc_binary(name = "app", srcs = ["main.c"], deps = [":l", ":lto"], linkopts = ["-flto"])
"#,
    );
    w.ok(&["build", "//l:app"]);
    let app = std::process::Command::new(w.path("wbuild-out/l/app"))
        .status()
        .unwrap();
    assert!(app.success(), "{app:?}");

    // The library is archived by wbuild itself, and the bytes are those `ar rcsD` writes
    // for the same objects.
    let text = stdout(&w.ok(&["aquery", "//l:l"]));
    assert_eq!(
        executor_of(&text, "CcArchive"),
        "builtin archiver",
        "{text}"
    );
    assert!(
        text.contains(
            "argv: wbuild-archive rcsD l/libl.a l/_objs/l/a.o l/_objs/l/a_file_name_longer_than_an_ar_header_holds.o"
        ),
        "{text}"
    );
    let out = std::process::Command::new("ar")
        .args([
            "rcsD",
            "ref.a",
            "l/_objs/l/a.o",
            "l/_objs/l/a_file_name_longer_than_an_ar_header_holds.o",
        ])
        .current_dir(w.path("wbuild-out"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        std::fs::read(w.path("wbuild-out/l/libl.a")).unwrap()
            == std::fs::read(w.path("wbuild-out/ref.a")).unwrap(),
        "the archive differs from ar rcsD's"
    );

    // Objects compiled for link-time optimisation keep their symbols where only ar's plugin
    // reads them: that library runs `ar` in the sandbox.
    let text = stdout(&w.ok(&["aquery", "//l:lto"]));
    assert_eq!(executor_of(&text, "CcArchive"), "native", "{text}");
}
