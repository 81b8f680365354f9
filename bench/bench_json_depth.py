#!/usr/bin/env python
"""The cost of the JSON depth policy (``protocol.json_depth_over``) next to the parse.

    python bench/bench_json_depth.py [--mb 12] [--rounds 5]

Every request body that ``protocol.parse_body`` accepts is measured for nesting after
orjson has decoded it. For bodies of about ``--mb`` megabytes in the shapes that cost
the check the most (millions of tiny objects, many deep groups, many short strings
holding brackets) and in common ones (one big string, a 2-D array of floats), this prints
the median time of ``orjson.loads`` (the baseline, measured in the same run) and of the
depth check, and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from basic_inference_server.protocol import MAX_JSON_DEPTH, json_depth_over  # noqa: E402


def shapes(size: int) -> dict[str, bytes]:
    """Bodies of about ``size`` bytes, each a JSON object as /run receives."""
    def fill(item: bytes) -> bytes:
        return b'{"SIGNATURE":"x","DATA":[' + b",".join([item] * (size // (len(item) + 1))) + b"]}"

    deep = b"[" * (MAX_JSON_DEPTH - 2) + b"]" * (MAX_JSON_DEPTH - 2)
    return {
        "[{},{},...] (tiny objects)": fill(b"{}"),
        f"groups nested {MAX_JSON_DEPTH - 2} deep": fill(deep),
        "groups nested 6 deep": fill(b"[[[[[[]]]]]]"),
        "short strings with brackets": fill(b'"ab[c\\"d{"'),
        "2-D array of floats": fill(orjson.dumps([0.125] * 64)),
        "one big string": b'{"SIGNATURE":"x","DATA":"' + b"A" * size + b'"}',
    }


def median_time(call: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=12.0, help="body size in megabytes")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per measure")
    args = parser.parse_args()
    print(f"MAX_JSON_DEPTH {MAX_JSON_DEPTH}; median of {args.rounds} rounds")
    print(f"{'body':34s} {'MB':>5s} {'orjson.loads':>13s} {'depth check':>12s} {'ratio':>6s}")
    for name, raw in shapes(int(args.mb * 1e6)).items():
        assert not json_depth_over(raw), name
        parse = median_time(lambda raw=raw: orjson.loads(raw), args.rounds)
        check = median_time(lambda raw=raw: json_depth_over(raw), args.rounds)
        print(f"{name:34s} {len(raw) / 1e6:5.1f} {parse * 1000:10.1f} ms {check * 1000:9.1f} ms "
              f"{check / parse:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
