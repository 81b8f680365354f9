"""Model artifacts: manifests (hostile ones too), verification, the cache's one
download, its locks and its bounded size."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from basic_inference_server.artifacts import ArtifactCache, ModelIntegrityError, ModelRef, ModelRefError
from basic_inference_server.artifacts.manifest import FileEntry, copy_hashed, make_manifest, parse_manifest
from basic_inference_server.artifacts.publish import AlreadyPublished, publish
from basic_inference_server.artifacts.repository import LocalRepository, check_repository_url

REF = ModelRef("m", "1")


def version(folder: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize("text", ["m", "m/", "/1", "m/1/2", "../x/1", "m/" + "v" * 200, "m /1"])
def test_a_model_reference_is_model_slash_version(text):
    with pytest.raises(ModelRefError):
        ModelRef.parse(text)
    assert ModelRef.parse("mini-lm.v2/2024_01") == ModelRef("mini-lm.v2", "2024_01")


@pytest.mark.parametrize("path", ["/etc/passwd", "../up", "a/../../up", "a//b", "a\\b",
                                  "a\nb", "manifest.json", "", "x" * 2000])
def test_a_hostile_manifest_path_is_refused(path):
    raw = json.dumps({"files": {path: {"size": 1, "sha256": "0" * 64}}}).encode()
    with pytest.raises(ModelRefError):
        parse_manifest(raw, REF)


@pytest.mark.parametrize("raw", [b"[]", b"{}", b'{"files": {}}', b"x" * (1024 * 1024 + 1),
                                 b'{"files": {"a": {"size": -1, "sha256": "' + b"0" * 64 + b'"}}}',
                                 b'{"files": {"a": {"size": 1, "sha256": "XYZ"}}}'])
def test_a_malformed_manifest_is_refused(raw):
    with pytest.raises(ModelRefError):
        parse_manifest(raw, REF)


def test_a_flipped_byte_fails_verification_in_place(tmp_path):
    repo = tmp_path / "repo"
    src = version(tmp_path / "src", {"weights.bin": os.urandom(4096), "cfg/config.json": b"{}"})
    publish(src, str(repo), REF)
    with pytest.raises(AlreadyPublished):
        publish(src, str(repo), REF)
    cache = ArtifactCache(LocalRepository(repo), tmp_path / "cache", 1 << 30)
    assert cache.path(REF) == repo / "m" / "1"  # read in place, verified
    weights = repo / "m" / "1" / "weights.bin"
    data = bytearray(weights.read_bytes())
    data[100] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match=r"^model_integrity: m/1: weights.bin has sha256"):
        cache.path(REF)
    (repo / "m" / "1" / "cfg" / "config.json").unlink()
    with pytest.raises(ModelIntegrityError, match="cfg/config.json is missing"):
        cache.path(REF)
    with pytest.raises(ModelIntegrityError, match="no manifest.json"):
        cache.path(ModelRef("m", "9"))


def test_a_download_is_verified_as_it_arrives():
    entry = FileEntry("a", 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    out = io.BytesIO()
    copy_hashed(iter([b"a", b"bc"]), out, entry, REF)
    assert out.getvalue() == b"abc"
    with pytest.raises(ModelIntegrityError, match="downloaded with 3 bytes and sha256"):
        copy_hashed(iter([b"abd"]), out, entry, REF)
    with pytest.raises(ModelIntegrityError, match="longer than the manifest's 3 bytes"):
        copy_hashed(iter([b"abcd"]), out, entry, REF)


class CountingRepository(LocalRepository):
    """A "remote" repository over a folder: every file fetched is counted in a file."""

    def __init__(self, root: Path, counter: Path) -> None:
        super().__init__(root)
        self.counter = counter

    def local_folder(self, ref):  # downloaded, as from S3
        return None

    def fetch(self, ref, entry, out):
        with open(self.counter, "a") as fh:
            fh.write(f"{entry.path}\n")
        source = self.folder(ref) / entry.path
        copy_hashed(iter([source.read_bytes()]), out, entry, ref)


def _use(root: str, counter: str, cache: str, ready: str, ref: ModelRef = REF) -> None:
    path = ArtifactCache(CountingRepository(Path(root), Path(counter)), cache, 1 << 30).path(ref)
    Path(ready).write_text(str(path))


def test_one_download_per_box_whatever_the_processes(tmp_path):
    repo, counter = tmp_path / "repo", tmp_path / "fetched"
    publish(version(tmp_path / "src", {"w.bin": os.urandom(1 << 20), "t.json": b"{}"}), str(repo), REF)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_use, args=(str(repo), str(counter), str(tmp_path / "cache"),
                                            str(tmp_path / f"ready{i}"))) for i in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 6
    assert sorted(counter.read_text().split()) == ["t.json", "w.bin"]  # each fetched once
    cached = tmp_path / "cache" / "m" / "1"
    assert {(tmp_path / f"ready{i}").read_text() for i in range(6)} == {str(cached)}
    assert stat.S_IMODE(cached.stat().st_mode) == 0o700
    assert stat.S_IMODE((cached / "w.bin").stat().st_mode) == 0o600
    assert not [p for p in cached.parent.iterdir() if p.name.startswith(".tmp-")]
    # A byte changed in the cache is caught too.
    data = bytearray((cached / "w.bin").read_bytes())
    data[0] ^= 1
    (cached / "w.bin").write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError):
        ArtifactCache(CountingRepository(repo, counter), tmp_path / "cache", 1 << 30).path(REF)


def test_a_failed_download_leaves_nothing_behind(tmp_path):
    repo, counter = tmp_path / "repo", tmp_path / "fetched"
    publish(version(tmp_path / "src", {"w.bin": b"x" * 100}), str(repo), REF)
    (repo / "m" / "1" / "w.bin").write_bytes(b"y" * 100)  # the remote copy is corrupt
    cache = ArtifactCache(CountingRepository(repo, counter), tmp_path / "cache", 1 << 30)
    with pytest.raises(ModelIntegrityError, match="downloaded with 100 bytes"):
        cache.path(REF)
    assert list((tmp_path / "cache" / "m").iterdir()) == [] or all(
        p.name.startswith(".") and p.is_file() for p in (tmp_path / "cache" / "m").iterdir())


def test_the_cache_evicts_unused_versions_least_recently_used_first(tmp_path):
    repo, counter = tmp_path / "repo", tmp_path / "fetched"
    for v in ("1", "2", "3"):
        publish(version(tmp_path / f"src{v}", {"w.bin": os.urandom(1000)}), str(repo), ModelRef("m", v))
    folder = tmp_path / "cache"
    holder = ArtifactCache(CountingRepository(repo, counter), folder, 10**9)
    holder.path(ModelRef("m", "1"))  # held in use by this cache's process for its life
    other = ArtifactCache(CountingRepository(repo, counter), folder, 2500)
    # other's own use locks are taken on other fds: m/1 stays in use by `holder`.
    other._held.clear()
    listing = {(e["version"], e["in_use"]) for e in other.listing()}
    assert listing == {("1", True)}
    os.utime(folder / "m" / "1", (1, 1))
    # m/2 is used by a process that has exited since: it holds nothing any more.
    user = multiprocessing.get_context("spawn").Process(
        target=_use, args=(str(repo), str(counter), str(folder), str(tmp_path / "r"), ModelRef("m", "2")))
    user.start()
    user.join(60)
    assert user.exitcode == 0
    os.utime(folder / "m" / "2", (2, 2))
    third = ArtifactCache(CountingRepository(repo, counter), folder, 2500)
    third.path(ModelRef("m", "3"))
    # Over 2,500 bytes with three: m/2 (unused, older than m/3) goes; m/1 is in use.
    assert sorted(v.name for v in (folder / "m").iterdir() if not v.name.startswith(".")) == ["1", "3"]


def test_repository_urls_are_checked_and_manifests_made():
    assert check_repository_url("s3://bucket/prefix?endpoint_url=http://x:1") is None
    assert check_repository_url("/srv/models") is None and check_repository_url("file:///x") is None
    assert "names its bucket" in check_repository_url("s3:///prefix")
    assert "must be a folder" in check_repository_url("http://x/models")


def test_make_manifest_lists_every_file(tmp_path):
    src = version(tmp_path, {"a": b"1", "d/b": b"22"})
    assert make_manifest(src) == {"files": {
        "a": {"size": 1, "sha256": "6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b"},
        "d/b": {"size": 2, "sha256": "785f3ec7eb32f30b90cd0fcf3657d388b5ff4297f2f9716ff66e9b69c05ddd09"}}}
