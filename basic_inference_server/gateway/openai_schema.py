"""The bodies of the OpenAI routes, validated with pydantic, and the ``/run`` body each
becomes (the contract of :mod:`..generation`).

Fields OpenAI defines that a generation here cannot honour are refused (``n`` above 1,
``logprobs``, tools); the rest that clients send and that change nothing here (``user``,
``metadata`` ...) are ignored, as OpenAI's own API ignores what it does not use.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import BadRequest
from ..generation.contract import MAX_STOP, MAX_STOP_CHARS

# The most texts one /v1/embeddings request may hold, before the endpoint's own bound.
MAX_INPUTS = 2048
MAX_COUNT = 2 ** 31  # of tokens a request may name (the endpoint bounds it further)
StopText = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
Stop = StopText | Annotated[list[StopText], Field(max_length=MAX_STOP)] | None


class _Body(BaseModel):
    # Strict: "1" is no integer, as the JSON schema written from these models says.
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


class TextPart(_Body):
    """A text part of a message's content (other parts: images, audio ... are refused)."""

    type: Literal["text"]
    text: str


class Message(_Body):
    """One message of a chat."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        """The message's text, its parts joined."""
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(_Body):
    """``stream_options``: whether the stream ends with a usage chunk."""

    include_usage: bool = False


class _Sampling(_Body):
    """What chat and completions share."""

    model: str = Field(min_length=1, max_length=200)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: Stop = None
    seed: int | None = Field(default=None, ge=0, lt=2 ** 63)
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Not OpenAI's: vLLM's names, for benchmarks that need a known length.
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0, le=MAX_COUNT)

    @field_validator("max_tokens", "seed", "n", "min_tokens", mode="before")
    @classmethod
    def _whole(cls, value: Any) -> Any:
        """JSON's integers include 3.0 (JSON Schema says so; JavaScript writes no other)."""
        return int(value) if isinstance(value, float) and value.is_integer() else value

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk (only when asked)."""
        return self.stream_options is not None and self.stream_options.include_usage

    def _sampling(self, max_tokens: int | None) -> dict[str, Any]:
        fields = {"MAX_TOKENS": max_tokens, "TEMPERATURE": self.temperature,
                  "TOP_P": self.top_p, "STOP": self.stop, "SEED": self.seed,
                  "MIN_TOKENS": self.min_tokens or None, "IGNORE_EOS": self.ignore_eos or None}
        return {k: v for k, v in fields.items() if v is not None}


class ChatRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    logprobs: Literal[False] | None = None
    tools: None = None

    @field_validator("max_completion_tokens", mode="before")
    @classmethod
    def _whole_completion(cls, value: Any) -> Any:
        return cls._whole(value)

    def run_fields(self) -> dict[str, Any]:
        """The generation fields of its ``/run`` body."""
        messages = [{"role": m.role, "content": m.text()} for m in self.messages]
        return {"MESSAGES": messages,
                **self._sampling(self.max_completion_tokens or self.max_tokens)}


class CompletionRequest(_Sampling):
    """``POST /v1/completions``: one prompt (a list of one string is taken too)."""

    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    logprobs: None = None
    echo: Literal[False] = False
    suffix: None = None

    def run_fields(self) -> dict[str, Any]:
        """The generation fields of its ``/run`` body."""
        prompt = self.prompt[0] if isinstance(self.prompt, list) else self.prompt
        return {"PROMPT": prompt, **self._sampling(self.max_tokens)}


class EmbeddingRequest(_Body):
    """``POST /v1/embeddings``: texts (token arrays are refused)."""

    model: str = Field(min_length=1, max_length=200)
    input: str | Annotated[list[str], Field(min_length=1, max_length=MAX_INPUTS)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: None = None

    def run_fields(self) -> dict[str, Any]:
        """The fields of its ``/run`` body."""
        return {"TEXTS": [self.input] if isinstance(self.input, str) else self.input}


OpenAIRequest = ChatRequest | CompletionRequest | EmbeddingRequest


def validated(kind: type[OpenAIRequest], body: dict[str, Any]) -> OpenAIRequest:
    """``body`` as a ``kind``; 400 naming the first field at fault."""
    try:
        return kind.model_validate(body)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise BadRequest(f"{where}: {first['msg']}", PARAM=where) from None


def json_schema(kind: type[OpenAIRequest]) -> dict[str, Any]:
    """The JSON schema of a body, its definitions written in place (for the OpenAPI
    document, from the same models that validate)."""
    schema = kind.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return dict(inline(schema))
