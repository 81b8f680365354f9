"""JWT_ISSUERS is checked at configuration time (tenants/jwt_settings.py)."""

from __future__ import annotations

import pytest

from basic_inference_server.errors import ConfigError
from basic_inference_server.tenants import tenants_spec
from basic_inference_server.tenants.jwt_settings import check_issuers

GOOD = {"ISSUER": "https://id.example", "AUDIENCE": "bis", "JWKS_URL": "https://id.example/jwks"}


def test_a_plain_issuer_passes():
    assert check_issuers([GOOD]) is None
    assert check_issuers([{**GOOD, "JWKS_URL": None, "JWKS_FILE": "/etc/bis/jwks.json"}]) is None
    assert check_issuers([{**GOOD, "JWKS_URL": "http://127.0.0.1:8080/jwks"}]) is None


@pytest.mark.parametrize("change, says", [
    ({"ALGORITHMS": ["HS256"]}, "ALGORITHMS"),
    ({"ALGORITHMS": ["none"]}, "ALGORITHMS"),
    ({"ALGORITHMS": []}, "ALGORITHMS"),
    ({"JWKS_URL": "http://id.example/jwks"}, "https://"),
    ({"JWKS_FILE": "/etc/jwks.json"}, "one of them"),
    ({"JWKS_URL": None}, "one of them"),
    ({"AUDIENCE": None}, "AUDIENCE"),
    ({"LEEWAY": -1}, "LEEWAY"),
    ({"LEEWAY": True}, "LEEWAY"),
    ({"PLANS": {"free": {"RATE": "lots"}}}, "PLANS.free"),
    ({"PLANS": {"free": {"TENANT": "acme"}}}, "PLANS.free"),
    ({"COLOUR": "blue"}, "unknown parts"),
])
def test_what_is_refused(change, says):
    problem = check_issuers([{**GOOD, **change}])
    assert problem is not None and says in problem, problem


def test_an_issuer_given_twice_is_refused():
    assert "twice" in check_issuers([GOOD, GOOD])


def test_tokens_need_api_keys(tmp_path):
    config = {"API_KEYS": False, "JWT_ISSUERS": [GOOD], "LEDGER_POSTGRES": None,
              "TENANTS_REDIS": None, "TENANTS_FAIL_OPEN": False}
    with pytest.raises(ConfigError, match="API_KEYS"):
        tenants_spec(config, tmp_path)
