"""SCHED_BATCH: the front's and the servers' workers, and their request threads, run under
the batch policy; with the setting off, under the default one. The manager and the
supervisor are not request paths and keep the default."""

from __future__ import annotations

import os

import psutil
import pytest

from tests.conftest import assert_ok
from tests.security.hostile import front_workers, server_workers


def policies(procs: list[psutil.Process]) -> set[int]:
    """The policy of every thread of ``procs``."""
    return {os.sched_getscheduler(t.id) for p in procs for t in p.threads()}


@pytest.mark.parametrize("on", [True, False])
def test_request_paths_run_under_the_batch_policy_unless_turned_off(gateways, on):
    gw = gateways({"SCHED_BATCH": on, "GATEWAY_WORKERS": 1,
                   "CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 2}}})
    assert_ok(gw.run("echo", x=1))
    workers = [*front_workers(gw, 1), *server_workers(gw)]
    assert len(workers) == 3
    expected = os.SCHED_BATCH if on else os.SCHED_OTHER
    assert policies(workers) == {expected}
    assert policies([gw.manager]) == {os.SCHED_OTHER}
