"""Bearer JWTs from configured issuers (JWT_ISSUERS, tenants/jwt_issuers.py), against a
local issuer whose keys the test makes: what is refused, what the claims grant, and a
key rotation at the issuer picked up without a restart."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.conftest import Gateway, assert_error, assert_ok, wait_until
from tests.tenants.conftest import call, ready

AUDIENCE = "bis-test"


class Issuer:
    """An identity provider of the test's own: its signing keys and its JWKS over HTTP."""

    def __init__(self) -> None:
        self.keys = [RSAKey.generate_key(2048, parameters={"kid": "k1"})]
        self.fetches = 0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                issuer.fetches += 1
                body = json.dumps(issuer.jwks()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.as_dict(private=False) for k in self.keys]}

    def token(self, key: RSAKey | None = None, alg: str = "RS256", **claims: Any) -> str:
        key = key or self.keys[0]
        now = int(time.time())
        payload = {"iss": self.url, "aud": AUDIENCE, "exp": now + 300, "iat": now,
                   "sub": "user-1", "tenant": "acme", "scope": "run:echo", **claims}
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode({"alg": alg, "kid": key.kid}, payload, key)

    def unsigned(self, header: dict[str, Any], secret: bytes | None = None) -> str:
        """A token made by hand: ``alg: none``, or an HMAC with ``secret``."""
        def part(value: dict[str, Any]) -> bytes:
            return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=")
        now = int(time.time())
        signed = part(header) + b"." + part({"iss": self.url, "aud": AUDIENCE, "exp": now + 300,
                                             "tenant": "acme", "scope": "run:echo"})
        if secret is None:
            return (signed + b".").decode()
        mac = hmac.new(secret, signed, hashlib.sha256).digest()
        return (signed + b"." + base64.urlsafe_b64encode(mac).rstrip(b"=")).decode()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    made = Issuer()
    yield made
    made.close()


@pytest.fixture(scope="module")
def gw(module_gateways, issuer) -> Gateway:
    return ready(module_gateways({
        "API_KEYS": True, "GATEWAY_WORKERS": 2,
        "JWT_ISSUERS": [{"ISSUER": issuer.url, "AUDIENCE": AUDIENCE,
                         "JWKS_URL": issuer.url + "/jwks.json", "JWKS_MIN_REFRESH": 0,
                         "JWKS_REFRESH": 2,
                         "PLANS": {"default": {}, "tight": {"RATE": "2/minute", "BURST": 2}}}],
        "CONFIG_ENDPOINTS": {"echo": {"SERVER_CLASS": "echo", "NR_WORKERS": 1},
                             "other": {"SERVER_CLASS": "echo", "NR_WORKERS": 1}}}))


def usage(gw: Gateway, token: str) -> requests.Response:
    return requests.get(gw.url("/usage"), headers={"Authorization": f"Bearer {token}"},
                        timeout=30)


def test_a_valid_token_is_a_key_of_its_tenant(gw, issuer):
    token = issuer.token()
    assert_ok(call(gw, token, "echo", INPUT_VALUE=1))
    mine = assert_ok(usage(gw, token))
    assert mine["TENANT"] == "acme", mine


@pytest.mark.parametrize("case", ["expired", "audience", "none", "hs256_with_public_key",
                                  "unknown_kid", "issuer", "not_yet", "no_exp", "tampered"])
def test_refused_tokens(gw, issuer, case):
    if case == "expired":
        token = issuer.token(exp=int(time.time()) - 3600)
    elif case == "audience":
        token = issuer.token(aud="someone-else")
    elif case == "none":
        token = issuer.unsigned({"alg": "none", "typ": "JWT"})
    elif case == "hs256_with_public_key":
        # The RSA public key (which anyone may fetch) as an HMAC secret.
        token = issuer.unsigned({"alg": "HS256", "kid": "k1", "typ": "JWT"},
                                secret=issuer.keys[0].as_pem(private=False))
    elif case == "unknown_kid":
        token = issuer.token(key=RSAKey.generate_key(2048, parameters={"kid": "stranger"}))
    elif case == "issuer":
        token = issuer.token(iss="https://elsewhere.example")
    elif case == "not_yet":
        token = issuer.token(nbf=int(time.time()) + 3600)
    elif case == "no_exp":
        token = issuer.token(exp=None)
    else:
        head, body, sig = issuer.token().split(".")
        claims = json.loads(base64.urlsafe_b64decode(body + "=="))
        claims["tenant"] = "globex"
        forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        token = f"{head}.{forged}.{sig}"
    body = assert_error(call(gw, token, "echo", INPUT_VALUE=1), 401)
    assert body["ERROR_TYPE"] == "unauthorized", body


def test_the_scope_names_the_endpoints(gw, issuer):
    only_echo = issuer.token()
    assert_ok(call(gw, only_echo, "echo", INPUT_VALUE=1))
    assert assert_error(call(gw, only_echo, "other", INPUT_VALUE=1), 403)["ERROR_TYPE"] == \
        "forbidden"
    assert_ok(call(gw, issuer.token(scope="run:*"), "other", INPUT_VALUE=1))
    assert_ok(call(gw, issuer.token(scope=["run:echo", "run:other"]), "other", INPUT_VALUE=1))
    assert_error(call(gw, issuer.token(scope="profile email"), "echo", INPUT_VALUE=1), 403)


def test_the_plan_sets_the_limits_and_the_tenant_keeps_its_counters(gw, issuer):
    first = issuer.token(tenant="tight_tenant", plan="tight", sub="a")
    assert [call(gw, first, "echo", INPUT_VALUE=i).status_code for i in range(2)] == [200, 200]
    refused = call(gw, first, "echo", INPUT_VALUE=3)
    assert refused.status_code == 429 and refused.headers["Retry-After"], refused.text
    # A new token of the same tenant goes on with the same bucket.
    again = issuer.token(tenant="tight_tenant", plan="tight", sub="b")
    assert call(gw, again, "echo", INPUT_VALUE=4).status_code == 429
    assert_error(call(gw, issuer.token(plan="platinum"), "echo", INPUT_VALUE=1), 403)


def test_a_key_rotation_at_the_issuer_is_picked_up_without_a_restart(gw, issuer):
    assert_ok(call(gw, issuer.token(), "echo", INPUT_VALUE=1))
    old = issuer.keys[0]
    new = RSAKey.generate_key(2048, parameters={"kid": "k2"})
    issuer.keys = [new]  # the issuer rotates: k1 is gone, k2 signs
    fetched = issuer.fetches
    # Every front process reads the JWKS again for the key id it does not hold.
    for _ in range(6):
        assert_ok(call(gw, issuer.token(key=new, sub="rotated"), "echo", INPUT_VALUE=1))
    assert issuer.fetches > fetched
    # Within JWKS_REFRESH every process holds the new set: the retired key signs nothing.
    wait_until(lambda: all(
        call(gw, issuer.token(key=old, sub=f"after-{i}-{time.monotonic()}"), "echo",
             INPUT_VALUE=1).status_code == 401 for i in range(6)),
        timeout=30, message="tokens of the retired key refused")
    issuer.keys = [old, new]


def test_an_api_key_still_works_beside_tokens(gw):
    made = gw.post("/keys", {"TENANT": "keyed"})
    assert made.status_code == 201, made.text
    assert_ok(call(gw, made.json()["KEY"], "echo", INPUT_VALUE=1))


def test_an_issuer_that_does_not_answer_is_a_503_not_a_wait(gateways, issuer):
    from tests.conftest import free_port

    nowhere = f"http://127.0.0.1:{free_port()}"
    gw = ready(gateways({
        "API_KEYS": True, "JWT_ISSUERS": [{"ISSUER": issuer.url, "AUDIENCE": AUDIENCE,
                                           "JWKS_URL": nowhere + "/jwks.json"}],
        "CONFIG_ENDPOINTS": {"echo": {"SERVER_CLASS": "echo", "NR_WORKERS": 1}}}))
    for _ in range(3):  # the first read fails; the next ones do not try again yet
        refused = call(gw, issuer.token(), "echo", INPUT_VALUE=1)
        assert refused.status_code == 503 and refused.headers["Retry-After"], refused.text
        assert refused.json()["ERROR_TYPE"] == "unavailable"
