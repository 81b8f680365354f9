"""The all-MiniLM-L6-v2 embedding endpoint (endpoints/embeddings.py), batched, offline."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.conftest import ROOT, assert_error, assert_ok

QUERY = "A man is playing a guitar."
PARAPHRASE = "Someone is strumming a guitar."
UNRELATED = "The stock market fell sharply today."


@pytest.fixture(scope="module")
def gw(module_gateways, tmp_path_factory):
    endpoints = tmp_path_factory.mktemp("endpoints")
    shutil.copy(ROOT / "endpoints" / "embeddings.py", endpoints)
    return module_gateways({"CONFIG_ENDPOINTS": {"embeddings": {
        "MAX_BATCH_SIZE": 16, "MAX_BATCH_DELAY_MS": 10}}}, endpoints=endpoints, timeout=120)


def test_384_dimension_unit_vectors_and_paraphrase_ranks_first(gw):
    body = assert_ok(gw.run("embeddings", TEXTS=[UNRELATED, PARAPHRASE], QUERY=QUERY, _timeout=60))
    vectors = np.array(body["embeddings"])
    assert vectors.shape == (2, 384) and body["dim"] == 384
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    unrelated, paraphrase = body["similarities"]
    assert paraphrase > unrelated + 0.3, body["similarities"]
    assert body["ranking"] == [1, 0]
    query = np.array(assert_ok(gw.run("embeddings", INPUT_VALUE=QUERY))["embeddings"][0])
    assert np.allclose(vectors @ query, body["similarities"], atol=1e-4)


def test_batched_answers_equal_single_ones(gw):
    texts = [f"sentence number {i} about {'cats' if i % 2 else 'the weather'}" for i in range(24)]
    alone = {t: np.array(assert_ok(gw.run("embeddings", TEXTS=[t]))["embeddings"][0]) for t in texts[:4]}
    with ThreadPoolExecutor(12) as ex:
        answers = list(ex.map(lambda t: gw.run("embeddings", TEXTS=[t]), texts))
    for text, resp in zip(texts, answers, strict=True):
        vec = np.array(assert_ok(resp)["embeddings"][0])
        if text in alone:
            assert np.allclose(vec, alone[text], atol=1e-4)


def test_bad_texts_are_400(gw):
    assert_error(gw.run("embeddings", TEXTS=[]), 400)
    assert_error(gw.run("embeddings", TEXTS=[1, 2]), 400)
    assert_error(gw.run("embeddings", TEXTS=["ok"], QUERY=3), 400)


def test_openai_embeddings_match_run_and_count_tokens(gw):
    """The official client, unchanged: floats and base64 (its default) give /run's vectors."""
    import openai

    texts = [PARAPHRASE, UNRELATED]
    direct = assert_ok(gw.run("embeddings", TEXTS=texts))
    assert direct["prompt_tokens"] == direct["USAGE"] > len(texts)
    with openai.OpenAI(base_url=gw.url("/v1"), api_key="unused", max_retries=0) as client:
        as_floats = client.embeddings.create(model="embeddings", input=texts,
                                             encoding_format="float")
        as_base64 = client.embeddings.create(model="embeddings", input=texts)
        one = client.embeddings.create(model="embeddings", input=QUERY)
    for made in (as_floats, as_base64):
        assert [d.index for d in made.data] == [0, 1]
        assert np.allclose([d.embedding for d in made.data], direct["embeddings"], atol=1e-6)
        assert made.usage.prompt_tokens == made.usage.total_tokens == direct["prompt_tokens"]
    assert len(one.data) == 1 and len(one.data[0].embedding) == 384
