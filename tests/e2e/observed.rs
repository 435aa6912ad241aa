//! Observed-input keys: an action reruns when a path it read, listed or probed changes, and
//! only then (WASI tools: the executor's access log; native compiles: the depfile).

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
fn a_header_edit_reruns_only_the_compiles_whose_depfile_lists_it() {
    let w = ws();
    w.write("lib/common/x.h", "#define X 1\n");
    w.write("lib/y.h", "#define Y 2\n");
    w.write(
        "lib/d/a.c",
        "#include \"../common/x.h\"\nint a(void) { return X; }\n",
    );
    w.write("lib/b.c", "#include \"y.h\"\nint b(void) { return Y; }\n");
    w.write(
        "lib/WBUILD",
        r#"cc_library(name = "lib", srcs = ["d/a.c", "b.c", "common/x.h", "y.h"])"#,
    );
    let (out, ev) = w.events(&["build", "//lib:lib"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    // The include through `..` counts as including lib/common/x.h.
    let err = stderr(&out);
    assert!(!err.contains("not included by any source"), "{err}");
    assert_eq!(status_of(&ev, "//lib:lib lib/d/a.c"), "executed");

    // y.h is declared for both compiles but only b.c includes it.
    w.write("lib/y.h", "#define Y 3\n");
    let (out, ev) = w.events(&["build", "//lib:lib"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    assert_eq!(status_of(&ev, "//lib:lib lib/d/a.c"), "cached", "{ev:?}");
    assert_eq!(status_of(&ev, "//lib:lib lib/b.c"), "executed", "{ev:?}");
    let why = stdout(&w.ok(&["why", "//lib:lib"]));
    assert!(why.contains("lib/y.h changed"), "{why}");

    // Through `..`: x.h is a.c's.
    w.write("lib/common/x.h", "#define X 5\n");
    let (_, ev) = w.events(&["build", "//lib:lib"]);
    assert_eq!(status_of(&ev, "//lib:lib lib/d/a.c"), "executed", "{ev:?}");
    assert_eq!(status_of(&ev, "//lib:lib lib/b.c"), "cached", "{ev:?}");

    // A new declared header changes what every compile could see: both rerun (the
    // compiler's probes are not in its depfile).
    w.write("lib/z.h", "\n");
    w.write(
        "lib/WBUILD",
        r#"cc_library(name = "lib", srcs = ["d/a.c", "b.c", "common/x.h", "y.h", "z.h"])"#,
    );
    let (_, ev) = w.events(&["build", "//lib:lib"]);
    assert_eq!(status_of(&ev, "//lib:lib lib/d/a.c"), "executed", "{ev:?}");
    let why = stdout(&w.ok(&["why", "//lib:lib"]));
    assert!(
        why.contains("its declared inputs changed: added lib/z.h"),
        "{why}"
    );
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
