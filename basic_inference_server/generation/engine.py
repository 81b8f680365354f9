"""Continuous batching: one thread runs decode steps over the sequences of a worker
process; a sequence joins the batch at the next step after it arrives and leaves it as
soon as it ends, is cancelled or its client went away, never waiting for the others.

Each step asks the model (:meth:`.worker.GenerativeWorker._step`) for one token of every
sequence in the batch. The engine owns everything around the model: admission (at
most ``max_sequences`` decode together, the rest wait in arrival order), the ends
(end-of-sequence unless ``ignore_eos`` or before ``min_tokens``, ``max_tokens``, a stop
string), the text (decoded as tokens come, a partial character held back) and the
hand-over to the request threads, which wait on their sequence's queue.
"""

from __future__ import annotations

import itertools
import logging
import queue
import random
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import Counter

from ..deadlines import MISSES
from ..errors import DeadlineExceeded
from .contract import GenerationParams

log = logging.getLogger(__name__)
# Over a while, tokens / steps is the mean batch: how much the sequences decoded together.
STEPS = Counter("bis_decode_steps_total", "Decode steps run by a generative endpoint's "
                "workers", ["endpoint"])
TOKENS = Counter("bis_decode_tokens_total", "Tokens made by those decode steps (one per "
                 "sequence of the step's batch)", ["endpoint"])
_ids = itertools.count(1)
# A decoded text ending in this is a character whose bytes are not all in yet.
PARTIAL = "\ufffd"


class Model(Protocol):
    """What the engine asks of a generative worker."""

    endpoint: str
    eos_token_ids: frozenset[int]

    def _step(self, batch: list[Sequence]) -> list[int]: ...

    def _decode(self, tokens: list[int]) -> str: ...

    def _release(self, seq: Sequence) -> None: ...


@dataclass(frozen=True)
class Finished:
    """The end of a sequence: why, and the tokens it counted."""

    reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int


@dataclass(eq=False)
class Sequence:
    """One request's generation: its tokens so far and where its text goes."""

    prompt: list[int]
    params: GenerationParams
    # True once the client left (the request's cancel flag): it leaves at the next step.
    gone: Callable[[], bool] = lambda: False
    # True once its deadline passed (X-Request-Deadline): it does not join after that.
    expired: Callable[[], bool] = lambda: False
    id: int = field(default_factory=lambda: next(_ids))
    tokens: list[int] = field(default_factory=list)
    # The model's own state of this sequence (its cache rows ...): the model's to use.
    state: Any = None
    rng: random.Random = field(init=False)
    out: queue.SimpleQueue[str | Finished | BaseException] = field(
        default_factory=queue.SimpleQueue)
    cancelled: bool = False
    holdback: int = field(init=False)
    _text: str = ""  # decoded and sent
    _made: str = ""  # decoded: sent, and held back
    # Incremental decoding: the tokens from _prefix on are decoded again at each step,
    # those before _read already gave their text (as vLLM's detokenizer does).
    _prefix: int = 0
    _read: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.params.seed)
        # Text held back while it may be the start of a stop string (never sent).
        self.holdback = max((len(s) for s in self.params.stop), default=1) - 1

    @property
    def prefilled(self) -> bool:
        """Whether its prompt went through the model (its first step is done)."""
        return bool(self.tokens)

    def cancel(self) -> None:
        """Leave the batch at the next step (any thread)."""
        self.cancelled = True

    def texts(self) -> Iterator[str | Finished]:
        """What the engine sends, as it comes: text, a few tokens' worth at most when the
        reader lags, then the :class:`Finished`; raises the model's error."""
        while True:
            item: str | Finished | BaseException | None = self.out.get()
            parts: list[str] = []
            while isinstance(item, str):
                parts.append(item)
                try:
                    item = self.out.get_nowait()
                except queue.Empty:
                    item = None
            if parts:
                yield "".join(parts)
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, Finished):
                yield item
                return


class Engine:
    """The decode loop of one worker process (a daemon thread, started at the first
    sequence)."""

    def __init__(self, model: Model, max_sequences: int) -> None:
        self.model = model
        self.max_sequences = max(1, max_sequences)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.cond = threading.Condition()
        self.thread: threading.Thread | None = None
        self.steps = 0  # decode steps run
        self._counted = (STEPS.labels(model.endpoint), TOKENS.labels(model.endpoint))

    def submit(self, seq: Sequence) -> Sequence:
        """Queue a sequence; it joins the batch at the next step with room."""
        with self.cond:
            self.waiting.append(seq)
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name="bis-decode", daemon=True)
                self.thread.start()
            self.cond.notify()
        return seq

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.waiting and not self.running:
                    self.cond.wait()
                while self.waiting and len(self.running) < self.max_sequences:
                    seq = self.waiting.popleft()
                    if seq.expired():  # it waited for a place past its deadline
                        MISSES.labels(self.model.endpoint, "server").inc()
                        seq.out.put(DeadlineExceeded("the request's deadline passed before "
                                                     "it joined the batch"))
                        continue
                    self.running.append(seq)
            self._leave([s for s in self.running if s.cancelled or s.gone()])
            if self.running:
                self._step()

    def _step(self) -> None:
        batch = list(self.running)
        try:
            tokens = self.model._step(batch)
            if len(tokens) != len(batch):
                raise RuntimeError(f"_step gave {len(tokens)} tokens for {len(batch)} sequences")
        except Exception as exc:  # noqa: BLE001 - the batch's requests get the error
            log.exception("a decode step failed: %d sequences end with its error", len(batch))
            for seq in batch:
                seq.out.put(exc)
            self._leave(batch)
            return
        self.steps += 1
        self._counted[0].inc()
        self._counted[1].inc(len(batch))
        ended = []
        for seq, token in zip(batch, tokens, strict=True):
            try:
                reason = self._advance(seq, token)
            except Exception as exc:  # noqa: BLE001 - _decode failed: this sequence ends
                log.exception("decoding sequence %d failed", seq.id)
                seq.out.put(exc)
                ended.append(seq)
                continue
            if reason is not None:
                seq.out.put(Finished(reason, len(seq.prompt), len(seq.tokens)))
                ended.append(seq)
        self._leave(ended)

    def _advance(self, seq: Sequence, token: int) -> str | None:
        """Add a token to a sequence and send its new text; why it ends, if it does."""
        params = seq.params
        if (token in self.model.eos_token_ids and not params.ignore_eos
                and len(seq.tokens) >= params.min_tokens):
            return "stop"
        seq.tokens.append(token)
        reason = "length" if len(seq.tokens) >= params.max_tokens else None
        text = self._decoded(seq, final=reason is not None)
        if text is None:
            return None  # the rest of the character comes with the next token
        for stop in params.stop:
            at = text.find(stop, len(seq._text))
            if at >= 0:
                text, reason = text[:at], "stop"
                break
        ready = len(text)
        if reason is None:
            ready -= seq.holdback  # what may still become the start of a stop string
        if ready > len(seq._text) and text.startswith(seq._text):
            seq.out.put(text[len(seq._text):ready])
            seq._text = text[:ready]
        return reason

    def _decoded(self, seq: Sequence, final: bool) -> str | None:
        """The sequence's whole text so far, decoding only its last few tokens (a
        decode of every token at each step would make a long answer quadratic); None
        while its last character is partial (unless ``final``)."""
        before = self.model._decode(seq.tokens[seq._prefix:seq._read])
        now = self.model._decode(seq.tokens[seq._prefix:])
        if now.endswith(PARTIAL) and not final:
            return None
        seq._made += now[len(before):]
        seq._prefix, seq._read = seq._read, len(seq.tokens)
        return seq._made

    def _leave(self, gone: list[Sequence]) -> None:
        if not gone:
            return
        with self.cond:
            self.running = [s for s in self.running if s not in gone]
        for seq in gone:
            try:
                self.model._release(seq)
            except Exception:  # noqa: BLE001 - one sequence's cleanup stops no other
                log.exception("releasing sequence %d failed", seq.id)
