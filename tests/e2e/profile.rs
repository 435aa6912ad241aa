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
        .filter(|e| {
            e["ph"] == "X" && e["tid"].as_u64().unwrap() >= 10 && e["cat"] != "action_phase"
        })
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
    // Each action's phases lie within its slice on its slot; the outermost ones follow one
    // another without overlapping, so together they never exceed the action's duration; an
    // action that ran shows its key, lookup, staging, execution and ingestion.
    for n in ["//gen:ab", "//gen:abab", "//gen:slow", "//other:c"] {
        let action = on_slots.iter().find(|e| e["name"] == n).unwrap();
        let (a, b) = span(n);
        let mut phases: Vec<(u64, u64, &str)> = events
            .iter()
            .filter(|e| e["cat"] == "action_phase" && e["args"]["action"] == n)
            .map(|e| {
                assert_eq!(e["tid"], action["tid"], "{e}");
                let ts = e["ts"].as_u64().unwrap();
                (
                    ts,
                    ts + e["dur"].as_u64().unwrap(),
                    e["name"].as_str().unwrap(),
                )
            })
            .collect();
        phases.sort();
        for (p0, p1, name) in &phases {
            assert!(
                a <= *p0 && *p1 <= b + 1,
                "{n}: phase {name} outside {a}..{b}"
            );
        }
        let mut outer: Vec<(u64, u64)> = Vec::new();
        for (p0, p1, _) in &phases {
            match outer.last() {
                Some((_, end)) if p0 < end => assert!(*p1 <= *end + 1, "{phases:?}"),
                _ => outer.push((*p0, *p1)),
            }
        }
        let total: u64 = outer.iter().map(|(p0, p1)| p1 - p0).sum();
        assert!(total <= b - a + outer.len() as u64, "{n}: {phases:?}");
        let names: Vec<&str> = phases.iter().map(|p| p.2).collect();
        for want in [
            "key",
            "cache lookup",
            "staging",
            "execution",
            "output ingestion",
        ] {
            assert!(names.contains(&want), "{n}: no {want} phase in {names:?}");
        }
    }
    // The last build's timeline is in the cache directory too.
    let last = std::fs::read(w.cache.join("last-build.trace.json")).unwrap();
    assert_eq!(last, std::fs::read(&profile).unwrap());
}
