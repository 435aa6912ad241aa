//! End-to-end tests: the real `wbuild` binary on temporary workspaces with guests compiled
//! from source (tests/guests, toolchains/wasi-tools).

mod aquery;
mod everyday;
mod hostile;
mod hostile_cache;
mod hostile_host;
mod hostile_native;
mod hostile_remote;
mod incremental;
mod infer;
mod observed;
mod profile;
mod query;
mod reliability;
mod remote_download;
mod remote_exec;
mod remote_tls;
mod report;
mod spawner;
mod third_party;
mod toolchains;

use wbuild_tests::buildgrid::bgd_path;
use wbuild_tests::{TestWorkspace, finished, statuses, stderr, stdout};

const BIN: &str = env!("CARGO_BIN_EXE_wbuild");

fn ws() -> TestWorkspace {
    TestWorkspace::new(BIN)
}

/// gen/a.txt + gen/b.txt -> //gen:ab -> //gen:abab; //other:c independent.
fn chain(w: &TestWorkspace) {
    w.write("gen/a.txt", "hello\n");
    w.write("gen/b.txt", "world\n");
    w.write(
        "gen/WBUILD",
        r#"
wasi_run(
    name = "ab",
    tool = "//tools:probe",
    srcs = ["a.txt", "b.txt"],
    outs = ["ab.txt"],
    args = ["concat", "$@", "$(location a.txt)", "$(location b.txt)"],
)
wasi_run(
    name = "abab",
    tool = "//tools:probe",
    srcs = [":ab"],
    outs = ["abab.txt"],
    args = ["concat", "$@", "$(location :ab)", "$(location :ab)"],
)
"#,
    );
    w.write("other/c.txt", "c\n");
    w.write(
        "other/WBUILD",
        r#"
wasi_run(name = "c", tool = "//tools:probe", srcs = ["c.txt"], outs = ["c2.txt"],
         args = ["concat", "$@", "$(location c.txt)", "$(location c.txt)"])
"#,
    );
}

fn s(label: &str, status: &str) -> (String, String) {
    (label.to_owned(), status.to_owned())
}

#[test]
fn clean_build_noop_and_incremental() {
    let w = ws();
    chain(&w);
    let (out, ev) = w.events(&["build", "//..."]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    assert_eq!(
        w.read("wbuild-out/gen/abab.txt"),
        "hello\nworld\nhello\nworld\n"
    );
    assert_eq!(w.read("wbuild-out/other/c2.txt"), "c\nc\n");
    assert_eq!(
        statuses(&ev),
        vec![
            s("//gen:ab", "executed"),
            s("//gen:abab", "executed"),
            s("//other:c", "executed")
        ]
    );
    assert!(stderr(&out).contains("Build succeeded: 3 executed, 0 cached, 0 failed"));

    // No-op: nothing runs and no file is read to be re-hashed.
    let (out, ev) = w.events(&["build", "//..."]);
    assert!(out.status.success());
    let f = finished(&ev);
    assert_eq!(f["executed"], 0, "{ev:?}");
    assert_eq!(f["cached"], 3);
    assert_eq!(
        f["files_hashed"], 0,
        "a no-op build re-hashed files: {ev:?}"
    );

    // One edit re-runs exactly the affected actions.
    w.write("gen/b.txt", "there\n");
    let (out, ev) = w.events(&["build"]);
    assert!(out.status.success());
    assert_eq!(
        statuses(&ev),
        vec![
            s("//gen:ab", "executed"),
            s("//gen:abab", "executed"),
            s("//other:c", "cached")
        ]
    );
    assert_eq!(
        w.read("wbuild-out/gen/abab.txt"),
        "hello\nthere\nhello\nthere\n"
    );

    // Undoing the edit is a cache hit for both, and restores the outputs.
    w.write("gen/b.txt", "world\n");
    let (_, ev) = w.events(&["build"]);
    assert_eq!(finished(&ev)["executed"], 0);
    assert_eq!(
        w.read("wbuild-out/gen/abab.txt"),
        "hello\nworld\nhello\nworld\n"
    );

    // A deleted output is restored from the cache without running anything.
    std::fs::remove_file(w.path("wbuild-out/gen/ab.txt")).unwrap();
    let (_, ev) = w.events(&["build", "//gen:ab"]);
    assert_eq!(statuses(&ev), vec![s("//gen:ab", "cached")]);
    assert_eq!(w.read("wbuild-out/gen/ab.txt"), "hello\nworld\n");
}

#[test]
fn outputs_stops_quietly_when_its_reader_closes_the_pipe() {
    // More lines than a pipe holds: the reader stops after the first, as `| head -1` does.
    let w = ws();
    let names: Vec<String> = (0..3000)
        .map(|i| format!("a-source-file-with-a-long-name-{i:05}.txt"))
        .collect();
    for n in &names {
        std::fs::create_dir_all(w.path("many")).unwrap();
        std::fs::write(w.path(&format!("many/{n}")), "").unwrap();
    }
    w.write(
        "many/WBUILD",
        "filegroup(name = \"all\", srcs = glob([\"*.txt\"]))\n",
    );
    let mut child = w
        .cmd(&["outputs", "//many:all"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut reader, &mut first).unwrap();
    assert_eq!(first, format!("many/{}\n", names[0]));
    drop(reader);
    let deadline = std::time::Instant::now() + wbuild_tests::process::default_deadline();
    let status = wbuild_tests::process::wait_until(&mut child, deadline)
        .expect("wbuild outputs still running after its reader closed the pipe");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{status}: {err}");
    assert!(err.is_empty(), "{err}");
}

#[test]
fn outputs_history_explain_and_cache_commands() {
    let w = ws();
    chain(&w);
    w.ok(&["build"]);
    let out = w.ok(&["outputs", "//gen:abab", "//gen:ab"]);
    // Targets are printed in label order.
    assert_eq!(
        stdout(&out),
        "wbuild-out/gen/ab.txt\nwbuild-out/gen/abab.txt\n"
    );

    let out = w.ok(&["explain", "//gen:abab"]);
    let text = stdout(&out);
    assert!(text.contains("read     gen/ab.txt"), "{text}");
    assert!(text.contains("write    gen/abab.txt"), "{text}");

    let out = w.ok(&["history"]);
    assert!(stdout(&out).contains("success"), "{}", stdout(&out));
    let out = w.ok(&["history", "1"]);
    assert!(stdout(&out).contains("executed"), "{}", stdout(&out));
    assert!(stdout(&out).contains("//gen:abab"));

    let out = w.ok(&["cache", "stats"]);
    assert!(
        stdout(&out).contains("action-cache:       3 entries"),
        "{}",
        stdout(&out)
    );

    // Invalidate by label: exactly that action runs again.
    let out = w.ok(&["cache", "invalidate", "//gen:abab"]);
    assert!(stdout(&out).contains("dropped 1"), "{}", stdout(&out));
    let (_, ev) = w.events(&["build"]);
    assert_eq!(
        statuses(&ev),
        vec![
            s("//gen:ab", "cached"),
            s("//gen:abab", "executed"),
            s("//other:c", "cached")
        ]
    );

    w.ok(&["cache", "verify"]);
    // GC to zero empties the cache, analysis entries included (the workspace is loaded
    // again); the next build runs everything again.
    let analysis = w.cache.join("analysis");
    assert!(std::fs::read_dir(&analysis).unwrap().count() > 0);
    let out = w.ok(&["cache", "gc", "--max-size", "0"]);
    assert!(
        stdout(&out).contains("analysis cache files"),
        "{}",
        stdout(&out)
    );
    assert_eq!(std::fs::read_dir(&analysis).unwrap().count(), 0);
    let (_, ev) = w.events(&["build"]);
    assert_eq!(finished(&ev)["executed"], 3, "{ev:?}");
    assert!(std::fs::read_dir(&analysis).unwrap().count() > 0);
}

#[test]
fn undeclared_read_fails_naming_the_path_and_producer() {
    let w = ws();
    chain(&w);
    w.write("x/secret.txt", "s\n");
    w.write(
        "x/WBUILD",
        r#"
wasi_run(name = "sneak", tool = "//tools:probe", srcs = [], outs = ["o.txt"],
         args = ["concat", "$@", "x/secret.txt"])
wasi_run(name = "sneak2", tool = "//tools:probe", srcs = [], outs = ["o2.txt"],
         args = ["concat", "$@", "gen/ab.txt"])
"#,
    );
    let out = w.fail(&["build", "-k", "//x:sneak", "//x:sneak2", "//gen:ab"]);
    let err = stderr(&out);
    assert!(
        err.contains("read undeclared input x/secret.txt: add it to srcs of //x:sneak"),
        "{err}"
    );
    assert!(
        err.contains("read undeclared input gen/ab.txt, which is produced by //gen:ab"),
        "{err}"
    );
}

#[test]
fn unused_declared_input_warns() {
    let w = ws();
    w.write("p/used.txt", "u\n");
    w.write("p/unused.txt", "n\n");
    w.write(
        "p/WBUILD",
        r#"
wasi_run(name = "t", tool = "//tools:probe", srcs = ["used.txt", "unused.txt"], outs = ["o.txt"],
         args = ["concat", "$@", "$(location used.txt)"])
"#,
    );
    let out = w.ok(&["build"]);
    assert!(
        stderr(&out).contains("warning: declared input p/unused.txt was never read by //p:t"),
        "{}",
        stderr(&out)
    );
}

fn world_ws(w: &TestWorkspace) {
    w.write("d/in.txt", "input\n");
    w.write(
        "d/WBUILD",
        r#"
wasi_run(name = "world", tool = "//tools:probe", srcs = ["in.txt"], outs = ["world.txt"],
         args = ["world", "$@", "$(location in.txt)"], env = {"GREETING": "hi"})
"#,
    );
}

#[test]
fn guests_are_deterministic_across_directories_and_caches() {
    let a = ws();
    let b = ws();
    world_ws(&a);
    world_ws(&b);
    a.ok(&["build"]);
    // Let the host clock move on before the second build.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    b.ok(&["build"]);
    let wa = a.read("wbuild-out/d/world.txt");
    let wb = b.read("wbuild-out/d/world.txt");
    assert_eq!(wa, wb);
    assert!(wa.contains("wall: 0\n"), "{wa}");
    assert!(wa.contains("env: [(\"GREETING\", \"hi\")]"), "{wa}");
    assert!(wa.contains("d/in.txt: len 6 mtime Some(0ns)"), "{wa}");
    assert!(wa.contains("listing of .: [\"d\"]"), "{wa}");
    assert_ne!(a.root, b.root);
}

#[test]
fn source_date_epoch_is_configurable_and_in_the_key() {
    let w = ws();
    world_ws(&w);
    w.ok(&["build"]);
    w.write("wbuild.toml", "[build]\nsource_date_epoch = 1700000000\n");
    let (_, ev) = w.events(&["build"]);
    assert_eq!(statuses(&ev), vec![s("//d:world", "executed")]);
    assert!(
        w.read("wbuild-out/d/world.txt")
            .contains("wall: 1700000000000000000\n")
    );
}

#[test]
fn escape_attempts_all_fail() {
    let w = ws();
    w.write("e/in.txt", "original\n");
    w.write(
        "e/WBUILD",
        r#"
wasi_run(name = "escape", tool = "//tools:probe", srcs = ["in.txt"], outs = ["report.txt"],
         args = ["escape", "$@", "$(location in.txt)"])
"#,
    );
    let out = w.fail(&["build", "--show-output"]);
    let err = stderr(&out);
    // The tool's report of each attempt (it writes it to its output, which is shown since the
    // action failed for touching undeclared paths).
    assert!(err.contains("tried to modify its input e/in.txt"), "{err}");
    assert!(
        err.contains("tried to write 3 undeclared paths (sneaky, undeclared.txt, newdir)"),
        "{err}"
    );
    // The guest's own report of every attempt (shown because the action failed).
    for line in [
        "read ../outside: ERR",
        "read /etc/passwd: ERR",
        "read /../etc/passwd: ERR",
        "read /tmp/../../etc/passwd: ERR",
        "read /tmp/up/etc/passwd: ERR",
        "read /tmp/abs/passwd: ERR",
        "symlink out -> input: ERR",
        "write input: ERR",
        "append input: ERR",
        "truncate input: ERR",
        "remove input: ERR",
        "rename input: ERR",
        "hard link input: ERR",
        "write undeclared: ERR",
        "mkdir undeclared: ERR",
        "tcp connect: ERR",
        "input afterwards: OK \"original\\n\"",
    ] {
        assert!(err.contains(line), "missing {line:?} in\n{err}");
    }
    assert_eq!(w.read("e/in.txt"), "original\n");
    assert!(!w.path("undeclared.txt").exists());
    assert!(!w.path("e/undeclared.txt").exists());
}

#[test]
fn escape_report_shows_every_attempt_denied() {
    // Same guest, but run through a tool whose failure we expect, reading its report via the
    // access log: every attempt must have failed inside the guest.
    let w = ws();
    w.write("e/in.txt", "original\n");
    w.write(
        "e/WBUILD",
        r#"
wasi_run(name = "escape", tool = "//tools:probe", srcs = ["in.txt"], outs = ["report.txt"],
         args = ["escape", "$@", "$(location in.txt)"])
"#,
    );
    let (_, ev) = w.events(&["build"]);
    let action = ev.iter().find(|e| e["type"] == "action").unwrap();
    assert_eq!(action["status"], "failed");
    let accesses = action["accesses"].as_array().unwrap();
    let denied: Vec<&str> = accesses
        .iter()
        .filter(|a| a["kind"] == "denied")
        .map(|a| a["path"].as_str().unwrap())
        .collect();
    for expected in ["e/in.txt", "undeclared.txt", "newdir"] {
        assert!(
            denied.contains(&expected),
            "{expected} not denied: {denied:?}"
        );
    }
    // Nothing outside the sandbox was read.
    assert!(
        !accesses
            .iter()
            .any(|a| a["kind"] == "read" && a["path"].as_str().unwrap().contains("passwd")),
        "{accesses:?}"
    );
}

#[test]
fn tmp_is_private_and_not_an_output() {
    let w = ws();
    w.write(
        "t/WBUILD",
        r#"
wasi_run(name = "tmp", tool = "//tools:probe", srcs = [], outs = ["o.txt"], args = ["tmp", "$@"])
"#,
    );
    w.ok(&["build"]);
    assert_eq!(w.read("wbuild-out/t/o.txt"), "tmp was empty: true\nscratch");
    assert!(!w.path("wbuild-out/tmp").exists());
}

fn failing(w: &TestWorkspace, args: &str) -> String {
    w.write(
        "f/WBUILD",
        &format!(
            "wasi_run(name = \"f\", tool = \"//tools:probe\", srcs = [], outs = [\"o.txt\"], args = [{args}])\n"
        ),
    );
    stderr(&w.fail(&["build"]))
}

#[test]
fn nonzero_exit_trap_memory_and_time_limits_give_clear_errors() {
    let w = ws();
    w.write(
        "wbuild.toml",
        "[build]\nsource_date_epoch = 0\n[wasi]\nmemory_limit_mb = 64\ntimeout_secs = 2\n",
    );
    let err = failing(&w, "\"exit\", \"3\"");
    assert!(
        err.contains("FAILED //f:f: the tool exited with code 3"),
        "{err}"
    );
    assert!(err.contains("probe: exiting with 3"), "{err}");

    let err = failing(&w, "\"trap\"");
    assert!(err.contains("the tool trapped: wasm trap"), "{err}");
    assert!(err.contains("deliberate panic"), "{err}");

    let err = failing(&w, "\"alloc\", \"200\"");
    assert!(err.contains("memory limit of 64 MiB"), "{err}");

    let err = failing(&w, "\"loop\"");
    assert!(err.contains("time limit of 2s"), "{err}");

    // A failed action is not cached: it fails again the same way.
    let err = failing(&w, "\"exit\", \"3\"");
    assert!(err.contains("exited with code 3"), "{err}");
    w.write(
        "f/WBUILD",
        "wasi_run(name = \"f\", tool = \"//tools:probe\", srcs = [], outs = [\"o.txt\"], args = [\"say\", \"hi\", \"$@\"])\n",
    );
    let out = w.ok(&["build"]);
    // Output of successful actions is shown only on request.
    assert!(!stderr(&out).contains("| hi"), "{}", stderr(&out));
    w.ok(&["build", "--show-output"]);
}

#[test]
fn missing_declared_output_fails() {
    let w = ws();
    w.write(
        "m/WBUILD",
        "wasi_run(name = \"m\", tool = \"//tools:probe\", srcs = [], outs = [\"a.txt\", \"b.txt\"], args = [\"say\", \"x\", \"m/a.txt\"])\n",
    );
    let err = stderr(&w.fail(&["build"]));
    assert!(
        err.contains("did not create declared output m/b.txt"),
        "{err}"
    );
}

#[test]
fn malformed_build_file_names_file_line_column() {
    let w = ws();
    w.write(
        "bad/WBUILD",
        "wasi_run(\n    name = \"x\",\n    srcs = [1 +],\n)\n",
    );
    let err = stderr(&w.fail(&["build"]));
    assert!(err.contains("bad/WBUILD:3:"), "{err}");
}

#[test]
fn dependency_cycle_is_reported_with_the_whole_path() {
    let w = ws();
    w.write(
        "c/WBUILD",
        r#"
wasi_run(name = "a", tool = "//tools:probe", srcs = [":b"], outs = ["a.txt"], args = [])
wasi_run(name = "b", tool = "//tools:probe", srcs = ["//d:c"], outs = ["b.txt"], args = [])
"#,
    );
    w.write(
        "d/WBUILD",
        "wasi_run(name = \"c\", tool = \"//tools:probe\", srcs = [\"//c:a\"], outs = [\"c.txt\"], args = [])\n",
    );
    let err = stderr(&w.fail(&["build"]));
    assert!(err.contains("//c:a -> //c:b -> //d:c -> //c:a"), "{err}");
}

#[test]
fn corrupted_cas_blob_is_detected_and_healed() {
    let w = ws();
    chain(&w);
    w.ok(&["build"]);
    let want = w.read("wbuild-out/gen/abab.txt");
    // Flip a byte in every blob holding the output's bytes.
    let mut flipped = 0;
    for blob in walk_files(&w.cache.join("cas")) {
        let bytes = std::fs::read(&blob).unwrap();
        if bytes == want.as_bytes() {
            let mut perm = std::fs::metadata(&blob).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perm.set_readonly(false);
            std::fs::set_permissions(&blob, perm).unwrap();
            let mut b = bytes.clone();
            b[0] ^= 0xff;
            std::fs::write(&blob, b).unwrap();
            flipped += 1;
        }
    }
    assert_eq!(flipped, 1);
    std::fs::remove_file(w.path("wbuild-out/gen/abab.txt")).unwrap();
    // The corrupt blob is never served: the action runs again and the output is right.
    let (out, ev) = w.events(&["build"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    assert_eq!(w.read("wbuild-out/gen/abab.txt"), want);
    assert!(
        statuses(&ev).contains(&s("//gen:abab", "executed")),
        "{ev:?}"
    );
    let out = w.ok(&["cache", "verify"]);
    assert!(
        stdout(&out).contains("cache is consistent"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn verify_finds_and_evicts_corruption() {
    let w = ws();
    chain(&w);
    w.ok(&["build"]);
    let blob = walk_files(&w.cache.join("cas"))
        .into_iter()
        .find(|p| std::fs::read(p).unwrap() == b"hello\nworld\n")
        .expect("blob of gen/ab.txt");
    let mut perm = std::fs::metadata(&blob).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(&blob, perm).unwrap();
    std::fs::write(&blob, b"HELLO\nworld\n").unwrap();
    let out = w.fail(&["cache", "verify"]);
    assert!(stdout(&out).contains("corrupt blob"), "{}", stdout(&out));
    // Now healed: the build re-runs what produced it and verify is clean again.
    w.ok(&["build"]);
    assert_eq!(w.read("wbuild-out/gen/ab.txt"), "hello\nworld\n");
    w.ok(&["cache", "verify"]);
}

#[test]
fn kill_9_mid_build_then_next_build_succeeds() {
    let w = ws();
    let mut build = String::new();
    for i in 0..24 {
        build.push_str(&format!(
            "wasi_run(name = \"s{i}\", tool = \"//tools:probe\", srcs = [], outs = [\"s{i}.txt\"], args = [\"spin\", \"{}\", \"$@\"])\n",
            20_000_000 + i
        ));
    }
    w.write("k/WBUILD", &build);
    for delay_ms in [50u64, 150, 300] {
        let mut child = w
            .cmd(&["build", "-j", "2"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let out = w.ok(&["build"]);
    let _ = out;
    // Outputs are exactly what a reference build in a fresh cache produces.
    let r = ws();
    r.write("k/WBUILD", &build);
    r.ok(&["build"]);
    for i in 0..24 {
        let f = format!("wbuild-out/k/s{i}.txt");
        assert_eq!(w.read(&f), r.read(&f), "{f}");
    }
    w.ok(&["cache", "verify"]);
}

#[test]
fn wasi_test_results_are_cached() {
    let w = ws();
    chain(&w);
    w.copy_guest("wb-check", "tools/wb-check.wasm");
    w.write(
        "tools/WBUILD",
        "wasi_tool(name = \"probe\", src = \"probe.wasm\")\nwasi_tool(name = \"check\", src = \"wb-check.wasm\")\n",
    );
    w.write(
        "t/WBUILD",
        r#"
wasi_test(name = "good", tool = "//tools:check", srcs = ["//gen:abab"],
          args = ["file-contains", "$(location //gen:abab)", "world"])
wasi_test(name = "bad", tool = "//tools:check", srcs = ["//gen:abab"],
          args = ["file-contains", "$(location //gen:abab)", "nope"])
"#,
    );
    // `build` does not run tests.
    let (_, ev) = w.events(&["build", "//t/..."]);
    assert!(
        statuses(&ev).iter().all(|(l, _)| !l.starts_with("//t:")),
        "{ev:?}"
    );
    let (out, ev) = w.events(&["test", "//t:good"]);
    assert!(out.status.success(), "{}", w.report(&["test"], &out));
    assert!(statuses(&ev).contains(&s("//t:good", "executed")));
    let (_, ev) = w.events(&["test", "//t:good"]);
    assert!(statuses(&ev).contains(&s("//t:good", "cached")));
    let out = w.fail(&["test", "//t:bad"]);
    assert!(stderr(&out).contains("FAILED //t:bad"), "{}", stderr(&out));
}

#[test]
fn tool_data_is_presented_at_its_guest_directory_and_keyed() {
    let w = ws();
    w.write("tools/share/wb-template/banner.txt", "/* banner v1 */\n");
    w.copy_guest("wb-template", "tools/wb-template.wasm");
    w.write(
        "tools/WBUILD",
        r#"
wasi_tool(name = "probe", src = "probe.wasm")
wasi_tool(name = "template", src = "wb-template.wasm", data = ["//tools/share:data"], data_dir = "/share")
"#,
    );
    // Data paths are relative to the package that owns them: tools/share.
    w.write(
        "tools/share/WBUILD",
        "filegroup(name = \"data\", srcs = glob([\"wb-template/**\"]))\n",
    );
    w.write("g/h.tmpl", "#define X {{x}}\n");
    w.write(
        "g/WBUILD",
        r#"
wasi_run(name = "h", tool = "//tools:template", srcs = ["h.tmpl"], outs = ["h.h"],
         args = ["--set", "x=1", "--prelude", "banner.txt", "$(location h.tmpl)", "-o", "$@"])
"#,
    );
    w.ok(&["build"]);
    let h = w.read("wbuild-out/g/h.h");
    assert!(h.contains("/* banner v1 */"), "{h}");
    assert!(h.contains("#define X 1"), "{h}");
    // Changing the tool's data changes the key of every action using the tool.
    w.write("tools/share/wb-template/banner.txt", "/* banner v2 */\n");
    let (_, ev) = w.events(&["build"]);
    assert_eq!(statuses(&ev), vec![s("//g:h", "executed")]);
    assert!(w.read("wbuild-out/g/h.h").contains("banner v2"));
}

#[test]
fn tool_modules_are_compiled_once_per_cache() {
    let a = ws();
    chain(&a);
    let (_, ev) = a.events(&["build"]);
    assert_eq!(finished(&ev)["modules_compiled"], 1, "{ev:?}");
    // Another workspace using the same cache directory and the same tool: no compilation.
    let b = ws();
    world_ws(&b);
    let out = b
        .cmd(&[
            "build",
            "--events",
            a.root.join("../ev2.jsonl").to_str().unwrap(),
        ])
        .env_remove("WBUILD_CACHE")
        .args(["--cache-dir", a.cache.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", b.report(&["build"], &out));
    let text = std::fs::read_to_string(a.root.join("../ev2.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["executed"], 1);
    assert_eq!(last["modules_compiled"], 0, "{text}");
}

#[test]
fn invalidate_by_action_digest() {
    let w = ws();
    chain(&w);
    let (_, ev) = w.events(&["build"]);
    let digest = ev.iter().find(|e| e["label"] == "//other:c").unwrap()["action_digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = w.ok(&["cache", "invalidate", &digest]);
    assert!(stdout(&out).contains("dropped 1"), "{}", stdout(&out));
    let (_, ev) = w.events(&["build"]);
    assert!(
        statuses(&ev).contains(&s("//other:c", "executed")),
        "{ev:?}"
    );
    assert_eq!(finished(&ev)["executed"], 1);
    let err = stderr(&w.fail(&["cache", "invalidate", "not-a-digest"]));
    assert!(err.contains("neither a target label"), "{err}");
}

#[test]
fn concurrent_builds_on_one_cache_wait_for_each_other() {
    let w = ws();
    let mut build = String::new();
    for i in 0..6 {
        build.push_str(&format!(
            "wasi_run(name = \"s{i}\", tool = \"//tools:probe\", srcs = [], outs = [\"s{i}.txt\"], args = [\"spin\", \"{}\", \"$@\"])\n",
            200_000_000 + i
        ));
    }
    w.write("k/WBUILD", &build);
    let children: Vec<_> = (0..3)
        .map(|_| {
            w.cmd(&["build", "-j", "1"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut waited = false;
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", w.report(&["build"], &out));
        waited |= stderr(&out).contains("waiting for another wbuild process");
    }
    assert!(waited, "no build reported waiting for the cache");
    for i in 0..6 {
        assert!(w.path(&format!("wbuild-out/k/s{i}.txt")).is_file());
    }
    w.ok(&["cache", "verify"]);
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                v.extend(walk_files(&p));
            } else {
                v.push(p);
            }
        }
    }
    v
}

/// An example workspace as a user gets it, with the tools built from source by this test
/// crate installed as `install-tools.sh` does.
fn example(name: &str) -> TestWorkspace {
    let w = ws();
    let src = wbuild_tests::repo_root().join("examples").join(name);
    for f in walk_files(&src) {
        let rel = f.strip_prefix(&src).unwrap().to_str().unwrap().to_owned();
        if rel.starts_with("wbuild-out/") || rel.starts_with("tools/bin/") || rel == "wbuild.lock" {
            continue;
        }
        if rel.starts_with("tools/share/wb-template/") {
            continue; // installed below from the tool's source tree
        }
        w.write(&rel, &std::fs::read_to_string(&f).unwrap());
    }
    let share = wbuild_tests::repo_root().join("toolchains/wasi-tools/wb-template/share");
    for f in walk_files(&share) {
        let rel = f.strip_prefix(&share).unwrap().to_str().unwrap().to_owned();
        w.write(
            &format!("tools/share/{rel}"),
            &std::fs::read_to_string(&f).unwrap(),
        );
    }
    for t in ["wb-template", "wb-tar", "wb-check"] {
        w.copy_guest(t, &format!("tools/bin/{t}.wasm"));
    }
    w
}

#[test]
fn example_wasi_codegen_builds_tests_and_is_reproducible() {
    let w = example("wasi-codegen");
    let (out, ev) = w.events(&["build", "//..."]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    assert_eq!(finished(&ev)["executed"], 3, "{ev:?}");
    let (out, ev) = w.events(&["test", "//..."]);
    assert!(out.status.success(), "{}", w.report(&["test"], &out));
    assert_eq!(finished(&ev)["executed"], 4, "{ev:?}");
    let (_, ev) = w.events(&["build", "//..."]);
    assert_eq!(finished(&ev)["executed"], 0);
    assert_eq!(finished(&ev)["files_hashed"], 0);
    let out = w.ok(&["outputs", "//gen:header"]);
    assert_eq!(stdout(&out), "wbuild-out/gen/config.h\n");
    assert_eq!(
        w.read("wbuild-out/gen/config.h"),
        w.read("test/config.h.golden")
    );
}

#[test]
fn reused_staging_directories_leave_no_trace_for_later_actions() {
    // With -j 1 there is one slot, so both actions run in the same staging directory, one
    // after the other in whichever order the scheduler picks; whichever runs second must not
    // see the directories or files the first left there.
    let w = ws();
    for p in ["a", "z"] {
        w.write(&format!("{p}/in.txt"), &format!("{p}\n"));
        w.write(
            &format!("{p}/WBUILD"),
            &format!("wasi_run(name = \"{p}\", tool = \"//tools:probe\", srcs = [\"in.txt\"], outs = [\"deep/world.txt\"], args = [\"world\", \"$@\", \"$(location in.txt)\"])\n"),
        );
    }
    let (out, ev) = w.events(&["build", "-j", "1"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    let mut order: Vec<&str> = ev
        .iter()
        .filter(|e| e["type"] == "action")
        .map(|e| e["label"].as_str().unwrap())
        .collect();
    order.sort();
    assert_eq!(order, ["//a:a", "//z:z"]);
    for p in ["a", "z"] {
        let world = w.read(&format!("wbuild-out/{p}/deep/world.txt"));
        assert!(
            world.contains(&format!("listing of .: [\"{p}\"]")),
            "{p}: {world}"
        );
    }
}

#[test]
fn ctrl_c_stops_a_running_guest_and_records_an_interrupted_build() {
    let w = ws();
    w.write(
        "l/WBUILD",
        "wasi_run(name = \"l\", tool = \"//tools:probe\", srcs = [], outs = [\"o.txt\"], args = [\"loop\"])\n",
    );
    let child = w
        .cmd(&["build"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        w.report(&["build"], &out)
    );
    assert!(
        stderr(&out).contains("Build interrupted"),
        "{}",
        stderr(&out)
    );
    let hist = stdout(&w.ok(&["history"]));
    assert!(hist.contains("interrupted"), "{hist}");
}

#[test]
fn no_op_fast_path_notices_new_targets_and_fresh_edits() {
    let w = ws();
    chain(&w);
    w.ok(&["build"]);
    let (_, ev) = w.events(&["build"]);
    assert_eq!(finished(&ev)["executed"], 0);
    // A new target changes the build files: the new action runs.
    let mut wbuild = w.read("other/WBUILD");
    wbuild.push_str(
        "wasi_run(name = \"d\", tool = \"//tools:probe\", srcs = [\"c.txt\"], outs = [\"d.txt\"], args = [\"concat\", \"$@\", \"$(location c.txt)\"])\n",
    );
    w.write("other/WBUILD", &wbuild);
    let (_, ev) = w.events(&["build"]);
    assert!(
        statuses(&ev).contains(&s("//other:d", "executed")),
        "{ev:?}"
    );
    // Edits within the stat cache's racy window (same size, written just now, twice) are
    // never missed.
    for text in ["AAAAA\n", "BBBBB\n"] {
        std::fs::write(w.path("gen/a.txt"), text).unwrap();
        let (_, ev) = w.events(&["build", "//gen:ab"]);
        assert!(
            statuses(&ev).contains(&s("//gen:ab", "executed")),
            "{text}: {ev:?}"
        );
        assert_eq!(w.read("wbuild-out/gen/ab.txt"), format!("{text}world\n"));
    }
}

#[test]
fn genrule_runs_in_the_native_sandbox_and_is_cached() {
    let w = ws();
    chain(&w);
    w.write("n/secret.txt", "not declared\n");
    w.write(
        "n/WBUILD",
        r#"
genrule(
    name = "upper",
    srcs = ["//gen:abab"],
    outs = ["upper.txt"],
    cmd = "tr a-z A-Z < $(location //gen:abab) > $@",
)
genrule(
    name = "world",
    outs = ["world.txt"],
    cmd = "{ ls /; id -u; pwd; env | sort; test -e /root && echo root visible || echo root hidden; } > $@",
)
genrule(
    name = "peek",
    outs = ["peek.txt"],
    cmd = "test -e n/secret.txt && echo secret visible > $@ || echo secret hidden > $@",
)
"#,
    );
    // An undeclared file is not in the sandbox; the observed probe of it is an error that
    // names it and says how to declare it.
    let out = w.run(&["build", "//n:peek"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("read undeclared input n/secret.txt: add it to srcs of //n:peek"),
        "{err}"
    );
    assert_eq!(err.matches("n/secret.txt").count(), 1, "said once: {err}");
    // Unobserved, the probe finds nothing.
    w.ok(&["build", "--sandbox=unobserved", "//n:peek"]);
    assert_eq!(w.read("wbuild-out/n/peek.txt"), "secret hidden\n");
    let (out, ev) = w.events(&["build", "//n:upper", "//n:world"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    assert_eq!(
        w.read("wbuild-out/n/upper.txt"),
        "HELLO\nWORLD\nHELLO\nWORLD\n"
    );
    assert!(
        statuses(&ev).contains(&s("//n:upper", "executed")),
        "{ev:?}"
    );
    let world = w.read("wbuild-out/n/world.txt");
    assert!(
        world.starts_with("bin\ndev\netc\nlib\nlib64\nproc\nsbin\ntmp\nusr\nwork\n0\n/work\n"),
        "{world}"
    );
    // Exactly the fixed variables and the platform's tools ($CC etc., as Bazel's genrule
    // make variables), nothing from the host.
    assert!(
        world.contains(
            "AR=ar\nCC=gcc\nCXX=g++\nLANG=C\nPATH=/usr/bin:/bin\nPWD=/work\nSOURCE_DATE_EPOCH=0\nTEST_RUNNER=\nTZ=UTC\n"
        ),
        "{world}"
    );
    assert!(world.contains("root hidden"), "{world}");

    // Cached; an edit upstream re-runs the WASI action and the genrule after it.
    let (_, ev) = w.events(&["build", "//n:upper", "//n:world"]);
    assert_eq!(finished(&ev)["executed"], 0);
    w.write("gen/a.txt", "bye\n");
    let (_, ev) = w.events(&["build", "//n:upper"]);
    assert!(
        statuses(&ev).contains(&s("//n:upper", "executed")),
        "{ev:?}"
    );
    assert_eq!(w.read("wbuild-out/n/upper.txt"), "BYE\nWORLD\nBYE\nWORLD\n");
}

#[test]
fn genrule_has_no_network_and_reports_failures() {
    let w = ws();
    w.write(
        "wbuild.toml",
        "[build]\nsource_date_epoch = 0\n[wasi]\ntimeout_secs = 1\n",
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    w.write(
        "n/WBUILD",
        &format!(
            r#"
genrule(name = "net", outs = ["net.txt"],
        cmd = "command -v bash > /dev/null && if bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}' 2>/dev/null; then echo connected; else echo refused; fi > $@")
genrule(name = "fail", outs = ["f.txt"], cmd = "echo broken >&2; exit 4")
genrule(name = "slow", outs = ["s.txt"], cmd = "sleep 100 & sleep 100")
genrule(name = "lazy", outs = ["l.txt"], cmd = "true")
"#
        ),
    );
    w.ok(&["build", "//n:net"]);
    assert_eq!(w.read("wbuild-out/n/net.txt"), "refused\n");
    let err = stderr(&w.fail(&["build", "-k", "//n:fail", "//n:slow", "//n:lazy"]));
    assert!(
        err.contains("FAILED //n:fail: the command exited with code 4"),
        "{err}"
    );
    assert!(err.contains("| broken"), "{err}");
    assert!(
        err.contains("FAILED //n:slow: the command ran longer than its time limit of 1s"),
        "{err}"
    );
    assert!(
        err.contains("FAILED //n:lazy: the tool did not create declared output n/l.txt"),
        "{err}"
    );
    drop(listener);
}

fn c_project(w: &TestWorkspace) {
    w.write(
        "lib/include/greet/greet.h",
        "#pragma once\nconst char *greeting(void);\nint add(int a, int b);\n",
    );
    w.write(
        "lib/greet.c",
        "#include \"greet/greet.h\"\nconst char *greeting(void) { return GREETING; }\nint add(int a, int b) { return a + b; }\n",
    );
    w.write(
        "lib/WBUILD",
        r#"cc_library(name = "greet", srcs = ["greet.c"], hdrs = ["include/greet/greet.h"],
           includes = ["include"], defines = ["GREETING=\"hello from wbuild\""])
"#,
    );
    w.write(
        "app/main.c",
        "#include <stdio.h>\n#include \"greet/greet.h\"\nint main(void) { printf(\"%s %d\\n\", greeting(), add(2, 3)); return 0; }\n",
    );
    w.write(
        "app/test.c",
        "#include \"greet/greet.h\"\nint main(void) { return add(2, 2) == 4 ? 0 : 1; }\n",
    );
    w.write(
        "app/bad_test.c",
        "#include \"greet/greet.h\"\nint main(void) { return add(2, 2) == 5 ? 0 : 1; }\n",
    );
    w.write(
        "app/WBUILD",
        r#"cc_binary(name = "hello", srcs = ["main.c"], deps = ["//lib:greet"])
cc_test(name = "add_test", srcs = ["test.c"], deps = ["//lib:greet"])
cc_test(name = "bad_test", srcs = ["bad_test.c"], deps = ["//lib:greet"])
"#,
    );
}

#[test]
fn cc_rules_build_link_test_and_rebuild_what_changed() {
    let w = ws();
    c_project(&w);
    let (out, ev) = w.events(&["build", "//lib/...", "//app:hello"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    // One compile per source, then the archive and the link.
    assert_eq!(
        statuses(&ev),
        vec![
            s("//app:hello", "executed"),
            s("//app:hello app/main.c", "executed"),
            s("//lib:greet", "executed"),
            s("//lib:greet lib/greet.c", "executed"),
        ]
    );
    let run = std::process::Command::new(w.path("wbuild-out/app/hello"))
        .output()
        .unwrap();
    assert_eq!(stdout(&run), "hello from wbuild 5\n");
    assert_eq!(
        stdout(&w.ok(&["outputs", "//app:hello", "//lib:greet"])),
        "wbuild-out/app/hello\nwbuild-out/lib/libgreet.a\n"
    );

    // Tests run under `wbuild test`, and are cached when they pass.
    let (out, ev) = w.events(&["test", "//app:add_test"]);
    assert!(out.status.success(), "{}", w.report(&["test"], &out));
    assert!(statuses(&ev).contains(&s("//app:add_test", "executed")));
    let (_, ev) = w.events(&["test", "//app:add_test"]);
    assert!(statuses(&ev).contains(&s("//app:add_test", "cached")));
    let err = stderr(&w.fail(&["test", "//app:bad_test"]));
    assert!(
        err.contains("FAILED //app:bad_test: the command exited with code 1"),
        "{err}"
    );

    // A change to the app's source recompiles and relinks only the app.
    w.write(
        "app/main.c",
        "#include <stdio.h>\n#include \"greet/greet.h\"\nint main(void) { printf(\"%s %d\\n\", greeting(), add(20, 3)); return 0; }\n",
    );
    let (_, ev) = w.events(&["build", "//app:hello"]);
    assert_eq!(
        statuses(&ev),
        vec![
            s("//app:hello", "executed"),
            s("//app:hello app/main.c", "executed"),
            s("//lib:greet", "cached"),
            s("//lib:greet lib/greet.c", "cached"),
        ]
    );
    // A header edit recompiles exactly the sources that see it; objects that come out the
    // same (a comment) leave the archive and the link cached.
    w.write(
        "lib/include/greet/greet.h",
        "#pragma once\n/* v2 */\nconst char *greeting(void);\nint add(int a, int b);\n",
    );
    let (_, ev) = w.events(&["build", "//app:hello"]);
    assert_eq!(
        statuses(&ev),
        vec![
            s("//app:hello", "cached"),
            s("//app:hello app/main.c", "executed"),
            s("//lib:greet", "cached"),
            s("//lib:greet lib/greet.c", "executed"),
        ]
    );
    // A header edit that changes the code relinks too.
    w.write(
        "lib/include/greet/greet.h",
        "#pragma once\nconst char *greeting(void);\nint add(int a, int b);\nstatic inline int twice(int x) { return 2 * x; }\n#define ADD(a, b) add(twice(a), b)\n",
    );
    w.write(
        "app/main.c",
        "#include <stdio.h>\n#include \"greet/greet.h\"\nint main(void) { printf(\"%s %d\\n\", greeting(), ADD(20, 3)); return 0; }\n",
    );
    let (_, ev) = w.events(&["build", "//app:hello"]);
    assert_eq!(
        statuses(&ev),
        vec![
            s("//app:hello", "executed"),
            s("//app:hello app/main.c", "executed"),
            s("//lib:greet", "cached"),
            s("//lib:greet lib/greet.c", "executed"),
        ]
    );
    let run = std::process::Command::new(w.path("wbuild-out/app/hello"))
        .output()
        .unwrap();
    assert_eq!(stdout(&run), "hello from wbuild 43\n");
    // One compile action of a target is named by its source.
    let explained = stdout(&w.ok(&["explain", "//app:hello", "app/main.c"]));
    assert!(
        explained.starts_with("//app:hello app/main.c\n  action digest: "),
        "{explained}"
    );
}

#[test]
fn cc_undeclared_headers_are_not_visible_and_outputs_are_reproducible() {
    let a = ws();
    c_project(&a);
    // A header in the package but not in hdrs/srcs does not exist in the sandbox.
    a.write("app/secret.h", "#define SECRET 1\n");
    a.write(
        "app/sneaky.c",
        "#include \"secret.h\"\nint main(void) { return SECRET; }\n",
    );
    a.write(
        "app/WBUILD",
        r#"cc_binary(name = "hello", srcs = ["main.c"], deps = ["//lib:greet"])
cc_binary(name = "sneaky", srcs = ["sneaky.c"])
"#,
    );
    let err = stderr(&a.fail(&["build", "//app:sneaky"]));
    assert!(err.contains("secret.h: No such file or directory"), "{err}");

    // Two clean builds in different directories and caches give identical bytes.
    let b = ws();
    c_project(&b);
    a.ok(&["build", "//app:hello"]);
    b.ok(&["build", "//app:hello"]);
    for f in ["wbuild-out/app/hello", "wbuild-out/lib/libgreet.a"] {
        assert_eq!(
            std::fs::read(a.path(f)).unwrap(),
            std::fs::read(b.path(f)).unwrap(),
            "{f} differs"
        );
    }
}

/// ELF `e_machine` of a file.
fn elf_machine(path: &std::path::Path) -> u16 {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..4], b"\x7fELF", "{} is not ELF", path.display());
    u16::from_le_bytes([b[18], b[19]])
}

#[test]
fn cc_cross_compiles_for_arm64_and_tests_under_qemu() {
    let w = ws();
    c_project(&w);
    let (out, ev) = w.events(&["build", "--platform", "linux-arm64", "//app:hello"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    assert_eq!(finished(&ev)["executed"], 4);
    assert_eq!(
        stdout(&w.ok(&["outputs", "--platform", "linux-arm64", "//app:hello"])),
        "wbuild-out/linux-arm64/app/hello\n"
    );
    assert_eq!(
        elf_machine(&w.path("wbuild-out/linux-arm64/app/hello")),
        0xb7
    ); // aarch64
    // The test program runs under qemu-aarch64 inside the sandbox.
    let (out, ev) = w.events(&["test", "--platform", "linux-arm64", "//app:add_test"]);
    assert!(out.status.success(), "{}", w.report(&["test"], &out));
    assert!(statuses(&ev).contains(&s("//app:add_test", "executed")));
    let err = stderr(&w.fail(&["test", "--platform", "linux-arm64", "//app:bad_test"]));
    assert!(err.contains("FAILED //app:bad_test"), "{err}");
    // The host build has its own outputs and keys.
    let (_, ev) = w.events(&["build", "//app:hello"]);
    assert_eq!(finished(&ev)["executed"], 4);
    assert_eq!(elf_machine(&w.path("wbuild-out/app/hello")), 0x3e); // x86-64
    assert_eq!(
        elf_machine(&w.path("wbuild-out/linux-arm64/app/hello")),
        0xb7
    );
    // And the platform can be set in wbuild.toml; a bad name is a clear error.
    w.write(
        "wbuild.toml",
        "[build]\nsource_date_epoch = 0\nplatform = \"linux-arm64\"\n",
    );
    let (_, ev) = w.events(&["build", "//app:hello"]);
    assert_eq!(finished(&ev)["cached"], 4, "{ev:?}");
    let err = stderr(&w.fail(&["build", "--platform", "sparc"]));
    assert!(err.contains("unknown platform \"sparc\""), "{err}");
}

#[test]
fn sandbox_none_runs_natively_with_separate_keys() {
    let w = ws();
    c_project(&w);
    let (out, ev) = w.events(&["build", "--sandbox=none", "//app:hello"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    assert!(
        stderr(&out).contains("warning: --sandbox=none"),
        "{}",
        stderr(&out)
    );
    assert_eq!(finished(&ev)["executed"], 4);
    let unsandboxed = std::fs::read(w.path("wbuild-out/app/hello")).unwrap();
    // The sandboxed build does not reuse those results (but the archive's: wbuild writes it
    // in-process whatever the sandbox mode, so its key has none)...
    let (_, ev) = w.events(&["build", "//app:hello"]);
    assert_eq!(finished(&ev)["executed"], 3, "{ev:?}");
    assert!(
        statuses(&ev).contains(&s("//lib:greet", "cached")),
        "{ev:?}"
    );
    // ...though with path-independent flags the program is the same.
    assert_eq!(
        std::fs::read(w.path("wbuild-out/app/hello")).unwrap(),
        unsandboxed
    );
    let (_, ev) = w.events(&["test", "--sandbox=none", "//app:add_test"]);
    assert!(
        statuses(&ev).contains(&s("//app:add_test", "executed")),
        "{ev:?}"
    );
}

#[test]
fn cc_reports_unused_private_headers_and_deps() {
    let w = ws();
    c_project(&w);
    w.write("app/unused.h", "#define UNUSED 1\n");
    w.write("app/plain.c", "int main(void) { return 0; }\n");
    w.write(
        "app/WBUILD",
        r#"cc_binary(name = "hello", srcs = ["main.c"], deps = ["//lib:greet"])
cc_binary(name = "plain", srcs = ["plain.c", "unused.h"], deps = ["//lib:greet"])
"#,
    );
    let out = w.ok(&["build", "//app/..."]);
    let err = stderr(&out);
    assert!(
        err.contains(
            "warning: //app:plain: private header app/unused.h is not included by any source"
        ),
        "{err}"
    );
    assert!(
        err.contains(
            "warning: //app:plain: no source includes a header of its dependency //lib:greet"
        ),
        "{err}"
    );
    assert!(!err.contains("//app:hello: no source includes"), "{err}");
}

#[test]
fn a_library_with_header_checks_is_archived_by_wbuild_and_warns_as_ar_did() {
    // The archive is written in-process (no `ar`, no sandbox); the checks read the compiles'
    // depfiles: a private header included through `..` counts, an unused one and a
    // dependency none of whose headers is included are warned about.
    let w = ws();
    c_project(&w);
    w.write("mid/common/x.h", "#define X 1\n");
    w.write("mid/unused.h", "#define U 1\n");
    w.write(
        "mid/d/a.c",
        "#include \"../common/x.h\"\nint a(void) { return X; }\n",
    );
    w.write(
        "mid/WBUILD",
        r#"cc_library(name = "mid", srcs = ["d/a.c", "common/x.h", "unused.h"], deps = ["//lib:greet"])
"#,
    );
    let out = w.ok(&["build", "//mid:mid"]);
    let err = stderr(&out);
    assert!(
        err.contains(
            "warning: //mid:mid: private header mid/unused.h is not included by any source"
        ),
        "{err}"
    );
    assert!(!err.contains("mid/common/x.h is not included"), "{err}");
    assert!(
        err.contains(
            "warning: //mid:mid: no source includes a header of its dependency //lib:greet"
        ),
        "{err}"
    );
    let aquery = stdout(&w.ok(&["aquery", "//mid:mid"]));
    let archive: String = aquery
        .split("\n//")
        .find(|block| block.contains("mnemonic: CcArchive"))
        .unwrap_or_else(|| panic!("{aquery}"))
        .to_owned();
    assert!(
        archive.contains("executor: builtin archiver")
            && archive.contains("argv: wbuild-archive '--header-checks="),
        "{archive}"
    );
    // Including a header of the dependency quiets its warning.
    w.write(
        "mid/d/a.c",
        "#include \"../common/x.h\"\n#include \"greet/greet.h\"\nint a(void) { return X; }\n",
    );
    let err = stderr(&w.ok(&["build", "//mid:mid"]));
    assert!(!err.contains("dependency //lib:greet"), "{err}");
    assert!(err.contains("mid/unused.h is not included"), "{err}");
}

#[test]
fn one_build_for_both_platforms_and_per_target_platforms() {
    let a = ws();
    c_project(&a);
    let both = [
        "build",
        "--platform",
        "linux-x86_64,linux-arm64",
        "//app:hello",
    ];
    let (out, ev) = a.events(&both);
    assert!(out.status.success(), "{}", a.report(&both, &out));
    // Two compiles, an archive and a link for each platform; one build_finished.
    assert_eq!(finished(&ev)["executed"], 8, "{ev:?}");
    assert_eq!(
        ev.iter().filter(|e| e["type"] == "build_finished").count(),
        1
    );
    assert_eq!(elf_machine(&a.path("wbuild-out/app/hello")), 0x3e);
    assert_eq!(
        elf_machine(&a.path("wbuild-out/linux-arm64/app/hello")),
        0xb7
    );
    assert_eq!(
        stdout(&a.ok(&[
            "outputs",
            "--platform",
            "linux-x86_64,linux-arm64",
            "//app:hello"
        ])),
        "wbuild-out/app/hello\nwbuild-out/linux-arm64/app/hello\n"
    );

    // A clean build elsewhere gives the same bytes for both platforms: objects, archives,
    // programs.
    let b = ws();
    c_project(&b);
    b.ok(&both);
    let files = walk_files(&a.path("wbuild-out"));
    assert!(files.len() >= 10, "{files:?}");
    for f in &files {
        let rel = f.strip_prefix(a.path("wbuild-out")).unwrap();
        assert_eq!(
            std::fs::read(f).unwrap(),
            std::fs::read(b.path("wbuild-out").join(rel)).unwrap(),
            "{} differs between two clean builds",
            rel.display()
        );
    }

    // A target's own platform: built for it (with its deps) when no --platform is given.
    a.write(
        "app/WBUILD",
        r#"cc_binary(name = "hello", srcs = ["main.c"], deps = ["//lib:greet"])
cc_binary(name = "hello_arm", srcs = ["main.c"], deps = ["//lib:greet"],
          platform = "linux-arm64")
"#,
    );
    let (out, ev) = a.events(&["build", "//app:hello", "//app:hello_arm"]);
    assert!(out.status.success(), "{}", a.report(&["build"], &out));
    // The arm64 library is already in the cache; only hello_arm is new.
    assert_eq!(finished(&ev)["executed"], 2, "{ev:?}");
    assert_eq!(
        elf_machine(&a.path("wbuild-out/linux-arm64/app/hello_arm")),
        0xb7
    );
    assert!(!a.path("wbuild-out/app/hello_arm").exists());
    assert_eq!(
        stdout(&a.ok(&["outputs", "//app/..."])),
        "wbuild-out/linux-arm64/app/hello_arm\nwbuild-out/app/hello\n"
    );
    // --platform overrides the attribute.
    a.ok(&["build", "--platform", "linux-x86_64", "//app:hello_arm"]);
    assert_eq!(elf_machine(&a.path("wbuild-out/app/hello_arm")), 0x3e);

    a.write(
        "app/WBUILD",
        "cc_binary(name = \"hello\", srcs = [\"main.c\"], platform = \"linux-mips\")\n",
    );
    let err = stderr(&a.fail(&["build", "//app:hello"]));
    assert!(err.contains("app/WBUILD:1:1"), "{err}");
    assert!(
        err.contains("attribute 'platform': unknown platform \"linux-mips\""),
        "{err}"
    );
}

/// Any process whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(cmd);
            }
        }
    }
    found
}

#[test]
fn hostile_native_actions_are_contained() {
    let w = ws();
    w.write("n/in.txt", "original\n");
    w.write(
        "n/WBUILD",
        r#"
genrule(
    name = "hostile",
    srcs = ["in.txt"],
    outs = ["report.txt"],
    cmd = "\n".join([
        "exec 2>/dev/null",
        "{ echo bad > $(location in.txt) && echo wrote-input || echo input-protected",
        "chmod 666 $(location in.txt) && echo chmod-input || echo chmod-refused",
        "rm -f $(location in.txt) ; test -e $(location in.txt) && echo input-kept || echo input-removed",
        "mv $(location in.txt) n/moved.txt && echo moved || echo move-refused",
        "touch /usr/wbuild-evil && echo wrote-usr || echo usr-protected",
        "ls /root/.cache > /dev/null && echo home-visible || echo home-hidden",
        "echo stray > n/stray.txt",
        "(sleep 31.7; echo late > n/late.txt) &",
        "cat $(location in.txt) ; } > $@",
    ]),
)
"#,
    );
    w.ok(&["build", "//n:hostile"]);
    assert_eq!(
        w.read("wbuild-out/n/report.txt"),
        "input-protected\nchmod-refused\ninput-kept\nmove-refused\nusr-protected\nhome-hidden\noriginal\n"
    );
    // The background process died with the sandbox; nothing undeclared came out.
    assert_eq!(processes_with("sleep 31.7"), Vec::<String>::new());
    assert!(!w.path("wbuild-out/n/stray.txt").exists());
    assert!(!w.path("n/stray.txt").exists());
    assert!(!std::path::Path::new("/usr/wbuild-evil").exists());
    assert_eq!(w.read("n/in.txt"), "original\n");
    // The CAS blob behind the input is intact.
    let verify = stdout(&w.ok(&["cache", "verify"]));
    assert!(!verify.contains("corrupt"), "{verify}");
}

#[test]
fn example_c_hello_mixes_executors_for_both_platforms() {
    let w = example("c-hello");
    // The bundles c-hello pins (packed by examples/toolchains.sh) at ../.toolchains.
    let bundles = toolchains::shared_bundles();
    std::os::unix::fs::symlink(&bundles.dir, w.root.join("../.toolchains")).unwrap();
    let both = ["build", "--platform", "linux-x86_64,linux-arm64", "//..."];
    let (out, ev) = w.events(&both);
    assert!(out.status.success(), "{}", w.report(&both, &out));
    // The genrule ran wb-template through its launcher, then the shell appended a line.
    let header = w.read("wbuild-out/lib/include/greet/version.h");
    assert!(
        header.starts_with("/*\n * Generated by wb-template from lib/version.h.tmpl"),
        "{header}"
    );
    assert!(
        header.contains("#define GREET_VERSION \"1.2\"\n"),
        "{header}"
    );
    assert!(
        header.ends_with("#define GREET_HOST_TOOLS \"sh\"\n"),
        "{header}"
    );
    assert!(
        statuses(&ev).contains(&s("//lib:version_h", "executed")),
        "{ev:?}"
    );
    // The resolved bundles are recorded by digest.
    let lock = w.read("wbuild.lock");
    for d in [&bundles.wasi, &bundles.x86, &bundles.arm] {
        assert!(lock.contains(d.as_str()), "{lock}");
    }
    let run = std::process::Command::new(w.path("wbuild-out/app/hello"))
        .output()
        .unwrap();
    assert_eq!(stdout(&run), "hello from wbuild 5 (greet 1.2)\n");
    assert_eq!(
        elf_machine(&w.path("wbuild-out/linux-arm64/app/hello")),
        0xb7
    );
    let (out, ev) = w.events(&["test", "--platform", "linux-x86_64,linux-arm64", "//..."]);
    assert!(out.status.success(), "{}", w.report(&["test"], &out));
    let tests: Vec<_> = ev
        .iter()
        .filter(|e| e["mnemonic"] == "CcTest" && e["status"] == "executed")
        .collect();
    assert_eq!(tests.len(), 2, "{ev:?}");
    // Editing the template re-runs the genrule and what includes the header.
    w.write("lib/version.vars", "name = greet\nmajor = 1\nminor = 3\n");
    let (_, ev) = w.events(&["build", "//app:hello"]);
    let st = statuses(&ev);
    assert!(st.contains(&s("//lib:version_h", "executed")), "{st:?}");
    assert!(
        st.contains(&s("//lib:greet lib/greet.c", "executed")),
        "{st:?}"
    );
    // A compile that can see the header but whose depfile does not list it is answered by
    // its observed inputs.
    assert!(
        st.contains(&s("//app:hello app/main.c", "cached")),
        "{st:?}"
    );
    let run = std::process::Command::new(w.path("wbuild-out/app/hello"))
        .output()
        .unwrap();
    assert_eq!(stdout(&run), "hello from wbuild 5 (greet 1.3)\n");
}

#[test]
fn serve_answers_reapi_clients_from_the_local_cache_and_stops_on_sigterm() {
    use std::io::BufRead;
    use wbuild_remote::grpc::action_cache_client::ActionCacheClient;
    use wbuild_remote::grpc::content_addressable_storage_client::ContentAddressableStorageClient;
    use wbuild_remote::reapi;
    use wbuild_store::{Digest, DigestFunction};

    let w = ws();
    chain(&w);
    let (out, ev) = w.events(&["build", "//gen:ab"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    let digest: Digest = ev
        .iter()
        .find(|e| e["type"] == "action")
        .and_then(|e| e["action_digest"].as_str())
        .unwrap()
        .parse()
        .unwrap();
    w.write("token", "let-me-in\n");
    let mut server = w
        .cmd(&["serve", "--listen", "127.0.0.1:0", "--token-file", "token"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(server.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first
        .split(" on ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_owned();
    assert!(first.contains("writes need the bearer token"), "{first}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (result, bytes) = rt.block_on(async {
        let url = format!("http://{addr}");
        let mut ac = ActionCacheClient::connect(url.clone()).await.unwrap();
        let result = ac
            .get_action_result(reapi::GetActionResultRequest {
                action_digest: Some(digest.to_proto()),
                digest_function: DigestFunction::Blake3.to_reapi(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let out = result.output_files[0].digest.clone().unwrap();
        let mut cas = ContentAddressableStorageClient::connect(url).await.unwrap();
        let read = cas
            .batch_read_blobs(reapi::BatchReadBlobsRequest {
                digests: vec![out],
                digest_function: DigestFunction::Blake3.to_reapi(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        (result, read.responses[0].data.clone())
    });
    assert_eq!(result.output_files[0].path, "gen/ab.txt");
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        w.read("wbuild-out/gen/ab.txt")
    );

    // SIGTERM: a clean exit.
    // SAFETY: kill(2) with the pid of our own child, which has not been reaped yet.
    unsafe { libc_kill(server.id() as i32, 15) };
    let status = server.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("shutting down")), "{rest:?}");
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// A REAPI server for a test: `wbuild serve` or BuildGrid, killed when dropped.
struct RemoteServer {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for RemoteServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on `port`.
fn wait_for_port(port: u16, child: &mut std::process::Child) {
    let t0 = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the server exited before listening: {status:?}");
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "nothing listens on port {port} after 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn serve_without_a_token_or_anonymous_writes_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(BIN)
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if t0.elapsed() > std::time::Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("wbuild serve without --token-file or --allow-anonymous-writes kept running");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("--token-file") && err.contains("--allow-anonymous-writes"),
        "{err}"
    );
}

#[test]
fn serve_over_tls_answers_only_tls_clients_and_warns_about_clear_text_tokens() {
    use std::io::BufRead;
    use wbuild_store::reapi;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("token"), "t0ken\n").unwrap();
    // A token on a non-loopback address without TLS: one warning.
    let mut plain = std::process::Command::new(BIN)
        .arg("--cache-dir")
        .arg(d.join("cache"))
        .args(["serve", "--listen", "0.0.0.0:0", "--token-file"])
        .arg(d.join("token"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(plain.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let second = lines.next().unwrap().unwrap();
    assert!(first.contains("plain text"), "{first}");
    assert!(
        second.contains("clear text") && second.contains("--tls-cert"),
        "{second}"
    );
    let _ = plain.kill();
    let _ = plain.wait();
    // A self-signed certificate for localhost.
    let out = wbuild_tests::process::output_with_deadline(
        std::process::Command::new("openssl")
            .current_dir(d)
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
            .args(["-keyout", "key.pem", "-out", "cert.pem"])
            .args(["-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=DNS:localhost"])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"]),
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let port = free_port();
    let mut child = std::process::Command::new(BIN)
        .arg("--cache-dir")
        .arg(d.join("cache"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--token-file")
        .arg(d.join("token"))
        .arg("--tls-cert")
        .arg(d.join("cert.pem"))
        .arg("--tls-key")
        .arg(d.join("key.pem"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, &mut child);
    let server = RemoteServer {
        child,
        url: format!("https://127.0.0.1:{port}"),
        _dir: tempfile::tempdir().unwrap(),
    };
    let ca = std::fs::read(d.join("cert.pem")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ask = |tls: bool| -> Result<(), String> {
        let url = if tls {
            server.url.clone()
        } else {
            format!("http://127.0.0.1:{port}")
        };
        let mut ep = tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .connect_timeout(std::time::Duration::from_secs(20))
            .timeout(std::time::Duration::from_secs(20));
        if tls {
            ep = ep
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
                        .domain_name("localhost"),
                )
                .unwrap();
        }
        rt.block_on(async {
            let ch = ep.connect().await.map_err(|e| format!("{e:?}"))?;
            wbuild_remote::grpc::capabilities_client::CapabilitiesClient::new(ch)
                .get_capabilities(reapi::GetCapabilitiesRequest::default())
                .await
                .map(|_| ())
                .map_err(|e| format!("{e:?}"))
        })
    };
    ask(true).unwrap();
    assert!(ask(false).is_err());
}

/// `wbuild serve` on its own empty cache.
fn wbuild_server() -> RemoteServer {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = std::process::Command::new(BIN)
        .args(["--cache-dir"])
        .arg(dir.path().join("cache"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--allow-anonymous-writes")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    RemoteServer::listening(child, port, dir)
}

impl RemoteServer {
    /// The server's own directory (for `wbuild serve`, its cache is `cache/` in it).
    fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// The server `child` once it accepts connections on `port`.
    fn listening(mut child: std::process::Child, port: u16, dir: tempfile::TempDir) -> Self {
        wait_for_port(port, &mut child);
        RemoteServer {
            child,
            url: format!("grpc://127.0.0.1:{port}"),
            _dir: dir,
        }
    }
}

/// BuildGrid (PyPI buildgrid==0.4.4) as a cache-only server: `bgd` from $WBUILD_BGD or from
/// the venv tests/setup.sh creates.
fn buildgrid_server() -> RemoteServer {
    let bgd = bgd_path();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config =
        std::fs::read_to_string(wbuild_tests::repo_root().join("tests/reapi/buildgrid-cache.yml"))
            .unwrap()
            .replace("@PORT@", &port.to_string());
    let config_path = dir.path().join("buildgrid.yml");
    std::fs::write(&config_path, config).unwrap();
    std::fs::create_dir_all(dir.path().join("cas")).unwrap();
    let log = std::fs::File::create(dir.path().join("bgd.log")).unwrap();
    let child = std::process::Command::new(&bgd)
        .args(["server", "start"])
        .arg(&config_path)
        .env("BGD_CAS_DIR", dir.path().join("cas"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    RemoteServer::listening(child, port, dir)
}

/// A workspace with WASI actions (chain), native ones (the C project) and an output larger
/// than a REAPI batch (so it travels through ByteStream).
fn mixed_ws() -> TestWorkspace {
    let w = ws();
    chain(&w);
    c_project(&w);
    w.write(
        "big/WBUILD",
        "genrule(name = \"big\", outs = [\"big.bin\"], cmd = \"head -c 6000000 /dev/urandom > $@\")\n",
    );
    w
}

#[test]
fn wbuild_serve_shares_its_cache_with_local_builds() {
    // The server serves the cache the local workspace builds with.
    let local = ws();
    chain(&local);
    let port = free_port();
    let child = std::process::Command::new(BIN)
        .arg("--cache-dir")
        .arg(&local.cache)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--allow-anonymous-writes")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let server = RemoteServer::listening(child, port, tempfile::tempdir().unwrap());
    // A local build on the served cache runs (it does not wait for the server to exit)...
    let t0 = std::time::Instant::now();
    let mut build = local
        .cmd(&["build"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    loop {
        if build.try_wait().unwrap().is_some() {
            break;
        }
        if t0.elapsed() > std::time::Duration::from_secs(120) {
            let _ = build.kill();
            panic!("a local build on the served cache did not finish in 120 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = build.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", local.report(&["build"], &out));
    // ...and its results are served: another checkout gets everything from the server.
    let other = ws();
    chain(&other);
    let args = ["build", "--remote", &server.url];
    let (out, ev) = other.events(&args);
    assert!(out.status.success(), "{}", other.report(&args, &out));
    let f = finished(&ev);
    assert_eq!(f["executed"], 0, "{ev:?}");
    assert_eq!(f["remote_cached"], 3, "{ev:?}");
    // Between requests the server lets go of the cache again: local maintenance works.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = local.ok(&["cache", "verify"]);
    assert!(!stdout(&out).contains("corrupt"), "{}", stdout(&out));
    local.ok(&["build"]);
}

fn remote_round_trip(server: &RemoteServer) {
    let a = mixed_ws();
    let build = [
        "build",
        "--remote",
        &server.url,
        "//gen/...",
        "//other/...",
        "//app:hello",
        "//big",
    ];
    let (out, ev) = a.events(&build);
    assert!(out.status.success(), "{}", a.report(&build, &out));
    let f = finished(&ev);
    assert_eq!(f["executed"], 8, "{ev:?}");
    assert!(
        !stderr(&out).contains("warning: remote"),
        "{}",
        stderr(&out)
    );

    // Another checkout with an empty cache: everything comes from the remote.
    let b = mixed_ws();
    let (out, ev) = b.events(&build);
    assert!(out.status.success(), "{}", b.report(&build, &out));
    let f = finished(&ev);
    assert_eq!(f["executed"], 0, "{ev:?}");
    assert_eq!(f["remote_cached"], 8, "{ev:?}");
    assert!(
        ev.iter()
            .filter(|e| e["type"] == "action")
            .all(|e| e["status"] == "remote_cached"),
        "{ev:?}"
    );
    for file in walk_files(&a.path("wbuild-out")) {
        let rel = file.strip_prefix(a.path("wbuild-out")).unwrap();
        assert_eq!(
            std::fs::read(&file).unwrap(),
            std::fs::read(b.path("wbuild-out").join(rel)).unwrap(),
            "{} differs",
            rel.display()
        );
    }
    let run = std::process::Command::new(b.path("wbuild-out/app/hello"))
        .output()
        .unwrap();
    assert_eq!(stdout(&run), "hello from wbuild 5\n");
    // Then locally cached.
    b.write("other/c.txt", "changed\n");
    let (_, ev) = b.events(&build);
    assert_eq!(finished(&ev)["executed"], 1, "{ev:?}");

    // Unsandboxed native results are not uploaded.
    let c = mixed_ws();
    c.ok(&[
        "build",
        "--remote",
        &server.url,
        "--sandbox=none",
        "//app:hello",
    ]);
    let d = mixed_ws();
    let (_, ev) = d.events(&[
        "build",
        "--remote",
        &server.url,
        "--sandbox=none",
        "//app:hello",
    ]);
    // (The archive, written in-process whatever the sandbox mode, has one key and is shared.)
    assert_eq!(finished(&ev)["executed"], 3, "{ev:?}");
    assert_eq!(finished(&ev)["remote_cached"], 1, "{ev:?}");
}

#[test]
fn remote_cache_through_wbuild_serve() {
    let server = wbuild_server();
    remote_round_trip(&server);
}

#[test]
fn remote_cache_through_buildgrid() {
    let server = buildgrid_server();
    remote_round_trip(&server);
}

#[test]
fn remote_down_builds_locally_with_one_warning() {
    let mut server = wbuild_server();
    let url = server.url.clone();
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let w = mixed_ws();
    let (out, ev) = w.events(&["build", "--remote", &url, "//gen/...", "//app:hello"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    assert_eq!(finished(&ev)["executed"], 6, "{ev:?}");
    let err = stderr(&out);
    assert_eq!(err.matches("warning:").count(), 1, "{err}");
    assert!(err.contains("building without the remote cache"), "{err}");
}

#[test]
fn remote_killed_mid_build_the_build_finishes_locally() {
    let mut server = wbuild_server();
    let w = ws();
    w.write(
        "n/WBUILD",
        r#"
genrule(name = "a", outs = ["a.txt"], cmd = "sleep 1; echo a > $@")
genrule(name = "b", srcs = [":a"], outs = ["b.txt"], cmd = "sleep 1; cat $(location :a) > $@")
genrule(name = "c", srcs = [":b"], outs = ["c.txt"], cmd = "sleep 1; cat $(location :b) > $@")
"#,
    );
    let events = w.path("events.jsonl");
    let build = w
        .cmd(&["build", "--remote", &server.url, "--events"])
        .arg(&events)
        .arg("//n:c")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the server once the first action has finished (and used it).
    let t0 = std::time::Instant::now();
    while !w.path("wbuild-out/n/a.txt").exists() {
        assert!(t0.elapsed() < std::time::Duration::from_secs(30));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let out = build.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    assert_eq!(w.read("wbuild-out/n/c.txt"), "a\n");
    assert_eq!(err.matches("warning: remote cache").count(), 1, "{err}");
    assert!(
        err.contains("the rest of this build runs without it"),
        "{err}"
    );
}

#[test]
fn buildgrid_bgd_uses_wbuild_serve_and_cannot_write_the_action_cache_without_the_token() {
    use prost::Message;
    use wbuild_store::{Digest, DigestFunction};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("token"), "t0ken\n").unwrap();
    let port = free_port();
    let mut child = std::process::Command::new(BIN)
        .arg("--cache-dir")
        .arg(d.join("cache"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--token-file",
        ])
        .arg(d.join("token"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, &mut child);
    let server = RemoteServer {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: tempfile::tempdir().unwrap(),
    };
    let bgd = |group: &str, args: &[&str], token: bool| {
        let mut c = std::process::Command::new(bgd_path());
        c.current_dir(d).args([group, "--remote", &server.url]);
        if token {
            c.args(["--auth-token", "token"]);
        }
        let out = c.args(args).output().unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    // CAS: upload and download through bgd (SHA-256), verified on both sides.
    std::fs::write(d.join("out.txt"), "built by someone else\n").unwrap();
    let out = Digest::of(DigestFunction::Sha256, b"built by someone else\n");
    let (ok, text) = bgd("cas", &["upload-file", "--verify", "out.txt"], true);
    assert!(ok && text.contains(&out.hex()), "{text}");
    let name = format!("{}/{}", out.hex(), out.size);
    let (ok, text) = bgd(
        "cas",
        &["download-file", "--verify", &name, "back.txt"],
        false,
    );
    assert!(ok, "{text}");
    assert_eq!(
        std::fs::read_to_string(d.join("back.txt")).unwrap(),
        "built by someone else\n"
    );
    // The action cache: an ActionResult (stored in the CAS, as bgd wants it) for an action.
    let result = wbuild_store::reapi::ActionResult {
        output_files: vec![wbuild_store::reapi::OutputFile {
            path: "out.txt".into(),
            digest: Some(out.to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    std::fs::write(d.join("result.bin"), result.encode_to_vec()).unwrap();
    let result_d = Digest::of(DigestFunction::Sha256, &result.encode_to_vec());
    assert!(bgd("cas", &["upload-file", "result.bin"], true).0);
    let action = Digest::of(DigestFunction::Sha256, b"some action");
    let action_name = format!("{}/{}", action.hex(), action.size);
    let result_name = format!("{}/{}", result_d.hex(), result_d.size);
    let (ok, text) = bgd("actioncache", &["get", &action_name], false);
    assert!(text.contains("Miss"), "{ok} {text}");
    // Without the token: refused; with it: stored, and readable anonymously.
    let (_, text) = bgd(
        "actioncache",
        &["update", &action_name, &result_name],
        false,
    );
    assert!(!text.contains("Success"), "{text}");
    let (ok, text) = bgd("actioncache", &["get", &action_name], false);
    assert!(text.contains("Miss"), "{ok} {text}");
    let (ok, text) = bgd("actioncache", &["update", &action_name, &result_name], true);
    assert!(ok, "{text}");
    let (ok, text) = bgd("actioncache", &["get", "--json", &action_name], false);
    assert!(ok && text.contains(&out.hex()), "{text}");
}

#[test]
fn verify_finds_non_reproducible_native_outputs_and_names_their_actions() {
    let w = ws();
    chain(&w);
    c_project(&w);
    w.write(
        "n/WBUILD",
        r##"
genrule(name = "stamp", outs = ["stamp.h"],
        cmd = "echo '#define BUILT' \"$$(date '+%Y-%m-%d %H:%M:%S.%N')\" > $@")
genrule(name = "fine", outs = ["fine.txt"], cmd = "echo same every time > $@")
"##,
    );
    let junit = w.path("report.xml");
    let json = w.path("report.json");
    let out = w
        .cmd(&["verify", "--runs", "2", "--vary", "path,time", "--junit"])
        .arg(&junit)
        .arg("--json")
        .arg(&json)
        .arg("//...")
        .output()
        .unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}\n{}", stderr(&out));
    assert!(
        text.contains("NOT REPRODUCIBLE n/stamp.h (from //n:stamp, Genrule)"),
        "{text}"
    );
    assert!(
        text.contains("likely cause: an embedded timestamp"),
        "{text}"
    );
    assert!(!text.contains("NOT REPRODUCIBLE n/fine.txt"), "{text}");
    // WASI and cc outputs are reproducible.
    for ok in ["gen/abab.txt", "app/hello", "lib/libgreet.a"] {
        assert!(!text.contains(&format!("NOT REPRODUCIBLE {ok} ")), "{text}");
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let outputs = report["outputs"].as_array().unwrap();
    let entry = |p: &str| outputs.iter().find(|o| o["path"] == p).unwrap();
    assert_eq!(entry("app/hello")["reproducible"], true);
    assert_eq!(entry("gen/abab.txt")["action"], "//gen:abab");
    assert_eq!(entry("n/stamp.h")["reproducible"], false);
    // The JUnit report is XML with one test case per checked output.
    let parsed = std::process::Command::new("python3")
        .arg("-c")
        .arg("import sys, xml.etree.ElementTree as E; r = E.parse(sys.argv[1]).getroot(); cs = r.iter('testcase'); print(sum(1 for _ in cs), sum(1 for _ in r.iter('failure')))")
        .arg(&junit)
        .output()
        .unwrap();
    assert!(parsed.status.success(), "{}", stderr(&parsed));
    let counts = stdout(&parsed);
    assert_eq!(
        counts.trim(),
        format!(
            "{} {}",
            outputs.len(),
            outputs
                .iter()
                .filter(|o| o["reproducible"] == false)
                .count()
        )
    );

    // The build path is found out when only the path varies.
    w.write(
        "n/WBUILD",
        "genrule(name = \"where\", outs = [\"where.txt\"], cmd = \"echo built in $$(pwd) > $@\")\n",
    );
    // In the sandbox the command runs in /work wherever the workspace is: reproducible.
    let out = w
        .cmd(&["verify", "--vary", "path", "//n:where"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    // Unsandboxed it sees where it runs, and verify says so.
    let out = w
        .cmd(&["verify", "--vary", "path", "--sandbox", "none", "//n:where"])
        .output()
        .unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}\n{}", stderr(&out));
    assert!(
        text.contains("NOT REPRODUCIBLE n/where.txt (from //n:where, Genrule)"),
        "{text}"
    );
    assert!(
        text.contains("likely cause: embeds the build path"),
        "{text}"
    );
}

#[test]
fn provenance_round_trips_and_against_detects_a_modified_subject() {
    let w = ws();
    chain(&w);
    c_project(&w);
    let prov = w.path("app.intoto.json");
    let out = w
        .cmd(&["build", "--provenance"])
        .arg(&prov)
        .args(["//app:hello", "//gen:abab"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&prov).unwrap()).unwrap();
    assert_eq!(st["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(st["predicateType"], "https://slsa.dev/provenance/v1");
    let subjects = st["subject"].as_array().unwrap();
    let names: Vec<&str> = subjects
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["wbuild-out/app/hello", "wbuild-out/gen/abab.txt"]);
    // The digests are those of the files.
    let hello = std::fs::read(w.path("wbuild-out/app/hello")).unwrap();
    assert_eq!(
        subjects[0]["digest"]["blake3"],
        blake3_hex(&hello),
        "{subjects:?}"
    );
    // Materials: the sources read, the WASI tool and the native toolchain.
    let deps = st["predicate"]["buildDefinition"]["resolvedDependencies"]
        .as_array()
        .unwrap();
    let uris: Vec<&str> = deps.iter().map(|d| d["uri"].as_str().unwrap()).collect();
    for want in [
        "file:app/main.c",
        "file:lib/greet.c",
        "file:gen/a.txt",
        "file:tools/probe.wasm",
    ] {
        assert!(uris.contains(&want), "{uris:?}");
    }
    assert!(
        uris.iter()
            .any(|u| u.starts_with("wbuild:toolchain/linux-")),
        "{uris:?}"
    );

    // Another builder's claim checks out here...
    let out = w.cmd(&["verify", "--against"]).arg(&prov).output().unwrap();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("2 match, 0 differ"),
        "{}",
        stdout(&out)
    );
    // ...unless a subject was tampered with.
    let forged = std::fs::read_to_string(&prov).unwrap().replacen(
        subjects[1]["digest"]["sha256"].as_str().unwrap(),
        &"0".repeat(64),
        1,
    );
    std::fs::write(&prov, forged).unwrap();
    let out = w.cmd(&["verify", "--against"]).arg(&prov).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("DIFFERS wbuild-out/gen/abab.txt"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn signed_provenance_is_a_dsse_envelope_checked_by_against() {
    use base64::Engine as _;
    let w = ws();
    chain(&w);
    w.ok(&["toolchain", "keygen", "--out", "../team.key"]);
    w.ok(&["toolchain", "keygen", "--out", "../other.key"]);
    let prov = w.path("abab.intoto.json");
    let out = w
        .cmd(&["build", "--sign-key", "../team.key", "--provenance"])
        .arg(&prov)
        .arg("//gen:abab")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let env: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&prov).unwrap()).unwrap();
    assert_eq!(env["payloadType"], "application/vnd.in-toto+json");
    let b64 = base64::engine::general_purpose::STANDARD;
    let st: serde_json::Value =
        serde_json::from_slice(&b64.decode(env["payload"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(st["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(env["signatures"].as_array().unwrap().len(), 1);

    // Checked with the signer's key; refused without a key, with another key, and after
    // the payload was edited.
    let against = |key: Option<&str>| {
        let mut c = w.cmd(&["verify", "--against"]);
        c.arg(&prov);
        if let Some(k) = key {
            c.args(["--key", k]);
        }
        c.output().unwrap()
    };
    let out = against(Some("../team.pub"));
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("signature ok"), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("1 match, 0 differ"),
        "{}",
        stdout(&out)
    );
    let out = against(None);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--key"), "{}", stderr(&out));
    let out = against(Some("../other.pub"));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("none of them is trusted"),
        "{}",
        stderr(&out)
    );
    let mut forged_st = st.clone();
    forged_st["subject"][0]["digest"]["sha256"] = "0".repeat(64).into();
    let mut forged = env.clone();
    forged["payload"] = b64.encode(serde_json::to_vec(&forged_st).unwrap()).into();
    std::fs::write(&prov, serde_json::to_string(&forged).unwrap()).unwrap();
    let out = against(Some("../team.pub"));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not verify"), "{}", stderr(&out));
}

fn blake3_hex(bytes: &[u8]) -> String {
    wbuild_store::Digest::of(wbuild_store::DigestFunction::Blake3, bytes).hex()
}
