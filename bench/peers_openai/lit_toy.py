"""The peer of bench/openai_conformance_peer.py: endpoints/toy_llm.py's behaviour behind
LitServe's OpenAISpec, and a toy embedding behind its OpenAIEmbeddingSpec.

    LIT_TOY_API_KEY=secret $HOME/.cache/bis-peers/lit_llm_venv/bin/python \\
        bench/peers_openai/lit_toy.py --port 8102

``POST /v1/chat/completions`` (LitServe's OpenAISpec, streamed or not): a token is a
word (and one more between two messages, in the prompt's count); the answer is the words
of the last message, one per streamed piece, ending after them, at ``max_tokens``
(``max_completion_tokens``) or before a ``stop`` string (text that may become one
waits); ``temperature`` above 0 draws words from them. The fields are bounded as
toy_llm bounds them (``max_tokens`` 1 to 4096, ``temperature`` 0 to 2, ``top_p`` in
(0, 1], at least one message): a bad one is a 400. The last piece carries the usage.

``POST /v1/embeddings`` (OpenAIEmbeddingSpec): the same words hashed into unit vectors
of 8 floats (bench/peers_openai/toy_embed.py answers the same on our gateway), the
usage counting words.

With ``LIT_TOY_API_KEY`` set, both routes want ``Authorization: Bearer <that key>``
(LitAPI.authorize, LitServe's own way to check a bearer token; LitServe's built-in
``LIT_SERVER_API_KEY`` reads an ``X-API-Key`` header, which OpenAI clients do not send).

What LitServe's request model does not hold is dropped before ``predict``: ``seed``,
vLLM's ``ignore_eos``; the finish reason and the usage chunk are the spec's own.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import random

import litserve as ls
from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

MAX_TOKENS_CAP = 4096
DEFAULT_MAX_TOKENS = 256
DIM = 8
API_KEY = os.environ.get("LIT_TOY_API_KEY")
BEARER = Depends(HTTPBearer(auto_error=False))  # None when no Authorization header


def authorize(auth: HTTPAuthorizationCredentials | None = BEARER):
    if API_KEY and (auth is None or auth.credentials != API_KEY):
        raise HTTPException(status_code=401, detail="a valid API key is needed")


def text_of(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(getattr(part, "text", "") or "" for part in content)


def held_back(text: str, stops: list[str]) -> int:
    """How many characters at the end of ``text`` may start a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                longest = max(longest, n)
                break
    return longest


def vector(text: str) -> list[float]:
    """A unit vector of ``DIM`` floats from the words of ``text`` (toy_embed.py's too)."""
    out = [0.0] * DIM
    for word in text.split():
        digest = hashlib.sha256(word.encode()).digest()
        for i in range(DIM):
            out[i] += digest[i] / 255.0 - 0.5
    norm = math.sqrt(sum(v * v for v in out)) or 1.0
    return [v / norm for v in out]


class ToyChatAPI(ls.LitAPI):
    def setup(self, device):
        self.rng = random.Random()

    def authorize(self, auth: HTTPAuthorizationCredentials | None = BEARER):
        authorize(auth)

    def decode_request(self, request):
        if not request.messages:
            raise HTTPException(400, "messages: at least one message is needed")
        texts = [text_of(m.content) for m in request.messages]
        prompt_tokens = sum(len(t.split()) for t in texts) + len(texts) - 1
        max_tokens = request.max_completion_tokens or request.max_tokens or DEFAULT_MAX_TOKENS
        if not 1 <= max_tokens <= MAX_TOKENS_CAP:
            raise HTTPException(400, f"MAX_TOKENS must be an integer from 1 to {MAX_TOKENS_CAP}")
        temperature = 1.0 if request.temperature is None else request.temperature
        if not 0 <= temperature <= 2:
            raise HTTPException(400, "TEMPERATURE must be a number from 0 to 2")
        top_p = 1.0 if request.top_p is None else request.top_p
        if not 0 < top_p <= 1:
            raise HTTPException(400, "TOP_P must be a number above 0, at most 1")
        stop = request.stop or []
        return {"words": texts[-1].split() or ["<unk>"], "prompt_tokens": prompt_tokens,
                "max_tokens": max_tokens, "greedy": temperature == 0,
                "stop": [stop] if isinstance(stop, str) else list(stop)}

    def predict(self, req):
        words, stops = req["words"], req["stop"]
        made, sent, stopped = [], "", False
        while len(made) < min(req["max_tokens"], len(words)):
            made.append(words[len(made)] if req["greedy"] else self.rng.choice(words))
            text = " ".join(made)
            cut = min((text.find(s) for s in stops if s in text), default=-1)
            if cut >= 0:  # what came before the stop string, and no more
                if cut > len(sent):
                    yield text[len(sent):cut]
                stopped = True
                break
            ready = text[:len(text) - held_back(text, stops)]
            if len(ready) > len(sent):
                yield ready[len(sent):]
                sent = ready
        text = " ".join(made)
        if not stopped and len(text) > len(sent):
            yield text[len(sent):]
        yield {"content": "", "prompt_tokens": req["prompt_tokens"], "completion_tokens": len(made),
               "total_tokens": req["prompt_tokens"] + len(made)}

    def encode_response(self, output):
        for out in output:
            yield {"role": "assistant", **(out if isinstance(out, dict) else {"content": out})}


class ToyEmbedAPI(ls.LitAPI):
    def authorize(self, auth: HTTPAuthorizationCredentials | None = BEARER):
        authorize(auth)

    def decode_request(self, request):
        texts = [request.input] if isinstance(request.input, str) else list(request.input)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise HTTPException(400, "input must be a string or a list of strings")
        return texts

    def predict(self, texts):
        return {"embeddings": [vector(t) for t in texts],
                "prompt_tokens": sum(len(t.split()) for t in texts)}

    def encode_response(self, output):
        return {**output, "total_tokens": output["prompt_tokens"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8102)
    p.add_argument("--log-level", default="warning")
    args = p.parse_args()
    apis = [ToyChatAPI(spec=ls.OpenAISpec()), ToyEmbedAPI(spec=ls.OpenAIEmbeddingSpec())]
    server = ls.LitServer(apis, accelerator="cpu", devices=1, workers_per_device=1)
    server.run(host=args.host, port=args.port, num_api_servers=1, log_level=args.log_level,
               generate_client_file=False)


if __name__ == "__main__":
    main()
