#!/usr/bin/env bash
# A real project's serial build through `wbuild infer`: Lua 5.4 (bench/lua.sh's sources), its
# 37 commands in the serial order `ninja -t commands` prints them (as `make -n` would), as a
# script. Times, side by side with hyperfine (-j2, 2 cores):
#   - the script run serially (`sh build.sh`, no sandbox),
#   - `wbuild infer build.sh` (the script once, serially, every access observed),
#   - a clean `wbuild build -j2` of the inferred targets,
#   - a no-op `wbuild build` of them against a no-op `ninja` of the same project.
# Checks that every file the inferred build made equals the serial run's, and prints the
# inferred graph's critical path. Writes bench/infer-results.json.
#
#   bench/infer.sh            # RUNS=N (default 5), JOBS=N (default 2), WBUILD=PATH
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
runs=${RUNS:-5}
jobs=${JOBS:-2}
for tool in hyperfine ninja gcc python3 cmp; do
    command -v "$tool" >/dev/null || { echo "infer.sh: needs $tool"; exit 2; }
done
cd "$root"
if [ -z "${WBUILD:-}" ]; then
    cargo build --release -p wbuild-cli
    wbuild="${CARGO_TARGET_DIR:-$root/target}/release/wbuild"
else
    wbuild=$WBUILD
fi
wbuild=$(cd "$(dirname "$wbuild")" && pwd)/$(basename "$wbuild")
work=$(mktemp -d /tmp/wbuild-infer-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

WBUILD="$wbuild" LUA_ONLY_WORKSPACE="$work/lua-src" bash "$here/lua.sh" >/dev/null 2>&1 \
    || { echo "infer.sh: bench/lua.sh could not make the Lua workspace"; exit 1; }
ws="$work/ws"
mkdir -p "$ws/serial"
touch "$ws/wbuild.toml"
for f in "$work/lua-src/lua"/*.c "$work/lua-src/lua"/*.h; do cp "$f" "$ws/serial/"; done
{
    echo "# Lua's build, one command per line, in the order ninja -t commands prints them."
    (cd "$work/lua-src/lua" && ninja -t commands)
} > "$ws/serial/build.sh"
steps=$(grep -vc '^#' "$ws/serial/build.sh")
echo "== Lua: $steps commands"
# ninja's own copy, for the no-op comparison.
cp -a "$work/lua-src/lua" "$work/nj"
ninja -C "$work/nj" >/dev/null

serial="$work/serial-run"
cache="$work/cache"
clean_serial="rm -rf '$serial' && mkdir -p '$serial' && cp '$ws/serial/'*.c '$ws/serial/'*.h '$ws/serial/build.sh' '$serial/'"
echo "== inference"
(cd "$ws" && "$wbuild" --cache-dir "$cache" infer serial/build.sh 2>/dev/null) | tee "$work/infer.txt"
echo "== timings, $runs runs"
(cd "$ws" && hyperfine --runs "$runs" --warmup 1 --export-json "$work/hyperfine.json" \
    --prepare "$clean_serial" -n serial "cd '$serial' && sh build.sh" \
    --prepare "true" -n infer "'$wbuild' --cache-dir '$cache' infer --reset serial/build.sh" \
    --prepare "rm -rf '$cache' '$ws/wbuild-out'" -n inferred-build \
    "'$wbuild' --cache-dir '$cache' build -j $jobs //serial/...")
# No-ops take milliseconds: without a shell, and more runs.
(cd "$ws" && hyperfine -N --runs 30 --warmup 3 --export-json "$work/hyperfine-noop.json" \
    -n wbuild-noop "'$wbuild' --cache-dir '$cache' build -j $jobs //serial/..." \
    -n ninja-noop "ninja -C '$work/nj' -j$jobs")

# Equivalence: every file the inferred build made is the serial run's.
eval "$clean_serial"
(cd "$serial" && sh build.sh)
same=0
for f in $(cd "$ws/wbuild-out/serial" && find . -type f | sort); do
    cmp -s "$ws/wbuild-out/serial/$f" "$serial/$f" \
        || { echo "infer.sh: $f differs from the serial run's"; exit 1; }
    same=$((same + 1))
done
echo "== $same files built, each identical to the serial run's"

python3 - "$work/hyperfine.json" "$work/infer.txt" "$here/infer-results.json" "$steps" "$same" \
    "$work/hyperfine-noop.json" <<'PY'
import json, re, sys
hf, infer_txt, out, steps, same, noop = sys.argv[1:7]
r = {x["command"]: x for x in json.load(open(hf))["results"]}
r.update({x["command"]: x for x in json.load(open(noop))["results"]})
text = open(infer_txt).read()
m = re.search(r"(\d+) targets .*?(\d+) edges, critical path (\d+) targets", text)
doc = {
    "steps": int(steps),
    "targets": int(m.group(1)) if m else None,
    "edges": int(m.group(2)) if m else None,
    "critical_path": int(m.group(3)) if m else None,
    "identical_files": int(same),
    "median_s": {k: v["median"] for k, v in r.items()},
}
med = doc["median_s"]
doc["speedup_over_serial"] = med["serial"] / med["inferred-build"]
doc["noop_over_ninja"] = med["wbuild-noop"] / med["ninja-noop"]
json.dump(doc, open(out, "w"), indent=2)
print(f"serial {med['serial']:.3f} s; infer {med['infer']:.3f} s; inferred build {med['inferred-build']:.3f} s "
      f"({doc['speedup_over_serial']:.2f}x the serial run); no-op {med['wbuild-noop'] * 1000:.1f} ms "
      f"vs ninja {med['ninja-noop'] * 1000:.1f} ms ({doc['noop_over_ninja']:.2f}x); "
      f"critical path {doc['critical_path']} of {doc['targets']} targets")
PY
