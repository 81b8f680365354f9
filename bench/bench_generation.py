#!/usr/bin/env python
"""Continuous batching on a real model: SmolLM2-135M-Instruct (endpoints/chat.py) through
``/v1/chat/completions``, one stream against eight at once.

    python bench/bench_generation.py [--rounds 5] [--tokens 64] [--json PATH]

One gateway serves ``chat`` (one worker; CUDA when torch sees a device). Each round
streams ``--tokens`` tokens (``ignore_eos``, greedy) alone, then eight such streams at
once, alternating which goes first. Reported per round and as medians: tokens a second
at c=1 and c=8 (all eight streams' tokens over the time from the first request to the
last token), time to first token at c=1, and the ratio c=8 / c=1 (the bound: at least 3).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
from bench_gateway import Gateway, bench_config, checked_stop, log

QUESTION = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]


def stream(client: openai.OpenAI, tokens: int) -> tuple[int, float, float]:
    """One streamed chat: its completion tokens, seconds to its first token, its end."""
    began = time.perf_counter()
    first = None
    chunks = client.chat.completions.create(
        model="chat", messages=QUESTION, max_tokens=tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    used = 0
    for chunk in chunks:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - began
        if chunk.usage is not None:
            used = chunk.usage.completion_tokens
    return used, first or 0.0, time.perf_counter()


def concurrent(client: openai.OpenAI, tokens: int, n: int) -> float:
    """Tokens a second of ``n`` streams at once."""
    began = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        done = list(pool.map(lambda _: stream(client, tokens), range(n)))
    return sum(t for t, _, _ in done) / (max(e for _, _, e in done) - began)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    results: dict[str, Any] = {"rounds": []}
    with tempfile.TemporaryDirectory() as tmp:
        config = bench_config({"chat": {"NR_WORKERS": 1, "LOAD_TIMEOUT": 600}})
        config["GATEWAY_WORKERS"] = 1
        gw = Gateway("gen", config, Path(tmp)).start()
        try:
            gw.wait_ready(600)
            with openai.OpenAI(base_url=f"http://127.0.0.1:{gw.port}/v1", api_key="unused",
                               max_retries=0, timeout=600) as client:
                stream(client, 8)  # warm up
                for i in range(args.rounds):
                    row: dict[str, float] = {}
                    for part in (("c1", "c8") if i % 2 == 0 else ("c8", "c1")):
                        if part == "c1":
                            began = time.perf_counter()
                            used, first, ended = stream(client, args.tokens)
                            row["ttft_s"] = round(first, 4)
                            row["c1_tokens_per_s"] = round(used / (ended - began), 2)
                        else:
                            row["c8_tokens_per_s"] = round(concurrent(client, args.tokens, 8), 2)
                    row["ratio"] = round(row["c8_tokens_per_s"] / row["c1_tokens_per_s"], 3)
                    results["rounds"].append(row)
                    log(f"round {i + 1}: {row}")
        finally:
            checked_stop(gw, results)
    for name in ("c1_tokens_per_s", "c8_tokens_per_s", "ttft_s", "ratio"):
        results[name + "_median"] = statistics.median(r[name] for r in results["rounds"])
    results["ok"] = results["ratio_median"] >= 3
    log(json.dumps({k: v for k, v in results.items() if k != "rounds"}))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
