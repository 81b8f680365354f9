#!/usr/bin/env python
"""OpenAI conformance, ours beside LitServe's OpenAISpec: the official ``openai`` client,
the same cases against each, a pass count each.

    bash bench/setup_lit_llm.sh                      # once: LitServe's venv
    python bench/openai_conformance_peer.py [--json PATH] [--verbose]

The cases are those of tests/openai/test_conformance.py (chat, streams, include_usage,
completions, the model list, embeddings, errors with their statuses, types and
``Retry-After``, the async client), written again here as small functions, each
returning pass or fail with its reason. Where a test of ours checks what only our
gateway defines, the case checks what OpenAI's API defines instead:

* ``answer_carries_a_request_id``: an ``x-request-id`` header (ours also makes it the
  completion's id);
* ``n_above_one_two_choices_or_400``: ``n=2`` answers two choices or a 400 on ``n``
  (ours refuses it; OpenAI's API answers two);
* the embeddings cases replace "an endpoint without embeddings is 502": a toy
  embedding (words hashed into 8 floats) on each side, as floats and as base64 (the
  client's default);
* the model list names ``toy_embed`` where ours names ``echo``.

The systems:

* ours: ``run_gateway.py`` of this checkout with ``API_KEYS`` on, ``toy_llm``
  (endpoints/toy_llm.py), ``toy_embed`` (bench/peers_openai/toy_embed.py) and the alias
  ``toy``; the key is made through ``POST /keys`` with the admin token, as are the
  scoped and the rate-limited keys of their cases;
* LitServe: bench/peers_openai/lit_toy.py in LitServe's venv: toy_llm's behaviour in a
  LitAPI behind ``OpenAISpec``, the toy embedding behind ``OpenAIEmbeddingSpec``, a
  bearer key checked by ``LitAPI.authorize``. LitServe has no per-key scopes or limits:
  those cases fail there as not offered.

The exit status is 0 when the run went through (the pass counts are reported, not
judged), 1 when a process was left behind, 2 when a server could not be started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
from openai_peer_common import (
    PEERS,
    REPO,
    BenchError,
    Server,
    admin,
    checkout,
    lit,
    log,
    ours,
    poll,
    wait_gateway_ready,
)

HELLO = [{"role": "user", "content": "the quick brown fox jumps"}]
ANSWER = "the quick brown fox jumps"
CHAT, ALIAS, EMBED = "toy_llm", "toy", "toy_embed"


@dataclass
class Target:
    """A system under test: where it is, its key, and how to make other keys (or None)."""

    label: str
    server: Server
    key: str
    make_key: Callable[..., str] | None

    @property
    def v1(self) -> str:
        return self.server.base + "/v1"

    def client(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.v1, api_key=key or self.key, max_retries=0, timeout=30)

    def aclient(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.v1, api_key=self.key, max_retries=0, timeout=30)


@dataclass
class Verdict:
    ok: bool
    reason: str = ""


def verdict(problems: list[str]) -> Verdict:
    return Verdict(not problems, "; ".join(problems))


def want(problems: list[str], cond: bool, what: str) -> None:
    if not cond:
        problems.append(what)


def chat(client: openai.OpenAI, **kw: Any):
    return client.chat.completions.create(model=kw.pop("model", CHAT),
                                          messages=kw.pop("messages", HELLO), **kw)


def openai_error_type(exc: openai.APIStatusError) -> Any:
    """The ``type`` of an error body in OpenAI's shape (the client unwraps ``error``)."""
    return exc.body.get("type") if isinstance(exc.body, dict) else None


def raises(problems: list[str], kind: type[openai.APIStatusError], call: Callable[[], Any],
           what: str) -> openai.APIStatusError | None:
    """``call()`` must raise ``kind``; the exception, or None (a problem noted)."""
    try:
        got = call()
    except kind as exc:
        return exc
    except openai.APIStatusError as exc:
        problems.append(f"{what}: {exc.status_code} {type(exc).__name__}, not {kind.__name__}"
                        f" ({str(exc.body)[:80]})")
        return None
    problems.append(f"{what}: answered without an error ({str(got)[:80]})")
    return None


def shape(problems: list[str], exc: openai.APIStatusError | None, type_: str) -> None:
    if exc is not None and openai_error_type(exc) != type_:
        problems.append(f"error body not OpenAI's {type_!r}: {str(exc.body)[:100]}")


def text_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


CASES: list[Callable[[Target], Verdict]] = []


def case(fn: Callable[[Target], Verdict]) -> Callable[[Target], Verdict]:
    CASES.append(fn)
    return fn


# -- chat ----------------------------------------------------------------------------------
@case
def chat_answers_the_prompt_with_usage(t: Target) -> Verdict:
    p: list[str] = []
    with t.client() as c:
        done = chat(c, temperature=0)
    want(p, done.object == "chat.completion", f"object {done.object!r}")
    want(p, done.model == CHAT, f"model {done.model!r}")
    want(p, done.id.startswith("chatcmpl-"), f"id {done.id!r}")
    want(p, len(done.choices) == 1, f"{len(done.choices)} choices")
    choice = done.choices[0]
    want(p, choice.message.role == "assistant", f"role {choice.message.role!r}")
    want(p, choice.message.content == ANSWER, f"content {choice.message.content!r}")
    want(p, choice.finish_reason == "stop", f"finish_reason {choice.finish_reason!r}")
    usage = done.usage and (done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.total_tokens)
    want(p, usage == (5, 5, 10), f"usage {usage}")
    return verdict(p)


@case
def max_tokens_ends_with_length(t: Target) -> Verdict:
    p: list[str] = []
    with t.client() as c:
        done = chat(c, temperature=0, max_tokens=2)
    want(p, done.choices[0].message.content == "the quick", f"content {done.choices[0].message.content!r}")
    want(p, done.choices[0].finish_reason == "length", f"finish_reason {done.choices[0].finish_reason!r}")
    want(p, done.usage.completion_tokens == 2, f"completion_tokens {done.usage.completion_tokens}")
    return verdict(p)


@case
def max_completion_tokens_is_taken_too(t: Target) -> Verdict:
    p: list[str] = []
    with t.client() as c:
        done = chat(c, temperature=0, max_completion_tokens=3)
    want(p, done.choices[0].message.content == "the quick brown",
         f"content {done.choices[0].message.content!r}")
    want(p, done.choices[0].finish_reason == "length", f"finish_reason {done.choices[0].finish_reason!r}")
    return verdict(p)


@case
def every_message_counts_in_the_prompt(t: Target) -> Verdict:
    p: list[str] = []
    with t.client() as c:
        done = chat(c, messages=[{"role": "system", "content": "be brief"}, *HELLO], temperature=0)
    want(p, done.usage.prompt_tokens == 8, f"prompt_tokens {done.usage.prompt_tokens}, not 8")
    want(p, done.choices[0].message.content == ANSWER, f"content {done.choices[0].message.content!r}")
    return verdict(p)


@case
def content_parts_are_joined(t: Target) -> Verdict:
    p: list[str] = []
    messages = [{"role": "user", "content": [{"type": "text", "text": "one two "},
                                             {"type": "text", "text": "three"}]}]
    with t.client() as c:
        got = chat(c, messages=messages, temperature=0).choices[0].message.content
    want(p, got == "one two three", f"content {got!r}")
    return verdict(p)


@case
def stop_sequence_ends_the_answer(t: Target) -> Verdict:
    p: list[str] = []
    with t.client() as c:
        done = chat(c, temperature=0, stop=["fox"])
    want(p, done.choices[0].message.content == "the quick brown ",
         f"content {done.choices[0].message.content!r}")
    want(p, done.choices[0].finish_reason == "stop", f"finish_reason {done.choices[0].finish_reason!r}")
    return verdict(p)


@case
def seed_repeats_a_sampled_answer(t: Target) -> Verdict:
    p: list[str] = []
    with t.client() as c:
        def sampled(seed: int):
            return chat(c, temperature=1, seed=seed, max_tokens=20, extra_body={"ignore_eos": True})
        first, again, other = sampled(7), sampled(7), sampled(8)
    want(p, first.choices[0].message.content == again.choices[0].message.content,
         "the same seed gave another answer")
    want(p, first.choices[0].message.content != other.choices[0].message.content,
         "another seed gave the same answer")
    want(p, first.usage.completion_tokens == 20, f"completion_tokens {first.usage.completion_tokens}, not 20")
    return verdict(p)


@case
def ignore_eos_generates_max_tokens(t: Target) -> Verdict:
    p: list[str] = []
    with t.client() as c:
        done = chat(c, temperature=0, max_tokens=12, extra_body={"ignore_eos": True})
    want(p, done.usage.completion_tokens == 12, f"completion_tokens {done.usage.completion_tokens}")
    want(p, done.choices[0].finish_reason == "length", f"finish_reason {done.choices[0].finish_reason!r}")
    return verdict(p)


@case
def alias_names_the_model(t: Target) -> Verdict:
    p: list[str] = []
    with t.client() as c:
        done = chat(c, model=ALIAS, temperature=0)
    want(p, done.model == ALIAS, f"model {done.model!r}")
    want(p, done.choices[0].message.content == ANSWER, f"content {done.choices[0].message.content!r}")
    return verdict(p)


@case
def answer_carries_a_request_id(t: Target) -> Verdict:
    p: list[str] = []
    with t.client() as c:
        raw = c.chat.completions.with_raw_response.create(model=CHAT, messages=HELLO)
        raw.parse()
    want(p, raw.headers.get("content-type", "").startswith("application/json"),
         f"content-type {raw.headers.get('content-type')!r}")
    want(p, bool(raw.headers.get("x-request-id")), "no x-request-id header")
    return verdict(p)


# -- streams -------------------------------------------------------------------------------
@case
def stream_deltas_make_the_answer(t: Target) -> Verdict:
    p: list[str] = []
    with t.client() as c:
        chunks = list(chat(c, temperature=0, stream=True))
    want(p, all(x.object == "chat.completion.chunk" for x in chunks), "a chunk of another object")
    want(p, bool(chunks) and bool(chunks[0].choices) and chunks[0].choices[0].delta.role == "assistant",
         "the first delta has no assistant role")
    want(p, text_of(chunks) == ANSWER, f"text {text_of(chunks)!r}")
    reasons = [x.choices[0].finish_reason if x.choices else "-" for x in chunks]
    want(p, reasons == [None] * (len(chunks) - 1) + ["stop"], f"finish reasons {reasons}")
    want(p, all(x.usage is None for x in chunks), "a usage chunk though include_usage was not asked")
    want(p, len({x.id for x in chunks}) == 1, f"{len({x.id for x in chunks})} ids in one stream")
    return verdict(p)


@case
def stream_chunks_hold_whole_tokens(t: Target) -> Verdict:
    p: list[str] = []
    with t.client() as c:
        chunks = list(chat(c, temperature=0, stream=True, max_tokens=4))
    parts = [x.choices[0].delta.content for x in chunks if x.choices and x.choices[0].delta.content]
    want(p, "".join(parts) == "the quick brown fox", f"text {''.join(parts)!r}")
    want(p, all(part.strip() and not part.endswith(" ") for part in parts), f"parts {parts}")
    last = chunks[-1].choices[0].finish_reason if chunks and chunks[-1].choices else None
    want(p, last == "length", f"last finish_reason {last!r}")
    return verdict(p)


@case
def include_usage_ends_with_a_usage_chunk(t: Target) -> Verdict:
    p: list[str] = []
    with t.client() as c:
        chunks = list(chat(c, temperature=0, stream=True, stream_options={"include_usage": True}))
    last = chunks[-1]
    want(p, last.choices == [], f"the usage chunk has {len(last.choices)} choices")
    usage = last.usage and (last.usage.prompt_tokens, last.usage.completion_tokens)
    want(p, usage == (5, 5), f"usage {usage}")
    want(p, all(x.usage is None for x in chunks[:-1]), "usage before the last chunk")
    return verdict(p)


@case
def stream_closed_early_is_fine_for_the_next_call(t: Target) -> Verdict:
    p: list[str] = []
    with t.client() as c:
        with chat(c, temperature=0, stream=True, max_tokens=200, extra_body={"ignore_eos": True}) as s:
            first = next(iter(s))
            want(p, bool(first.choices) and first.choices[0].delta.role == "assistant",
                 "the first delta has no assistant role")
        got = chat(c, temperature=0).choices[0].message.content
    want(p, got == ANSWER, f"the next call answered {got!r}")
    return verdict(p)


# -- completions, models, embeddings -------------------------------------------------------
@case
def completion_answers_text(t: Target) -> Verdict:
    p: list[str] = []
    with t.client() as c:
        done = c.completions.create(model=CHAT, prompt="alpha beta gamma", temperature=0)
    want(p, done.object == "text_completion", f"object {done.object!r}")
    want(p, done.id.startswith("cmpl-"), f"id {done.id!r}")
    want(p, done.choices[0].text == "alpha beta gamma", f"text {done.choices[0].text!r}")
    want(p, (done.usage.prompt_tokens, done.usage.completion_tokens) == (3, 3), f"usage {done.usage}")
    return verdict(p)


@case
def completion_streams(t: Target) -> Verdict:
    p: list[str] = []
    with t.client() as c:
        chunks = list(c.completions.create(model=CHAT, prompt="alpha beta gamma", temperature=0,
                                           stream=True))
    text = "".join(x.choices[0].text for x in chunks if x.choices)
    want(p, text == "alpha beta gamma", f"text {text!r}")
    want(p, chunks[-1].choices[0].finish_reason == "stop", "the last chunk does not say stop")
    return verdict(p)


@case
def completion_stream_usage(t: Target) -> Verdict:
    p: list[str] = []
    with t.client() as c:
        chunks = list(c.completions.create(model=CHAT, prompt="alpha beta", temperature=0, stream=True,
                                           stream_options={"include_usage": True}))
    want(p, chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 4,
         f"usage {chunks[-1].usage}")
    want(p, chunks[-1].choices == [], "the usage chunk has choices")
    return verdict(p)


@case
def models_list_names_the_models(t: Target) -> Verdict:
    p: list[str] = []
    with t.client() as c:
        ids = {m.id for m in c.models.list()}
    want(p, {CHAT, ALIAS, EMBED} <= ids, f"ids {sorted(ids)}")
    return verdict(p)


@case
def models_list_only_what_a_key_may_call(t: Target) -> Verdict:
    if t.make_key is None:
        return Verdict(False, "no per-key scopes (not offered)")
    with t.client(t.make_key(ENDPOINTS=[CHAT])) as c:
        ids = {m.id for m in c.models.list()}
    return verdict([] if ids == {CHAT, ALIAS} else [f"ids {sorted(ids)}"])


@case
def embeddings_as_floats(t: Target) -> Verdict:
    p: list[str] = []
    with t.client() as c:
        done = c.embeddings.create(model=EMBED, input=["alpha beta", "gamma"], encoding_format="float")
    want(p, done.object == "list", f"object {done.object!r}")
    want(p, [d.index for d in done.data] == [0, 1], f"indices {[d.index for d in done.data]}")
    want(p, all(d.object == "embedding" and len(d.embedding) == 8 for d in done.data),
         "not two embeddings of 8 floats")
    want(p, done.model == EMBED, f"model {done.model!r}")
    want(p, done.usage.prompt_tokens == 3, f"prompt_tokens {done.usage.prompt_tokens}")
    return verdict(p)


@case
def embeddings_as_base64(t: Target) -> Verdict:
    """The client's default: it asks for base64 and decodes it."""
    p: list[str] = []
    with t.client() as c:
        packed = c.embeddings.create(model=EMBED, input="alpha beta").data[0].embedding
        floats = c.embeddings.create(model=EMBED, input="alpha beta",
                                     encoding_format="float").data[0].embedding
    want(p, len(packed) == 8 and all(abs(a - b) < 1e-6 for a, b in zip(packed, floats, strict=False)),
         "base64 vector differs from the floats")
    return verdict(p)


# -- errors --------------------------------------------------------------------------------
@case
def no_key_is_401(t: Target) -> Verdict:
    p: list[str] = []
    with t.client("unused") as c:
        exc = raises(p, openai.AuthenticationError, lambda: chat(
            c, extra_headers={"Authorization": openai.omit}), "no key")
    shape(p, exc, "authentication_error")
    return verdict(p)


@case
def wrong_key_is_401(t: Target) -> Verdict:
    p: list[str] = []
    with t.client("bis_wrong") as c:
        exc = raises(p, openai.AuthenticationError, lambda: chat(c), "a wrong key")
    shape(p, exc, "authentication_error")
    return verdict(p)


@case
def unknown_model_is_404(t: Target) -> Verdict:
    p: list[str] = []
    with t.client() as c:
        exc = raises(p, openai.NotFoundError, lambda: chat(c, model="no-such-model"), "unknown model")
    if exc is not None:
        want(p, exc.code == "model_not_found", f"code {exc.code!r}")
        want(p, isinstance(exc.body, dict) and exc.body.get("param") == "model", "param is not model")
    return verdict(p)


@case
def out_of_range_temperature_is_400(t: Target) -> Verdict:
    p: list[str] = []
    with t.client() as c:
        exc = raises(p, openai.BadRequestError, lambda: chat(c, temperature=5), "temperature 5")
    shape(p, exc, "invalid_request_error")
    if exc is not None:
        want(p, isinstance(exc.body, dict) and exc.body.get("param") == "temperature",
             "param is not temperature")
    return verdict(p)


@case
def n_above_one_two_choices_or_400(t: Target) -> Verdict:
    with t.client() as c:
        try:
            done = chat(c, temperature=0, n=2)
        except openai.BadRequestError as exc:
            ok = isinstance(exc.body, dict) and exc.body.get("param") == "n"
            return Verdict(ok, "" if ok else f"400 without param n: {str(exc.body)[:80]}")
    texts = [ch.message.content for ch in done.choices]
    indices = [ch.index for ch in done.choices]
    ok = texts == [ANSWER, ANSWER] and indices == [0, 1]
    return Verdict(ok, "" if ok else f"choices {indices} {texts}")


@case
def no_messages_is_400(t: Target) -> Verdict:
    p: list[str] = []
    with t.client() as c:
        exc = raises(p, openai.BadRequestError, lambda: chat(c, messages=[]), "no messages")
    shape(p, exc, "invalid_request_error")
    return verdict(p)


@case
def endpoint_refusal_is_400(t: Target) -> Verdict:
    p: list[str] = []
    with t.client() as c:
        exc = raises(p, openai.BadRequestError, lambda: chat(c, max_tokens=10 ** 6), "max_tokens 10**6")
    shape(p, exc, "invalid_request_error")
    if exc is not None:
        want(p, "MAX_TOKENS" in exc.message, f"message {exc.message[:80]!r}")
    return verdict(p)


@case
def key_outside_its_scope_is_403(t: Target) -> Verdict:
    if t.make_key is None:
        return Verdict(False, "no per-key scopes (not offered)")
    p: list[str] = []
    with t.client(t.make_key(ENDPOINTS=[EMBED])) as c:
        exc = raises(p, openai.PermissionDeniedError, lambda: chat(c), "a key for another model")
    shape(p, exc, "permission_error")
    return verdict(p)


@case
def rate_limited_key_is_429_with_retry_after(t: Target) -> Verdict:
    if t.make_key is None:
        return Verdict(False, "no per-key rate limits (not offered)")
    p: list[str] = []
    with t.client(t.make_key(RATE="1/minute", BURST=1)) as c:
        chat(c)
        exc = raises(p, openai.RateLimitError, lambda: chat(c), "a second call within the minute")
    shape(p, exc, "rate_limit_error")
    if exc is not None:
        retry = exc.response.headers.get("retry-after", "")
        want(p, retry.isdigit() and int(retry) >= 1, f"Retry-After {retry!r}")
    return verdict(p)


@case
def get_on_a_post_route_is_405(t: Target) -> Verdict:
    p: list[str] = []
    resp = httpx.get(t.v1 + "/chat/completions", headers={"Authorization": f"Bearer {t.key}"})
    want(p, resp.status_code == 405, f"status {resp.status_code}")
    want(p, "POST" in resp.headers.get("allow", ""), f"Allow {resp.headers.get('allow')!r}")
    try:
        type_ = resp.json()["error"]["type"]
    except (ValueError, KeyError, TypeError):
        type_ = None
    want(p, type_ == "invalid_request_error", f"error body not OpenAI's: {resp.text[:80]}")
    return verdict(p)


# -- the async client ----------------------------------------------------------------------
@case
def async_chat(t: Target) -> Verdict:
    async def go():
        async with t.aclient() as ai:
            return await ai.chat.completions.create(model=CHAT, messages=HELLO, temperature=0)
    got = asyncio.run(go()).choices[0].message.content
    return verdict([] if got == ANSWER else [f"content {got!r}"])


@case
def async_stream(t: Target) -> Verdict:
    async def go():
        async with t.aclient() as ai:
            s = await ai.chat.completions.create(model=CHAT, messages=HELLO, temperature=0, stream=True)
            return [x async for x in s]
    got = text_of(asyncio.run(go()))
    return verdict([] if got == ANSWER else [f"text {got!r}"])


@case
def async_calls_at_once(t: Target) -> Verdict:
    async def go():
        async with t.aclient() as ai:
            return await asyncio.gather(*[
                ai.chat.completions.create(model=CHAT, temperature=0,
                                           messages=[{"role": "user", "content": f"word{i} next"}])
                for i in range(8)])
    got = [a.choices[0].message.content for a in asyncio.run(go())]
    want_ = [f"word{i} next" for i in range(8)]
    return verdict([] if got == want_ else [f"answers {got}"])


@case
def async_errors(t: Target) -> Verdict:
    async def go():
        async with t.aclient() as ai:
            await ai.chat.completions.create(model="nope", messages=HELLO)
    p: list[str] = []
    raises(p, openai.NotFoundError, lambda: asyncio.run(go()), "unknown model, async")
    return verdict(p)


# -- running -------------------------------------------------------------------------------
def run_cases(t: Target, verbose: bool) -> list[dict[str, Any]]:
    out = []
    for fn in CASES:
        started = time.perf_counter()
        try:
            v = fn(t)
        except Exception as exc:  # noqa: BLE001 - a case that raised failed, with the reason
            v = Verdict(False, f"{type(exc).__name__}: {str(exc)[:160]}")
        out.append({"case": fn.__name__, "pass": v.ok, "reason": v.reason,
                    "ms": round(1000 * (time.perf_counter() - started), 1)})
        if verbose:
            log(f"  {t.label:8s} {'pass' if v.ok else 'FAIL'} {fn.__name__} {v.reason}")
    return out


def start_ours(workdir: Path, timeout: float) -> Target:
    server = ours(workdir / "ours", {
        "API_KEYS": True, "GATEWAY_WORKERS": 1, "MODEL_ALIASES": {ALIAS: CHAT},
        "CONFIG_ENDPOINTS": {CHAT: {"NR_WORKERS": 1}, EMBED: {"NR_WORKERS": 1}}},
        [REPO / "endpoints" / "toy_llm.py", PEERS / "toy_embed.py"])
    try:
        wait_gateway_ready(server, [CHAT, EMBED], timeout)
    except BenchError:
        server.stop()
        raise

    def make_key(**fields: Any) -> str:
        resp = admin(server, "POST", "/keys", {"TENANT": "acme", **fields})
        if resp.status_code != 201:
            raise BenchError(f"POST /keys answered {resp.status_code}: {resp.text[:200]}")
        return str(resp.json()["KEY"])

    return Target("ours", server, make_key(), make_key)


def start_litserve(workdir: Path, timeout: float) -> Target:
    key = "lit-" + os.urandom(12).hex()
    server = lit(workdir / "litserve", "lit_toy.py", env={"LIT_TOY_API_KEY": key})
    target = Target("litserve", server, key, None)

    def answers() -> bool:
        with target.client() as c:
            return chat(c, temperature=0).choices[0].message.content == ANSWER
    try:
        poll("litserve answers a chat", answers, timeout, interval=0.5, alive=server.check_alive)
    except BenchError:
        server.stop()
        raise
    return target


def markdown(results: dict[str, Any]) -> str:
    labels = list(results["systems"])
    rows = {label: {r["case"]: r for r in results["systems"][label]["cases"]} for label in labels}
    lines = ["| case | " + " | ".join(labels) + " |", "| --- |" + " :---: |" * len(labels)]
    for fn in CASES:
        cells = []
        for label in labels:
            r = rows[label][fn.__name__]
            cells.append("pass" if r["pass"] else "FAIL: " + r["reason"][:70].replace("|", "\\|"))
        lines.append(f"| {fn.__name__} | " + " | ".join(cells) + " |")
    lines.append("| **passed** | " + " | ".join(
        f"**{results['systems'][label]['passed']} / {len(CASES)}**" for label in labels) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--timeout", type=float, default=120, help="seconds each server may take to start")
    p.add_argument("--verbose", action="store_true", help="print each case as it runs")
    args = p.parse_args(argv)
    results: dict[str, Any] = {"cases": len(CASES), "checkout": checkout(), "systems": {},
                               "leftover_processes": {}}
    with tempfile.TemporaryDirectory(prefix="bis-openai-conf-") as tmp:
        for start in (start_ours, start_litserve):
            try:
                target = start(Path(tmp), args.timeout)
            except BenchError as exc:
                log(f"openai_conformance_peer: {exc}")
                return 2
            try:
                cases = run_cases(target, args.verbose)
            finally:
                results["leftover_processes"][target.label] = target.server.stop()
            passed = sum(r["pass"] for r in cases)
            results["systems"][target.label] = {
                "passed": passed, "failed": [r["case"] for r in cases if not r["pass"]], "cases": cases}
            log(f"{target.label}: {passed} / {len(CASES)} passed")
    print(json.dumps(results, indent=2))
    print()
    print(markdown(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    left = {k: v for k, v in results["leftover_processes"].items() if v}
    if left:
        log(f"FAIL: processes left behind: {left}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
