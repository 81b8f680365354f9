"""The ledger's journal and batches, without a database: segments, locks, damaged lines."""

from __future__ import annotations

import multiprocessing
import os
import stat
from datetime import date

from basic_inference_server.ledger import journal
from basic_inference_server.ledger.journal import (
    Entry,
    Journal,
    encode,
    finished,
    parse,
    segments,
)
from basic_inference_server.ledger.postgres import Batch, migrations


def test_entries_are_whole_lines_in_a_private_segment_of_this_process(tmp_path) -> None:
    j = Journal(tmp_path / "ledger")
    j.record("acme", "echo", 200, 3.0, 0.01)
    j.record("globex", "echo", 429, 0.0, 0.002)
    [seg] = segments(tmp_path / "ledger")
    assert seg.name.startswith(f"{os.getpid()}-")
    assert stat.S_IMODE(seg.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ledger").stat().st_mode) == 0o700
    lines = seg.read_bytes().splitlines()
    assert [parse(x)[:4] for x in lines] == [("acme", "echo", 200, 3.0),  # type: ignore[index]
                                             ("globex", "echo", 429, 0.0)]
    j.close()


def test_a_segment_is_finished_once_its_writer_closed_it_or_died(tmp_path) -> None:
    j = Journal(tmp_path)
    j.record("acme", "echo", 200, 0.0, 0.0)
    [seg] = segments(tmp_path)
    assert not finished(seg)  # this process holds it
    j.close()
    assert finished(seg)

    def write_and_die(folder: str) -> None:
        Journal(folder).record("acme", "echo", 200, 0.0, 0.0)
        os._exit(0)  # no close: the kernel drops the lock with the process

    proc = multiprocessing.get_context("fork").Process(target=write_and_die, args=(str(tmp_path),))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0
    theirs = [s for s in segments(tmp_path) if s != seg]
    assert len(theirs) == 1 and finished(theirs[0])


def test_a_forked_child_writes_a_segment_of_its_own(tmp_path) -> None:
    j = Journal(tmp_path)
    j.record("acme", "echo", 200, 0.0, 0.0)

    def child() -> None:
        j.record("acme", "echo", 200, 0.0, 0.0)
        os._exit(0)

    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0
    sizes = sorted(len(s.read_bytes().splitlines()) for s in segments(tmp_path))
    assert sizes == [1, 1]
    j.close()


def test_a_writer_rolls_to_a_new_segment(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(journal, "ROLL_BYTES", 1)  # one entry a segment
    j = Journal(tmp_path)
    for _ in range(10):
        j.record("acme", "echo", 200, 0.0, 0.0)
    j.close()
    found = segments(tmp_path)
    assert len(found) == 10 and all(finished(s) for s in found)
    assert sum(len(s.read_bytes().splitlines()) for s in found) == 10


def test_a_full_disk_logs_the_entry_and_the_next_one_starts_a_new_line(tmp_path, caplog,
                                                                      monkeypatch) -> None:
    j = Journal(tmp_path)
    j.record("acme", "echo", 200, 0.0, 0.0)
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:5]))
    j.record("acme", "echo", 200, 1.0, 0.0)
    monkeypatch.setattr(os, "write", real_write)
    assert "cannot write" in caplog.text and "acme\techo\t200\t1.0" in caplog.text
    j.record("acme", "echo", 200, 2.0, 0.0)
    j.close()
    parsed = [parse(x) for s in segments(tmp_path) for x in s.read_bytes().splitlines()]
    assert [e.units for e in parsed if e is not None] == [0.0, 2.0]
    assert parsed.count(None) == 1  # the torn one, on its own line


def test_damaged_or_mistyped_lines_parse_to_none() -> None:
    for line in (b"", b"a\te\t200", b"a\te\t2x0\t0\t0\t0\n", b"a\te\t200\t0\t0\n",
                 b"a\te\t200\tx\t0\t0\n", b"\xff\te\t200\t0\t0\t0\n", b"a\te\t200\t0\t0\t0\tz\n"):
        assert parse(line) is None, line
    assert parse(b"a\te\t200\t1.0\t0.5\t86400.0\n") == Entry("a", "e", 200, 1.0, 0.5, 86400.0)


def test_an_entry_reads_back_as_written_whatever_its_names_hold() -> None:
    entry = Entry("t\tab\nx", "\u00e9cho", 200, 0.1, 1 / 3, 1796581256.0977123)
    back = parse(encode(entry))
    assert back == Entry("t ab x", "\u00e9cho", 200, 0.1, 1 / 3, 1796581256.0977123)


def test_a_batch_sums_per_tenant_endpoint_and_day() -> None:
    batch = Batch()
    assert not batch
    day = date(2026, 12, 6)
    for status, units in ((200, 2.0), (200, 3.0), (429, 0.0), (503, 0.0), (304, 0.0)):
        batch.count("acme", "echo", day, status, units, 0.5)
    batch.count("acme", "echo", date(2026, 12, 7), 200, 1.0, 0.1)
    assert batch.usage[("acme", "echo", day)] == [5, 2, 2, 5.0, 2.5]
    assert batch.usage[("acme", "echo", date(2026, 12, 7))] == [1, 1, 0, 1.0, 0.1]


def test_migrations_are_numbered_from_one_without_gaps() -> None:
    found = migrations()
    assert [v for v, _, _ in found] == list(range(1, len(found) + 1))
    assert all("CREATE TABLE" in sql for _, _, sql in found)
