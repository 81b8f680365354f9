"""The front's view of the route table the manager publishes (:class:`..contracts.RouteSnapshot`)."""

from __future__ import annotations

import json
import os
import time

from ..contracts import Route, RouteSnapshot, TrafficPolicy

# How stale the front's view may be. A server that died meanwhile is still caught at
# once (its socket refuses the connection); only 503 texts may lag this much.
CHECK_EVERY = 0.05
# Two writes within one tick of the file system's clock can leave the same stamp: the
# file is read again this often whatever its stamp says.
READ_EVERY = 1.0


class RouteTable:
    """Reads the manager's route file again when it changes (checked every 50 ms at most;
    read every second, and whenever ``fresh`` is asked)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] = (-1, -1, -1)
        self._checked = 0.0
        self._read = 0.0
        self._table = RouteSnapshot()

    def table(self, fresh: bool = False) -> RouteSnapshot:
        """The table as last read; read again first when it may have changed."""
        now = time.monotonic()
        # Until a first read succeeds there is no table to serve from the cache: the
        # check below is marked before the read, so a second thread within 50 ms of the
        # first caller would get the empty table (no endpoint: /health/ready said 200).
        if not fresh and self._read and now - self._checked < CHECK_EVERY:
            return self._table
        self._checked = now
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return self._table
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        if fresh or stamp != self._stamp or now - self._read > READ_EVERY:
            try:
                with open(self.path, encoding="utf-8") as fh:
                    self._table = RouteSnapshot.of(json.load(fh))
                self._stamp = stamp
                self._read = now
            except (OSError, ValueError, KeyError, TypeError):
                # Caught mid-replace on an exotic filesystem: keep the last good table.
                pass
        return self._table

    def get(self, name: str, fresh: bool = False) -> Route | None:
        """The route named ``name`` (an endpoint, or a version ``<endpoint>@<label>``)."""
        return self.table(fresh).endpoints.get(name)

    def policy(self, endpoint: str) -> TrafficPolicy | None:
        """The traffic policy of an endpoint with versions."""
        return self.table().traffic.get(endpoint)

    def names(self) -> list[str]:
        """Every route's name, sorted."""
        return sorted(self.table().endpoints)
