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
"""

from __future__ import annotations

import ctypes
import hashlib
import multiprocessing
import time

from ..errors import Unavailable
from .limits import Decision, Plan, decide

SLOTS = 1 << 16
PROBES = 16


def slot_hash(name: str) -> int:
    """A non-zero 63-bit id of a bucket (0 marks a free entry)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big") >> 1 | 1


class SharedLimits:
    """Token buckets and concurrency counts of every key, shared by the front processes."""

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

    def _entry(self, name: str, now: float) -> int:
        """The entry of ``name`` (claimed if new); under the lock."""
        known = self._hashes.get(name)
        if known is None:
            if len(self._hashes) > SLOTS:
                self._hashes.clear()
            known = self._hashes[name] = (slot_hash(name), -1)
        ident, hint = known
        if hint >= 0 and self._ids[hint] == ident:
            return hint
        index = self._probe(ident, now)
        self._hashes[name] = (ident, index)
        return index

    def _probe(self, ident: int, now: float) -> int:
        free = -1
        for probe in range(PROBES):
            index = (ident + probe) % self.slots
            held = self._ids[index]
            if held == ident:
                return index
            if free < 0 and (held == 0 or (self._full_at[index] <= now
                                           and not self._held_total(index))):
                free = index
        if free < 0:
            raise Unavailable("the gateway's rate-limit table is full; retry shortly",
                              retry_after=1)
        self._ids[free] = ident
        self._stamp[free] = -1.0  # a new bucket: full
        for r in range(self.rows):
            self._held[r * self.slots + free] = 0
        return free

    def take(self, plan: Plan) -> Decision:
        now = time.time()
        with self._lock:
            entries = [self._entry(bid, now) for bid, _rate, _burst in plan.buckets]
            levels: list[tuple[float, float, int]] = []
            refused = 0
            for i, (index, (_bid, rate, burst)) in enumerate(zip(entries, plan.buckets,
                                                                 strict=True), 1):
                last = self._stamp[index]
                tokens = burst if last < 0 else min(burst, self._tokens[index]
                                                    + max(0.0, now - last) * rate)
                levels.append((tokens, rate, burst))
                if tokens < 1 and not refused:
                    refused = i
            slot = -1
            if not refused and plan.slots:
                slot = self._entry(plan.slots[0], now)
                if self._held_total(slot) >= plan.slots[1]:
                    refused = len(plan.buckets) + 1
            if not refused:
                if slot >= 0:
                    self._held[self.row * self.slots + slot] += 1
                    self._full_at[slot] = max(self._full_at[slot], now)
                for index, (tokens, rate, burst) in zip(entries, levels, strict=True):
                    self._tokens[index] = tokens - 1
                    self._stamp[index] = now
                    self._full_at[index] = now + (burst - tokens + 1) / rate
        return decide(levels, refused, 1.0)

    def release(self, plan: Plan) -> None:
        if not plan.slots:
            return
        with self._lock:
            slot = self._entry(plan.slots[0], time.time())
            cell = self.row * self.slots + slot
            if self._held[cell] > 0:
                self._held[cell] -= 1
