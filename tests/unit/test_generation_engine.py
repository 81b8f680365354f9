"""The decode loop alone (generation/engine.py), with a scripted model."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import REGISTRY

from basic_inference_server.errors import DeadlineExceeded
from basic_inference_server.generation import Engine, GenerationParams, Sequence
from basic_inference_server.generation.engine import Finished

EOS = 0


class Scripted:
    """Each sequence's tokens come from its prompt, in order (then EOS); text is a table."""

    eos_token_ids = frozenset({EOS})
    endpoint = "scripted"

    def __init__(self, table: dict[int, str], fail_at: int | None = None) -> None:
        self.table = table
        self.fail_at = fail_at
        self.batches: list[list[int]] = []
        self.released: list[int] = []
        self.gate = threading.Semaphore(1000)

    def _step(self, batch):
        self.gate.acquire()
        self.batches.append([s.id for s in batch])
        if self.fail_at is not None and len(self.batches) == self.fail_at:
            raise RuntimeError("the device fell off")
        return [s.prompt[len(s.tokens)] if len(s.tokens) < len(s.prompt) else EOS for s in batch]

    def _decode(self, tokens):
        return "".join(self.table[t] for t in tokens)

    def _release(self, seq):
        self.released.append(seq.id)


def run(engine: Engine, prompt: list[int], **params) -> tuple[str, Finished]:
    seq = engine.submit(Sequence(prompt, GenerationParams(**params)))
    text, end = [], None
    for item in seq.texts():
        if isinstance(item, Finished):
            end = item
        else:
            text.append(item)
    assert end is not None
    return "".join(text), end


def test_text_and_ends():
    model = Scripted({EOS: "", 1: "a", 2: "b", 3: "c"})
    engine = Engine(model, 4)
    assert run(engine, [1, 2, 3]) == ("abc", Finished("stop", 3, 3))
    assert run(engine, [1, 2, 3], max_tokens=2) == ("ab", Finished("length", 3, 2))
    assert run(engine, [1, 2, 3, 1], ignore_eos=True, max_tokens=6)[1].reason == "length"
    assert len(model.released) == 3, "every sequence left the batch"


def test_a_stop_string_is_never_sent_even_across_tokens():
    model = Scripted({1: "he", 2: "l", 3: "lo", 4: " w", 5: "orld"})
    engine = Engine(model, 1)
    text, end = run(engine, [1, 2, 3, 4, 5], stop=("lo w",))
    assert (text, end.reason) == ("hel", "stop")


def test_a_partial_character_waits_for_the_rest():
    model = Scripted({1: "caf", 2: "\ufffd", 3: "é!"})

    def decode(tokens):  # the bytes of one character split over tokens 2 and 3
        text = "".join({1: "caf", 2: "\ufffd", 3: "\ufffdé!"}[t] for t in tokens)
        return text.replace("\ufffd\ufffd", "")
    model._decode = decode  # type: ignore[method-assign]
    seq = Engine(model, 1).submit(Sequence([1, 2, 3], GenerationParams()))
    pieces = [i for i in seq.texts() if isinstance(i, str)]
    assert "".join(pieces) == "café!" and not any("\ufffd" in p for p in pieces)


def test_a_failed_decode_ends_its_sequence_and_the_loop_goes_on():
    engine = Engine(Scripted({1: "x"}), 4)
    seq = engine.submit(Sequence([1, 2], GenerationParams()))
    with pytest.raises(KeyError):
        list(seq.texts())
    assert run(engine, [1]) == ("x", Finished("stop", 1, 1))


def test_a_failed_step_fails_every_sequence_of_its_batch():
    model = Scripted({1: "x"}, fail_at=1)
    engine = Engine(model, 4)
    seq = engine.submit(Sequence([1, 1], GenerationParams()))
    with pytest.raises(RuntimeError, match="fell off"):
        list(seq.texts())
    assert model.released == [seq.id]
    assert run(engine, [1]) == ("x", Finished("stop", 1, 1)), "the loop goes on"


def test_at_most_max_sequences_decode_together_the_rest_wait_in_order():
    model = Scripted({1: "x"})
    model.gate = threading.Semaphore(0)
    engine = Engine(model, 2)
    seqs = [engine.submit(Sequence([1] * 3, GenerationParams())) for _ in range(4)]
    for _ in range(100):
        model.gate.release()
    for seq in seqs:
        assert list(seq.texts())[-1] == Finished("stop", 3, 3)
    assert max(len(b) for b in model.batches) == 2
    first_steps = {sid: next(i for i, b in enumerate(model.batches) if sid in b) for sid in
                   (s.id for s in seqs)}
    assert sorted(first_steps, key=first_steps.get) == [s.id for s in seqs]


def test_a_cancelled_sequence_leaves_at_the_next_step():
    model = Scripted({1: "x"})
    model.gate = threading.Semaphore(0)
    engine = Engine(model, 4)
    seq = engine.submit(Sequence([1] * 100, GenerationParams(ignore_eos=True, max_tokens=100)))
    model.gate.release(3)
    got = seq.out.get(timeout=10)
    assert got == "x"
    seq.cancel()
    model.gate.release(50)
    other = engine.submit(Sequence([1], GenerationParams()))
    list(other.texts())
    steps_with_it = sum(seq.id in b for b in model.batches)
    assert steps_with_it <= 4 and seq.id in model.released


def test_a_sequence_whose_deadline_passed_while_it_waited_never_runs():
    model = Scripted({EOS: "", 1: "a", 2: "b"})
    model.gate = threading.Semaphore(0)  # the first sequence holds the only place
    engine = Engine(model, 1)
    first = engine.submit(Sequence([1, 2], GenerationParams()))
    late = engine.submit(Sequence([2, 1], GenerationParams(), expired=lambda: True))
    model.gate.release(100)
    assert [i for i in first.texts()][-1] == Finished("stop", 2, 2)
    with pytest.raises(DeadlineExceeded):
        list(late.texts())
    assert all(late.id not in batch for batch in model.batches), "it never ran"


def test_the_decode_counters_follow_the_batches():
    def counted() -> tuple[float, float]:
        return tuple(REGISTRY.get_sample_value(name, {"endpoint": "scripted"}) or 0.0
                     for name in ("bis_decode_steps_total", "bis_decode_tokens_total"))

    model = Scripted({1: "x"})
    engine = Engine(model, 4)
    before = counted()
    seqs = [engine.submit(Sequence([1] * n, GenerationParams())) for n in (2, 3, 5)]
    for seq in seqs:
        list(seq.texts())
    steps, tokens = (after - was for after, was in zip(counted(), before, strict=True))
    assert (steps, tokens) == (len(model.batches), sum(map(len, model.batches)))
    assert tokens == 3 + 4 + 6, "one token a step for each sequence, its EOS included"
