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
    strace:strace; do
    command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null && command -v pg_ctlcluster >/dev/null ||
    need+=(postgresql)
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
