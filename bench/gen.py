#!/usr/bin/env python3
"""Generate one synthetic build graph for wbuild and the tools it is measured against.

  gen.py OUT_DIR --actions N [--kind tar|template|c] [--per-package P] [--fan-in F]
                 [--tool WASM] [--native-tool BIN] [--ninja-command CMD]
                 [--bazel [--bazel-version X.Y.Z]]

Every kind writes the same DAG as `WBUILD` files (plus `wbuild.toml`), a `build.ninja` and a
`Makefile` (outputs under `.ninja-out/` and `.make-out/`); `--bazel` adds `BUILD.bazel` files
for the `c` kind, with Bazel's native `cc_library`/`cc_binary` (see write_bazel_workspace for
the workspace files and for how Bazel's commands differ). Prints `actions=N` (the exact number
of actions of the graph) on its last line.

Kinds:
  tar       Package p holds P actions a0..a{P-1}; action (p, k) runs the WASI tool wb-tar
            (--tool) on its own source s{k}.txt and, unless p starts a layer of 10 packages,
            the outputs of F actions of package p-1. ninja and make run --ninja-command
            (default `cat`). Archives contain archives, so output sizes double per layer.
  template  The same DAG with bounded outputs: action (p, k) runs wb-template (--tool) on its
            own template s{k}.txt with the outputs of its F dependencies as `--vars` files; each
            output is one `v = ...` line that grows by one term per layer. ninja and make run the
            same tool compiled natively (--native-tool).
  c         Shaped like a C/C++ tree: libraries of P-1 C files (default 10 files: 11 actions per
            library, compiles plus the archive) in components of 10 libraries; library i
            depends on up to F (default 3) earlier libraries of its component and each file
            includes a header of each dependency and calls into it. One program `//app:app`
            links the last library of every component. Compiles use the same command as
            wbuild's cc_library (`gcc -MD -MF D -c -O2 -iquote . -I ... -o O S`, with
            -fno-canonical-system-headers, which ninja and make get too) and `ar rcsD`.
"""
import argparse
import os
import shutil


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def write_ninja_make(out, ninja, make):
    """build.ninja writes under .ninja-out/, the Makefile under .make-out/: the two never share
    outputs, and hidden directories are outside wbuild's workspace walk (as wbuild-out/ is)."""
    write(os.path.join(out, "build.ninja"), "".join(ninja).replace("out/", NINJA_OUT + "/"))
    text = "".join(make).replace("out/", MAKE_OUT + "/").replace("find out ", f"find {MAKE_OUT} ")
    write(os.path.join(out, "Makefile"), text)


NINJA_OUT = ".ninja-out"
MAKE_OUT = ".make-out"


def layered_deps(p, k, per, fan_in):
    """Actions of package p-1 that action (p, k) depends on (none at a layer start)."""
    if p % 10 == 0:
        return []
    return [(p - 1, (k + j) % per) for j in range(fan_in)]


def gen_wasi(a):
    per = a.per_package
    packages = max(1, a.actions // per)
    tool = "tar" if a.kind == "tar" else "template"
    wasm = "wb-tar.wasm" if a.kind == "tar" else "wb-template.wasm"
    write(os.path.join(a.out, "wbuild.toml"), "[build]\nsource_date_epoch = 0\n")
    os.makedirs(os.path.join(a.out, "tools"), exist_ok=True)
    shutil.copy(a.tool, os.path.join(a.out, "tools", wasm))
    write(os.path.join(a.out, "tools", "WBUILD"), f'wasi_tool(name = "{tool}", src = "{wasm}")\n')
    if a.kind == "tar":
        ninja = [f"rule run\n  command = {a.ninja_command}\n\n"]
    else:
        native = os.path.abspath(a.native_tool) if a.native_tool else "wb-template"
        ninja = [f"rule run\n  command = {native} $vars $tmpl -o $out\n\n"]
    make = [".DEFAULT_GOAL := all\n"]
    all_outs = []
    for p in range(packages):
        pkg = f"lib{p}"
        rules = []
        for k in range(per):
            src = f"s{k}.txt"
            deps = layered_deps(p, k, per, a.fan_in)
            if a.kind == "tar":
                write(os.path.join(a.out, pkg, src), f"source {p} {k}\n")
                out = f"a{k}.tar"
                labels = [f"//lib{q}:a{j}" for q, j in deps]
                rules.append(
                    f'wasi_run(name = "a{k}", tool = "//tools:tar", srcs = {[src] + labels!r}, '
                    f'outs = ["{out}"], args = ["-o", "$@", "$(SRCS)"])\n'
                )
                ins = [f"{pkg}/{src}"] + [f"out/lib{q}/a{j}.tar" for q, j in deps]
                ninja.append(f"build out/{pkg}/{out}: run {' '.join(ins)}\n")
                cmd = a.ninja_command.replace("$in", "$^").replace("$out", "$@")
            else:
                body = f"v = s{p}.{k}" + (" {{v}}" if deps else "") + "\n"
                write(os.path.join(a.out, pkg, src), body)
                out = f"a{k}.vars"
                labels = [f"//lib{q}:a{j}" for q, j in deps]
                args = []
                for q, j in deps:
                    args += ["--vars", f"$(location //lib{q}:a{j})"]
                args += [f"$(location {src})", "-o", "$@"]
                rules.append(
                    f'wasi_run(name = "a{k}", tool = "//tools:template", srcs = {[src] + labels!r}, '
                    f'outs = ["{out}"], args = {args!r})\n'
                )
                dep_outs = [f"out/lib{q}/a{j}.vars" for q, j in deps]
                vars_args = " ".join(f"--vars {d}" for d in dep_outs)
                ins = [f"{pkg}/{src}"] + dep_outs
                ninja.append(
                    f"build out/{pkg}/{out}: run {' '.join(ins)}\n"
                    f"  tmpl = {pkg}/{src}\n  vars = {vars_args}\n"
                )
                cmd = f"{native} {vars_args} {pkg}/{src} -o $@"
            target = f"out/{pkg}/{out}"
            all_outs.append(target)
            make.append(f"{target}: {' '.join(ins)}\n\t@mkdir -p out/{pkg}\n\t@{cmd}\n")
        write(os.path.join(a.out, pkg, "WBUILD"), "".join(rules))
    make.append("all: " + " ".join(all_outs) + "\n.PHONY: all\n")
    write_ninja_make(a.out, ninja, make)
    return packages * per


# Bazel before 7 loads `@rules_cc//cc:defs.bzl` and `@rules_java//java:defs.bzl` from its own
# `@bazel_tools` (the C++ toolchain's BUILD file, the registered Java toolchains) and, unless the
# WORKSPACE defines them first, downloads both. Nothing may be downloaded here, and the BUILD
# files only use native rules, so the workspace carries local stand-ins that forward to the
# native rules (what the real `defs.bzl` files of that era do).
RULES_CC_DEFS = ["cc_binary", "cc_import", "cc_library", "cc_proto_library", "cc_test",
                 "cc_toolchain", "cc_toolchain_suite", "objc_library"]
RULES_JAVA_DEFS = ["java_binary", "java_import", "java_library", "java_plugin", "java_runtime",
                   "java_test", "java_toolchain"]
BAZEL_LOCAL = ".bazel"


def forwarding_defs(rules):
    return "".join(f"def {r}(**attrs):\n    native.{r}(**attrs)\n\n" for r in rules)


def write_bazel_workspace(out, version):
    """The workspace files of a Bazel build of the C graph.

    Bazel before 7 (Debian's bazel-bootstrap is 4.2.3): a `WORKSPACE` naming local stand-ins for
    `rules_cc` and `rules_java` under `.bazel/` (hidden from wbuild's workspace walk and listed
    in `.bazelignore`, so `//...` is only the graph). Bazel 7 and later: a `MODULE.bazel` (bzlmod
    is their default); it fetches `rules_cc` from the Bazel Central Registry, so it needs network
    access or a registry mirror.

    `.bazelrc` holds the options that keep Bazel's graph the one the other tools build:
    `--features=-supports_start_end_lib` makes Bazel archive each library (`ar rcsD`, as the
    others do) instead of handing the linker its objects between --start-lib/--end-lib, so the
    graph has the same compiles, archives and link. Differences that remain (Bazel's default C
    toolchain in its default fastbuild mode, with the graph's `copts = ["-O2"]` appended):
    compiles also get `-fPIC -U_FORTIFY_SOURCE -fstack-protector -Wall -Wunused-but-set-parameter
    -Wno-free-nonheap-object -fno-omit-frame-pointer -fno-canonical-system-headers`, the
    `__DATE__`/`__TIME__`/`__TIMESTAMP__` redactions and `-frandom-seed`, and `includes` become
    `-isystem` (for the source tree and bazel-out) where the others use `-I`; the link uses gold
    (`-fuse-ld=gold -Wl,-S`) and adds `-lstdc++ -lm`. Bazel also checks the headers each compile
    read (its `.d` file) against the declared ones."""
    major = int(version.split(".")[0]) if version and version[0].isdigit() else 0
    ignore = [BAZEL_LOCAL, "wbuild-out", NINJA_OUT, MAKE_OUT]
    write(os.path.join(out, ".bazelignore"), "\n".join(ignore) + "\n")
    write(os.path.join(out, ".bazelrc"), "build --features=-supports_start_end_lib\n")
    if major >= 7:
        write(os.path.join(out, "MODULE.bazel"),
              'module(name = "bench")\n\nbazel_dep(name = "rules_cc", version = "0.1.1")\n')
        return
    local = os.path.join(out, BAZEL_LOCAL)
    write(os.path.join(local, "rules_cc", "WORKSPACE"), 'workspace(name = "rules_cc")\n')
    write(os.path.join(local, "rules_cc", "cc", "defs.bzl"), forwarding_defs(RULES_CC_DEFS))
    write(os.path.join(local, "rules_cc", "cc", "BUILD"),
          'alias(\n    name = "toolchain_type",\n    actual = "@bazel_tools//tools/cpp:toolchain_type",\n'
          '    visibility = ["//visibility:public"],\n)\n')
    write(os.path.join(local, "rules_java", "WORKSPACE"), 'workspace(name = "rules_java")\n')
    write(os.path.join(local, "rules_java", "java", "defs.bzl"), forwarding_defs(RULES_JAVA_DEFS))
    write(os.path.join(local, "rules_java", "java", "BUILD"), "")
    write(os.path.join(out, "WORKSPACE"),
          'workspace(name = "bench")\n\n'
          f'local_repository(name = "rules_cc", path = "{BAZEL_LOCAL}/rules_cc")\n\n'
          f'local_repository(name = "rules_java", path = "{BAZEL_LOCAL}/rules_java")\n')


C_FUNCTION = """
int lib{i}_f{j}(int x)
{{
    static const int table[16] = {{{table}}};
    int acc = x;
    for (int n = 0; n < 16; n++)
        acc = acc * 31 + table[(n + x) & 15];
{calls}    return acc;
}}
"""


def gen_c(a):
    files = max(1, a.per_package - 1)
    libs = max(1, (a.actions - 1) // (files + 1))
    fan_in = a.fan_in
    write(os.path.join(a.out, "wbuild.toml"), "[build]\nsource_date_epoch = 0\n")
    copts = ["-O2"]
    deps_of = {}
    for i in range(libs):
        base = i - i % 10
        deps_of[i] = [d for d in range(i - 1, max(base, i - fan_in) - 1, -1)]
    # Transitive deps in link order (dependents before dependencies), as cc_binary does.
    closure = {}
    for i in range(libs):
        seen = []
        for d in deps_of[i]:
            for t in [d] + closure[d]:
                if t not in seen:
                    seen.append(t)
        closure[i] = seen
    ninja = [
        "rule cc\n  command = gcc -MD -MF $out.d -c -fno-canonical-system-headers -O2 -iquote . $incs -o $out $in\n"
        "  depfile = $out.d\n  deps = gcc\n\n",
        "rule ar\n  command = rm -f $out && ar rcsD $out $in\n\n",
        "rule link\n  command = gcc -o $out $in\n\n",
    ]
    make = [".DEFAULT_GOAL := all\n"]
    bazel = a.bazel
    for i in range(libs):
        pkg = f"lib{i}"
        incs = " ".join(f"-I lib{t}/include" for t in [i] + closure[i])
        srcs, hdrs, objs = [], [], []
        for j in range(files):
            hdr = f"include/{pkg}/f{j}.h"
            write(os.path.join(a.out, pkg, hdr),
                  f"#ifndef LIB{i}_F{j}_H\n#define LIB{i}_F{j}_H\nint lib{i}_f{j}(int x);\n#endif\n")
            includes = [f'#include "{pkg}/f{j}.h"'] + [
                f'#include "lib{d}/f{(j + n) % files}.h"' for n, d in enumerate(deps_of[i])]
            calls = "".join(
                f"    acc += lib{d}_f{(j + n) % files}(acc & 7);\n" for n, d in enumerate(deps_of[i]))
            table = ", ".join(str((i * 131 + j * 17 + n * 7) % 1000) for n in range(16))
            write(os.path.join(a.out, pkg, f"f{j}.c"),
                  "\n".join(includes) + "\n" + C_FUNCTION.format(i=i, j=j, table=table, calls=calls))
            srcs.append(f"f{j}.c")
            hdrs.append(hdr)
            obj = f"out/{pkg}/f{j}.o"
            objs.append(obj)
            ninja.append(f"build {obj}: cc {pkg}/f{j}.c\n  incs = {incs}\n")
            make.append(f"{obj}: {pkg}/f{j}.c\n\t@mkdir -p out/{pkg}\n"
                        f"\t@gcc -MD -MF $@.d -c -fno-canonical-system-headers -O2 -iquote . {incs} -o $@ $<\n")
        archive = f"out/{pkg}/lib{pkg}.a"
        ninja.append(f"build {archive}: ar {' '.join(objs)}\n")
        make.append(f"{archive}: {' '.join(objs)}\n\t@rm -f $@ && ar rcsD $@ $^\n")
        deps = [f"//lib{d}:lib{d}" for d in deps_of[i]]
        write(os.path.join(a.out, pkg, "WBUILD"),
              f'cc_library(\n    name = "{pkg}",\n    srcs = {srcs!r},\n    hdrs = {hdrs!r},\n'
              f'    includes = ["include"],\n    deps = {deps!r},\n    copts = {copts!r},\n)\n')
        if bazel:
            write(os.path.join(a.out, pkg, "BUILD.bazel"),
                  f'cc_library(\n    name = "{pkg}",\n    srcs = {srcs!r},\n    hdrs = {hdrs!r},\n'
                  f'    includes = ["include"],\n    deps = {deps!r},\n    copts = {copts!r},\n'
                  f'    visibility = ["//visibility:public"],\n)\n')
    tops = sorted({min(base + 9, libs - 1) for base in range(0, libs, 10)})
    main = [f'#include "lib{t}/f0.h"' for t in tops] + ["#include <stdio.h>", "", "int main(void)", "{",
                                                         "    int acc = 0;"]
    main += [f"    acc += lib{t}_f0(acc & 7);" for t in tops]
    main += ['    printf("%d\\n", acc);', "    return 0;", "}", ""]
    write(os.path.join(a.out, "app", "main.c"), "\n".join(main))
    app_deps = [f"//lib{t}:lib{t}" for t in tops]
    write(os.path.join(a.out, "app", "WBUILD"),
          f'cc_binary(name = "app", srcs = ["main.c"], deps = {app_deps!r}, copts = {copts!r})\n')
    if bazel:
        write(os.path.join(a.out, "app", "BUILD.bazel"),
              f'cc_binary(name = "app", srcs = ["main.c"], deps = {app_deps!r}, copts = {copts!r})\n')
        write_bazel_workspace(a.out, a.bazel_version)
    # The program links every archive, dependents before dependencies.
    link = []
    for t in tops:
        for x in [t] + closure[t]:
            if x not in link:
                link.append(x)
    top_incs = " ".join(f"-I lib{t}/include" for t in tops)
    archives = " ".join(f"out/lib{x}/liblib{x}.a" for x in link)
    ninja.append(f"build out/app/main.o: cc app/main.c\n  incs = {top_incs}\n")
    ninja.append(f"build out/app/app: link out/app/main.o {archives}\n")
    make.append(f"out/app/main.o: app/main.c\n\t@mkdir -p out/app\n"
                f"\t@gcc -MD -MF $@.d -c -fno-canonical-system-headers -O2 -iquote . {top_incs} -o $@ $<\n")
    make.append(f"out/app/app: out/app/main.o {archives}\n\t@gcc -o $@ $^\n")
    make.append("all: out/app/app\n.PHONY: all\n-include $(shell find out -name '*.d' 2>/dev/null)\n")
    write_ninja_make(a.out, ninja, make)
    # Compiles and archives per library, plus main.o and the link.
    return libs * (files + 1) + 2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--actions", type=int, required=True)
    ap.add_argument("--kind", choices=["tar", "template", "c"], default="tar")
    ap.add_argument("--per-package", type=int, default=None,
                    help="actions per package (tar, template; default 100) or per library (c; default 11)")
    ap.add_argument("--fan-in", type=int, default=None, help="default 2 (tar, template) or 3 (c)")
    ap.add_argument("--tool", help="wb-tar.wasm or wb-template.wasm")
    ap.add_argument("--native-tool", help="the native wb-template for ninja and make (template)")
    ap.add_argument("--ninja-command", default="cat $in > $out",
                    help="command of build.ninja's rule for the tar kind (e.g. 'wb-tar -o $out $in')")
    ap.add_argument("--bazel", action="store_true", help="also write Bazel BUILD files (c kind)")
    ap.add_argument("--bazel-version", default="4",
                    help="the Bazel the files are for: before 7 a WORKSPACE, from 7 a MODULE.bazel "
                         "(default 4, Debian's bazel-bootstrap)")
    a = ap.parse_args()
    if a.per_package is None:
        a.per_package = 11 if a.kind == "c" else 100
    if a.fan_in is None:
        a.fan_in = 3 if a.kind == "c" else 2
    if a.kind in ("tar", "template") and not a.tool:
        ap.error(f"--kind {a.kind} needs --tool")
    n = gen_c(a) if a.kind == "c" else gen_wasi(a)
    print(f"actions={n}")


if __name__ == "__main__":
    main()
