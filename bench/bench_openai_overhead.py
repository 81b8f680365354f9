#!/usr/bin/env python
"""What the OpenAI routes add: ``/v1/chat/completions`` against the same generation
through ``/run``, one request at a time, on a generator that costs nothing.

    python bench/bench_openai_overhead.py [--rounds 11] [--requests 400] [--json PATH]

One gateway serves ``toy_llm`` (endpoints/toy_llm.py, one worker). Each round sends
``--requests`` chats of one token (``temperature`` 0) through ``/v1/chat/completions``
and as many ``/run`` calls of the same generation (``MESSAGES``, ``MAX_TOKENS`` 1),
alternating which goes first, over one kept-alive connection each. Reported: the p50 of
each per round, and the median over rounds of the per-round difference (the bound: at
most 0.3 ms). With ``--stream``, both are asked for a stream (SSE).
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_gateway import BenchError, Gateway, bench_config, checked_stop, log

BOUND_MS = 0.3
MESSAGES = [{"role": "user", "content": "hello"}]


def timed_answers(conn: http.client.HTTPConnection, path: str, body: bytes, n: int,
                  headers: dict[str, str] | None = None) -> tuple[list[float], list[bytes]]:
    """``n`` POSTs of ``body`` on one connection: each one's seconds and answer (an error
    raises)."""
    seconds, answers = [], []
    for _ in range(n):
        began = time.perf_counter()
        conn.request("POST", path, body, headers or {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        seconds.append(time.perf_counter() - began)
        answers.append(data)
        if resp.status != 200:
            raise BenchError(f"{path} answered {resp.status}: {data[:300]!r}")
    return seconds, answers


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--stream", action="store_true")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    v1 = json.dumps({"model": "toy_llm", "messages": MESSAGES, "max_tokens": 1,
                     "temperature": 0, "stream": args.stream}).encode()
    run = json.dumps({"SIGNATURE": "toy_llm", "MESSAGES": MESSAGES, "MAX_TOKENS": 1,
                      "TEMPERATURE": 0}).encode()
    plain = {"Content-Type": "application/json"}
    run_headers = {**plain, "Accept": "text/event-stream"} if args.stream else plain
    results: dict[str, Any] = {"rounds": []}
    with tempfile.TemporaryDirectory() as tmp:
        gw = Gateway("openai", bench_config({"toy_llm": {"NR_WORKERS": 1}}), Path(tmp)).start()
        try:
            gw.wait_ready(60)
            conns = {name: http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
                     for name in ("v1", "run")}
            timed_answers(conns["v1"], "/v1/chat/completions", v1, 50, plain)  # warm up
            timed_answers(conns["run"], "/run", run, 50, run_headers)
            for i in range(args.rounds):
                order = ("v1", "run") if i % 2 == 0 else ("run", "v1")
                p50 = {}
                for name in order:
                    path, body, headers = (("/v1/chat/completions", v1, plain) if name == "v1"
                                           else ("/run", run, run_headers))
                    seconds, _ = timed_answers(conns[name], path, body, args.requests, headers)
                    p50[name] = statistics.median(seconds) * 1000
                row = {"v1_p50_ms": round(p50["v1"], 4), "run_p50_ms": round(p50["run"], 4),
                       "added_ms": round(p50["v1"] - p50["run"], 4)}
                results["rounds"].append(row)
                log(f"round {i + 1}: {row}")
        finally:
            checked_stop(gw, results)
    added = statistics.median(r["added_ms"] for r in results["rounds"])
    results["added_p50_ms_median"] = round(added, 4)
    results["bound_ms"] = BOUND_MS
    results["within_bound"] = added <= BOUND_MS
    log(json.dumps({k: v for k, v in results.items() if k != "rounds"}))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if results["within_bound"] else 1


if __name__ == "__main__":
    sys.exit(main())
