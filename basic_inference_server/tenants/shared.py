"""Rate-limit state in memory shared by the front processes of one gateway.

Without Redis, limits only have to be exact across the front processes of one
gateway, and those are forked from one master: a table in shared memory under one
process-shared lock does that for a few microseconds a request, where a SQLite
transaction per request costs the front several times its CPU (bench/bench_tenants.py).
The critical section is a handful of array reads and writes, so taking it on the event
loop never holds the loop.

The table is fixed-size (open addressing over ``SLOTS`` entries). An entry whose
bucket has refilled and whose key holds no concurrency slot carries no information and
is reused. Concurrency slots are counted per front process (one row each, as the load
board does): a process that dies has its row cleared when its successor starts.
Bucket levels start full again when the gateway restarts.

It grants as the Redis script does (:mod:`.redis_limits`), and front processes take
from it ahead of their requests the same way (:mod:`.allot`): most requests take no
lock at all.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import multiprocessing
import time
from typing import Any

from ..errors import Unavailable
from .allot import RESERVE, Held, Ticket
from .limits import Plan

SLOTS = 1 << 16
PROBES = 16


def slot_hash(name: str) -> int:
    """A non-zero 63-bit id of a bucket (0 marks a free entry)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big") >> 1 | 1


class SharedLimits:
    """Token buckets and concurrency counts of every key, shared by the front processes:
    the :class:`.allot.Source` of the SQLite store (and of Redis's fail-open mode)."""

    lease = math.inf  # a slot is counted in its process's row until it dies

    def __init__(self, rows: int, slots: int = SLOTS) -> None:
        self.rows = max(1, rows)
        self.slots = slots
        self.row = 0
        self._lock = multiprocessing.Lock()
        self._ids = multiprocessing.RawArray(ctypes.c_uint64, slots)
        self._tokens = multiprocessing.RawArray(ctypes.c_double, slots)
        self._stamp = multiprocessing.RawArray(ctypes.c_double, slots)
        self._full_at = multiprocessing.RawArray(ctypes.c_double, slots)
        self._held = multiprocessing.RawArray(ctypes.c_int32, self.rows * slots)
        # Per bucket name: its id, and the entry it had last (checked before use).
        self._hashes: dict[str, tuple[int, int]] = {}

    def claim_row(self, row: int) -> None:
        """In a new front process: take its row, dropping what a dead predecessor held."""
        self.row = row % self.rows
        with self._lock:
            base = self.row * self.slots
            ctypes.memset(ctypes.addressof(self._held) + base * 4, 0, self.slots * 4)

    def _held_total(self, index: int) -> int:
        return sum(self._held[r * self.slots + index] for r in range(self.rows))

    def _entry(self, name: str, now: float, create: bool = True) -> int:
        """The entry of ``name`` (claimed if new; -1 if new and not ``create``); under
        the lock."""
        known = self._hashes.get(name)
        if known is None:
            if len(self._hashes) > SLOTS:
                self._hashes.clear()
            known = self._hashes[name] = (slot_hash(name), -1)
        ident, hint = known
        if hint >= 0 and self._ids[hint] == ident:
            return hint
        index = self._probe(ident, now, create)
        if index >= 0:
            self._hashes[name] = (ident, index)
        return index

    def _probe(self, ident: int, now: float, create: bool) -> int:
        free = -1
        for probe in range(PROBES):
            index = (ident + probe) % self.slots
            held = self._ids[index]
            if held == ident:
                return index
            if free < 0 and (held == 0 or (self._full_at[index] <= now
                                           and not self._held_total(index))):
                free = index
        if not create:
            return -1
        if free < 0:
            raise Unavailable("the gateway's rate-limit table is full; retry shortly",
                              retry_after=1)
        self._ids[free] = ident
        self._stamp[free] = -1.0  # a new bucket: full
        for r in range(self.rows):
            self._held[r * self.slots + free] = 0
        return free

    def _level(self, index: int, rate: float, burst: int, now: float) -> float:
        last = self._stamp[index]
        return burst if last < 0 else min(burst, self._tokens[index] + max(0.0, now - last) * rate)

    def _set(self, index: int, tokens: float, rate: float, burst: int, now: float) -> None:
        self._tokens[index] = tokens
        self._stamp[index] = now
        self._full_at[index] = now + (burst - tokens) / rate

    def grant_now(self, plan: Plan, ticket: Ticket) -> list[Any]:
        """What the Redis script does (see :class:`.allot.Source`), under the lock."""
        now = time.time()
        n = len(plan.buckets)
        out: list[Any] = [0, 0, 0] + [0.0, 0] * n
        with self._lock:
            entries = [self._entry(bid, now) for bid, _rate, _burst in plan.buckets]
            levels = []
            for i, (index, (_bid, rate, burst)) in enumerate(zip(entries, plan.buckets,
                                                                 strict=True)):
                tokens = self._level(index, rate, burst, now)
                levels.append(tokens)
                out[3 + 2 * i] = tokens
                if ticket.wants[i] and tokens < 1 and not out[0]:
                    out[0] = i + 1
            if out[0]:
                return out
            if ticket.slot_want and plan.slots:
                slot = self._entry(plan.slots[0], now)
                free = plan.slots[1] - self._held_total(slot)
                out[2] = free
                if free < 1:
                    out[0] = n + 1
                    return out
                out[1] = max(1, min(ticket.slot_want, free // RESERVE))
                self._held[self.row * self.slots + slot] += out[1]
                self._full_at[slot] = max(self._full_at[slot], now)
            for i, (index, (_bid, rate, burst)) in enumerate(zip(entries, plan.buckets,
                                                                 strict=True)):
                if ticket.wants[i]:
                    out[4 + 2 * i] = max(1, min(ticket.wants[i], int(levels[i] // RESERVE)))
                    self._set(index, levels[i] - out[4 + 2 * i], rate, burst, now)
        return out

    async def grant(self, plan: Plan, ticket: Ticket, name: str) -> list[Any]:
        """:meth:`grant_now`, as the :class:`.allot.Source` interface asks."""
        return self.grant_now(plan, ticket)

    async def give_back(self, bucket: str, held: Held) -> None:
        """Return the tokens ``held`` to ``bucket``."""
        now = time.time()
        with self._lock:
            index = self._entry(bucket, now, create=False)
            if index >= 0 and self._stamp[index] >= 0:
                level = self._level(index, held.rate, held.burst, now)
                self._set(index, min(held.burst, level + held.tokens), held.rate, held.burst,
                          now)

    async def drop_slots(self, slots: str, names: list[str]) -> None:
        """Give back the slots ``names`` hold in ``slots``."""
        with self._lock:
            index = self._entry(slots, time.time(), create=False)
            if index >= 0:
                cell = self.row * self.slots + index
                self._held[cell] = max(0, self._held[cell] - len(names))
