#!/usr/bin/env python
"""``/update_workers`` from 1 to N workers, before and after, in one run.

    python bench/bench_scale.py --checkout before=/path/to/old --checkout after=. \\
        [--rounds 3] [--workers 8] [--json out.json]

For each round (odd rounds in the given order, even rounds reversed) and each
checkout: start ``run_gateway.py`` of that checkout on the peer harness's ``noop``
endpoint with one worker, wait until it serves, then ``POST /update_workers`` to N and
measure from the moment the command is sent:

- ``last_fork``: to the last new worker's fork, read from the kernel's start time of
  each process (10 ms steps), against a marker process started as the command is sent;
- ``ready``: to ``/list_servers`` showing N workers ready (polled every 10 ms).

It prints both per round, then the medians. Only ratios between checkouts measured in
the same run mean anything: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
from bench_front import DEFAULT_APP, free_port, stop, wait_ready

TOKEN = "bench-scale-token"


def start(checkout: Path, app: Path, python: str, port: int,
          cache: Path) -> subprocess.Popen[bytes]:
    """``run_gateway.py`` of ``checkout`` serving ``noop`` alone with one worker; its log
    goes to ``cache/gateway.log``."""
    config = json.loads((app / "config_gateway.json").read_text())
    config["FIRST_SERVER_PORT"] = 0
    config["CONFIG_ENDPOINTS"] = {"noop": {**config["CONFIG_ENDPOINTS"]["noop"], "NR_WORKERS": 1}}
    (cache / "config_gateway.json").write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": f"{checkout}{os.pathsep}{app.parent / 'peers'}",
           "BIS_ADMIN_TOKEN": TOKEN, "BIS_LOG_JSON": "0"}
    log = (cache / "gateway.log").open("w")
    return subprocess.Popen(
        [python, str(checkout / "run_gateway.py"), "--host", "127.0.0.1", "--port", str(port),
         "--config", str(cache / "config_gateway.json"), "--endpoints", "endpoints",
         "--cache", str(cache / "cache")],
        cwd=app, env=env, stdout=log, stderr=log, start_new_session=True)


def admin(port: int, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                 headers={"Authorization": f"Bearer {TOKEN}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
    return answer


def noop_server(port: int) -> dict[str, Any]:
    server: dict[str, Any] = admin(port, "/list_servers")["SERVERS"]["noop"]
    return server


def started_at(pid: int) -> float:
    """When the kernel started ``pid`` (its fork), on psutil's clock (10 ms steps)."""
    return float(psutil.Process(pid).create_time())


def measure(checkout: Path, args: argparse.Namespace) -> dict[str, float]:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        proc = start(checkout, args.app, args.python, port, cache)
        try:
            wait_ready(port, "noop")
            deadline = time.monotonic() + 30
            while len(first := noop_server(port)["worker_pids"]) != 1:
                if time.monotonic() > deadline:
                    raise RuntimeError("noop does not settle at one worker")
                time.sleep(0.05)
            sent = time.monotonic()
            with subprocess.Popen(["sleep", "60"]) as marker:
                t0 = started_at(marker.pid)
                marker.kill()
            admin(port, "/update_workers", {"SIGNATURE": "noop", "NR_WORKERS": args.workers})
            deadline = sent + 60
            while len(pids := noop_server(port)["worker_pids"]) < args.workers:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"noop does not reach {args.workers} ready workers")
                time.sleep(0.01)
            ready = time.monotonic() - sent
            forks = [started_at(pid) for pid in set(pids) - set(first)]
        finally:
            stop(proc)
    if len(forks) != args.workers - 1:
        raise RuntimeError(f"{len(forks)} workers forked, {args.workers - 1} expected")
    return {"last_fork_ms": round((max(forks) - t0) * 1000, 1),
            "ready_ms": round(ready * 1000, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", action="append", required=True,
                        help="NAME=PATH of a project checkout (give two or more)")
    parser.add_argument("--app", type=Path, default=DEFAULT_APP)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8, help="scale from 1 to this")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    checkouts = [(name, Path(path).resolve()) for name, _, path in
                 (c.partition("=") for c in args.checkout)]
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in checkouts}
    for round_no in range(args.rounds):
        order = checkouts if round_no % 2 == 0 else checkouts[::-1]
        for name, path in order:
            result = measure(path, args)
            results[name].append(result)
            print(f"round {round_no + 1} {name:>8}: last fork {result['last_fork_ms']:7.1f} ms"
                  f"  ready {result['ready_ms']:7.1f} ms", flush=True)
    print("medians:")
    summary = {}
    for name, rows in results.items():
        summary[name] = {key: statistics.median(r[key] for r in rows)
                         for key in ("last_fork_ms", "ready_ms")}
        print(f"  {name:>8}: last fork {summary[name]['last_fork_ms']:7.1f} ms  "
              f"ready {summary[name]['ready_ms']:7.1f} ms")
    if args.json:
        args.json.write_text(json.dumps({"rounds": results, "medians": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
