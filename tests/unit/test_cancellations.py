"""``bis_cancelled_total``: known reasons only, a version counted under its endpoint."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from basic_inference_server.cancellations import JOB_RUNNING, count_cancelled


def value(endpoint: str, reason: str) -> float:
    found = REGISTRY.get_sample_value("bis_cancelled_total",
                                      {"endpoint": endpoint, "reason": reason})
    return found or 0.0


def test_a_version_counts_under_its_endpoint():
    before = value("unit_clf", JOB_RUNNING)
    count_cancelled("unit_clf@v2", JOB_RUNNING)
    count_cancelled("unit_clf", JOB_RUNNING)
    assert value("unit_clf", JOB_RUNNING) == before + 2
    assert value("unit_clf@v2", JOB_RUNNING) == 0.0


def test_an_unknown_reason_is_refused():
    with pytest.raises(ValueError, match="unknown cancel reason"):
        count_cancelled("unit_clf", "because")
