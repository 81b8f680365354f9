"""Row 10, dashboard half: the dashboard cannot be framed (clickjacking) and runs under a
strict Content-Security-Policy; its token travels as a header, never as a cookie.

The headers are checked on the page and its files, the page's markup holds no inline
script, and a real Chromium refuses to show the dashboard inside another site's frame.
"""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from playwright.sync_api import sync_playwright

from tests.conftest import ADMIN_TOKEN, assert_error
from tests.e2e.test_dashboard import CHROMIUM_ARGS, chromium

CONFIG = {"CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1}}}
FILES = ["/dashboard", "/dashboard/static/dashboard.js", "/dashboard/static/dashboard.css",
         "/dashboard/static/vendor/chart.umd.min.js"]


@pytest.fixture(scope="module")
def gw(module_gateways):
    return module_gateways(CONFIG)


def csp_directives(header: str) -> dict[str, list[str]]:
    out = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            out[words[0].lower()] = words[1:]
    return out


@pytest.mark.parametrize("path", FILES)
def test_the_dashboard_cannot_be_framed_and_runs_only_its_own_files(gw, path):
    resp = gw.get(path, token=None)
    assert resp.status_code == 200
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    csp = csp_directives(resp.headers["Content-Security-Policy"])
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["default-src"] == ["'none'"]
    assert csp["script-src"] == ["'self'"]
    assert csp["connect-src"] == ["'self'"]
    for name, sources in csp.items():
        assert not {"'unsafe-inline'", "'unsafe-eval'", "*"} & set(sources), name
    assert "Set-Cookie" not in resp.headers


class ScriptAudit(HTMLParser):
    """Collects inline script bodies, event-handler attributes and inline styles."""

    def __init__(self) -> None:
        super().__init__()
        self.inline: list[str] = []
        self.sources: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.inline += [f"{tag}.{name}" for name in attrs if name.startswith("on")]
        if "style" in attrs or tag == "style":
            self.inline.append(f"{tag} style")
        if tag == "script":
            if attrs.get("src"):
                self.sources.append(attrs["src"])
            self._in_script = True

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline.append(data.strip()[:60])


def test_the_page_has_no_inline_script_or_style(gw):
    audit = ScriptAudit()
    audit.feed(gw.get("/dashboard", token=None).text)
    assert audit.inline == []
    assert audit.sources and all(src.startswith("dashboard/static/") for src in audit.sources)


def test_a_cookie_is_no_credential(gw):
    resp = gw.get("/list_servers", token=None, cookies={"Authorization": f"Bearer {ADMIN_TOKEN}",
                                                          "token": ADMIN_TOKEN})
    assert_error(resp, 401)


def test_chromium_refuses_to_frame_the_dashboard(gw):
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            # Another origin's page: what a clickjacking site would serve.
            page.set_content(f'<iframe id="victim" src="{gw.url("/dashboard")}"></iframe>')
            page.wait_for_load_state("load")  # the parent's load waits for its frames
            frame = page.frame_locator("#victim")
            assert len(page.frames) == 2
            child = page.frames[1]
            # A refused frame shows the browser's error page, never the dashboard.
            assert child.url.startswith("chrome-error://") or child.url == "about:blank", child.url
            assert frame.locator("#endpoints").count() == 0
        finally:
            browser.close()
