"""The front's view of the route table the manager publishes."""

from __future__ import annotations

import json
import os
import time
from typing import Any

# How stale the front's view may be. A server that died meanwhile is still caught at
# once (its socket refuses the connection); only 503 texts may lag this much.
CHECK_EVERY = 0.05


class RouteTable:
    """Reads the manager's route file again when it changes (checked every 50 ms at most)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp = -1
        self._checked = 0.0
        self._table: dict[str, Any] = {"endpoints": {}, "no_startup_wait": True}

    def table(self, fresh: bool = False) -> dict[str, Any]:
        now = time.monotonic()
        if not fresh and now - self._checked < CHECK_EVERY:
            return self._table
        self._checked = now
        try:
            stamp = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            return self._table
        if stamp != self._stamp:
            try:
                with open(self.path, encoding="utf-8") as fh:
                    self._table = json.load(fh)
                self._stamp = stamp
            except (OSError, ValueError):
                # Caught mid-replace on an exotic filesystem: keep the last good table.
                pass
        return self._table

    def get(self, name: str, fresh: bool = False) -> dict[str, Any] | None:
        route: dict[str, Any] | None = self.table(fresh)["endpoints"].get(name)
        return route

    def names(self) -> list[str]:
        return sorted(self.table()["endpoints"])
