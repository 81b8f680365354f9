"""Row M4: no caller creates Prometheus series or metering rows by naming what does not exist.

The version part of an unknown SIGNATURE (``echo@x1``), and the name in a 403 or a 429
(refused before the route table is read), became label values: one request per name,
one new series each (``/metrics`` went from 9 KB to 309 KB). Now requests are counted
under their endpoint and version only when the route table knows them, and under one
fixed label (``unknown``) otherwise, in metrics and metering alike.
"""

from __future__ import annotations

from typing import Any

import requests

from basic_inference_server.tenants.metering import FLUSH_EVERY
from tests.conftest import assert_ok, wait_until

CONFIG = {"API_KEYS": True, "CONFIG_ENDPOINTS": {
    "echo": {}, "ver": {"SERVER_CLASS": "echo", "VERSIONS": {"v1": {}}}}}
# Families a request may add series to (the others are the manager's view and health).
REQUEST_FAMILIES = ("bis_requests_total", "bis_request_seconds", "bis_in_flight",
                    "bis_tenant_")


def request_series(gw) -> set[str]:
    """The series of the request families, as ``name{labels}``."""
    text = assert_ok_text(gw.get("/metrics"))
    return {line.rsplit(" ", 1)[0] for line in text.splitlines()
            if line.startswith(REQUEST_FAMILIES)}


def assert_ok_text(resp: requests.Response) -> str:
    assert resp.status_code == 200, resp.text
    return resp.text


def metering_rows(gw) -> dict[tuple[str, str], int]:
    rows = assert_ok(gw.get("/usage/tenants"))["ROWS"]
    return {(r["TENANT"], r["ENDPOINT"]): int(r["REQUESTS"]) for r in rows}


def settled(gw) -> tuple[set[str], dict[tuple[str, str], int]]:
    """The request series and metering rows once no front process holds a batch: the same
    over a whole metering interval (each process writes its batch ``FLUSH_EVERY`` seconds
    after the batch's first count, on its own timer)."""
    last: list[Any] = [None]

    def same() -> Any:
        now = (request_series(gw), metering_rows(gw))
        unchanged, last[0] = now == last[0], now
        return now if unchanged else None

    return wait_until(same, timeout=60, interval=FLUSH_EVERY + 0.5,
                      message="every front process wrote its metering batch")


def hostile_requests(gw, keys: dict[str, str], tag: str) -> list[int]:
    """Requests naming endpoints and versions that do not exist, each name new."""
    def run(key: str, signature: str, path: str = "/run") -> int:
        return requests.post(gw.url(path), json={"SIGNATURE": signature}, timeout=30,
                             headers={"Authorization": f"Bearer {key}"}).status_code

    statuses = [
        run(keys["scoped"], f"echo@{tag}"),      # an unknown version of a known endpoint: 404
        run(keys["scoped"], f"ver@{tag}"),       # 403: the key may call echo only
        run(keys["scoped"], f"x{tag}"),          # 403
        run(keys["spent"], f"x{tag}"),           # 429: its rate is spent
        run(keys["open"], f"x{tag}@{tag}"),      # 404
        run(keys["open"], f"echo@{tag}", "/jobs"),  # 404
        run(keys["scoped"], f"x{tag}", "/jobs"),    # 403
        requests.get(gw.url(f"/run?SIGNATURE=echo@{tag}"), timeout=30,
                     headers={"Authorization": f"Bearer {keys['open']}"}).status_code,
    ]
    return statuses


def test_unknown_names_make_no_series_and_no_rows(gateways):
    gw = gateways(CONFIG)
    gw.wait_state("ver@v1", "READY", timeout=60)
    keys = {}
    for name, fields in (("scoped", {"ENDPOINTS": ["echo"]}), ("open", {}),
                         ("spent", {"RATE": "1/hour", "BURST": 1})):
        resp = gw.post("/keys", {"TENANT": f"t{name}", **fields})
        assert resp.status_code == 201, resp.text
        keys[name] = resp.json()["KEY"]
    auth = {"Authorization": f"Bearer {keys['spent']}"}
    assert requests.post(gw.url("/run"), json={"SIGNATURE": "echo"}, headers=auth,
                         timeout=30).status_code == 200
    # Once, so that the fixed label's series and rows exist.
    expected = [404, 403, 403, 429, 404, 404, 403, 404]
    assert hostile_requests(gw, keys, "first") == expected
    wait_until(lambda: ("tscoped", "unknown") in metering_rows(gw), timeout=15,
               message="the first requests are metered")
    series, rows = settled(gw)

    for i in range(20):
        assert hostile_requests(gw, keys, f"n{i}") == expected
    # A known request last: once it is metered, the requests before it are too.
    done = rows.get(("topen", "echo"), 0) + 1
    auth = {"Authorization": f"Bearer {keys['open']}"}
    assert requests.post(gw.url("/run"), json={"SIGNATURE": "echo"}, headers=auth,
                         timeout=30).status_code == 200
    wait_until(lambda: metering_rows(gw).get(("topen", "echo")) == done, timeout=15,
               message="the last request is metered")

    after = request_series(gw) - {s for s in request_series(gw)
                                  if 'endpoint="echo"' in s and 'tenant="topen"' in s}
    assert after - series == set(), sorted(after - series)[:10]
    assert set(metering_rows(gw)) == set(rows) | {("topen", "echo")}
    assert not [s for s in request_series(gw) if "n1" in s or "first" in s]
