"""The front's view of the route table the manager publishes."""

from __future__ import annotations

import json
import os
from typing import Any


class RouteTable:
    """Reads the manager's route file again whenever it changes (one ``stat`` per lookup)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp = -1
        self._table: dict[str, Any] = {"endpoints": {}, "no_startup_wait": True}

    def table(self) -> dict[str, Any]:
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

    def get(self, name: str) -> dict[str, Any] | None:
        route: dict[str, Any] | None = self.table()["endpoints"].get(name)
        return route

    def names(self) -> list[str]:
        return sorted(self.table()["endpoints"])
