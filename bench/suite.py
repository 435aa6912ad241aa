#!/usr/bin/env python3
"""The benchmark suite behind bench/run.sh: wbuild against ninja and make (and Bazel where it
is installed) on the same generated graphs, scenario by scenario.

  suite.py --wbuild BIN --wasm-dir DIR --native-dir DIR --work DIR [--c-sizes N...]
           [--wasi-sizes N...] [--load-sizes N...] [--runs N] [--jobs N] [--timeout S]
           [--bazel BIN | --no-bazel] [--json FILE] [--doc FILE] [--lua-json FILE]

Bazel: the C graphs get two Bazel columns when `bazel` is on the PATH (or --bazel names it;
Debian: apt-get install bazel-bootstrap, Bazel 4.2.3, which builds here without network):
`bazel-linux-sandbox` (every action in Bazel's namespace sandbox; `bazel-processwrapper-sandbox`
where linux-sandbox cannot run, with the reason printed) and `bazel-local` (no sandbox,
--spawn_strategy=local). Each column has its own server and output base under
WORK/bazel-root and its own --disk_cache; the servers are shut down when the graph is done.

Each measured run is one process started from here under GNU time: wall time (measured here)
and peak resident set size (time's %M: the largest process of the tool's tree, so it includes
the compilers a build spawns). Runs of the tools are interleaved, in alternating order (wbuild,
ninja, make, then make, ninja, wbuild, ...), so background load hits them alike and no tool is
always measured right after the same other one (a Bazel client returning leaves its server
busy: wbuild's no-op measured right after it was 9-11 ms, 7 ms otherwise); each ratio against
ninja is taken pair by pair (run i of a tool over run i of ninja) and the median of those
ratios is reported.

Scenarios:
  clean    nothing built: outputs removed, and for wbuild an empty cache directory; for Bazel
           `clean --expunge` and an empty disk cache, so the run includes the server's start
           and the C toolchain's detection
  no-op    everything up to date (Bazel: its server warm)
  edit     one source file of the deepest library changed (new content every run)
  header   (c) a header of the deepest library changed (a new declaration every run): the
           compiles whose depfile lists it rerun; afterwards one more such edit is built with
           wbuild's events and the compiles it reran are counted against those whose depfile
           (ninja -t deps) lists the header
  cached   outputs deleted, cache warm (ninja and make have no cache: a full rebuild; Bazel:
           `bazel clean`, server and disk cache kept)
  load     read the build description and compute the graph, building nothing: wbuild
           `outputs //...` with its analysis cache dropped, `ninja -t targets all`, `make -n`,
           `bazel query //...` with the server shut down before (a cold JVM, as wbuild's run is
           a fresh process)

Peak RSS of a Bazel run is the larger of the client's (GNU time) and the server's VmHWM (the
server is no child of the client; its peak is since the server started, so across runs of
no-op and edit). The compilers Bazel's server spawns are not counted.
"""
import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def measure(cmd, cwd, env=None, timeout=None):
    """Run cmd; return (seconds, peak RSS in KiB). Fails loudly with the tool's output, and
    kills the command's process group when it outlives `timeout` seconds (default RUN_TIMEOUT).

    The peak RSS comes from GNU time (`/usr/bin/time -f %M`), not from wait4 here: a child
    forked from this Python process starts with Python's resident pages, and ru_maxrss keeps
    that across exec. time's own footprint (about 2 MiB) is the floor instead."""
    timeout = timeout or RUN_TIMEOUT
    log = tempfile.TemporaryFile()
    with tempfile.NamedTemporaryFile("r") as rss:
        t0 = time.perf_counter()
        p = subprocess.Popen([TIME, "-f", "%M", "-o", rss.name] + cmd, cwd=cwd, stdout=log,
                             stderr=subprocess.STDOUT, env=env, start_new_session=True)
        # The deadline is a timer that kills the group; the wait itself blocks in waitpid.
        # (`Popen.wait(timeout=...)` polls with sleeps growing to 50 ms, which rounded every
        # time measured here up to the next poll: sub-second runs came out in ~50 ms steps.)
        expired = threading.Event()

        def kill():
            expired.set()
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            p.wait()
        except BaseException:  # ^C / SIGTERM of the suite
            kill()
            p.wait()
            raise
        finally:
            timer.cancel()
        elapsed = time.perf_counter() - t0
        if expired.is_set():
            log.seek(0)
            tail = log.read().decode(errors="replace")[-3000:]
            sys.exit(f"bench: {' '.join(cmd)} in {cwd} still ran after {timeout:.0f} s and was "
                     f"killed (raise --timeout if the machine is that slow):\n{tail}")
        lines = rss.read().strip().splitlines()
        peak = int(lines[-1]) if lines and lines[-1].isdigit() else 0
    if p.returncode != 0:
        log.seek(0)
        tail = log.read().decode(errors="replace")[-3000:]
        sys.exit(f"bench: {' '.join(cmd)} in {cwd} failed ({p.returncode}):\n{tail}")
    return elapsed, peak


TIME = "/usr/bin/time"
# Deadline of one measured run (--timeout), and of Bazel's clean, info, query and shutdown.
RUN_TIMEOUT = 3600.0
BAZEL_CONTROL_TIMEOUT = 600.0
# GNU make is left out above this: on the 100,000-action graph `make -n` alone takes about 50 s.
MAKE_MAX_ACTIONS = 20000


def run_quiet(cmd, cwd, timeout=None):
    measure(cmd, cwd, timeout=timeout)


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

    def server_rss_kib(self):
        """Peak RSS of a build server outside the measured process tree (Bazel's)."""
        return 0


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
    """One Bazel column: `strategy` is Bazel's --spawn_strategy (linux-sandbox,
    processwrapper-sandbox or local). Every column has its own output base (and so its own
    server) and disk cache, so the columns never share outputs, action cache or analysis."""

    COLUMN = {"linux-sandbox": "bazel-linux-sandbox",
              "processwrapper-sandbox": "bazel-processwrapper-sandbox", "local": "bazel-local"}

    def __init__(self, ws, jobs, binary, root, graph, strategy):
        super().__init__(self.COLUMN[strategy], ws, jobs)
        self.binary, self.strategy = binary, strategy
        self.root = root
        self.output_base = os.path.join(root, f"{graph}-{strategy}")
        self.cache = os.path.join(root, f"{graph}-{strategy}-disk-cache")

    def startup(self):
        # No ~/.bazelrc: the system's rc (Debian's /etc/bazel/bazelrc names the install base)
        # and the workspace's .bazelrc (gen.py) only. --max_idle_secs: a server that a crashed
        # run leaves behind still goes away by itself.
        return [self.binary, f"--output_user_root={self.root}", f"--output_base={self.output_base}",
                "--nohome_rc", "--max_idle_secs=1800"]

    def build_cmd(self):
        # --nosandbox_debug: Debian's /etc/bazel/bazelrc sets --sandbox_debug, which prints
        # linux-sandbox's debug log (about 40 lines) for every action. --symlink_prefix=/: no
        # bazel-* links in the workspace the tools share. //app:app is what ninja's and make's
        # default builds (every library's archive, the program); `//...` would add a shared
        # library per cc_library.
        return self.startup() + [
            "build", f"--jobs={self.jobs}", f"--disk_cache={self.cache}",
            f"--spawn_strategy={self.strategy}", "--nosandbox_debug", "--symlink_prefix=/",
            "--color=no", "--curses=no", "//app:app"]

    def load_cmd(self):
        return self.startup() + ["query", "//...", "--output=label"]

    def control(self, *args):
        run_quiet(self.startup() + list(args), self.ws, timeout=BAZEL_CONTROL_TIMEOUT)

    def clean(self):
        self.control("clean", "--expunge")
        rm(self.cache)

    def drop_outputs(self):
        self.control("clean")

    def drop_analysis(self):
        self.control("shutdown")

    def server_pid(self):
        try:
            with open(os.path.join(self.output_base, "server", "server.pid.txt")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def server_rss_kib(self):
        pid = self.server_pid()
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except (OSError, TypeError):
            pass
        return 0

    def install_base(self):
        out = subprocess.run(self.startup() + ["info", "install_base"], cwd=self.ws,
                             capture_output=True, text=True, timeout=BAZEL_CONTROL_TIMEOUT)
        if out.returncode != 0:
            sys.exit(f"bench: `bazel info install_base` in {self.ws} failed:\n{out.stderr[-3000:]}")
        return out.stdout.strip()

    def shutdown(self):
        """Stop this column's server: `bazel shutdown` with a deadline, then SIGKILL by the pid
        the server wrote (it is this suite's server: its output base is the suite's)."""
        if self.server_pid() is None:
            return
        try:
            subprocess.run(self.startup() + ["shutdown"], cwd=self.ws, capture_output=True,
                           timeout=BAZEL_CONTROL_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired):
            pass
        pid = self.server_pid()
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                ours = self.output_base.encode() in f.read()
        except (OSError, TypeError):
            ours = False
        if ours:
            print(f"bench: Bazel server {pid} ({self.output_base}) outlived `bazel shutdown`; "
                  "killing it", file=sys.stderr)
            os.kill(pid, signal.SIGKILL)


def bazel_version(binary):
    """Bazel's version: `bazel --version`, or for Debian's build (`bazel no_version`) the
    bazel-bootstrap package's. None when neither says."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    m = re.search(r"(\d+\.\d+\.\d+)", out)
    if m:
        return m.group(1)
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "bazel-bootstrap"],
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    m = re.match(r"(\d+\.\d+\.\d+)", out)
    return m.group(1) if m else None


def bazel_sandbox(probe):
    """The strategy of the sandboxed Bazel column: linux-sandbox when Bazel's own linux-sandbox
    binary runs `/bin/true` here (it needs user, mount, PID and network namespaces), else
    processwrapper-sandbox (a symlink tree per action, no namespaces), with the reason."""
    helper = os.path.join(probe.install_base(), "linux-sandbox")
    try:
        p = subprocess.run([helper, "--", "/bin/true"], capture_output=True, text=True, timeout=60)
        if p.returncode == 0:
            return "linux-sandbox"
        why = f"exit {p.returncode}: {p.stderr.strip()[-500:]}"
    except (OSError, subprocess.TimeoutExpired) as e:
        why = str(e)
    print(f"bench: Bazel's linux-sandbox ({helper}) does not run here ({why}); the sandboxed "
          "Bazel column uses processwrapper-sandbox", file=sys.stderr)
    return "processwrapper-sandbox"


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


class HeaderEditor(Editor):
    """Adds a new declaration to a header of the deepest library for every call."""

    rel = os.path.join("lib0", "include", "lib0", "f0.h")

    def __init__(self, ws):
        self.n = 0
        self.path = os.path.join(ws, self.rel)
        with open(self.path) as f:
            self.original = f.read()

    def edit(self):
        self.n += 1
        with open(self.path, "w") as f:
            f.write(self.original + f"int lib0_header_edit_{self.n}(void);\n")


def header_reruns(ws, tools):
    """After one more header edit: (compiles wbuild reran, compiles whose depfile lists it)."""
    editor = HeaderEditor(ws)
    editor.n = 10_000
    editor.edit()
    wb = next(t for t in tools if t.name == "wbuild")
    events = os.path.join(ws, "..", "header-events.jsonl")
    run_quiet(wb.build_cmd() + ["--events", events], ws)
    ev = [json.loads(l) for l in open(events)]
    reran = sum(1 for e in ev if e.get("type") == "action" and e.get("mnemonic") == "CcCompile"
                and e.get("status") == "executed")
    for t in tools:
        if t.name == "ninja":
            run_quiet(t.build_cmd(), ws)
    deps = subprocess.run(["ninja", "-t", "deps"], cwd=ws, capture_output=True, text=True).stdout
    listing, current = 0, False
    for line in deps.splitlines():
        if line and not line.startswith(" "):
            current = True
        elif current and line.strip() == HeaderEditor.rel:
            listing += 1
            current = False
    editor.restore()
    return reran, listing


def settle():
    """Let fresh files leave the racy window of wbuild's stat cache (mtime == now)."""
    time.sleep(1.5)


def dentries():
    """[dentries, negative dentries] the kernel holds (see bench/run.sh), or None."""
    try:
        with open("/proc/sys/fs/dentry-state") as f:
            fields = f.read().split()
        return [int(fields[0]), int(fields[4])]
    except (OSError, IndexError, ValueError):
        return None


def median(xs):
    return statistics.median(xs) if xs else None


def scenario(name, tools, runs, prepare, command):
    """Interleaved runs of every tool; returns {tool: {"times": [...], "rss_kib": [...]}}."""
    out = {t.name: {"times": [], "rss_kib": [], "load": [os.getloadavg()[0]],
                    "dentries": [dentries()]} for t in tools}
    for r in range(runs):
        for t in (tools if r % 2 == 0 else tools[::-1]):
            prepare(t)
            secs, rss = measure(command(t), t.ws)
            rss = max(rss, t.server_rss_kib())
            out[t.name]["times"].append(secs)
            out[t.name]["rss_kib"].append(rss)
    for t in tools:
        out[t.name]["load"].append(os.getloadavg()[0])
        out[t.name]["dentries"].append(dentries())
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
            "dentries": d.get("dentries"),
        }
        for k in ("reran", "depfiles_listing"):
            if k in d:
                row[k] = d[k]
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
        gen += ["--bazel", "--bazel-version", a.bazel_version or "4"]
    facts = subprocess.run(gen, check=True, capture_output=True, text=True).stdout
    exact = int(re.search(r"actions=(\d+)", facts).group(1))
    print(f"== {kind} graph, {exact} actions ({ws})", flush=True)
    cache = os.path.join(a.work, f"cache-{kind}{actions}")
    tools = [Wbuild(ws, a.jobs, a.wbuild, cache), Ninja(ws, a.jobs)]
    if actions <= MAKE_MAX_ACTIONS:
        tools.append(Make(ws, a.jobs))
    bazels = []
    if a.bazel and kind == "c":
        root = os.path.join(a.work, "bazel-root")
        graph = f"{kind}{actions}"
        if a.bazel_sandbox is None:
            probe = Bazel(ws, a.jobs, a.bazel, root, graph, "local")
            try:
                a.bazel_sandbox = bazel_sandbox(probe)
            finally:
                probe.shutdown()
        bazels = [Bazel(ws, a.jobs, a.bazel, root, graph, s) for s in (a.bazel_sandbox, "local")]
    tools += bazels
    try:
        rows = run_scenarios(kind, ws, exact, tools, scenarios, runs)
    finally:
        for b in bazels:  # before the workspace goes: Bazel's commands run in it
            b.shutdown()
            if not a.keep:
                rm(b.output_base, b.cache)
    if not a.keep:
        rm(ws, cache)
    return rows


def run_scenarios(kind, ws, exact, tools, scenarios, runs):
    editor = Editor(ws, kind)
    settle()
    rows = []

    def clean(t):
        t.clean()

    def nothing(t):
        pass

    def edit(t):
        editor.edit()

    header = HeaderEditor(ws) if kind == "c" else None

    def header_edit(t):
        header.edit()

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
            # The edit rows are the loop users feel and the noisiest on a small machine
            # (3 runs of the 10,000-action edit gave 1.15× ninja, 5 runs 0.96×): at least 7.
            raw = scenario("edit", tools, max(runs, 7), edit, lambda t: t.build_cmd())
        elif s == "header":
            raw = scenario("header", tools, max(runs, 7), header_edit, lambda t: t.build_cmd())
            header.restore()
            reran, listing = header_reruns(ws, tools)
            print(f"   header  wbuild reran {reran} compiles; {listing} depfiles list the header",
                  flush=True)
            for d in raw.values():
                d["reran"] = reran
                d["depfiles_listing"] = listing
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
    return rows


def machine(bazel_bin=None, sandbox=None):
    def sh(cmd):
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""
    cpu = sh("lscpu | sed -n 's/^Model name: *//p' | head -1")
    bazel = None
    if bazel_bin:
        bazel = f"Bazel {bazel_version(bazel_bin) or '(version unknown)'}"
        if sandbox:
            bazel += f" ({sandbox} and local)"
    mem = sh("awk '/MemTotal/ {printf \"%.0f GiB\", $2/1048576}' /proc/meminfo")
    fs = sh(f"stat -f -c %T {tempfile.gettempdir()}")
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory": mem, "kernel": platform.release(),
        "filesystem": fs,
        "gcc": sh("gcc -dumpfullversion"), "ninja": sh("ninja --version"),
        "make": sh("make --version | head -1"), "bazel": bazel,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


def fmt_s(x):
    if x is None:
        return "–"
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"


SCENARIO_ORDER = ["clean", "first", "no-op", "edit", "header", "cached", "load"]
TOOL_ORDER = ["wbuild", "ninja", "make", "bazel-linux-sandbox", "bazel-processwrapper-sandbox",
              "bazel-local", "bazel"]


def tools_of(rows):
    return [t for t in TOOL_ORDER if any(r["tool"] == t for r in rows)]


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
    tools = tools_of(rows)
    m = info
    text = [
        "<!-- generated by bench/run.sh: edits between these markers are overwritten -->",
        f"Generated by `bench/run.sh` on {m['date']}. Machine: {m['cpu']}, {m['cores']} cores, "
        f"{m['memory']}, Linux {m['kernel']}, {m['filesystem']} work directory; gcc {m['gcc']}, "
        f"ninja {m['ninja']}, {m['make']}"
        + (f", {m['bazel']}" if m.get("bazel") else ", Bazel not installed (no Bazel column)") + ". "
        + ("Bazel (C graph only) builds `//app:app` with its default C toolchain (fastbuild plus "
           "the graph's -O2; see bench/gen.py for the flags that differ), its own server per "
           "column and a --disk_cache; its clean runs include the server's start, its load is "
           "`bazel query //...` on a cold server, and its peak RSS is its server's (the "
           "compilers it spawns are not counted). "
           if m.get("bazel") else "")
        + f"Medians of {runs} interleaved runs (no-op and load: at least 5, edits: at least 7); ratios are medians of "
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
    global RUN_TIMEOUT
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
    ap.add_argument("--timeout", type=float, default=RUN_TIMEOUT,
                    help=f"seconds one measured run may take (default {RUN_TIMEOUT:.0f})")
    ap.add_argument("--bazel", default=shutil.which("bazel"),
                    help="the Bazel binary of the C graphs' Bazel columns (default: `bazel` on "
                         "the PATH; Debian: apt-get install bazel-bootstrap)")
    ap.add_argument("--no-bazel", action="store_true", help="leave the Bazel columns out")
    a = ap.parse_args()
    if a.from_json:
        data = json.load(open(a.from_json))
        lua = json.load(open(a.lua_json)) if a.lua_json and os.path.exists(a.lua_json) else None
        write_doc(a.doc, data["results"], data["machine"], lua, data["runs"], a.note)
        print(f"wrote {a.doc}")
        return
    RUN_TIMEOUT = a.timeout
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench: terminated"))
    if a.no_bazel:
        a.bazel = None
    elif a.bazel:
        found = shutil.which(a.bazel)
        if not found:
            sys.exit(f"bench: --bazel {a.bazel} is not an executable (install bazel-bootstrap or "
                     "pass --no-bazel)")
        a.bazel = os.path.abspath(found)
    a.bazel_version = bazel_version(a.bazel) if a.bazel else None
    a.bazel_sandbox = None
    a.wbuild, a.wasm_dir, a.native_dir, a.work = (
        os.path.abspath(x) for x in (a.wbuild, a.wasm_dir, a.native_dir, a.work))
    for tool in ("ninja", "make", "gcc", TIME):
        if not shutil.which(tool):
            sys.exit(f"bench: needs {tool} (Debian: apt-get install ninja-build make gcc time)")
    os.makedirs(a.work, exist_ok=True)
    full = ["clean", "noop", "edit", "cached"]
    rows = []
    for n in a.c_sizes:
        rows += bench_graph(a, "c", n, full + ["header", "load"], a.runs)
    for n in a.wasi_sizes:
        rows += bench_graph(a, "template", n, full + ["load"], a.runs)
    for n in a.load_sizes:
        rows += bench_graph(a, "template", n, ["first", "load", "noop"], a.runs)
    info = machine(a.bazel, a.bazel_sandbox)
    lua = json.load(open(a.lua_json)) if a.lua_json and os.path.exists(a.lua_json) else None
    with open(a.json, "w") as f:
        json.dump({"machine": info, "runs": a.runs, "jobs": a.jobs, "results": rows}, f, indent=1)
    loads = [x for r in rows for x in r.get("load_1m", [])]
    note = a.note
    if loads and max(loads) > 1.5 * (os.cpu_count() or 1):
        note = (note + " " if note else "") + (
            f"The 1-minute load average reached {max(loads):.1f} on {os.cpu_count()} cores during "
            "the run: something else was running, so absolute times are inflated and ratios noisy.")
    held = [x for r in rows for x in (r.get("dentries") or []) if x]
    if held:
        note = (note + " " if note else "") + (
            f"The kernel held {held[0][0]:,} dentries when the first scenario started and "
            f"{held[-1][0]:,} ({held[-1][1]:,} negative) when the last ended (see bench/run.sh).")
    write_doc(a.doc, rows, info, lua, a.runs, note)
    print(table(rows, tools_of(rows)))
    print(f"wrote {a.json} and {a.doc}")


if __name__ == "__main__":
    main()
