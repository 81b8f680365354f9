"""Who may call the management API (``check_admin``, ``host_allowed``, ``check_json_post``),
without running a server."""

from __future__ import annotations

import pytest

from basic_inference_server.errors import Unauthorized, UnsupportedMediaType
from basic_inference_server.gateway.management import (
    check_admin,
    check_json_post,
    host_allowed,
    host_name,
    own_names,
)

TOKEN = "s3cret-token"


def env(addr, auth=None):
    out = {"REMOTE_ADDR": addr}
    if auth is not None:
        out["HTTP_AUTHORIZATION"] = auth
    return out


@pytest.mark.parametrize("addr", ["127.0.0.1", "::1", "::ffff:127.0.0.1", "10.0.0.7", None])
def test_no_header_is_401_from_anywhere_loopback_included(addr):
    with pytest.raises(Unauthorized) as info:
        check_admin(env(addr), TOKEN)
    assert info.value.status == 401
    assert "Bearer" in info.value.message
    assert ("WWW-Authenticate", 'Bearer realm="management"') in info.value.headers()


@pytest.mark.parametrize("addr", ["10.0.0.7", "127.0.0.1"])
def test_right_token_is_accepted_from_anywhere(addr):
    check_admin(env(addr, f"Bearer {TOKEN}"), TOKEN)
    check_admin(env(addr, f"bearer {TOKEN}"), TOKEN)  # the scheme is case-insensitive


@pytest.mark.parametrize("addr", ["10.0.0.7", "127.0.0.1"])
@pytest.mark.parametrize("header", [
    "Bearer wrong", f"Bearer {TOKEN}x", f"Basic {TOKEN}", "Bearer", "", TOKEN,
    f"Bearer  {TOKEN}",
    # WSGI hands header bytes over as latin-1 text: any byte must be a clean 401.
    "Bearer s3cr\xe9t-token", "Bearer \xff\xfe\x00", "Bearer \u65e5\u672c", "Bearer \udcff",
])
def test_wrong_token_is_401_even_from_loopback(addr, header):
    with pytest.raises(Unauthorized) as info:
        check_admin(env(addr, header), TOKEN)
    assert info.value.status == 401


def test_a_second_token_is_accepted_only_where_it_is_passed():
    check_admin(env("10.0.0.7", "Bearer scrape-token"), TOKEN, "scrape-token")
    check_admin(env("10.0.0.7", f"Bearer {TOKEN}"), TOKEN, "scrape-token")
    with pytest.raises(Unauthorized):
        check_admin(env("10.0.0.7", "Bearer scrape-token"), TOKEN)
    with pytest.raises(Unauthorized):
        check_admin(env("10.0.0.7", "Bearer other"), TOKEN, "scrape-token")


def test_a_non_ascii_token_matches_its_utf8_bytes():
    token = "t\u00e9st-\u65e5"
    on_the_wire = token.encode("utf-8").decode("latin-1")  # what a WSGI server hands over
    check_admin(env("10.0.0.7", f"Bearer {on_the_wire}"), token)


def test_an_empty_configured_token_opens_nothing():
    with pytest.raises(Unauthorized):
        check_admin(env("127.0.0.1", "Bearer "), "")


@pytest.mark.parametrize("environ", [env("10.0.0.7"), env("10.0.0.7", "Bearer anything")])
def test_no_token_at_all_is_the_insecure_development_mode(environ):
    check_admin(environ, None)


@pytest.mark.parametrize("header,name", [
    ("example.com", "example.com"), ("Example.COM:5002", "example.com"),
    ("example.com.", "example.com"), ("[::1]:5002", "::1"), ("[fd00::2]", "fd00::2"),
    ("127.0.0.1:80", "127.0.0.1"), ("::1", "::1"),
])
def test_host_name(header, name):
    assert host_name(header) == name


@pytest.mark.parametrize("header", [
    None, "127.0.0.1:5002", "[::1]:5002", "192.0.2.7", "[fd00::2]:80", "localhost:5002",
    "LOCALHOST", "[fe80::1%eth0]:5002",
])
def test_ip_literals_localhost_and_no_host_always_pass(header):
    assert host_allowed(header, [])


def test_this_machines_names_pass():
    for name in own_names():
        assert host_allowed(f"{name}:5002", [])


@pytest.mark.parametrize("header", ["evil.example:5002", "127.0.0.1.nip.io", "localhost.evil.com",
                                    "1.2.3.4.evil", ""])
def test_other_names_are_refused_by_default(header):
    assert not host_allowed(header, [])


@pytest.mark.parametrize("allowed,header,ok", [
    (["gpu.example.com"], "gpu.example.com:5002", True),
    (["gpu.example.com"], "GPU.example.com.", True),
    (["gpu.example.com"], "cpu.example.com", False),
    (["*.example.com"], "gpu.example.com", True),
    (["*.example.com"], "a.b.example.com", True),
    (["*.example.com"], "example.com", False),
    (["*.example.com"], "evilexample.com", False),
    (["*"], "anything.at.all", True),
])
def test_allowed_hosts_entries(allowed, header, ok):
    assert host_allowed(header, allowed) is ok


@pytest.mark.parametrize("ctype", ["application/json", "application/json; charset=utf-8",
                                   "Application/JSON"])
def test_json_posts_pass(ctype):
    check_json_post({"REQUEST_METHOD": "POST", "CONTENT_TYPE": ctype})


@pytest.mark.parametrize("ctype", [None, "", "text/plain", "application/x-www-form-urlencoded",
                                   "multipart/form-data; boundary=x", "application/jsonp"])
def test_other_posts_are_415(ctype):
    environ = {"REQUEST_METHOD": "POST"}
    if ctype is not None:
        environ["CONTENT_TYPE"] = ctype
    with pytest.raises(UnsupportedMediaType) as info:
        check_json_post(environ)
    assert info.value.status == 415 and info.value.kind == "unsupported_media_type"


def test_gets_need_no_content_type():
    check_json_post({"REQUEST_METHOD": "GET"})
