#!/bin/sh
# Sets up wbuild on a fresh machine and runs it on examples/wasi-codegen:
#   1. installs the wasm32-wasip1 Rust target,
#   2. builds the WASI tools from source into the example (install-tools.sh),
#   3. builds the `wbuild` binary,
#   4. runs a clean build, a no-op build, the tests, and prints an output path.
# The cache goes to $WBUILD_CACHE (default ~/.cache/wbuild). Works from any directory.
set -eu
here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
root=$(CDPATH= cd -- "$here/.." && pwd)

rustup target add wasm32-wasip1
"$here/install-tools.sh"
cd "$root"
cargo build -p wbuild-cli
target_dir=${CARGO_TARGET_DIR:-$root/target}
case $target_dir in /*) ;; *) target_dir="$root/$target_dir" ;; esac
wbuild="$target_dir/debug/wbuild"

cd "$here/wasi-codegen"
echo "\$ wbuild build //...        # tools run in wasmtime"
"$wbuild" build //...
echo "\$ wbuild build //...        # no-op: everything cached"
"$wbuild" build //...
echo "\$ wbuild test //...         # wasi_test targets"
"$wbuild" test //...
echo "\$ wbuild outputs //gen:header"
"$wbuild" outputs //gen:header
