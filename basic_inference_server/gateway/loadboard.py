"""In-flight request counts per worker socket, shared by all processes of the front.

Created in the front's master before it forks, so every front process sees every
count; each process writes only its own row, so no update is lost between processes
(threads of one process update under the caller's lock). A worker's load is the sum
of its column.

Each name (a worker socket, a remote URL, ``@<endpoint>``, ``#connections``) has a
column of its own: the first process to meet a name claims a free column for it, by
open addressing from the name's hash, under a lock shared by the front's processes, and
the others find it there. Two names never share a column (one endpoint's
``MAX_IN_FLIGHT`` is never counted against another's requests) until the table is full;
past that, a new name shares the column its hash points to, blurring balancing and
those counts (logged once). Columns are not given back: the names of a worker
generation stay claimed after it is gone, so the table holds the names of about a
thousand reloads of a few endpoints.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
from collections.abc import Callable

from ..tenants.shared import slot_hash

log = logging.getLogger(__name__)


class LoadBoard:
    """In-flight requests per worker socket, shared by the front's processes (a row each)."""

    def __init__(self, rows: int, columns: int = 4096) -> None:
        self.rows = max(1, rows)
        self.columns = columns
        self.row = 0
        self._array = multiprocessing.RawArray(ctypes.c_int32, self.rows * columns)
        # Read and written through a memoryview: its items cost less than ctypes' (a fair
        # /run reads a column's sum three times and writes twice).
        self._counts = memoryview(self._array).cast("B").cast("i")
        self._sum = column_sum(self._counts, self.rows, columns)
        # The id (slot_hash) of the name owning each column; 0: free.
        self._owners = multiprocessing.RawArray(ctypes.c_uint64, columns)
        self._lock = multiprocessing.Lock()  # taken only to claim a column
        self._full = False
        # Columns of the names met so far: a /run reads and writes several each.
        self._columns: dict[str, int] = {}

    def claim_row(self, row: int) -> None:
        """Called in a new front process: take a row and clear what a dead one left."""
        self.row = row % self.rows
        start = self.row * self.columns
        ctypes.memset(ctypes.addressof(self._array) + start * 4, 0, self.columns * 4)

    def _column(self, path: str) -> int:
        col = self._columns.get(path)
        if col is None:
            if len(self._columns) >= self.columns:
                self._columns.clear()  # (bounded, whatever names come)
            col = self._columns[path] = self._claim(slot_hash(path))
        return col

    def _claim(self, ident: int) -> int:
        """The column of the name whose id is ``ident``: found, or claimed if free."""
        start = ident % self.columns
        col = self._slot(ident, start)
        if col >= 0 and self._owners[col] == ident:
            return col
        with self._lock:
            col = self._slot(ident, start)  # another process may have claimed it meanwhile
            if col >= 0:
                self._owners[col] = ident
                return col
        if not self._full:
            self._full = True
            log.warning("the front's load board has no free column left (%d): new worker "
                        "sockets now share columns, blurring balancing and MAX_IN_FLIGHT "
                        "counts until the gateway restarts", self.columns)
        return start

    def _slot(self, ident: int, start: int) -> int:
        """The column owned by ``ident``, else the first free one on its path (claimed
        columns are never freed, so a name is never past a free one); -1: none free."""
        for i in range(self.columns):
            col = (start + i) % self.columns
            owner = self._owners[col]
            if owner == ident or not owner:
                return col
        return -1

    def column(self, path: str) -> int:
        """The column of ``path`` (claimed on first use)."""
        return self._column(path)

    def add_at(self, col: int, delta: int) -> None:
        """:meth:`add` by column (:meth:`column`): for callers that keep it."""
        self._counts[self.row * self.columns + col] += delta

    def load_at(self, col: int) -> int:
        """:meth:`load` by column."""
        return self._sum(col)

    def take_if_free(self, running: int, waiting: int, cap: int) -> bool:
        """Count one more request in column ``running`` when none is counted in
        ``waiting`` and fewer than ``cap`` in ``running``, over every process (the fair
        queue's slot; one call, as every request of a fair endpoint makes it)."""
        total = self._sum
        if total(waiting) or total(running) >= cap:
            return False
        self._counts[self.row * self.columns + running] += 1
        return True

    def release(self, running: int, waiting: int) -> bool:
        """Count one request fewer in column ``running``; whether any is counted in
        ``waiting`` (over every process)."""
        self._counts[self.row * self.columns + running] -= 1
        return bool(self._sum(waiting))

    def add(self, path: str, delta: int) -> None:
        """Count ``delta`` more requests in flight to socket ``path`` (this process's row)."""
        self._counts[self.row * self.columns + self._column(path)] += delta

    def load(self, path: str) -> int:
        """Requests in flight to socket ``path``, over every process."""
        return self._sum(self._column(path))  # its column, every row


def column_sum(counts: memoryview, rows: int, columns: int) -> Callable[[int], int]:
    """A column's sum over the ``rows`` rows of ``counts``. The front's usual one or two
    rows (``GATEWAY_WORKERS``) read their items directly: a stepped slice builds a list,
    twice the cost, and the front sums a column several times a request."""
    if rows == 1:
        return counts.__getitem__
    if rows == 2:
        return lambda col: counts[col] + counts[col + columns]
    return lambda col: sum(counts[col::columns])
