"""The run flow's tenant interface with API keys on, over a fake gate: what waits and
what is given back."""

from __future__ import annotations

import asyncio
from typing import Any

from basic_inference_server.gateway.tenancy import NO_HOLD, KeyTenancy, TenantHold
from basic_inference_server.gateway.upstream_conn import UpstreamResponse
from basic_inference_server.tenants.keys import ApiKey
from basic_inference_server.tenants.limits import Plan
from basic_inference_server.tenants.quotas import Reservation
from basic_inference_server.tenants.usage import Quota
from basic_inference_server.wire.message import Request

SLOT = Plan(buckets=[], slots=("k:slots", 1))


class FakeGate:
    """Records the store calls a request makes; ``keeps``: whether this process keeps a
    released slot (no store call)."""

    def __init__(self, keeps: bool = True) -> None:
        self.keeps = keeps
        self.calls: list[str] = []

    def cached(self, headers: list[tuple[bytes, bytes]]) -> ApiKey | None:
        return None  # (every key needs authenticate)

    def admit_held(self, key: ApiKey, endpoint: str) -> Any:
        return (SLOT, None) if key.max_concurrent else (None, None)

    async def take_quota(self, key: ApiKey) -> Reservation:
        self.calls.append("take_quota")
        return Reservation(counter=None)  # type: ignore[arg-type]

    def release_held(self, plan: Plan) -> bool:
        return self.keeps

    async def give_back(self, plan: Plan) -> None:
        self.calls.append("give_back")

    async def release_quota(self, held: Reservation) -> None:
        self.calls.append("release_quota")

    async def charge(self, key: ApiKey, units: float, held: Reservation | None) -> None:
        self.calls.append(f"charge {units}")
        if held is not None:
            held.kept = True


def request(headers: list[tuple[bytes, bytes]] | None = None) -> Request:
    return Request("POST", "/run", "", headers or [], b"{}", "r", True, ("127.0.0.1", 1))


def tenancy(gate: FakeGate) -> KeyTenancy:
    async def off_loop(func: Any, *args: Any) -> Any:
        return func(*args)

    return KeyTenancy(gate, off_loop, "secret")  # type: ignore[arg-type]


def test_a_key_the_process_can_admit_takes_no_store_call() -> None:
    gate = FakeGate()
    keys = tenancy(gate)
    req = request()
    req.key = ApiKey(id="k", tenant="t", hash="h", max_concurrent=1)
    hold = keys.admit_now(req, "echo")
    assert hold is not None and hold.slot is SLOT
    assert keys.charge_now(hold, UpstreamResponse(200, body=b"{}")) == 0.0
    assert keys.release_now(hold) and not gate.calls


def test_a_quota_is_reserved_and_given_back_when_not_answered_200() -> None:
    gate = FakeGate(keeps=False)
    keys = tenancy(gate)
    req = request()
    req.key = ApiKey(id="k", tenant="t", hash="h", max_concurrent=1,
                     quota=Quota(amount=10, per="day", unit="requests"))
    assert keys.admit_now(req, "echo") is None, "a quota needs the store"

    async def go() -> TenantHold:
        hold = await keys.admit(req, "echo")
        assert keys.charge_now(hold, UpstreamResponse(500, body=b"{}")) == 0.0
        assert not keys.release_now(hold)
        await keys.release(hold)
        return hold

    asyncio.run(go())
    assert gate.calls == ["take_quota", "give_back", "release_quota"]


def test_the_internal_credential_needs_no_key_and_holds_nothing() -> None:
    keys = tenancy(FakeGate())
    req = request([(b"authorization", b"Bearer secret")])
    assert keys.identify_now(req) and req.key is None
    assert keys.admit_now(req, "echo") is NO_HOLD
    assert not keys.identify_now(request([(b"authorization", b"Bearer other")]))
