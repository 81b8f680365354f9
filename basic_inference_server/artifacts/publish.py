"""Publishing a model version: its files and a manifest of their sha256 sums.

    python -m basic_inference_server.artifacts publish FOLDER REPOSITORY MODEL/VERSION [--create-bucket]

Every file under ``FOLDER`` goes to ``<repository>/<model>/<version>/``, the manifest
last: a reader never finds a manifest whose files are not all there yet. A version is
never overwritten (one already published is an error): workers that verified it keep
what they verified.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from .manifest import MANIFEST, ModelRef, make_manifest
from .repository import LocalRepository, S3Repository, check_repository_url, open_repository


class AlreadyPublished(Exception):
    """The version exists in the repository."""


def publish(folder: Path, repository: str, ref: ModelRef, create_bucket: bool = False) -> dict:
    """Publish ``folder`` as ``ref``; returns the manifest written."""
    manifest = make_manifest(folder)
    if not manifest["files"]:
        raise ValueError(f"{folder} holds no file to publish")
    raw = json.dumps(manifest, indent=1).encode()
    repo = open_repository(repository)
    if isinstance(repo, S3Repository):
        _to_s3(repo, folder, ref, manifest, raw, create_bucket)
    else:
        assert isinstance(repo, LocalRepository)
        target = repo.folder(ref)
        if target.exists():
            raise AlreadyPublished(f"{ref} is already in {repo.root}")
        shutil.copytree(folder, target, ignore=shutil.ignore_patterns(MANIFEST))
        (target / MANIFEST).write_bytes(raw)
    return manifest


def _to_s3(repo: S3Repository, folder: Path, ref: ModelRef, manifest: dict, raw: bytes,
           create_bucket: bool) -> None:
    from botocore.exceptions import ClientError

    client = repo.client
    if create_bucket:
        try:
            client.head_bucket(Bucket=repo.bucket)
        except ClientError:
            client.create_bucket(Bucket=repo.bucket)
    try:
        client.head_object(Bucket=repo.bucket, Key=repo.key(ref, MANIFEST))
        raise AlreadyPublished(f"{ref} is already in s3://{repo.bucket}")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey"):
            raise
    for path in manifest["files"]:
        client.upload_file(str(folder / path), repo.bucket, repo.key(ref, path))
    client.put_object(Bucket=repo.bucket, Key=repo.key(ref, MANIFEST), Body=raw)


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m basic_inference_server.artifacts",
                                     description="Publish a model version to a repository.")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("publish", help="publish FOLDER as MODEL/VERSION")
    cmd.add_argument("folder", type=Path)
    cmd.add_argument("repository", help="a folder or s3://bucket[/prefix][?endpoint_url=...]")
    cmd.add_argument("ref", metavar="MODEL/VERSION")
    cmd.add_argument("--create-bucket", action="store_true",
                     help="create the S3 bucket when it does not exist")
    args = parser.parse_args(argv)
    problem = check_repository_url(args.repository)
    if problem:
        parser.error(f"REPOSITORY {problem}")
    try:
        ref = ModelRef.parse(args.ref)
        manifest = publish(args.folder, args.repository, ref, args.create_bucket)
    except (ValueError, AlreadyPublished, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    total = sum(f["size"] for f in manifest["files"].values())
    print(json.dumps({"published": str(ref), "files": len(manifest["files"]), "bytes": total}))
    return 0
