"""A rolling window of health samples and events, kept on disk across restarts.

Storage is two JSON-lines files in the folder (``_cache/`` by default, the persistent
volume): ``health_samples.jsonl`` and ``health_events.jsonl``, one JSON object a line.
JSON lines rather than SQLite (which DESIGN.md suggests for state that outlives the
process) because here:

- adding a record is one append of one line: no transaction, no journal, no fsync;
  losing the last few samples to a power cut is fine for a health history;
- damage stays local: a line torn by a crash mid-write, or garbage, costs that record
  alone and is skipped on reading, where a damaged SQLite file is lost whole;
- an operator reads the files with ``tail`` and ``jq`` on the box being debugged.

Each file is bounded: the last N records are held in memory; the file may grow to 2N
lines and is then rewritten with the last N (a temporary file, then an atomic rename),
so an append costs O(1) amortised. A file found damaged is rewritten clean on the next
write. A write that fails (disk full, the very moment alerts fire) is logged once and
the history goes on in memory. One writer per folder (the manager); other processes
may read the files.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..privfiles import open_private

log = logging.getLogger(__name__)

DEFAULT_FOLDER = "_cache"
SAMPLES_FILE = "health_samples.jsonl"
EVENTS_FILE = "health_events.jsonl"


class _JsonLines:
    """One bounded JSON-lines file and its in-memory tail (kept as encoded lines)."""

    def __init__(self, path: Path, max_records: int) -> None:
        if max_records < 1:
            raise ValueError(f"{path.name}: the history must keep at least 1 record, got {max_records}")
        self.path = path
        self.max_records = max_records
        self._lines: deque[str] = deque(maxlen=max_records)
        self._file_lines = 0
        self._needs_rewrite = False
        self._write_failing = False
        self._load()

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("health history %s unreadable, starting empty: %s", self.path, exc)
            self._needs_rewrite = True
            return
        # errors="replace": a stray bad byte spoils one line, not the decoding of the file.
        text = data.decode("utf-8", errors="replace")
        bad = 0
        for line in text.split("\n"):
            if not line.strip():
                continue
            self._file_lines += 1
            try:
                record = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if not isinstance(record, dict):
                bad += 1
                continue
            self._lines.append(line)
        # A last line without its newline would swallow the next append.
        self._needs_rewrite = bad > 0 or (bool(text) and not text.endswith("\n"))
        if bad:
            log.warning("health history %s: skipped %d damaged line(s)", self.path, bad)

    def append(self, record: Mapping[str, Any]) -> None:
        # default=str: an odd value (a Path, an exception) is stored as text rather than
        # losing the record or raising into the supervisor.
        line = json.dumps(record, separators=(",", ":"), default=str)
        self._lines.append(line)
        try:
            if self._needs_rewrite or self._file_lines >= 2 * self.max_records:
                self._rewrite()
            else:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                with open_private(self.path, "a") as f:
                    f.write(line + "\n")
                self._file_lines += 1
        except OSError as exc:
            # A half-written line may be on disk: the next successful write rewrites.
            self._needs_rewrite = True
            if not self._write_failing:
                log.warning("health history %s: cannot write, keeping it in memory: %s", self.path, exc)
            self._write_failing = True
            return
        if self._write_failing:
            log.info("health history %s: writing again", self.path)
            self._write_failing = False

    def _rewrite(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open_private(tmp, "w") as f:
            f.writelines(line + "\n" for line in self._lines)
            f.flush()
            # Rare (once per N appends), and without it a crash could leave the renamed
            # file empty on some filesystems.
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._file_lines = len(self._lines)
        self._needs_rewrite = False

    def records(self, limit: int | None) -> list[dict[str, Any]]:
        lines = list(self._lines)
        if limit is not None:
            lines = lines[-limit:] if limit > 0 else []
        return [json.loads(line) for line in lines]


class History:
    """Last ``max_samples`` samples and last ``max_events`` events, persisted under ``folder``.

    Every record gets ``ts`` (seconds since the epoch, from ``clock``) unless it brings
    its own. Reading returns fresh dicts, oldest first. Thread-safe.
    """

    def __init__(self, folder: str | Path = DEFAULT_FOLDER, max_samples: int = 1440,
                 max_events: int = 1000, clock: Callable[[], float] = time.time) -> None:
        self.folder = Path(folder)
        self.clock = clock
        self._lock = threading.Lock()
        self._samples = _JsonLines(self.folder / SAMPLES_FILE, max_samples)
        self._events = _JsonLines(self.folder / EVENTS_FILE, max_events)

    def add_sample(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """Append one sample (any JSON-able dict); returns the record as stored."""
        record = {"ts": self.clock(), **sample}
        with self._lock:
            self._samples.append(record)
        return record

    def add_event(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Append one event, e.g. ``add_event("server_restart", endpoint="a", reason="exit 1")``."""
        if not kind:
            raise ValueError("an event needs a kind")
        record = {"ts": self.clock(), "kind": kind, **fields}
        with self._lock:
            self._events.append(record)
        return record

    def samples(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The kept samples, oldest first; the last ``limit`` of them when given."""
        with self._lock:
            return self._samples.records(limit)

    def events(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The kept events, oldest first; the last ``limit`` of them when given."""
        with self._lock:
            return self._events.records(limit)
