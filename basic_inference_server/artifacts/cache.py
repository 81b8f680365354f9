"""The box's model cache: one download per version, verified before use, bounded.

``<cache>/models/<model>/<version>/`` holds a downloaded version and its manifest. The
cache rules of the rest of ``_cache/`` hold: 0700 folders, 0600 files, nothing opened
through a link. Two lock files per version, beside its folder:

* ``.<version>.download``: held (exclusive) while a process checks for the version and
  downloads it. However many workers of however many endpoints start together, one
  downloads; the others wait, then find it in place. A download goes to a temporary
  folder, is verified as it arrives, and is renamed into place whole.
* ``.<version>.use``: held (shared) by every process that uses the version, for its
  life. Eviction takes it exclusively without waiting, so a version in use is never
  deleted, and a process that died holds nothing (the kernel drops its locks).

Before each use the files are verified against the manifest (a byte changed in the cache
is caught as one changed in the repository is); a download is verified as it arrives,
so the process that downloaded uses it without reading it twice. When the cache holds more than its
bound, the versions no process uses are deleted, least recently used first.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..privfiles import DIR_MODE, FILE_MODE, private_dir
from .manifest import MANIFEST, FileEntry, ModelRef, parse_manifest, verify
from .repository import Repository


def _lock_fd(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)


@contextmanager
def _locked(path: Path, mode: int) -> Iterator[bool]:
    """Hold ``flock(mode)`` on ``path``; yields False when ``LOCK_NB`` could not."""
    fd = _lock_fd(path)
    try:
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # drops the lock


def _size(folder: Path) -> int:
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file())


class ArtifactCache:
    """Model versions of one repository, as this box's processes use them."""

    def __init__(self, repository: Repository, folder: str | Path, limit_bytes: int) -> None:
        self.repository = repository
        self.folder = Path(folder)
        self.limit = limit_bytes
        self._held: dict[ModelRef, int] = {}  # use locks of this process, kept for its life

    def path(self, ref: ModelRef) -> Path:
        """Where ``ref``'s files are read from, verified now (ModelIntegrityError else).

        A local repository is read in place; an S3 one is downloaded into the cache
        first (once per box) and held in use by this process from then on.
        """
        local = self.repository.local_folder(ref)
        if local is not None:
            verify(local, parse_manifest(self.repository.manifest(ref), ref), ref)
            return local
        home = private_dir(private_dir(self.folder) / ref.name)
        version = home / ref.version
        downloaded = False
        with _locked(home / f".{ref.version}.download", fcntl.LOCK_EX):
            if not version.is_dir():
                self._download(ref, home, version)
                downloaded = True
            self._hold(ref, home)
        if not downloaded:  # a fresh download was verified as it arrived
            with open(version / MANIFEST, "rb") as fh:
                files = parse_manifest(fh.read(), ref)
            verify(version, files, ref)
        os.utime(version)  # its last use, for eviction
        self.evict(keep=ref)
        return version

    def _hold(self, ref: ModelRef, home: Path) -> None:
        if ref in self._held:
            return
        fd = _lock_fd(home / f".{ref.version}.use")
        fcntl.flock(fd, fcntl.LOCK_SH)
        self._held[ref] = fd

    def _download(self, ref: ModelRef, home: Path, version: Path) -> None:
        """Every file of ``ref`` into a new folder, verified, then renamed into place."""
        raw = self.repository.manifest(ref)
        files = parse_manifest(raw, ref)
        tmp = home / f".tmp-{ref.version}-{os.getpid()}-{time.monotonic_ns()}"
        os.mkdir(tmp, DIR_MODE)
        try:
            for entry in files:
                self._fetch(ref, entry, tmp)
            fd = os.open(tmp / MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                         FILE_MODE)
            with os.fdopen(fd, "wb") as fh:
                fh.write(raw)
            os.rename(tmp, version)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _fetch(self, ref: ModelRef, entry: FileEntry, tmp: Path) -> None:
        target = tmp / entry.path
        parent = tmp
        for part in Path(entry.path).parts[:-1]:  # checked: no "..", no absolute path
            parent = parent / part
            if not parent.is_dir():
                os.mkdir(parent, DIR_MODE)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        with os.fdopen(fd, "wb") as out:
            self.repository.fetch(ref, entry, out)

    def versions(self) -> list[tuple[ModelRef, Path]]:
        """Every version in the cache."""
        if not self.folder.is_dir():
            return []
        return [(ModelRef(m.name, v.name), v)
                for m in sorted(self.folder.iterdir()) if m.is_dir() and not m.is_symlink()
                for v in sorted(m.iterdir())
                if v.is_dir() and not v.is_symlink() and not v.name.startswith(".")]

    def evict(self, keep: ModelRef | None = None) -> list[ModelRef]:
        """Delete versions no process uses, least recently used first, while the cache
        holds more than its bound; returns those deleted."""
        found = [(v.stat().st_mtime, ref, v, _size(v)) for ref, v in self.versions()]
        total = sum(size for *_, size in found)
        deleted = []
        for _, ref, version, size in sorted(found, key=lambda f: f[0]):
            if total <= self.limit:
                break
            if ref == keep or ref in self._held:
                continue
            home = version.parent
            with _locked(home / f".{ref.version}.download", fcntl.LOCK_EX | fcntl.LOCK_NB) as free, \
                    _locked(home / f".{ref.version}.use", fcntl.LOCK_EX | fcntl.LOCK_NB) as unused:
                if free and unused:
                    shutil.rmtree(version)
                    total -= size
                    deleted.append(ref)
        return deleted

    def listing(self) -> list[dict[str, Any]]:
        """What ``/models`` shows of the cache: each version, its size, last use, and
        whether a process uses it now."""
        out = []
        for ref, version in self.versions():
            with _locked(version.parent / f".{ref.version}.use",
                         fcntl.LOCK_EX | fcntl.LOCK_NB) as unused:
                in_use = not unused or ref in self._held
            with open(version / MANIFEST, "rb") as fh:
                files = json.loads(fh.read()).get("files", {})
            out.append({"model": ref.name, "version": ref.version, "bytes": _size(version),
                        "files": len(files), "last_used": version.stat().st_mtime,
                        "in_use": in_use})
        return out
