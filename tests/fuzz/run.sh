#!/usr/bin/env bash
# Builds the cargo-fuzz targets and runs each for SECONDS (default 30); exits non-zero when a
# target crashes (the input is saved under tests/fuzz/artifacts/<target>/).
#
#   tests/fuzz/run.sh [SECONDS] [TARGET...]
#
# Works on the stable toolchain: with --sanitizer none, cargo-fuzz passes only flags stable
# rustc accepts (-Cpasses=sancov-module, -Cllvm-args=...); no nightly, no RUSTC_BOOTSTRAP.
# Builds are release with debug assertions (-a: overflow checks on).
# New corpus entries go to tests/fuzz/target/corpus/<target> (not committed); the seeds in
# tests/fuzz/corpus/<target> are read too. Reproduce a crash with
#   cd tests/fuzz && cargo fuzz run -a --sanitizer none TARGET artifacts/TARGET/crash-...
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-30}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(wbuild_loader reapi_server store_model)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
flags=(-a --sanitizer none)

# The committed Cargo.lock must be up to date (cargo fuzz has no --locked).
cargo metadata --locked --format-version 1 >/dev/null

echo "== building ${targets[*]}"
start=$(date +%s)
for t in "${targets[@]}"; do
    cargo fuzz build "${flags[@]}" "$t"
done
echo "built in $(( $(date +%s) - start )) s"

status=0
for t in "${targets[@]}"; do
    echo "== $t for ${secs} s"
    mkdir -p "target/corpus/$t" "artifacts/$t"
    # -timeout: a single input running this long is a hang (reported as a crash).
    if ! cargo fuzz run "${flags[@]}" "$t" "target/corpus/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 \
        2> "target/$t.log"; then
        status=1
        echo "!! $t crashed; last lines of target/$t.log:"
        tail -n 60 "target/$t.log"
    fi
    grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|Done)' "target/$t.log" || true
done
exit $status
