"""Endpoint discovery: the worker class of an endpoint file, and errors that say the fix."""

from __future__ import annotations

import pytest

from basic_inference_server import FlaskWorker
from basic_inference_server.discovery import endpoint_file, expected_class_name, load_worker_class
from basic_inference_server.errors import DiscoveryError
from tests.conftest import FIXTURE_ENDPOINTS, write_endpoint


@pytest.mark.parametrize("module,cls", [
    ("dummy_model_demo1", "DummyModelDemo1Worker"),
    ("dummy_model_demo1-bis", "DummyModelDemo1BisWorker"),
    ("echo", "EchoWorker"),
    ("two__parts_", "TwoPartsWorker"),
    ("torch_mlp", "TorchMlpWorker"),
])
def test_expected_class_name(module, cls):
    assert expected_class_name(module) == cls


def test_seed_demo1_is_found_with_its_config():
    cls, defaults = load_worker_class(FIXTURE_ENDPOINTS, "dummy_model_demo1")
    assert cls.__name__ == "DummyModelDemo1Worker" and issubclass(cls, FlaskWorker)
    # The helper PlaceholderModel class is not mistaken for a worker.
    assert defaults == {"WEIGHT": 0, "BIAS": 0, "PLACEHOLDER_MODEL": True}


def test_seed_demo2_is_found_with_its_config():
    cls, defaults = load_worker_class(FIXTURE_ENDPOINTS, "dummy_model_demo2")
    assert cls.__name__ == "DummyModelDemo2Worker"
    assert defaults == {"WEIGHT": 0, "BIAS": 0}


@pytest.mark.parametrize("module,cls", [
    ("echo", "EchoWorker"), ("slow", "SlowWorker"), ("slow_load", "SlowLoadWorker"),
    ("broken_load", "BrokenLoadWorker"), ("crash", "CrashWorker"), ("bad_pre", "BadPreWorker"),
    ("bad_predict", "BadPredictWorker"), ("download", "DownloadWorker"), ("b64", "B64Worker"),
])
def test_test_workers_are_found(module, cls):
    found, _ = load_worker_class(FIXTURE_ENDPOINTS, module)
    assert found.__name__ == cls


def test_no_class():
    with pytest.raises(DiscoveryError) as info:
        load_worker_class(FIXTURE_ENDPOINTS, "no_class")
    msg = str(info.value)
    assert "no_class.py: no worker class found" in msg
    assert "class NoClassWorker(FlaskWorker)" in msg


def test_two_classes_none_with_the_expected_name():
    with pytest.raises(DiscoveryError) as info:
        load_worker_class(FIXTURE_ENDPOINTS, "two_classes")
    msg = str(info.value)
    assert "several FlaskWorker subclasses (AlphaWorker, BetaWorker)" in msg
    assert "none named TwoClassesWorker" in msg


def test_two_classes_one_with_the_expected_name(tmp_path):
    write_endpoint(tmp_path, "picky", (
        "from basic_inference_server import FlaskWorker\n"
        "class BaseHelperWorker(FlaskWorker):\n    pass\n"
        "class PickyWorker(BaseHelperWorker):\n    pass\n"))
    cls, _ = load_worker_class(tmp_path, "picky")
    assert cls.__name__ == "PickyWorker"


def test_wrong_base_class():
    with pytest.raises(DiscoveryError) as info:
        load_worker_class(FIXTURE_ENDPOINTS, "wrong_base")
    msg = str(info.value)
    assert "class WrongBaseWorker does not derive from FlaskWorker" in msg
    assert "from basic_inference_server import FlaskWorker" in msg


def test_import_error_names_file_and_line():
    path = FIXTURE_ENDPOINTS / "import_error.py"
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1)
                if "IMPORT-LINE" in text)
    with pytest.raises(DiscoveryError) as info:
        load_worker_class(FIXTURE_ENDPOINTS, "import_error")
    msg = str(info.value)
    assert f"import_error.py:{line}" in msg
    assert "ModuleNotFoundError" in msg and "bis_test_module_that_does_not_exist" in msg


def test_syntax_error_names_file_and_line(tmp_path):
    write_endpoint(tmp_path, "typo", "from basic_inference_server import FlaskWorker\n\n"
                                     "class TypoWorker(FlaskWorker)\n    pass\n")
    with pytest.raises(DiscoveryError) as info:
        load_worker_class(tmp_path, "typo")
    assert "typo.py:3" in str(info.value) and "SyntaxError" in str(info.value)


def test_missing_file_lists_what_exists(tmp_path):
    write_endpoint(tmp_path, "alpha", "")
    write_endpoint(tmp_path, "beta", "")
    write_endpoint(tmp_path, "_private", "")
    with pytest.raises(DiscoveryError) as info:
        endpoint_file(tmp_path, "gamma")
    msg = str(info.value)
    assert "gamma.py not found" in msg and "alpha, beta" in msg and "_private" not in msg
    assert "SERVER_CLASS" in msg


def test_config_must_be_a_dict(tmp_path):
    write_endpoint(tmp_path, "cfgless", "from basic_inference_server import FlaskWorker\n"
                                        "_CONFIG = [1]\n"
                                        "class CfglessWorker(FlaskWorker):\n    pass\n")
    with pytest.raises(DiscoveryError, match="_CONFIG must be a dict, got list"):
        load_worker_class(tmp_path, "cfgless")


def test_imported_worker_classes_do_not_count(tmp_path):
    # A helper module beside the endpoint is importable; a worker class imported from it
    # is not one of the endpoint's own classes.
    write_endpoint(tmp_path, "shared_base", "from basic_inference_server import FlaskWorker\n"
                                            "class SharedBaseWorker(FlaskWorker):\n    pass\n")
    write_endpoint(tmp_path, "child_model", "from shared_base import SharedBaseWorker\n"
                                            "class ChildModelWorker(SharedBaseWorker):\n"
                                            "    pass\n")
    cls, defaults = load_worker_class(tmp_path, "child_model")
    assert cls.__name__ == "ChildModelWorker" and defaults == {}
