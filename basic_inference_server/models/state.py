"""Where the model manager keeps its shared records: one interface, two backends.

A record per model (the ``model_info_{name}`` of the design): ``path``, ``last_used``
(seconds since the epoch), ``ref_count`` (live references over every holder), ``hits``
(acquisitions), ``loads``, ``size_bytes`` (measured at the last load) and ``copies``
(which host and process hold a loaded copy, on which device).

Every reference belongs to an owner (``host:pid``). :class:`LocalState` keeps the
records in this process (the embedded default: each worker process manages its own
models). :class:`~basic_inference_server.models.redis_state.RedisState` shares them
across processes, servers and hosts, with leases so that a crashed owner frees its
references.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from typing import Any, Protocol


def default_owner() -> str:
    """``host:pid`` of this process: the owner of the references it takes."""
    return f"{socket.gethostname()}:{os.getpid()}"


class ModelState(Protocol):
    """Shared model records; every method is safe to call from several threads."""

    owner: str

    def acquire(self, name: str, path: str) -> str:
        """Count one reference to ``name`` for this owner, stamp ``last_used``; returns its id."""
        ...

    def release(self, name: str, ref: str) -> None:
        """Drop the reference ``ref`` (a no-op when it already expired)."""
        ...

    def add_copy(self, name: str, path: str, size_bytes: int, device: str) -> None:
        """Record that this owner now holds a loaded copy of ``name``."""
        ...

    def remove_copy(self, name: str) -> bool:
        """Forget this owner's copy, unless it still holds references (then False)."""
        ...

    def size_hint(self, name: str) -> int | None:
        """``size_bytes`` measured by the last load of ``name`` anywhere, if known."""
        ...

    def usage(self) -> dict[str, dict[str, Any]]:
        """Every model's record (see the module docstring)."""
        ...

    def close(self) -> None:
        """Stop background work; references still held are left to expire."""
        ...


class LocalState:
    """:class:`ModelState` in this process's memory (no external service)."""

    def __init__(self, owner: str | None = None) -> None:
        self.owner = owner or default_owner()
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, Any]] = {}
        self._refs: dict[str, str] = {}  # ref id -> model name
        self._ids = itertools.count(1)
        self._sizes: dict[str, int] = {}

    def _record(self, name: str, path: str) -> dict[str, Any]:
        rec = self._records.get(name)
        if rec is None:
            rec = self._records[name] = {"path": path, "last_used": 0.0, "ref_count": 0, "hits": 0,
                                         "loads": 0, "size_bytes": None, "copies": []}
        return rec

    def acquire(self, name: str, path: str) -> str:
        """Hold model ``name``; returns the reference that releases it."""
        with self._lock:
            rec = self._record(name, path)
            rec["ref_count"] += 1
            rec["hits"] += 1
            rec["last_used"] = time.time()
            ref = f"{self.owner}|{next(self._ids)}"
            self._refs[ref] = name
            return ref

    def release(self, name: str, ref: str) -> None:
        """Let go of the hold ``ref`` on model ``name``."""
        with self._lock:
            if self._refs.pop(ref, None) is None:
                return
            rec = self._records.get(name)
            if rec is not None:
                rec["ref_count"] -= 1
                self._drop_if_idle(name, rec)

    def add_copy(self, name: str, path: str, size_bytes: int, device: str) -> None:
        """Record that this process holds a loaded copy of model ``name``."""
        host, _, pid = self.owner.rpartition(":")
        with self._lock:
            rec = self._record(name, path)
            rec["copies"] = [c for c in rec["copies"] if c["owner"] != self.owner]
            rec["copies"].append({"owner": self.owner, "host": host, "pid": int(pid),
                                  "device": device, "loaded_at": time.time()})
            rec.update(path=path, size_bytes=size_bytes, last_used=time.time())
            rec["loads"] += 1
            self._sizes[name] = size_bytes

    def remove_copy(self, name: str) -> bool:
        """Forget this process's copy of ``name``; False while a request holds it."""
        with self._lock:
            if any(n == name for n in self._refs.values()):
                return False
            rec = self._records.get(name)
            if rec is not None:
                rec["copies"] = [c for c in rec["copies"] if c["owner"] != self.owner]
                self._drop_if_idle(name, rec)
            return True

    def _drop_if_idle(self, name: str, rec: dict[str, Any]) -> None:
        if rec["ref_count"] <= 0 and not rec["copies"]:
            del self._records[name]

    def size_hint(self, name: str) -> int | None:
        """The model's last recorded size in bytes (None: never loaded)."""
        return self._sizes.get(name)

    def usage(self) -> dict[str, dict[str, Any]]:
        """Every model's record: holds, copies, sizes."""
        with self._lock:
            return {name: {**rec, "copies": [dict(c) for c in rec["copies"]]}
                    for name, rec in self._records.items()}

    def close(self) -> None:
        """Nothing runs in the background."""
