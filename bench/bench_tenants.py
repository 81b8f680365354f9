#!/usr/bin/env python
"""What API keys, rate limits and the ledger cost per request, against keys off, in one run.

    python bench/bench_tenants.py [--modes off,keys,limits] [--rounds 11] [--duration 4] \\
        [--conc 16] [--redis redis://127.0.0.1:PORT/0] [--postgres postgresql://...] \\
        [--json out.json]

Modes: ``off`` (API_KEYS false: the baseline), ``keys`` (API_KEYS on, a key without
limits), ``limits`` (API_KEYS on, a key with a rate limit, an endpoint rate limit and
MAX_CONCURRENT, all far above the load: every request takes its tokens), ``ledger``
(as ``keys``, with LEDGER_POSTGRES set to ``--postgres``: every request is journaled,
and the manager ships the journal; compare it with ``keys``: ``--modes keys,ledger``).
With ``--redis`` the keys and limits live in that Redis (TENANTS_REDIS), else in SQLite.

It starts this checkout's gateway once per mode, all at once, on the peer harness's
``noop`` endpoint. Each round then loads each gateway in turn (odd rounds in the given
order, even rounds reversed) with wrk on ``POST /run``, and reads the CPU time of its
whole process tree during the measured seconds: the modes of one round are measured
seconds apart, so the machine's drift over minutes moves them together. It prints CPU
ms per request per mode and round, then the medians, each mode's ratio to ``off``, and
the median of the rounds' own ratios (``paired``). The bar: ``limits`` / ``off`` <= 1.10.

On a busy machine the whole-tree figures move by more than the 10 % being judged, so
the script also times the added work alone, in this process: the front's key check
(``TenantGate.cached``, else ``authenticate``) and limit step (``admit_held``, else
``admit``; ``release_held``, else ``give_back``) on the same
key shapes and the same store (SQLite and shared-memory limits, or the Redis of
``--redis``), from ``--conc`` concurrent callers, as CPU microseconds per request, and
prints them against the ``off`` median of the same run, with the journal's append
(``Journal.record``) alone. (Redis's and PostgreSQL's own CPU is not counted: they are
not in the gateway's process tree.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_front import DEFAULT_APP, REPO, cpu_by_role, free_port, stop, wrk  # noqa: E402

# Limits far above the load: every request takes its tokens and a slot, none is refused.
LIMITS = {"RATE": 1e6, "BURST": 10**6, "MAX_CONCURRENT": 10**4,
          "ENDPOINT_LIMITS": {"noop": {"RATE": 1e6, "BURST": 10**6}}}
TOKEN = "bench-admin-token-" + os.urandom(8).hex()
LUA = """wrk.method = "POST"
wrk.body = '{"SIGNATURE":"noop","INPUT_VALUE":42}'
wrk.headers["Content-Type"] = "application/json"
%s
"""


def start(mode: str, args: argparse.Namespace, port: int, cache: str) -> subprocess.Popen:
    config = json.loads((args.app / "config_gateway.json").read_text())
    config.update(FIRST_SERVER_PORT=0, API_KEYS=mode != "off", TENANTS_REDIS=args.redis,
                  LEDGER_POSTGRES=args.postgres if mode == "ledger" else None)
    path = Path(cache) / "config_gateway.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{args.app.parent / 'peers'}",
           "BIS_ADMIN_TOKEN": TOKEN}
    return subprocess.Popen(
        [sys.executable, str(REPO / "run_gateway.py"), "--host", "127.0.0.1", "--port", str(port),
         "--config", str(path), "--endpoints", "endpoints", "--cache", cache],
        cwd=args.app, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)


def post(port: int, path: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except OSError:
        return 0, None


def make_key(mode: str, port: int) -> str | None:
    if mode == "off":
        return None
    fields: dict[str, Any] = {"TENANT": "bench", **(LIMITS if mode == "limits" else {})}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, body = post(port, "/keys", fields, {"Authorization": f"Bearer {TOKEN}"})
        if status == 201:
            return str(body["KEY"])
        time.sleep(0.2)
    raise RuntimeError("could not create a key")


def wait_ready(port: int, key: str | None) -> None:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if post(port, "/run", {"SIGNATURE": "noop", "INPUT_VALUE": 42}, headers)[0] == 200:
            return
        time.sleep(0.2)
    raise RuntimeError(f"gateway on {port} not ready")


class Gateway:
    """One mode's gateway, started once for the whole run, with its key and wrk script."""

    def __init__(self, mode: str, args: argparse.Namespace, cache: str) -> None:
        self.mode = mode
        self.port = free_port()
        self.proc = start(mode, args, self.port, cache)
        key = make_key(mode, self.port)
        wait_ready(self.port, key)
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
            fh.write(LUA % (f'wrk.headers["Authorization"] = "Bearer {key}"' if key else ""))
        self.lua = fh.name

    def burst(self, args: argparse.Namespace) -> dict[str, float]:
        """Load it: a warm-up, then ``args.duration`` seconds measured."""
        wrk(self.port, args.conc, args.warmup, self.lua)
        before = cpu_by_role(self.proc.pid)
        result = wrk(self.port, args.conc, args.duration, self.lua)
        after = cpu_by_role(self.proc.pid)
        n = max(1, result["requests"])
        roles = {k: (after[k] - before.get(k, 0.0)) * 1000 / n for k in after}
        out = {"rps": result["rps"], "p50_ms": result["p50_ms"], "errors": result["errors"],
               "cpu_ms": sum(roles.values()), "front_ms": roles.get("front worker", 0.0),
               "server_ms": roles.get("server worker", 0.0)}
        print(f"  {self.mode:>7} {out['rps']:8.0f} req/s  p50 {out['p50_ms']:6.3f} ms  "
              f"CPU {out['cpu_ms']:.4f} ms/req (front workers {out['front_ms']:.4f}, server "
              f"workers {out['server_ms']:.4f})  non-2xx {out['errors']}", flush=True)
        return out

    def close(self) -> None:
        os.unlink(self.lua)
        stop(self.proc)


async def _gate_cost(n: int, conc: int, redis_url: str | None) -> dict[str, float]:
    from basic_inference_server.ledger.journal import Journal
    from basic_inference_server.tenants import TenantsSpec
    from basic_inference_server.tenants.gate import TenantGate
    from basic_inference_server.tenants.keys import key_from_request

    async def inline(func: Any, *args: Any) -> Any:
        return func(*args)

    if redis_url:
        redis_url += ("&" if "?" in redis_url else "?") + f"prefix=bench-{os.urandom(4).hex()}"
    with tempfile.TemporaryDirectory() as folder:
        gate = TenantGate(TenantsSpec(True, str(Path(folder) / "tenants.db"), redis_url),
                          inline, 2)
        out = {}
        for mode, fields in (("keys", {}), ("limits", LIMITS)):
            key, secret = key_from_request({"TENANT": "bench", **fields})
            gate.store.add(key)
            headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                       (b"authorization", b"Bearer " + secret.encode())]
            await gate.authenticate(headers)

            async def caller(count: int, headers: list[tuple[bytes, bytes]] = headers) -> None:
                # The gate calls of the front's /run (gateway/tenancy.py, KeyTenancy), in its order.
                for _ in range(count):
                    found = gate.cached(headers) or await gate.authenticate(headers)
                    slot, decision = (gate.admit_held(found, "noop")
                                      or await gate.admit(found, "noop"))
                    if slot is not None and not gate.release_held(slot):
                        await gate.give_back(slot)
                    if decision is not None:
                        decision.headers()

            started = time.process_time()
            await asyncio.gather(*(caller(n // conc) for _ in range(conc)))
            out[mode] = (time.process_time() - started) * 1e6 / (n // conc * conc)
        journal = Journal(Path(folder) / "ledger")
        started = time.process_time()
        for _ in range(n):
            journal.record("bench", "noop", 200, 0.0, 0.001)
        out["journal"] = (time.process_time() - started) * 1e6 / n
        journal.close()
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="off,keys,limits")
    parser.add_argument("--app", type=Path, default=DEFAULT_APP)
    parser.add_argument("--redis", default=None, help="TENANTS_REDIS URL (default: SQLite)")
    parser.add_argument("--postgres", default=None,
                        help="LEDGER_POSTGRES URL of the ledger mode")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--duration", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--conc", type=int, default=16)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    modes = args.modes.split(",")
    if "ledger" in modes and not args.postgres:
        parser.error("the ledger mode needs --postgres URL")
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    with contextlib.ExitStack() as stack:
        gateways = {}
        for mode in modes:
            cache = stack.enter_context(tempfile.TemporaryDirectory())
            gateways[mode] = Gateway(mode, args, cache)
            stack.callback(gateways[mode].close)
        for rnd in range(args.rounds):
            print(f"round {rnd + 1}", flush=True)
            for mode in (modes if rnd % 2 == 0 else modes[::-1]):
                runs[mode].append(gateways[mode].burst(args))
    print(f"\nmedians over {args.rounds} rounds (c={args.conc}, store "
          f"{'redis' if args.redis else 'sqlite'})")
    base = statistics.median(r["cpu_ms"] for r in runs[modes[0]])
    summary: dict[str, Any] = {}
    for mode, results in runs.items():
        med = {k: statistics.median(r[k] for r in results)
               for k in ("rps", "p50_ms", "cpu_ms", "front_ms", "server_ms")}
        med["cpu_ratio"] = med["cpu_ms"] / base
        # Each round's ratio to the first mode's burst of the same round (seconds apart).
        med["paired_ratio"] = statistics.median(
            r["cpu_ms"] / b["cpu_ms"] for r, b in zip(results, runs[modes[0]], strict=True))
        summary[mode] = med
        print(f"  {mode:>7} {med['rps']:8.0f} req/s  p50 {med['p50_ms']:6.3f} ms  "
              f"CPU {med['cpu_ms']:.4f} ms/req  x{med['cpu_ratio']:.3f} of {modes[0]}, "
              f"paired x{med['paired_ratio']:.3f}  (front workers {med['front_ms']:.4f}, "
              f"server workers {med['server_ms']:.4f})")
    costs = asyncio.run(_gate_cost(20000, args.conc, args.redis))
    print("\nthe added work alone, CPU per request (in this process)")
    for mode, micros in costs.items():
        summary.setdefault("gate_us", {})[mode] = micros
        print(f"  {mode:>7} {micros:6.1f} us  = {micros / 10 / base:5.2f} % of off's "
              f"{base:.4f} ms/req")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
