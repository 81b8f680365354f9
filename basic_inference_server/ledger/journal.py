"""The local journal of metered requests: what the ledger ships to PostgreSQL.

Each writing process has its own segment file, ``<pid>-<time_ns>.jsonl`` in
``<cache>/ledger/``, so no two processes write to one file and no lock is taken on the
request path. An entry is one line of tab-separated fields, written with one ``write`` on a
file opened ``O_APPEND`` before the request's answer goes out: once the answer is on
its way, the entry is in the kernel's page cache and survives the process being
killed (SIGKILL, OOM). It does not survive the machine itself crashing: entries are
not fsynced (an fsync per request would cost more than the request), and the ledger
says so (docs/ledger.md).

A writer holds an exclusive ``flock`` on its segment for its life; the kernel drops it
when the process ends, however it ends, so the shipper tells a finished segment (one
it can lock) from a live one without trusting process ids, which are reused. A writer
rolls to a new segment past :data:`ROLL_BYTES`, so shipped segments can be deleted.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path
from typing import NamedTuple

from ..privfiles import FILE_MODE, private_dir

log = logging.getLogger(__name__)

LEDGER_DIR = "ledger"
SUFFIX = ".jsonl"
ROLL_BYTES = 8 * 1024 * 1024
# Longest names kept: tenants and endpoints are names an admin chose, bounded far below.
MAX_NAME = 256


class Entry(NamedTuple):
    """One metered request or job run."""

    tenant: str
    endpoint: str
    status: int
    units: float
    latency: float
    ts: float  # when it was metered (UTC seconds): which day it counts in


def journal_dir(cache_dir: str | Path) -> Path:
    """The journal folder of a cache folder."""
    return Path(cache_dir) / LEDGER_DIR


def encode(entry: Entry) -> bytes:
    """One entry as its journal line: tab-separated fields, floats as ``repr`` (exact).

    Not JSON: this runs on every request, and formatting these six fields by hand costs
    a fraction of ``json.dumps`` (bench/bench_tenants.py, ``journal``). Tenants and
    endpoints are validated names; a tab or a line break in one is replaced anyway, so a
    line always holds six fields.
    """
    tenant, endpoint = _field(entry.tenant), _field(entry.endpoint)
    return (f"{tenant}\t{endpoint}\t{entry.status:d}\t{entry.units!r}\t{entry.latency!r}\t"
            f"{entry.ts!r}\n").encode()


def _field(name: str) -> str:
    return name.replace("\t", " ").replace("\n", " ").replace("\r", " ")


def parse(line: bytes) -> Entry | None:
    """An entry from its line; None for a damaged one (a torn write is skipped)."""
    parts = line.rstrip(b"\n").split(b"\t")
    if len(parts) != 6:
        return None
    try:
        return Entry(parts[0].decode("utf-8"), parts[1].decode("utf-8"), int(parts[2]),
                     float(parts[3]), float(parts[4]), float(parts[5]))
    except ValueError:  # UnicodeDecodeError included
        return None


class Journal:
    """One process's journal segments (opened lazily, so a forked child opens its own)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._fd: int | None = None
        self._pid = -1
        self._size = 0
        self._failing = False

    def _open(self) -> int:
        private_dir(self.folder)
        name = f"{os.getpid()}-{time.time_ns()}{SUFFIX}"
        fd = os.open(self.folder / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL
                     | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._fd, self._pid, self._size = fd, os.getpid(), 0
        return fd

    def append(self, entry: Entry) -> None:
        """Journal one entry (one ``write``); log it when that fails (a full disk)."""
        data = encode(entry)
        try:
            fd = self._fd if self._fd is not None and self._pid == os.getpid() else self._open()
            written = os.write(fd, data)
            if written != len(data):
                self.close()  # the next entry starts a segment of its own, on a line of its own
                raise OSError(f"short write: {written} of {len(data)} bytes")
            self._size += written
            if self._size >= ROLL_BYTES:
                self.close()
        except OSError as exc:
            log.warning("usage journal %s: cannot write (%s); the entry: %s", self.folder, exc,
                        data.decode().strip())
            self._failing = True
            return
        if self._failing:
            log.info("usage journal %s: writing again", self.folder)
            self._failing = False

    def record(self, tenant: str, endpoint: str, status: int, units: float,
               latency: float) -> None:
        """Journal one request or job run, metered now."""
        self.append(Entry(tenant[:MAX_NAME], endpoint[:MAX_NAME], status, units, latency,
                          time.time()))

    def close(self) -> None:
        """End the current segment (its lock goes with the descriptor)."""
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None


def finished(path: Path) -> bool:
    """Whether no process writes to ``path`` any more (its writer closed it or died)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def segments(folder: Path) -> list[Path]:
    """The journal's segments, oldest first per writer."""
    try:
        return sorted(p for p in folder.iterdir() if p.name.endswith(SUFFIX) and p.is_file())
    except FileNotFoundError:
        return []
