"""The OpenAI-compatible routes: ``/v1/chat/completions``, ``/v1/completions``,
``/v1/embeddings`` and ``/v1/models``.

Each call is authenticated as a ``/run`` is (``Authorization: Bearer <API key>``),
validated (:mod:`.openai_schema`), then made into a ``/run`` of the endpoint or version
its ``model`` names (through ``MODEL_ALIASES``) and handed to the run flow, so keys,
limits, quotas, versions, rollouts, breakers and shadows apply as on ``/run``. The
answer is made into OpenAI's objects (:mod:`.openai_answers`), errors too: on ``/v1``
an error is ``{"error": {"message", "type", "param", "code"}}`` with the status it has
on ``/run`` (``code``: the ``ERROR_TYPE`` there).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from .. import protocol, streams
from ..errors import BadRequest, MethodNotAllowed, NotFound, ServingError, StreamInvalid
from ..generation.contract import DEFAULT_MAX_TOKENS
from ..tenants.metering import TENANT_TOKENS
from ..tenants.token_budget import prompt_bound
from ..wire.message import Answer, Request
from . import openai_answers as answers
from .idempotent_calls import IdempotentCalls
from .openai_schema import ChatRequest, CompletionRequest, EmbeddingRequest, OpenAIRequest, validated
from .routes import RouteTable
from .run_flow import RunFlow
from .tenancy import Tenancy

# Headers of the caller's request not passed to the /run it becomes: the body is new,
# and the stream format is the front's choice.
_DROPPED = frozenset((b"content-length", b"accept", b"content-type"))
_NDJSON = (b"accept", streams.NDJSON_TYPE.encode())
# An answer this large is decoded off the event loop.
DECODE_OFF_LOOP = 256 * 1024


class OpenAIRoutes:
    """The OpenAI routes of one front process."""

    def __init__(self, flow: RunFlow, routes: RouteTable, tenancy: Tenancy,
                 aliases: dict[str, str], max_body: int, calls: IdempotentCalls) -> None:
        self.flow = flow
        self.calls = calls
        self.routes = routes
        self.tenancy = tenancy
        self.aliases = aliases
        self.max_body = max_body

    # The API table's handler names (api_table.Route.native_handler) -> these methods.
    HANDLERS = {"on_v1_chat_completions": "chat", "on_v1_completions": "completions",
                "on_v1_embeddings": "embeddings", "on_v1_models": "models"}

    def handlers(self) -> dict[str, Callable[[Request], Awaitable[Answer]]]:
        """The front's handlers, by the name the API table gives them."""
        return {name: getattr(self, method) for name, method in self.HANDLERS.items()}

    async def chat(self, req: Request) -> Answer:
        """``POST /v1/chat/completions``."""
        return await self._generate(req, ChatRequest)

    async def completions(self, req: Request) -> Answer:
        """``POST /v1/completions``."""
        return await self._generate(req, CompletionRequest)

    async def embeddings(self, req: Request) -> Answer:
        """``POST /v1/embeddings``."""
        try:
            ask = await self._request(req, EmbeddingRequest)
            assert isinstance(ask, EmbeddingRequest)
            return await self._once(req, False, lambda: self._embedded(req, ask))
        except ServingError as err:
            return answers.error_of(err)

    async def _embedded(self, req: Request, ask: EmbeddingRequest) -> Answer:
        try:
            answer = await self._run(req, ask)
            if answer.status >= 400:
                return answers.reshaped_error(answer)
            body = await self._decoded(answer)
            try:
                made = answers.embeddings_answer(body, ask.model, ask.encoding_format == "base64")
            except ValueError as err:
                raise StreamInvalid(f"endpoint {ask.model}: {err}") from None
            return Answer(200, [*answers.JSON_HEADERS, *answers.kept_headers(answer)],
                          orjson.dumps(made))
        except ServingError as err:
            return answers.error_of(err)

    async def models(self, req: Request) -> Answer:
        """``GET /v1/models``: the endpoints, versions and aliases the caller's key may call."""
        try:
            if req.method != "GET":
                raise MethodNotAllowed(f"{req.method} is not allowed on /v1/models; use GET",
                                       allow=("GET",))
            await self._identify(req)
            names = [*self.routes.names(), *self.routes.table().traffic, *self.aliases]
            key = req.key
            if key is not None:
                names = [n for n in names if key.allows(self._target(n).partition("@")[0])]
            return Answer(200, list(answers.JSON_HEADERS),
                          orjson.dumps(answers.model_list(sorted(set(names)))))
        except ServingError as err:
            return answers.error_of(err)

    # -- the parts --------------------------------------------------------------------
    async def _once(self, req: Request, stream: bool,
                    make: Callable[[], Awaitable[Answer]]) -> Answer:
        """The answer ``make`` gives, or, with an Idempotency-Key used before, the one
        kept for it (.idempotent_calls)."""
        claim = await self.calls.begin(req, stream)
        if isinstance(claim, Answer):
            return claim
        answer = await make()
        if claim is not None:
            await self.calls.finish(claim, answer)
        return answer

    async def _generate(self, req: Request, kind: type[OpenAIRequest]) -> Answer:
        try:
            ask = await self._request(req, kind)
            assert isinstance(ask, (ChatRequest, CompletionRequest))
            return await self._once(req, ask.stream, lambda: self._generated(req, ask))
        except ServingError as err:
            return answers.error_of(err)

    async def _generated(self, req: Request, ask: ChatRequest | CompletionRequest) -> Answer:
        ended: Callable[[answers.Generated | None], Awaitable[None]] | None = None
        try:
            ended = await self._budget(req, ask)
            answer = await self._run(req, ask, stream=ask.stream)
            if answer.status >= 400:
                await ended(answers.Generated())  # nothing generated: nothing spent
                return answers.reshaped_error(answer)
            completion = answers.Completion.of(isinstance(ask, ChatRequest), req.request_id,
                                               ask.model, ask.include_usage)
            headers = answers.kept_headers(answer)
            if answer.stream is not None:
                stream, ended = completion.events(answer.stream, ended), None
                return Answer(200, [*answers.SSE_HEADERS, *headers], stream=stream)
            made = answers.Generated()
            body = await self._decoded(answer)
            for chunk in body.get("CHUNKS") or [body]:
                if isinstance(chunk, dict):
                    made.add(chunk)
            await ended(made)
            ended = None
            if ask.stream:  # an endpoint that does not stream: one chunk
                return Answer(200, [*answers.SSE_HEADERS, *headers],
                              stream=completion.replayed(made))
            return Answer(200, [*answers.JSON_HEADERS, *headers],
                          orjson.dumps(completion.whole(made)))
        except ServingError as err:
            return answers.error_of(err)
        finally:
            if ended is not None:  # failed on the way: what it reserved stays spent
                await ended(None)

    async def _budget(self, req: Request, ask: ChatRequest | CompletionRequest
                      ) -> Callable[[answers.Generated | None], Awaitable[None]]:
        """Reserve the request's tokens when its key has a token budget; what to call
        with what it generated once it ended (None: unknown)."""
        key = req.key
        gate = self.tenancy.gate
        hold = None
        if key is not None and key.token_budget and gate is not None:
            if isinstance(ask, ChatRequest):
                texts, messages = [m.text() for m in ask.messages], len(ask.messages)
                most = ask.max_completion_tokens or ask.max_tokens
            else:
                texts, messages, most = [ask.run_fields()["PROMPT"]], 0, ask.max_tokens
            hold = await gate.tokens.reserve(
                key, prompt_bound(texts, messages) + (most or DEFAULT_MAX_TOKENS))
            req.budget = hold

        async def ended(made: answers.Generated | None) -> None:
            if key is not None and made is not None:
                TENANT_TOKENS.labels(key.tenant, "prompt").inc(made.prompt_tokens)
                TENANT_TOKENS.labels(key.tenant, "completion").inc(made.completion_tokens)
            if hold is not None and gate is not None:
                used = made.prompt_tokens + made.completion_tokens if made is not None else None
                await gate.tokens.settle(hold, used)
        return ended

    async def _identify(self, req: Request) -> None:
        """The caller's key (401 first: before the body is read for mistakes)."""
        if not self.tenancy.identify_now(req, internal=False):
            await self.tenancy.identify(req)

    async def _request(self, req: Request, kind: type[OpenAIRequest]) -> OpenAIRequest:
        """The validated body of a POST."""
        if req.method != "POST":
            raise MethodNotAllowed(f"{req.method} is not allowed on {req.path}; use POST",
                                   allow=("POST",))
        await self._identify(req)
        return validated(kind, protocol.parse_body(req.body, self.max_body))

    def _target(self, model: str) -> str:
        """The route a ``model`` names: an alias's target, else itself."""
        return self.aliases.get(model, model)

    async def _run(self, req: Request, ask: OpenAIRequest, stream: bool = False) -> Answer:
        """The ``/run`` a call becomes, through the run flow."""
        target = self._target(ask.model)
        if self.routes.get(target) is None and self.routes.policy(target) is None:
            raise NotFound(f"the model {ask.model!r} does not exist; GET /v1/models lists them",
                           PARAM="model")
        fields: dict[str, Any] = {"SIGNATURE": target, **ask.run_fields()}
        headers = [(k, v) for k, v in req.headers if k not in _DROPPED]
        if stream:
            headers.append(_NDJSON)
        run = dataclasses.replace(req, path="/run", query="", body=protocol.dumps(fields),
                                  headers=headers, budget=req.budget)
        return await self.flow.run(run)

    async def _decoded(self, answer: Answer) -> dict[str, Any]:
        """The JSON object of a whole answer."""
        try:
            if len(answer.body) > DECODE_OFF_LOOP:
                body = await self.flow.off_loop(orjson.loads, answer.body)
            else:
                body = orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            raise StreamInvalid("the endpoint's answer is not JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("the endpoint's answer is not a JSON object")
        return body
