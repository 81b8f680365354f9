"""Health history: bounded, kept across a reopen, damaged lines skipped and repaired."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from basic_inference_server.health.history import EVENTS_FILE, SAMPLES_FILE, History


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_samples_and_events_are_stamped_and_kept_in_order(tmp_path):
    h = History(tmp_path, max_samples=10, max_events=10, clock=Clock())
    assert h.samples() == [] and h.events() == []
    stored = h.add_sample({"system": {"mem_avail_pct": 42.0}})
    assert stored == {"ts": 101.0, "system": {"mem_avail_pct": 42.0}}
    h.add_sample({"ts": 5.0, "n": 2})  # a sample's own time wins
    h.add_event("startup", pid=123)
    h.add_event("server_restart", endpoint="sentiment", reason="exited with code 1")
    assert h.samples() == [{"ts": 101.0, "system": {"mem_avail_pct": 42.0}}, {"ts": 5.0, "n": 2}]
    assert h.events() == [
        {"ts": 103.0, "kind": "startup", "pid": 123},
        {"ts": 104.0, "kind": "server_restart", "endpoint": "sentiment", "reason": "exited with code 1"},
    ]
    assert h.events(limit=1) == [h.events()[-1]]
    assert h.events(limit=0) == []
    assert h.samples(limit=50) == h.samples()


def test_reads_are_copies(tmp_path):
    h = History(tmp_path)
    h.add_sample({"gpu": {"gpus": [1]}})
    h.samples()[0]["gpu"]["gpus"].append(2)
    assert h.samples()[0]["gpu"] == {"gpus": [1]}


def test_bounded_in_memory_and_on_disk(tmp_path):
    h = History(tmp_path, max_samples=5, max_events=3)
    for i in range(103):
        h.add_sample({"i": i})
        h.add_event("tick", i=i)
        # the file holds at most twice the window between compactions
        assert len(lines(tmp_path / SAMPLES_FILE)) <= 10
        assert len(lines(tmp_path / EVENTS_FILE)) <= 6
    assert [s["i"] for s in h.samples()] == [98, 99, 100, 101, 102]
    assert [e["i"] for e in h.events()] == [100, 101, 102]
    assert [s["i"] for s in h.samples(limit=2)] == [101, 102]
    assert not list(tmp_path.glob("*.tmp")), "compaction leaves no temporary file"


def test_survives_a_reopen(tmp_path):
    h = History(tmp_path, max_samples=4, max_events=4)
    for i in range(7):
        h.add_sample({"i": i})
    h.add_event("startup")
    h.add_event("shutdown", reason="SIGTERM")
    del h

    again = History(tmp_path, max_samples=4, max_events=4)
    assert [s["i"] for s in again.samples()] == [3, 4, 5, 6]
    assert [e["kind"] for e in again.events()] == ["startup", "shutdown"]
    again.add_event("startup")
    assert [e["kind"] for e in History(tmp_path).events()] == ["startup", "shutdown", "startup"]


def test_reopen_with_a_smaller_window_keeps_the_newest(tmp_path):
    h = History(tmp_path, max_samples=10)
    for i in range(10):
        h.add_sample({"i": i})
    small = History(tmp_path, max_samples=3)
    assert [s["i"] for s in small.samples()] == [7, 8, 9]
    small.add_sample({"i": 10})
    assert len(lines(tmp_path / SAMPLES_FILE)) <= 6
    assert [s["i"] for s in History(tmp_path, max_samples=3).samples()] == [8, 9, 10]


def test_corrupt_and_truncated_lines_are_skipped_then_repaired(tmp_path, caplog):
    path = tmp_path / EVENTS_FILE
    good = [json.dumps({"ts": float(i), "kind": "tick", "i": i}) for i in range(3)]
    path.write_bytes(
        (good[0] + "\n"
         + "{not json\n"
         + "\x00\x00\x00\x00\n"          # zeros left by a crash on some filesystems
         + "[1, 2, 3]\n"                 # JSON, but not a record
         + good[1] + "\n"
         + "\xff\xfe garbage\n"
         + good[2] + "\n"
         + '{"ts": 9.0, "kind": "tor').encode("latin-1")  # torn last line, no newline
    )
    with caplog.at_level(logging.WARNING, logger="basic_inference_server.health.history"):
        h = History(tmp_path, max_events=10)
    assert [e["i"] for e in h.events()] == [0, 1, 2]
    assert "skipped 5 damaged line(s)" in caplog.text

    # The next write does not glue itself to the torn line: the file is rewritten clean.
    h.add_event("startup")
    assert [json.loads(line)["kind"] for line in lines(path)] == ["tick", "tick", "tick", "startup"]
    assert [e["kind"] for e in History(tmp_path).events()] == ["tick", "tick", "tick", "startup"]


def test_last_line_without_newline_is_kept_and_not_glued(tmp_path):
    path = tmp_path / SAMPLES_FILE
    path.write_text('{"ts": 1.0, "i": 1}', encoding="utf-8")
    h = History(tmp_path)
    h.add_sample({"i": 2})
    assert [s["i"] for s in History(tmp_path).samples()] == [1, 2]


def test_a_failed_write_keeps_the_history_in_memory(tmp_path, caplog):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the folder should be")
    h = History(blocker)
    with caplog.at_level(logging.WARNING, logger="basic_inference_server.health.history"):
        for i in range(3):
            h.add_sample({"i": i})
    assert [s["i"] for s in h.samples()] == [0, 1, 2]
    assert caplog.text.count("cannot write") == 1, "logged once, not per sample"


def test_odd_values_are_stored_as_text(tmp_path):
    h = History(tmp_path)
    h.add_event("error", path=Path("/x/y"), error=ValueError("bad"))
    assert History(tmp_path).events()[0] | {"ts": 0} == {"ts": 0, "kind": "error", "path": "/x/y",
                                                         "error": "bad"}


def test_default_folder_is_cache(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    History().add_event("startup")
    assert (tmp_path / "_cache" / EVENTS_FILE).exists()


@pytest.mark.parametrize("kwargs", [{"max_samples": 0}, {"max_events": 0}])
def test_window_must_hold_something(tmp_path, kwargs):
    with pytest.raises(ValueError):
        History(tmp_path, **kwargs)


def test_event_needs_a_kind(tmp_path):
    with pytest.raises(ValueError):
        History(tmp_path).add_event("")
