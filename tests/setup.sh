#!/usr/bin/env bash
# Installs what the test suite needs besides cargo, on a fresh Debian machine:
#   - gcc/g++ and the arm64 cross toolchain plus qemu-user (native-action tests),
#   - the wasm32-wasip1 Rust target (guest programs and WASI tools are built from source),
#   - BuildGrid (PyPI buildgrid==0.4.4) in a venv at target/buildgrid-venv: the real REAPI
#     server the remote-cache tests run against (or point WBUILD_BGD at another `bgd`).
# Idempotent: what is already there is kept.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

if ! command -v aarch64-linux-gnu-g++ >/dev/null || ! command -v qemu-aarch64-static >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq gcc g++ gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user-static >/dev/null
fi

rustup target add wasm32-wasip1

venv="$root/target/buildgrid-venv"
if [ ! -x "$venv/bin/bgd" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q buildgrid==0.4.4
fi
"$venv/bin/bgd" --help >/dev/null
