#!/usr/bin/env bash
# Installs what the test suite needs besides cargo, on a fresh Debian machine:
#   - gcc/g++ and the arm64 cross toolchain plus qemu-user (native-action tests),
#   - minisign (signatures are checked with it too) and docker-registry (a real OCI registry
#     the toolchain-bundle tests publish to and fetch from; openssl and apache2-utils' htpasswd
#     set up its TLS and Basic-auth variants),
#   - the wasm32-wasip1 Rust target (guest programs and WASI tools are built from source),
#   - BuildGrid (PyPI buildgrid==0.4.4) in a venv at target/buildgrid-venv: the real REAPI
#     server the remote-cache tests run against (or point WBUILD_BGD at another `bgd`).
# Idempotent: what is already there is kept.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

need=()
for pair in gcc:gcc g++:g++ aarch64-linux-gnu-gcc:gcc-aarch64-linux-gnu \
    aarch64-linux-gnu-g++:g++-aarch64-linux-gnu qemu-aarch64-static:qemu-user-static \
    minisign:minisign docker-registry:docker-registry openssl:openssl htpasswd:apache2-utils; do
    command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi

rustup target add wasm32-wasip1

venv="$root/target/buildgrid-venv"
if [ ! -x "$venv/bin/bgd" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q buildgrid==0.4.4
fi
"$venv/bin/bgd" --help >/dev/null
