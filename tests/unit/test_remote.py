"""Remote endpoints' settings and helpers: URL checks, the credential, the remote SIGNATURE."""

from __future__ import annotations

import orjson
import pytest

from basic_inference_server.errors import BadRequest, Unavailable
from basic_inference_server.traffic import remote
from basic_inference_server.traffic.remote import (
    Credentials,
    parse_url,
    rewrite_signature,
    validate_api_key,
    validate_signature,
    validate_urls,
)


@pytest.mark.parametrize(("url", "host", "port", "tls", "authority"), [
    ("http://127.0.0.1:5000", "127.0.0.1", 5000, False, "127.0.0.1:5000"),
    ("https://models.example.com:443/", "models.example.com", 443, True,
     "models.example.com:443"),
    ("http://[::1]:8080", "::1", 8080, False, "[::1]:8080"),
    ("HTTP://Box-2:80", "box-2", 80, False, "box-2:80"),
])
def test_parse_url(url, host, port, tls, authority):
    parsed = parse_url(url)
    assert (parsed.host, parsed.port, parsed.tls, parsed.authority) == (host, port, tls, authority)
    assert parsed.lead == f"POST /run HTTP/1.1\r\nHost: {authority}\r\n".encode()


@pytest.mark.parametrize(("url", "says"), [
    ("ftp://h:21", "http:// or https://"),
    ("h:5000", "http:// or https://"),
    ("http://h", "must name a port"),
    ("http://h:0", "must name a port"),
    ("http://h:70000", "not a valid URL"),
    ("http://:80", "must name a host"),
    ("http://bad_host:80", "must name a host"),
    ("http://h:80/run", "must not have a path"),
    ("http://h:80?x=1", "must not have a path"),
    ("http://h:80/?", "must not have a path"),
    ("http://h:80#top", "must not have a path"),
    ("http://h :80", "not a URL"),
    (5000, "not a URL"),
])
def test_bad_urls_say_why(url, says):
    with pytest.raises(ValueError, match=says):
        parse_url(url)
    assert says in validate_urls([url])


def test_credentials_in_a_url_are_refused_and_never_echoed():
    problem = validate_urls(["https://svc:s3cret@h:443"])
    assert "REMOTE_API_KEY" in problem and "s3cret" not in problem


def test_validate_urls_list_rules():
    assert validate_urls(None) is None and validate_urls([]) is None  # a local endpoint
    assert validate_urls(["http://a:1", "https://b:2/"]) is None
    assert "list of at most" in validate_urls("http://a:1")
    assert "list of at most" in validate_urls([f"http://h:{p}" for p in range(1, 66)])
    assert "names a:1 twice" in validate_urls(["http://a:1", "http://a:1/"])


@pytest.mark.parametrize("value", [None, "env:REMOTE_KEY", "env:_K2", "file:/run/secrets/k",
                                   "file:relative/key"])
def test_api_key_references(value):
    assert validate_api_key(value) is None


@pytest.mark.parametrize("value", ["bis_the-key-itself", "env:", "env:1BAD", "env:A-B",
                                   "file:", "vault:x", 42])
def test_api_key_must_be_a_reference(value):
    problem = validate_api_key(value)
    assert "env:VAR" in problem and "file:PATH" in problem


@pytest.mark.parametrize(("value", "ok"), [
    (None, True), ("echo", True), ("clf@v2", True), ("a@b@c", False), ("@v2", False),
    ("x y", False), ("", False), (3, False)])
def test_remote_signature(value, ok):
    assert (validate_signature(value) is None) is ok


def test_credential_from_a_file_is_cached_then_read_again(tmp_path, monkeypatch):
    key = tmp_path / "key"
    key.write_text("bis_first\n")
    creds = Credentials(ttl=60)
    assert creds.header(f"file:{key}", "rem") == b"Authorization: Bearer bis_first\r\n"
    key.write_text("bis_second\n")
    assert creds.header(f"file:{key}", "rem") == b"Authorization: Bearer bis_first\r\n"
    # Past the TTL the file is read again: a rotated key takes effect without a restart.
    clock = [remote.time.monotonic() + 61]
    monkeypatch.setattr(remote.time, "monotonic", lambda: clock[0])
    assert creds.header(f"file:{key}", "rem") == b"Authorization: Bearer bis_second\r\n"


def test_credential_from_the_environment(monkeypatch):
    monkeypatch.setenv("BIS_TEST_REMOTE_KEY", "bis_from_env")
    line = Credentials().header("env:BIS_TEST_REMOTE_KEY", "rem")
    assert line == b"Authorization: Bearer bis_from_env\r\n"


def test_unreadable_credentials_are_503_naming_the_reference_only(tmp_path, monkeypatch):
    monkeypatch.delenv("BIS_TEST_NO_KEY", raising=False)
    with pytest.raises(Unavailable, match="BIS_TEST_NO_KEY.*not set") as caught:
        Credentials().header("env:BIS_TEST_NO_KEY", "rem")
    assert caught.value.details["SIGNATURE"] == "rem" and caught.value.retry_after
    with pytest.raises(Unavailable, match="cannot be read"):
        Credentials().header(f"file:{tmp_path / 'absent'}", "rem")
    bad = tmp_path / "bad"
    bad.write_text("two words\n")
    with pytest.raises(Unavailable) as caught:
        Credentials().header(f"file:{bad}", "rem")
    assert "usable key" in str(caught.value) and "two words" not in str(caught.value)


def test_rewrite_signature_keeps_every_other_field():
    raw = b'{"SIGNATURE": "local", "text": "caf\\u00e9", "n": [1, 2.5, null], "o": {"a": true}}'
    out = orjson.loads(rewrite_signature(raw, "there@v2"))
    assert out == {"SIGNATURE": "there@v2", "text": "café", "n": [1, 2.5, None],
                   "o": {"a": True}}


def test_rewrite_signature_refuses_what_the_front_would():
    with pytest.raises(BadRequest):
        rewrite_signature(b"[1]", "x")


def test_a_forgotten_credential_is_read_again(tmp_path):
    key = tmp_path / "key"
    key.write_text("bis_first\n")
    creds = Credentials(ttl=60)
    creds.header(f"file:{key}", "rem")
    key.write_text("bis_rotated\n")
    creds.forget(f"file:{key}")
    assert creds.header(f"file:{key}", "rem") == b"Authorization: Bearer bis_rotated\r\n"
