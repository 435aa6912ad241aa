#!/usr/bin/env bash
# Remote execution throughput: N trivial independent WASI actions (wb-tar on one small file
# each, the graph bench/gen.py writes) built from an empty local cache
#   - locally (-j $(nproc)), and
#   - through BuildGrid 0.4.4 (SQL scheduler on PostgreSQL) with two local `wbuild worker`s
#     (-j $WORKER_JOBS each, default 1: this machine's cores), the client at -j 16.
# Every remote run changes the workspace's source_date_epoch (part of every WASI action's key),
# so the engine's cache never answers and every action really runs on a worker. Reports wall
# times (hyperfine), actions per second, and the median per-action duration seen by the client
# (events file) locally and remotely; writes bench/remote-exec-results-w<WORKER_JOBS>.json.
#
#   bench/remote-exec.sh [N]        default N = 200
#
# Needs what tests/setup.sh installs (PostgreSQL running with the role bgd, the BuildGrid
# venv), hyperfine, python3 and the wasm32-wasip1 target. RUNS=N (default 5).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
n=${1:-200}
runs=${RUNS:-5}
wjobs=${WORKER_JOBS:-1}
command -v hyperfine >/dev/null || { echo "remote-exec.sh: needs hyperfine"; exit 2; }
cd "$root"
cargo build --release -p wbuild-cli
cargo build --release --target wasm32-wasip1 -p wb-tar
target=${CARGO_TARGET_DIR:-$root/target}
wbuild="$target/release/wbuild"
tar_wasm="$target/wasm32-wasip1/release/wb-tar.wasm"
bgd="$root/target/buildgrid-venv/bin/bgd"
[ -x "$bgd" ] || { echo "remote-exec.sh: run tests/setup.sh first (BuildGrid venv)"; exit 2; }

work=$(mktemp -d /tmp/wbuild-rexec-bench.XXXXXX)
db="bgd_bench_$$"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    PGPASSWORD=insecure dropdb -h 127.0.0.1 -U bgd --if-exists "$db" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PGPASSWORD=insecure createdb -h 127.0.0.1 -U bgd -T template0 "$db"
"$bgd" migrate apply "postgresql+psycopg2://bgd:insecure@127.0.0.1/$db" >/dev/null 2>&1
port=$(free_port)
sed -e "s/@PORT@/$port/" -e "s/@DATABASE@/$db/" tests/reapi/buildgrid-exec.yml > "$work/exec.yml"
mkdir -p "$work/cas"
BGD_CAS_DIR="$work/cas" "$bgd" server start --pid-file "$work/bgd.pid" "$work/exec.yml" > "$work/bgd.log" 2>&1 &
pids+=($!)
for _ in $(seq 600); do [ -s "$work/bgd.pid" ] && break; sleep 0.1; done
[ -s "$work/bgd.pid" ] || { cat "$work/bgd.log"; exit 1; }
url="grpc://127.0.0.1:$port"
for w in w1 w2; do
    "$wbuild" --cache-dir "$work/$w-cache" worker --engine "$url" --name "$w" -j "$wjobs" 2> "$work/$w.log" &
    pids+=($!)
done
for w in w1 w2; do
    for _ in $(seq 600); do grep -q ": session " "$work/$w.log" && break; sleep 0.1; done
done

ws="$work/ws"
python3 "$here/gen.py" "$ws" --actions "$n" --per-package "$n" --tool "$tar_wasm" >/dev/null
cd "$ws"
epoch="$work/epoch"
echo 1 > "$epoch"
next_epoch="e=\$((\$(cat $epoch)+1)); echo \$e > $epoch; sed -i \"s/source_date_epoch = .*/source_date_epoch = \$e/\" wbuild.toml; rm -rf $work/cache wbuild-out"

echo "== $n trivial WASI actions from an empty local cache"
hyperfine -N --runs "$runs" --export-json "$work/t.json" \
    --prepare "sh -c 'rm -rf $work/cache wbuild-out'" \
    -n "local -j $(nproc)" "$wbuild --cache-dir $work/cache build -j $(nproc)" \
    --prepare "sh -c '$next_epoch'" \
    -n "remote (BuildGrid, 2 workers x $wjobs) -j 16" \
    "$wbuild --cache-dir $work/cache build -j 16 --remote-executor $url"

# One more of each with an events file: per-action durations as the client saw them.
rm -rf "$work/cache" wbuild-out
"$wbuild" --cache-dir "$work/cache" build -j "$(nproc)" --events "$work/local.jsonl" >/dev/null 2>&1
sh -c "$next_epoch"
"$wbuild" --cache-dir "$work/cache" build -j 16 --remote-executor "$url" --events "$work/remote.jsonl" >/dev/null 2>&1

python3 - "$work" "$n" "$here/remote-exec-results-w$wjobs.json" <<'EOF'
import json, statistics, sys
work, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
t = json.load(open(f"{work}/t.json"))["results"]
def durations(path, status):
    ev = [json.loads(l) for l in open(path)]
    d = [e["duration_ms"] for e in ev if e.get("type") == "action" and e["status"] == status]
    return d
local = durations(f"{work}/local.jsonl", "executed")
remote = durations(f"{work}/remote.jsonl", "remote_executed")
assert len(local) == n and len(remote) == n, (len(local), len(remote))
rows = []
for r in t:
    rows.append({"name": r["command"], "median_s": r["median"], "actions_per_s": n / r["median"]})
# Where a remote action's time goes: the client's phases and the worker's own timeline
# (REAPI ExecutedActionMetadata: queued, input fetch, execution, output upload), medians.
phases = {}
for e in (json.loads(l) for l in open(f"{work}/remote.jsonl")):
    if e.get("type") == "action" and e["status"] == "remote_executed":
        for p in e.get("phases") or []:
            phases.setdefault(p["name"], []).append(p["duration_us"] / 1000)
# The worker's own view: how long each lease took from start to result (worker logs).
import re
leases = []
for w in ("w1", "w2"):
    for line in open(f"{work}/{w}.log", errors="replace"):
        m = re.search(r"lease \S+ done in (\d+) ms", line)
        if m:
            leases.append(int(m.group(1)))
res = {
    "actions": n,
    "builds": rows,
    "median_action_ms_local": statistics.median(local),
    "median_action_ms_remote": statistics.median(remote),
    "median_phase_ms_remote": {k: round(statistics.median(v), 2) for k, v in sorted(phases.items())},
    "median_lease_ms_worker": statistics.median(leases) if leases else None,
}
json.dump(res, open(out, "w"), indent=2)
print(f"{'build':45} {'median s':>9} {'actions/s':>10}")
for r in rows:
    print(f"{r['name']:45} {r['median_s']:9.2f} {r['actions_per_s']:10.1f}")
print(f"median per-action duration seen by the client: local {res['median_action_ms_local']} ms, "
      f"remote {res['median_action_ms_remote']} ms")
print(f"median lease time on a worker (its log, start to result): {res['median_lease_ms_worker']} ms")
print("median per-phase time of a remote action (ms):")
for k, v in res["median_phase_ms_remote"].items():
    print(f"  {k:45} {v:9.2f}")
EOF
