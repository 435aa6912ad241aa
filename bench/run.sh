#!/usr/bin/env bash
# wbuild's benchmark suite: wbuild against ninja and make (and Bazel, where `bazel` is on the
# PATH) on the same generated graphs, and on Lua 5.4 (bench/lua.sh). Prints a table, writes
# bench/results.json (every run) and regenerates the suite section of docs/BENCHMARKS.md.
#
#   bench/run.sh
#
# Environment (defaults in brackets):
#   C_SIZES="1000"            sizes of the C graph (real gcc compiles): clean, no-op, edit, cached, load
#   WASI_SIZES="1000 10000"   sizes of the WASI graph (wb-template runs): the same plus load
#   LOAD_SIZES="100000"       WASI graph sizes measured for load and no-op only
#   RUNS=3                    interleaved runs per scenario (no-op, load: at least 5; edits: 7)
#   JOBS=$(nproc)             parallelism of every tool
#   LUA=1                     also run bench/lua.sh (wbuild, make and ninja on Lua 5.4)
#   KEEP=1                    keep the generated workspaces under the work directory
#   BAZEL=bazel               the Bazel of the C graphs' Bazel columns (default: `bazel` on the
#                             PATH, if any); BAZEL=0 leaves them out
#   TIMEOUT=3600              seconds one measured run may take before it is killed
#   DROP_DENTRIES=1           as root, free the kernel's unused dentries first (see below)
#
# Dentries: every path lookup walks a chain of the kernel's dentry hash table. Builds leave
# dentries behind (negative ones for every probe of a missing path), and on a machine with a
# small table, a day of builds made every stat several times slower, for every tool and by
# more for the ones making more lookups. So, where it may (as root), the suite starts from an
# empty dentry cache, and every row records the dentries held before and after.
#
# Bazel columns: install Debian's Bazel (`apt-get install bazel-bootstrap`, Bazel 4.2.3; it
# builds the generated workspaces without network access) or put any `bazel` on the PATH. The C
# graphs then get `bazel-linux-sandbox` (each action in Bazel's namespace sandbox; labelled
# `bazel-processwrapper-sandbox` where linux-sandbox cannot run here) and `bazel-local`
# (--spawn_strategy=local). See bench/suite.py for how the scenarios map onto Bazel.
#
# Needs ninja, make, gcc, GNU time, hyperfine (for lua.sh) and python3 (Debian: ninja-build,
# make, gcc, time, hyperfine) and the wasm32-wasip1 target; builds wbuild and wb-template in release mode. Run it
# on an otherwise idle machine: the tools' runs are interleaved, but load still adds noise.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
for tool in ninja make gcc python3; do
    command -v "$tool" >/dev/null || { echo "run.sh: needs $tool (apt-get install ninja-build make gcc python3)"; exit 2; }
done

cd "$root"
cargo build --release -p wbuild-cli -p wb-template
cargo build --release --target wasm32-wasip1 -p wb-template
target=${CARGO_TARGET_DIR:-$root/target}
if [ "${DROP_DENTRIES:-1}" = 1 ] && [ -w /proc/sys/vm/drop_caches ]; then
    sync
    echo 2 > /proc/sys/vm/drop_caches
fi
work=$(mktemp -d /tmp/wbuild-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

lua_json=""
if [ "${LUA:-1}" = 1 ]; then
    WBUILD="$target/release/wbuild" RUNS="${RUNS:-3}" JOBS="${JOBS:-$(nproc)}" "$here/lua.sh"
    lua_json="$here/lua-results.json"
fi

bazel_args=()
case "${BAZEL:-}" in
    0) bazel_args=(--no-bazel) ;;
    "") ;;
    *) bazel_args=(--bazel "$BAZEL") ;;
esac
# shellcheck disable=SC2086  # the size lists are meant to split
python3 "$here/suite.py" --wbuild "$target/release/wbuild" \
    --wasm-dir "$target/wasm32-wasip1/release" --native-dir "$target/release" \
    --work "$work" --runs "${RUNS:-3}" --jobs "${JOBS:-$(nproc)}" \
    --c-sizes ${C_SIZES:-1000} --wasi-sizes ${WASI_SIZES:-1000 10000} \
    --load-sizes ${LOAD_SIZES:-100000} \
    --timeout "${TIMEOUT:-3600}" \
    ${lua_json:+--lua-json "$lua_json"} ${KEEP:+--keep} "${bazel_args[@]}"
