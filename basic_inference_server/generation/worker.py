"""The base class of an endpoint that generates tokens with continuous batching.

A subclass gives the model's three parts; the framework does the rest (the request
fields, sampling bounds, the batch, the ends, the text, cancellation, usage)::

    class ChatWorker(GenerativeWorker):
        eos_token_ids = frozenset({2})

        def _tokenize(self, prompt):        # MESSAGES (a list) or PROMPT (a string)
            return [...]                    # the prompt's token ids
        def _step(self, batch):             # one decode step over the running batch
            return [next_token(seq) for seq in batch]
        def _decode(self, tokens):          # the text of some of a sequence's tokens
            return "..."

``_step`` gets the sequences decoding now (:class:`.engine.Sequence`): one whose
``prefilled`` is False joined since the last step and needs its ``prompt`` run first;
the others need their last token (``seq.tokens[-1]``) run. ``seq.state`` is the
model's own (its cache rows), ``seq.params`` the sampling parameters and ``seq.rng``
a generator seeded with ``SEED``. While ``params.ignore_eos`` holds, or before
``params.min_tokens`` tokens, ``_step`` must not choose an end-of-sequence token (mask
it, as vLLM does). ``_release(seq)`` is called when a sequence leaves.

Settings (the endpoint's ``_CONFIG`` or its configuration): ``MAX_SEQUENCES`` decode
together in one worker process (default 8; more wait their turn), ``MAX_TOKENS_CAP``
(default 4096) and ``MAX_PROMPT_CHARS`` (default 100,000).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..worker import FlaskWorker, running_flag
from .contract import GenerationParams, final_chunk, prompt_of
from .engine import Engine, Finished, Sequence

DEFAULTS = {"MAX_SEQUENCES": 8, "MAX_TOKENS_CAP": 4096, "MAX_PROMPT_CHARS": 100_000}
Prompt = str | list[dict[str, str]]


class GenerativeWorker(FlaskWorker):
    """An endpoint whose ``_predict`` streams the tokens of a shared decode loop."""

    eos_token_ids: frozenset[int] = frozenset()
    _engine: Engine | None = None

    def setting(self, key: str) -> int:
        """A generation setting: the endpoint's, else :data:`DEFAULTS`."""
        return int(self.config_data.get(key, DEFAULTS[key]))

    @property
    def engine(self) -> Engine:
        """This process's decode loop."""
        if self._engine is None:
            self._engine = Engine(self, self.setting("MAX_SEQUENCES"))
        return self._engine

    # -- the model's parts (the subclass's) -----------------------------------------------
    def _tokenize(self, prompt: Prompt) -> list[int]:
        """The token ids of a prompt (a chat's messages, or a string); raise ValueError
        (a 400) when it cannot be served (too long for the model ...)."""
        raise NotImplementedError

    def _step(self, batch: list[Sequence]) -> list[int]:
        """One decode step: the next token of each sequence of ``batch``, in order."""
        raise NotImplementedError

    def _decode(self, tokens: list[int]) -> str:
        """The text of a run of a sequence's generated tokens (the engine decodes the
        last few at each step, not all: keep it a plain decode)."""
        raise NotImplementedError

    def _release(self, seq: Sequence) -> None:
        """A sequence left the batch: free what the model held for it."""

    # -- the hooks, done here ---------------------------------------------------------------
    def _pre_process(self, inputs: dict[str, Any]) -> tuple[list[int], GenerationParams]:
        prompt = prompt_of(inputs, self.setting("MAX_PROMPT_CHARS"))
        params = GenerationParams.of(inputs, self.setting("MAX_TOKENS_CAP"))
        return self._tokenize(prompt), params

    def _predict(self, prep: tuple[list[int], GenerationParams]) -> Iterator[dict[str, Any]]:
        tokens, params = prep
        flag = running_flag()
        seq = self.engine.submit(Sequence(
            tokens, params, gone=(lambda: flag.is_set) if flag is not None else lambda: False,
            expired=flag.expired if flag is not None else lambda: False))
        try:
            for item in seq.texts():
                if isinstance(item, Finished):
                    yield final_chunk(item.reason, item.prompt_tokens, item.completion_tokens)
                else:
                    yield {"text": item}
        finally:
            seq.cancel()  # a client that left, or an error: out of the batch at the next step

    def _post_process(self, pred: Any) -> Any:
        return pred
