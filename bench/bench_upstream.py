#!/usr/bin/env python
"""The front's upstream client alone: ``Upstream.forward`` per call, before and after.

    python bench/bench_upstream.py --before /path/to/old/checkout [--rounds 6] [--calls 10000]

Loads ``gateway/upstream.py`` of both checkouts into one process and, on one uvloop
loop, sends ``--calls`` sequential requests through each to an in-process server on a
Unix socket that answers at once (so the client's own cost dominates). Rounds
alternate the order; it prints microseconds per call and the after/before ratio of the
medians and of the best rounds. Only the ratios mean anything: the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import uvloop

import basic_inference_server.gateway.upstream as current

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"


def load_before(checkout: Path) -> ModuleType:
    """The old module, as a sibling of the current one (its relative imports resolve)."""
    name = "basic_inference_server.gateway._upstream_before"
    spec = importlib.util.spec_from_file_location(
        name, checkout / "basic_inference_server" / "gateway" / "upstream.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class Answer(asyncio.Protocol):
    """Answers every complete request at once, keeping the connection open."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, rest = self.buf.partition(b"\r\n\r\n")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            if len(rest) < length:
                return
            self.buf = rest[length:]
            self.transport.write(OK)  # type: ignore[attr-defined]


async def measure(modules: dict[str, ModuleType], rounds: int, calls: int) -> dict[str, list[float]]:
    path = str(Path(tempfile.mkdtemp(prefix="bench-upstream-")) / "w.sock")
    server = await asyncio.get_running_loop().create_unix_server(Answer, path)
    route = {"workers": [path], "socket": path, "timeout": 5, "retry_on_crash": False}
    results: dict[str, list[float]] = {name: [] for name in modules}
    for r in range(rounds):
        order = list(modules.items()) if r % 2 == 0 else list(modules.items())[::-1]
        for name, module in order:
            upstream = module.Upstream()
            for _ in range(calls // 20):  # warm the pool and the code paths
                await upstream.forward(route, "e", b"", b"{}")
            started = time.perf_counter()
            for _ in range(calls):
                await upstream.forward(route, "e", b"", b"{}")
            results[name].append((time.perf_counter() - started) / calls * 1e6)
            upstream.close_idle(0)
    server.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="an older checkout")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=10000)
    args = parser.parse_args()
    modules = {"before": load_before(args.before), "after": current}
    results = uvloop.run(measure(modules, args.rounds, args.calls))
    for name, values in results.items():
        print(f"{name:>7}: median {statistics.median(values):6.2f} us/call, best "
              f"{min(values):6.2f}  rounds {[round(v, 1) for v in values]}")
    median = statistics.median(results["after"]) / statistics.median(results["before"])
    best = min(results["after"]) / min(results["before"])
    # On a busy machine the best round is the one least disturbed by others.
    print(f"after/before: {median:.3f} (medians), {best:.3f} (best rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
