#!/usr/bin/env python
"""Benchmark of async jobs against synchronous /run, per queue backend, in one run.

    python bench/bench_jobs.py [--jobs 2000] [--concurrency 8] [--backends sqlite,redis,rabbitmq]

For each backend it starts a gateway (no-op ``echo`` endpoint, NR_WORKERS 2) and
measures, with ``--concurrency`` client threads on keep-alive connections:

1. the baseline: ``--jobs`` synchronous ``/run`` calls through the gateway (req/s);
2. submitting as many jobs (``"ASYNC": true``, answered 202): submits/s;
3. end to end: from the first submit until the last job finished (its ``FINISHED_AT``;
   every job is checked ``done`` with its own answer at /jobs/<id>): jobs/s.

It prints each figure with its ratio to the baseline measured in the same gateway.
Redis (127.0.0.1:6379) and RabbitMQ (127.0.0.1:5672, guest/guest) must be running for
their rows; each run uses its own key prefix / queue names and deletes them after.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench_gateway import ADMIN_TOKEN, BenchError, Gateway, bench_config, checked_stop, log, poll

QUEUES = {
    "sqlite": "sqlite://{folder}/jobs.sqlite3",
    "redis": "redis://127.0.0.1:6379/0?prefix={prefix}",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/%2F?prefix={prefix}",
}


def hammer(port: int, path: str, bodies: list[dict[str, Any]], threads: int,
           expect: int) -> tuple[float, list[dict[str, Any]]]:
    """POST every body, ``threads`` at a time on keep-alive connections: (seconds, answers)."""
    answers: list[dict[str, Any]] = [{} for _ in bodies]
    errors: list[str] = []
    cursor = iter(range(len(bodies)))
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            while True:
                with lock:
                    i = next(cursor, None)
                if i is None:
                    return
                conn.request("POST", path, body=json.dumps(bodies[i]),
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                raw = resp.read()
                if resp.status != expect:
                    errors.append(f"{resp.status} {raw[:200]!r}")
                    return
                answers[i] = json.loads(raw)
        finally:
            conn.close()

    workers = [threading.Thread(target=client) for _ in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise BenchError(f"{path}: {len(errors)} unexpected answers, first: {errors[0]}")
    return elapsed, answers


def get_json(port: int, path: str) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        resp = conn.getresponse()
        body: dict[str, Any] = json.loads(resp.read())
        return body
    finally:
        conn.close()


def purge(kind: str, prefix: str) -> None:
    if kind == "redis":
        import redis

        client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    elif kind == "rabbitmq":
        import pika

        conn = pika.BlockingConnection(pika.URLParameters(QUEUES["rabbitmq"].split("?")[0]))
        channel = conn.channel()
        for suffix in ("", ".retry", ".dead"):
            channel.queue_delete(f"{prefix}.echo{suffix}")
        channel.exchange_delete(f"{prefix}.dlx")
        conn.close()


def bench_backend(kind: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    prefix = f"bisbench-{uuid.uuid4().hex[:8]}"
    queue = QUEUES[kind].format(folder=folder, prefix=prefix)
    config = bench_config({"echo": {"NR_WORKERS": args.workers,
                                    "MAX_QUEUE_DEPTH": args.jobs * 2}})
    config["QUEUE"] = queue
    results: dict[str, Any] = {}
    gw = Gateway(kind, config, folder)
    try:
        gw.start()
        gw.wait_ready(60)
        bodies = [{"SIGNATURE": "echo", "I": i} for i in range(args.jobs)]
        hammer(gw.port, "/run", bodies[:200], args.concurrency, 200)  # warm-up
        sync_s, _ = hammer(gw.port, "/run", bodies, args.concurrency, 200)
        first_submit = time.time()
        submit_s, answers = hammer(gw.port, "/run", [{**b, "ASYNC": True} for b in bodies],
                                   args.concurrency, 202)

        def drained() -> bool:
            status = get_json(gw.port, "/system_status")["QUEUES"]["echo"]
            return status["depth"] == 0

        poll(f"{kind}: queue drained", drained, timeout=300, interval=0.02, alive=gw.check_alive)
        # The queue no longer holds them; the last ones may still be finishing.
        records: dict[int, dict[str, Any]] = {}

        def all_done() -> bool:
            for i, a in enumerate(answers):
                if records.get(i, {}).get("STATUS") != "done":
                    records[i] = get_json(gw.port, f"/jobs/{a['JOB_ID']}")
                    if records[i].get("STATUS") != "done":
                        return False
            return True

        poll(f"{kind}: every job done", all_done, timeout=60, interval=0.02, alive=gw.check_alive)
        # Until the last job finished, by the records' own clock (not our polling).
        end_to_end_s = max(r["FINISHED_AT"] for r in records.values()) - first_submit
        wrong = [r for i, r in records.items() if r["RESULT"]["echo"]["I"] != i]
        if wrong:
            raise BenchError(f"{kind}: {len(wrong)} jobs not done right, first: {wrong[0]}")
        sync_rate = args.jobs / sync_s
        results = {"sync_req_s": sync_rate, "submit_s": args.jobs / submit_s,
                   "end_to_end_jobs_s": args.jobs / end_to_end_s}
    finally:
        checked_stop(gw, results)
        purge(kind, prefix)
    if results.get("cleanup_errors"):
        raise BenchError("; ".join(results["cleanup_errors"]))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="NR_WORKERS of the echo endpoint")
    parser.add_argument("--backends", default="sqlite,redis,rabbitmq")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bis-bench-jobs-") as tmp:
        for kind in args.backends.split(","):
            folder = Path(tmp) / kind
            folder.mkdir()
            log(f"{kind}: {args.jobs} jobs, {args.concurrency} clients, {args.workers} workers")
            try:
                r = bench_backend(kind, args, folder)
            except BenchError as exc:
                log(f"{kind}: FAILED: {exc}")
                return 1
            rows.append((kind, r))
    log("")
    log("| backend | sync /run req/s | async submit/s (ratio) | end to end jobs/s (ratio) |")
    log("| --- | --- | --- | --- |")
    for kind, r in rows:
        base = r["sync_req_s"]
        log(f"| {kind} | {base:,.0f} | {r['submit_s']:,.0f} ({r['submit_s'] / base:.2f}) | "
            f"{r['end_to_end_jobs_s']:,.0f} ({r['end_to_end_jobs_s'] / base:.2f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
