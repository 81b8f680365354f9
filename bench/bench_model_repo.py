#!/usr/bin/env python
"""Model artifacts: what a download, its verification and a warm start cost.

    python bench/bench_model_repo.py [--mb 200] [--rounds 5] [--json PATH]

One version of ``--mb`` MiB (random bytes, and a small config file) is published to a
folder repository and to an S3-compatible server (moto, started here on a free port).
Each round, in alternating order:

* **download**: an empty cache fetches the version from S3 (:class:`ArtifactCache`,
  hashed as it arrives), against the same bytes streamed from S3 to a file without
  hashing: the verification's share of the download time;
* **warm start**: a cache that holds the version uses it (the lock, a verification of
  every file, then reading the weights as a model load would), against the same from the
  folder repository, read in place (a verification, then the read).

Medians of the rounds; the issue's bounds: verification at most 10 % of the download,
a warm start at most 1.1x a start from a local path.

``--link-mbit N`` (root) puts the S3 server in a network namespace of its own behind a
veth pair shaped to N Mbit/s (tc tbf), as a store across a network is: on loopback the
"download" is a memory copy at several GB/s, which no store delivers to one client.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from basic_inference_server.artifacts import ArtifactCache, ModelRef  # noqa: E402
from basic_inference_server.artifacts.publish import publish  # noqa: E402
from basic_inference_server.artifacts.repository import (  # noqa: E402
    LocalRepository,
    S3Repository,
)

MIB = 1024 * 1024
REF = ModelRef("bench", "1")
KEY, SECRET = "bench", "bench-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Link:
    """A network namespace joined to this one by a veth pair shaped to ``mbit`` Mbit/s."""

    def __init__(self, mbit: int) -> None:
        tag = f"{os.getpid() % 10000}"
        self.ns, self.host, self.peer = f"bisbench{tag}", f"bbh{tag}", f"bbn{tag}"
        self.address = "10.213.7.2"
        for cmd in (f"ip netns add {self.ns}",
                    f"ip link add {self.host} type veth peer name {self.peer}",
                    f"ip link set {self.peer} netns {self.ns}",
                    f"ip addr add 10.213.7.1/30 dev {self.host}", f"ip link set {self.host} up",
                    f"tc qdisc add dev {self.host} root tbf rate {mbit}mbit burst 256kb latency 50ms",
                    f"ip netns exec {self.ns} ip addr add {self.address}/30 dev {self.peer}",
                    f"ip netns exec {self.ns} ip link set {self.peer} up",
                    f"ip netns exec {self.ns} ip link set lo up",
                    f"ip netns exec {self.ns} tc qdisc add dev {self.peer} root tbf rate {mbit}mbit "
                    f"burst 256kb latency 50ms"):
            subprocess.run(cmd.split(), check=True)

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.ns], check=False)  # takes the veth pair along


def start_moto(folder: Path, link: Link | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    host = link.address if link else "127.0.0.1"
    prefix = ["ip", "netns", "exec", link.ns] if link else []
    log = open(folder / "moto.log", "wb")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen([*prefix, sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    log.close()
    url = f"http://{host}:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            return proc, url
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise SystemExit("moto server did not start") from None
            time.sleep(0.1)


def read_all(path: Path) -> int:
    """What a model load does with its weights at the least: read them."""
    with open(path, "rb") as fh:
        return sum(len(chunk) for chunk in iter(lambda: fh.read(MIB), b""))


def timed(func: Any) -> float:
    started = time.perf_counter()
    func()
    return time.perf_counter() - started


def raw_download(repo: S3Repository, out: Path) -> None:
    """The version's bytes streamed from S3 to files, no hashing: the baseline."""
    for name in ("config.json", "weights.bin"):
        body = repo.client.get_object(Bucket=repo.bucket, Key=repo.key(REF, name))["Body"]
        with open(out / name, "wb") as fh:
            for chunk in body.iter_chunks(MIB):
                fh.write(chunk)


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    src = work / "src"
    src.mkdir()
    with open(src / "weights.bin", "wb") as fh:
        for _ in range(args.mb):
            fh.write(os.urandom(MIB))
    (src / "config.json").write_text('{"dim": 384}')
    local = work / "repo"
    publish(src, str(local), REF)
    link = Link(args.link_mbit) if args.link_mbit else None
    moto, url = start_moto(work, link)
    try:
        s3_url = f"s3://{KEY}:{SECRET}@bench?endpoint_url={url}&region=us-east-1"
        publish(src, s3_url, REF, create_bucket=True)
        s3 = S3Repository(s3_url)
        times: dict[str, list[float]] = {"download": [], "raw_download": [], "warm": [], "local": []}
        for i in range(args.rounds):
            cache_dir, raw_dir = work / f"cache{i}", work / f"raw{i}"
            raw_dir.mkdir()
            steps = [("download", lambda c=cache_dir: ArtifactCache(s3, c, 1 << 40).path(REF)),
                     ("raw_download", lambda r=raw_dir: raw_download(s3, r))]
            for name, step in steps if i % 2 == 0 else steps[::-1]:
                times[name].append(timed(step))
            starts = [("warm", lambda c=cache_dir: read_all(
                          ArtifactCache(s3, c, 1 << 40).path(REF) / "weights.bin")),
                      ("local", lambda: read_all(
                          ArtifactCache(LocalRepository(local), work / "unused", 1 << 40).path(REF)
                          / "weights.bin"))]
            for name, step in starts if i % 2 == 0 else starts[::-1]:
                times[name].append(timed(step))
            shutil.rmtree(raw_dir)
    finally:
        moto.kill()
        moto.wait(timeout=10)
        if link:
            link.close()
    median = {k: statistics.median(v) for k, v in times.items()}
    return {"mb": args.mb, "rounds": args.rounds, "link_mbit": args.link_mbit,
            "seconds": times, "median_s": median,
            "verification_share": median["download"] / median["raw_download"] - 1,
            "warm_over_local": median["warm"] / median["local"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=int, default=200, help="MiB of the version's weights (200)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (5)")
    p.add_argument("--link-mbit", type=int, default=0,
                   help="S3 behind a link of this many Mbit/s in a network namespace (root)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bis-artifacts-") as tmp:
        results = run(args, Path(tmp))
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
