"""Model artifacts from an S3-compatible server (moto): one download per box, integrity
failures that leave what serves untouched, /models."""

from __future__ import annotations

import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3

from basic_inference_server.artifacts import ModelRef
from basic_inference_server.artifacts.publish import publish
from tests.conftest import assert_ok, wait_until

MIB = 1024 * 1024


def publish_version(s3_server, tmp_path: Path, bucket: str, ref: str, size: int) -> Path:
    src = tmp_path / f"src-{ref.replace('/', '-')}"
    src.mkdir()
    with open(src / "weights.bin", "wb") as fh:
        for _ in range(size // MIB):
            fh.write(os.urandom(MIB))
    (src / "config.json").write_text('{"dim": 384}')
    publish(src, s3_server.repository(bucket), ModelRef.parse(ref), create_bucket=True)
    return src


def flip_byte(path: Path, at: int = 1000) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 1
    path.write_bytes(bytes(data))


def corrupt_object(s3_server, bucket: str, key: str) -> None:
    client = boto3.client("s3", endpoint_url=s3_server.url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[1000] ^= 1
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data))


class Load:
    """16 clients calling one endpoint in a loop until stopped; every status kept."""

    def __init__(self, gw, name: str, clients: int = 16) -> None:
        self.gw, self.name, self.clients = gw, name, clients
        self.statuses: list[int] = []
        self.models: set[str] = set()
        self.stop = threading.Event()
        self.pool = ThreadPoolExecutor(clients)

    def _client(self) -> None:
        while not self.stop.is_set():
            resp = self.gw.run(self.name)
            self.statuses.append(resp.status_code)
            if resp.status_code == 200:
                self.models.add(resp.json()["model"])

    def __enter__(self) -> Load:
        self.futures = [self.pool.submit(self._client) for _ in range(self.clients)]
        wait_until(lambda: len(self.statuses) >= self.clients, timeout=30, message="load runs")
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for f in self.futures:
            f.result(timeout=60)
        self.pool.shutdown()


def test_sixteen_workers_of_four_endpoints_download_one_artifact_once(gateways, s3_server, tmp_path):
    bucket = f"models-{uuid.uuid4().hex[:8]}"
    publish_version(s3_server, tmp_path, bucket, "big/1", 200 * MIB)
    endpoint = {"SERVER_CLASS": "artifact_probe", "NR_WORKERS": 4, "MODEL": "big/1"}
    gw = gateways({"MODEL_REPOSITORY": s3_server.repository(bucket),
                   "CONFIG_ENDPOINTS": {f"e{i}": endpoint for i in range(4)}}, timeout=300)
    for i in range(4):
        wait_until(lambda i=i: gw.server(f"e{i}")["workers_ready"] == 4, timeout=300,
                   message=f"e{i} has 4 workers")
    assert s3_server.gets(f"{bucket}/big/1/weights.bin") == 1
    assert s3_server.gets(f"{bucket}/big/1/config.json") == 1
    cached = gw.workdir / "_cache" / "models" / "big" / "1"
    for i in range(4):
        body = assert_ok(gw.run(f"e{i}"))
        assert body["path"] == str(cached.resolve()), body
        assert body["files"] == ["config.json", "manifest.json", "weights.bin"]
    models = assert_ok(gw.get("/models"))
    assert models["ENDPOINTS"] == {f"e{i}": "big/1" for i in range(4)}
    [entry] = models["CACHE"]
    assert (entry["model"], entry["version"], entry["in_use"]) == ("big", "1", True), entry
    assert entry["bytes"] >= 200 * MIB and "s3cret" not in models["REPOSITORY"]


def test_a_corrupt_artifact_fails_its_load_and_what_serves_serves_on(gateways, s3_server, tmp_path):
    bucket = f"models-{uuid.uuid4().hex[:8]}"
    publish_version(s3_server, tmp_path, bucket, "m/1", 2 * MIB)
    publish_version(s3_server, tmp_path, bucket, "m/2", 2 * MIB)
    corrupt_object(s3_server, bucket, "m/2/weights.bin")  # one flipped byte
    gw = gateways({"MODEL_REPOSITORY": s3_server.repository(bucket), "CONFIG_ENDPOINTS": {
        "clf": {"SERVER_CLASS": "artifact_probe", "NR_WORKERS": 2,
                "VERSIONS": {"v1": {"MODEL": "m/1"}, "v2": {"MODEL": "m/2"}},
                "TRAFFIC": {"v1": 50, "v2": 50}}}}, wait="settled", timeout=60)

    def integrity_failed(name: str):
        info = gw.server(name)
        return "model_integrity" in (info["last_error"] or "") and info

    failed = wait_until(lambda: integrity_failed("clf@v2"), timeout=60, message="v2 failed")
    assert "m/2: weights.bin downloaded with" in failed["last_error"], failed
    # The version that failed takes no traffic: 16 clients, no failure, all on v1.
    with Load(gw, "clf") as load:
        wait_until(lambda: len(load.statuses) >= 400, timeout=60, message="400 answers")
    assert set(load.statuses) == {200} and load.models == {"m/1"}, set(load.statuses)
    history = assert_ok(gw.get("/system_status"))["HISTORY"]["events"]
    assert any(e["kind"] == "load_failed" and "model_integrity" in e["error"] for e in history)
    notes = assert_ok(gw.get("/notifications"))["NOTIFICATIONS"]
    assert any(n.get("notif") == "model_integrity" for n in notes), notes

    # A byte changed in the box's cache: a reload of v1 fails, the serving one goes on.
    v1 = gw.server("clf@v1")
    flip_byte(gw.workdir / "_cache" / "models" / "m" / "1" / "weights.bin")
    with Load(gw, "clf") as load:
        assert_ok(gw.post("/reload_server", {"SIGNATURE": "clf@v1"}))
        wait_until(lambda: "model_integrity" in str(gw.server("clf@v1")["reload_error"]),
                   timeout=60, message="the reload failed")
    assert set(load.statuses) == {200}, set(load.statuses)
    after = gw.server("clf@v1")
    assert (after["state"], after["pid"]) == ("READY", v1["pid"]), after
