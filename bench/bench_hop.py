#!/usr/bin/env python
"""What the gateway's hop costs: one endpoint through the front and called directly.

    python bench/bench_hop.py [--checkout [NAME=]PATH ...] [--rounds 7] [--duration 5] \\
        [--conc 16] [--endpoint noop] [--json out.json] [--profile DIR]

It starts ``run_gateway.py`` of a checkout (this one by default) on the peer harness's
``noop`` endpoint
(as :mod:`bench_front` does: 2 server workers, the front's default worker count, access
log off) with ``TCP_PORT`` on, so that its endpoint server also listens on a TCP port of
its own. Then rounds alternate, with the same wrk and the same body: ``POST /run`` to
the gateway, and ``POST /run`` straight to the endpoint server (odd rounds in that
order, even rounds reversed). Each round prints req/s, p50 and the CPU per request of
the front and the server processes; the summary is the median of each round's own
ratio gateway / direct (req/s), and the medians of the CPU per request. With two
checkouts (``--checkout before=PATH --checkout after=.``) both gateways run at once and
each round loads both, in alternating order; the summary adds the median of the
per-round ratios after / before. Only ratios within one run mean anything: the machine
is shared.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_front import (
    DEFAULT_APP,
    LUA,
    REPO,
    cpu_by_role,
    free_port,
    profile,
    start,
    stop,
    top_frames,
    wait_ready,
    workers_of,
    wrk,
)

PATHS = ("gateway", "direct")


def load(port: int, args: argparse.Namespace, lua: str, manager: int,
         spy_to: Path | None) -> dict[str, Any]:
    """One measured load of ``port``: wrk's figures and the CPU per request by role."""
    spies = []
    if spy_to is not None:
        spy_to.mkdir(parents=True, exist_ok=True)
        for kind in ("front", "server"):
            for pid in workers_of(manager, kind):
                out = spy_to / f"{kind}-{pid}.txt"
                spies.append((kind, out, profile(pid, args.duration - 1, out)))
    before = cpu_by_role(manager)
    result: dict[str, Any] = wrk(port, args.conc, args.duration, lua)
    after = cpu_by_role(manager)
    for _kind, _out, spy in spies:
        spy.wait()
    n = max(1, result["requests"])
    result["cpu_ms"] = {k: (after.get(k, 0.0) - before.get(k, 0.0)) * 1000 / n for k in after}
    result["cpu_ms_total"] = sum(result["cpu_ms"].values())
    for kind in ("front", "server"):
        files = [out for k, out, _spy in spies if k == kind and out.exists()]
        for out in files:
            print(f"    py-spy {out.name}: share of GIL-holding samples per innermost frame")
            for frame, share in top_frames(out):
                print(f"      {share:6.1%}  {frame}")
    return result


def line(name: str, r: dict[str, Any]) -> str:
    roles = "  ".join(f"{k} {v:.4f}" for k, v in sorted(r["cpu_ms"].items()) if v > 0.0005)
    return (f"  {name:>8} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:6.3f} ms  "
            f"CPU {r['cpu_ms_total']:.4f} ms/req  {roles}  errors {r['errors']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", action="append",
                        help="[NAME=]PATH of a project checkout (default: this one); twice "
                             "to compare two")
    parser.add_argument("--app", type=Path, default=DEFAULT_APP)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--conc", type=int, default=16)
    parser.add_argument("--endpoint", default="noop")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile", type=Path,
                        help="folder: py-spy every front and server worker in the first "
                             "round (py-spy on PATH)")
    args = parser.parse_args()
    checkouts = [checkout(c) for c in args.checkout or [str(REPO)]]
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {n: {p: [] for p in PATHS}
                                                         for n, _ in checkouts}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(LUA % args.endpoint)
        lua = fh.name
    with contextlib.ExitStack() as stack:
        stack.callback(os.unlink, lua)
        managers, ports = {}, {}
        for name, path in checkouts:
            managers[name], ports[name] = start_pair(stack, path, args)
        for name, _ in checkouts:
            for which in PATHS:
                wrk(ports[name][which], args.conc, args.warmup, lua)
        for rnd in range(args.rounds):
            print(f"round {rnd + 1}", flush=True)
            for name, _ in checkouts if rnd % 2 == 0 else checkouts[::-1]:
                for which in PATHS if rnd % 2 == 0 else PATHS[::-1]:
                    spy_to = args.profile / name / which if args.profile and rnd == 0 else None
                    result = load(ports[name][which], args, lua, managers[name], spy_to)
                    runs[name][which].append(result)
                    print(line(f"{name} {which}", result), flush=True)
            time.sleep(0.5)
    summary = {name: summarize(name, r) for name, r in runs.items()}
    if len(runs) == 2:
        summary["paired"] = compare(runs)
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "summary": summary}, indent=1))
    errors = sum(r["errors"] for per in runs.values() for rs in per.values() for r in rs)
    return 0 if not errors else 1


def checkout(spec: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` (named by its folder)."""
    name, _, path = spec.rpartition("=")
    return name or Path(path).resolve().name, Path(path).resolve()


def start_pair(stack: contextlib.ExitStack, checkout: Path,
               args: argparse.Namespace) -> tuple[int, dict[str, int]]:
    """Start a checkout's gateway with its endpoint's TCP port; its manager's pid and the
    ports of both paths, once both answer."""
    gateway_port, server_port = free_port(), free_port()
    cache = stack.enter_context(tempfile.TemporaryDirectory())
    proc = start(checkout, args.app, args.python, gateway_port, cache, args.endpoint,
                 {"TCP_PORT": True, "PORT": server_port})
    stack.callback(stop, proc)
    wait_ready(gateway_port, args.endpoint)
    wait_ready(server_port, args.endpoint)
    return proc.pid, {"gateway": gateway_port, "direct": server_port}


def summarize(name: str, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Print and return the medians per path and the median of the per-round ratios."""
    print(f"\n{name}: medians over rounds")
    summary: dict[str, Any] = {}
    for which, results in runs.items():
        roles = sorted({k for r in results for k in r["cpu_ms"]})
        med = {"rps": statistics.median(r["rps"] for r in results),
               "p50_ms": statistics.median(r["p50_ms"] for r in results),
               "cpu_ms_total": statistics.median(r["cpu_ms_total"] for r in results),
               "cpu_ms": {k: statistics.median(r["cpu_ms"].get(k, 0.0) for r in results)
                          for k in roles},
               "errors": sum(r["errors"] for r in results)}
        summary[which] = med
        print(line(which, med))
    pairs = list(zip(runs["gateway"], runs["direct"], strict=True))
    ratios = [g["rps"] / d["rps"] for g, d in pairs]
    cpu = [g["cpu_ms_total"] / d["cpu_ms_total"] for g, d in pairs]
    summary["ratio_rps"] = statistics.median(ratios)
    summary["ratio_cpu"] = statistics.median(cpu)
    print(f"  gateway / direct req/s, median of paired rounds: {summary['ratio_rps']:.3f}  "
          f"(rounds: {' '.join(f'{r:.3f}' for r in ratios)})")
    print(f"  gateway / direct CPU per request, whole tree:    {summary['ratio_cpu']:.3f}  "
          f"(rounds: {' '.join(f'{r:.3f}' for r in cpu)})")
    return summary


def compare(runs: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, float]:
    """The median of each round's own ratio, second checkout over first, through the
    gateway: req/s, CPU per request of the whole tree and of the front's workers."""
    (first, before), (second, after) = runs.items()
    out = {}
    print(f"\n{second} / {first} through the gateway, median of paired rounds")
    for key, read in (("rps", lambda r: r["rps"]),
                      ("cpu_ms_total", lambda r: r["cpu_ms_total"]),
                      ("front_cpu_ms", lambda r: r["cpu_ms"].get("front worker", 0.0)),
                      ("server_cpu_ms", lambda r: r["cpu_ms"].get("server worker", 0.0))):
        ratios = [read(a) / read(b) for a, b in zip(after["gateway"], before["gateway"],
                                                      strict=True) if read(b)]
        out[key] = statistics.median(ratios)
        print(f"  {key:<14} {out[key]:.3f}  (rounds: {' '.join(f'{r:.3f}' for r in ratios)})")
    return out


if __name__ == "__main__":
    sys.exit(main())
