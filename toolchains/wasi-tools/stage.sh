#!/bin/sh
# Builds the WASI tools (release, wasm32-wasip1) and stages the bundle tree in dist/:
#   dist/bin/<tool>.wasm               the modules (entry points)
#   dist/wb-template/...               wb-template's data: a wasi_tool with
#                                      data = ["@wasi-tools//wb-template"] sees it at
#                                      /share/wb-template/... (data_dir's default, /share)
# Run by `wbuild toolchain pack toolchains/wasi-tools` (the definition's `prepare`).
set -eu
here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
root=$(CDPATH= cd -- "$here/../.." && pwd)
tools="wb-template wb-tar wb-check"
cd "$root"
set --
for t in $tools; do set -- "$@" -p "$t"; done
cargo build --quiet --release --target wasm32-wasip1 "$@"
target_dir=${CARGO_TARGET_DIR:-$root/target}
case $target_dir in /*) ;; *) target_dir="$root/$target_dir" ;; esac
rm -rf "$here/dist"
mkdir -p "$here/dist/bin"
for t in $tools; do
    cp "$target_dir/wasm32-wasip1/release/$t.wasm" "$here/dist/bin/$t.wasm"
    chmod 0644 "$here/dist/bin/$t.wasm"
done
cp -R "$here/wb-template/share/wb-template" "$here/dist/wb-template"
