//! Observed-input keys: an action reruns when a path it read, listed or probed changes, and
//! only then (WASI tools: the executor's access log; native actions: the sandbox's observed
//! accesses).

use super::*;

fn status_of(ev: &[serde_json::Value], name: &str) -> String {
    statuses(ev)
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no action {name} in {ev:?}"))
        .1
}

/// `//p:pre`: includes resolved along `inc1` then `inc2`, every header of both declared.
fn preprocessor(w: &TestWorkspace) {
    w.write("p/main.txt", "main\n#include \"a.h\"\nend\n");
    w.write("p/inc2/a.h", "a from inc2\n");
    w.write("p/inc2/unused.h", "never included\n");
    w.write("p/inc1/keep", "");
    w.write(
        "p/WBUILD",
        r#"
wasi_run(
    name = "pre",
    tool = "//tools:probe",
    srcs = ["main.txt"] + glob(["inc1/*.h", "inc2/*.h"]),
    outs = ["out.txt"],
    args = ["cpp", "$@", "$(location main.txt)", "p/inc1", "p/inc2"],
)
wasi_run(
    name = "ls",
    tool = "//tools:probe",
    srcs = glob(["inc2/*.h"]),
    outs = ["names.txt"],
    args = ["ls", "$@", "p/inc2"],
)
"#,
    );
}

#[test]
fn wasi_actions_rerun_exactly_when_what_they_observed_changes() {
    let w = ws();
    preprocessor(&w);
    let (out, ev) = w.events(&["build", "//p:all"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    assert_eq!(w.read("wbuild-out/p/out.txt"), "main\na from inc2\nend\n");
    assert_eq!(w.read("wbuild-out/p/names.txt"), "a.h\nunused.h\n");
    assert_eq!(status_of(&ev, "//p:pre"), "executed");

    // A declared header nothing read: both actions are answered from their observed inputs
    // (the listing only holds names), and the outputs are the same.
    w.write("p/inc2/unused.h", "edited, still never included\n");
    let (out, ev) = w.events(&["build", "//p:all"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    assert_eq!(status_of(&ev, "//p:pre"), "cached", "{ev:?}");
    assert_eq!(status_of(&ev, "//p:ls"), "cached", "{ev:?}");

    // The header it read: it reruns, and `wbuild why` names the header.
    w.write("p/inc2/a.h", "a from inc2, edited\n");
    let (_, ev) = w.events(&["build", "//p:all"]);
    assert_eq!(status_of(&ev, "//p:pre"), "executed");
    assert_eq!(status_of(&ev, "//p:ls"), "cached");
    assert_eq!(
        w.read("wbuild-out/p/out.txt"),
        "main\na from inc2, edited\nend\n"
    );
    let why = stdout(&w.ok(&["why", "//p:pre"]));
    assert!(why.contains("p/inc2/a.h changed"), "{why}");

    // A file created where it probed and found nothing (a header that now shadows the one
    // it read): it reruns and reads the new one.
    w.write("p/inc1/a.h", "a from inc1\n");
    let (_, ev) = w.events(&["build", "//p:all"]);
    assert_eq!(status_of(&ev, "//p:pre"), "executed");
    assert_eq!(w.read("wbuild-out/p/out.txt"), "main\na from inc1\nend\n");
    let why = stdout(&w.ok(&["why", "//p:pre"]));
    assert!(why.contains("p/inc1/a.h appeared"), "{why}");

    // A file added to the listed directory: the listing reruns.
    w.write("p/inc2/new.h", "new\n");
    let (_, ev) = w.events(&["build", "//p:all"]);
    assert_eq!(status_of(&ev, "//p:ls"), "executed");
    assert_eq!(w.read("wbuild-out/p/names.txt"), "a.h\nnew.h\nunused.h\n");
    let why = stdout(&w.ok(&["why", "//p:ls"]));
    assert!(why.contains("the listing of p/inc2 changed"), "{why}");
    // `pre` never looked at inc2/new.h: an observed hit.
    assert_eq!(status_of(&ev, "//p:pre"), "cached");

    // Back to an earlier state: a hit from an earlier path set, outputs restored.
    std::fs::remove_file(w.path("p/inc1/a.h")).unwrap();
    std::fs::remove_file(w.path("p/inc2/new.h")).unwrap();
    w.write("p/inc2/a.h", "a from inc2\n");
    let (_, ev) = w.events(&["build", "//p:all"]);
    assert_eq!(finished(&ev)["executed"], 0, "{ev:?}");
    assert_eq!(w.read("wbuild-out/p/out.txt"), "main\na from inc2\nend\n");
    assert_eq!(w.read("wbuild-out/p/names.txt"), "a.h\nunused.h\n");
}

#[test]
fn huge_and_escaping_path_sets_are_bounded_and_refused_cleanly() {
    let w = ws();
    w.write(
        "h/WBUILD",
        r#"
wasi_run(name = "few", tool = "//tools:probe", outs = ["few.txt"], args = ["probes", "3", "$@"])
wasi_run(name = "many", tool = "//tools:probe", outs = ["many.txt"],
         args = ["probes", "100001", "$@"])
"#,
    );
    let (out, ev) = w.events(&["build", "//h:all"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    // Probes outside the root found nothing and are not part of any key.
    assert_eq!(w.read("wbuild-out/h/few.txt"), "0\n");
    let err = stderr(&out);
    assert!(
        err.contains("//h:many is cached by its full key only: it observed 10000"),
        "{err}"
    );
    assert_eq!(
        err.matches("cached by its full key only").count(),
        1,
        "{err}"
    );
    // Both are cached by their full keys all the same.
    let (_, ev2) = w.events(&["build", "//h:all"]);
    assert_eq!(finished(&ev2)["executed"], 0, "{ev:?}");
    let why = stdout(&w.ok(&["why", "//h:few"]));
    // Only the probes inside the sandbox's root are in its key: nothing/0..2 and /etc/shadow
    // (the guest's `/` is the workspace root), not the climbs above the root.
    assert!(why.contains("4 probed and missing"), "{why}");
}

#[test]
fn a_header_edit_reruns_only_the_compiles_that_read_it() {
    let w = ws();
    w.write("lib/common/x.h", "#define X 1\n");
    w.write("lib/y.h", "#define Y 2\n");
    w.write("lib/inc2/s.h", "#define S 3\n");
    // (gcc drops an include directory that does not exist before looking in it.)
    w.write("lib/inc1/other.h", "\n");
    w.write(
        "lib/d/a.c",
        "#include \"../common/x.h\"\nint a(void) { return X; }\n",
    );
    w.write("lib/b.c", "#include \"y.h\"\nint b(void) { return Y; }\n");
    w.write("lib/c.c", "#include <s.h>\nint c(void) { return S; }\n");
    let wbuild = |extra: &str| {
        format!(
            r#"cc_library(name = "lib", srcs = ["d/a.c", "b.c", "c.c", "common/x.h", "y.h"{extra}],
               hdrs = glob(["inc1/*.h", "inc2/*.h"]), includes = ["inc1", "inc2"])"#
        )
    };
    w.write("lib/WBUILD", &wbuild(""));
    let (out, ev) = w.events(&["build", "//lib:lib"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    // The include through `..` counts as including lib/common/x.h.
    let err = stderr(&out);
    assert!(!err.contains("not included by any source"), "{err}");
    assert_eq!(status_of(&ev, "//lib:lib lib/d/a.c"), "executed");
    // The compile's reads and probes are observed: `wbuild explain` lists them.
    let explain = stdout(&w.ok(&["explain", "//lib:lib", "lib/c.c"]));
    assert!(explain.contains("lib/inc2/s.h"), "{explain}");
    assert!(explain.contains("lib/inc1/s.h"), "{explain}");

    // y.h is declared for every compile but only b.c includes it.
    w.write("lib/y.h", "#define Y 3\n");
    let (out, ev) = w.events(&["build", "//lib:lib"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    assert_eq!(status_of(&ev, "//lib:lib lib/d/a.c"), "cached", "{ev:?}");
    assert_eq!(status_of(&ev, "//lib:lib lib/c.c"), "cached", "{ev:?}");
    assert_eq!(status_of(&ev, "//lib:lib lib/b.c"), "executed", "{ev:?}");
    let why = stdout(&w.ok(&["why", "//lib:lib"]));
    assert!(why.contains("lib/y.h changed"), "{why}");

    // Through `..`: x.h is a.c's.
    w.write("lib/common/x.h", "#define X 5\n");
    let (_, ev) = w.events(&["build", "//lib:lib"]);
    assert_eq!(status_of(&ev, "//lib:lib lib/d/a.c"), "executed", "{ev:?}");
    assert_eq!(status_of(&ev, "//lib:lib lib/b.c"), "cached", "{ev:?}");

    // A new declared header no compile looked for reruns no compile: each one's path set
    // holds what the compiler read and every path it probed.
    w.write("lib/z.h", "\n");
    w.write("lib/WBUILD", &wbuild(", \"z.h\""));
    let (out, ev) = w.events(&["build", "//lib:lib"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    for src in ["lib/d/a.c", "lib/b.c", "lib/c.c"] {
        assert_eq!(
            status_of(&ev, &format!("//lib:lib {src}")),
            "cached",
            "{ev:?}"
        );
    }

    // A header that now shadows the one c.c found: c.c probed lib/inc1/s.h before finding
    // lib/inc2/s.h, so creating it reruns c.c (and only c.c), which now sees it.
    w.write("lib/inc1/s.h", "#define S 7\n");
    let (out, ev) = w.events(&["build", "//lib:lib"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    assert_eq!(status_of(&ev, "//lib:lib lib/c.c"), "executed", "{ev:?}");
    assert_eq!(status_of(&ev, "//lib:lib lib/b.c"), "cached", "{ev:?}");
    assert_eq!(status_of(&ev, "//lib:lib lib/d/a.c"), "cached", "{ev:?}");
    let why = stdout(&w.ok(&["why", "//lib:lib"]));
    assert!(why.contains("lib/inc1/s.h"), "{why}");
}

#[test]
fn a_native_action_that_lists_a_directory_reruns_when_a_file_is_added() {
    let w = ws();
    w.write("g/files/a.txt", "a\n");
    w.write("g/files/b.txt", "b\n");
    w.write("g/other.txt", "o\n");
    w.write(
        "g/WBUILD",
        r#"
genrule(name = "names", srcs = glob(["files/*"]) + ["other.txt"], outs = ["names.txt"],
        cmd = "ls g/files > $@")
"#,
    );
    let out = w.ok(&["build", "//g:names"]);
    assert_eq!(w.read("wbuild-out/g/names.txt"), "a.txt\nb.txt\n");
    // A declared input the command never touched is a redundant dependency.
    let err = stderr(&out);
    assert!(
        err.contains("declared input g/other.txt was never read by //g:names"),
        "{err}"
    );
    assert!(!err.contains("g/files/a.txt was never read"), "{err}");
    // A declared input the command never touched: answered through its path set.
    w.write("g/other.txt", "changed\n");
    let (_, ev) = w.events(&["build", "//g:names"]);
    assert_eq!(status_of(&ev, "//g:names"), "cached", "{ev:?}");
    // Listed: a new file reruns it.
    w.write("g/files/c.txt", "c\n");
    let (_, ev) = w.events(&["build", "//g:names"]);
    assert_eq!(status_of(&ev, "//g:names"), "executed", "{ev:?}");
    assert_eq!(w.read("wbuild-out/g/names.txt"), "a.txt\nb.txt\nc.txt\n");
}

#[test]
fn a_result_answered_through_its_path_set_is_the_one_a_run_gives() {
    // The guest's random bytes are seeded from its command and settings, so a guest that reads them gives
    // the same output whether it ran or was answered from an earlier run that saw another
    // version of an input it never read.
    let w = ws();
    w.write("d/in.txt", "input\n");
    w.write("d/unread.txt", "1\n");
    w.write(
        "d/WBUILD",
        r#"
wasi_run(name = "world", tool = "//tools:probe", srcs = ["in.txt", "unread.txt"],
         outs = ["world.txt"], args = ["world", "$@", "$(location in.txt)"])
"#,
    );
    w.ok(&["build", "//d:world"]);
    w.write("d/unread.txt", "2\n");
    let (_, ev) = w.events(&["build", "//d:world"]);
    assert_eq!(status_of(&ev, "//d:world"), "cached", "{ev:?}");
    let answered = w.read("wbuild-out/d/world.txt");
    w.ok(&["clean", "--expunge"]);
    let (_, ev) = w.events(&["build", "//d:world"]);
    assert_eq!(status_of(&ev, "//d:world"), "executed", "{ev:?}");
    assert_eq!(w.read("wbuild-out/d/world.txt"), answered);
}

#[test]
fn a_compile_that_includes_an_undeclared_header_names_it() {
    // The header exists in the workspace but not in the sandbox; the observed probe says
    // which file to declare, once, beside the compiler's own error.
    let w = ws();
    w.write("u/hidden.h", "#define H 1\n");
    w.write(
        "u/m.c",
        "#include \"hidden.h\"\nint m(void) { return H; }\n",
    );
    w.write("u/WBUILD", r#"cc_library(name = "u", srcs = ["m.c"])"#);
    let out = w.run(&["build", "//u:u"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("read undeclared input u/hidden.h: add it to srcs of //u:u"),
        "{err}"
    );
    // Declared, it builds.
    w.write(
        "u/WBUILD",
        r#"cc_library(name = "u", srcs = ["m.c", "hidden.h"])"#,
    );
    w.ok(&["build", "//u:u"]);
}

#[test]
fn a_link_that_read_every_input_runs_unobserved_and_stays_exact() {
    // The link also looks for c/ext/libm.so and c/ext/libm.a (missing) before the system's.
    let w = ws();
    let a = |v: u32| format!("int a(void) {{ return {v}; }}\n");
    w.write("c/a.c", &a(1));
    w.write("c/b.c", "int b(void) { return 2; }\n");
    w.write(
        "c/main.c",
        "int a(void); int b(void);\nint main(void) { return a() + b(); }\n",
    );
    w.write(
        "c/WBUILD",
        r#"
cc_library(name = "l", srcs = ["a.c", "b.c"])
cc_binary(name = "app", srcs = ["main.c"], deps = [":l"], linkopts = ["-Lc/ext", "-lm"])
"#,
    );
    let why = |w: &TestWorkspace, label: &str| stdout(&w.ok(&["why", label]));
    let unobserved = |text: &str, mnemonic: &str| {
        text.lines()
            .skip_while(|l| !l.contains(mnemonic))
            .take(3)
            .any(|l| l.contains("it ran unobserved"))
    };
    w.ok(&["build", "//c:app"]);
    assert!(!unobserved(&why(&w, "//c:app"), "[CcLink]"));

    // The link reads every input it declares: observing it again could not narrow its key.
    // It runs unobserved, its result kept by full key only. (The archive is written by
    // wbuild itself, from exactly its objects: never observed, never sandboxed.)
    w.write("c/a.c", &a(10));
    let (_, ev) = w.events(&["build", "//c:app"]);
    assert_eq!(status_of(&ev, "//c:l"), "executed", "{ev:?}");
    assert_eq!(status_of(&ev, "//c:app"), "executed", "{ev:?}");
    let text = why(&w, "//c:l");
    assert!(!unobserved(&text, "[CcArchive]"), "{text}");
    assert!(text.contains("c/_objs/l/a.o changed"), "{text}");
    let text = why(&w, "//c:app");
    assert!(unobserved(&text, "[CcLink]"), "{text}");
    assert!(text.contains("c/libl.a changed"), "{text}");
    // ... and compiles stay observed (their reads follow their source).
    assert!(!unobserved(&text, "[CcCompile]"), "{text}");
    // No path set was recorded: another archive reruns the link (the observed run's path
    // set answers only the state it saw).
    w.write("c/b.c", "int b(void) { return 20; }\n");
    let (_, ev) = w.events(&["build", "//c:app"]);
    assert_eq!(status_of(&ev, "//c:app"), "executed", "{ev:?}");
    // Back to the first sources: the observed runs' results answer.
    w.write("c/a.c", &a(1));
    w.write("c/b.c", "int b(void) { return 2; }\n");
    let (_, ev) = w.events(&["build", "//c:app"]);
    assert_eq!(status_of(&ev, "//c:l"), "cached", "{ev:?}");
    assert_eq!(status_of(&ev, "//c:app"), "cached", "{ev:?}");

    // A path the link probed and found missing is now a workspace file: the link is
    // observed, and fails naming it, though it would link without looking.
    w.write("c/ext/libm.a", "not an archive\n");
    w.write("c/a.c", &a(3));
    let err = stderr(&w.fail(&["build", "//c:app"]));
    assert!(
        err.contains("read undeclared input c/ext/libm.a: add it to srcs of //c:app"),
        "{err}"
    );
    std::fs::remove_dir_all(w.path("c/ext")).unwrap();

    // An unobserved link that fails runs again observed (its access log is there to explain
    // it, and its errors could name an undeclared input).
    w.write(
        "c/main.c",
        "int a(void); int b(void); int gone(void);\nint main(void) { return a() + gone(); }\n",
    );
    let err = stderr(&w.fail(&["build", "//c:app"]));
    assert!(err.contains("gone"), "{err}");
    let explain = stdout(&w.ok(&["explain", "//c:app"]));
    assert!(explain.contains("accesses ("), "{explain}");
    w.write(
        "c/main.c",
        "int a(void); int b(void);\nint main(void) { return a() + b(); }\n",
    );

    // At most UNOBSERVED_RUNS (7) runs in a row go unobserved: the next is observed again.
    let mut seen = Vec::new();
    for i in 0..9 {
        w.write("c/a.c", &a(100 + i));
        w.ok(&["build", "//c:app"]);
        seen.push(!unobserved(&why(&w, "//c:app"), "[CcLink]"));
    }
    let observed: Vec<usize> = seen
        .iter()
        .enumerate()
        .filter(|(_, o)| **o)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(observed.len(), 1, "one observed run in 9: {seen:?}");
}
