//! Tests of `wbuild query`: parsing (precedence, columns), every function, the set operators,
//! the output formats, errors and hostile expressions.

use super::*;
use crate::testutil::*;

const FILES: &[(&str, &str)] = &[
    (
        "tools/WBUILD",
        "wasi_tool(name = 'gen', src = 'gen.wasm')\n",
    ),
    ("tools/gen.wasm", ""),
    (
        "lib/WBUILD",
        "cc_library(name = 'base', srcs = ['base.c'], hdrs = ['base.h', 'include/x.h'], copts = ['-O2'])\n\
         cc_library(name = 'util', srcs = ['util.c'], hdrs = ['util.h'], deps = [':base'])\n\
         cc_test(name = 'util_test', srcs = ['util_test.c'], deps = [':util'])\n",
    ),
    ("lib/base.c", ""),
    ("lib/base.h", ""),
    ("lib/include/x.h", ""),
    ("lib/util.c", ""),
    ("lib/util.h", ""),
    ("lib/util_test.c", ""),
    (
        "lib/sub/WBUILD",
        "filegroup(name = 'data', srcs = ['data.txt'])\n",
    ),
    ("lib/sub/data.txt", ""),
    (
        "app/WBUILD",
        "wasi_run(name = 'gen_h', tool = '//tools:gen', srcs = ['in.txt'], outs = ['gen.h'], args = ['-o', '$@'], env = {'MODE': 'fast'})\n\
         cc_binary(name = 'app', srcs = ['main.c', 'gen.h'], deps = ['//lib:util'])\n\
         wasi_test(name = 'check', tool = '//tools:gen', srcs = [':app', '//lib/sub:data.txt'])\n",
    ),
    ("app/main.c", ""),
    ("app/in.txt", ""),
    ("app/unused.txt", ""),
];

fn run_in(t: &TestWs, q: &str, package: &str) -> Result<Vec<String>, QueryError> {
    let query = Query::parse(q, package)?;
    let loaded = load(&t.ws, &query)?;
    let g = QueryGraph::new(&loaded.graph, &loaded.files, &|d| t.ws.is_package(d));
    let r = query.evaluate(&g)?;
    Ok(r.nodes.iter().map(|id| g.label(id)).collect())
}

fn run(t: &TestWs, q: &str) -> Vec<String> {
    run_in(t, q, "").unwrap_or_else(|e| panic!("{q}: {e}"))
}

fn err(t: &TestWs, q: &str) -> QueryError {
    match run_in(t, q, "") {
        Ok(r) => panic!("{q}: expected an error, got {r:?}"),
        Err(e) => e,
    }
}

/// The error's message and 1-based column.
fn err_at(t: &TestWs, q: &str) -> (String, usize) {
    let e = err(t, q);
    let col = e.line_col().map_or(0, |(_, c)| c);
    (e.kind().to_string(), col)
}

#[test]
fn target_patterns() {
    let t = workspace(FILES);
    assert_eq!(
        run(&t, "//lib:all"),
        ["//lib:base", "//lib:util", "//lib:util_test"]
    );
    assert_eq!(run(&t, "//lib:*"), run(&t, "//lib:all"));
    assert_eq!(
        run(&t, "//lib/..."),
        [
            "//lib:base",
            "//lib:util",
            "//lib:util_test",
            "//lib/sub:data"
        ]
    );
    assert_eq!(
        run(&t, "//..."),
        [
            "//app:app",
            "//app:check",
            "//app:gen_h",
            "//lib:base",
            "//lib:util",
            "//lib:util_test",
            "//lib/sub:data",
            "//tools:gen"
        ]
    );
    assert_eq!(run(&t, "\"//lib:base\""), ["//lib:base"]);
    assert_eq!(run(&t, "'//lib:base'"), ["//lib:base"]);
    // Relative to the current package, as on the command line.
    assert_eq!(run_in(&t, ":util", "lib").unwrap(), ["//lib:util"]);
    assert_eq!(run_in(&t, "...", "lib").unwrap(), run(&t, "//lib/..."));
    // A generated file and a source file are nodes too.
    assert_eq!(run(&t, "//app:gen.h"), ["//app:gen.h"]);
    assert_eq!(run(&t, "//app:main.c"), ["//app:main.c"]);
    assert_eq!(run(&t, "//app:unused.txt"), ["//app:unused.txt"]);
    assert_eq!(
        run(
            &t,
            "//app:main.c + //app:unused.txt + //app:main.c + //app:app"
        ),
        ["//app:app", "//app:main.c", "//app:unused.txt"]
    );
    assert_eq!(
        run(&t, "set(//tools:gen //lib:base '//lib:util')"),
        ["//lib:base", "//lib:util", "//tools:gen"]
    );
}

#[test]
fn deps_includes_source_and_generated_files() {
    let t = workspace(FILES);
    assert_eq!(
        run(&t, "deps(//app:app)"),
        [
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
        ]
    );
    assert_eq!(run(&t, "deps(//app:app, 0)"), ["//app:app"]);
    assert_eq!(
        run(&t, "deps(//app:app, 1)"),
        ["//app:app", "//app:gen.h", "//app:main.c", "//lib:util"]
    );
    assert_eq!(
        run(&t, "deps(//app:app, 2)"),
        [
            "//app:app",
            "//app:gen.h",
            "//app:gen_h",
            "//app:main.c",
            "//lib:base",
            "//lib:util",
            "//lib:util.c",
            "//lib:util.h"
        ]
    );
    // A file in another package is labelled by its own package.
    assert!(run(&t, "deps(//app:check, 1)").contains(&"//lib/sub:data.txt".to_owned()));
    // Only rules.
    assert_eq!(
        run(&t, "kind(rule, deps(//app:app))"),
        [
            "//app:app",
            "//app:gen_h",
            "//lib:base",
            "//lib:util",
            "//tools:gen"
        ]
    );
}

#[test]
fn rdeps_within_the_universe() {
    let t = workspace(FILES);
    assert_eq!(
        run(&t, "rdeps(//..., //lib:base)"),
        [
            "//app:app",
            "//app:check",
            "//lib:base",
            "//lib:util",
            "//lib:util_test"
        ]
    );
    assert_eq!(
        run(&t, "rdeps(//..., //lib:base, 1)"),
        ["//lib:base", "//lib:util"]
    );
    assert_eq!(
        run(&t, "rdeps(//lib/..., //lib:base)"),
        ["//lib:base", "//lib:util", "//lib:util_test"]
    );
    // Which targets use a source file.
    assert_eq!(
        run(&t, "rdeps(//..., //lib:include/x.h, 1)"),
        ["//lib:base", "//lib:include/x.h"]
    );
    // Outside the universe: nothing.
    assert!(run(&t, "rdeps(//tools/..., //lib:base)").is_empty());
}

#[test]
fn paths() {
    let t = workspace(FILES);
    assert_eq!(
        run(&t, "somepath(//app:check, //lib:base)"),
        ["//app:app", "//app:check", "//lib:base", "//lib:util"]
    );
    assert_eq!(
        run(&t, "somepath(//app:check, //tools:gen.wasm)"),
        ["//app:check", "//tools:gen", "//tools:gen.wasm"]
    );
    assert!(run(&t, "somepath(//lib:base, //app:app)").is_empty());
    assert_eq!(
        run(&t, "allpaths(//app:check, //tools:gen)"),
        [
            "//app:app",
            "//app:check",
            "//app:gen.h",
            "//app:gen_h",
            "//tools:gen"
        ]
    );
    assert!(run(&t, "allpaths(//lib:base, //app:app)").is_empty());
}

#[test]
fn kind_attr_filter_tests() {
    let t = workspace(FILES);
    assert_eq!(
        run(&t, "kind(cc_.*, //...)"),
        ["//app:app", "//lib:base", "//lib:util", "//lib:util_test"]
    );
    assert_eq!(run(&t, "kind(wasi_tool, //...)"), ["//tools:gen"]);
    assert_eq!(
        run(&t, "kind('source file', deps(//lib:util, 1))"),
        ["//lib:util.c", "//lib:util.h"]
    );
    assert_eq!(
        run(&t, "kind('generated file', deps(//app:app))"),
        ["//app:gen.h"]
    );
    assert_eq!(
        run(&t, r#"filter("\.h$", deps(//app:app))"#),
        [
            "//app:gen.h",
            "//lib:base.h",
            "//lib:include/x.h",
            "//lib:util.h"
        ]
    );
    assert_eq!(
        run(&t, "filter(util, //...)"),
        ["//lib:util", "//lib:util_test"]
    );
    assert_eq!(run(&t, "attr(copts, O2, //...)"), ["//lib:base"]);
    // Any element of a list; references as labels; an empty list is `[]`.
    assert_eq!(run(&t, "attr(deps, '//lib:base', //...)"), ["//lib:util"]);
    assert_eq!(
        run(&t, r#"attr(deps, "^\[\]$", kind(cc_, //...))"#),
        ["//lib:base"]
    );
    assert_eq!(run(&t, "attr(srcs, in.txt, //...)"), ["//app:gen_h"]);
    assert_eq!(
        run(&t, "attr(tool, '//tools:gen', //...)"),
        ["//app:check", "//app:gen_h"]
    );
    assert_eq!(run(&t, "attr(env, '^MODE=fast$', //...)"), ["//app:gen_h"]);
    assert_eq!(
        run(&t, "attr(name, '^util', //...)"),
        ["//lib:util", "//lib:util_test"]
    );
    // Rules without the attribute, and files, never match.
    assert!(run(&t, "attr(outs, '', //lib/...)").is_empty());
    assert_eq!(run(&t, "tests(//...)"), ["//app:check", "//lib:util_test"]);
}

#[test]
fn set_operators_and_precedence() {
    let t = workspace(FILES);
    let lib = ["//lib:base", "//lib:util", "//lib:util_test"];
    assert_eq!(
        run(&t, "//lib:base + //tools:gen"),
        ["//lib:base", "//tools:gen"]
    );
    assert_eq!(
        run(&t, "//lib:base union //tools:gen"),
        ["//lib:base", "//tools:gen"]
    );
    assert_eq!(
        run(&t, "//lib:all - //lib:util"),
        ["//lib:base", "//lib:util_test"]
    );
    assert_eq!(
        run(&t, "//lib:all except //lib:util"),
        ["//lib:base", "//lib:util_test"]
    );
    assert_eq!(run(&t, "//lib:all ^ //lib:util"), ["//lib:util"]);
    assert_eq!(run(&t, "//lib:all intersect //lib:util"), ["//lib:util"]);
    // Left-associative: (all - util) + util, not all - (util + util).
    assert_eq!(run(&t, "//lib:all - //lib:util + //lib:util"), lib);
    // One precedence: (base + util) ^ util, not base + (util ^ util).
    assert_eq!(
        run(&t, "//lib:base + //lib:util ^ //lib:util"),
        ["//lib:util"]
    );
    assert_eq!(
        run(&t, "//lib:base union //lib:util intersect //lib:util"),
        ["//lib:util"]
    );
    assert_eq!(
        run(&t, "//lib:base + (//lib:util ^ //lib:util)"),
        ["//lib:base", "//lib:util"]
    );
    // A hyphen inside a word is part of it; alone it is the operator.
    assert!(
        err_at(&t, "//lib:all-//lib:util")
            .0
            .starts_with("invalid target pattern '//lib:all-//lib:util'")
    );
    assert_eq!(
        run(&t, "//lib:all -//lib:util"),
        ["//lib:base", "//lib:util_test"]
    );
}

#[test]
fn let_and_variables() {
    let t = workspace(FILES);
    assert_eq!(
        run(&t, "let l = //lib:all in $l - //lib:util"),
        ["//lib:base", "//lib:util_test"]
    );
    // The body extends as far as it can; shadowing takes the innermost binding.
    assert_eq!(
        run(
            &t,
            "let x = //lib:base in let x = //tools:gen in $x + //lib:util"
        ),
        ["//lib:util", "//tools:gen"]
    );
    assert_eq!(
        run(&t, "let d = deps(//app:app, 1) in kind(rule, $d) ^ $d"),
        ["//app:app", "//lib:util"]
    );
    assert_eq!(
        err_at(&t, "let x = //lib:base in $y"),
        (
            "undefined variable '$y': bind it first with `let y = ... in ...`".to_owned(),
            23
        )
    );
    // Out of scope after the body.
    assert_eq!(err_at(&t, "(let x = //lib:base in $x) + $x").1, 30);
}

#[test]
fn syntax_errors_point_at_the_column() {
    let t = workspace(FILES);
    let e = err(&t, "//lib:all + dep(//app)");
    assert_eq!(
        e.to_string(),
        "query: 1:13: unknown function 'dep'; did you mean 'deps'?\n  //lib:all + dep(//app)\n              ^"
    );
    assert_eq!(
        err_at(&t, "frobnicate(//app)"),
        (
            "unknown function 'frobnicate' (the functions are allpaths, attr, deps, filter, kind, rdeps, set, somepath, tests)".to_owned(),
            1
        )
    );
    assert_eq!(
        err_at(&t, "rdep(//..., //app)").0,
        "unknown function 'rdep'; did you mean 'rdeps'?"
    );
    assert_eq!(
        err_at(&t, "deps(//app, 1, 2)"),
        (
            "deps() takes 1 or 2 arguments: deps(expr) or deps(expr, depth); given 3".to_owned(),
            1
        )
    );
    assert_eq!(
        err_at(&t, "//app + somepath(//app)"),
        (
            "somepath() takes 2 arguments: somepath(from, to); given 1".to_owned(),
            9
        )
    );
    assert_eq!(
        err_at(&t, "attr(copts, //...)").0,
        "attr() takes 3 arguments: attr(name, regex, expr); given 2"
    );
    assert_eq!(
        err_at(&t, "deps(//app, -1)"),
        (
            "deps(): the depth must be a non-negative integer, found '-'".to_owned(),
            13
        )
    );
    assert_eq!(
        err_at(&t, "deps(//app, two)"),
        (
            "deps(): the depth must be a non-negative integer, found 'two'".to_owned(),
            13
        )
    );
    assert_eq!(
        err_at(&t, "kind('cc_(', //...)"),
        (
            "kind(): invalid regular expression 'cc_(': unclosed group".to_owned(),
            6
        )
    );
    assert_eq!(
        err_at(&t, "deps(//app"),
        (
            "expected ',' or ')' after an argument, found the end of the expression".to_owned(),
            11
        )
    );
    assert_eq!(
        err_at(&t, "//app //lib"),
        (
            "expected an operator (+, -, ^, union, except, intersect) or the end, found '//lib'"
                .to_owned(),
            7
        )
    );
    assert_eq!(err_at(&t, "deps(//app) +").1, 14);
    assert_eq!(
        err_at(&t, "'//app"),
        ("unterminated quoted word: add the closing '".to_owned(), 1)
    );
    assert_eq!(
        err_at(&t, "//app + !x"),
        ("unexpected character '!'".to_owned(), 9)
    );
    assert_eq!(err_at(&t, "*"), ("unexpected character '*'".to_owned(), 1));
    assert_eq!(err_at(&t, ""), ("expected a target pattern, a function call, 'let', '$var' or '(', found the end of the expression".to_owned(), 1));
    assert_eq!(err_at(&t, "//a/.../b").1, 1);
    assert!(
        err_at(&t, "//a/.../b")
            .0
            .starts_with("invalid target pattern '//a/.../b'")
    );
    // Columns count characters, on the right line.
    let e = err(&t, "//lib:all +\n  'é' + dep(//x)");
    assert_eq!(e.line_col(), Some((2, 9)));
    assert!(
        e.to_string().ends_with("\n    'é' + dep(//x)\n          ^"),
        "{e}"
    );
    // A character outside words is refused where it is.
    assert_eq!(
        err_at(&t, "//lib:all + é"),
        ("unexpected character 'é'".to_owned(), 13)
    );
}

#[test]
fn pattern_errors_point_at_the_pattern() {
    let t = workspace(FILES);
    let (msg, col) = err_at(&t, "deps(//lib:base) + //nope:x");
    assert_eq!(
        (msg.as_str(), col),
        (
            "no such package 'nope': there is no WBUILD file in 'nope'",
            20
        )
    );
    let (msg, col) = err_at(&t, "//lib:base + deps(//lib:nope)");
    assert_eq!(
        (msg.as_str(), col),
        (
            "no such target '//lib:nope': package 'lib' has no target, output or file named 'nope'",
            19
        )
    );
    let (msg, col) = err_at(&t, "rdeps(//none/..., //lib:base)");
    assert_eq!(
        (msg.as_str(), col),
        (
            "target pattern '//none/...' matched no packages: no WBUILD file under 'none'",
            7
        )
    );
    // A broken reference inside a package is the loader's error, whole.
    let t = workspace(&[
        ("p/WBUILD", "filegroup(name = 'x', srcs = ['//q:y'])\n"),
        ("q/WBUILD", ""),
    ]);
    let e = err(&t, "deps(//p:x)");
    assert_eq!(e.offset(), None);
    assert!(
        e.to_string().starts_with("query: cannot load the target graph: no such target '//q:y' (referenced by //p:x at p/WBUILD:1:1)"),
        "{e}"
    );
}

#[test]
fn cycles_terminate_and_are_reported() {
    let t = workspace(&[
        ("t/WBUILD", "wasi_tool(name = 't', src = 't.wasm')\n"),
        ("t/t.wasm", ""),
        (
            "a/WBUILD",
            "wasi_run(name = 'x', tool = '//t', srcs = ['//b:y.out'], outs = ['x.out'])\n",
        ),
        (
            "b/WBUILD",
            "filegroup(name = 'g', srcs = ['//a:x'])\nwasi_run(name = 'y', tool = '//t', srcs = [':g'], outs = ['y.out'])\n",
        ),
    ]);
    let query = Query::parse("deps(//a:x)", "").unwrap();
    let loaded = load(&t.ws, &query).unwrap();
    let cycle = loaded.cycle.as_ref().expect("the loader reports the cycle");
    assert!(
        cycle
            .to_string()
            .ends_with("//a:x -> //b:y -> //b:g -> //a:x"),
        "{cycle}"
    );
    let g = QueryGraph::new(&loaded.graph, &loaded.files, &|d| t.ws.is_package(d));
    let r = query.evaluate(&g).unwrap();
    let labels: Vec<String> = r.nodes.iter().map(|id| g.label(id)).collect();
    assert_eq!(
        labels,
        [
            "//a:x",
            "//b:g",
            "//b:y",
            "//b:y.out",
            "//t:t",
            "//t:t.wasm"
        ]
    );
    assert_eq!(r.cycles.len(), 1);
    assert_eq!(
        render_cycle(&g, &r.cycles[0]),
        "//a:x -> //b:y.out -> //b:y -> //b:g -> //a:x"
    );
    // rdeps and allpaths terminate too.
    assert_eq!(
        run(&t, "rdeps(//a:x, //b:g)"),
        ["//a:x", "//b:g", "//b:y", "//b:y.out"]
    );
    // Every node of the cycle lies on a walk from //b:g to //a:x.
    assert_eq!(
        run(&t, "allpaths(//b:g, //a:x)"),
        ["//a:x", "//b:g", "//b:y", "//b:y.out"]
    );
    let query = Query::parse("rdeps(//a:x, //t:t)", "").unwrap();
    let loaded = load(&t.ws, &query).unwrap();
    let g = QueryGraph::new(&loaded.graph, &loaded.files, &|d| t.ws.is_package(d));
    let r = query.evaluate(&g).unwrap();
    assert_eq!(r.cycles.len(), 1);
    assert_eq!(
        render_cycle(&g, &r.cycles[0]),
        "//a:x -> //b:y.out -> //b:y -> //b:g -> //a:x"
    );
    // Depth-bounded walks terminate on the cycle.
    assert_eq!(run(&t, "deps(//a:x, 1000)").len(), 6);
}

fn graph_for<'g>(t: &TestWs, loaded: &'g Loaded) -> QueryGraph<'g> {
    QueryGraph::new(&loaded.graph, &loaded.files, &|d| t.ws.is_package(d))
}

fn rendered(
    t: &TestWs,
    q: &str,
    format: OutputFormat,
    limit: usize,
) -> Result<String, DotTooLarge> {
    let query = Query::parse(q, "").unwrap();
    let loaded = load(&t.ws, &query).unwrap();
    let g = graph_for(t, &loaded);
    let r = query.evaluate(&g).unwrap();
    render(&g, &r.nodes, format, limit)
}

#[test]
fn output_formats() {
    let t = workspace(FILES);
    let q = "deps(//lib:util, 1) - kind(file, deps(//lib:util, 1)) + //lib:util.h";
    assert_eq!(
        rendered(&t, q, OutputFormat::Label, 500).unwrap(),
        "//lib:base\n//lib:util\n//lib:util.h\n"
    );
    assert_eq!(
        rendered(&t, q, OutputFormat::Json, 500).unwrap(),
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
  },
  {
    "label": "//lib:util.h",
    "kind": "source file",
    "deps": []
  }
]
"#
    );
    assert_eq!(
        rendered(&t, q, OutputFormat::Dot, 500).unwrap(),
        "digraph \"wbuild query\" {\n  node [shape=box];\n  \"//lib:base\";\n  \"//lib:util\";\n  \"//lib:util.h\";\n  \"//lib:util\" -> \"//lib:base\";\n  \"//lib:util\" -> \"//lib:util.h\";\n}\n"
    );
    let e = rendered(&t, q, OutputFormat::Dot, 2).unwrap_err();
    assert_eq!(e.nodes, 3);
    assert!(
        e.to_string()
            .starts_with("the result has 3 nodes, more than --dot-limit 2"),
        "{e}"
    );
    assert!(e.to_string().contains("--output label"), "{e}");
    // Empty results: nothing, an empty array, an empty graph.
    let empty = "//lib:base - //lib:base";
    assert_eq!(rendered(&t, empty, OutputFormat::Label, 500).unwrap(), "");
    assert_eq!(
        rendered(&t, empty, OutputFormat::Json, 500).unwrap(),
        "[]\n"
    );
    assert_eq!(
        rendered(&t, empty, OutputFormat::Dot, 500).unwrap(),
        "digraph \"wbuild query\" {\n  node [shape=box];\n}\n"
    );
}

/// What a hostile or careless expression could do: recurse the parser off its stack, build a
/// huge chain, smuggle characters into a label.
#[test]
fn hostile_expressions() {
    let t = workspace(FILES);
    let deep = format!("{}//lib:base{}", "(".repeat(100_000), ")".repeat(100_000));
    let (msg, col) = err_at(&t, &deep);
    assert_eq!(
        msg,
        format!("the expression nests more than {MAX_DEPTH} levels deep; simplify it")
    );
    assert_eq!(col, MAX_DEPTH + 1);
    let deep_calls = format!("{}//lib:base{}", "deps(".repeat(10_000), ")".repeat(10_000));
    assert!(err_at(&t, &deep_calls).0.contains("levels deep"));
    let deep_lets = "let x = //lib:base in ".repeat(10_000) + "$x";
    assert!(err_at(&t, &deep_lets).0.contains("levels deep"));
    // A long flat chain is fine.
    let chain = vec!["//lib:base"; 20_000].join(" + ");
    assert_eq!(run(&t, &chain), ["//lib:base"]);
    // Nesting up to the bound is fine.
    let ok = format!(
        "{}//lib:base{}",
        "(".repeat(MAX_DEPTH - 1),
        ")".repeat(MAX_DEPTH - 1)
    );
    assert_eq!(run(&t, &ok), ["//lib:base"]);
    let ok = format!(
        "{}//lib:util{}",
        "kind(rule, deps(".repeat((MAX_DEPTH - 1) / 2),
        "))".repeat((MAX_DEPTH - 1) / 2)
    );
    assert_eq!(run(&t, &ok), ["//lib:base", "//lib:util"]);
    // Patterns that leave the workspace are refused.
    assert!(
        err_at(&t, "//../etc:passwd").0.contains("'..'"),
        "{:?}",
        err_at(&t, "//../etc:passwd")
    );
    assert!(err_at(&t, "'//lib:a\nb'").0.contains("control character"));
    // A huge depth is not a loop.
    assert_eq!(run(&t, "deps(//lib:util, 18446744073709551615)").len(), 7);
    let (msg, col) = err_at(&t, "deps(//lib:util, 99999999999999999999999)");
    assert_eq!((msg.contains("non-negative integer"), col), (true, 18));
    // A regex that would be huge is refused, not compiled forever.
    let big = "kind('(a{1000}){1000}', //...)";
    assert!(
        err_at(&t, big)
            .0
            .starts_with("kind(): invalid regular expression")
    );
}

#[test]
fn suggestions() {
    assert_eq!(closest("dep"), Some("deps"));
    assert_eq!(closest("rdep"), Some("rdeps"));
    assert_eq!(closest("allpath"), Some("allpaths"));
    assert_eq!(closest("atr"), Some("attr"));
    assert_eq!(closest("xyzzy"), None);
    assert_eq!(closest("x"), None);
}
