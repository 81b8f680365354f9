"""Quotas on the request path: a request reserved at admission, units charged after.

A requests quota is taken when a request is admitted, in one store operation that
takes a request only while the quota has one left (:meth:`.store.KeyStore.reserve`):
concurrent requests can never pass the quota, whatever the number of front processes
and gateways. The reservation is kept when the answer is a 200 and given back
otherwise (only 200s are charged). That is the one store operation a request of a
requests quota costs (a non-200 costs a second, its release).

Units are what an endpoint reports once a request has run, so a units quota is
checked before (refused once spent) and charged after: the request that crosses the
line is charged in full.

Counters are per key lineage (:mod:`.keys`) and UTC period. When the store does not
answer and ``TENANTS_FAIL_OPEN`` is on, a quota is counted from what the store last
said plus what this process took since; what it owes is written when the store
answers again (lost if the process stops first). Fail closed: 503.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..errors import Unavailable
from .keys import ApiKey
from .limits import StoreDown
from .store import KeyStore
from .usage import exceeded, period

# Counters whose last store value a process remembers (for fail open); past it, it
# starts over.
MAX_SEEN = 10000
Counter = tuple[str, str]  # lineage, period


def unavailable(exc: StoreDown) -> Unavailable:
    """The 503 of a request the key store could not answer."""
    return Unavailable(f"the key store is not reachable: {exc}", retry_after=1)


@dataclass(slots=True)
class Reservation:
    """One request taken from a requests quota at admission."""

    counter: Counter
    kept: bool = False  # answered 200: it stays spent


class QuotaBook:
    """One front process's quota calls (on its event loop)."""

    def __init__(self, store: KeyStore, fail_open: bool) -> None:
        self.store = store
        self.fail_open = fail_open
        # Amounts not written yet: taken while the store was down (fail open), or
        # reservations given back while it did not answer.
        self._owed: dict[Counter, float] = {}
        self._seen: dict[Counter, float] = {}  # what the store last said

    async def take(self, key: ApiKey) -> Reservation | None:
        """A requests quota: one request reserved (to keep or give back); a units
        quota: checked. 429 ``quota_exceeded`` when nothing is left."""
        quota = key.quota
        if quota is None or quota.unit == "tokens":  # reserved by the token budget
            return None
        now = time.time()
        counter = (key.lineage, period(quota.per, now)[0])
        if quota.unit == "requests":
            taken, spent = await self._reserve(counter, quota.amount)
            if taken:
                return Reservation(counter)
        else:
            spent = await self.spent(counter)
            if spent < quota.amount:
                return None
        raise exceeded(quota, spent, now)

    async def spent(self, counter: Counter) -> float:
        """What a counter holds (what the store last said, when it is down and fail open)."""
        try:
            found = await self.store.spent(*counter)
        except StoreDown as exc:
            if not self.fail_open:
                raise unavailable(exc) from None
            found = self._seen.get(counter, 0.0)
        else:
            self._remember(counter, found)
        return found + self._owed.get(counter, 0.0)

    async def _reserve(self, counter: Counter, limit: float) -> tuple[bool, float]:
        try:
            await self._settle(counter)
            taken, spent = await self.store.reserve(*counter, 1.0, limit)
        except StoreDown as exc:
            if not self.fail_open:
                raise unavailable(exc) from None
            spent = self._seen.get(counter, 0.0) + self._owed.get(counter, 0.0)
            if spent + 1 > limit:
                return False, spent
            self._owed[counter] = self._owed.get(counter, 0.0) + 1
            return True, spent + 1
        self._remember(counter, spent)
        return taken, spent

    async def _settle(self, counter: Counter) -> None:
        """Write what is owed on a counter (StoreDown: it stays owed)."""
        owed = self._owed.pop(counter, 0.0)
        if owed:
            try:
                await self.store.charge(*counter, owed)
            except StoreDown:
                self._owed[counter] = owed
                raise

    def _remember(self, counter: Counter, spent: float) -> None:
        if len(self._seen) >= MAX_SEEN:
            self._seen.clear()
        self._seen[counter] = spent

    async def release(self, held: Reservation) -> None:
        """Give back a reservation whose request was not answered 200 (kept owed while
        the store does not answer)."""
        await self.add(held.counter, -1.0, strict=False)

    async def charge(self, key: ApiKey, units: float) -> None:
        """A units quota: add the units a request answered 200 with."""
        if key.quota is not None and key.quota.unit == "units" and units:
            await self.add((key.lineage, period(key.quota.per, time.time())[0]), units)

    async def add(self, counter: Counter, amount: float, strict: bool = True) -> None:
        """Add ``amount`` to a counter, with what is owed on it. When the store does not
        answer: kept owed, or (``strict``, failing closed) a 503 and nothing kept."""
        owed = self._owed.pop(counter, 0.0) + amount
        if not owed:
            return
        try:
            await self.store.charge(*counter, owed)
        except StoreDown as exc:
            if strict and not self.fail_open:
                if owed != amount:
                    self._owed[counter] = owed - amount
                raise unavailable(exc) from None
            self._owed[counter] = owed
