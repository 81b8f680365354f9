"""Shadow traffic comparators, the SHADOW setting's validator and HOOK loading."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from basic_inference_server.config import parse_config
from basic_inference_server.errors import ConfigError
from basic_inference_server.traffic.compare import (
    ComparatorError,
    Result,
    agree,
    decode,
    judge,
    same,
    validate_shadow,
    with_defaults,
)
from basic_inference_server.traffic.hooks import Hooks

META = {"ver": "1", "app_ver": "a", "time": "2024-01-01 00:00:00", "host": "h", "server": "s",
        "call_id": 1, "worker_id": "clf@v1:0", "worker_pid": 10, "signature": "ClfWorker:0"}
OTHER_META = {"ver": "1", "app_ver": "a", "time": "2024-01-01 00:00:09", "host": "h2",
              "server": "s", "call_id": 7, "worker_id": "clf@v2:3", "worker_pid": 99,
              "signature": "ClfV2Worker:3", "USAGE": {"tokens": 3}}


def answer(status: int = 200, meta: dict | None = None, **fields) -> tuple[int, bytes]:
    return status, orjson.dumps({**fields, **(meta or META)})


def policy(**keys) -> dict:
    return with_defaults({"VERSION": "v2", **keys})


def test_exact_ignores_the_metadata_of_each_call():
    assert agree(policy(), answer(label="cat", p=[0.1, 0.9]),
                 answer(meta=OTHER_META, label="cat", p=[0.1, 0.9]))


def test_exact_disagrees_on_any_difference_in_the_result():
    assert not agree(policy(), answer(label="cat"), answer(label="dog"))
    assert not agree(policy(), answer(p=0.5), answer(p=0.5000001))
    assert not agree(policy(), answer(label="cat"), answer(label="cat", extra=1))


def test_exact_compares_numbers_by_value_but_never_a_bool_as_a_number():
    assert same({"n": 1}, {"n": 1.0})
    assert not same({"n": True}, {"n": 1})
    assert not same([1, 2], [1, 2, 3])
    assert not same({"a": [1]}, {"a": {"0": 1}})


def test_ignore_drops_top_level_fields_only():
    rule = policy(IGNORE=["latency_ms"])
    assert agree(rule, answer(label="cat", latency_ms=3), answer(label="cat", latency_ms=9))
    assert not agree(rule, answer(x={"latency_ms": 3}), answer(x={"latency_ms": 9}))


def test_different_statuses_always_disagree():
    assert not agree(policy(), answer(200, ERROR="x"), answer(500, ERROR="x"))
    assert judge(policy(), (200, b"{}"), (503, b"{}")) is Result.DISAGREE


def test_numeric_tolerance_is_absolute_or_relative_at_any_depth():
    rule = policy(COMPARE="numeric", TOLERANCE=0.01)
    assert agree(rule, answer(p=[0.10, {"q": 0.5}]), answer(p=[0.105, {"q": 0.509}]))
    assert not agree(rule, answer(p=[0.10, {"q": 0.5}]), answer(p=[0.10, {"q": 0.52}]))
    # Relative for large numbers: 1000 and 1009 are within 1 %.
    assert agree(rule, answer(n=1000), answer(n=1009))
    assert not agree(rule, answer(n=1000), answer(n=1011))
    # Strings and shapes still compare exactly.
    assert not agree(rule, answer(label="cat", n=1), answer(label="dog", n=1))
    assert not agree(rule, answer(p=[1, 2]), answer(p=[1]))


def test_bodies_that_are_not_json_compare_byte_for_byte():
    assert decode(b"\x89PNG") == b"\x89PNG"
    assert agree(policy(COMPARE="numeric"), (200, b"\x89PNG"), (200, b"\x89PNG"))
    assert not agree(policy(), (200, b"\x89PNG"), (200, b"\x89PNH"))
    assert not agree(policy(), (200, b"\x89PNG"), answer())


def test_decoded_bodies_are_accepted_too():
    assert agree(policy(), (200, {"label": "cat", **META}), (200, {"label": "cat", **OTHER_META}))


def test_a_hook_decides_and_gets_the_bodies_without_metadata():
    seen = []

    def hook(primary, shadow):
        seen.append((primary, shadow))
        return primary["label"].lower() == shadow["label"].lower()

    rule = policy(COMPARE="hook", HOOK="cmp:same")
    assert judge(rule, answer(label="Cat"), answer(meta=OTHER_META, label="cat"), hook) \
        is Result.AGREE
    assert seen == [({"label": "Cat"}, {"label": "cat"})]
    assert judge(rule, answer(label="Cat"), answer(label="dog"), hook) is Result.DISAGREE


@pytest.mark.parametrize("hook", [lambda a, b: 1 / 0, lambda a, b: "yes", None])
def test_a_failing_hook_is_a_comparator_error_never_raised(hook):
    rule = policy(COMPARE="hook", HOOK="cmp:same")
    assert judge(rule, answer(label="cat"), answer(label="cat"), hook) is Result.ERROR


@pytest.mark.parametrize("value", [
    None,
    {"VERSION": "v2"},
    {"VERSION": "v2", "FROM": "v1", "FRACTION": 0.25, "COMPARE": "numeric", "TOLERANCE": 0.001,
     "IGNORE": ["latency_ms"]},
    {"VERSION": "v2", "FRACTION": 0, "COMPARE": "hook", "HOOK": "my_cmp:compare"},
])
def test_valid_shadow_settings(value):
    assert validate_shadow(value) is None


@pytest.mark.parametrize(("value", "says"), [
    ([], "object"),
    ({}, "VERSION"),
    ({"VERSION": "v 2"}, "VERSION"),
    ({"VERSION": "v2", "FRACTON": 1}, "unknown keys FRACTON"),
    ({"VERSION": "v2", "FROM": "v2"}, "FROM"),
    ({"VERSION": "v2", "FRACTION": 1.5}, "FRACTION"),
    ({"VERSION": "v2", "FRACTION": True}, "FRACTION"),
    ({"VERSION": "v2", "TOLERANCE": -1}, "TOLERANCE"),
    ({"VERSION": "v2", "TOLERANCE": float("inf")}, "TOLERANCE"),
    ({"VERSION": "v2", "COMPARE": "fuzzy"}, "COMPARE"),
    ({"VERSION": "v2", "COMPARE": "hook"}, "HOOK"),
    ({"VERSION": "v2", "COMPARE": "hook", "HOOK": "../evil:f"}, "HOOK"),
    ({"VERSION": "v2", "COMPARE": "hook", "HOOK": "mod:not-a-name"}, "HOOK"),
    ({"VERSION": "v2", "HOOK": "mod:f"}, "only with COMPARE"),
    ({"VERSION": "v2", "IGNORE": "time"}, "IGNORE"),
])
def test_invalid_shadow_settings_say_what_is_wrong(value, says):
    problem = validate_shadow(value)
    assert problem is not None and says in problem, problem


# -- HOOK loading ------------------------------------------------------------------------
def test_hooks_load_from_the_endpoints_folder_and_reload_when_edited(tmp_path: Path):
    path = tmp_path / "my_cmp.py"
    path.write_text("def compare(a, b):\n    return a == b\n")
    hooks = Hooks(tmp_path)
    assert hooks.get("my_cmp:compare")({"x": 1}, {"x": 1}) is True
    path.write_text("def compare(a, b):\n    return False\n")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert hooks.get("my_cmp:compare")({"x": 1}, {"x": 1}) is False


@pytest.mark.parametrize(("files", "spec", "says"), [
    ({}, "absent:f", "not found"),
    ({"mod.py": "X = 1\n"}, "mod:compare", "no function 'compare'"),
    ({"mod.py": "raise RuntimeError('boom')\n"}, "mod:compare", "boom"),
])
def test_hooks_that_cannot_load_are_comparator_errors(tmp_path, files, spec, says):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    hooks = Hooks(tmp_path)
    with pytest.raises(ComparatorError, match=says):
        hooks.get(spec)
    with pytest.raises(ComparatorError, match=says):  # the failure is kept, not retried
        hooks.get(spec)


def test_a_hook_file_linked_from_outside_the_folder_is_refused(tmp_path: Path):
    outside = tmp_path / "outside.py"
    outside.write_text("def compare(a, b):\n    return True\n")
    folder = tmp_path / "endpoints"
    folder.mkdir()
    (folder / "linked.py").symlink_to(outside)
    with pytest.raises(ComparatorError, match="outside"):
        Hooks(folder).get("linked:compare")


@pytest.mark.parametrize(("shadow", "message"), [
    ({"VERSION": "v2", "FRACTION": 2}, "SHADOW FRACTION must be a number from 0 to 1"),
    ({"VERSION": "v3"}, "SHADOW.VERSION must be one of VERSIONS"),
    ({"VERSION": "v2", "FROM": "v9"}, "SHADOW.FROM must be null or one of VERSIONS"),
])
def test_the_configuration_refuses_a_bad_shadow(shadow, message):
    section = {"SERVER_CLASS": "echo", "VERSIONS": {"v1": {}, "v2": {}}, "SHADOW": shadow}
    with pytest.raises(ConfigError, match=message):
        parse_config({"CONFIG_ENDPOINTS": {"clf": section}})
