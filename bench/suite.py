#!/usr/bin/env python3
"""The benchmark suite behind bench/run.sh: wbuild against ninja and make (and Bazel where it
is installed) on the same generated graphs, scenario by scenario.

  suite.py --wbuild BIN --wasm-dir DIR --native-dir DIR --work DIR [--c-sizes N...]
           [--wasi-sizes N...] [--load-sizes N...] [--runs N] [--jobs N]
           [--json FILE] [--doc FILE] [--lua-json FILE]

Each measured run is one process started from here under GNU time: wall time (measured here)
and peak resident set size (time's %M: the largest process of the tool's tree, so it includes
the compilers a build spawns). Runs of the tools are interleaved (wbuild, ninja, make, wbuild, ...)
so background load hits them alike; each ratio against ninja is taken pair by pair (run i of a
tool over run i of ninja) and the median of those ratios is reported.

Scenarios:
  clean    nothing built: outputs removed, and for wbuild an empty cache directory
  no-op    everything up to date
  edit     one source file of the deepest library changed (new content every run)
  cached   outputs deleted, cache warm (ninja and make have no cache: a full rebuild)
  load     read the build description and compute the graph, building nothing: wbuild
           `outputs //...` with its analysis cache dropped, `ninja -t targets all`, `make -n`
"""
import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def measure(cmd, cwd, env=None):
    """Run cmd; return (seconds, peak RSS in KiB). Fails loudly with the tool's output.

    The peak RSS comes from GNU time (`/usr/bin/time -f %M`), not from wait4 here: a child
    forked from this Python process starts with Python's resident pages, and ru_maxrss keeps
    that across exec. time's own footprint (about 2 MiB) is the floor instead."""
    log = tempfile.TemporaryFile()
    with tempfile.NamedTemporaryFile("r") as rss:
        t0 = time.perf_counter()
        p = subprocess.run([TIME, "-f", "%M", "-o", rss.name] + cmd, cwd=cwd, stdout=log,
                           stderr=subprocess.STDOUT, env=env)
        elapsed = time.perf_counter() - t0
        peak = int(rss.read().strip().splitlines()[-1] or 0)
    if p.returncode != 0:
        log.seek(0)
        tail = log.read().decode(errors="replace")[-3000:]
        sys.exit(f"bench: {' '.join(cmd)} in {cwd} failed ({p.returncode}):\n{tail}")
    return elapsed, peak


TIME = "/usr/bin/time"
# GNU make is left out above this: on the 100,000-action graph `make -n` alone takes about 50 s.
MAKE_MAX_ACTIONS = 20000


def run_quiet(cmd, cwd):
    measure(cmd, cwd)


def rm(*paths):
    for p in paths:
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        elif os.path.lexists(p):
            os.remove(p)


class Tool:
    def __init__(self, name, ws, jobs):
        self.name, self.ws, self.jobs = name, ws, jobs

    def path(self, *p):
        return os.path.join(self.ws, *p)


class Wbuild(Tool):
    def __init__(self, ws, jobs, binary, cache):
        super().__init__("wbuild", ws, jobs)
        self.binary, self.cache = binary, cache

    def build_cmd(self):
        return [self.binary, "--cache-dir", self.cache, "build", "-j", str(self.jobs)]

    def load_cmd(self):
        return [self.binary, "--cache-dir", self.cache, "outputs", "//..."]

    def clean(self):
        rm(self.cache, self.path("wbuild-out"))

    def drop_outputs(self):
        rm(self.path("wbuild-out"))

    def drop_analysis(self):
        rm(os.path.join(self.cache, "analysis"))


class Ninja(Tool):
    def __init__(self, ws, jobs):
        super().__init__("ninja", ws, jobs)

    def build_cmd(self):
        return ["ninja", "-j", str(self.jobs)]

    def load_cmd(self):
        return ["ninja", "-t", "targets", "all"]

    def clean(self):
        rm(self.path(".ninja-out"), self.path(".ninja_log"), self.path(".ninja_deps"))

    def drop_outputs(self):
        rm(self.path(".ninja-out"))

    def drop_analysis(self):
        pass


class Make(Tool):
    def __init__(self, ws, jobs):
        super().__init__("make", ws, jobs)

    def build_cmd(self):
        return ["make", "-j", str(self.jobs)]

    def load_cmd(self):
        return ["make", "-n"]

    def clean(self):
        rm(self.path(".make-out"))

    drop_outputs = clean

    def drop_analysis(self):
        pass


class Bazel(Tool):
    def __init__(self, ws, jobs, cache):
        super().__init__("bazel", ws, jobs)
        self.cache = cache

    def build_cmd(self):
        return ["bazel", "build", f"--jobs={self.jobs}", f"--disk_cache={self.cache}", "//..."]

    def load_cmd(self):
        return ["bazel", "query", "//...", "--output=label"]

    def clean(self):
        run_quiet(["bazel", "clean", "--expunge"], self.ws)
        rm(self.cache)

    def drop_outputs(self):
        run_quiet(["bazel", "clean"], self.ws)

    def drop_analysis(self):
        run_quiet(["bazel", "shutdown"], self.ws)


class Editor:
    """Changes one source file of the deepest library, with new content for every call."""

    def __init__(self, ws, kind):
        self.n = 0
        if kind == "c":
            self.path = os.path.join(ws, "lib0", "f0.c")
        else:
            self.path = os.path.join(ws, "lib0", "s0.txt")
        with open(self.path) as f:
            self.original = f.read()

    def edit(self):
        self.n += 1
        if self.path.endswith(".c"):
            text = self.original.replace("int acc = x;", f"int acc = x + {self.n};", 1)
        else:
            text = self.original.replace("\n", f" e{self.n}\n", 1)
        assert text != self.original
        with open(self.path, "w") as f:
            f.write(text)

    def restore(self):
        with open(self.path, "w") as f:
            f.write(self.original)


def settle():
    """Let fresh files leave the racy window of wbuild's stat cache (mtime == now)."""
    time.sleep(1.5)


def median(xs):
    return statistics.median(xs) if xs else None


def scenario(name, tools, runs, prepare, command):
    """Interleaved runs of every tool; returns {tool: {"times": [...], "rss_kib": [...]}}."""
    out = {t.name: {"times": [], "rss_kib": [], "load": [os.getloadavg()[0]]} for t in tools}
    for r in range(runs):
        for t in tools:
            prepare(t)
            secs, rss = measure(command(t), t.ws)
            out[t.name]["times"].append(secs)
            out[t.name]["rss_kib"].append(rss)
    for t in tools:
        out[t.name]["load"].append(os.getloadavg()[0])
    print(f"   {name:7s} " + "  ".join(
        f"{t.name} {median(out[t.name]['times']):.3f}s" for t in tools), flush=True)
    return out


def summarize(kind, actions, name, raw, runs):
    rows = []
    ninja = raw.get("ninja")
    for tool, d in raw.items():
        row = {
            "graph": kind, "actions": actions, "scenario": name, "tool": tool, "runs": runs,
            "times_s": [round(x, 4) for x in d["times"]],
            "median_s": round(median(d["times"]), 4),
            "peak_rss_mib": round(median(d["rss_kib"]) / 1024, 1),
            "load_1m": [round(x, 2) for x in d["load"]],
        }
        if ninja and tool != "ninja":
            ratios = [a / b for a, b in zip(d["times"], ninja["times"]) if b > 0]
            row["ratio_vs_ninja"] = round(median(ratios), 3)
        rows.append(row)
    return rows


def bench_graph(a, kind, actions, scenarios, runs):
    ws = os.path.join(a.work, f"{kind}{actions}")
    rm(ws)
    gen = [sys.executable, os.path.join(HERE, "gen.py"), ws, "--actions", str(actions), "--kind", kind]
    if kind == "template":
        gen += ["--tool", os.path.join(a.wasm_dir, "wb-template.wasm"),
                "--native-tool", os.path.join(a.native_dir, "wb-template")]
    if a.bazel and kind == "c":
        gen.append("--bazel")
    facts = subprocess.run(gen, check=True, capture_output=True, text=True).stdout
    exact = int(re.search(r"actions=(\d+)", facts).group(1))
    print(f"== {kind} graph, {exact} actions ({ws})", flush=True)
    cache = os.path.join(a.work, f"cache-{kind}{actions}")
    tools = [Wbuild(ws, a.jobs, a.wbuild, cache), Ninja(ws, a.jobs)]
    if actions <= MAKE_MAX_ACTIONS:
        tools.append(Make(ws, a.jobs))
    if a.bazel and kind == "c":
        tools.append(Bazel(ws, a.jobs, os.path.join(a.work, f"bazel-cache{actions}")))
    editor = Editor(ws, kind)
    settle()
    rows = []
    first = {}

    def clean(t):
        t.clean()

    def nothing(t):
        pass

    def edit(t):
        editor.edit()

    for s in scenarios:
        if s == "clean":
            raw = scenario("clean", tools, runs, clean, lambda t: t.build_cmd())
        elif s == "first":
            # One clean build per tool (for sizes measured only for load and no-op).
            raw = scenario("first", tools, 1, clean, lambda t: t.build_cmd())
        elif s == "noop":
            for t in tools:  # make sure everything is built and settled
                run_quiet(t.build_cmd(), ws)
            settle()
            for t in tools:
                run_quiet(t.build_cmd(), ws)
            raw = scenario("no-op", tools, max(runs, 5), nothing, lambda t: t.build_cmd())
        elif s == "edit":
            raw = scenario("edit", tools, runs, edit, lambda t: t.build_cmd())
        elif s == "cached":
            for t in tools:
                run_quiet(t.build_cmd(), ws)
            raw = scenario("cached", tools, runs, lambda t: t.drop_outputs(), lambda t: t.build_cmd())
        elif s == "load":
            for t in tools:
                run_quiet(t.build_cmd(), ws)
            raw = scenario("load", tools, max(runs, 5), lambda t: t.drop_analysis(), lambda t: t.load_cmd())
        else:
            raise ValueError(s)
        rows += summarize(kind, exact, "no-op" if s == "noop" else s, raw, len(next(iter(raw.values()))["times"]))
    editor.restore()
    if not a.keep:
        rm(ws, cache)
    return rows


def machine():
    def sh(cmd):
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""
    cpu = sh("lscpu | sed -n 's/^Model name: *//p' | head -1")
    mem = sh("awk '/MemTotal/ {printf \"%.0f GiB\", $2/1048576}' /proc/meminfo")
    fs = sh(f"stat -f -c %T {tempfile.gettempdir()}")
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory": mem, "kernel": platform.release(),
        "filesystem": fs,
        "gcc": sh("gcc -dumpfullversion"), "ninja": sh("ninja --version"),
        "make": sh("make --version | head -1"), "bazel": sh("bazel --version 2>/dev/null") or None,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


def fmt_s(x):
    if x is None:
        return "–"
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"


SCENARIO_ORDER = ["clean", "first", "no-op", "edit", "cached", "load"]


def table(rows, tools):
    head = "| graph | actions | scenario | " + " | ".join(tools) + " | " + " | ".join(
        f"{t} / ninja" for t in tools if t != "ninja") + " | peak RSS " + " / ".join(tools) + " |"
    lines = [head, "|" + "---|" * 3 + "---:|" * (len(tools) * 2 - 1 + 1)]
    keys = []
    for r in rows:
        k = (r["graph"], r["actions"], r["scenario"])
        if k not in keys:
            keys.append(k)
    for k in keys:
        by = {r["tool"]: r for r in rows if (r["graph"], r["actions"], r["scenario"]) == k}
        cells = [k[0], f"{k[1]:,}", k[2]]
        cells += [fmt_s(by[t]["median_s"]) if t in by else "–" for t in tools]
        cells += [f"{by[t]['ratio_vs_ninja']:.2f}" if t in by and "ratio_vs_ninja" in by[t] else "–"
                  for t in tools if t != "ninja"]
        cells.append(" / ".join(f"{by[t]['peak_rss_mib']:.0f}" if t in by else "–" for t in tools) + " MiB")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_doc(path, rows, info, lua, runs, note=None):
    tools = [t for t in ["wbuild", "ninja", "make", "bazel"] if any(r["tool"] == t for r in rows)]
    m = info
    text = [
        "<!-- generated by bench/run.sh: edits between these markers are overwritten -->",
        f"Generated by `bench/run.sh` on {m['date']}. Machine: {m['cpu']}, {m['cores']} cores, "
        f"{m['memory']}, Linux {m['kernel']}, {m['filesystem']} work directory; gcc {m['gcc']}, "
        f"ninja {m['ninja']}, {m['make']}"
        + (f", {m['bazel']}" if m.get("bazel") else ", Bazel not installed (no Bazel column)") + ". "
        f"Medians of {runs} interleaved runs (no-op and load: at least 5); ratios are medians of "
        "per-run ratios against ninja (below 1: faster than ninja). Peak RSS is the largest "
        "process of the tool's tree (compilers included). make is left out above "
        f"{MAKE_MAX_ACTIONS:,} actions (`make -n` alone takes about 50 s on 100,000). "
        "Raw runs: `bench/results.json`." + (f" {note}" if note else ""),
        "",
        table(rows, tools),
        "",
    ]
    if lua:
        text += [
            "Lua 5.4 (`bench/lua.sh`, 34 translation units, clean builds, "
            f"-j{lua.get('jobs', 2)}, {lua.get('runs', '?')} runs):",
            "",
            "| tool | median | ratio / ninja |",
            "|---|---:|---:|",
        ]
        results = {r["tool"]: r for r in lua["results"]}
        ninja = results.get("ninja")
        for tool, r in results.items():
            ratio = f"{r['median_s'] / ninja['median_s']:.2f}" if ninja else "–"
            text.append(f"| {tool} | {fmt_s(r['median_s'])} | {ratio} |")
        text.append("")
    text.append("<!-- end of generated section -->")
    block = "\n".join(text)
    doc = open(path).read() if os.path.exists(path) else "# Benchmarks\n\n"
    pat = re.compile(r"<!-- generated by bench/run.sh.*?<!-- end of generated section -->", re.S)
    if pat.search(doc):
        doc = pat.sub(lambda _: block, doc)
    else:
        doc = doc.rstrip("\n") + "\n\n## Suite: wbuild, ninja and make on the same graphs\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(doc)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wbuild", required=True)
    ap.add_argument("--wasm-dir", required=True, help="holds wb-template.wasm")
    ap.add_argument("--native-dir", required=True, help="holds the native wb-template")
    ap.add_argument("--work", required=True)
    ap.add_argument("--c-sizes", type=int, nargs="*", default=[1000])
    ap.add_argument("--wasi-sizes", type=int, nargs="*", default=[1000, 10000])
    ap.add_argument("--load-sizes", type=int, nargs="*", default=[100000])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=os.cpu_count())
    ap.add_argument("--json", default=os.path.join(HERE, "results.json"))
    ap.add_argument("--doc", default=os.path.join(ROOT, "docs", "BENCHMARKS.md"))
    ap.add_argument("--lua-json", help="bench/lua.sh's results, to include in the document")
    ap.add_argument("--keep", action="store_true", help="keep the generated workspaces")
    ap.add_argument("--from-json", help="only regenerate --doc from this results file")
    ap.add_argument("--note", help="a sentence added to the document's description of the run")
    a = ap.parse_args()
    if a.from_json:
        data = json.load(open(a.from_json))
        lua = json.load(open(a.lua_json)) if a.lua_json and os.path.exists(a.lua_json) else None
        write_doc(a.doc, data["results"], data["machine"], lua, data["runs"], a.note)
        print(f"wrote {a.doc}")
        return
    a.bazel = shutil.which("bazel") is not None
    a.wbuild, a.wasm_dir, a.native_dir, a.work = (
        os.path.abspath(x) for x in (a.wbuild, a.wasm_dir, a.native_dir, a.work))
    for tool in ("ninja", "make", "gcc", TIME):
        if not shutil.which(tool):
            sys.exit(f"bench: needs {tool} (Debian: apt-get install ninja-build make gcc time)")
    os.makedirs(a.work, exist_ok=True)
    full = ["clean", "noop", "edit", "cached"]
    rows = []
    for n in a.c_sizes:
        rows += bench_graph(a, "c", n, full, a.runs)
    for n in a.wasi_sizes:
        rows += bench_graph(a, "template", n, full + ["load"], a.runs)
    for n in a.load_sizes:
        rows += bench_graph(a, "template", n, ["first", "load", "noop"], a.runs)
    info = machine()
    lua = json.load(open(a.lua_json)) if a.lua_json and os.path.exists(a.lua_json) else None
    with open(a.json, "w") as f:
        json.dump({"machine": info, "runs": a.runs, "jobs": a.jobs, "results": rows}, f, indent=1)
    loads = [x for r in rows for x in r.get("load_1m", [])]
    note = a.note
    if loads and max(loads) > 1.5 * (os.cpu_count() or 1):
        note = (note + " " if note else "") + (
            f"The 1-minute load average reached {max(loads):.1f} on {os.cpu_count()} cores during "
            "the run: something else was running, so absolute times are inflated and ratios noisy.")
    write_doc(a.doc, rows, info, lua, a.runs, note)
    tools = [t for t in ["wbuild", "ninja", "make", "bazel"] if any(r["tool"] == t for r in rows)]
    print(table(rows, tools))
    print(f"wrote {a.json} and {a.doc}")


if __name__ == "__main__":
    main()
