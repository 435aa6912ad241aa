#!/usr/bin/env python3
"""Generate one synthetic build graph as a wbuild workspace and an equivalent build.ninja.

  gen.py OUT_DIR --actions N [--per-package P] [--fan-in F] --tool WASM

Package p (p = 0 .. N/P-1) holds P actions a0..a{P-1}; action (p, k) archives its own source
s{k}.txt and, unless p starts a new layer of 10 packages, the outputs of F actions of package
p-1 (so the graph is layered like a tree of libraries, depth <= 10). wbuild runs the wb-tar
WASI tool; ninja runs `cat` on the same inputs, so both see the same DAG of N actions.
"""
import argparse
import os
import shutil


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--actions", type=int, required=True)
    ap.add_argument("--per-package", type=int, default=100)
    ap.add_argument("--fan-in", type=int, default=2)
    ap.add_argument("--tool", required=True, help="wb-tar.wasm")
    ap.add_argument("--ninja-command", default="cat $in > $out",
                    help="command of build.ninja's rule (e.g. a native wb-tar: 'wb-tar -o $out $in')")
    a = ap.parse_args()
    per = a.per_package
    packages = max(1, a.actions // per)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "wbuild.toml"), "w") as f:
        f.write("[build]\nsource_date_epoch = 0\n")
    os.makedirs(os.path.join(a.out, "tools"), exist_ok=True)
    shutil.copy(a.tool, os.path.join(a.out, "tools", "wb-tar.wasm"))
    with open(os.path.join(a.out, "tools", "WBUILD"), "w") as f:
        f.write('wasi_tool(name = "tar", src = "wb-tar.wasm")\n')
    ninja = [f"rule cat\n  command = {a.ninja_command}\n\n"]
    for p in range(packages):
        pkg = f"lib{p}"
        d = os.path.join(a.out, pkg)
        os.makedirs(d, exist_ok=True)
        rules = []
        for k in range(per):
            src = f"s{k}.txt"
            with open(os.path.join(d, src), "w") as f:
                f.write(f"source {p} {k}\n")
            deps = []
            if p % 10 != 0:
                deps = [f"//lib{p-1}:a{(k + j) % per}" for j in range(a.fan_in)]
            srcs = [src] + deps
            rules.append(
                f'wasi_run(name = "a{k}", tool = "//tools:tar", srcs = {srcs!r}, '
                f'outs = ["a{k}.tar"], args = ["-o", "$@", "$(SRCS)"])\n'
            )
            ins = [f"{pkg}/{src}"] + [
                f"out/lib{p-1}/a{(k + j) % per}.tar" for j in range(len(deps))
            ]
            ninja.append(f"build out/{pkg}/a{k}.tar: cat {' '.join(ins)}\n")
        with open(os.path.join(d, "WBUILD"), "w") as f:
            f.writelines(rules)
    with open(os.path.join(a.out, "build.ninja"), "w") as f:
        f.writelines(ninja)


if __name__ == "__main__":
    main()
