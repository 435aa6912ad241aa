#!/usr/bin/env bash
# wbuild benchmarks against ninja on the same generated graphs. Prints a table and writes
# bench/results.json. Needs hyperfine and ninja (Debian: hyperfine, ninja-build) and the
# wasm32-wasip1 target; builds wbuild and the wb-tar tool in release mode.
#
#   bench/run.sh [SIZES...]      default sizes: 1000 10000
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000 10000)
command -v hyperfine >/dev/null || { echo "install hyperfine (apt-get install hyperfine)"; exit 2; }
command -v ninja >/dev/null || { echo "install ninja (apt-get install ninja-build)"; exit 2; }

cd "$root"
cargo build --release -p wbuild-cli
cargo build --release --target wasm32-wasip1 -p wb-tar -p wb-template
target=${CARGO_TARGET_DIR:-$root/target}
wbuild="$target/release/wbuild"
tar_wasm="$target/wasm32-wasip1/release/wb-tar.wasm"
work=$(mktemp -d /tmp/wbuild-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
json="$here/results.json"
echo "[" > "$json.tmp"
sep=""

for n in "${sizes[@]}"; do
    ws="$work/g$n"
    python3 "$here/gen.py" "$ws" --actions "$n" --tool "$tar_wasm"
    cache="$work/cache$n"
    (cd "$ws" && "$wbuild" --cache-dir "$cache" build -j "$(nproc)" >/dev/null 2>&1)
    (cd "$ws" && ninja -j "$(nproc)" >/dev/null)
    # Let the files settle out of the stat cache's racy window, then warm both.
    sleep 2
    (cd "$ws" && "$wbuild" --cache-dir "$cache" build >/dev/null 2>&1 && ninja >/dev/null)
    echo "== no-op build, $n actions"
    (cd "$ws" && hyperfine -N --warmup 3 --runs 20 --export-json "$work/noop$n.json" \
        -n "wbuild $n" "$wbuild --cache-dir $cache build" \
        -n "ninja $n" "ninja")
    printf '%s{"scenario":"noop","actions":%s,"results":%s}' "$sep" "$n" \
        "$(python3 -c 'import json,sys; print(json.dumps([{"command":r["command"],"median_s":r["median"],"mean_s":r["mean"]} for r in json.load(open(sys.argv[1]))["results"]]))' "$work/noop$n.json")" >> "$json.tmp"
    sep=","
done

# Per-action overhead of a trivial WASI tool with a warm module cache, against spawning the
# same tool (compiled natively) once per action.
n=1000
ws="$work/trivial"
native_tar="$target/release/wb-tar"
cargo build --release -p wb-tar
python3 "$here/gen.py" "$ws" --actions $n --fan-in 0 --tool "$tar_wasm" \
    --ninja-command "$native_tar -o \$out \$in"
cache="$work/cache-trivial"
(cd "$ws" && "$wbuild" --cache-dir "$cache" build -j1 >/dev/null 2>&1)   # compiles the module once
labels=$(cd "$ws" && for p in $(seq 0 $((n / 100 - 1))); do for k in $(seq 0 99); do echo "//lib$p:a$k"; done; done)
echo "== $n trivial WASI actions, -j1, warm module cache (cache entries dropped before each run)"
(cd "$ws" && hyperfine -N --runs 5 --export-json "$work/trivial.json" \
    --prepare "$wbuild --cache-dir $cache cache invalidate $(echo $labels | tr '\n' ' ')" \
    -n "wbuild $n trivial actions" "$wbuild --cache-dir $cache build -j1")
(cd "$ws" && hyperfine -N --runs 5 --export-json "$work/native.json" \
    --prepare "rm -rf out" \
    -n "native wb-tar spawned by ninja x $n" "ninja -j1")
printf ',{"scenario":"trivial_actions","actions":%s,"results":%s}' "$n" \
    "$(python3 -c 'import json,sys; print(json.dumps([{"command":r["command"],"median_s":r["median"]} for f in sys.argv[1:] for r in json.load(open(f))["results"]]))' "$work/trivial.json" "$work/native.json")" >> "$json.tmp"
echo "]" >> "$json.tmp"
mv "$json.tmp" "$json"
echo "wrote $json"
