#!/usr/bin/env bash
# A real C project through wbuild's native sandbox: builds Lua 5.4 (the sources vendored by the
# `lua-src` crate, 32 library translation units plus lua.c and luac.c) with
# `wbuild build -j 2 //lua:lua //lua:luac`, with `make -j2 lua luac` and with `ninja` (no
# sandbox, the same gcc flags), all from clean, timed side by side with hyperfine. Prints a table and writes
# bench/lua-results.json; also reports per-action wall times from one build's --events file.
# Needs hyperfine, make, ninja, gcc, curl and python3 (Debian: hyperfine, make, ninja-build,
# gcc, curl); builds
# wbuild in release mode unless told otherwise. Run it on an otherwise idle machine: hyperfine
# times the tools one after the other, so background load skews the comparison.
#
#   bench/lua.sh
#
# Environment:
#   WBUILD=PATH            the wbuild binary to time (default: target/release/wbuild)
#   SKIP_CARGO=1           do not run cargo (WBUILD must then exist)
#   RUNS=N                 hyperfine runs per command (default 5, plus one warmup)
#   JOBS=N                 parallelism for both tools (default 2)
#   LUA_SRC_VERSION=V      the lua-src crate version (default 548.1.2: Lua 5.4.8), or
#                          `latest-5.4` for the newest 54x release in the crates.io index
#   LUA_ONLY_WORKSPACE=DIR write the generated workspace to DIR and stop (bench/observe.sh)
#   LUA_SRC_DIR=DIR        use this Lua source tree instead (e.g. an unpacked lua-5.4.x tarball,
#                          whose own lua.c, luac.c and src/Makefile object lists are then used)
#
# The crate is downloaded once to ${XDG_CACHE_HOME:-$HOME/.cache}/wbuild-bench/ and checked
# against its sha256. It ships only the library, so bench/lua_gen.py writes small stand-ins for
# lua.c and luac.c (public API only) unless LUA_SRC_DIR provides the real ones.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
runs=${RUNS:-5}
jobs=${JOBS:-2}
for tool in hyperfine make ninja gcc curl python3; do
    command -v "$tool" >/dev/null || { echo "lua.sh: needs $tool (apt-get install $tool)"; exit 2; }
done

cd "$root"
if [ -n "${WBUILD:-}" ]; then
    wbuild=$WBUILD
else
    wbuild="${CARGO_TARGET_DIR:-$root/target}/release/wbuild"
fi
if [ -z "${SKIP_CARGO:-}" ] && [ -z "${WBUILD:-}" ]; then
    cargo build --release -p wbuild-cli
fi
[ -x "$wbuild" ] || { echo "lua.sh: no wbuild binary at $wbuild"; exit 2; }
wbuild=$(cd "$(dirname "$wbuild")" && pwd)/$(basename "$wbuild")

work=$(mktemp -d /tmp/wbuild-lua-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

# --- Lua sources -------------------------------------------------------------------------------
pinned_version=548.1.2
pinned_sha256=bdc4e1aff422ad5f08cffb4719603dcdbc2be2307f4c1510d7aab74b7fa88ca8
crate_version=""
if [ -n "${LUA_SRC_DIR:-}" ]; then
    src=$LUA_SRC_DIR
else
    crate_version=${LUA_SRC_VERSION:-$pinned_version}
    index_url=https://index.crates.io/lu/a-/lua-src   # the sparse index cargo reads
    ua="wbuild-bench/1 (bench/lua.sh)"
    if [ "$crate_version" = latest-5.4 ]; then
        crate_version=$(curl -fsSL -A "$ua" "$index_url" | python3 -c '
import json, sys
vs = [json.loads(l) for l in sys.stdin if l.strip()]
ok = [v["vers"] for v in vs if not v["yanked"] and "+" not in v["vers"] and v["vers"].startswith("54")]
key = lambda s: tuple(int(p) for p in s.split("."))
print(max(ok, key=key))')
    fi
    cache_dl="${XDG_CACHE_HOME:-$HOME/.cache}/wbuild-bench"
    crate="$cache_dl/lua-src-$crate_version.crate"
    mkdir -p "$cache_dl"
    if [ "$crate_version" = "$pinned_version" ]; then
        want=$pinned_sha256
    else
        want=$(curl -fsSL -A "$ua" "$index_url" | python3 -c '
import json, sys
for l in sys.stdin:
    v = json.loads(l)
    if v["vers"] == sys.argv[1]:
        print(v["cksum"])' "$crate_version")
        [ -n "$want" ] || { echo "lua.sh: lua-src $crate_version is not in the crates.io index"; exit 2; }
    fi
    if [ ! -f "$crate" ] || [ "$(sha256sum "$crate" | cut -d' ' -f1)" != "$want" ]; then
        echo "== downloading lua-src $crate_version"
        curl -fsSL -A "$ua" -o "$crate.tmp" \
            "https://static.crates.io/crates/lua-src/lua-src-$crate_version.crate"
        got=$(sha256sum "$crate.tmp" | cut -d' ' -f1)
        [ "$got" = "$want" ] || { echo "lua.sh: lua-src-$crate_version.crate: sha256 $got, expected $want"; exit 1; }
        mv "$crate.tmp" "$crate"
    fi
    tar xzf "$crate" -C "$work"
    src=$(ls -d "$work/lua-src-$crate_version"/lua-5.4.* | sort -V | tail -1)
fi

ws="$work/ws"
facts=$(python3 "$here/lua_gen.py" "$src" "$ws" | tee /dev/stderr | tail -1)
eval "$facts"   # tus= lib_tus= lua_version= standins=
echo "== Lua $lua_version: $tus translation units ($lib_tus in the library)"
# LUA_ONLY_WORKSPACE=DIR (for bench/observe.sh): copy the workspace to DIR and stop.
if [ -n "${LUA_ONLY_WORKSPACE:-}" ]; then
    cp -a "$ws" "$LUA_ONLY_WORKSPACE"
    exit 0
fi
# make gets its own copy: its objects and binaries (lua/lua, lua/luac) must not land in wbuild's
# source tree, where wbuild rejects a source file named like a declared output.
mk="$work/mk"
cp -a "$ws" "$mk"
nj="$work/nj"
cp -a "$ws" "$nj"

cache="$work/cache"
wb() { (cd "$ws" && "$wbuild" --cache-dir "$cache" "$@"); }

# --- one verification build with each tool ----------------------------------------------------
check_lua() {   # DIR: the directory holding lua and luac
    local v
    v=$("$1/lua" -v)
    case "$v" in "Lua $lua_version"*) ;; *) echo "lua.sh: $1/lua -v printed: $v"; exit 1 ;; esac
    echo "   $1/lua -v: $v"
    printf 'local t = {} for i = 1, 10 do t[#t + 1] = i * i end\nprint(_VERSION, table.concat(t, ","), ("%%5.2f"):format(math.pi), utf8.char(76, 117, 97))\n' > "$work/check.lua"
    "$1/luac" -o "$work/check.luac" "$work/check.lua"
    local a b
    a=$("$1/lua" "$work/check.lua")
    b=$("$1/lua" "$work/check.luac")
    local want="Lua ${lua_version%.*}"$'\t'"1,4,9,16,25,36,49,64,81,100"$'\t'" 3.14"$'\t'"Lua"
    [ "$a" = "$b" ] && [ "$a" = "$want" ] \
        || { echo "lua.sh: $1/lua ran check.lua wrong: '$a' / '$b'"; exit 1; }
    echo "   script and luac bytecode: $a"
}
echo "== verification build: wbuild"
if ! wb build -j "$jobs" //lua:lua //lua:luac > "$work/wbuild-verify.log" 2>&1; then
    cat "$work/wbuild-verify.log"
    echo "lua.sh: the wbuild build failed"
    exit 1
fi
tail -n 3 "$work/wbuild-verify.log"
check_lua "$ws/wbuild-out/lua"
echo "== verification build: make"
make -s -C "$mk/lua" -j"$jobs" lua luac
check_lua "$mk/lua"
make -s -C "$mk/lua" clean
echo "== verification build: ninja"
ninja -C "$nj/lua" -j"$jobs" >/dev/null
check_lua "$nj/lua"

# --- timed clean builds -----------------------------------------------------------------------
# Deleting the cache dir drops the CAS, the action cache, the up-to-date snapshot and the cached
# analysis, so every action executes; wbuild-out goes too.
echo "== clean build of lua + luac, -j$jobs, $runs runs"
wbuild_cmd="'$wbuild' --cache-dir '$cache' build -j $jobs //lua:lua //lua:luac"
make_cmd="make -s -C '$mk/lua' -j$jobs lua luac"
ninja_cmd="ninja -C '$nj/lua' -j$jobs"
load_before=$(cut -d' ' -f1 /proc/loadavg)
(cd "$ws" && hyperfine --runs "$runs" --warmup 1 --export-json "$work/hyperfine.json" \
    --prepare "rm -rf '$cache' '$ws/wbuild-out'" -n wbuild "$wbuild_cmd" \
    --prepare "make -s -C '$mk/lua' clean" -n make "$make_cmd" \
    --prepare "ninja -C '$nj/lua' -t clean" -n ninja "$ninja_cmd")

# --- per-action wall time from one clean build's events ---------------------------------------
rm -rf "$cache" "$ws/wbuild-out"
wb build -j "$jobs" --events "$work/events.jsonl" //lua:lua //lua:luac > "$work/wbuild-events.log" 2>&1 \
    || { cat "$work/wbuild-events.log"; echo "lua.sh: the wbuild build with --events failed"; exit 1; }

python3 - "$work/hyperfine.json" "$work/events.jsonl" "$here/lua-results.json" \
    "$wbuild_cmd" "$make_cmd" "$load_before" "$ninja_cmd" <<EOF
import json, os, statistics, sys
hf, events_path, out, wbuild_cmd, make_cmd, load_before, ninja_cmd = sys.argv[1:8]
commands = {"wbuild": wbuild_cmd, "make": make_cmd, "ninja": ninja_cmd}
results = {r["command"]: r for r in json.load(open(hf))["results"]}
w, m, n = results["wbuild"], results["make"], results["ninja"]
events = [json.loads(l) for l in open(events_path) if l.strip()]
actions = [e for e in events if e.get("type") == "action"]
executed = [e for e in actions if e["status"] == "executed"]
finished = next((e for e in events if e.get("type") == "build_finished"), {})
by_mnemonic = {}
for e in executed:
    by_mnemonic.setdefault(e["mnemonic"], []).append(e["duration_ms"])

overhead = (w["median"] / m["median"] - 1) * 100
print()
print(f"Lua $lua_version, $tus translation units, clean build of lua + luac, -j$jobs ($runs runs)")
print(f"{'':10} {'median s':>9} {'mean s':>9} {'stddev s':>9} {'user s':>8} {'sys s':>8}")
for name, r in (("wbuild", w), ("make", m), ("ninja", n)):
    print(f"{name:10} {r['median']:9.3f} {r['mean']:9.3f} {r['stddev'] or 0:9.3f} {r['user']:8.2f} {r['system']:8.2f}")
print(f"wbuild over make: {overhead:+.1f}% (median); over ninja: {(w['median'] / n['median'] - 1) * 100:+.1f}%")
load_after = os.getloadavg()[0]
if load_after > 1.5 * os.cpu_count():
    print(f"warning: 1-minute load average {load_after:.1f} on {os.cpu_count()} cores after the runs: "
          "something else was running; the times are not comparable")
print()
print(f"one clean wbuild build with --events: {len(executed)} actions executed "
      f"({len(actions) - len(executed)} not), build {finished.get('duration_ms', 0)} ms, "
      f"{finished.get('files_hashed', 0)} files hashed")
print(f"{'mnemonic':12} {'executed':>8} {'median ms':>10} {'max ms':>8}")
for mn, ds in sorted(by_mnemonic.items()):
    print(f"{mn:12} {len(ds):8} {statistics.median(ds):10.0f} {max(ds):8}")
all_ms = [e["duration_ms"] for e in executed]
if all_ms:
    print(f"{'all':12} {len(all_ms):8} {statistics.median(all_ms):10.0f} {max(all_ms):8}")

doc = {
    "scenario": "lua_clean_build",
    "lua_version": "$lua_version",
    "lua_src_crate": "$crate_version" or None,
    "lua_c_luac_c_standins": bool($standins),
    "translation_units": $tus,
    "library_translation_units": $lib_tus,
    "jobs": $jobs,
    "runs": $runs,
    "wbuild_binary": "$wbuild",
    "nproc": os.cpu_count(),
    "loadavg_1m": {"before": float(load_before), "after": load_after},
    "results": [
        {"tool": name, "command": commands[name], "median_s": r["median"], "mean_s": r["mean"],
         "stddev_s": r["stddev"], "min_s": r["min"], "max_s": r["max"], "user_s": r["user"],
         "system_s": r["system"], "times_s": r["times"]}
        for name, r in (("wbuild", w), ("make", m), ("ninja", n))
    ],
    "wbuild_overhead_pct_median_vs_ninja": (w["median"] / n["median"] - 1) * 100,
    "wbuild_overhead_pct_median": overhead,
    "events_build": {
        "executed_actions": len(executed),
        "duration_ms": finished.get("duration_ms"),
        "files_hashed": finished.get("files_hashed"),
        "median_action_ms": statistics.median(all_ms) if all_ms else None,
        "by_mnemonic": {mn: {"executed": len(ds), "median_ms": statistics.median(ds), "max_ms": max(ds)}
                        for mn, ds in sorted(by_mnemonic.items())},
    },
}
with open(out, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
print(f"\nwrote {out}")
EOF
