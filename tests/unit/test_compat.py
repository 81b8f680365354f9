"""The compatibility layer's parts without a gateway: the original's imports, the
configuration it builds, ``run_gateway``'s choice of configuration file."""

from __future__ import annotations

from importlib.metadata import version

import pytest

import basic_inference_server as bis
from basic_inference_server.cli import build_parser, config_path
from basic_inference_server.compat import _configuration, _endpoints_dir
from basic_inference_server.manager import EXIT_CONFIG


def test_the_original_imports_resolve():
    assert {"FlaskGateway", "get_packages", "Logger", "LIB_VER"} <= set(bis.__all__)
    assert bis.LIB_VER == bis.__version__


def test_get_packages_lists_name_eq_version_sorted():
    packs = bis.get_packages()
    assert packs == sorted(packs, key=str.lower) and len(packs) == len(set(packs))
    assert all(p.count("==") == 1 and all(p.split("==")) for p in packs)
    assert f"flask=={version('flask')}" in {p.lower() for p in packs}


@pytest.mark.parametrize("present,wanted", [
    ((), "config_gateway.json"),
    (("config_gateway.json",), "config_gateway.json"),
    (("config_gateway.txt",), "config_gateway.txt"),
    (("config_gateway.json", "config_gateway.txt"), "config_gateway.json"),
])
def test_the_configuration_file_falls_back_to_the_original_name(tmp_path, monkeypatch, present, wanted):
    monkeypatch.chdir(tmp_path)
    for name in present:
        (tmp_path / name).write_text("{}")
    assert config_path(None) == wanted
    assert config_path("other.json") == "other.json"


def test_the_original_flags_name_the_cache_folder():
    args = build_parser().parse_args(["-b", "/srv/app", "-a", "state"])
    assert (args.base_folder, args.cache) == ("/srv/app", "state")
    args = build_parser().parse_args(["--base_folder", "/srv", "--app_folder", "c"])
    assert (args.base_folder, args.cache) == ("/srv", "c")
    args = build_parser().parse_args([])
    assert (args.base_folder, args.cache, args.config) == (".", "_cache", None)


def test_the_constructor_choices_reach_the_configuration():
    raw = {"CONFIG_ENDPOINTS": {"a": {"NR_WORKERS": 2}, "b": {}, "c": {"DISABLED": True}}}
    out = _configuration(raw, ["a", "c", "new"], 7000)
    assert out["FIRST_SERVER_PORT"] == 7000
    assert out["CONFIG_ENDPOINTS"] == {"a": {"NR_WORKERS": 2}, "b": {"DISABLED": True},
                                       "c": {"DISABLED": True}, "new": {}}
    assert raw["CONFIG_ENDPOINTS"]["b"] == {}  # the Logger's config_data is left as it was
    assert _configuration(raw, None, None) == raw


def test_workers_location_may_be_dotted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _endpoints_dir("endpoints") == "endpoints"
    assert _endpoints_dir("app.endpoints") == "app/endpoints"
    (tmp_path / "v1.2").mkdir()
    assert _endpoints_dir("v1.2") == "v1.2"


@pytest.mark.parametrize("kwargs,config", [
    ({"server_execution_path": "/predict"}, "{}"),  # endpoints run on /run only
    ({"workers_location": "no_such_folder"}, "{}"),
    ({}, None),  # no config_gateway.txt
    ({}, '{"GATEWAY_WORKERS": "four"}'),
])
def test_a_gateway_that_cannot_start_exits_with_the_config_code(tmp_path, monkeypatch, kwargs, config):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "endpoints").mkdir()
    if config is not None:
        (tmp_path / "config_gateway.txt").write_text(config)
    log = bis.Logger(config_file="config_gateway.txt")
    with pytest.raises(SystemExit) as info:
        bis.FlaskGateway(log=log, **{"workers_location": "endpoints", **kwargs})
    assert info.value.code == EXIT_CONFIG
