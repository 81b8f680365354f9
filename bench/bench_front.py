#!/usr/bin/env python
"""The gateway front's cost per request, before and after, in one run.

    python bench/bench_front.py --checkout before=/path/to/old --checkout after=. \\
        [--rounds 3] [--duration 8] [--conc 1,16] [--json out.json] [--profile DIR]

    # Gateway settings of one checkout against another: name the same checkout twice.
    python bench/bench_front.py --checkout off=. --checkout traced=. \\
        --settings 'traced={"TRACING": {"OTLP_URL": "$SINK", "SAMPLE": 1}}' --otlp-sink

For each round (odd rounds in the given order, even rounds reversed) and each
checkout: start ``run_gateway.py`` of that checkout on the peer harness's ``noop``
endpoint (2 workers, access log off; ``--app`` for another app folder), load
``POST /run`` with wrk at each concurrency, and read the CPU time every process of the
tree used during the measured seconds. It prints req/s, p50 and CPU ms per request,
for the whole tree and per role (front master and workers, server master and workers,
manager, supervisor), then the medians over rounds, then the median of each round's
own ratio of every checkout to the first. Only ratios between checkouts measured in the
same run mean anything: the machine is shared.

``--settings NAME=JSON`` merges gateway settings into the configuration of checkout
``NAME``. ``--otlp-sink`` starts an OTLP/HTTP receiver in this process that answers and
drops what it gets (its CPU is not the gateway's), its URL given as ``$SINK``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
# The peer harness's app folder, beside the checkout (../shared) or one level up.
DEFAULT_APP = next((p / "shared" / "peer-bench" / "ours_app" for p in REPO.parents
                    if (p / "shared" / "peer-bench" / "ours_app").is_dir()), REPO)
LUA = """wrk.method = "POST"
wrk.body = '{"SIGNATURE":"%s","INPUT_VALUE":42}'
wrk.headers["Content-Type"] = "application/json"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def role(proc: psutil.Process, manager: int) -> str:
    try:
        cmd = " ".join(proc.cmdline())
        parent = proc.ppid()
    except psutil.Error:
        return "gone"
    if proc.pid == manager:
        return "manager"
    for module, name in (("gateway", "front"), ("server", "server"), ("supervisor", "supervisor")):
        if f"basic_inference_server.{module}" in cmd or f"bis-{name}" in cmd:
            return name if name == "supervisor" else f"{name} {'master' if parent == manager else 'worker'}"
    return "other"


def cpu_by_role(manager: int) -> dict[str, float]:
    out: dict[str, float] = {}
    root = psutil.Process(manager)
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        key = role(proc, manager)
        out[key] = out.get(key, 0.0) + times.user + times.system
    return out


def start(checkout: Path, app: Path, python: str, port: int, cache: str,
          endpoint: str | None = None, settings: dict[str, Any] | None = None,
          gateway: dict[str, Any] | None = None) -> subprocess.Popen:
    """Start ``run_gateway.py`` of ``checkout`` on ``app``; ``settings`` are added to the
    section of ``endpoint`` (``TCP_PORT`` and ``PORT`` to call its server directly),
    ``gateway`` to the top level."""
    # The harness's peers/ folder holds burnlib, which its cpu endpoint imports.
    env = {**os.environ, "PYTHONPATH": f"{checkout}{os.pathsep}{app.parent / 'peers'}"}
    # Free ports for the servers: the ports after the gateway's may be taken on a shared box.
    config = json.loads((app / "config_gateway.json").read_text())
    config["FIRST_SERVER_PORT"] = 0
    config.update(gateway or {})
    if endpoint is not None:
        # The measured endpoint alone: another one loading its model (the harness's embed
        # imports transformers for seconds) would be counted in the measured seconds.
        config["CONFIG_ENDPOINTS"] = {endpoint: {**config["CONFIG_ENDPOINTS"][endpoint],
                                                 **(settings or {})}}
    config_path = Path(cache) / "config_gateway.json"
    config_path.write_text(json.dumps(config))
    return subprocess.Popen(
        [python, str(checkout / "run_gateway.py"), "--host", "127.0.0.1", "--port", str(port),
         "--config", str(config_path), "--endpoints", "endpoints", "--cache", cache],
        cwd=app, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)


def wait_ready(port: int, endpoint: str, deadline_s: float = 90) -> None:
    body = b'{"SIGNATURE":"%s","INPUT_VALUE":42}' % endpoint.encode()
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/run", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"gateway on {port} not ready")


def stop(proc: subprocess.Popen) -> float:
    started = time.monotonic()
    tree = [proc.pid]
    try:
        tree += [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    except psutil.Error:
        pass
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        pass
    took = time.monotonic() - started
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    return took


def wrk(port: int, conc: int, seconds: int, lua: str) -> dict[str, float]:
    threads = 1 if conc == 1 else 2
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{conc}", f"-d{seconds}s", "--latency",
                          "-s", lua, f"http://127.0.0.1:{port}/run"],
                         capture_output=True, text=True, check=True).stdout
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests": total, "rps": total / seconds,
            "p50_ms": float(p50.group(1)) * scale[p50.group(2)] if p50 else float("nan"),
            "errors": int(bad.group(1)) if bad else 0}


def workers_of(manager: int, kind: str) -> list[int]:
    """Pids of the front's (``kind`` "front") or the servers' worker processes."""
    root = psutil.Process(manager)
    return [p.pid for p in root.children(recursive=True) if role(p, manager) == f"{kind} worker"]


def profile(pid: int, seconds: int, out: Path) -> subprocess.Popen:
    """py-spy, sampling one process while the load runs (collapsed stacks to ``out``).

    ``--gil``: only the thread holding the GIL, i.e. where Python spends CPU; time in
    C code that releases it (socket calls inside uvloop) is not counted.
    """
    return subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--duration", str(seconds),
                             "--rate", "1000", "--format", "raw", "--nonblocking", "--gil",
                             "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stacks(path: Path) -> list[tuple[str, int]]:
    """The collapsed stacks of a py-spy ``raw`` file, with their sample counts."""
    out = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if count.isdigit():
            out.append((stack, int(count)))
    return out


def samples(path: Path) -> int:
    return sum(count for _stack, count in stacks(path))


def top_frames(path: Path, n: int = 12) -> list[tuple[str, float]]:
    """Share of samples per innermost frame (function and file), largest first."""
    counts: dict[str, int] = {}
    total = 0
    for stack, count in stacks(path):
        frame = stack.split(";")[-1]
        frame = re.sub(r" \((.*/)?([^/]+?)(:\d+)?\)$", r" (\2)", frame)
        counts[frame] = counts.get(frame, 0) + count
        total += count
    return [(f, c / max(1, total)) for f, c in sorted(counts.items(), key=lambda x: -x[1])[:n]]


def measure(name: str, checkout: Path, args: argparse.Namespace, lua: str) -> dict[str, Any]:
    port = free_port()
    with tempfile.TemporaryDirectory() as cache:
        proc = start(checkout, args.app, args.python, port, cache, args.endpoint,
                     gateway=args.settings.get(name))
        try:
            wait_ready(port, args.endpoint)
            time.sleep(1)
            points = {}
            for conc in args.conc:
                wrk(port, conc, args.warmup, lua)
                spies = []
                if args.profile and conc == max(args.conc):
                    args.profile.mkdir(parents=True, exist_ok=True)
                    # Every worker: the busiest of each kind is reported (the other
                    # endpoint's workers idle).
                    for kind in ("front", "server"):
                        for pid in workers_of(proc.pid, kind):
                            out = args.profile / f"{name}-{kind}-{pid}-c{conc}.txt"
                            spies.append((kind, out, profile(pid, args.duration - 1, out)))
                before = cpu_by_role(proc.pid)
                result: dict[str, Any] = dict(wrk(port, conc, args.duration, lua))
                after = cpu_by_role(proc.pid)
                for _kind, _out, spy in spies:
                    spy.wait()
                for kind in ("front", "server"):
                    files = [out for k, out, _spy in spies if k == kind and out.exists()]
                    if not files:
                        continue
                    busiest = max(files, key=samples)
                    print(f"  {name} busiest {kind} worker, c={conc}: share of GIL-holding "
                          "samples per innermost frame")
                    for frame, share in top_frames(busiest):
                        print(f"    {share:6.1%}  {frame}")
                n = max(1, result["requests"])
                result["cpu_ms"] = {k: round((after.get(k, 0) - before.get(k, 0)) * 1000 / n, 4)
                                    for k in after}
                result["cpu_ms_total"] = round(sum(result["cpu_ms"].values()), 4)
                points[conc] = result
                print(f"  {name:>8} c={conc:<3} {result['rps']:8.0f} req/s  p50 "
                      f"{result['p50_ms']:6.3f} ms  CPU {result['cpu_ms_total']:.3f} ms/req  "
                      + "  ".join(f"{k} {v:.3f}" for k, v in sorted(result["cpu_ms"].items())
                                  if v > 0.0005), flush=True)
        finally:
            points_stop = stop(proc)
    return {"points": points, "stop_s": round(points_stop, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", action="append", required=True,
                        help="NAME=PATH of a project checkout (give two or more)")
    parser.add_argument("--app", type=Path, default=DEFAULT_APP)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--conc", type=lambda v: [int(x) for x in v.split(",")], default=[1, 16])
    parser.add_argument("--endpoint", default="noop", help="noop, or cpu (~20 ms of Python)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile", type=Path,
                        help="folder: py-spy one front and one server worker at the highest "
                             "concurrency (py-spy on PATH)")
    parser.add_argument("--settings", action="append", default=[],
                        help="NAME=JSON: gateway settings merged into checkout NAME's config")
    parser.add_argument("--otlp-sink", action="store_true",
                        help="start an OTLP/HTTP receiver that drops what it gets ($SINK)")
    args = parser.parse_args()
    sink = otlp_sink() if args.otlp_sink else ""
    args.settings = {n: json.loads(j.replace("$SINK", sink))
                     for n, j in (s.split("=", 1) for s in args.settings)}
    checkouts = [(n, Path(p).resolve()) for n, p in (c.split("=", 1) for c in args.checkout)]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(LUA % args.endpoint)
        lua = fh.name
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n, _ in checkouts}
    try:
        for rnd in range(args.rounds):
            print(f"round {rnd + 1}", flush=True)
            order = checkouts if rnd % 2 == 0 else checkouts[::-1]
            for name, path in order:
                runs[name].append(measure(name, path, args, lua))
    finally:
        os.unlink(lua)
    print("\nmedians over rounds")
    summary: dict[str, Any] = {}
    for name, results in runs.items():
        for conc in args.conc:
            pts = [r["points"][conc] for r in results]
            med = {k: statistics.median(p[k] for p in pts)
                   for k in ("rps", "p50_ms", "cpu_ms_total")}
            roles = sorted({k for p in pts for k in p["cpu_ms"]})
            med_roles = {k: statistics.median(p["cpu_ms"].get(k, 0.0) for p in pts) for k in roles}
            summary.setdefault(name, {})[conc] = {**med, "cpu_ms": med_roles}
            print(f"  {name:>8} c={conc:<3} {med['rps']:8.0f} req/s  p50 {med['p50_ms']:6.3f} ms  "
                  f"CPU {med['cpu_ms_total']:.3f} ms/req  "
                  + "  ".join(f"{k} {v:.3f}" for k, v in med_roles.items() if v > 0.0005))
        print(f"  {name:>8} stop: {[r['stop_s'] for r in results]} s")
    if len(runs) >= 2:
        print_paired(runs, args.conc)
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "summary": summary}, indent=1))
    return 0


def print_paired(runs: dict[str, list[dict[str, Any]]], concs: list[int]) -> None:
    """The median of each round's own ratio, every checkout over the first: the figure
    that survives a machine whose speed drifts between rounds."""
    (first, before), *others = runs.items()
    for second, after in others:
        print(f"\npaired ratios {second}/{first}, median over rounds")
        for conc in concs:
            for key in ("cpu_ms_total", "rps"):
                ratios = [a["points"][conc][key] / b["points"][conc][key]
                          for a, b in zip(after, before, strict=True) if b["points"][conc][key]]
                print(f"  c={conc:<3} {key:<13} {statistics.median(ratios):.3f}  "
                      f"(rounds: {' '.join(f'{r:.3f}' for r in ratios)})")


def otlp_sink() -> str:
    """An OTLP/HTTP receiver in a thread of this process: it reads each export and answers
    200 with an empty body (an empty ExportTraceServiceResponse); its URL."""

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/v1/traces"


if __name__ == "__main__":
    sys.exit(main())
