#!/usr/bin/env bash
# Builds without the bytes, and a slow link, on the C suite graph (bench/gen.py --kind c,
# N actions, default 1000) fully cached in a `wbuild serve` remote on loopback. The build of
# //app:app from an empty local cache is timed for each --remote-download mode (all, toplevel,
# minimal), directly and through bench/latency_proxy.py adding 25 ms each way (every round trip
# 50 ms longer; this machine's kernel has no netem, which `tc` would need). Reports the wall
# time, RPCs per action, and bytes downloaded against the size of the requested output
# (the app binary); writes bench/remote-download-results.json.
#
#   bench/remote-download.sh [N]
#
# Environment: WBUILD=PATH (default target/release/wbuild, built unless SKIP_CARGO=1), RUNS=N
# (default 3), DELAY_MS=one-way delay (default 25). Needs python3 and gcc.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
n=${1:-1000}
cd "$root"
if [ -z "${WBUILD:-}" ] && [ -z "${SKIP_CARGO:-}" ]; then
    cargo build --release -p wbuild-cli
fi
wbuild=${WBUILD:-${CARGO_TARGET_DIR:-$root/target}/release/wbuild}
exec python3 - "$wbuild" "$n" "${RUNS:-3}" "${DELAY_MS:-25}" "$here" <<'PY'
import json, os, shutil, socket, statistics, subprocess, sys, tempfile, time

wbuild, n, runs, delay, here = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
work = tempfile.mkdtemp(prefix="wbuild-rdl-bench.")
procs = []

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def wait_port(port):
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close(); return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listens on {port}")

try:
    ws = os.path.join(work, "ws")
    subprocess.run([sys.executable, os.path.join(here, "gen.py"), ws, "--actions", str(n), "--kind", "c"],
                   check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    procs.append(subprocess.Popen([wbuild, "--cache-dir", os.path.join(work, "serve"), "serve",
                                   "--listen", f"127.0.0.1:{port}", "--allow-anonymous-writes"],
                                  stderr=subprocess.DEVNULL))
    wait_port(port)
    slow = free_port()
    proxy = subprocess.Popen([sys.executable, os.path.join(here, "latency_proxy.py"), str(slow), str(port), str(delay)],
                             stdout=subprocess.PIPE, text=True)
    procs.append(proxy)
    assert proxy.stdout.readline().strip() == "ready"

    def build(cache, url, mode, events):
        shutil.rmtree(os.path.join(ws, "wbuild-out"), ignore_errors=True)
        args = [wbuild, "--cache-dir", cache, "build", "//app:app", "--remote", url, "--events", events]
        if mode:
            args.append(f"--remote-download={mode}")
        t0 = time.monotonic()
        subprocess.run(args, cwd=ws, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.monotonic() - t0
        ev = [json.loads(l) for l in open(events)]
        fin = [e for e in ev if e.get("type") == "build_finished"][-1]
        return wall, fin

    # Fill the remote.
    wall, fin = build(os.path.join(work, "fill"), f"grpc://127.0.0.1:{port}", "all", os.path.join(work, "fill.jsonl"))
    actions = fin["executed"] + fin["cached"] + fin["remote_cached"]
    app = os.path.getsize(os.path.join(ws, "wbuild-out/app/app"))
    every = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(ws, "wbuild-out")) for f in fs)
    print(f"{actions} actions; the requested output (app) is {app} bytes, all outputs {every} bytes")
    print(f"filling the remote (every action run here, uploaded): {wall:.2f} s, "
          f"{fin['remote_rpcs'] / actions:.2f} RPCs/action")
    rows = [{"link": "0 ms", "mode": "fill (run here, upload)", "median_s": round(wall, 3),
             "rpcs_per_action": round(fin["remote_rpcs"] / actions, 2),
             "bytes_downloaded": fin["remote_bytes_downloaded"]}]
    for link, url in (("0 ms", f"grpc://127.0.0.1:{port}"), (f"+{2 * delay:g} ms per round trip", f"grpc://127.0.0.1:{slow}")):
        for mode in ("all", "toplevel", "minimal"):
            walls, last = [], None
            for i in range(runs):
                cache = os.path.join(work, f"c-{mode}-{i}")
                wall, last = build(cache, url, mode, os.path.join(work, "ev.jsonl"))
                assert last["remote_cached"] == actions, last
                shutil.rmtree(cache)
                walls.append(wall)
            row = {"link": link, "mode": mode, "median_s": round(statistics.median(walls), 3),
                   "rpcs_per_action": round(last["remote_rpcs"] / actions, 2),
                   "bytes_downloaded": last["remote_bytes_downloaded"]}
            rows.append(row)
            print(f"{link:26} {mode:9} {row['median_s']:8.2f} s  {row['rpcs_per_action']:5.2f} RPCs/action  "
                  f"{row['bytes_downloaded']:>10} bytes downloaded")
    json.dump({"actions": actions, "requested_output_bytes": app, "all_output_bytes": every,
               "one_way_delay_ms": delay, "runs": runs, "builds": rows},
              open(os.path.join(here, "remote-download-results.json"), "w"), indent=2)
finally:
    for p in procs:
        p.kill()
    shutil.rmtree(work, ignore_errors=True)
PY
