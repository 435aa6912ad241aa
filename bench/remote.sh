#!/usr/bin/env bash
# The remote cache on the examples: a fully cached build of examples/wasi-codegen and
# examples/c-hello from an empty local cache through a REAPI server (`wbuild serve`, BLAKE3;
# and BuildGrid, SHA-256, when tests/setup.sh has installed it), against a rebuild from a warm
# local cache. Reports the RPCs each build makes (from the build_finished event) and the wall
# times (hyperfine), and writes bench/remote-results.json.
#
#   bench/remote.sh
#
# Environment: WBUILD=PATH (default: target/release/wbuild, built unless SKIP_CARGO=1),
# RUNS=N (default 10). Needs hyperfine, python3, and the wasm32-wasip1 target.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
runs=${RUNS:-10}
command -v hyperfine >/dev/null || { echo "remote.sh: needs hyperfine"; exit 2; }
cd "$root"
if [ -z "${WBUILD:-}" ] && [ -z "${SKIP_CARGO:-}" ]; then
    cargo build --release -p wbuild-cli
fi
wbuild=${WBUILD:-${CARGO_TARGET_DIR:-$root/target}/release/wbuild}
wbuild=$(cd "$(dirname "$wbuild")" && pwd)/$(basename "$wbuild")
examples/install-tools.sh >/dev/null
[ -f examples/.toolchains/gcc-aarch64-linux.bundle ] || WBUILD="$wbuild" examples/toolchains.sh >/dev/null

work=$(mktemp -d /tmp/wbuild-remote-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
for ex in wasi-codegen c-hello; do
    cp -a "examples/$ex" "$work/$ex"
    rm -rf "$work/$ex/wbuild-out" "$work/$ex/wbuild.lock"
done
ln -s "$root/examples/.toolchains" "$work/.toolchains"   # the bundles c-hello pins

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 600); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "remote.sh: nothing listens on port $1"; exit 1
}

servers=()
port=$(free_port)
"$wbuild" --cache-dir "$work/serve-cache" serve --listen "127.0.0.1:$port" 2>/dev/null &
pids+=($!)
wait_port "$port"
servers+=("wbuild-serve grpc://127.0.0.1:$port")
bgd="$root/target/buildgrid-venv/bin/bgd"
if [ -x "$bgd" ]; then
    port=$(free_port)
    mkdir -p "$work/bgd-cas"
    sed "s/@PORT@/$port/" tests/reapi/buildgrid-cache.yml > "$work/bgd.yml"
    BGD_CAS_DIR="$work/bgd-cas" "$bgd" server start "$work/bgd.yml" > "$work/bgd.log" 2>&1 &
    pids+=($!)
    wait_port "$port"
    servers+=("buildgrid grpc://127.0.0.1:$port")
fi

build_all() {   # CACHE EXTRA-ARGS...: build both examples, print the summed build_finished
    local cache=$1; shift
    for ex in wasi-codegen c-hello; do
        (cd "$work/$ex" && rm -rf wbuild-out && "$wbuild" --cache-dir "$cache" build --events "$work/ev-$ex.json" "$@" //... >/dev/null 2>&1)
    done
    python3 - "$work/ev-wasi-codegen.json" "$work/ev-c-hello.json" <<'PY'
import json, sys
tot = {}
for f in sys.argv[1:]:
    fin = [json.loads(l) for l in open(f) if '"build_finished"' in l][-1]
    for k in ("executed", "cached", "remote_cached", "remote_rpcs", "duration_ms"):
        tot[k] = tot.get(k, 0) + (fin.get(k) or 0)
print(json.dumps(tot))
PY
}

json="$here/remote-results.json"
echo "[" > "$json.tmp"
sep=""
for s in "${servers[@]}"; do
    name=${s%% *}; url=${s#* }
    echo "== $name ($url)"
    populate=$(build_all "$work/cache-populate-$name" --remote "$url")
    echo "   populating build: $populate"
    # "Empty" = no action cache, CAS or analysis; the pinned toolchain bundles c-hello uses
    # stay installed (installing them is not what the remote is measured on).
    empty="find $work/cache-empty -mindepth 1 -maxdepth 1 ! -name toolchains -exec rm -rf {} +"
    fetched=$(eval "$empty" 2>/dev/null; build_all "$work/cache-empty" --remote "$url")
    fetched=$(eval "$empty"; build_all "$work/cache-empty" --remote "$url")
    echo "   from an empty local cache: $fetched"
    local_warm="$work/cache-populate-$name"
    cmd_remote="$empty; for ex in wasi-codegen c-hello; do (cd $work/\$ex && rm -rf wbuild-out && $wbuild --cache-dir $work/cache-empty build --remote $url //... >/dev/null 2>&1); done"
    cmd_local="for ex in wasi-codegen c-hello; do (cd $work/\$ex && rm -rf wbuild-out && $wbuild --cache-dir $local_warm build //... >/dev/null 2>&1); done"
    hyperfine --runs "$runs" --warmup 1 --export-json "$work/h-$name.json" \
        -n "$name: empty local cache, all from the remote" "bash -c '$cmd_remote'" \
        -n "local cache warm (no remote)" "bash -c '$cmd_local'"
    printf '%s{"server":"%s","populate":%s,"from_remote":%s,"timing":%s}' "$sep" "$name" "$populate" "$fetched" \
        "$(python3 -c 'import json,sys; print(json.dumps([{"command":r["command"],"median_s":r["median"],"mean_s":r["mean"],"stddev_s":r["stddev"]} for r in json.load(open(sys.argv[1]))["results"]]))' "$work/h-$name.json")" >> "$json.tmp"
    sep=","
done
echo "]" >> "$json.tmp"
mv "$json.tmp" "$json"
echo "wrote $json"
