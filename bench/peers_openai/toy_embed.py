"""A toy embeddings endpoint of our gateway, for bench/openai_conformance_peer.py: the
words of each text hashed into a unit vector of 8 floats, the same vectors as
``ToyEmbedAPI`` of bench/peers_openai/lit_toy.py (LitServe's side), no model.

``{"SIGNATURE": "toy_embed", "TEXTS": ["...", ...]}`` answers
``{"embeddings": [[8 floats], ...], "prompt_tokens": n}`` (n: the words), so it serves
``POST /v1/embeddings`` (docs/openai.md).
"""

import hashlib
import math

from basic_inference_server import FlaskWorker

DIM = 8


def vector(text):
    out = [0.0] * DIM
    for word in text.split():
        digest = hashlib.sha256(word.encode()).digest()
        for i in range(DIM):
            out[i] += digest[i] / 255.0 - 0.5
    norm = math.sqrt(sum(v * v for v in out)) or 1.0
    return [v / norm for v in out]


class ToyEmbedWorker(FlaskWorker):
    def __init__(self, **kwargs):
        super().__init__(prefix_log="[TOYEMB]", **kwargs)

    def _pre_process(self, inputs):
        texts = inputs.get("TEXTS", inputs.get("INPUT_VALUE"))
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("TEXTS must be a string or a non-empty list of strings")
        return texts

    def _predict(self, texts):
        return [vector(t) for t in texts], sum(len(t.split()) for t in texts)

    def _post_process(self, pred):
        vectors, tokens = pred
        return {"embeddings": vectors, "prompt_tokens": tokens, "USAGE": tokens}
