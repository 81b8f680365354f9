"""The fair queue's memory shared by the front's processes (:class:`SharedTags`), and
the window of the shares it reports (:class:`ShareWindow`); see :mod:`.fair_queue`."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import time
from collections import deque

from ..tenants.priorities import MAX_CLASSES
from ..tenants.shared import slot_hash
from .loadboard import LoadBoard

# Tenants (per endpoint) whose tags are shared; past it, tenants share slots by hash.
TENANT_SLOTS = 4096
NO_HEAD = -1
# /list_servers' FAIR_SHARES count the requests started in about this many last seconds.
SHARE_WINDOW_S = 60.0
# Bytes of a tenant slot's owner: a route's name ("endpoint@label", 129 bytes at most:
# names.py), a NUL, a tenant's (64).
OWNER_BYTES = 200


class SharedTags:
    """The fair queue's shared memory: heads per process and endpoint, each class's
    virtual time per endpoint, and finish tags and served counts per tenant."""

    def __init__(self, board: LoadBoard) -> None:
        self.board = board
        rows, columns = board.rows, board.columns
        self.head_rank = multiprocessing.RawArray(ctypes.c_int32, [NO_HEAD] * (rows * columns))
        self.head_tag = multiprocessing.RawArray(ctypes.c_double, rows * columns)
        self.vtime = multiprocessing.RawArray(ctypes.c_double, columns * MAX_CLASSES)
        self.tenant_ids = multiprocessing.RawArray(ctypes.c_uint64, TENANT_SLOTS)
        # Each slot's "endpoint NUL tenant", so any process can list every slot's owner.
        self.owners = multiprocessing.RawArray(ctypes.c_char, TENANT_SLOTS * OWNER_BYTES)
        self.finish = multiprocessing.RawArray(ctypes.c_double, TENANT_SLOTS)
        # Served per process row (each writes its own: no update lost), summed to read.
        self.started = multiprocessing.RawArray(ctypes.c_int64, rows * TENANT_SLOTS)
        self._lock = multiprocessing.Lock()
        self._slots: dict[tuple[str, str], int] = {}
        # A pipe per process row: a byte on it wakes that process's queue.
        self.wakers = [os.pipe() for _ in range(rows)]
        for read, write in self.wakers:
            os.set_blocking(read, False)
            os.set_blocking(write, False)

    def clear_row(self, row: int) -> None:
        """A new front process in ``row``: no head of a dead one's left there."""
        start = row * self.board.columns
        for i in range(start, start + self.board.columns):
            self.head_rank[i] = NO_HEAD

    def tenant_slot(self, endpoint: str, tenant: str) -> int:
        """The shared slot of ``tenant``'s tags on ``endpoint`` (claimed on first use)."""
        slot = self._slots.get((endpoint, tenant))
        if slot is not None:
            return slot
        owner = (endpoint + "\0" + tenant).encode()
        ident = slot_hash(endpoint + "\0" + tenant)
        start = ident % TENANT_SLOTS
        with self._lock:
            for i in range(TENANT_SLOTS):
                slot = (start + i) % TENANT_SLOTS
                if self.tenant_ids[slot] in (ident, 0):
                    if not self.tenant_ids[slot]:
                        at = slot * OWNER_BYTES
                        ctypes.memmove(ctypes.addressof(self.owners) + at, owner, len(owner))
                    self.tenant_ids[slot] = ident
                    break
            else:
                slot = start  # full: tenants share by hash (bounded, blurred)
        if len(self._slots) >= TENANT_SLOTS:
            self._slots.clear()
        self._slots[(endpoint, tenant)] = slot
        return slot

    def served(self) -> dict[str, dict[str, int]]:
        """Requests started per endpoint and tenant, over every process."""
        out: dict[str, dict[str, int]] = {}
        for slot in range(TENANT_SLOTS):
            if self.tenant_ids[slot]:
                at = slot * OWNER_BYTES
                owner = ctypes.string_at(ctypes.addressof(self.owners) + at, OWNER_BYTES)
                endpoint, _, tenant = owner.rstrip(b"\0").decode().partition("\0")
                out.setdefault(endpoint, {})[tenant] = sum(self.started[slot::TENANT_SLOTS])
        return out

    def wake(self, row: int) -> None:
        """Tell the process in ``row`` to look at its queue (a full pipe: it will)."""
        try:
            os.write(self.wakers[row][1], b"\0")
        except BlockingIOError:
            pass


class ShareWindow:
    """The base that :meth:`FairQueue.shares` counts from: marks of the counts it read,
    the newest at least :data:`SHARE_WINDOW_S` old being the base (since the start, at
    the first read)."""

    def __init__(self) -> None:
        self._marks: deque[tuple[float, dict[str, dict[str, int]]]] = deque()

    def shares(self, counts: dict[str, dict[str, int]]) -> dict[str, dict[str, dict[str, float]]]:
        """Requests started per endpoint and tenant since the base, given ``counts``
        (since the start), and their share of the endpoint's."""
        now = time.monotonic()
        marks = self._marks
        while len(marks) > 1 and now - marks[1][0] >= SHARE_WINDOW_S:
            marks.popleft()
        base = marks[0][1] if marks else {}
        if not marks or now - marks[-1][0] >= SHARE_WINDOW_S / 4:
            marks.append((now, counts))
        out: dict[str, dict[str, dict[str, float]]] = {}
        for name, tenants in counts.items():
            started = {t: n - base.get(name, {}).get(t, 0) for t, n in tenants.items()}
            total = sum(started.values())
            out[name] = {t: {"STARTED": n, "SHARE": round(n / total, 4) if total else 0.0}
                         for t, n in started.items()}
        return out
