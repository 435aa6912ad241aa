#!/bin/sh
# Builds the WASI build tools (wb-template, wb-tar, wb-check) for wasm32-wasip1 in release
# mode and installs them into the example workspace wasi-codegen (c-hello takes them from the
# wasi-tools bundle instead: see toolchains.sh):
#   examples/<example>/tools/bin/<name>.wasm        (the wasi_tool modules)
#   examples/<example>/tools/share/wb-template/...  (wb-template's data, presented at /share)
# Both are generated, so they are gitignored. Works from any current directory.
# Needs: cargo and the wasm32-wasip1 target (`rustup target add wasm32-wasip1`).
set -eu

here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
root=$(CDPATH= cd -- "$here/.." && pwd)
tools="wb-template wb-tar wb-check"

cd "$root"
set --
for t in $tools; do set -- "$@" -p "$t"; done
cargo build --release --target wasm32-wasip1 "$@"

target_dir=${CARGO_TARGET_DIR:-$root/target}
case $target_dir in /*) ;; *) target_dir="$root/$target_dir" ;; esac

for example in "$here/wasi-codegen"; do
    name=$(basename "$example")
    mkdir -p "$example/tools/bin"
    for t in $tools; do
        cp "$target_dir/wasm32-wasip1/release/$t.wasm" "$example/tools/bin/$t.wasm.tmp"
        mv "$example/tools/bin/$t.wasm.tmp" "$example/tools/bin/$t.wasm"
        echo "installed $name/tools/bin/$t.wasm"
    done
    # wb-template's data tree. tools/share is its own package (tools/share/WBUILD), so files
    # there are presented at /share/<path relative to tools/share>, e.g.
    # /share/wb-template/c-header.txt.
    rm -rf "$example/tools/share/wb-template"
    cp -R "$root/toolchains/wasi-tools/wb-template/share/wb-template" "$example/tools/share/wb-template"
    echo "installed $name/tools/share/wb-template/"
done
