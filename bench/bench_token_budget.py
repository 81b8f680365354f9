#!/usr/bin/env python
"""Token budgets under load: one key's token bucket hammered through two gateways on one
Redis (tenants/token_budget.py).

    python bench/bench_token_budget.py [--seconds 150] [--clients 16] [--json PATH]

Two gateways share a redis-server of the bench's own (``TENANTS_REDIS``) and serve
``toy_llm`` (endpoints/toy_llm.py, a generator without a model). First the generator's
own speed: one stream of 4,000 tokens, without a budget. Then one key, with a token
bucket of ``TOKEN_BURST`` 2,000 refilled at 2,000 a minute, is hammered by ``--clients``
threads (half on each gateway) sending chats of a fixed reservation. Judged:

- in every window of 60 s (sliding over the admissions' times), the tokens reserved at
  admission are at most burst plus refill (4,000);
- over the run, the tokens used (the answers' ``usage``) never exceed what was admitted;
- every refusal is a 429 with ``Retry-After``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from bench_gateway import REPO, BenchError, Gateway, bench_config, checked_stop, log

sys.path.insert(0, str(REPO))
from basic_inference_server.tenants.token_budget import prompt_bound  # noqa: E402
from tests.services import start_redis  # noqa: E402

BURST, PER_MINUTE = 2000, 2000
PROMPT = "tokens are the unit of account for every tenant of the box"
MAX_TOKENS = 24
RESERVED = prompt_bound([PROMPT], 1) + MAX_TOKENS


def generator_speed(port: int, key: str) -> float:
    """Tokens a second of one long generation (a key without a budget)."""
    body = {"SIGNATURE": "toy_llm", "PROMPT": PROMPT, "MAX_TOKENS": 4000, "TEMPERATURE": 0,
            "IGNORE_EOS": True}
    began = time.perf_counter()
    resp = httpx.post(f"http://127.0.0.1:{port}/run", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {key}"})
    elapsed = time.perf_counter() - began
    if resp.status_code != 200:
        raise BenchError(f"the generator answered {resp.status_code}: {resp.text[:300]}")
    usage = resp.json()["CHUNKS"][-1]["completion_tokens"]
    return usage / elapsed


def new_key(gw: Gateway, limits: dict[str, Any]) -> str:
    """A key of the tenant ``hammer`` made through the admin API."""
    status, made = gw.call("POST", "/keys", {"TENANT": "hammer", **limits})
    if status != 201 or made is None:
        raise BenchError(f"POST /keys answered {status}: {made}")
    return str(made["KEY"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=150)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    results: dict[str, Any] = {"burst": BURST, "per_minute": PER_MINUTE, "reserved": RESERVED}
    admitted: list[tuple[float, int, int]] = []  # (when, reserved, used)
    refusals: list[tuple[int, str | None]] = []
    lock = threading.Lock()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "redis").mkdir()
        redis, url = start_redis(Path(tmp) / "redis")
        config = bench_config({"toy_llm": {"NR_WORKERS": 1}})
        config.update({"API_KEYS": True, "GATEWAY_WORKERS": 2, "TENANTS_REDIS": url})
        gws = [Gateway(f"g{i}", config, Path(tmp), cache=Path(tmp) / f"cache{i}")
               for i in range(2)]
        try:
            for gw in gws:
                gw.start()
            for gw in gws:
                gw.wait_ready(60)
            key, plain = (new_key(gws[0], {"TOKEN_RATE": f"{PER_MINUTE}/minute",
                                           "TOKEN_BURST": BURST}), new_key(gws[0], {}))
            results["generator_tokens_per_s"] = round(generator_speed(gws[0].port, plain))
            deadline = time.monotonic() + args.seconds
            chat = {"model": "toy_llm", "temperature": 0, "max_tokens": MAX_TOKENS,
                    "messages": [{"role": "user", "content": PROMPT}]}

            def client(port: int) -> None:
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                                  headers={"Authorization": f"Bearer {key}"}) as http:
                    while time.monotonic() < deadline:
                        resp = http.post("/v1/chat/completions", json=chat)
                        with lock:
                            if resp.status_code == 200:
                                used = resp.json()["usage"]["total_tokens"]
                                admitted.append((time.monotonic(), RESERVED, used))
                            else:
                                refusals.append((resp.status_code,
                                                 resp.headers.get("retry-after")))
                        if resp.status_code == 429:
                            time.sleep(0.05)  # a polite client still comes back often

            threads = [threading.Thread(target=client, args=(gws[i % 2].port,))
                       for i in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            for gw in gws:
                checked_stop(gw, results)
            redis.stop()
    times = sorted(t for t, _, _ in admitted)
    worst, start = 0, 0
    for end in range(len(times)):  # the most reserved in any 60 s window
        while times[end] - times[start] > 60:
            start += 1
        worst = max(worst, (end - start + 1) * RESERVED)
    results.update(
        admitted=len(admitted), refused=len(refusals),
        reserved_total=len(admitted) * RESERVED, used_total=sum(u for _, _, u in admitted),
        worst_60s_reserved=worst, bound_60s=BURST + PER_MINUTE,
        refusals_all_429_retry_after=all(s == 429 and r for s, r in refusals))
    results["ok"] = (worst <= BURST + PER_MINUTE and results["used_total"] <= results["reserved_total"]
                     and results["refusals_all_429_retry_after"]
                     and results["generator_tokens_per_s"] >= 10_000)
    log(json.dumps(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
