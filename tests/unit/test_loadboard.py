"""The front's load board: a column per name, agreed on by every front process."""

from __future__ import annotations

import itertools
import logging
import multiprocessing

import pytest

from basic_inference_server.gateway.loadboard import LoadBoard
from basic_inference_server.tenants.shared import slot_hash


def colliding(columns: int, n: int) -> list[str]:
    """``n`` socket-like names whose hashes point at the same column."""
    by_start: dict[int, list[str]] = {}
    for i in itertools.count():
        name = f"/tmp/bis/noop.g{i}w0"
        same = by_start.setdefault(slot_hash(name) % columns, [])
        same.append(name)
        if len(same) == n:
            return same
    raise AssertionError("unreachable")


def test_names_whose_hashes_collide_get_columns_of_their_own():
    a, b, c = colliding(64, 3)
    board = LoadBoard(rows=2, columns=64)
    board.add(a, 3)
    board.add("@embed", 1)
    assert (board.load(a), board.load(b), board.load(c)) == (3, 0, 0)
    board.add(c, 2)
    board.add(b, -1)
    assert (board.load(a), board.load(b), board.load(c), board.load("@embed")) == (3, -1, 2, 1)
    assert len({board._column(n) for n in (a, b, c, "@embed")}) == 4


def _child(board: LoadBoard, first: str, second: str, out: multiprocessing.Queue) -> None:
    board.claim_row(1)
    out.put(board._column(first))  # claimed by the parent before the fork
    board.add(second, 5)  # claimed here first
    out.put(board._column(second))


def test_every_front_process_finds_the_same_column_for_a_name():
    first, second = colliding(64, 2)
    board = LoadBoard(rows=2, columns=64)
    board.add(first, 1)
    ctx = multiprocessing.get_context("fork")  # as gunicorn forks the front's workers
    out = ctx.Queue()
    child = ctx.Process(target=_child, args=(board, first, second, out))
    child.start()
    seen_first, seen_second = out.get(timeout=30), out.get(timeout=30)
    child.join(30)
    assert child.exitcode == 0
    assert seen_first == board._column(first)
    # The parent met `second` after the child claimed it: it finds the child's column
    # (the next one past `first`, whose hash points at the same start) and its count.
    assert seen_second == board._column(second) != seen_first
    assert board.load(second) == 5 and board.load(first) == 1


def test_a_full_board_shares_columns_and_says_so(caplog):
    board = LoadBoard(rows=1, columns=4)
    names = [f"/tmp/bis/w{i}" for i in range(6)]
    with caplog.at_level(logging.WARNING, logger="basic_inference_server.gateway.loadboard"):
        cols = [board._column(n) for n in names]
    assert sorted(cols[:4]) == [0, 1, 2, 3], "the first four get a column each"
    assert cols[4] == slot_hash(names[4]) % 4 and cols[5] == slot_hash(names[5]) % 4
    assert sum("no free column" in r.getMessage() for r in caplog.records) == 1
    board.add(names[0], 1)
    assert board.load(names[0]) >= 1


def test_a_slot_is_taken_over_every_process_and_never_past_a_waiting_request():
    board = LoadBoard(2)
    running, waiting = board.column("^echo"), board.column("?echo")
    board.claim_row(1)
    assert board.take_if_free(running, waiting, 2)  # row 1 runs one
    board.claim_row(0)
    assert board.take_if_free(running, waiting, 2)  # row 0 the second: full over both
    assert not board.take_if_free(running, waiting, 2)
    assert not board.release(running, waiting)  # nobody waits
    board.add_at(waiting, 1)
    assert not board.take_if_free(running, waiting, 2)  # a free slot, but one waits first
    assert board.release(running, waiting)
    assert board.load_at(running) == 0 and board.load_at(waiting) == 1


@pytest.mark.parametrize("rows", [1, 2, 3, 5])
def test_a_columns_load_is_the_sum_of_every_rows_count(rows):
    # One or two rows are summed by index, more by a slice: the same answer either way.
    board = LoadBoard(rows, columns=8)
    for row in range(rows):
        board.claim_row(row)
        board.add("@echo", row + 1)
        board.add("@other", -1)
    running, waiting = board.column("^echo"), board.column("?echo")
    assert board.take_if_free(running, waiting, rows)  # the last row's, one of ``rows``
    assert board.load("@echo") == rows * (rows + 1) // 2
    assert board.load("@other") == -rows and board.load_at(running) == 1
