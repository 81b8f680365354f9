"""The model factory: models from config, environment, customer and request; placement."""

from __future__ import annotations

import re

import pytest

from basic_inference_server.errors import BadRequest
from basic_inference_server.models.factory import ModelFactory, env_models
from basic_inference_server.server.placement import place_worker, visible_devices

ALLOWED = {"base": {}, "extractor": {}, "acme_model": {}, "extra": {}, "env_model": {}}


def factory(**kw):
    kw.setdefault("environ", {})
    return ModelFactory(ALLOWED, **kw)


def test_union_in_order_without_duplicates():
    f = factory(required=["base"], customers={"acme": ["acme_model", "base"]},
                environ={"MODEL_A": "env_model", "MODEL_B": "not_here", "OTHER": "extra"})
    assert f.required({}) == ["base", "env_model"]  # not_here: not declared by this endpoint
    assert f.required({}, "acme") == ["base", "env_model", "acme_model"]
    assert f.required({"models": ["extra", "base"]}, "unknown-customer") == ["base", "env_model", "extra"]


def test_request_models_are_checked_against_the_allow_list():
    with pytest.raises(BadRequest) as info:
        factory().required({"models": ["base", "secret", "other"]})
    assert info.value.status == 400
    assert info.value.details["unknown_models"] == ["secret", "other"]
    assert "secret, other" in info.value.message
    for bad in ("base", [1], {"a": 1}):
        with pytest.raises(BadRequest, match="list of model names"):
            factory().required({"models": bad})


def test_configured_models_must_be_declared():
    with pytest.raises(ValueError, match="nope"):
        factory(required=["nope"])
    with pytest.raises(ValueError, match="ghost"):
        factory(customers={"c": ["ghost"]})


def test_env_models_reads_model_prefix():
    assert env_models({"MODEL_X": "a", "MODEL_Y": "", "XMODEL_Z": "b", "MODEL_W": "c"}) == ["c", "a"]


@pytest.mark.parametrize(("gpus", "slot", "expected"), [
    (None, 3, None), ([], 0, ""), ([0, 1], 0, "0"), ([0, 1], 1, "1"), ([0, 1], 2, "0"),
    ([2, 5, 7], 4, "5"),
])
def test_worker_i_gets_gpu_i_mod_n(gpus, slot, expected):
    env = {"CUDA_VISIBLE_DEVICES": "untouched"}
    assert visible_devices(gpus, slot) == expected
    place_worker(gpus, slot, environ=env)
    assert env["CUDA_VISIBLE_DEVICES"] == ("untouched" if expected is None else expected)


def test_memory_probe_reads_the_placed_gpu_through_nvml(monkeypatch):
    from basic_inference_server.health.gpu import RecordedNvml
    from basic_inference_server.models.memory import GpuProbe, SystemProbe, choose_probe
    from tests.conftest import FIXTURES

    nvml = RecordedNvml.from_file(FIXTURES / "nvml" / "two_gpus.json")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    probe = choose_probe(None, lambda: 0, api=nvml)
    assert isinstance(probe, GpuProbe) and probe.device == "cuda:1"
    mem = nvml.data["devices"][1]["memory"]
    assert probe.sample() == (mem["used"], mem["total"])
    assert nvml.initialised == 0  # every init was shut down
    # Every GPU it was given is checked: the fullest answers (the L4, 93 % used).
    for visible in ("0,1", None):
        if visible is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES")  # unset: every GPU is visible
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        probe = choose_probe(None, lambda: 0, api=nvml)
        assert isinstance(probe, GpuProbe) and probe.device == "cuda:0,1"
        assert probe.sample() == (mem["used"], mem["total"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    h100 = nvml.data["devices"][0]["memory"]
    assert choose_probe(None, lambda: 0, api=nvml).sample() == (h100["used"], h100["total"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert isinstance(choose_probe(None, lambda: 0, api=nvml), SystemProbe)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    no_nvml = RecordedNvml({"init_error": "NVML_ERROR_LIBRARY_NOT_FOUND"})
    assert isinstance(choose_probe(None, lambda: 0, api=no_nvml), SystemProbe)


@pytest.mark.parametrize(("key", "value", "problem"), [
    ("MODEL_MEMORY_THRESHOLD", 1.5, "must be in (0, 1]"),
    ("MODEL_MEMORY_THRESHOLD", 0, "must be in (0, 1]"),
    ("MODELS", {"a": "not an object"}, "must map model names to objects"),
    ("CUSTOMER_MODELS", {"acme": "a"}, "must map customer ids to lists"),
    ("PRELOAD_MODELS", ["a", 1], "must be a list of strings"),
    ("GPUS", [0, -1], "must be a list of GPU indices"),
    ("MAX_BATCH_SIZE", 0, "must be >= 1"),
    ("MODEL_LEASE", 0, "must be >= 0.1"),
])
def test_model_and_batching_settings_are_validated(key, value, problem):
    from basic_inference_server.config import parse_config
    from basic_inference_server.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(problem)) as info:
        parse_config({"CONFIG_ENDPOINTS": {"ep": {key: value}}})
    assert key in str(info.value)
