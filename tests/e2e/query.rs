//! `wbuild query`: the real binary on the fixture workspaces under `tests/e2e/fixtures/query/`
//! (copied to a temporary directory): every operator's exact output, the three output
//! formats, errors with their column, an empty result and a dependency cycle.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use wbuild_tests::process::{default_deadline, output_with_deadline};
use wbuild_tests::{repo_root, stderr, stdout};

use crate::BIN;

/// A copy of one fixture workspace, with its own cache directory.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("wbuild-query-")
            .tempdir()
            .unwrap();
        let from = repo_root().join("tests/e2e/fixtures/query").join(name);
        copy_tree(&from, &dir.path().join("ws"));
        Fixture { dir }
    }

    fn ws(&self) -> PathBuf {
        self.dir.path().join("ws")
    }

    /// `wbuild query ARGS...` in `sub` (relative to the workspace root).
    fn run_in(&self, sub: &str, args: &[&str]) -> Output {
        let mut c = Command::new(BIN);
        c.current_dir(self.ws().join(sub))
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .arg("query")
            .args(args)
            .env_remove("WBUILD_CACHE");
        output_with_deadline(&mut c, default_deadline()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_in("", args)
    }

    /// The standard output of a query that must succeed with nothing on stderr.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success() && stderr(&out).is_empty(),
            "wbuild query {args:?}: {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    }

    /// The standard error of a query that must fail (exit 2) with nothing on stdout.
    fn fail(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "wbuild query {args:?}\nstdout:\n{}\nstderr:\n{}",
            stdout(&out),
            stderr(&out)
        );
        assert_eq!(stdout(&out), "", "wbuild query {args:?}");
        stderr(&out)
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn lines(v: &[&str]) -> String {
    v.iter().map(|l| format!("{l}\n")).collect()
}

#[test]
fn query_operators_print_exact_results() {
    let f = Fixture::new("main");
    let cases: &[(&str, &[&str])] = &[
        (
            "//lib:all",
            &["//lib:base", "//lib:util", "//lib:util_test"],
        ),
        (
            "//lib/...",
            &[
                "//lib:base",
                "//lib:util",
                "//lib:util_test",
                "//lib/sub:data",
            ],
        ),
        (
            "//...",
            &[
                "//app:app",
                "//app:check",
                "//app:gen_h",
                "//lib:base",
                "//lib:util",
                "//lib:util_test",
                "//lib/sub:data",
                "//tools:gen",
            ],
        ),
        ("\"//lib:base\"", &["//lib:base"]),
        // deps() includes source files and generated files, as in Bazel.
        (
            "deps(//app:app)",
            &[
                "//app:app",
                "//app:gen.h",
                "//app:gen_h",
                "//app:in.txt",
                "//app:main.c",
                "//lib:base",
                "//lib:base.c",
                "//lib:base.h",
                "//lib:include/x.h",
                "//lib:util",
                "//lib:util.c",
                "//lib:util.h",
                "//tools:gen",
                "//tools:gen.wasm",
            ],
        ),
        (
            "deps(//app:app, 1)",
            &["//app:app", "//app:gen.h", "//app:main.c", "//lib:util"],
        ),
        (
            "rdeps(//..., //lib:base)",
            &[
                "//app:app",
                "//app:check",
                "//lib:base",
                "//lib:util",
                "//lib:util_test",
            ],
        ),
        ("rdeps(//..., //lib:base, 1)", &["//lib:base", "//lib:util"]),
        (
            "rdeps(//..., //lib:include/x.h)",
            &[
                "//app:app",
                "//app:check",
                "//lib:base",
                "//lib:include/x.h",
                "//lib:util",
                "//lib:util_test",
            ],
        ),
        (
            "somepath(//app:check, //lib:base)",
            &["//app:app", "//app:check", "//lib:base", "//lib:util"],
        ),
        (
            "allpaths(//app:check, //tools:gen)",
            &[
                "//app:app",
                "//app:check",
                "//app:gen.h",
                "//app:gen_h",
                "//tools:gen",
            ],
        ),
        (
            "kind(cc_.*, //...)",
            &["//app:app", "//lib:base", "//lib:util", "//lib:util_test"],
        ),
        ("kind(wasi_tool, //...)", &["//tools:gen"]),
        (
            "kind('generated file', deps(//app:check))",
            &["//app:gen.h"],
        ),
        ("attr(copts, O2, //...)", &["//lib:base"]),
        ("attr(deps, '//lib:base', //...)", &["//lib:util"]),
        (
            r#"filter("\.h$", deps(//lib:util))"#,
            &["//lib:base.h", "//lib:include/x.h", "//lib:util.h"],
        ),
        ("tests(//...)", &["//app:check", "//lib:util_test"]),
        (
            "//lib:all - //lib:util + //lib:util",
            &["//lib:base", "//lib:util", "//lib:util_test"],
        ),
        ("//lib:base + //lib:util ^ //lib:util", &["//lib:util"]),
        (
            "//lib:base union (//lib:util intersect //lib:util)",
            &["//lib:base", "//lib:util"],
        ),
        (
            "//lib:all except //lib:util",
            &["//lib:base", "//lib:util_test"],
        ),
        (
            "let l = kind(rule, deps(//app:check)) in $l ^ //lib/...",
            &["//lib:base", "//lib:util"],
        ),
        (
            "set(//tools:gen //lib:base)",
            &["//lib:base", "//tools:gen"],
        ),
    ];
    for (expr, want) in cases {
        assert_eq!(f.ok(&[expr]), lines(want), "wbuild query '{expr}'");
    }
    // Relative to the current directory's package.
    let out = f.run_in("lib", &["deps(:util, 1) - kind(file, //lib:all)"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        lines(&["//lib:base", "//lib:util", "//lib:util.c", "//lib:util.h"])
    );
}

#[test]
fn query_output_formats() {
    let f = Fixture::new("main");
    let expr = "kind(rule, deps(//lib:util))";
    assert_eq!(
        f.ok(&[expr, "--output", "label"]),
        lines(&["//lib:base", "//lib:util"])
    );
    assert_eq!(
        f.ok(&[expr, "--output", "json"]),
        r#"[
  {
    "label": "//lib:base",
    "kind": "cc_library rule",
    "deps": [
      "//lib:base.c",
      "//lib:base.h",
      "//lib:include/x.h"
    ]
  },
  {
    "label": "//lib:util",
    "kind": "cc_library rule",
    "deps": [
      "//lib:base",
      "//lib:util.c",
      "//lib:util.h"
    ]
  }
]
"#
    );
    assert_eq!(
        f.ok(&["deps(//app:gen_h, 1)", "--output", "dot"]),
        r#"digraph "wbuild query" {
  node [shape=box];
  "//app:gen_h";
  "//app:in.txt";
  "//tools:gen";
  "//app:gen_h" -> "//app:in.txt";
  "//app:gen_h" -> "//tools:gen";
}
"#
    );
    // Past the node limit, no graph: an error saying how large it is and what to do.
    let err = f.fail(&["deps(//app:check)", "--output", "dot", "--dot-limit", "5"]);
    assert_eq!(
        err,
        "error: the result has 16 nodes, more than --dot-limit 5: a graph that size cannot be read; use --output label or json, or a narrower expression (or raise --dot-limit)\n"
    );
    assert!(
        f.ok(&["deps(//app:check)", "--output", "dot"])
            .contains("\"//app:check\" -> \"//app:app\";")
    );
}

#[test]
fn query_errors_name_the_fault_and_its_column() {
    let f = Fixture::new("main");
    let cases: &[(&str, &str)] = &[
        (
            "deps(dep(//app))",
            "error: query: 1:6: unknown function 'dep'; did you mean 'deps'?\n  deps(dep(//app))\n       ^\n",
        ),
        (
            "//lib:base + //nope:x",
            "error: query: 1:14: no such package 'nope': there is no WBUILD file in 'nope'\n  //lib:base + //nope:x\n               ^\n",
        ),
        (
            "deps(//lib:nope)",
            "error: query: 1:6: no such target '//lib:nope': package 'lib' has no target, output or file named 'nope'\n  deps(//lib:nope)\n       ^\n",
        ),
        (
            "rdeps(//none/..., //lib:base)",
            "error: query: 1:7: target pattern '//none/...' matched no packages: no WBUILD file under 'none'\n  rdeps(//none/..., //lib:base)\n        ^\n",
        ),
        (
            "kind('cc_(', //...)",
            "error: query: 1:6: kind(): invalid regular expression 'cc_(': unclosed group\n  kind('cc_(', //...)\n       ^\n",
        ),
        (
            "somepath(//app)",
            "error: query: 1:1: somepath() takes 2 arguments: somepath(from, to); given 1\n  somepath(//app)\n  ^\n",
        ),
        (
            "deps(//app, deep)",
            "error: query: 1:13: deps(): the depth must be a non-negative integer, found 'deep'\n  deps(//app, deep)\n              ^\n",
        ),
        (
            "//app +",
            "error: query: 1:8: expected a target pattern, a function call, 'let', '$var' or '(', found the end of the expression\n  //app +\n         ^\n",
        ),
        (
            "$x + //app",
            "error: query: 1:1: undefined variable '$x': bind it first with `let x = ... in ...`\n  $x + //app\n  ^\n",
        ),
    ];
    for (expr, want) in cases {
        assert_eq!(f.fail(&[expr]), *want, "wbuild query '{expr}'");
    }
}

#[test]
fn query_empty_result_prints_nothing() {
    let f = Fixture::new("main");
    let out = f.run(&["kind(genrule, //...)"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
    assert_eq!(stderr(&out), "warning: Empty results\n");
}

#[test]
fn query_answers_over_a_cycle_and_says_so() {
    let f = Fixture::new("cycle");
    let out = f.run(&["deps(//a:x)"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        lines(&[
            "//a:x",
            "//b:g",
            "//b:y",
            "//b:y.out",
            "//t:t",
            "//t:t.wasm"
        ])
    );
    assert_eq!(
        stderr(&out),
        "warning: dependency cycle in the target graph: //a:x -> //b:y.out -> //b:y -> //b:g -> //a:x; the result includes every target on it\n"
    );
    // A query that does not walk the cycle still hears of it from the loader.
    let out = f.run(&["//a:x"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "//a:x\n");
    assert_eq!(
        stderr(&out),
        "warning: a/WBUILD:1:1: dependency cycle: //a:x -> //b:y -> //b:g -> //a:x; the query answered over it\n"
    );
    // The build itself still refuses it.
    let mut c = Command::new(BIN);
    c.current_dir(f.ws())
        .arg("--cache-dir")
        .arg(f.dir.path().join("cache"))
        .args(["build", "//a:x"])
        .env_remove("WBUILD_CACHE");
    let out = output_with_deadline(&mut c, default_deadline()).unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("dependency cycle"),
        "{}",
        stderr(&out)
    );
}
