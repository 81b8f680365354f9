"""The audit trail's parts: masking and bounds, the append-only file, refusals per window."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat

import pytest

from basic_inference_server.audit import (
    MAX_ADDRESSES,
    MAX_ITEMS,
    MAX_RECORD,
    MAX_TEXT,
    OTHER_ADDRESSES,
    AuditLog,
    Refusals,
    mask_args,
    token_id,
)
from basic_inference_server.redact import MASK


def test_secrets_are_masked_by_name_and_in_urls() -> None:
    args = {"SIGNATURE": "echo", "ADMIN_TOKEN": "t0k", "api_key": "k", "KEY": "s3",
            "AWS_SECRET_ACCESS_KEY": "aws", "PASSWORD": "pw", "KEY_ID": "kid",
            "TENANT": "acme", "QUEUE": "redis://user:hunter2@host:6379/0",
            "NESTED": {"SETTINGS": [{"DB_PASSWORD": "pw2"}]}}
    masked = mask_args(args)
    assert masked["SIGNATURE"] == "echo" and masked["KEY_ID"] == "kid"
    assert masked["TENANT"] == "acme"
    for name in ("ADMIN_TOKEN", "api_key", "KEY", "AWS_SECRET_ACCESS_KEY", "PASSWORD"):
        assert masked[name] == MASK, name
    assert masked["QUEUE"] == f"redis://user:{MASK}@host:6379/0"
    assert masked["NESTED"]["SETTINGS"][0]["DB_PASSWORD"] == MASK
    text = json.dumps(masked)
    for secret in ("t0k", "hunter2", "aws", "pw2", '"s3"'):
        assert secret not in text


def test_sizes_are_bounded() -> None:
    deep: object = "bottom"
    for _ in range(50):
        deep = {"d": deep}
    masked = mask_args({"TEXT": "x" * 100_000, "LIST": list(range(10_000)),
                        "MAP": {f"k{i}": i for i in range(10_000)}, "DEEP": deep})
    assert len(masked["TEXT"]) < MAX_TEXT + 40
    assert len(masked["LIST"]) == MAX_ITEMS + 1
    assert len(masked["MAP"]) == MAX_ITEMS + 1
    assert "bottom" not in json.dumps(masked["DEEP"])
    assert len(json.dumps(masked)) < MAX_RECORD


def test_token_id_tells_tokens_apart_and_hides_them() -> None:
    assert token_id("a" * 40) != token_id("b" * 40)
    assert len(token_id("secret-token")) == 12
    assert "secret" not in token_id("secret-token")


def test_records_are_appended_private_and_read_newest_last(tmp_path) -> None:
    log = AuditLog(tmp_path, clock=lambda: 5.0)
    for i in range(5):
        log.append({"kind": "admin_call", "n": i})
    # A torn last line (a crash mid-write elsewhere) and garbage cost their line only.
    with open(log.path, "ab") as f:
        f.write(b"not json\n{\"kind\": \"admin_call\", \"n\": 5}\n{\"torn")
    log.append({"kind": "admin_call", "n": 6})
    assert stat.S_IMODE(os.stat(log.path).st_mode) == 0o600
    assert [r["n"] for r in log.newest(3)] == [4, 5, 6]
    assert [r["n"] for r in log.newest(100)] == [0, 1, 2, 3, 4, 5, 6]
    assert log.newest(0) == []


def test_newest_reads_only_the_end_of_a_large_file(tmp_path) -> None:
    log = AuditLog(tmp_path)
    line = json.dumps({"kind": "admin_call", "pad": "x" * 1000}) + "\n"
    with open(log.path, "w") as f:
        f.write(line * 3000)  # 3 MB, over the tail read
    log.append({"kind": "admin_call", "n": "last"})
    newest = log.newest(5)
    assert len(newest) == 5 and newest[-1]["n"] == "last"


def test_a_record_too_large_keeps_everything_but_its_arguments(tmp_path) -> None:
    log = AuditLog(tmp_path)
    log.append({"kind": "admin_call", "path": "/keys", "args": {"x": "y" * (2 * MAX_RECORD)}})
    (record,) = log.newest(1)
    assert record["path"] == "/keys" and "not kept" in record["args"]["..."]


def test_a_link_planted_in_the_place_of_the_file_is_not_followed(tmp_path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    log = AuditLog(tmp_path)
    os.symlink(target, log.path)
    log.append({"kind": "admin_call"})  # refused (ELOOP), logged instead
    assert target.read_text() == ""


def _writer(folder: str, n: int, count: int) -> None:
    log = AuditLog(folder)
    for i in range(count):
        log.append({"kind": "admin_call", "writer": n, "i": i, "pad": "p" * (n * 300)})


def test_processes_appending_at_once_never_tear_a_line(tmp_path) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), n, 300)) for n in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    # Every line whole (an empty one is the end of a line that another write was still
    # extending when this one looked: harmless, and skipped on reading).
    records = [json.loads(line) for line in lines if line]
    assert len(records) == 1200
    for n in range(4):
        assert [r["i"] for r in records if r["writer"] == n] == list(range(300))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_refusals_are_one_record_per_address_and_window(tmp_path) -> None:
    clock = Clock(600.0)
    log = AuditLog(tmp_path, clock=clock)
    refusals = Refusals(log, window_s=60, clock=clock)
    for _ in range(500):
        refusals.count("10.0.0.1", "/kill_server")
    refusals.count("10.0.0.2", "/metrics")
    refusals.count("10.0.0.1", "/keys")
    refusals.flush()  # the window is not over: nothing yet
    assert log.newest(10) == []
    clock.now = 661.0
    refusals.flush()
    records = log.newest(10)
    assert [(r["address"], r["count"], r["ts"]) for r in records] == [
        ("10.0.0.1", 501, 600.0), ("10.0.0.2", 1, 600.0)]
    assert records[0]["paths"] == ["/kill_server", "/keys"]
    refusals.flush(final=True)  # nothing counted since
    assert len(log.newest(10)) == 2
    refusals.count("10.0.0.1", "/kill_server")
    refusals.flush(final=True)  # at exit: the current window too
    assert [(r["count"], r["ts"]) for r in log.newest(10)[2:]] == [(1, 660.0)]


def test_a_new_window_writes_the_last_one_at_its_first_refusal(tmp_path) -> None:
    clock = Clock(0.0)
    log = AuditLog(tmp_path, clock=clock)
    refusals = Refusals(log, window_s=60, clock=clock)
    refusals.count("a", "/x")
    clock.now = 130.0
    refusals.count("a", "/x")
    assert [(r["ts"], r["count"]) for r in log.newest(5)] == [(0.0, 1)]


def test_many_addresses_are_bounded_per_window(tmp_path) -> None:
    clock = Clock(0.0)
    log = AuditLog(tmp_path, clock=clock)
    refusals = Refusals(log, window_s=60, clock=clock)
    for i in range(5000):
        refusals.count(f"2001:db8::{i:x}", "/kill_server")
    refusals.flush(final=True)
    records = log.newest(1000)
    assert len(records) == MAX_ADDRESSES + 1
    assert records[-1]["address"] == OTHER_ADDRESSES
    assert sum(r["count"] for r in records) == 5000


@pytest.mark.parametrize("value", [b"bytes", 1.5, None, True, ("a", "b")])
def test_odd_values_are_kept_as_json(value: object) -> None:
    json.dumps(mask_args({"V": value}))
