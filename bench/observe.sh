#!/usr/bin/env bash
# What observing native actions costs: clean builds of the suite's C graph (bench/gen.py
# --kind c, ~1,000 actions) and of Lua 5.4 (bench/lua.sh's workspace), each with wbuild as it
# runs by default (every file access of every sandboxed action observed), with
# `--sandbox=unobserved` (the same sandbox, no observation) and with ninja (no sandbox),
# timed side by side with hyperfine. Also prints, from one observed build's --events file, how
# many accesses the actions' logs hold. Writes bench/observe-results.json.
#
#   bench/observe.sh            # RUNS=N (default 5), JOBS=N (default 2), ACTIONS=N (1000)
#
# Needs hyperfine, ninja, gcc, python3. Builds wbuild in release mode unless WBUILD is set.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
runs=${RUNS:-5}
jobs=${JOBS:-2}
actions=${ACTIONS:-1000}
for tool in hyperfine ninja gcc python3; do
    command -v "$tool" >/dev/null || { echo "observe.sh: needs $tool"; exit 2; }
done
cd "$root"
if [ -z "${WBUILD:-}" ]; then
    cargo build --release -p wbuild-cli
    wbuild="${CARGO_TARGET_DIR:-$root/target}/release/wbuild"
else
    wbuild=$WBUILD
fi
wbuild=$(cd "$(dirname "$wbuild")" && pwd)/$(basename "$wbuild")
work=$(mktemp -d /tmp/wbuild-observe-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

# --- the workspaces ----------------------------------------------------------------------------
python3 "$here/gen.py" "$work/c" --actions "$actions" --kind c | tail -1
WBUILD="$wbuild" LUA_ONLY_WORKSPACE="$work/lua" bash "$here/lua.sh" >/dev/null 2>&1 || true
lua_ws=""
if [ -f "$work/lua/wbuild.toml" ]; then
    lua_ws="$work/lua"
    cp -a "$lua_ws" "$work/lua-nj"   # ninja's outputs must not land in wbuild's source tree
fi

measure() {   # NAME DIR TARGETS NINJA_DIR
    local name=$1 dir=$2 targets=$3 nj=$4 cache="$work/cache-$1"
    echo "== $name: clean builds, -j$jobs, $runs runs"
    (cd "$dir" && hyperfine --runs "$runs" --warmup 1 --export-json "$work/$name.json" \
        --prepare "rm -rf '$cache' '$dir/wbuild-out'" -n observed \
        "'$wbuild' --cache-dir '$cache' build -j $jobs $targets" \
        --prepare "rm -rf '$cache' '$dir/wbuild-out'" -n unobserved \
        "'$wbuild' --cache-dir '$cache' build -j $jobs --sandbox=unobserved $targets" \
        --prepare "ninja -C '$nj' -t clean >/dev/null" -n ninja "ninja -C '$nj' -j$jobs")
    rm -rf "$cache" "$dir/wbuild-out"
    (cd "$dir" && "$wbuild" --cache-dir "$cache" build -j "$jobs" --events "$work/$name.events" \
        $targets >/dev/null 2>&1)
}
measure c "$work/c" "//..." "$work/c"
if [ -n "$lua_ws" ]; then
    measure lua "$lua_ws" "//lua:lua //lua:luac" "$work/lua-nj/lua"
else
    echo "observe.sh: the Lua workspace could not be made (bench/lua.sh); C graph only"
fi

python3 - "$work" "$here/observe-results.json" "$runs" "$jobs" <<'PY'
import json, os, statistics, sys
work, out, runs, jobs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
doc = {"runs": runs, "jobs": jobs, "graphs": {}}
for name in ("c", "lua"):
    path = os.path.join(work, f"{name}.json")
    if not os.path.exists(path):
        continue
    r = {x["command"]: x for x in json.load(open(path))["results"]}
    ev = [json.loads(l) for l in open(os.path.join(work, f"{name}.events")) if l.strip()]
    acts = [e for e in ev if e.get("type") == "action" and e.get("status") == "executed"]
    logged = [len(e.get("accesses") or []) for e in acts]
    o, u, n = (r[k]["median"] for k in ("observed", "unobserved", "ninja"))
    doc["graphs"][name] = {
        "observed_s": o, "unobserved_s": u, "ninja_s": n,
        "observation_cost_pct": (o / u - 1) * 100,
        "actions_executed": len(acts),
        "accesses_per_action_median": statistics.median(logged) if logged else 0,
    }
    print(f"{name}: observed {o:.3f} s, unobserved {u:.3f} s ({(o / u - 1) * 100:+.1f}%), "
          f"ninja {n:.3f} s; {len(acts)} actions, median {doc['graphs'][name]['accesses_per_action_median']} "
          "distinct accesses each")
json.dump(doc, open(out, "w"), indent=2)
PY
