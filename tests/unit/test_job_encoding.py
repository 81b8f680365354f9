"""A job's wire format: its priority class's rank travels with it, checked on decode."""

from __future__ import annotations

import orjson
import pytest

from basic_inference_server.queues.base import MAX_RANKS, Job


def raw_with(**fields) -> bytes:
    return orjson.dumps({**orjson.loads(Job(endpoint="ep", body={"a": 1}).encode()), **fields})


def test_a_job_without_a_rank_encodes_as_before_and_is_served_as_rank_0() -> None:
    job = Job(endpoint="ep", body={"a": 1})
    assert "rank" not in orjson.loads(job.encode())
    back = Job.decode(job.encode())
    assert back == job and back.rank is None and back.queue_rank == 0
    assert Job.decode(raw_with(rank=None)).rank is None  # an explicit null is absent too


@pytest.mark.parametrize("rank", [0, 1, MAX_RANKS - 1])
def test_a_rank_round_trips(rank: int) -> None:
    job = Job(endpoint="ep", body={"a": 1}, rank=rank)
    assert orjson.loads(job.encode())["rank"] == rank
    back = Job.decode(job.encode())
    assert back == job and back.queue_rank == rank


@pytest.mark.parametrize("rank", [-1, MAX_RANKS, True, False, 1.0, "1", [0]])
def test_a_rank_out_of_range_or_of_another_type_is_refused(rank: object) -> None:
    with pytest.raises(ValueError, match="wrong type"):
        Job.decode(raw_with(rank=rank))
    stand_in = Job.decode_or_stand_in(raw_with(rank=rank), "ep", "m-1")
    assert stand_in.undecodable and stand_in.id == "m-1" and stand_in.queue_rank == 0
