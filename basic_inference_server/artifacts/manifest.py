"""A model version's manifest: its files, each with its size and sha256.

``<repository>/<model>/<version>/manifest.json``::

    {"files": {"config.json": {"size": 612, "sha256": "9f86d0..."},
               "weights/model.safetensors": {"size": 90868376, "sha256": "2c26b4..."}}}

A manifest comes from a repository that may be shared with others: its names and paths
are checked before any of them is used (no absolute path, no ``..``, no control
character, bounded counts and lengths), so a hostile one cannot write outside the
cache.
"""

from __future__ import annotations

import hashlib
import json
import queue
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_FILES = 10_000
MAX_PATH = 1024
CHUNK = 1024 * 1024
# A model or version name: what a folder and an S3 key part may safely be.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


# The word a failed load starts with (its last_error, its history event, its
# notification): a load failure, never an HTTP answer's ERROR_TYPE.
INTEGRITY = "model_integrity"


class ModelIntegrityError(Exception):
    """An artifact missing, of the wrong size, or whose sha256 is not its manifest's."""

    def __init__(self, message: str) -> None:
        super().__init__(f"{INTEGRITY}: {message}")


class ModelRefError(ValueError):
    """A ``MODEL`` setting or a manifest that cannot be used as written."""


@dataclass(frozen=True)
class ModelRef:
    """``<name>/<version>``, as an endpoint's ``MODEL`` names it."""

    name: str
    version: str

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """``"minilm/2"`` -> ModelRef("minilm", "2"); ModelRefError for anything else."""
        name, _, version = text.partition("/")
        if not (NAME.fullmatch(name) and NAME.fullmatch(version)):
            raise ModelRefError(f"{text[:300]!r} is not <model>/<version> (each part: letters, "
                                f"digits, '.', '_' or '-', at most 128)")
        return cls(name, version)

    def __str__(self) -> str:
        return f"{self.name}/{self.version}"


@dataclass(frozen=True)
class FileEntry:
    """One file of a version: where it goes, its size and its sha256 (hex)."""

    path: str
    size: int
    sha256: str


def safe_path(text: Any) -> str:
    """A manifest's file path, checked: relative, no ``..``, no control character."""
    if not isinstance(text, str) or not 0 < len(text) <= MAX_PATH:
        raise ModelRefError(f"a file path must be a string of 1 to {MAX_PATH} characters")
    path = PurePosixPath(text)
    if path.is_absolute() or any(p in ("", ".", "..") for p in text.split("/")) \
            or any(ord(c) < 32 or c == "\\" for c in text) or path.name == MANIFEST:
        raise ModelRefError(f"unsafe file path in the manifest: {text[:200]!r}")
    return text


def parse_manifest(raw: bytes, ref: ModelRef) -> list[FileEntry]:
    """The files of ``ref``'s manifest (ModelRefError when it is malformed)."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ModelRefError(f"{ref}: the manifest is over {MAX_MANIFEST_BYTES} bytes")
    try:
        files = json.loads(raw)["files"]
    except (ValueError, KeyError, TypeError):
        raise ModelRefError(f"{ref}: the manifest is not JSON with a \"files\" object") from None
    if not isinstance(files, dict) or not 0 < len(files) <= MAX_FILES:
        raise ModelRefError(f"{ref}: the manifest must list 1 to {MAX_FILES} files")
    out = []
    for path, meta in files.items():
        size, digest = (meta.get("size"), meta.get("sha256")) if isinstance(meta, dict) else (None, None)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0 \
                or not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise ModelRefError(f"{ref}: {str(path)[:200]!r} needs a size and a sha256 (64 hex)")
        out.append(FileEntry(safe_path(path), size, digest))
    return out


def sha256_of(path: Path) -> str:
    """The sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(folder: Path, files: list[FileEntry], ref: ModelRef) -> None:
    """Every file of ``files`` under ``folder`` has its size and sha256; else
    ModelIntegrityError naming the first that does not."""
    for entry in files:
        path = folder / entry.path
        try:
            size = path.lstat().st_size
        except FileNotFoundError:
            raise ModelIntegrityError(f"{ref}: {entry.path} is missing") from None
        if size != entry.size:
            raise ModelIntegrityError(f"{ref}: {entry.path} has {size} bytes, the manifest "
                                      f"says {entry.size}")
        digest = sha256_of(path)
        if digest != entry.sha256:
            raise ModelIntegrityError(f"{ref}: {entry.path} has sha256 {digest}, the manifest "
                                      f"says {entry.sha256}")


class _Hasher(threading.Thread):
    """sha256 of the chunks put in its queue, computed in a thread of its own: hashlib
    releases the GIL on large buffers, so a download is hashed while the next chunk is
    read from the network and the last one written, instead of after each."""

    def __init__(self) -> None:
        super().__init__(name="bis-sha256", daemon=True)
        self.digest = hashlib.sha256()
        self.chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=8)

    def run(self) -> None:
        while (chunk := self.chunks.get()) is not None:
            self.digest.update(chunk)

    def hexdigest(self) -> str:
        """The sum of every chunk put, once they are all hashed."""
        self.chunks.put(None)
        self.join()
        return self.digest.hexdigest()


def copy_hashed(source: Iterator[bytes], out: BinaryIO, entry: FileEntry, ref: ModelRef) -> None:
    """Write ``source``'s chunks to ``out`` while hashing them: a download is verified
    as it arrives (ModelIntegrityError on a size or sha256 that is not the manifest's)."""
    hasher, size = _Hasher(), 0
    hasher.start()
    try:
        for chunk in source:
            size += len(chunk)
            if size > entry.size:
                raise ModelIntegrityError(f"{ref}: {entry.path} is longer than the manifest's "
                                          f"{entry.size} bytes")
            hasher.chunks.put(chunk)
            out.write(chunk)
    finally:
        digest = hasher.hexdigest()
    if size != entry.size or digest != entry.sha256:
        raise ModelIntegrityError(f"{ref}: {entry.path} downloaded with {size} bytes and sha256 "
                                  f"{digest}; the manifest says {entry.size} "
                                  f"bytes, {entry.sha256}")


def make_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of every file under ``folder`` (for publishing a version)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    return {"files": {p.relative_to(folder).as_posix(): {"size": p.stat().st_size,
                                                         "sha256": sha256_of(p)}
                      for p in files}}
