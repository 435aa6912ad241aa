#!/usr/bin/env python3
"""Writes the seed corpora under tests/fuzz/corpus/ (run from anywhere; idempotent).

wbuild_loader: workspaces made of the examples' WBUILD files and a small coherent one.
reapi_server: command sequences that upload, read, record and fetch (see reapi_server.rs).
store_model: operation sequences (see store_model.rs).
"""
import pathlib
import struct

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SEP = b"\n#####\n"


def write(target, name, data):
    d = HERE / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


# ---- wbuild_loader: wbuild.toml, WBUILD, sub/WBUILD, defs.bzl[, patterns]
COHERENT_ROOT = b'''load("//:defs.bzl", "gen")

wasi_tool(name = "t", src = "tool.wasm", data = glob(["data/**"]), data_dir = "/share")

wasi_run(
    name = "run",
    tool = ":t",
    srcs = ["a.txt", "//sub:in.tmpl"],
    outs = ["out.txt"],
    args = ["$(location a.txt)", "-o", "$@"],
    env = {"K": "$(location //sub:in.tmpl)"},
)

wasi_test(name = "check", tool = ":t", srcs = [":run"], args = ["$(locations :run)"])

filegroup(name = "all", srcs = [":run", "a.txt"] + glob(["*.c"]))

genrule(name = "g", srcs = ["b.c"], outs = ["g.txt"], cmd = "cat $(SRCS) > $@", tools = [])

gen("m")
'''
COHERENT_SUB = b'''cc_library(name = "lib", srcs = ["y.c"], hdrs = ["x.h"], copts = ["-O2"], defines = ["X=1"], includes = ["."])

cc_binary(name = "bin", srcs = ["//:b.c"], deps = [":lib"], linkopts = ["-lm"])

cc_test(name = "test", srcs = ["y.c"], deps = [":lib"])

filegroup(name = "deep", srcs = glob(["deep/**"], exclude = ["deep/none"]))
'''
COHERENT_BZL = b'''def gen(name):
    wasi_run(
        name = name,
        tool = "//:t",
        srcs = ["a.txt"],
        outs = [name + ".out"],
        args = ["$(OUTS)", package_name()],
    )
'''
TOML = b"[build]\nsource_date_epoch = 0\n\n[wasi]\nmemory_limit_mb = 64\ntimeout_secs = 10\n"
write("wbuild_loader", "coherent", SEP.join([TOML, COHERENT_ROOT, COHERENT_SUB, COHERENT_BZL]))
write("wbuild_loader", "coherent-patterns",
      SEP.join([b"", COHERENT_ROOT, COHERENT_SUB, COHERENT_BZL, b"//:run //sub:all //sub/... :check"]))
for i, f in enumerate(sorted((ROOT / "examples").rglob("WBUILD"))):
    toml = (ROOT / "examples" / f.relative_to(ROOT / "examples").parts[0] / "wbuild.toml")
    t = toml.read_bytes() if toml.exists() else b""
    write("wbuild_loader", f"example-{i}", SEP.join([t, f.read_bytes(), COHERENT_SUB]))


# ---- reapi_server: [op][flags][len u16 le][payload]
def field(num, wire, payload):
    key = bytes([num << 3 | wire])
    if wire == 2:
        return key + varint(len(payload)) + payload
    return key + varint(payload)


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def cmd(op, flags, payload):
    return bytes([op, flags]) + struct.pack("<H", len(payload)) + payload


def batch_update(*blobs):
    return b"".join(field(2, 2, field(2, 2, b)) for b in blobs)


output_file = lambda p: field(1, 2, p)
action_result = field(2, 2, output_file(b"o0")) + field(2, 2, output_file(b"o1"))
update_ac = field(1, 2, b"inst") + field(3, 2, action_result)
names = field(1, 2, bytes(range(1, 9)))

upload = cmd(2, 0x01, batch_update(b"hello", b"world", b""))
upload_sha = cmd(2, 0x05, batch_update(b"hello", b"\x00" * 40))
write("reapi_server", "upload-read", upload + cmd(3, 0x01, names) + cmd(3, 0x09, names))
write("reapi_server", "upload-sha256", upload_sha + cmd(3, 0x05, names) + cmd(1, 0x05, names))
write("reapi_server", "record-fetch",
      upload + cmd(6, 0x41, update_ac) + cmd(5, 0x39, names) + cmd(5, 0x01, names))
# A client that uploads a result with inlined bytes (stdout_raw, OutputFile.contents).
inline_result = (field(2, 2, output_file(b"o0") + field(5, 2, b"inlined by the client"))
                 + field(5, 2, b"raw stdout"))
write("reapi_server", "record-inlined",
      upload + cmd(6, 0x41, field(3, 2, inline_result)) + cmd(5, 0x21, names))
write("reapi_server", "record-unauthorized", upload + cmd(6, 0x21, update_ac) + cmd(6, 0x31, update_ac))
write("reapi_server", "bytestream",
      cmd(8, 0x01, b"streamed bytes of a blob") + cmd(8, 0x61, b"in several chunks of data")
      + cmd(7, 0x01, field(1, 2, b"\x05")) + cmd(7, 0x11, field(1, 2, b"\x06") + field(2, 0, 3) + field(3, 0, 4))
      + cmd(9, 0x01, field(1, 2, b"\x05")))
write("reapi_server", "bytestream-raw",
      cmd(8, 0x02, b"\x00\x00\x00\x00\x05" + field(4, 0, 1) + field(3, 0, 0)))
write("reapi_server", "tree", upload + cmd(4, 0x01, names) + cmd(0, 0, b""))

# ---- store_model: [op][arg] pairs (ops: see Run::step)
put = lambda i: bytes([0, i])
seq = b"".join(put(i) for i in range(1, 6))
write("store_model", "basic", seq + bytes([3, 0x21, 3, 0x42, 5, 1, 7, 0, 6, 1, 8, 0, 5, 2, 11, 0]))
write("store_model", "fault-put", seq + bytes([7, 0, 9, 3, 3, 0x21, 5, 1, 8, 0, 5, 1]))
write("store_model", "fault-flush", seq + bytes([3, 0x21, 3, 0x63, 9, 0x02, 7, 0, 5, 1]))
write("store_model", "fault-reopen", seq + bytes([3, 0x21, 9, 0x25, 8, 0, 5, 1]))
write("store_model", "fault-eof", seq + bytes([3, 0x21, 7, 0, 9, 0x81, 5, 1, 11, 0]))
write("store_model", "dangling", seq + bytes([3, 0x23, 10, 0, 5, 3, 11, 0, 9, 4, 11, 1]))
