#!/usr/bin/env python
"""Streamed answers through the gateway, next to LitServe's streaming, in one run.

    python bench/bench_stream.py [--quick] [--json out.json] [--lit-python PATH]

Both systems serve the same producer (``bench/stream_app/peers/ticklib.py``: ``N``
chunks ``{"t": "00000000"}``, 16 bytes of JSON each, ``DELAY_MS`` apart, counted in a
file per ``TAG``): ours as the endpoint ``ticks`` of ``run_gateway.py`` of this checkout
(``bench/stream_app/ours``: ``NR_WORKERS`` 1, 2 front workers, access log off), read as
NDJSON through the gateway; LitServe as ``/ticks`` of ``lit_ticks.py`` (``stream=True``,
one inference worker, two API servers), whose chunks are JSON lines. One client library
reads both (httpx, streaming, one JSON line at a time, every chunk checked in order).

- **single**: ``--streams`` (20) sequential streams of ``--chunks`` (10,000) each,
  alternating the systems' order every round: median chunks/s, and the time to the
  first chunk (p50 over the streams);
- **concurrency**: ``--conc`` (64) streams of ``--conc-chunks`` (1,000) at once, each on
  its own connection, ``--conc-rounds`` (3) rounds alternating: errors, streams with
  every chunk once and in order, slowest / fastest stream;
- **cancellation**: a producer of one chunk per 10 ms whose client drops after the first
  chunk, ``--drops`` (5) times each: how many more chunks the producer made (its
  counter file), and how soon the endpoint gives the next request its first chunk;
- **memory** (ours): ``--mem-streams`` (1,000) streams opened and dropped, front and
  endpoint server RSS before and after; a reader taking one chunk a second for
  ``--slow-seconds`` (10) from a fast producer of 1 KiB chunks: the front's RSS growth,
  and the chunks made by then (a paused producer stops making them).

Without LitServe (``--lit-python``, default ``$PEERS_ROOT/lit_venv/bin/python``, as the
peer harness's setup_peers.sh installs it) ours is measured alone. The exit status is
0 when every step ran and our streams were whole, 1 when one of ours was not (an error,
a gap, a producer left running), 2 when a step could not run. Only ratios mean
anything on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_front import REPO, free_port, role, start, stop  # noqa: E402

APP = REPO / "bench" / "stream_app"
PEERS = APP / "peers"
COUNTER_ENV = "BENCH_STREAM_COUNTER"  # ticklib's: the folder of the counter files
PEERS_ROOT = Path(os.environ.get("PEERS_ROOT") or Path(
    os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bis-peers")
TIMEOUT = httpx.Timeout(120.0, connect=10.0)
FAST_N = 1_000_000  # a producer that outlasts its reader
MIB = 1024 * 1024
TARGETS = {"ratio": 1.5, "ttfc_ms": 5.0, "spread": 1.5, "extra_chunks": 2, "next_ms": 50.0,
           "mem_mib": 5.0, "slow_mib": 2.0}


class BenchError(Exception):
    """A step of the benchmark could not be run."""


class StreamError(Exception):
    """A stream that broke its contract: an error, a gap, a repeat or a wrong end."""


def log(msg: str = "") -> None:
    print(msg, flush=True)


class System:
    """One system under test: how to start it, ask it for a stream and read its lines."""

    name = ""
    url = ""
    headers: dict[str, str] = {}
    has_done = False
    proc: subprocess.Popen | None = None

    def __init__(self) -> None:
        self.port = free_port()

    def body(self, fields: dict[str, Any]) -> dict[str, Any]:
        return fields

    def token(self, obj: dict[str, Any], count: int) -> str | None:
        """The token of chunk ``count``; None for the stream's closing event."""
        raise NotImplementedError

    def launch(self, workdir: Path) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited ({None if self.proc is None else self.proc.returncode})")


class Ours(System):
    """``run_gateway.py`` of this checkout with the ``ticks`` endpoint, read as NDJSON."""

    name = "ours"
    headers = {"Accept": "application/x-ndjson"}
    has_done = True

    def __init__(self) -> None:
        super().__init__()
        self.url = f"http://127.0.0.1:{self.port}/run"

    def body(self, fields: dict[str, Any]) -> dict[str, Any]:
        return {"SIGNATURE": "ticks", **fields}

    def token(self, obj: dict[str, Any], count: int) -> str | None:
        event = obj.get("event")
        if event == "chunk" and obj.get("id") == count + 1:
            return str(obj["data"]["t"])
        if event == "done" and obj["data"].get("CHUNKS") == count:
            return None
        raise StreamError(f"event {count + 1}: {str(obj)[:300]}")

    def launch(self, workdir: Path) -> None:
        cache = workdir / "ours_cache"
        cache.mkdir()
        self.proc = start(REPO, APP / "ours", sys.executable, self.port, str(cache))

    def rss(self) -> dict[str, int]:
        """RSS of the front's and the endpoint server's processes, summed per part."""
        if self.proc is None:
            return {}
        root = psutil.Process(self.proc.pid)
        out = {"front": 0, "server": 0}
        for proc in root.children(recursive=True):
            part = role(proc, root.pid).split(" ")[0]
            if part in out:
                try:
                    out[part] += proc.memory_info().rss
                except psutil.Error:
                    pass
        return out


class Lit(System):
    """LitServe's ``/ticks`` (``peers/lit_ticks.py``) run by ``python``; JSON lines."""

    name = "LitServe"

    def __init__(self, python: str) -> None:
        super().__init__()
        self.python = python
        self.url = f"http://127.0.0.1:{self.port}/ticks"

    def token(self, obj: dict[str, Any], count: int) -> str | None:
        if "t" not in obj:
            raise StreamError(f"line {count + 1}: {str(obj)[:300]}")
        return str(obj["t"])

    def launch(self, workdir: Path) -> None:
        with open(workdir / "litserve.log", "wb") as logfile:
            self.proc = subprocess.Popen(
                [self.python, str(PEERS / "lit_ticks.py"), str(self.port)], cwd=PEERS,
                env={**os.environ, "PYTHONPATH": str(PEERS)}, stdin=subprocess.DEVNULL,
                stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True)

    def version(self) -> str:
        out = subprocess.run([self.python, "-c", "import litserve; print(litserve.__version__)"],
                             capture_output=True, text=True, timeout=60)
        return out.stdout.strip() or "unknown"


class Tally:
    """One stream's lines, checked as they come: every chunk once and in order, then its end."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.started = time.perf_counter()
        self.first_at: float | None = None
        self.count = 0
        self.closed = False

    def feed(self, line: str) -> None:
        if not line:
            return
        if self.closed:
            raise StreamError(f"a line after the closing event: {line[:200]}")
        token = self.system.token(orjson.loads(line), self.count)
        if token is None:
            self.closed = True
            return
        if token != f"{self.count:08d}":
            raise StreamError(f"chunk {self.count} was {token!r}")
        if self.first_at is None:
            self.first_at = time.perf_counter()
        self.count += 1

    def result(self, n: int) -> dict[str, float]:
        if self.count != n or self.closed != self.system.has_done:
            raise StreamError(f"{self.count} of {n} chunks, closing event: {self.closed}")
        ended = time.perf_counter()
        assert self.first_at is not None or n == 0
        return {"ttfc_ms": ((self.first_at or ended) - self.started) * 1000,
                "seconds": ended - self.started, "first_at": self.first_at or ended,
                "chunks_per_s": n / (ended - self.started)}


def _check_status(resp: httpx.Response, body: bytes) -> None:
    if resp.status_code != 200:
        raise StreamError(f"HTTP {resp.status_code}: {body[:300]!r}")


def read_stream(client: httpx.Client, system: System, n: int, **fields: Any) -> dict[str, float]:
    """Read one whole stream of ``n`` chunks; its figures."""
    tally = Tally(system)
    with client.stream("POST", system.url, json=system.body({"N": n, **fields}),
                       headers=system.headers) as resp:
        _check_status(resp, resp.read() if resp.status_code != 200 else b"")
        for line in resp.iter_lines():
            tally.feed(line)
    return tally.result(n)


async def aread_stream(client: httpx.AsyncClient, system: System, n: int) -> dict[str, float]:
    """:func:`read_stream` on an async client."""
    tally = Tally(system)
    async with client.stream("POST", system.url, json=system.body({"N": n}),
                             headers=system.headers) as resp:
        _check_status(resp, await resp.aread() if resp.status_code != 200 else b"")
        async for line in resp.aiter_lines():
            tally.feed(line)
    return tally.result(n)


def first_then_drop(client: httpx.Client, system: System, **fields: Any) -> float:
    """Open a stream, read its first chunk, drop the connection; when it was dropped."""
    tally = Tally(system)
    with client.stream("POST", system.url, json=system.body(fields), headers=system.headers) as resp:
        _check_status(resp, resp.read() if resp.status_code != 200 else b"")
        for line in resp.iter_lines():
            tally.feed(line)
            if tally.count:
                break
    # Leaving the block closed the connection: a stream not read to its end never goes
    # back to httpx's pool.
    if tally.count != 1:
        raise StreamError(f"the stream ended before its first chunk ({tally.count})")
    return time.perf_counter()


class Counters:
    """The producers' counter files (ticklib): ``.`` per chunk made, ``x``/``e`` at the end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def raw(self, tag: str) -> bytes:
        try:
            return (self.folder / tag).read_bytes()
        except FileNotFoundError:
            return b""

    def made(self, tag: str) -> int:
        return self.raw(tag).count(b".")

    def ends(self, tag: str) -> int:
        raw = self.raw(tag)
        return raw.count(b"x") + raw.count(b"e")

    def wait_ends(self, tag: str, n: int, timeout: float) -> bool:
        """Until ``n`` producers of ``tag`` ended (True), or ``timeout`` s passed (False)."""
        deadline = time.monotonic() + timeout
        while self.ends(tag) < n:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True


def wait_ready(system: System, timeout: float) -> None:
    """Until the system streams a one-chunk answer."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5.0) as client:
        while True:
            system.alive()
            try:
                read_stream(client, system, 1)
                return
            except (httpx.HTTPError, StreamError, ValueError) as exc:
                if time.monotonic() > deadline:
                    raise BenchError(f"{system.name} not ready in {timeout:g} s: {exc!r}") from exc
            time.sleep(0.2)


def rounds_of(systems: list[System], rounds: int) -> list[list[System]]:
    """The systems' order in each round: as given in odd rounds, reversed in even ones."""
    return [systems if r % 2 == 0 else systems[::-1] for r in range(rounds)]


def attempt(errors: list[str], what: str, func: Callable[[], Any]) -> Any:
    """``func()``, or None with its stream error or HTTP error recorded."""
    try:
        return func()
    except (httpx.HTTPError, StreamError, ValueError, KeyError) as exc:
        errors.append(f"{what}: {exc!r}"[:400])
        return None


def single_section(systems: list[System], args: argparse.Namespace) -> dict[str, Any]:
    log(f"\n== single stream: {args.streams} x {args.chunks} chunks, sequential, alternating")
    out: dict[str, Any] = {s.name: {"streams": [], "errors": []} for s in systems}
    with httpx.Client(timeout=TIMEOUT) as client:
        for system in systems:  # warm-up, not counted
            attempt(out[system.name]["errors"], "warm-up",
                    lambda s=system: read_stream(client, s, args.chunks))
        for order in rounds_of(systems, args.streams):
            for system in order:
                res = attempt(out[system.name]["errors"], "stream",
                              lambda s=system: read_stream(client, s, args.chunks))
                if res is not None:
                    out[system.name]["streams"].append(res)
    _single_summary(out, systems)
    return out


def _single_summary(out: dict[str, Any], systems: list[System]) -> None:
    """Each system's median chunks/s and TTFC p50, and ours over the peer's round by round."""
    for system in systems:
        row = out[system.name]
        if row["streams"]:
            row["median_chunks_per_s"] = statistics.median(r["chunks_per_s"] for r in row["streams"])
            row["ttfc_p50_ms"] = statistics.median(r["ttfc_ms"] for r in row["streams"])
            log(f"  {system.name:9} {row['median_chunks_per_s']:9.0f} chunks/s (median)   "
                f"TTFC p50 {row['ttfc_p50_ms']:7.2f} ms   errors {len(row['errors'])}")
        else:
            log(f"  {system.name:9} no stream completed: {row['errors'][:2]}")
    if len(systems) == 2 and not any(out[s.name]["errors"] for s in systems):
        # Round by round (the two streams of a round ran back to back): steadier than
        # the ratio of the medians when the machine's load drifts during the run.
        pairs = zip(out["ours"]["streams"], out[systems[1].name]["streams"], strict=True)
        out["paired_ratio"] = statistics.median(o["chunks_per_s"] / p["chunks_per_s"] for o, p in pairs)
        log(f"  ours / {systems[1].name}: {out['paired_ratio']:.2f} (median of the rounds' ratios)")


async def _concurrent(system: System, conc: int, n: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    started = time.perf_counter()
    async with httpx.AsyncClient(limits=limits, timeout=TIMEOUT) as client:
        results = await asyncio.gather(*(aread_stream(client, system, n) for _ in range(conc)),
                                       return_exceptions=True)
    wall = time.perf_counter() - started
    whole = [r for r in results if isinstance(r, dict)]
    errors = [f"{r!r}"[:300] for r in results if not isinstance(r, dict)]
    seconds = [r["seconds"] for r in whole]
    return {"errors": len(errors), "error_samples": errors[:3], "whole_in_order": len(whole),
            "slowest_s": max(seconds, default=0.0), "fastest_s": min(seconds, default=0.0),
            "spread": max(seconds) / min(seconds) if seconds else None,
            "chunks_per_s": len(whole) * n / wall}


def concurrency_section(systems: list[System], args: argparse.Namespace) -> dict[str, Any]:
    log(f"\n== concurrency: {args.conc} streams of {args.conc_chunks} chunks at once, "
        f"{args.conc_rounds} round(s)")
    out: dict[str, Any] = {s.name: {"rounds": []} for s in systems}
    for order in rounds_of(systems, args.conc_rounds):
        for system in order:
            res = asyncio.run(_concurrent(system, args.conc, args.conc_chunks))
            out[system.name]["rounds"].append(res)
            spread = "-" if res["spread"] is None else f"{res['spread']:.2f}"
            log(f"  {system.name:9} errors {res['errors']:3}  whole and in order "
                f"{res['whole_in_order']}/{args.conc}  slowest/fastest {spread} "
                f"({res['slowest_s']:.2f} / {res['fastest_s']:.2f} s)  "
                f"{res['chunks_per_s']:8.0f} chunks/s in all")
    for row in out.values():
        _conc_summary(row, args.conc)
    return out


def _conc_summary(row: dict[str, Any], conc: int) -> None:
    """One system's rounds of concurrent streams, summed (errors) or their median."""
    spreads = [r["spread"] for r in row["rounds"] if r["spread"] is not None]
    row["errors"] = sum(r["errors"] for r in row["rounds"])
    row["whole_in_order"] = sum(r["whole_in_order"] for r in row["rounds"])
    row["streams"] = conc * len(row["rounds"])
    row["median_spread"] = statistics.median(spreads) if spreads else None


def _drop_once(client: httpx.Client, system: System, counters: Counters, tag: str,
               args: argparse.Namespace) -> dict[str, Any]:
    dropped = first_then_drop(client, system, N=args.cancel_chunks, DELAY_MS=10, TAG=tag)
    nxt = read_stream(client, system, 1)
    ended = counters.wait_ends(tag, 1, args.cancel_chunks * 0.01 + 30)
    return {"extra_chunks": counters.made(tag) - 1, "next_ms": (nxt["first_at"] - dropped) * 1000,
            "producer_ended": ended, "closed_early": counters.raw(tag).endswith(b"x")}


def cancel_section(systems: list[System], counters: Counters,
                   args: argparse.Namespace) -> dict[str, Any]:
    log(f"\n== cancellation: a producer of {args.cancel_chunks} chunks, one per 10 ms, dropped "
        f"after its first; {args.drops} time(s) each")
    out: dict[str, Any] = {s.name: {"drops": [], "errors": []} for s in systems}
    with httpx.Client(timeout=TIMEOUT) as client:
        for index, order in enumerate(rounds_of(systems, args.drops)):
            for system in order:
                tag = f"{system.name}-drop{index}"
                res = attempt(out[system.name]["errors"], "drop",
                              lambda s=system, t=tag: _drop_once(client, s, counters, t, args))
                if res is not None:
                    out[system.name]["drops"].append(res)
                    log(f"  {system.name:9} more chunks made after the drop {res['extra_chunks']:4}   "
                        f"next request's first chunk {res['next_ms']:8.1f} ms after it   "
                        f"producer {'closed' if res['closed_early'] else 'ran to its end'}")
    for system in systems:
        drops = out[system.name]["drops"]
        if drops:
            out[system.name]["max_extra_chunks"] = max(d["extra_chunks"] for d in drops)
            out[system.name]["median_next_ms"] = statistics.median(d["next_ms"] for d in drops)
    return out


def _mib(value: float) -> float:
    return round(value / MIB, 2)


def _drop_many(client: httpx.Client, ours: Ours, counters: Counters, tag: str, n: int) -> list[str]:
    errors: list[str] = []
    for _ in range(n):
        attempt(errors, tag, lambda: first_then_drop(client, ours, N=FAST_N, TAG=tag))
    if not counters.wait_ends(tag, n - len(errors), 60):
        errors.append(f"{tag}: {n - len(errors) - counters.ends(tag)} producer(s) still running "
                      f"60 s after their client left")
    return errors


def memory_section(ours: Ours, counters: Counters, args: argparse.Namespace) -> dict[str, Any]:
    log(f"\n== memory (ours): {args.mem_streams} streams opened and dropped")
    with httpx.Client(timeout=TIMEOUT) as client:
        warm_errors = _drop_many(client, ours, counters, "mem-warm", args.mem_warm)
        before = ours.rss()
        errors = _drop_many(client, ours, counters, "mem", args.mem_streams)
        after = ours.rss()
    out: dict[str, Any] = {"streams": args.mem_streams, "errors": warm_errors + errors,
                           "before_mib": {k: _mib(v) for k, v in before.items()},
                           "after_mib": {k: _mib(v) for k, v in after.items()},
                           "growth_mib": {k: _mib(after[k] - before[k]) for k in before}}
    log(f"  RSS growth: front {out['growth_mib']['front']:+.2f} MiB "
        f"({out['before_mib']['front']:.1f} -> {out['after_mib']['front']:.1f}), endpoint server "
        f"{out['growth_mib']['server']:+.2f} MiB ({out['before_mib']['server']:.1f} -> "
        f"{out['after_mib']['server']:.1f}); errors {len(out['errors'])}")
    return out


def slow_reader_section(ours: Ours, counters: Counters, args: argparse.Namespace) -> dict[str, Any]:
    log(f"\n== slow reader (ours): one chunk a second for {args.slow_seconds} s from a fast "
        "producer of 1 KiB chunks")
    tally, front = Tally(ours), []
    before = ours.rss()["front"]
    with httpx.Client(timeout=TIMEOUT) as client, client.stream(
            "POST", ours.url, json=ours.body({"N": FAST_N, "SIZE": 1024, "TAG": "slow"}),
            headers=ours.headers) as resp:
        _check_status(resp, resp.read() if resp.status_code != 200 else b"")
        lines, started, made = resp.iter_lines(), time.monotonic(), []
        for second in range(args.slow_seconds):
            while not tally.count > second:
                tally.feed(next(lines))
            front.append(ours.rss()["front"])
            made.append(counters.made("slow"))
            # The reader's pace: one chunk a second is what is measured, not a wait.
            time.sleep(max(0.0, started + second + 1 - time.monotonic()))
    ended = counters.wait_ends("slow", 1, 60)
    out = {"seconds": args.slow_seconds, "chunks_read": tally.count, "front_before_mib": _mib(before),
           "front_growth_mib": _mib(max(front) - before), "made_each_second": made,
           "made_total": counters.made("slow"), "producer_closed": ended}
    log(f"  front RSS growth {out['front_growth_mib']:+.2f} MiB (peak over {before / MIB:.1f}); "
        f"chunks made by second 1, 2, last: {made[0]}, {made[min(1, len(made) - 1)]}, {made[-1]} "
        f"(read: {tally.count}); producer closed after: {ended}")
    return out


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _met(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "MISSED")


def summary_rows(res: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(measure, ours, LitServe, target, met) rows of the closing table."""
    single, conc, cancel = res["single"], res["concurrency"], res["cancellation"]
    lit = "LitServe" in single
    ours_s, lit_s = single["ours"], single.get("LitServe", {})
    ratio = (ours_s.get("median_chunks_per_s", 0) / lit_s["median_chunks_per_s"]
             if lit_s.get("median_chunks_per_s") else None)
    res["ratio_chunks_per_s"] = ratio
    co, cl = conc["ours"], conc.get("LitServe", {})
    ko, kl = cancel["ours"], cancel.get("LitServe", {})
    mem, slow = res["memory"], res["slow_reader"]
    t = TARGETS
    rows = [
        ("single: median chunks/s", _fmt(ours_s.get("median_chunks_per_s"), ".0f"),
         _fmt(lit_s.get("median_chunks_per_s"), ".0f"), "", ""),
        ("single: ours / LitServe", _fmt(ratio), "", f">= {t['ratio']}",
         _met(None if ratio is None else ratio >= t["ratio"])),
        ("single: ours / LitServe, paired", _fmt(single.get("paired_ratio")), "", "", ""),
        ("single: TTFC p50 ms", _fmt(ours_s.get("ttfc_p50_ms")), _fmt(lit_s.get("ttfc_p50_ms")),
         f"<= {t['ttfc_ms']}", _met(ours_s.get("ttfc_p50_ms", 1e9) <= t["ttfc_ms"])),
        ("concurrency: errors", str(co["errors"]), str(cl.get("errors", "-")), "0", _met(co["errors"] == 0)),
        ("concurrency: whole, in order", f"{co['whole_in_order']}/{co['streams']}",
         f"{cl['whole_in_order']}/{cl['streams']}" if cl else "-", "all",
         _met(co["whole_in_order"] == co["streams"])),
        ("concurrency: slowest/fastest", _fmt(co["median_spread"]), _fmt(cl.get("median_spread")),
         f"<= {t['spread']}", _met(co["median_spread"] is not None and co["median_spread"] <= t["spread"])),
        ("cancel: more chunks made (max)", _fmt(ko.get("max_extra_chunks"), "d"),
         _fmt(kl.get("max_extra_chunks"), "d"), f"<= {t['extra_chunks']}",
         _met(ko.get("max_extra_chunks", 1e9) <= t["extra_chunks"])),
        ("cancel: next request, ms (median)", _fmt(ko.get("median_next_ms"), ".1f"),
         _fmt(kl.get("median_next_ms"), ".1f"), f"<= {t['next_ms']:g}",
         _met(ko.get("median_next_ms", 1e9) <= t["next_ms"])),
        (f"memory: {mem['streams']} dropped, front MiB", _fmt(mem["growth_mib"]["front"], "+.2f"), "",
         f"< {t['mem_mib']:g}", _met(mem["growth_mib"]["front"] < t["mem_mib"])),
        (f"memory: {mem['streams']} dropped, server MiB", _fmt(mem["growth_mib"]["server"], "+.2f"), "",
         f"< {t['mem_mib']:g}", _met(mem["growth_mib"]["server"] < t["mem_mib"])),
        ("slow reader: front MiB", _fmt(slow["front_growth_mib"], "+.2f"), "", f"< {t['slow_mib']:g}",
         _met(slow["front_growth_mib"] < t["slow_mib"])),
        ("slow reader: chunks made (2nd s, end)",
         f"{slow['made_each_second'][min(1, len(slow['made_each_second']) - 1)]}, "
         f"{slow['made_each_second'][-1]}", "", "paused", ""),
    ]
    if not lit:
        rows = [(m, o, "not found" if i == 0 else "", tg, ok) for i, (m, o, _, tg, ok) in enumerate(rows)]
    return rows


def print_table(rows: list[tuple[str, str, str, str, str]]) -> None:
    head = ("measure", "ours", "LitServe", "target", "")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(5)]
    for row in [head, tuple("-" * w for w in widths), *rows]:
        log("  " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                             for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip())


def ours_broken(res: dict[str, Any]) -> list[str]:
    """What went wrong with our streams (not figures: errors, gaps, producers left running)."""
    problems = [f"single: {e}" for e in res["single"]["ours"]["errors"]]
    conc = res["concurrency"]["ours"]
    if conc["errors"] or conc["whole_in_order"] != conc["streams"]:
        problems.append(f"concurrency: {conc['errors']} error(s), e.g. "
                        f"{[s for r in conc['rounds'] for s in r['error_samples']][:2]}")
    problems += [f"cancellation: {e}" for e in res["cancellation"]["ours"]["errors"]]
    problems += [f"memory: {e}" for e in res["memory"]["errors"]]
    if not res["slow_reader"]["producer_closed"]:
        problems.append("slow reader: the producer was not closed after its reader left")
    return problems


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="a short pass (a few short streams each) to check that it all runs")
    p.add_argument("--lit-python", default=str(PEERS_ROOT / "lit_venv" / "bin" / "python"),
                   help="the interpreter that has litserve (default: the peer harness's lit_venv)")
    p.add_argument("--streams", type=int, default=20)
    p.add_argument("--chunks", type=int, default=10_000)
    p.add_argument("--conc", type=int, default=64)
    p.add_argument("--conc-chunks", type=int, default=1000)
    p.add_argument("--conc-rounds", type=int, default=3)
    p.add_argument("--drops", type=int, default=5)
    p.add_argument("--cancel-chunks", type=int, default=100,
                   help="chunks of the producer the client drops (one per 10 ms)")
    p.add_argument("--mem-streams", type=int, default=1000)
    p.add_argument("--mem-warm", type=int, default=100, help="streams dropped before the first RSS")
    p.add_argument("--slow-seconds", type=int, default=10)
    p.add_argument("--ready-timeout", type=float, default=120)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.quick:
        args.streams, args.chunks, args.conc, args.conc_chunks, args.conc_rounds = 3, 1000, 8, 100, 1
        args.drops, args.cancel_chunks, args.mem_streams, args.mem_warm = 1, 50, 30, 10
        args.slow_seconds = 3
    return args


def environment(lit: Lit | None) -> dict[str, Any]:
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    return {"commit": commit, "python": sys.version.split()[0], "cpus": os.cpu_count(),
            "httpx": httpx.__version__, "litserve": lit.version() if lit else None}


def run(systems: list[System], ours: Ours, counters: Counters, args: argparse.Namespace,
        workdir: Path) -> dict[str, Any]:
    for system in systems:
        system.launch(workdir)
    for system in systems:
        wait_ready(system, args.ready_timeout)
    return {"single": single_section(systems, args),
            "concurrency": concurrency_section(systems, args),
            "cancellation": cancel_section(systems, counters, args),
            "memory": memory_section(ours, counters, args),
            "slow_reader": slow_reader_section(ours, counters, args)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    lit = Lit(args.lit_python) if Path(args.lit_python).exists() else None
    ours = Ours()
    systems: list[System] = [ours, *([lit] if lit else [])]
    env = environment(lit)
    log(f"bench_stream: commit {env['commit']}, Python {env['python']}, {env['cpus']} CPU(s), "
        f"httpx {env['httpx']}, "
        + (f"LitServe {env['litserve']} ({args.lit_python})" if lit else
           f"LitServe was not found ({args.lit_python}): ours alone"))
    with tempfile.TemporaryDirectory(prefix="bis-bench-stream-") as tmp:
        workdir = Path(tmp)
        (workdir / "counters").mkdir()
        os.environ[COUNTER_ENV] = str(workdir / "counters")  # both systems inherit it
        try:
            res = run(systems, ours, Counters(workdir / "counters"), args, workdir)
        except BenchError as exc:
            log(f"\nbench_stream could not run: {exc}")
            return 2
        finally:
            for system in systems:
                system.stop()
    res["environment"] = env
    log("\n== summary")
    print_table(summary_rows(res))
    res["problems"] = ours_broken(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
        log(f"\nresults written to {args.json}")
    for problem in res["problems"]:
        log(f"  problem: {problem}")
    return 1 if res["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
