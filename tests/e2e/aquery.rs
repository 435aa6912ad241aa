//! `wbuild aquery`: the actions of a query's targets with the action digests a build computes
//! (compared with the build's events and `wbuild explain`), their cache state (after a build,
//! after `cache invalidate`), options that change keys (`--platform`, `--sandbox`), the JSON
//! output, inputs whose producer has not run, and errors.

use std::collections::BTreeMap;

use wbuild_tests::{TestWorkspace, stderr, stdout};

use crate::{c_project, chain, ws};

/// A genrule (native) reading the output of the WASI chain: //n:upper <- //gen:abab <- //gen:ab.
fn mixed(w: &TestWorkspace) {
    chain(w);
    w.write(
        "n/WBUILD",
        r#"
genrule(
    name = "upper",
    srcs = ["//gen:abab"],
    outs = ["upper.txt"],
    cmd = "tr a-z A-Z < $(location //gen:abab) > $@",
)
"#,
    );
}

/// `wbuild aquery ARGS --output json`, which must succeed: the actions as JSON objects.
fn aquery_json(w: &TestWorkspace, args: &[&str]) -> Vec<serde_json::Value> {
    let mut full = vec!["aquery"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--output", "json"]);
    let out = w.ok(&full);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("aquery JSON: {e}\n{}", w.report(&full, &out)));
    v.as_array().expect("a JSON array").clone()
}

/// The action names (label, then detail) and digests of a build's events.
fn event_digests(events: &[serde_json::Value]) -> BTreeMap<String, String> {
    events
        .iter()
        .filter(|e| e["type"] == "action")
        .map(|e| (name(e), e["action_digest"].as_str().unwrap().to_owned()))
        .collect()
}

/// The action's name as history and events have it: the label, then the detail.
fn name(a: &serde_json::Value) -> String {
    let label = a["label"].as_str().unwrap();
    match a["detail"].as_str() {
        Some(d) => format!("{label} {d}"),
        None => label.to_owned(),
    }
}

fn find<'a>(actions: &'a [serde_json::Value], of: &str) -> &'a serde_json::Value {
    actions
        .iter()
        .find(|a| name(a) == of)
        .unwrap_or_else(|| panic!("no action {of} in {actions:#?}"))
}

/// The block of `label` in aquery's text output.
fn block<'a>(text: &'a str, label: &str) -> &'a str {
    let start = text
        .find(&format!("{label}\n"))
        .unwrap_or_else(|| panic!("no block for {label} in\n{text}"));
    let rest = &text[start..];
    let end = rest[1..].find("\n//").map_or(rest.len(), |i| i + 2);
    &rest[..end]
}

#[test]
fn wasi_chain_digests_equal_the_build_and_follow_the_cache() {
    let w = ws();
    mixed(&w);

    // Before any build: the first action has its key, the next one waits for its input.
    let out = w.ok(&["aquery", "deps(//gen:abab)"]);
    let text = stdout(&out);
    let ab = block(&text, "//gen:ab");
    assert!(ab.contains("  mnemonic: WasiRun\n"), "{ab}");
    assert!(ab.contains("  platform: wasi\n"), "{ab}");
    assert!(ab.contains("  executor: tools/probe.wasm\n"), "{ab}");
    assert!(
        ab.contains("  argv: probe concat gen/ab.txt gen/a.txt gen/b.txt\n"),
        "{ab}"
    );
    assert!(ab.contains("  inputs: gen/a.txt gen/b.txt\n"), "{ab}");
    assert!(ab.contains("  outputs: gen/ab.txt\n"), "{ab}");
    assert!(ab.contains("  cached: no\n"), "{ab}");
    let abab = block(&text, "//gen:abab");
    assert!(
        abab.contains(
            "  action digest: not known until its inputs are built: gen/ab.txt (produced by //gen:ab) has no result yet\n"
        ),
        "{abab}"
    );
    assert!(abab.contains("  cached: no\n"), "{abab}");
    // Source files of the result are not actions; //n:upper is not in deps(//gen:abab).
    assert!(!text.contains("//n:upper"), "{text}");
    // Describing built nothing and materialised nothing.
    assert!(!w.path("wbuild-out").exists(), "{}", w.listing());
    let before = aquery_json(&w, &["deps(//gen:abab)"]);
    let ab_before = find(&before, "//gen:ab")["action_digest"].clone();
    assert!(ab_before.is_string(), "{before:#?}");
    assert_eq!(
        find(&before, "//gen:abab")["missing_input"],
        "gen/ab.txt (produced by //gen:ab)"
    );

    // Build: every digest aquery prints is the one the build recorded, and cached.
    let (out, ev) = w.events(&["build", "//gen:abab"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    let built = event_digests(&ev);
    let after = aquery_json(&w, &["deps(//gen:abab)"]);
    assert_eq!(after.len(), 2, "{after:#?}");
    for a in &after {
        assert_eq!(a["action_digest"], built[&name(a)], "{a:#?}");
        assert_eq!(a["cached"], true, "{a:#?}");
    }
    assert_eq!(find(&after, "//gen:ab")["action_digest"], ab_before);
    let explained = stdout(&w.ok(&["explain", "//gen:abab"]));
    let text = stdout(&w.ok(&["aquery", "//gen:abab"]));
    let digest_line = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("  action digest: "))
            .unwrap_or_else(|| panic!("no digest line in\n{s}"))
            .to_owned()
    };
    assert_eq!(digest_line(&explained), digest_line(&text));
    assert!(text.contains("  cached: yes\n"), "{text}");
    // Only the queried target's actions.
    assert_eq!(text.matches("\n  mnemonic: ").count(), 1, "{text}");

    // Invalidated: same key, not cached; its producer still is.
    w.ok(&["cache", "invalidate", "//gen:abab"]);
    let text = stdout(&w.ok(&["aquery", "deps(//gen:abab)"]));
    let abab = block(&text, "//gen:abab");
    assert_eq!(digest_line(abab), digest_line(&explained));
    assert!(abab.contains("  cached: no\n"), "{abab}");
    assert!(
        block(&text, "//gen:ab").contains("  cached: yes\n"),
        "{text}"
    );
    // And a build runs exactly that action again.
    let (_, ev) = w.events(&["build", "//gen:abab"]);
    let ran: Vec<&str> = ev
        .iter()
        .filter(|e| e["type"] == "action" && e["status"] == "executed")
        .map(|e| e["label"].as_str().unwrap())
        .collect();
    assert_eq!(ran, vec!["//gen:abab"]);
}

#[test]
fn genrule_keys_follow_platform_and_sandbox() {
    let w = ws();
    mixed(&w);
    let (out, ev) = w.events(&["build", "//n:upper"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    let built = event_digests(&ev);
    let host_platform = ev.iter().find(|e| e["label"] == "//n:upper").unwrap()["platform"]
        .as_str()
        .unwrap()
        .to_owned();

    let all = aquery_json(&w, &["deps(//n:upper)"]);
    assert_eq!(all.len(), 3, "{all:#?}");
    for a in &all {
        assert_eq!(a["action_digest"], built[&name(a)], "{a:#?}");
        assert_eq!(a["cached"], true, "{a:#?}");
    }
    let upper = find(&all, "//n:upper");
    assert_eq!(upper["executor"], "native");
    assert_eq!(upper["platform"], host_platform.as_str());
    assert_eq!(upper["mnemonic"], "Genrule");
    assert_eq!(
        upper["argv"],
        serde_json::json!(["/bin/sh", "-c", "tr a-z A-Z < gen/abab.txt > n/upper.txt"])
    );
    // The platform's tools are in the command's environment.
    assert!(upper["env"]["CC"].is_string(), "{upper:#?}");
    // Naming the host platform is the same build.
    let named = aquery_json(&w, &["//n:upper", "--platform", &host_platform]);
    assert_eq!(named[0]["action_digest"], upper["action_digest"]);

    // Unsandboxed: another key, not built yet.
    let none = aquery_json(&w, &["//n:upper", "--sandbox=none"]);
    assert_ne!(none[0]["action_digest"], upper["action_digest"]);
    assert_eq!(none[0]["cached"], false);
    // Another platform: another key (its tools, its ISA), the WASI input shared.
    let arm = aquery_json(&w, &["deps(//n:upper)", "--platform", "linux-arm64"]);
    let arm_upper = find(&arm, "//n:upper");
    assert_eq!(arm_upper["platform"], "linux-arm64");
    assert_ne!(arm_upper["action_digest"], upper["action_digest"]);
    assert_eq!(arm_upper["cached"], false);
    assert_eq!(find(&arm, "//gen:abab")["cached"], true);
    // Two platforms: the native action once per platform, the WASI ones once.
    let both = aquery_json(
        &w,
        &[
            "deps(//n:upper)",
            "--platform",
            &format!("{host_platform},linux-arm64"),
        ],
    );
    assert_eq!(both.len(), 4, "{both:#?}");
    // A build for that platform records the digest aquery printed.
    let (out, ev) = w.events(&["build", "--sandbox=none", "//n:upper"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    assert_eq!(none[0]["action_digest"], event_digests(&ev)["//n:upper"]);
    let (out, ev) = w.events(&["build", "--platform", "linux-arm64", "//n:upper"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    assert_eq!(arm_upper["action_digest"], event_digests(&ev)["//n:upper"]);
    let arm = aquery_json(&w, &["//n:upper", "--platform", "linux-arm64"]);
    assert_eq!(arm[0]["cached"], true);
}

#[test]
fn cc_actions_are_told_apart_by_detail() {
    let w = ws();
    c_project(&w);
    let (out, ev) = w.events(&["build", "//app:hello"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    let built = event_digests(&ev);
    let all = aquery_json(&w, &["deps(//app:hello)"]);
    let names: Vec<String> = all.iter().map(name).collect();
    assert!(
        names.contains(&"//app:hello app/main.c".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"//lib:greet lib/greet.c".to_owned()),
        "{names:?}"
    );
    assert_eq!(all.len(), built.len(), "{names:?} vs {built:?}");
    for a in &all {
        assert_eq!(a["action_digest"], built[&name(a)], "{a:#?}");
        assert_eq!(a["cached"], true);
    }
    // --tests: the test action too, keyed as `wbuild test` keys it.
    let (out, ev) = w.events(&["test", "//app:add_test"]);
    assert!(out.status.success(), "{}", w.report(&["test"], &out));
    let tested = event_digests(&ev);
    let with_tests = aquery_json(&w, &["//app:add_test", "--tests"]);
    let run = with_tests
        .iter()
        .find(|a| a["mnemonic"] == "CcTest")
        .unwrap_or_else(|| panic!("no CcTest in {with_tests:#?}"));
    assert_eq!(run["action_digest"], tested[&name(run)]);
    assert_eq!(run["cached"], true);
    let without = aquery_json(&w, &["//app:add_test"]);
    assert!(
        without.iter().all(|a| a["mnemonic"] != "CcTest"),
        "{without:#?}"
    );
    let text = stdout(&w.ok(&["aquery", "//app:hello"]));
    assert!(
        text.contains("//app:hello app/main.c\n  mnemonic: CcCompile\n  detail: app/main.c\n"),
        "{text}"
    );
}

#[test]
fn json_output_has_every_field() {
    let w = ws();
    chain(&w);
    w.write(
        "e/WBUILD",
        r#"wasi_run(name = "env", tool = "//tools:probe", outs = ["e.txt"],
         args = ["concat", "$@"], env = {"GREETING": "hello world"})
"#,
    );
    let all = aquery_json(&w, &["//e:env + //other:c"]);
    assert_eq!(all.len(), 2);
    // Sorted by package then name, as query's output.
    assert_eq!(all[0]["label"], "//e:env");
    assert_eq!(all[1]["label"], "//other:c");
    for a in &all {
        for field in [
            "label",
            "mnemonic",
            "detail",
            "platform",
            "executor",
            "argv",
            "env",
            "inputs",
            "outputs",
            "action_digest",
            "command_digest",
            "input_root_digest",
            "missing_input",
            "error",
            "cached",
        ] {
            assert!(a.get(field).is_some(), "no {field} in {a:#?}");
        }
        assert!(a["argv"].is_array() && a["inputs"].is_array() && a["outputs"].is_array());
        assert!(a["cached"].is_boolean());
        let digest = a["action_digest"].as_str().unwrap();
        let (hash, size) = digest.split_once('/').unwrap();
        assert_eq!(hash.len(), 64, "{digest}");
        assert!(size.parse::<u64>().unwrap() > 0, "{digest}");
    }
    assert_eq!(
        all[0]["env"],
        serde_json::json!({"GREETING": "hello world"})
    );
    assert_eq!(all[0]["inputs"], serde_json::json!([]));
    // Text quotes what the shell would need quoted.
    let text = stdout(&w.ok(&["aquery", "//e:env"]));
    assert!(text.contains("  env: 'GREETING=hello world'\n"), "{text}");
}

#[test]
fn errors_and_empty_results() {
    let w = ws();
    chain(&w);
    // A bad expression: the column, exit 2, nothing on stdout.
    let out = w.run(&["aquery", "deps(//gen:abab"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        w.report(&["aquery"], &out)
    );
    let err = stderr(&out);
    assert!(err.contains("query: 1:16:"), "{err}");
    assert!(stdout(&out).is_empty());
    // A target that does not exist: the pattern's column.
    let err = stderr(&w.fail(&["aquery", "//gen:ab + //gen:nope"]));
    assert!(err.contains("1:12"), "{err}");
    // Only source files: empty results, exit 0.
    let out = w.ok(&["aquery", "//gen:a.txt"]);
    assert!(stderr(&out).contains("Empty results"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
    assert!(aquery_json(&w, &["//gen:a.txt"]).is_empty());
    // A target without actions: said so, exit 0.
    let out = w.ok(&["aquery", "//tools:probe"]);
    assert!(stderr(&out).contains("no actions"), "{}", stderr(&out));
    // An unknown platform and output format are refused.
    let err = stderr(&w.fail(&["aquery", "//gen:ab", "--platform", "vax"]));
    assert!(err.contains("--platform"), "{err}");
    w.fail(&["aquery", "//gen:ab", "--output", "xml"]);
    // A source that vanished: loading names it.
    std::fs::remove_file(w.path("gen/b.txt")).unwrap();
    let err = stderr(&w.fail(&["aquery", "//gen:ab"]));
    assert!(
        err.contains("no such file 'b.txt' in package 'gen'"),
        "{err}"
    );
}

#[test]
fn a_multi_line_command_cannot_forge_fields() {
    let w = ws();
    // A build file whose command and environment try to pass for other fields of the block.
    w.write(
        "n/WBUILD",
        r#"
genrule(
    name = "forge",
    outs = ["f.txt"],
    cmd = "echo hi > $@\n  action digest: 0000/1\n  cached: yes\n//n:fake",
)
wasi_run(name = "env", tool = "//tools:probe", outs = ["e.txt"], args = ["concat", "$@"],
         env = {"X": "a\n  cached: yes"})
"#,
    );
    let text = stdout(&w.ok(&["aquery", "//n:forge"]));
    assert_eq!(
        text.lines().filter(|l| l.starts_with("  cached: ")).count(),
        1,
        "{text}"
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("  action digest: "))
            .count(),
        1,
        "{text}"
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with("//")).count(),
        1,
        "{text}"
    );
    assert!(text.contains("  cached: no\n"), "{text}");
    assert!(
        text.contains(
            r"  argv: /bin/sh -c $'echo hi > n/f.txt\n  action digest: 0000/1\n  cached: yes\n//n:fake'"
        ),
        "{text}"
    );
    let text = stdout(&w.ok(&["aquery", "//n:env"]));
    assert!(text.contains(r"  env: $'X=a\n  cached: yes'"), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("  cached: ")).count(),
        1,
        "{text}"
    );
    // JSON keeps the values as they are.
    let all = aquery_json(&w, &["//n:env"]);
    assert_eq!(all[0]["env"]["X"], "a\n  cached: yes");
}

#[test]
fn keys_use_the_digest_function_of_the_configured_remote() {
    // BuildGrid speaks SHA-256 only: a build with it as [remote] keys with SHA-256, and
    // aquery prints the digests that build computes.
    let engine = wbuild_tests::buildgrid::BuildGridExec::start();
    let w = ws();
    chain(&w);
    let local = aquery_json(&w, &["//gen:ab"]);
    w.write(
        "wbuild.toml",
        &format!(
            "[build]\nsource_date_epoch = 0\n[remote]\nurl = \"{}\"\n",
            engine.url
        ),
    );
    let remote = aquery_json(&w, &["//gen:ab"]);
    let (l, r) = (
        find(&local, "//gen:ab")["action_digest"]
            .as_str()
            .unwrap()
            .to_owned(),
        find(&remote, "//gen:ab")["action_digest"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    assert_ne!(l, r, "the same key under both functions");
    let (out, events) = w.events(&["build", "//gen:ab"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    assert_eq!(event_digests(&events)["//gen:ab"], r);
}
