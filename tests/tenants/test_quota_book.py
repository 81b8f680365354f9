"""The front's quota book on a real store: reservations, what a release gives back, and
what is counted in memory while the store does not answer (fail open) or refused (fail
closed)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from basic_inference_server.errors import Unavailable
from basic_inference_server.tenants.keys import key_from_request
from basic_inference_server.tenants.limits import StoreDown
from basic_inference_server.tenants.quotas import QuotaBook
from basic_inference_server.tenants.store import SqliteStore
from basic_inference_server.tenants.usage import QuotaExceeded, period


class Flaky:
    """A SQLite store that can be made not to answer."""

    def __init__(self, path: str) -> None:
        async def run(func: Any, *args: Any) -> Any:
            return func(*args)

        self.real = SqliteStore(path, run, None)
        self.down = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.real, name)
        if not asyncio.iscoroutinefunction(attr):
            return attr

        async def call(*args: Any) -> Any:
            if self.down:
                raise StoreDown("not answering")
            return await attr(*args)
        return call


def key_with(quota: dict):
    return key_from_request({"TENANT": "acme", "QUOTA": quota})[0]


def test_reservations_are_exact_and_a_release_gives_one_back(tmp_path):
    store = Flaky(str(tmp_path / "tenants.db"))
    book = QuotaBook(store, fail_open=False)  # type: ignore[arg-type]
    key = key_with({"REQUESTS": 3})

    async def main() -> list[Any]:
        return await asyncio.gather(*(book.take(key) for _ in range(10)),
                                    return_exceptions=True)

    got = asyncio.run(main())
    held = [g for g in got if not isinstance(g, BaseException)]
    assert len(held) == 3 and all(isinstance(g, QuotaExceeded) for g in got if g not in held)
    label = period("day", time.time())[0]
    asyncio.run(book.release(held[0]))
    assert store.real._spent(key.lineage, label) == 2
    asyncio.run(book.take(key))
    assert store.real._spent(key.lineage, label) == 3


def test_fail_open_counts_from_what_the_store_last_said(tmp_path):
    store = Flaky(str(tmp_path / "tenants.db"))
    book = QuotaBook(store, fail_open=True)  # type: ignore[arg-type]
    key = key_with({"REQUESTS": 5})
    label = period("day", time.time())[0]

    async def main() -> None:
        await book.take(key)
        await book.take(key)
        store.down = True
        local = [await book.take(key) for _ in range(3)]  # 2 said + 3 here = 5
        with pytest.raises(QuotaExceeded):
            await book.take(key)
        await book.release(local[0])  # not answered 200: one back
        await book.take(key)
        store.down = False
        with pytest.raises(QuotaExceeded):  # what was owed is written first
            await book.take(key)

    asyncio.run(main())
    assert store.real._spent(key.lineage, label) == 5


def test_fail_closed_refuses_and_keeps_a_release_owed(tmp_path):
    store = Flaky(str(tmp_path / "tenants.db"))
    book = QuotaBook(store, fail_open=False)  # type: ignore[arg-type]
    key = key_with({"REQUESTS": 5})
    units = key_with({"UNITS": 10})
    label = period("day", time.time())[0]

    async def main() -> None:
        held = await book.take(key)
        store.down = True
        with pytest.raises(Unavailable):
            await book.take(key)
        with pytest.raises(Unavailable):
            await book.take(units)
        with pytest.raises(Unavailable):
            await book.charge(units, 4.0)
        await book.release(held)  # kept in memory, no error
        store.down = False
        await book.take(key)  # writes the release, then reserves

    asyncio.run(main())
    assert store.real._spent(key.lineage, label) == 1
    assert store.real._spent(units.lineage, label) == 0
