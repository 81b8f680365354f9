"""Where model versions live: a folder (a path or ``file://``) or an S3-compatible store.

``MODEL_REPOSITORY``:

* ``/srv/models`` or ``file:///srv/models``: read in place (each start verifies the
  files against the manifest);
* ``s3://bucket/prefix``: any S3-compatible store through boto3. Options:
  ``?endpoint_url=http://host:port`` (MinIO, moto, ...) and ``&region=``; credentials
  from ``s3://KEY_ID:SECRET@bucket/...`` or the usual boto3 chain (environment,
  profile, instance role). Keep them out of the configuration file with an
  ``env:VAR`` or ``file:PATH`` reference to the whole URL.

A version is ``<root>/<model>/<version>/``: its ``manifest.json`` (see
:mod:`.manifest`) and the files it lists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import unquote, urlsplit

from ..queues.base import url_options
from .manifest import (
    CHUNK,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    FileEntry,
    ModelIntegrityError,
    ModelRef,
    copy_hashed,
)

SCHEMES = ("s3", "file", "path")


class Repository(Protocol):
    """A store of model versions."""

    def manifest(self, ref: ModelRef) -> bytes:
        """The raw manifest of ``ref`` (ModelIntegrityError when there is none)."""

    def local_folder(self, ref: ModelRef) -> Path | None:
        """The folder the files of ``ref`` are read from in place; None: downloaded."""

    def fetch(self, ref: ModelRef, entry: FileEntry, out: BinaryIO) -> None:
        """Write one file of ``ref`` to ``out``, verified as it arrives."""


def scheme_of(url: str) -> str:
    """``s3``, ``file`` or ``path`` (a plain path); what else a URL names is returned as is."""
    scheme = urlsplit(url).scheme
    return scheme if scheme else "path"


def check_repository_url(url: str) -> str | None:
    """Settings-table check of ``MODEL_REPOSITORY``."""
    parts = urlsplit(url)
    scheme = scheme_of(url)
    if scheme not in SCHEMES:
        return "must be a folder (a path or file:///path) or s3://bucket[/prefix]"
    if scheme == "s3" and not parts.hostname:
        return "an s3:// URL names its bucket: s3://bucket[/prefix]"
    return None


class LocalRepository:
    """Versions in a folder, read in place."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, ref: ModelRef) -> Path:
        """``<root>/<model>/<version>``."""
        return self.root / ref.name / ref.version

    def local_folder(self, ref: ModelRef) -> Path | None:
        """The version's folder: read in place."""
        return self.folder(ref)

    def manifest(self, ref: ModelRef) -> bytes:
        """The manifest file's bytes (bounded)."""
        try:
            with open(self.folder(ref) / MANIFEST, "rb") as fh:
                return fh.read(MAX_MANIFEST_BYTES + 1)
        except FileNotFoundError:
            raise ModelIntegrityError(f"{ref}: no {MANIFEST} in {self.folder(ref)}") from None

    def fetch(self, ref: ModelRef, entry: FileEntry, out: BinaryIO) -> None:
        """Not used: the files are read in place."""
        raise NotImplementedError("a local repository is read in place")


class S3Repository:
    """Versions in an S3-compatible bucket, under an optional prefix."""

    def __init__(self, url: str) -> None:
        import boto3  # the s3 extra, imported only when an S3 repository is used

        parts = urlsplit(url)
        _, options = url_options(url)
        self.bucket = parts.hostname or ""
        self.prefix = parts.path.strip("/")
        creds: dict[str, Any] = {}
        if parts.username:
            creds = {"aws_access_key_id": unquote(parts.username),
                     "aws_secret_access_key": unquote(parts.password or "")}
        self.client = boto3.client("s3", endpoint_url=options.get("endpoint_url"),
                                   region_name=options.get("region"), **creds)

    def key(self, ref: ModelRef, path: str) -> str:
        """The object key of ``path`` of ``ref``."""
        parts = [self.prefix] if self.prefix else []
        return "/".join([*parts, ref.name, ref.version, path])

    def local_folder(self, ref: ModelRef) -> None:
        """None: every file is downloaded (to the cache)."""
        return None

    def _body(self, ref: ModelRef, path: str) -> Any:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key(ref, path))["Body"]
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404", "NoSuchBucket"):
                raise ModelIntegrityError(f"{ref}: {path} is not in the repository "
                                          f"(s3://{self.bucket}/{self.key(ref, path)})") from None
            raise

    def manifest(self, ref: ModelRef) -> bytes:
        """The manifest object's bytes (bounded)."""
        body = self._body(ref, MANIFEST)
        try:
            data: bytes = body.read(MAX_MANIFEST_BYTES + 1)
            return data
        finally:
            body.close()

    def fetch(self, ref: ModelRef, entry: FileEntry, out: BinaryIO) -> None:
        """Stream the object to ``out``, hashing it on the way."""
        body = self._body(ref, entry.path)
        try:
            copy_hashed(body.iter_chunks(CHUNK), out, entry, ref)
        finally:
            body.close()


def open_repository(url: str) -> Repository:
    """The repository ``url`` names (checked by :func:`check_repository_url`)."""
    scheme = scheme_of(url)
    if scheme == "s3":
        return S3Repository(url)
    if scheme == "file":
        return LocalRepository(Path(unquote(urlsplit(url).path)))
    return LocalRepository(Path(url))
