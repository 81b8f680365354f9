"""Row 8: ``file_response(filename=...)`` names the download with the standard quoting.

RFC 6266 quoting of ``filename`` (a ``"`` cannot close the value and add parameters of
its own) and an RFC 5987 ``filename*`` for names outside Latin-1 (no 500): through the
real gateway and endpoint server, read back with werkzeug's RFC 2231/5987 parser.
"""

from __future__ import annotations

import pytest
from werkzeug.http import parse_options_header

from tests.conftest import assert_error

CONFIG = {"CONFIG_ENDPOINTS": {"named_download": {"NR_WORKERS": 1}}}


@pytest.fixture(scope="module")
def gw(module_gateways):
    return module_gateways(CONFIG)


def disposition(header: str) -> tuple[str, str]:
    """The disposition type and the file name a browser would save under (RFC 6266:
    ``filename*`` wins over ``filename``)."""
    kind, params = parse_options_header(header)
    return kind, params.get("filename", "")


@pytest.mark.parametrize("name", [
    'a"; filename*=UTF-8\'\'evil.sh',
    'report"; filename="evil.sh',
    "plain.bin",
    "with space; and semicolon.txt",
    'back\\slash"quote.txt',
])
def test_a_quote_cannot_inject_a_parameter(gw, name):
    resp = gw.run("named_download", FILENAME=name)
    assert resp.status_code == 200, resp.text
    assert disposition(resp.headers["Content-Disposition"]) == ("attachment", name)
    assert resp.content == b"payload"


@pytest.mark.parametrize("name", ["r\u00e9sum\u00e9 \u65e5\u672c\u8a9e.txt",
                                  "\u0414\u0430\u043d\u043d\u044b\u0435.csv",
                                  "emoji \U0001F600.png"])
def test_a_name_outside_latin1_is_sent_as_rfc5987(gw, name):
    resp = gw.run("named_download", FILENAME=name)
    assert resp.status_code == 200, resp.text
    header = resp.headers["Content-Disposition"]
    assert header.isascii()
    assert disposition(header) == ("attachment", name)
    assert resp.content == b"payload"


def test_control_characters_cannot_split_the_header(gw):
    resp = gw.run("named_download", FILENAME="a\r\nX-Injected: 1.txt")
    assert resp.status_code == 200, resp.text
    assert "X-Injected" not in resp.headers
    assert disposition(resp.headers["Content-Disposition"])[1] == "a__X-Injected: 1.txt"


def test_a_missing_name_is_still_a_json_error(gw):
    body = assert_error(gw.run("named_download"), 400)
    assert body["ERROR_TYPE"] == "bad_request"
