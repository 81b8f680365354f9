#!/usr/bin/env python
"""The answer cache: a repeated request answered from the front's memory, against a noop
``/run`` that reaches its endpoint, one request at a time.

    python bench/bench_answer_cache.py [--rounds 11] [--requests 400] [--redis URL] [--json PATH]

One gateway (one front process) serves the demo's ``echo`` twice: as ``echo`` (no
cache: the noop) and as ``cached`` (``CACHE: {}``). Each round sends ``--requests``
identical calls to each, alternating which goes first, over one kept-alive connection
each. Judged: the cached p50 is at most the noop p50 (median over rounds of the per-round
ratio), and every cached answer is the first one (its ``call_id`` never moves: the
endpoint ran once, for the first request, and 0 times after). ``--redis`` keeps the
entries in that Redis (``CACHE_REDIS``): a hit is then a round trip to Redis.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_gateway import BenchError, Gateway, bench_config, checked_stop, log
from bench_openai_overhead import timed_answers


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--redis", metavar="URL", help="CACHE_REDIS (default: the front's memory)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    bodies = {name: json.dumps({"SIGNATURE": name, "INPUT_VALUE": "the same, again"}).encode()
              for name in ("echo", "cached")}
    results: dict[str, Any] = {"store": "redis" if args.redis else "memory", "rounds": []}
    call_ids: set[int] = set()
    with tempfile.TemporaryDirectory() as tmp:
        config = bench_config({"echo": {"NR_WORKERS": 1},
                               "cached": {"SERVER_CLASS": "echo", "NR_WORKERS": 1, "CACHE": {}}})
        config["GATEWAY_WORKERS"] = 1
        if args.redis:
            config["CACHE_REDIS"] = args.redis
        gw = Gateway("cache", config, Path(tmp)).start()
        try:
            gw.wait_ready(60)
            conns = {name: http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
                     for name in bodies}
            for name in bodies:  # warm up; the first cached call runs the endpoint
                timed_answers(conns[name], "/run", bodies[name], 50)
            for i in range(args.rounds):
                order = ("echo", "cached") if i % 2 == 0 else ("cached", "echo")
                p50 = {}
                for name in order:
                    seconds, answers = timed_answers(conns[name], "/run", bodies[name],
                                                     args.requests)
                    p50[name] = statistics.median(seconds) * 1000
                    if name == "cached":
                        call_ids.update(json.loads(a)["call_id"] for a in answers)
                row = {"noop_p50_ms": round(p50["echo"], 4), "hit_p50_ms": round(p50["cached"], 4),
                       "ratio": round(p50["cached"] / p50["echo"], 4)}
                results["rounds"].append(row)
                log(f"round {i + 1}: {row}")
        finally:
            checked_stop(gw, results)
    if not call_ids:
        raise BenchError("no cached answer")
    results["hit_over_noop_p50_median"] = statistics.median(r["ratio"] for r in results["rounds"])
    results["cached_call_ids"] = sorted(call_ids)
    results["endpoint_runs_after_the_first"] = len(call_ids) - 1
    results["ok"] = results["hit_over_noop_p50_median"] <= 1 and len(call_ids) == 1
    log(json.dumps({k: v for k, v in results.items() if k != "rounds"}))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
