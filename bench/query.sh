#!/usr/bin/env bash
# `wbuild query` on the suite's 100,000-target WASI graph (bench/gen.py --kind template, as
# bench/suite.py's load sizes), against ninja's own graph tools on the build.ninja gen.py
# writes for the same DAG:
#
#   wbuild query 'deps(//...)'             vs  ninja -t targets all   (the whole graph)
#   wbuild query 'rdeps(//..., //lib0:a0)' vs  ninja -t query OUT     (who uses one output;
#                                              ninja answers one level, wbuild the closure)
#   wbuild query 'rdeps(//..., //lib0:a0, 1)'  (one level, as ninja's)
#
# Every wbuild query loads and evaluates the WBUILD files itself (no analysis cache).
#
#   bench/query.sh
#
# Environment (defaults in brackets):
#   ACTIONS=100000   size of the graph
#   RUNS=5           runs per command (hyperfine, after one warm-up run)
#   WBUILD           the wbuild binary [target/release/wbuild]
#   WASM             wb-template.wasm [target/wasm32-wasip1/release/wb-template.wasm]
#
# Needs python3 and ninja; uses hyperfine if installed (Debian: ninja-build hyperfine),
# otherwise times each run itself. Prints a table of mean and min times in seconds.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
wbuild=${WBUILD:-$target/release/wbuild}
wasm=${WASM:-$target/wasm32-wasip1/release/wb-template.wasm}
actions=${ACTIONS:-100000}
runs=${RUNS:-5}
for tool in ninja python3; do
    command -v "$tool" >/dev/null || { echo "query.sh: needs $tool (apt-get install ninja-build python3)" >&2; exit 2; }
done
[ -x "$wbuild" ] || { echo "query.sh: no wbuild binary at $wbuild: cargo build --release -p wbuild-cli, or set WBUILD" >&2; exit 2; }
[ -f "$wasm" ] || { echo "query.sh: no $wasm: cargo build --release --target wasm32-wasip1 -p wb-template, or set WASM" >&2; exit 2; }

work=$(mktemp -d /tmp/wbuild-query-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
ws=$work/ws
python3 "$here/gen.py" "$ws" --actions "$actions" --kind template --tool "$wasm" | tail -1
cd "$ws"
out=$(sed -n 's/^build \(\.ninja-out\/lib0\/a0\.vars\):.*/\1/p' build.ninja | head -1)
[ -n "$out" ] || { echo "query.sh: build.ninja has no .ninja-out/lib0/a0.vars" >&2; exit 2; }

q() { printf "%q --cache-dir %q query %q" "$wbuild" "$work/cache" "$1"; }
names=("wbuild query 'deps(//...)'" "ninja -t targets all"
       "wbuild query 'rdeps(//..., //lib0:a0)'" "wbuild query 'rdeps(//..., //lib0:a0, 1)'"
       "ninja -t query $out")
cmds=("$(q 'deps(//...)')" "ninja -t targets all"
      "$(q 'rdeps(//..., //lib0:a0)')" "$(q 'rdeps(//..., //lib0:a0, 1)')"
      "ninja -t query $out")

# What each answers (a check that the commands do what the table says).
for i in "${!cmds[@]}"; do
    n=$(bash -c "${cmds[$i]}" 2>/dev/null | wc -l)
    printf '%-45s %8d lines of output\n' "${names[$i]}" "$n"
done

results=$work/results.txt
: > "$results"
for i in "${!cmds[@]}"; do
    if command -v hyperfine >/dev/null; then
        hyperfine --warmup 1 --runs "$runs" --style none --output null \
            --export-json "$work/h$i.json" "${cmds[$i]}" >/dev/null
        python3 - "$work/h$i.json" "${names[$i]}" >>"$results" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
print(f"{sys.argv[2]}\t{r['mean']:.3f}\t{r['min']:.3f}")
EOF
    else
        python3 - "${cmds[$i]}" "${names[$i]}" "$runs" >>"$results" <<'EOF'
import subprocess, sys, time
cmd, name, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
subprocess.run(cmd, shell=True, stdout=subprocess.DEVNULL, check=True)
ts = []
for _ in range(runs):
    t = time.perf_counter()
    subprocess.run(cmd, shell=True, stdout=subprocess.DEVNULL, check=True)
    ts.append(time.perf_counter() - t)
print(f"{name}\t{sum(ts) / len(ts):.3f}\t{min(ts):.3f}")
EOF
    fi
done

echo
echo "graph: $actions targets ($(nproc) cores, $runs runs)"
printf '%-45s %9s %9s\n' command "mean (s)" "min (s)"
while IFS=$'\t' read -r name mean min; do
    printf '%-45s %9s %9s\n' "$name" "$mean" "$min"
done < "$results"
