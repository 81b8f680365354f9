"""Priority classes (tenants/priorities.py): a key's values win over its tenant's, which
win over the defaults; X-Priority only lowers; the settings agree with each other."""

from __future__ import annotations

import pytest

from basic_inference_server.config import ENDPOINT_SETTINGS, parse_config
from basic_inference_server.errors import BadRequest, ConfigError
from basic_inference_server.tenants.priorities import Priorities

CLASSES = ["interactive", "standard", "batch"]
TENANTS = {"gold": {"PRIORITY": "interactive", "WEIGHT": 3}, "bulk": {"PRIORITY": "batch"}}


@pytest.fixture
def priorities() -> Priorities:
    return Priorities(CLASSES, "standard", TENANTS)


def test_the_default_class_and_weight(priorities):
    got = priorities.standing("nobody")
    assert (got.rank, got.name, got.tenant, got.weight) == (1, "standard", "nobody", 1.0)


def test_a_tenants_values_then_a_keys_own_win(priorities):
    assert (priorities.standing("gold").name, priorities.standing("gold").weight) == (
        "interactive", 3.0)
    mine = priorities.standing("gold", "batch", 0.5)
    assert (mine.name, mine.weight) == ("batch", 0.5)


@pytest.mark.parametrize(("tenant", "asked", "expected"), [
    ("nobody", b"batch", "batch"), ("nobody", b"interactive", "standard"),
    ("bulk", b"interactive", "batch"), ("gold", b" standard ", "standard")])
def test_x_priority_only_lowers(priorities, tenant, asked, expected):
    assert priorities.standing(tenant, asked=asked).name == expected


def test_an_unknown_x_priority_is_a_400(priorities):
    with pytest.raises(BadRequest, match="X-Priority"):
        priorities.standing("nobody", asked=b"urgent")


@pytest.mark.parametrize(("extra", "words"), [
    ({"DEFAULT_PRIORITY": "urgent"}, "DEFAULT_PRIORITY"),
    ({"TENANTS": {"a": {"PRIORITY": "urgent"}}}, "TENANTS.a.PRIORITY"),
    ({"TENANTS": {"a": {"WEIGHT": 0}}}, "WEIGHT"),
    ({"TENANTS": {"a": {"SHARE": 1}}}, "PRIORITY"),
    ({"TENANTS": {"9a": {}}}, "customer id"),
    ({"PRIORITY_CLASSES": []}, "1 to 8"),
    ({"PRIORITY_CLASSES": ["a", "a"]}, "distinct"),
    ({"PRIORITY_CLASSES": [f"c{i}" for i in range(9)]}, "1 to 8"),
    ({"FAIR_SLOTS": 0}, None),
    ({"FAIR_BACKLOG_MS": -1}, "FAIR_BACKLOG_MS"),
    ({"FAIR_BACKLOG_MS": 1001}, "FAIR_BACKLOG_MS"),
    ({"FAIR_BACKLOG_MS": float("nan")}, "FAIR_BACKLOG_MS"),
    ({"FAIR_BACKLOG_MS": "2"}, "FAIR_BACKLOG_MS"),
    ({"API_KEYS": True, "JWT_ISSUERS": [{
        "ISSUER": "https://id.example", "AUDIENCE": "bis", "JWKS_FILE": "jwks.json",
        "PLANS": {"pro": {"PRIORITY": "urgent"}}}]}, "JWT_ISSUERS[0].PLANS.pro.PRIORITY"),
])
def test_settings_that_disagree_are_refused(extra, words):
    if extra.keys() & ENDPOINT_SETTINGS.keys():
        raw = {"CONFIG_ENDPOINTS": {"e": {"SERVER_CLASS": "echo", **extra}}}
    else:
        raw = {"CONFIG_ENDPOINTS": {}, **extra}
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert words is None or words in str(info.value), info.value


@pytest.mark.parametrize("backlog", [0, 2.5, 1000])
def test_fair_backlog_ms_takes_a_number_of_ms(backlog):
    config = parse_config({"CONFIG_ENDPOINTS": {"e": {"SERVER_CLASS": "echo",
                                                      "FAIR_BACKLOG_MS": backlog}}})
    assert config.endpoints["e"].settings["FAIR_BACKLOG_MS"] == backlog


def test_classes_of_ones_own_are_taken():
    config = parse_config({"PRIORITY_CLASSES": ["gold", "silver"], "DEFAULT_PRIORITY": "silver",
                           "TENANTS": {"a": {"PRIORITY": "gold", "WEIGHT": 0.5}}})
    assert config["TENANTS"]["a"]["WEIGHT"] == 0.5


def test_a_jwt_plan_may_set_a_class_and_a_weight():
    config = parse_config({"API_KEYS": True, "JWT_ISSUERS": [{
        "ISSUER": "https://id.example", "AUDIENCE": "bis", "JWKS_FILE": "jwks.json",
        "PLANS": {"pro": {"PRIORITY": "interactive", "WEIGHT": 2}}}]})
    assert config["JWT_ISSUERS"][0]["PLANS"]["pro"]["PRIORITY"] == "interactive"
