"""In-flight request counts per worker socket, shared by all processes of the front.

Created in the front's master before it forks, so every front process sees every
count; each process writes only its own row, so no update is lost between processes
(threads of one process update under the caller's lock). A worker's load is the sum
of its column. Sockets map to columns by hash; a rare collision only blurs balancing.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import zlib


class LoadBoard:
    """In-flight requests per worker socket, shared by the front's processes (a row each)."""

    def __init__(self, rows: int, columns: int = 4096) -> None:
        self.rows = max(1, rows)
        self.columns = columns
        self.row = 0
        self._counts = multiprocessing.RawArray(ctypes.c_int32, self.rows * columns)
        # Columns of the names met so far: a /run reads and writes several each.
        self._columns: dict[str, int] = {}

    def claim_row(self, row: int) -> None:
        """Called in a new front process: take a row and clear what a dead one left."""
        self.row = row % self.rows
        start = self.row * self.columns
        ctypes.memset(ctypes.addressof(self._counts) + start * 4, 0, self.columns * 4)

    def _column(self, path: str) -> int:
        col = self._columns.get(path)
        if col is None:
            if len(self._columns) >= self.columns:
                self._columns.clear()  # (bounded, whatever names come)
            col = self._columns[path] = zlib.crc32(path.encode()) % self.columns
        return col

    def add(self, path: str, delta: int) -> None:
        """Count ``delta`` more requests in flight to socket ``path`` (this process's row)."""
        self._counts[self.row * self.columns + self._column(path)] += delta

    def load(self, path: str) -> int:
        """Requests in flight to socket ``path``, over every process."""
        return sum(self._counts[self._column(path)::self.columns])  # its column, every row
