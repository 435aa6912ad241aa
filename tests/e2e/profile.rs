//! `wbuild build --profile FILE`: the build's timeline as a Chrome trace.

use wbuild_tests::stderr;

use super::{chain, ws};

#[test]
fn a_build_writes_a_chrome_trace_with_every_action_and_its_critical_path() {
    let w = ws();
    chain(&w);
    // A slow step after the chain's end: the critical path is ab -> abab -> slow.
    w.write(
        "gen/WBUILD",
        &format!(
            "{}wasi_run(name = \"slow\", tool = \"//tools:probe\", srcs = [\":abab\"], outs = [\"slow.txt\"], args = [\"spin\", \"20000000\", \"$@\"])\n",
            w.read("gen/WBUILD")
        ),
    );
    let profile = w.root.with_file_name("build.trace.json");
    let out = w.ok(&["build", "-j", "2", "--profile", profile.to_str().unwrap()]);
    let trace: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&profile).unwrap()).unwrap();
    let events = trace["traceEvents"].as_array().unwrap();
    // Every event has what the trace-event format requires.
    for e in events {
        let ph = e["ph"].as_str().unwrap();
        assert!(matches!(ph, "X" | "M"), "{e}");
        assert!(
            e["pid"].is_u64() && e["tid"].is_u64() && e["name"].is_string(),
            "{e}"
        );
        if ph == "X" {
            assert!(e["ts"].is_u64() && e["dur"].is_u64(), "{e}");
        }
    }
    let on_slots: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["ph"] == "X" && e["tid"].as_u64().unwrap() >= 10)
        .collect();
    let mut names: Vec<&str> = on_slots
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["//gen:ab", "//gen:abab", "//gen:slow", "//other:c"],
        "{}",
        stderr(&out)
    );
    // Each action lies within the "schedule" phase, and a dependency ends before its user
    // starts.
    let span = |name: &str| {
        let e = on_slots.iter().find(|e| e["name"] == name).unwrap();
        let ts = e["ts"].as_u64().unwrap();
        (ts, ts + e["dur"].as_u64().unwrap())
    };
    let schedule = events
        .iter()
        .find(|e| e["cat"] == "phase" && e["name"] == "schedule")
        .expect("a schedule phase");
    let (s0, s1) = (
        schedule["ts"].as_u64().unwrap(),
        schedule["ts"].as_u64().unwrap() + schedule["dur"].as_u64().unwrap(),
    );
    for n in ["//gen:ab", "//gen:abab", "//gen:slow", "//other:c"] {
        let (a, b) = span(n);
        assert!(s0 <= a && b <= s1, "{n} outside the schedule phase");
    }
    assert!(span("//gen:ab").1 <= span("//gen:abab").0);
    assert!(span("//gen:abab").1 <= span("//gen:slow").0);
    // The critical path: the chain, marked on its actions and on a track of its own.
    assert_eq!(
        trace["otherData"]["critical_path"],
        serde_json::json!(["//gen:ab", "//gen:abab", "//gen:slow"])
    );
    let critical: Vec<&str> = events
        .iter()
        .filter(|e| e["cat"] == "critical_path")
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(critical, ["//gen:ab", "//gen:abab", "//gen:slow"]);
    let c = on_slots.iter().find(|e| e["name"] == "//other:c").unwrap();
    assert_eq!(c["args"]["critical_path"], false);
    // The last build's timeline is in the cache directory too.
    let last = std::fs::read(w.cache.join("last-build.trace.json")).unwrap();
    assert_eq!(last, std::fs::read(&profile).unwrap());
}
