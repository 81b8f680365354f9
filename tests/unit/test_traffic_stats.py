"""Per-target statistics: failure counting, the log histogram's p99, merging, the wire form."""

from __future__ import annotations

import json
import random

import pytest

from basic_inference_server.traffic.outcome import Origin
from basic_inference_server.traffic.stats import (
    GROWTH,
    NBUCKETS,
    Counts,
    Recorder,
    Rolling,
    bucket_of,
    parse_report,
)


def test_buckets_are_contiguous_and_monotonic():
    assert bucket_of(0.0) == 0 and bucket_of(1e-4) == 0
    assert bucket_of(1e-4 * GROWTH) == 1 and bucket_of(1e-4 * GROWTH * 1.0001) == 2
    assert bucket_of(1e9) == NBUCKETS - 1
    values = [10 ** (x / 10) * 1e-5 for x in range(80)]
    indexes = [bucket_of(v) for v in values]
    assert indexes == sorted(indexes)


def test_p99_is_within_one_bucket_of_the_true_value():
    rng = random.Random(7)
    samples = [rng.lognormvariate(-4, 0.6) for _ in range(5000)]
    counts = Counts()
    for s in samples:
        counts.observe(False, s)
    true = sorted(samples)[int(0.99 * len(samples)) - 1]
    assert true / GROWTH <= counts.quantile(0.99) <= true * GROWTH


def test_recorder_applies_the_failure_definition_and_resets_on_take():
    rec = Recorder()
    assert rec.record("clf@v2", 500, Origin.ENDPOINT, 0.01) is True
    assert rec.record("clf@v2", 200, Origin.ENDPOINT, 0.01) is False
    assert rec.record("clf@v2", 400, Origin.ENDPOINT, 0.01) is False
    assert rec.record("clf@v2", 504, Origin.TIMEOUT, 1.0) is True
    assert rec.record("clf@v2", 503, Origin.FRONT, 0.0) is False
    taken = rec.take()
    assert rec.take() == {}
    rec.restore(taken)  # not delivered: it goes with the next take
    rec.record("clf@v2", 200, Origin.ENDPOINT, 0.01)
    report = {t: c.to_json() for t, c in rec.take().items()}
    counts = parse_report(json.loads(json.dumps(report)))["clf@v2"]
    assert (counts.requests, counts.failures, counts.rejected) == (5, 2, 1)


def test_merging_reports_of_several_processes_is_exact():
    a, b, whole = Counts(), Counts(), Counts()
    for i in range(200):
        failed, seconds = i % 10 == 0, 0.001 * (i + 1)
        (a if i % 2 else b).observe(failed, seconds)
        whole.observe(failed, seconds)
    merged = Counts()
    for part in (a, b):
        merged.add(Counts.from_json(json.loads(json.dumps(part.to_json()))))
    assert merged == whole
    assert merged.summary()["error_rate"] == 0.1


@pytest.mark.parametrize("bad", [
    [], {"x": 1}, {"a@b": {"requests": -1}}, {"a": {"requests": 1, "failures": 2}},
    {"a": {"requests": 1, "latency": {"99": 1}}}, {"a": {"requests": 1, "latency": {"x": 1}}},
    {"a": {"requests": True}}, {"": {}},
])
def test_malformed_reports_are_refused(bad):
    with pytest.raises(ValueError):
        parse_report(bad)


def test_rolling_window_forgets_old_slots():
    rolling = Rolling(seconds=10)
    one = Counts()
    one.observe(True, 0.01)
    rolling.add({"t": one}, 100.0)
    rolling.add({"t": one}, 105.5)
    assert rolling.summary(106.0)["t"]["failures"] == 2
    assert rolling.total("t", 112.0).requests == 1
    assert rolling.summary(130.0) == {} and rolling.slots == {}
