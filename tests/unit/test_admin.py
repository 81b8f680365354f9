"""Who may call the management API (``check_admin``), without running a server."""

from __future__ import annotations

import pytest

from basic_inference_server.errors import Forbidden, Unauthorized
from basic_inference_server.gateway.management import check_admin, is_loopback

TOKEN = "s3cret-token"


def env(addr, auth=None):
    out = {"REMOTE_ADDR": addr}
    if auth is not None:
        out["HTTP_AUTHORIZATION"] = auth
    return out


@pytest.mark.parametrize("addr,expected", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("10.0.0.7", False),
    ("192.168.1.2", False), ("2001:db8::1", False), ("", False), (None, False),
    ("not-an-ip", False), ("fe80::1%eth0", False),
])
def test_is_loopback(addr, expected):
    assert is_loopback(addr) is expected


@pytest.mark.parametrize("addr", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("token", [None, TOKEN])
def test_loopback_without_header_is_accepted(addr, token):
    check_admin(env(addr), token)


@pytest.mark.parametrize("addr", ["10.0.0.7", "2001:db8::1", None])
@pytest.mark.parametrize("token", [None, TOKEN])
def test_remote_without_header_is_forbidden(addr, token):
    with pytest.raises(Forbidden) as info:
        check_admin(env(addr), token)
    assert info.value.status == 403
    assert "ADMIN_TOKEN" in info.value.message


@pytest.mark.parametrize("addr", ["10.0.0.7", "127.0.0.1"])
def test_right_token_is_accepted_from_anywhere(addr):
    check_admin(env(addr, f"Bearer {TOKEN}"), TOKEN)
    check_admin(env(addr, f"bearer {TOKEN}"), TOKEN)  # the scheme is case-insensitive


@pytest.mark.parametrize("addr", ["10.0.0.7", "127.0.0.1"])
@pytest.mark.parametrize("header", [
    "Bearer wrong", f"Bearer {TOKEN}x", f"Basic {TOKEN}", "Bearer", "", TOKEN,
    f"Bearer  {TOKEN}",
])
def test_wrong_token_is_401_even_from_loopback(addr, header):
    with pytest.raises(Unauthorized) as info:
        check_admin(env(addr, header), TOKEN)
    assert info.value.status == 401


@pytest.mark.parametrize("configured", [None, ""])
def test_any_token_is_401_when_none_is_configured(configured):
    with pytest.raises(Unauthorized):
        check_admin(env("10.0.0.7", "Bearer anything"), configured)
    with pytest.raises(Unauthorized):
        check_admin(env("10.0.0.7", "Bearer "), configured)
