#!/usr/bin/env python
"""End-to-end benchmark of the gateway: one run, five measurements, one summary.

    python bench/bench_gateway.py [--duration 5] [--json results.json] [--skip-startup] ...

1. starts a gateway (echo with NR_WORKERS 2, cpu_bound with NR_WORKERS 1) on free ports;
2. echo (no-op) with wrk at two concurrencies, directly on the endpoint server's port
   and through the gateway's /run: req/s, p50, p99, and what the gateway costs;
3. cpu_bound at a saturating concurrency with NR_WORKERS 1, then 2 (changed at run time
   with /update_workers): req/s and the 2/1 ratio;
4. memory at rest of a gateway serving only echo with NR_WORKERS 2: RSS, PSS, USS;
5. start-up time of the repo's demo configuration: spawn to each endpoint's first /run.

Every gateway runs in its own session; it is always stopped (SIGTERM, then SIGKILL of
every process of its tree) and the script checks that no process is left behind.
The exit status is non-zero when any step failed to run; slow figures are not failures.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.client
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
RUN_GATEWAY = REPO / "run_gateway.py"
ENDPOINTS = REPO / "endpoints"
# The benchmark's gateways get this admin token; every call here sends it.
ADMIN_TOKEN = os.urandom(16).hex()
DEMO_CONFIG = REPO / "config_gateway.json"
MIB = 1024 * 1024

ECHO_BODY = {"SIGNATURE": "echo", "INPUT_VALUE": "ping"}
MLP_INPUT = [round(0.1 * i - 0.8, 2) for i in range(16)]


class BenchError(Exception):
    """A step of the benchmark could not be run."""


# -- small helpers ---------------------------------------------------------------------
def log(msg: str = "") -> None:
    print(msg, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(port: int, method: str, path: str, body: dict[str, Any] | None = None,
              timeout: float = 10.0) -> tuple[int, dict[str, Any] | None]:
    """One HTTP call to 127.0.0.1:port; returns (status, decoded JSON or None)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        decoded = json.loads(raw) if raw else None
    except ValueError:
        decoded = None
    return resp.status, decoded if isinstance(decoded, dict) else None


def poll(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.05,
         alive: Callable[[], None] | None = None) -> Any:
    """Call ``check`` until it returns a truthy value; BenchError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        if alive is not None:
            alive()
        try:
            value = check()
            if value:
                return value
        except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError,
                psutil.Error) as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}{extra}")
        time.sleep(interval)


def load_count_primes() -> Callable[[int], int]:
    spec = importlib.util.spec_from_file_location("bench_cpu_bound", ENDPOINTS / "cpu_bound.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.count_primes  # type: ignore[no-any-return]


def calibrate_limit(target_ms: float) -> tuple[int, float, int]:
    """A LIMIT for which cpu_bound's count_primes takes about ``target_ms`` here."""
    count_primes = load_count_primes()

    def cost(limit: int) -> float:
        count_primes(limit)  # warm
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            count_primes(limit)
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1000

    limit = 30000
    ms = cost(limit)
    for _ in range(4):
        if 0.85 * target_ms <= ms <= 1.15 * target_ms:
            break
        # count_primes grows a little faster than linearly (about limit^1.4).
        limit = max(1000, int(limit * (target_ms / ms) ** (1 / 1.4)))
        ms = cost(limit)
    return limit, ms, count_primes(limit)


# -- wrk -------------------------------------------------------------------------------
WRK_LUA = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
{count_workers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {{"requests":%d,"duration_us":%d,"bytes":%d,"per_worker":{{%s}},' ..
    '"errors":{{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}},' ..
    '"latency_us":{{"min":%d,"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}}}\\n',
    summary.requests, summary.duration, summary.bytes, per_worker_json(),
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
"""

# Without counting: no per-response Lua callback (it costs wrk CPU on the fast echo runs).
WRK_NO_COUNT = """
per_worker_json = function() return "" end
"""

# Counts answers per worker_pid (each wrk thread has its own Lua state; done() sums them).
WRK_COUNT = """
local threads = {}
setup = function(thread) table.insert(threads, thread) end
counts = {}  -- global: done() reads it with thread:get("counts")
response = function(status, headers, body)
  local pid = string.match(body, '"worker_pid":(%d+)') or "none"
  counts[pid] = (counts[pid] or 0) + 1
end
per_worker_json = function()
  local total, parts = {}, {}
  for _, t in ipairs(threads) do
    for pid, n in pairs(t:get("counts")) do total[pid] = (total[pid] or 0) + n end
  end
  for pid, n in pairs(total) do table.insert(parts, string.format('"%s":%d', pid, n)) end
  return table.concat(parts, ",")
end
"""


class Wrk:
    def __init__(self, binary: str, workdir: Path, threads: int) -> None:
        self.binary = binary
        self.workdir = workdir
        self.threads = threads
        self._scripts: dict[str, Path] = {}

    def _script(self, body: dict[str, Any], count_workers: bool) -> Path:
        text = json.dumps(body, separators=(",", ":"))
        key = f"{count_workers}:{text}"
        if key not in self._scripts:
            path = self.workdir / f"wrk_{len(self._scripts)}.lua"
            path.write_text(WRK_LUA.format(
                body=text, count_workers=WRK_COUNT if count_workers else WRK_NO_COUNT))
            self._scripts[key] = path
        return self._scripts[key]

    def run(self, port: int, body: dict[str, Any], connections: int,
            duration: int, count_workers: bool = False) -> dict[str, Any]:
        """POST ``body`` to http://127.0.0.1:port/run; req/s and latency in ms."""
        threads = max(1, min(self.threads, connections))
        cmd = [self.binary, "-t", str(threads), "-c", str(connections), "-d", f"{duration}s",
               "--timeout", "10s", "--latency", "-s", str(self._script(body, count_workers)),
               f"http://127.0.0.1:{port}/run"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
        except subprocess.TimeoutExpired:
            raise BenchError(f"wrk did not finish: {' '.join(cmd)}") from None
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
        if proc.returncode != 0 or line is None:
            raise BenchError(f"wrk failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                             f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        raw = json.loads(line[len("BENCH_JSON "):])
        errors = {k: v for k, v in raw["errors"].items() if v}
        if raw["requests"] == 0 or errors:
            raise BenchError(f"wrk on port {port} c={connections}: {raw['requests']} requests, "
                             f"errors {errors or 'none'} (non-2xx answers count as 'status')")
        lat = raw["latency_us"]
        out = {
            "connections": connections,
            "wrk_threads": threads,
            "duration_s": round(raw["duration_us"] / 1e6, 3),
            "requests": raw["requests"],
            "rps": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
            "p50_ms": round(lat["p50"] / 1000, 3),
            "p90_ms": round(lat["p90"] / 1000, 3),
            "p99_ms": round(lat["p99"] / 1000, 3),
            "p999_ms": round(lat["p999"] / 1000, 3),
            "mean_ms": round(lat["mean"] / 1000, 3),
            "max_ms": round(lat["max"] / 1000, 3),
        }
        if count_workers:
            out["per_worker_pid"] = dict(sorted(raw["per_worker"].items()))
        return out


# -- one gateway -------------------------------------------------------------------------
class Gateway:
    """``run_gateway.py`` started in its own session on free ports; always stopped."""

    def __init__(self, label: str, config: dict[str, Any], workdir: Path,
                 stop_grace: float = 15.0, cache: Path | None = None) -> None:
        self.label = label
        self.cache = cache  # its own cache folder (several gateways at once); None: _cache
        self.config = config
        self.workdir = workdir
        self.stop_grace = stop_grace
        self.port = free_port()
        self.config_path = workdir / f"config_{label}.json"
        self.log_path = workdir / f"gateway_{label}.log"
        self.proc: subprocess.Popen | None = None
        self.spawned_at = 0.0
        self.leftovers: list[str] = []
        self.shutdown_s: float | None = None

    def start(self) -> Gateway:
        self.config_path.write_text(json.dumps(self.config, indent=2))
        cmd = [sys.executable, str(RUN_GATEWAY), "--host", "127.0.0.1", "--port", str(self.port),
               "--config", str(self.config_path), "--endpoints", str(ENDPOINTS)]
        if self.cache is not None:
            cmd += ["--cache", str(self.cache)]
        logfile = open(self.log_path, "wb")  # noqa: SIM115 - the child keeps it
        try:
            self.spawned_at = time.perf_counter()
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=logfile,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, "BIS_ADMIN_TOKEN": ADMIN_TOKEN})
        finally:
            logfile.close()
        return self

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 40, access: bool = True) -> str:
        """The log's last ``lines``; ``access`` False leaves out the access log's lines
        (under load they would hide a traceback)."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        if not access:
            text = [line for line in text if " bis.access: " not in line]
        return "\n".join(text[-lines:])

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise BenchError(f"gateway {self.label} exited with {code}; log tail:\n"
                             f"{self.log_tail()}")

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             timeout: float = 10.0) -> tuple[int, dict[str, Any] | None]:
        return http_json(self.port, method, path, body, timeout)

    def wait_ready(self, timeout: float) -> float:
        """Poll /health/ready until 200; seconds since spawn."""
        def ready() -> bool:
            status, _ = self.call("GET", "/health/ready", timeout=2)
            return status == 200
        poll(f"{self.label}: /health/ready", ready, timeout, alive=self.check_alive)
        return time.perf_counter() - self.spawned_at

    def servers(self) -> dict[str, Any]:
        status, body = self.call("GET", "/list_servers")
        if status != 200 or body is None:
            raise BenchError(f"/list_servers answered {status}: {body}")
        return body["SERVERS"]  # type: ignore[no-any-return]

    def wait_workers(self, name: str, n: int, timeout: float) -> dict[str, Any]:
        """Until /list_servers shows ``n`` ready workers and the server has ``n`` processes."""
        def done() -> dict[str, Any] | None:
            srv = self.servers()[name]
            if srv["state"] != "READY" or srv["nr_workers"] != n or srv["workers_ready"] != n:
                return None
            master = psutil.Process(srv["pid"])
            workers = [p for p in master.children() if p.status() != psutil.STATUS_ZOMBIE]
            return srv if len(workers) == n else None
        return poll(f"{self.label}: {name} with {n} ready worker(s)", done, timeout,  # type: ignore[no-any-return]
                    alive=self.check_alive)

    def update_workers(self, name: str, n: int) -> None:
        status, body = self.call("POST", "/update_workers", {"SIGNATURE": name, "NR_WORKERS": n})
        if status != 200:
            raise BenchError(f"/update_workers {name} {n} answered {status}: {body}")

    def tree(self) -> list[psutil.Process]:
        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        """SIGTERM the manager's group, wait, then SIGKILL every process of the tree."""
        if self.proc is None:
            return
        procs = self.tree()
        groups = {self.proc.pid}
        for p in procs:
            try:
                groups.add(os.getpgid(p.pid))
            except OSError:
                pass
        t0 = time.perf_counter()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=self.stop_grace)
            self.shutdown_s = time.perf_counter() - t0
        except subprocess.TimeoutExpired:
            pass
        # Whatever the graceful stop left: the manager's group, every child's own
        # group (children run in their own sessions) and each process itself.
        procs += [p for p in self.tree() if p not in procs]
        for pgid in groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        _, alive = psutil.wait_procs(procs, timeout=10)
        self.leftovers = [f"{p.pid} {' '.join(p.cmdline())[:120]}" for p in alive
                          if _exists(p)]
        self.proc = None


def _exists(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def checked_stop(gw: Gateway, results: dict[str, Any]) -> None:
    """Stop ``gw`` and record how; never raises (it runs in ``finally`` blocks).

    Processes left behind are recorded in ``results["cleanup_errors"]``, which fail the run.
    """
    try:
        gw.stop()
    except Exception as exc:  # noqa: BLE001 - reported, not swallowed
        gw.leftovers.append(f"stop failed: {type(exc).__name__}: {exc}")
    results.setdefault("shutdown", {})[gw.label] = {
        "graceful_s": None if gw.shutdown_s is None else round(gw.shutdown_s, 3),
        "leftover_processes": gw.leftovers}
    if gw.leftovers:
        results.setdefault("cleanup_errors", []).append(
            f"gateway {gw.label} left processes behind: {gw.leftovers}")


def bench_config(endpoints: dict[str, Any]) -> dict[str, Any]:
    return {"SERVER_NAME": "bench", "FIRST_SERVER_PORT": 0, "NO_STARTUP_WAIT": True,
            "STOP_TIMEOUT": 5, "CONFIG_ENDPOINTS": endpoints}


def expect_ok(port: int, body: dict[str, Any], check: Callable[[dict[str, Any]], bool],
              what: str) -> None:
    status, answer = http_json(port, "POST", "/run", body)
    if status != 200 or answer is None or not check(answer):
        raise BenchError(f"{what}: /run answered {status}: {answer}")


# -- the measurements --------------------------------------------------------------------
def _split(r: dict[str, Any]) -> str:
    """Answers per endpoint worker process, largest first: '5012/4988'."""
    return "/".join(str(v) for v in sorted(r.get("per_worker_pid", {}).values(), reverse=True))


def echo_section(gw: Gateway, wrk: Wrk, args: argparse.Namespace) -> dict[str, Any]:
    srv = gw.servers()["echo"]
    direct_port = srv["port"]
    targets = {"direct": direct_port, "gateway": gw.port}
    for target, port in targets.items():
        expect_ok(port, ECHO_BODY, lambda a: a.get("echo") == {"INPUT_VALUE": "ping"},
                  f"echo {target}")
    out: dict[str, Any] = {"direct_port": direct_port, "gateway_port": gw.port,
                           "nr_workers": srv["nr_workers"]}
    for target, port in targets.items():
        wrk.run(port, ECHO_BODY, args.high, args.warmup)  # warm-up, discarded
        for c in (args.low, args.high):
            r = wrk.run(port, ECHO_BODY, c, args.duration, count_workers=True)
            out[f"{target}_c{c}"] = r
            log(f"  echo {target:<7} c={c:<3} {r['rps']:>9.1f} req/s   p50 {r['p50_ms']:7.3f} ms"
                f"   p99 {r['p99_ms']:7.3f} ms   answers per worker {_split(r)}")
    d_lo, d_hi = out[f"direct_c{args.low}"], out[f"direct_c{args.high}"]
    g_lo, g_hi = out[f"gateway_c{args.low}"], out[f"gateway_c{args.high}"]
    out["ratio_rps_high"] = round(g_hi["rps"] / d_hi["rps"], 3)
    out["ratio_rps_low"] = round(g_lo["rps"] / d_lo["rps"], 3)
    out["added_p50_low_ms"] = round(g_lo["p50_ms"] - d_lo["p50_ms"], 3)
    out["added_p99_low_ms"] = round(g_lo["p99_ms"] - d_lo["p99_ms"], 3)
    log(f"  gateway/direct req/s at c={args.high}: {out['ratio_rps_high']:.3f}"
        f"   (c={args.low}: {out['ratio_rps_low']:.3f})")
    log(f"  added latency at c={args.low}: p50 {out['added_p50_low_ms']:+.3f} ms,"
        f" p99 {out['added_p99_low_ms']:+.3f} ms")
    return out


def cpu_section(gw: Gateway, wrk: Wrk, args: argparse.Namespace, limit: int,
                primes: int) -> dict[str, Any]:
    body = {"SIGNATURE": "cpu_bound", "LIMIT": limit}
    out: dict[str, Any] = {"limit": limit, "connections": args.cpu_concurrency}
    for n in (1, 2):
        if gw.servers()["cpu_bound"]["nr_workers"] != n:
            t0 = time.perf_counter()
            gw.update_workers("cpu_bound", n)
            gw.wait_workers("cpu_bound", n, args.ready_timeout)
            out[f"scale_to_{n}_s"] = round(time.perf_counter() - t0, 3)
            log(f"  /update_workers cpu_bound -> {n}: ready with {n} processes in "
                f"{out[f'scale_to_{n}_s']:.2f} s")
        srv = gw.wait_workers("cpu_bound", n, args.ready_timeout)
        targets = {"gateway": gw.port, "direct": srv["port"]}
        for target, port in targets.items():
            expect_ok(port, body, lambda a: a.get("primes") == primes, f"cpu_bound {target}")
            wrk.run(port, body, args.cpu_concurrency, args.warmup)  # warm-up
            r = wrk.run(port, body, args.cpu_concurrency, args.duration, count_workers=True)
            out[f"{target}_w{n}"] = r
            log(f"  cpu_bound {target:<7} NR_WORKERS={n} c={args.cpu_concurrency}"
                f" {r['rps']:>8.1f} req/s   p50 {r['p50_ms']:7.2f} ms   p99 {r['p99_ms']:7.2f} ms"
                f"   answers per worker {_split(r)}")
    for target in ("gateway", "direct"):
        out[f"{target}_ratio_2_over_1"] = round(out[f"{target}_w2"]["rps"]
                                                / out[f"{target}_w1"]["rps"], 3)
    log(f"  NR_WORKERS 2/1 req/s: gateway {out['gateway_ratio_2_over_1']:.3f},"
        f" direct {out['direct_ratio_2_over_1']:.3f}")
    # Scale back down: /update_workers works both ways.
    t0 = time.perf_counter()
    gw.update_workers("cpu_bound", 1)
    gw.wait_workers("cpu_bound", 1, args.ready_timeout)
    out["scale_to_1_s"] = round(time.perf_counter() - t0, 3)
    log(f"  /update_workers cpu_bound -> 1: back to 1 process in {out['scale_to_1_s']:.2f} s")
    return out


def role_of(p: psutil.Process, root_pid: int) -> str:
    cmd = " ".join(p.cmdline())
    if p.pid == root_pid:
        return "manager"
    for module, name in (("basic_inference_server.gateway", "front"),
                         ("basic_inference_server.server", "server")):
        if module in cmd:
            parent = p.parent()
            is_worker = parent is not None and module in " ".join(parent.cmdline())
            return f"{name} {'worker' if is_worker else 'master'}"
    if "support.launch" in cmd:
        return "support"
    return "other"


def memory_section(workdir: Path, args: argparse.Namespace,
                   results: dict[str, Any]) -> dict[str, Any]:
    config = bench_config({"echo": {"NR_WORKERS": 2, "HOST": "127.0.0.1", "TCP_PORT": True}})
    gw = Gateway("memory", config, workdir)
    try:
        gw.start()
        gw.wait_ready(args.ready_timeout)
        gw.wait_workers("echo", 2, args.ready_timeout)
        expect_ok(gw.port, ECHO_BODY, lambda a: "echo" in a, "echo")

        # "At rest": wait until the tree's RSS stops moving (two samples within 0.5 %).
        samples: list[int] = []

        def settled() -> bool:
            samples.append(sum(p.memory_info().rss for p in gw.tree()))
            return len(samples) >= 3 and abs(samples[-1] - samples[-2]) <= 0.005 * samples[-1]
        poll("memory to settle", settled, 20, interval=0.5, alive=gw.check_alive)

        rows = []
        for p in gw.tree():
            info = p.memory_full_info()
            rows.append({"pid": p.pid, "role": role_of(p, gw.proc.pid),  # type: ignore[union-attr]
                         "rss": info.rss, "pss": info.pss, "uss": info.uss})
    finally:
        checked_stop(gw, results)
    by_role: dict[str, dict[str, Any]] = {}
    for r in rows:
        agg = by_role.setdefault(r["role"], {"processes": 0, "rss_mib": 0.0, "pss_mib": 0.0,
                                             "uss_mib": 0.0})
        agg["processes"] += 1
        for k in ("rss", "pss", "uss"):
            agg[f"{k}_mib"] += r[k] / MIB
    for agg in by_role.values():
        for k in ("rss_mib", "pss_mib", "uss_mib"):
            agg[k] = round(agg[k], 1)
    out = {"processes": len(rows),
           "rss_mib": round(sum(r["rss"] for r in rows) / MIB, 1),
           "pss_mib": round(sum(r["pss"] for r in rows) / MIB, 1),
           "uss_mib": round(sum(r["uss"] for r in rows) / MIB, 1),
           "by_role": by_role}
    for role, agg in sorted(by_role.items()):
        log(f"  {role:<14} x{agg['processes']}  RSS {agg['rss_mib']:7.1f} MiB"
            f"  PSS {agg['pss_mib']:7.1f} MiB  USS {agg['uss_mib']:7.1f} MiB")
    log(f"  total ({out['processes']} processes): RSS {out['rss_mib']:.1f} MiB,"
        f" PSS {out['pss_mib']:.1f} MiB, USS {out['uss_mib']:.1f} MiB")
    return out


def startup_probe(name: str) -> tuple[dict[str, Any], Callable[[dict[str, Any]], bool]]:
    if name == "echo":
        return ECHO_BODY, lambda a: a.get("echo") == {"INPUT_VALUE": "ping"}
    if name == "cpu_bound":
        return {"SIGNATURE": "cpu_bound", "LIMIT": 100}, lambda a: a.get("primes") == 25
    if name == "torch_mlp":
        return ({"SIGNATURE": "torch_mlp", "INPUT_VALUE": MLP_INPUT},
                lambda a: isinstance(a.get("classes"), list) and len(a["classes"]) == 1)
    return {"SIGNATURE": name}, lambda a: True


# (label, path, method, body, check of the decoded answer)
_Probe = tuple[str, str, str, "dict[str, Any] | None", Callable[[dict[str, Any]], bool]]


def startup_section(workdir: Path, args: argparse.Namespace,
                    results: dict[str, Any], run: int) -> dict[str, Any]:
    config = json.loads(DEMO_CONFIG.read_text())
    config["FIRST_SERVER_PORT"] = 0
    names = [n for n, s in config["CONFIG_ENDPOINTS"].items()
             if s.get("HOST", "127.0.0.1") != "NO_HOST" and not s.get("DISABLED", False)]
    gw = Gateway(f"startup{run}", config, workdir)
    times: dict[str, float] = {}
    failures: dict[str, str] = {}
    stop = threading.Event()

    def probe_loop(name: str, path: str, method: str, body: dict[str, Any] | None,
                   check: Callable[[dict[str, Any]], bool]) -> None:
        deadline = time.monotonic() + args.startup_timeout
        last = "no answer"
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                status, answer = gw.call(method, path, body, timeout=5)
                if status == 200 and answer is not None and check(answer):
                    times[name] = time.perf_counter() - gw.spawned_at
                    return
                last = f"{status}: {str(answer)[:200]}"
            except (OSError, http.client.HTTPException) as exc:
                last = repr(exc)
            time.sleep(0.01)
        failures[name] = f"no good answer within {args.startup_timeout:g} s (last {last})"

    probes: list[_Probe] = [("front (/health/live)", "/health/live", "GET", None,
                            lambda a: True)]
    probes += [(n, "/run", "POST", *startup_probe(n)) for n in names]
    probes += [("all ready (/health/ready)", "/health/ready", "GET", None, lambda a: True)]
    threads = [threading.Thread(target=probe_loop, args=p, daemon=True) for p in probes]
    try:
        gw.start()
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            if gw.proc is not None and gw.proc.poll() is not None:
                stop.set()
                raise BenchError(f"demo gateway exited with {gw.proc.returncode}:\n"
                                 f"{gw.log_tail()}")
            for t in threads:
                t.join(timeout=0.05)
    finally:
        stop.set()
        checked_stop(gw, results)
    if failures:
        raise BenchError(f"start-up: {failures}; gateway log tail:\n{gw.log_tail()}")
    out = {p[0]: round(times[p[0]], 3) for p in probes}
    out["total (every endpoint answered)"] = round(max(times[n] for n in names), 3)
    for k, v in out.items():
        log(f"  {k:<32} {v:7.3f} s")
    return out


# -- main ----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=5, help="seconds per measured point (5)")
    p.add_argument("--warmup", type=int, default=2,
                   help="seconds of discarded load before each series (2)")
    p.add_argument("--low", type=int, default=1, help="low concurrency for echo (1)")
    p.add_argument("--high", type=int, default=16, help="high concurrency for echo (16)")
    p.add_argument("--cpu-concurrency", type=int, default=4,
                   help="concurrency for cpu_bound, enough to saturate 2 workers (4)")
    p.add_argument("--cpu-limit", type=int, default=0,
                   help="LIMIT sent to cpu_bound; 0 = calibrate to --cpu-target-ms (0)")
    p.add_argument("--cpu-target-ms", type=float, default=15.0,
                   help="per-request work of cpu_bound when calibrating (15)")
    p.add_argument("--wrk", default=shutil.which("wrk") or "/usr/bin/wrk", help="wrk binary")
    p.add_argument("--wrk-threads", type=int, default=2,
                   help="wrk threads (capped at the connection count) (2)")
    p.add_argument("--ready-timeout", type=float, default=60.0,
                   help="seconds to wait for a gateway or a worker count (60)")
    p.add_argument("--startup-timeout", type=float, default=120.0,
                   help="seconds the demo config may take to answer on every endpoint (120)")
    p.add_argument("--startup-runs", type=int, default=1, help="start-up measurements (1)")
    p.add_argument("--skip-echo", action="store_true", help="skip the echo measurements")
    p.add_argument("--skip-cpu", action="store_true", help="skip the cpu_bound measurements")
    p.add_argument("--skip-memory", action="store_true", help="skip the memory measurement")
    p.add_argument("--skip-startup", action="store_true", help="skip the start-up measurement")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--keep-logs", action="store_true",
                   help="keep the temp folder with configs and gateway logs")
    return check_wrk_args(p, p.parse_args(argv))


def check_wrk_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """--duration / --warmup whole seconds and a runnable --wrk, or exit with the parser's error."""
    if args.duration < 1 or args.warmup < 1:
        p.error("--duration and --warmup are whole seconds, at least 1 (wrk's -d)")
    if not (os.path.isfile(args.wrk) and os.access(args.wrk, os.X_OK)):
        p.error(f"wrk not found at {args.wrk} (apt-get install wrk, or pass --wrk)")
    return args


def git_modified() -> list[str]:
    """Tracked files with uncommitted changes: the code measured is not just the commit."""
    try:
        r = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, cwd=REPO, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [ln[3:] for ln in r.stdout.splitlines() if ln.strip()]


def git_diff_sha1() -> str | None:
    try:
        r = subprocess.run(["git", "diff", "HEAD"], capture_output=True, cwd=REPO, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return hashlib.sha1(r.stdout).hexdigest() if r.stdout else None


def environment(args: argparse.Namespace) -> dict[str, Any]:
    def cmd_out(cmd: list[str]) -> str:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=10)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "?"
    try:
        cpu_model = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                         if ln.startswith("model name"))
    except (OSError, StopIteration):
        cpu_model = platform.processor() or "?"
    return {
        "time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "memory_gib": round(psutil.virtual_memory().total / 1024 ** 3, 1),
        "wrk": cmd_out([args.wrk, "-v"]),
        "git_commit": cmd_out(["git", "rev-parse", "--short", "HEAD"]),
        "git_modified": git_modified(),
        # Identifies the exact code measured when the tree had uncommitted changes.
        "git_diff_sha1": git_diff_sha1(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "duration_s": args.duration,
        "warmup_s": args.warmup,
    }


def summary_rows(res: dict[str, Any], args: argparse.Namespace) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    e = res.get("echo")
    if e:
        for target in ("direct", "gateway"):
            for c in (args.low, args.high):
                r = e[f"{target}_c{c}"]
                rows.append((f"echo {target} c={c}",
                             f"{r['rps']:.0f} req/s, p50 {r['p50_ms']:.2f} ms, "
                             f"p99 {r['p99_ms']:.2f} ms"))
        rows.append((f"echo gateway/direct req/s c={args.high}", f"{e['ratio_rps_high']:.3f}"))
        rows.append((f"echo gateway added p50 c={args.low}", f"{e['added_p50_low_ms']:.3f} ms"))
    c = res.get("cpu_bound")
    if c:
        for target in ("gateway", "direct"):
            rows.append((f"cpu_bound {target} NR_WORKERS 1 / 2 (c={c['connections']})",
                         f"{c[f'{target}_w1']['rps']:.1f} / {c[f'{target}_w2']['rps']:.1f} req/s"
                         f", ratio 2/1 = {c[f'{target}_ratio_2_over_1']:.3f}"
                         f" (split at 2: {_split(c[f'{target}_w2'])})"))
        rows.append(("cpu_bound LIMIT (work per request)",
                     f"{c['limit']} (~{c['calibrated_ms']:.1f} ms in-process)"))
    m = res.get("memory")
    if m:
        rows.append((f"memory at rest, echo x2 ({m['processes']} procs)",
                     f"RSS {m['rss_mib']:.1f} MiB, PSS {m['pss_mib']:.1f} MiB, "
                     f"USS {m['uss_mib']:.1f} MiB"))
    for i, s in enumerate(res.get("startup", []), 1):
        tag = f" (run {i})" if len(res["startup"]) > 1 else ""
        for k, v in s.items():
            rows.append((f"start-up{tag}: {k}", f"{v:.3f} s"))
    for label, s in res.get("shutdown", {}).items():
        g = "n/a" if s["graceful_s"] is None else f"{s['graceful_s']:.2f} s"
        rows.append((f"stop {label}: graceful / leftovers",
                     f"{g} / {len(s['leftover_processes'])}"))
    return rows


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM to the benchmark: unwind through the finally blocks (they stop gateways).
    signal.signal(signal.SIGTERM, _on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="bis-bench-"))
    results: dict[str, Any] = {"environment": environment(args)}
    errors: list[str] = []
    wrk = Wrk(args.wrk, workdir, args.wrk_threads)
    env = results["environment"]
    dirty = (f" + uncommitted changes in {len(env['git_modified'])} file(s)"
             if env["git_modified"] else "")
    log(f"bench_gateway: commit {env['git_commit']}{dirty}, Python {env['python']}, "
        f"{env['cpus_usable']} CPU(s) ({env['cpu_model']}), {env['wrk']}")
    log(f"  {args.duration} s per point, {args.warmup} s warm-up per series; work dir {workdir}")

    def section(title: str, fn: Callable[[], Any], key: str) -> None:
        log(f"\n== {title}")
        t0 = time.perf_counter()
        try:
            value = fn()
            if value is not None:
                if key == "startup":
                    results.setdefault(key, []).append(value)
                else:
                    results[key] = value
        except BenchError as exc:
            errors.append(f"{title}: {exc}")
            log(f"  FAILED: {exc}")
        except Exception as exc:  # noqa: BLE001 - a bug here must not leave the run half-reported
            errors.append(f"{title}: {type(exc).__name__}: {exc}")
            log(f"  FAILED: {type(exc).__name__}: {exc}")
        log(f"  ({time.perf_counter() - t0:.1f} s)")

    try:
        if not (args.skip_echo and args.skip_cpu):
            def load_sections() -> None:
                config = bench_config({
                    "echo": {"NR_WORKERS": 2, "HOST": "127.0.0.1", "TCP_PORT": True},
                    "cpu_bound": {"NR_WORKERS": 1, "HOST": "127.0.0.1", "TCP_PORT": True},
                })
                gw = Gateway("load", config, workdir)
                try:
                    gw.start()
                    ready_s = gw.wait_ready(args.ready_timeout)
                    gw.wait_workers("echo", 2, args.ready_timeout)
                    gw.wait_workers("cpu_bound", 1, args.ready_timeout)
                    log(f"  gateway on port {gw.port}, /health/ready after {ready_s:.2f} s")
                    if not args.skip_echo:
                        section(f"echo (no-op): direct vs gateway, c={args.low} and c={args.high}",
                                lambda: echo_section(gw, wrk, args), "echo")
                    if not args.skip_cpu:
                        def cpu() -> dict[str, Any]:
                            if args.cpu_limit:
                                limit = args.cpu_limit
                                count_primes = load_count_primes()
                                t0 = time.perf_counter()
                                primes = count_primes(limit)
                                ms = (time.perf_counter() - t0) * 1000
                            else:
                                limit, ms, primes = calibrate_limit(args.cpu_target_ms)
                            ms = round(ms, 1)
                            log(f"  LIMIT {limit}: {ms:.1f} ms per request in-process")
                            out = cpu_section(gw, wrk, args, limit, primes)
                            out["calibrated_ms"] = ms
                            return out
                        section(f"cpu_bound: NR_WORKERS 1 vs 2 at c={args.cpu_concurrency}",
                                cpu, "cpu_bound")
                finally:
                    checked_stop(gw, results)
                    log(f"  load gateway stopped (graceful {gw.shutdown_s or float('nan'):.2f} s,"
                        f" {len(gw.leftovers)} leftover processes)")
            section("load gateway: echo NR_WORKERS 2 + cpu_bound", load_sections, "_load")
        if not args.skip_memory:
            section("memory at rest: echo only, NR_WORKERS 2",
                    lambda: memory_section(workdir, args, results), "memory")
        if not args.skip_startup:
            for run in range(1, args.startup_runs + 1):
                section(f"start-up of {DEMO_CONFIG.name} (run {run}): spawn -> first good /run",
                        functools.partial(startup_section, workdir, args, results, run),
                        "startup")
    except KeyboardInterrupt:
        errors.append("interrupted")
        log("\ninterrupted")

    errors += results.get("cleanup_errors", [])
    rows = summary_rows(results, args)
    log("\n== summary")
    width = max((len(k) for k, _ in rows), default=10)
    log(f"  {'measure':<{width}}  value")
    log(f"  {'-' * width}  {'-' * 40}")
    for k, v in rows:
        log(f"  {k:<{width}}  {v}")
    results["environment"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["errors"] = errors
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        log(f"\nresults written to {args.json}")
    if errors:
        log(f"\n{len(errors)} step(s) FAILED:")
        for e in errors:
            log(f"  - {e.splitlines()[0]}")
        log(f"gateway logs kept in {workdir}")
        return 1
    if args.keep_logs:
        log(f"\nconfigs and gateway logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    log("\nall steps ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
