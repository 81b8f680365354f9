"""The contract between the OpenAI routes of the front and a generative endpoint.

``POST /v1/chat/completions`` and ``POST /v1/completions`` become a ``/run`` of the
endpoint the request's ``model`` names, with this body::

    {"SIGNATURE": "chat", "MESSAGES": [{"role": "user", "content": "..."}],   # chat
     "PROMPT": "...",                                                         # completions
     "MAX_TOKENS": 64, "TEMPERATURE": 0.7, "TOP_P": 1.0, "STOP": ["\\n"], "SEED": 1,
     "IGNORE_EOS": false, "MIN_TOKENS": 0}

(absent fields take the defaults of :class:`GenerationParams`). The endpoint answers
with chunks (a streaming ``_predict``) or one dict, in both cases of this shape:

- ``{"text": "..."}``: text made, one chunk per token or a few;
- the last: ``{"text": "", "finish_reason": "stop" | "length", "prompt_tokens": p,
  "completion_tokens": c, "USAGE": p + c}``, made by :func:`final_chunk`.

``POST /v1/embeddings`` becomes ``{"SIGNATURE": ..., "TEXTS": [...]}``, answered by
``{"embeddings": [[...], ...], "prompt_tokens": n}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# What a request that gives no MAX_TOKENS may generate (docs/openai.md: a budget
# reserves it when the request does not say).
DEFAULT_MAX_TOKENS = 256
MAX_STOP = 4  # stop sequences, as OpenAI's API
MAX_STOP_CHARS = 200
FINISH_REASONS = ("stop", "length")


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters of one generation request, validated."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # keep generating past end-of-sequence (benchmarks; vLLM's name)
    min_tokens: int = 0  # end-of-sequence is ignored before this many tokens

    @classmethod
    def of(cls, inputs: dict[str, Any], max_tokens_cap: int) -> GenerationParams:
        """The parameters of a ``/run`` body; ValueError (a 400) on a bad one."""
        max_tokens = inputs.get("MAX_TOKENS", min(DEFAULT_MAX_TOKENS, max_tokens_cap))
        if not _is_int(max_tokens) or not 1 <= max_tokens <= max_tokens_cap:
            raise ValueError(f"MAX_TOKENS must be an integer from 1 to {max_tokens_cap}")
        temperature = inputs.get("TEMPERATURE", 1.0)
        if not _is_number(temperature) or not 0 <= temperature <= 2:
            raise ValueError("TEMPERATURE must be a number from 0 to 2")
        top_p = inputs.get("TOP_P", 1.0)
        if not _is_number(top_p) or not 0 < top_p <= 1:
            raise ValueError("TOP_P must be a number above 0, at most 1")
        stop = inputs.get("STOP") or []
        if isinstance(stop, str):
            stop = [stop]
        if (not isinstance(stop, list) or len(stop) > MAX_STOP
                or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stop)):
            raise ValueError(f"STOP must be a string or a list of at most {MAX_STOP} "
                             f"non-empty strings of at most {MAX_STOP_CHARS} characters")
        seed = inputs.get("SEED")
        if seed is not None and (not _is_int(seed) or not 0 <= seed < 2 ** 63):
            raise ValueError("SEED must be a non-negative integer")
        ignore_eos = inputs.get("IGNORE_EOS", False)
        if not isinstance(ignore_eos, bool):
            raise ValueError("IGNORE_EOS must be true or false")
        min_tokens = inputs.get("MIN_TOKENS", 0)
        if not _is_int(min_tokens) or not 0 <= min_tokens <= max_tokens:
            raise ValueError("MIN_TOKENS must be an integer from 0 to MAX_TOKENS")
        return cls(max_tokens, float(temperature), float(top_p), tuple(stop), seed,
                   ignore_eos, min_tokens)

    @property
    def greedy(self) -> bool:
        """Whether the answer is deterministic (temperature 0)."""
        return self.temperature == 0


def prompt_of(inputs: dict[str, Any], max_chars: int) -> str | list[dict[str, str]]:
    """A request's ``MESSAGES`` (a chat) or ``PROMPT`` (a completion); ValueError when
    neither is usable or the text passes ``max_chars``."""
    messages = inputs.get("MESSAGES")
    if messages is not None:
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str) for m in messages):
            raise ValueError("MESSAGES must be a non-empty list of {role, content} strings")
        if sum(len(m["content"]) for m in messages) > max_chars:
            raise ValueError(f"MESSAGES hold more than {max_chars} characters")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    prompt = inputs.get("PROMPT")
    if not isinstance(prompt, str):
        raise ValueError("give MESSAGES (a chat) or PROMPT (a string)")
    if len(prompt) > max_chars:
        raise ValueError(f"PROMPT holds more than {max_chars} characters")
    return prompt


def final_chunk(finish_reason: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """The last chunk of a generation: why it ended and the tokens it counted (``USAGE``,
    what a key is charged, is their sum)."""
    if finish_reason not in FINISH_REASONS:
        raise ValueError(f"finish_reason must be one of {FINISH_REASONS}")
    return {"text": "", "finish_reason": finish_reason, "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens, "USAGE": prompt_tokens + completion_tokens}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
