#!/bin/sh
# Packs and signs the toolchain bundles examples/c-hello pins, into examples/.toolchains/:
#   wasi-tools.bundle          the WASI tools, built from source (toolchains/wasi-tools)
#   gcc-x86_64-linux.bundle    gcc for x86_64 and arm64 (+ qemu-aarch64-static), captured
#   gcc-aarch64-linux.bundle   from this machine's Debian packages (toolchains/gcc-*)
# signed with examples/.toolchains/example.key (generated on first use; its public half,
# example.pub, is what c-hello's wbuild.toml trusts). Uses $WBUILD, else the debug build of
# wbuild (built if missing). Needs the packages tests/setup.sh installs.
set -eu
here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
root=$(CDPATH= cd -- "$here/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
case $target_dir in /*) ;; *) target_dir="$root/$target_dir" ;; esac
wbuild=${WBUILD:-$target_dir/debug/wbuild}
if [ ! -x "$wbuild" ]; then
    (cd "$root" && cargo build -p wbuild-cli)
fi
out="$here/.toolchains"
mkdir -p "$out"
[ -f "$out/example.key" ] || "$wbuild" toolchain keygen --out "$out/example.key"
for t in wasi-tools gcc-x86_64-linux gcc-aarch64-linux; do
    "$wbuild" toolchain pack "$root/toolchains/$t" --out "$out/$t.bundle"
    "$wbuild" toolchain sign "$out/$t.bundle" --key "$out/example.key"
done
