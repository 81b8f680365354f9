"""The audit trail: who changed what, when, with which arguments, and how it ended.

Every call of an admin route that changes state (:attr:`.gateway.api_table.Route.changes`)
becomes one :class:`AdminCall` record; refused attempts (a missing or wrong token) become
one :class:`Refusals` record per source address and minute, so a flood of bad tokens
costs a few lines, not one a request.

Storage is ``audit.jsonl`` in the cache folder, one JSON object a line, appended and
never rewritten: an operator rotates it (``logrotate`` with ``copytruncate``) or ships
it. Each gateway front process writes its own records with one ``write`` of one line on
a file opened ``O_APPEND`` (0600, never through a link). On Linux such a write to a
local file is never interleaved with another process's, so lines stay whole without a
lock; a record is kept under :data:`MAX_RECORD` bytes to make it one write. A line torn
by a crash is ended before the next record, and skipped on reading. The manager
reads the newest records for ``/history``.

A record that cannot be written (a full disk) is logged instead, whole: the action it
records has already happened, and the log is the other trail an operator keeps.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypedDict

from .privfiles import FILE_MODE
from .redact import MASK, mask_text

log = logging.getLogger(__name__)

AUDIT_FILE = "audit.jsonl"
# One line, one write(): far above any real admin call's arguments once bounded below.
MAX_RECORD = 16 * 1024
# Bounds of the arguments kept: a 1 MiB body must not become a 1 MiB line.
MAX_TEXT = 256
MAX_ITEMS = 50
MAX_DEPTH = 6
# Refused attempts: one record per address and window; past this many addresses in one
# window the rest are counted under OTHER_ADDRESSES.
REFUSAL_WINDOW_S = 60
MAX_ADDRESSES = 100
OTHER_ADDRESSES = "other"
# Reading the newest records for /history: at most this much of the file's end.
TAIL_BYTES = 1024 * 1024

# An argument named like a secret is masked whatever its value (KEY_ID and TENANT are
# names, not secrets; a URL's password is masked wherever it appears).
_SECRET_NAME = re.compile(
    r"(TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTHORIZATION|PRIVATE|(^|_)KEY$|^API_?KEY)",
    re.IGNORECASE)


class Actor(TypedDict):
    """Who made an admin call: the credential's kind and a short, one-way id of it."""

    credential: Literal["admin_token", "none"]  # none: INSECURE_NO_ADMIN_AUTH
    token_id: str | None  # the first 12 hex digits of the token's SHA-256
    address: str


class AdminCall(TypedDict):
    """One admin call that changes state."""

    ts: float
    kind: Literal["admin_call"]
    who: Actor
    method: str
    path: str
    args: Any  # the JSON body or query, secrets masked, bounded
    status: int
    error_type: str | None
    request_id: str | None


class RefusedAttempts(TypedDict):
    """Refused attempts from one address within one window."""

    ts: float  # the window's start
    kind: Literal["admin_refused"]
    address: str
    window_s: int
    count: int
    paths: list[str]  # the first few distinct paths tried


def token_id(token: str) -> str:
    """A short id of a token that tells tokens apart and reveals nothing of them."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:12]


def mask_args(value: Any, depth: int = 0) -> Any:
    """``value`` with secrets masked and sizes bounded: strings to :data:`MAX_TEXT`
    characters, lists and objects to :data:`MAX_ITEMS` entries, :data:`MAX_DEPTH` levels."""
    if isinstance(value, str):
        text = mask_text(value)
        return text if len(text) <= MAX_TEXT else f"{text[:MAX_TEXT]}...({len(text)} chars)"
    if depth >= MAX_DEPTH and isinstance(value, (dict, list)):
        return "..."
    if isinstance(value, dict):
        out = {}
        for i, (key, item) in enumerate(value.items()):
            if i == MAX_ITEMS:
                out["..."] = f"{len(value) - MAX_ITEMS} more"
                break
            name = mask_args(str(key), depth)
            out[name] = MASK if _SECRET_NAME.search(str(key)) else mask_args(item, depth + 1)
        return out
    if isinstance(value, list):
        items = [mask_args(item, depth + 1) for item in value[:MAX_ITEMS]]
        return items + ([f"...{len(value) - MAX_ITEMS} more"] if len(value) > MAX_ITEMS else [])
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return mask_args(str(value), depth)


class AuditLog:
    """The append-only ``audit.jsonl`` of a cache folder."""

    def __init__(self, folder: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(folder) / AUDIT_FILE
        self.clock = clock
        self._failing = False

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one record as one line (one ``write``); log it if that fails."""
        line = json.dumps(record, separators=(",", ":"), default=str)
        if len(line) >= MAX_RECORD:
            line = json.dumps({**record, "args": {"...": f"{len(line)} bytes, not kept"}},
                              separators=(",", ":"), default=str)
        data = (line + "\n").encode("utf-8")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                         | os.O_CLOEXEC, FILE_MODE)
            try:
                # A line torn by a crash mid-write must not swallow this one: end it first.
                # (A write of another process under way may read as unended too: the
                # cost is an empty line, skipped on reading.)
                end = os.fstat(fd).st_size
                if end and os.pread(fd, 1, end - 1) != b"\n":
                    data = b"\n" + data
                written = os.write(fd, data)
            finally:
                os.close(fd)
            if written != len(data):
                raise OSError(f"short write: {written} of {len(data)} bytes")
        except OSError as exc:
            log.warning("audit trail %s: cannot write (%s); the record: %s", self.path, exc, line)
            self._failing = True
            return
        if self._failing:
            log.info("audit trail %s: writing again", self.path)
            self._failing = False

    def admin_call(self, who: Actor, method: str, path: str, args: Any, status: int,
                   error_type: str | None, request_id: str | None) -> AdminCall:
        """Record one admin call that changes state; returns the record."""
        record: AdminCall = {"ts": self.clock(), "kind": "admin_call", "who": who,
                             "method": method, "path": path, "args": mask_args(args),
                             "status": status, "error_type": error_type,
                             "request_id": request_id}
        self.append(record)
        return record

    def newest(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` records, oldest first (damaged lines skipped)."""
        if limit <= 0:
            return []
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return []
        with os.fdopen(fd, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - TAIL_BYTES)
            f.seek(start)
            data = f.read()
        lines = data.split(b"\n")
        if start > 0:
            lines = lines[1:]  # the first is cut at the seek
        records: list[dict[str, Any]] = []
        for line in reversed(lines):
            if len(records) == limit:
                break
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        records.reverse()
        return records


class Refusals:
    """Refused admin attempts of one process, counted per address and window, and
    written when the window is over (:meth:`flush`, called every second and at exit)."""

    def __init__(self, audit: AuditLog, window_s: int = REFUSAL_WINDOW_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.audit = audit
        self.window_s = window_s
        self.clock = clock
        self._lock = threading.Lock()  # the front's management threads count here
        self._window: int | None = None
        self._counts: dict[str, RefusedAttempts] = {}

    def count(self, address: str, path: str) -> None:
        """Count one refused attempt from ``address`` on ``path``."""
        now = self.clock()
        with self._lock:
            window = int(now // self.window_s)
            if window != self._window:
                self._write(self._take())
                self._window = window
            if address not in self._counts and len(self._counts) >= MAX_ADDRESSES:
                address = OTHER_ADDRESSES
            entry = self._counts.get(address)
            if entry is None:
                entry = self._counts[address] = {
                    "ts": float(window * self.window_s), "kind": "admin_refused",
                    "address": address, "window_s": self.window_s, "count": 0, "paths": []}
            entry["count"] += 1
            if path not in entry["paths"] and len(entry["paths"]) < 5:
                entry["paths"].append(path[:MAX_TEXT])

    def flush(self, final: bool = False) -> None:
        """Write the counts of a window that is over (of the current one too if ``final``)."""
        with self._lock:
            over = self._window is not None and int(self.clock() // self.window_s) != self._window
            records = self._take() if over or final else []
        self._write(records)

    def _take(self) -> list[RefusedAttempts]:
        records = list(self._counts.values())
        self._counts = {}
        return records

    def _write(self, records: list[RefusedAttempts]) -> None:
        for record in records:
            self.audit.append(record)
