"""Helpers of the job tests: submit jobs and wait for their records."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.conftest import Gateway, wait_until


def submit(gw: Gateway, signature: str, **fields: Any) -> str:
    resp = gw.post("/run", {"SIGNATURE": signature, "ASYNC": True, **fields})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["STATUS"] == "queued" and resp.headers["Location"] == f"/jobs/{body['JOB_ID']}"
    return str(body["JOB_ID"])


def submit_many(gw: Gateway, signature: str, items: list[dict[str, Any]]) -> list[str]:
    """Submit one job per item, 8 at a time; the ids in the order of ``items``."""
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda fields: submit(gw, signature, **fields), items))


def record(gw: Gateway, job_id: str) -> dict[str, Any]:
    resp = gw.get(f"/jobs/{job_id}")
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def records(gw: Gateway, ids: list[str]) -> list[dict[str, Any]]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda job_id: record(gw, job_id), ids))


def queue_status(gw: Gateway, signature: str) -> dict[str, Any]:
    resp = gw.get("/system_status")
    assert resp.status_code == 200, resp.text
    status: dict[str, Any] = resp.json()["QUEUES"][signature]
    return status


def wait_finished(gw: Gateway, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """The job's record once it is done, failed or dead."""
    return wait_until(
        lambda: (r := record(gw, job_id))["STATUS"] in ("done", "failed", "dead") and r,
        timeout=timeout, message=f"job {job_id} finished")
