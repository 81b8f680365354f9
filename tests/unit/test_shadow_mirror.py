"""The shadow mirror of the front's event loop, with a fake forwarding coroutine."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from basic_inference_server.contracts import TrafficPolicy
from basic_inference_server.errors import Overloaded, UpstreamTimeout
from basic_inference_server.gateway import metrics
from basic_inference_server.traffic.compare import Result
from basic_inference_server.traffic.hooks import Hooks
from basic_inference_server.traffic.shadow import Shadow, quantile, sampled, summarize
from tests.conftest import until

TRAFFIC = {"versions": {"v1": "clf@v1", "v2": "clf@v2"}, "weights": {"v1": 100, "v2": 0},
           "shadow": {"VERSION": "v2"}}
BODY = b'{"SIGNATURE": "clf", "x": 1}'
REQUEST = object()  # the caller's request: the mirror hands it on untouched


@dataclass
class Reply:
    status: int = 200
    body: bytes = b'{"label": "cat", "time": "now"}'


class FakeUpstream:
    """Answers each forwarded request with ``reply`` once ``gate`` is open."""

    def __init__(self, reply: Reply | BaseException | None = None, open_: bool = True) -> None:
        self.reply = reply or Reply()
        self.gate = asyncio.Event()
        if open_:
            self.gate.set()
        self.calls: list[tuple[str, bytes, object]] = []

    async def forward(self, target: str, raw: bytes, request: object) -> Reply:
        self.calls.append((target, raw, request))
        await self.gate.wait()
        if isinstance(self.reply, BaseException):
            raise self.reply
        return self.reply


class Recorder(list):
    def __call__(self, endpoint, version, result, latency):
        self.append((endpoint, version, result, latency))

    def results(self) -> list[Result]:
        return [r[2] for r in self]


def mirror(shadow: Shadow, traffic=TRAFFIC, source="v1", request_id="r1", primary=None) -> bool:
    return shadow.maybe_mirror("clf", TrafficPolicy.of(traffic), source, BODY, REQUEST, request_id,
                               primary or Reply())


def with_shadow(**keys) -> dict:
    return {**TRAFFIC, "shadow": {"VERSION": "v2", **keys}}


def test_a_mirrored_request_goes_to_the_shadow_version_and_is_compared():
    async def main():
        upstream, record = FakeUpstream(Reply(body=b'{"label": "cat", "time": "later"}')), Recorder()
        shadow = Shadow(upstream.forward, record)
        assert mirror(shadow)
        await shadow.drain()
        return upstream, record

    upstream, record = asyncio.run(main())
    assert upstream.calls == [("clf@v2", BODY, REQUEST)]
    [(endpoint, version, result, latency)] = record
    assert (endpoint, version, result) == ("clf", "v2", Result.AGREE) and latency >= 0


def test_the_caller_never_waits_for_the_shadow():
    async def main():
        upstream, record = FakeUpstream(open_=False), Recorder()
        shadow = Shadow(upstream.forward, record)
        assert mirror(shadow)  # returns with the shadow's answer still pending
        await until(lambda: upstream.calls)
        pending = (len(shadow.tasks), list(record))
        upstream.gate.set()
        await shadow.drain()
        return pending, record.results()

    (in_flight, recorded), results = asyncio.run(main())
    assert in_flight == 1 and recorded == []
    assert results == [Result.AGREE]


@pytest.mark.parametrize(("failure", "result"), [
    (UpstreamTimeout("no answer in 60 s"), Result.ERROR),
    (Overloaded("full"), Result.DROPPED),
    (RuntimeError("a bug"), Result.ERROR),
])
def test_shadow_failures_are_counted_never_raised(failure, result):
    async def main():
        upstream, record = FakeUpstream(failure), Recorder()
        shadow = Shadow(upstream.forward, record)
        assert mirror(shadow)
        await shadow.drain()
        return record

    [(_, _, got, latency)] = asyncio.run(main())
    assert got is result and latency is None


def test_a_shadow_that_answers_differently_disagrees():
    async def main():
        record = Recorder()
        shadow = Shadow(FakeUpstream(Reply(body=b'{"label": "dog"}')).forward, record)
        mirror(shadow)
        mirror(shadow, primary=Reply(status=200, body=b'{"label": "dog"}'), request_id="r2")
        # A shadow failing where the primary answered is a disagreement too.
        await shadow.drain()
        failing = Shadow(FakeUpstream(Reply(status=500, body=b'{"ERROR": "x"}')).forward, record)
        mirror(failing)
        await failing.drain()
        return record.results()

    assert asyncio.run(main()) == [Result.DISAGREE, Result.AGREE, Result.DISAGREE]


def test_the_primary_answer_is_taken_when_the_mirror_is_scheduled():
    async def main():
        record = Recorder()
        shadow = Shadow(FakeUpstream().forward, record)
        primary = Reply()
        mirror(shadow, primary=primary)
        primary.body = b'{"label": "changed later"}'
        await shadow.drain()
        return record.results()

    assert asyncio.run(main()) == [Result.AGREE]


def test_at_most_limit_mirrors_per_endpoint_are_in_flight_the_rest_are_dropped():
    async def main():
        upstream, record = FakeUpstream(open_=False), Recorder()
        shadow = Shadow(upstream.forward, record, limit=2)
        sent = [mirror(shadow, request_id=f"r{i}") for i in range(5)]
        dropped = record.results()
        upstream.gate.set()
        await shadow.drain()
        return sent, dropped, record.results(), shadow.busy

    sent, dropped, results, busy = asyncio.run(main())
    assert sent == [True, True, False, False, False]
    assert dropped == [Result.DROPPED] * 3
    assert sorted(results) == sorted([Result.DROPPED] * 3 + [Result.AGREE] * 2)
    assert busy == {"clf": 0}


def test_a_cancelled_mirror_gives_its_place_back():
    async def main():
        upstream = FakeUpstream(open_=False)
        shadow = Shadow(upstream.forward, Recorder(), limit=1)
        mirror(shadow)
        for task in list(shadow.tasks):
            task.cancel()
        await shadow.drain()
        return shadow.busy, mirror(shadow)

    busy, again = asyncio.run(main())
    assert busy == {"clf": 0} and again


@pytest.mark.parametrize(("traffic", "source"), [
    ({**TRAFFIC, "shadow": None}, "v1"),
    ({k: v for k, v in TRAFFIC.items() if k != "shadow"}, "v1"),
    (TRAFFIC, "v2"),  # the shadow's own traffic
    (TRAFFIC, None),  # an endpoint without versions
    (with_shadow(FROM="v3"), "v1"),
    (with_shadow(FRACTION=0), "v1"),
])
def test_requests_the_policy_does_not_cover_are_not_mirrored(traffic, source):
    async def main():
        upstream, record = FakeUpstream(), Recorder()
        shadow = Shadow(upstream.forward, record)
        return mirror(shadow, traffic, source), upstream.calls, record, shadow.tasks

    assert asyncio.run(main()) == (False, [], [], set())


def test_fraction_is_decided_by_request_id_the_same_way_everywhere():
    ids = [uuid.uuid4().hex for _ in range(10_000)]
    picked = [sampled(i, 0.3) for i in ids]
    assert picked == [sampled(i, 0.3) for i in ids]
    assert abs(sum(picked) / len(ids) - 0.3) < 0.02
    assert all(sampled(i, 1) for i in ids[:100]) and not any(sampled(i, 0) for i in ids[:100])
    # Without an id, at random by the fraction.
    assert 0.25 < sum(sampled(None, 0.3) for _ in range(10_000)) / 10_000 < 0.35


def test_a_hook_comparator_runs_in_the_pool_given(tmp_path: Path):
    (tmp_path / "cmp_labels.py").write_text(
        "import threading\n"
        "def compare(a, b):\n"
        "    assert threading.current_thread().name.startswith('pool')\n"
        "    return a['label'].lower() == b['label'].lower()\n")
    pool = ThreadPoolExecutor(1, thread_name_prefix="pool")

    async def main():
        async def off_loop(func, *args):
            return await asyncio.get_running_loop().run_in_executor(pool, func, *args)

        record = Recorder()
        shadow = Shadow(FakeUpstream(Reply(body=b'{"label": "CAT"}')).forward, record,
                        hooks=Hooks(tmp_path), off_loop=off_loop)
        traffic = with_shadow(COMPARE="hook", HOOK="cmp_labels:compare")
        mirror(shadow, traffic)
        mirror(shadow, with_shadow(COMPARE="hook", HOOK="cmp_labels:absent"), request_id="r2")
        await shadow.drain()
        return record.results()

    try:
        assert asyncio.run(main()) == [Result.AGREE, Result.ERROR]
    finally:
        pool.shutdown()


# -- the summary -------------------------------------------------------------------------
def test_quantile_interpolates_within_buckets_like_prometheus():
    buckets = [(0.1, 0.0), (0.5, 50.0), (1.0, 100.0), (float("inf"), 100.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.5)
    assert quantile(0.25, buckets) == pytest.approx(0.3)
    assert quantile(0.99, buckets) == pytest.approx(0.99)
    assert quantile(0.5, [(1.0, 0.0), (float("inf"), 4.0)]) == 1.0
    assert quantile(0.5, []) is None and quantile(0.5, [(1.0, 0.0)]) is None


def test_summary_counts_rates_and_latency():
    counts = {("clf", "v2", "agree"): 6.0, ("clf", "v2", "disagree"): 2.0,
              ("clf", "v2", "error"): 1.0, ("clf", "v2", "dropped"): 4.0}
    buckets = {("clf", "v2"): [(float("inf"), 8.0), (1.0, 8.0), (0.5, 0.0)]}
    summary = summarize(counts, buckets)["clf"]["v2"]
    assert summary == {"agree": 6, "disagree": 2, "error": 1, "dropped": 4, "mirrored": 9,
                       "disagreement_rate": 0.25, "latency_p50_s": pytest.approx(0.75),
                       "latency_p99_s": pytest.approx(0.995)}
    assert summarize({("e", "v", "dropped"): 3.0}, {})["e"]["v"]["disagreement_rate"] is None


def test_recorded_results_reach_the_metrics_summary():
    endpoint = f"unit{uuid.uuid4().hex[:8]}"
    metrics.record_shadow(endpoint, "v2", Result.AGREE, 0.02)
    metrics.record_shadow(endpoint, "v2", Result.DISAGREE, 0.04)
    metrics.record_shadow(endpoint, "v2", Result.DROPPED, None)
    summary = metrics.shadow_summary()[endpoint]["v2"]
    assert (summary["agree"], summary["disagree"], summary["dropped"], summary["mirrored"]) \
        == (1, 1, 1, 2)
    assert summary["disagreement_rate"] == 0.5
    assert 0.01 < summary["latency_p50_s"] <= 0.05

