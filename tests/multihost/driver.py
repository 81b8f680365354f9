"""Traffic for the multi-host test, run on the lab's client host (a network namespace).

    driver.py ready URL... [--timeout S]                 until every URL answers 200
    driver.py burst URL --first I --count N --out F      submit N jobs at once (8 threads)
    driver.py stream URL --first I --rate R --duration S --out F
                                                          submit R jobs a second, one JSON line each
    driver.py collect URL --ids F... --out F [--timeout S]
                                                          wait for every job; their records and queues

Jobs go through :class:`basic_inference_server.client.Client`, as a user's would.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from basic_inference_server.client import BisError, Client, RetryPolicy, resolve

TEXT = "multi-host"
WORK_SECONDS = 0.1


def payload(i: int) -> dict[str, Any]:
    return {"I": i, "TEXT": TEXT, "SECONDS": WORK_SECONDS}


def ready(urls: list[str], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    for url in urls:
        while True:
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                print(f"{url} not ready after {timeout} s", file=sys.stderr)
                return 1
            time.sleep(0.1)
    return 0


def burst(bis: Client, first: int, count: int, out: Path) -> int:
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda i: bis.submit("digest", payload(i)), range(first, first + count)))
    out.write_text(json.dumps([{"I": first + n, "job": job} for n, job in enumerate(ids)]))
    return 0


def stream(bis: Client, first: int, rate: float, duration: float, out: Path) -> int:
    started = time.monotonic()
    with open(out, "a", encoding="utf-8") as fh:
        n = 0
        while time.monotonic() - started < duration:
            due = started + n / rate
            time.sleep(max(0.0, due - time.monotonic()))
            line: dict[str, Any] = {"I": first + n, "t": time.time()}
            try:
                line["job"] = bis.submit("digest", payload(first + n))
            except BisError as exc:
                line["error"] = exc.kind
            fh.write(json.dumps(line) + "\n")
            fh.flush()
            n += 1
    return 0


def collect(bis: Client, id_files: list[str], timeout: float, out: Path) -> int:
    jobs: list[dict[str, Any]] = []
    for name in id_files:
        text = Path(name).read_text()
        jobs += json.loads(text) if text.startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.strip()]
    deadline = time.monotonic() + timeout
    records = {}
    for job in jobs:
        if "job" not in job:
            continue
        try:
            bis.wait(job["job"], timeout=max(0.1, deadline - time.monotonic()))
        except BisError:
            pass  # the record below tells what happened
        records[job["job"]] = bis.status(job["job"])
    queues = bis.system_status().get("QUEUES", {})
    out.write_text(json.dumps({"records": records, "queues": queues}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["ready", "burst", "stream", "collect"])
    parser.add_argument("urls", nargs="+")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--rate", type=float, default=10)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--ids", nargs="*", default=[])
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.command == "ready":
        return ready(args.urls, args.timeout)
    creds = resolve(args.urls[0])
    with Client(creds.url, admin_token=creds.admin_token,
                retry=RetryPolicy(attempts=20, budget=30)) as bis:
        if args.command == "burst":
            return burst(bis, args.first, args.count, args.out)
        if args.command == "stream":
            return stream(bis, args.first, args.rate, args.duration, args.out)
        return collect(bis, args.ids, args.timeout, args.out)


if __name__ == "__main__":
    sys.exit(main())
