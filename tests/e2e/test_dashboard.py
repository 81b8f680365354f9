"""The dashboard in a real headless Chromium: it asks for the admin token, then lists
endpoints, draws charts, scales, stops and starts an endpoint, under its strict CSP; it
reads one live stream (fetch with the token as a header), never polls, and resumes the
stream after a drop."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import psutil
import requests
from playwright.sync_api import Page, Request, expect, sync_playwright

from basic_inference_server.gateway.dashboard_events import Cursor
from tests.conftest import ADMIN_TOKEN, Gateway, wait_until

CONFIG = {"HEALTH_SAMPLE_INTERVAL": 0.5,
          "CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1}, "slow": {"NR_WORKERS": 1},
                               "clf": {"SERVER_CLASS": "echo", "VERSIONS": {"v1": {}, "v2": {}},
                                       "TRAFFIC": {"v1": 75, "v2": 25}}}}
# Flags for a sandboxed, offline machine: no first-run or background network traffic.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Chromium is needed for this test: apt-get install chromium (.ci/run does)"
    return path


def row(page: Page, endpoint: str):
    return page.locator(f'#endpoints tbody tr[data-endpoint="{endpoint}"]')


def test_dashboard_lists_endpoints_draws_charts_and_scales(gateways, tmp_path: Path):
    gw = gateways(CONFIG)
    wait_until(lambda: len(gw.get("/history?samples=10").json()["samples"]) >= 3, timeout=15,
               message="a few health samples to chart")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            # A CSP violation (inline script or style, a foreign origin) is a console error.
            page.on("console", lambda msg: errors.append(msg.text)
                    if msg.type == "error" and "Content Security Policy" in msg.text else None)
            page.goto(gw.url("/dashboard"))
            # No token yet: the page says so and shows no data.
            expect(page.locator("body")).to_have_attribute("data-auth", "needed", timeout=15000)
            expect(page.locator("#updated")).to_contain_text("admin token")
            assert page.locator("#endpoints tbody tr").count() == 0

            page.locator("#token").fill("wrong-token")
            page.get_by_role("button", name="use").click()
            expect(page.locator("#updated")).to_contain_text("admin token")
            page.locator("#token").fill(ADMIN_TOKEN)
            page.get_by_role("button", name="use").click()
            expect(page.locator("body")).to_have_attribute("data-loaded", "true", timeout=15000)
            expect(page.locator("body")).to_have_attribute("data-auth", "ok")
            # The token is kept in the tab's sessionStorage, never in a cookie or the field.
            assert page.evaluate("() => sessionStorage.getItem('bis-admin-token')") == ADMIN_TOKEN
            assert page.evaluate("() => document.cookie") == ""
            assert page.context.cookies() == []
            assert page.locator("#token").input_value() == ""

            expect(row(page, "echo").locator("td.state")).to_have_text("READY")
            expect(row(page, "slow").locator("td.state")).to_have_text("READY")
            expect(row(page, "echo").locator("td.workers")).to_have_text("1 / 1")
            # Each version is a row with its share of the endpoint's traffic.
            expect(row(page, "clf@v1").locator("td.traffic")).to_have_text("v1 75%")
            expect(row(page, "clf@v2").locator("td.traffic")).to_have_text("v2 25%")

            # The memory chart has series with points, and pixels on its canvas.
            points = page.evaluate("""() => {
                const chart = Chart.getChart('memory-chart');
                return chart.data.datasets.map(d => d.data.filter(v => v !== null).length);
            }""")
            assert len(points) >= 3 and min(points) >= 1, points  # gateway, echo, slow
            inked = page.evaluate("""() => {
                const c = document.getElementById('memory-chart');
                const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let n = 0;
                for (let i = 3; i < px.length; i += 4) if (px[i] > 0) n++;
                return n;
            }""")
            assert inked > 500, inked
            # A time axis: each point sits at its sample's time; the first line is the whole tree.
            axis = page.evaluate("""() => {
                const chart = Chart.getChart('memory-chart');
                return {type: chart.scales.x.type, label: chart.data.datasets[0].label,
                        xs: chart.data.datasets[0].data.map(p => p.x)};
            }""")
            sampled = [s["ts"] * 1000 for s in gw.get("/history?samples=240").json()["samples"]]
            assert axis["type"] == "linear" and "whole tree" in axis["label"], axis
            assert axis["xs"] and set(axis["xs"]) <= set(sampled), (axis["xs"], sampled)
            expect(page.locator("#gpu-status")).to_contain_text("no GPU")

            row(page, "echo").get_by_role("button", name="+1 worker").click()
            expect(page.locator("#message")).to_contain_text("NR_WORKERS 1 -> 2")
            wait_until(lambda: gw.server("echo")["workers_ready"] == 2, timeout=15,
                       message="echo scaled to two workers")
            expect(row(page, "echo").locator("td.workers")).to_have_text("2 / 2", timeout=10000)

            row(page, "slow").get_by_role("button", name="stop").click()
            wait_until(lambda: gw.state("slow") == "STOPPED", timeout=30, message="slow stopped")
            expect(row(page, "slow").locator("td.state")).to_have_text("STOPPED", timeout=10000)
            row(page, "slow").get_by_role("button", name="start").click()
            wait_until(lambda: gw.state("slow") == "READY", timeout=30, message="slow started")
            expect(row(page, "slow").locator("td.state")).to_have_text("READY", timeout=10000)
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

            # Forgetting the token stops the data and the buttons at once.
            page.get_by_role("button", name="forget").click()
            expect(page.locator("body")).to_have_attribute("data-auth", "needed", timeout=10000)
            assert page.evaluate("() => sessionStorage.getItem('bis-admin-token')") is None
            assert not errors, errors
        finally:
            browser.close()


def api_calls(requests: list[Request]) -> list[Request]:
    """The page's calls of the gateway's API: all but the page and its files."""
    return [r for r in requests if "/dashboard/static/" not in r.url
            and not r.url.endswith("/dashboard")]


def drop_connections(gw: Gateway) -> None:
    """Kill the front processes holding client connections (the front starts new ones):
    the page's stream drops as it would with a crash or a network cut."""
    killed = 0
    for proc in gw.tree():
        with contextlib.suppress(psutil.Error):
            if any(c.status == psutil.CONN_ESTABLISHED and c.laddr.port == gw.port
                   for c in proc.net_connections(kind="tcp")):
                proc.kill()
                killed += 1
    assert killed, "no front process holds a connection"


def test_dashboard_shows_live_changes_from_one_stream_without_polling(gateways):
    gw = gateways({"HEALTH_SAMPLE_INTERVAL": 0.5,
                   "CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1}, "slow": {"NR_WORKERS": 1}}})
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context()
            page = context.new_page()
            requests: list[Request] = []
            page.on("request", lambda request: requests.append(request))
            page.goto(gw.url("/dashboard"))
            expect(page.locator("body")).to_have_attribute("data-auth", "needed", timeout=15000)
            assert api_calls(requests) == []  # no token: nothing asked
            page.locator("#token").fill(ADMIN_TOKEN)
            page.get_by_role("button", name="use").click()
            expect(page.locator("body")).to_have_attribute("data-loaded", "true", timeout=15000)
            expect(row(page, "slow").locator("td.state")).to_have_text("READY")

            # Changes made elsewhere show up, each sent by the gateway as it happens.
            assert gw.post("/kill_server", {"SIGNATURE": "slow"}).status_code == 200
            expect(row(page, "slow").locator("td.state")).to_have_text("STOPPED", timeout=15000)
            assert gw.post("/start_server", {"SIGNATURE": "slow"}).status_code == 200
            expect(row(page, "slow").locator("td.state")).to_have_text("READY", timeout=30000)
            samples = page.evaluate("() => Chart.getChart('memory-chart').data.datasets[0]"
                                    ".data.length")
            wait_until(lambda: page.evaluate("() => Chart.getChart('memory-chart').data"
                                             ".datasets[0].data.length") > samples,
                       timeout=15, message="a new health sample charted from the stream")

            # All that came over one request: the stream, with the token in its header
            # (no token in any URL, no cookie).
            calls = api_calls(requests)
            assert [(r.method, r.url) for r in calls] == [("GET", gw.url("/dashboard/events"))]
            headers = calls[0].all_headers()
            assert headers["authorization"] == f"Bearer {ADMIN_TOKEN}"
            assert "cookie" not in headers and "last-event-id" not in headers
            assert all(ADMIN_TOKEN not in r.url for r in requests)
            assert context.cookies() == []

            # A drop: the page reconnects, resuming with the id of the last event it had.
            with page.expect_request(lambda r: r.url == gw.url("/dashboard/events"),
                                     timeout=30000) as reopened:
                drop_connections(gw)
            again = reopened.value.all_headers()
            assert again["authorization"] == f"Bearer {ADMIN_TOKEN}"
            Cursor.parse(again["last-event-id"])
            expect(page.locator("#updated")).to_contain_text("live", timeout=30000)
            assert gw.post("/kill_server", {"SIGNATURE": "slow"}).status_code == 200
            expect(row(page, "slow").locator("td.state")).to_have_text("STOPPED", timeout=15000)
            assert {(r.method, r.url) for r in api_calls(requests)} == {
                ("GET", gw.url("/dashboard/events"))}
        finally:
            browser.close()


TRAFFIC_CONFIG = {"HEALTH_SAMPLE_INTERVAL": 0.5, "CONFIG_ENDPOINTS": {
    "echo": {"NR_WORKERS": 1}, "bad_predict": {"NR_WORKERS": 1},
    "clf": {"SERVER_CLASS": "echo", "VERSIONS": {"v1": {}, "v2": {}},
            "TRAFFIC": {"v1": 50, "v2": 50}},
    "idle": {"SERVER_CLASS": "echo", "DISABLED": True}}}
CHART_POINTS = """id => Object.fromEntries(Chart.getChart(id).data.datasets.map(
    d => [d.label, d.data.filter(p => p.y !== null).map(p => [p.x, p.y])]))"""


def charted_requests(points: list[list[float]], xs: list[float]) -> float:
    """The requests a rate series stands for: each rate times its time since the sample
    before (``xs``: every sample's time, ms)."""
    before = {x: xs[i - 1] for i, x in enumerate(xs) if i}
    return sum(rate * (x - before[x]) / 1000 for x, rate in points)


def test_dashboard_charts_requests_errors_and_latency_of_running_endpoints(gateways):
    gw = gateways(TRAFFIC_CONFIG)
    sent = {"echo": 40, "bad_predict": 12, "clf": 20}
    for name, count in sent.items():
        for _ in range(count):
            assert gw.run(name).status_code == (500 if name == "bad_predict" else 200)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(gw.url("/dashboard"))
            page.locator("#token").fill(ADMIN_TOKEN)
            page.get_by_role("button", name="use").click()
            expect(page.locator("body")).to_have_attribute("data-loaded", "true", timeout=15000)

            def charted() -> dict[str, float] | None:
                """Each series' requests, once every request sent is charted."""
                xs = [s["ts"] * 1000 for s in page.evaluate("() => live.samples")]
                rates = page.evaluate(CHART_POINTS, "rate-chart")
                total = {label: charted_requests(points, xs) for label, points in rates.items()}
                done = (round(total.get("echo", 0)) == sent["echo"] and
                        round(total.get("bad_predict", 0)) == sent["bad_predict"] and
                        round(total.get("clf@v1", 0) + total.get("clf@v2", 0)) == sent["clf"])
                return total if done else None

            totals = wait_until(charted, timeout=30, message="every request sent is charted")
            # The legend: the endpoints that run, each version its own; not the disabled one.
            assert sorted(totals) == ["bad_predict", "clf@v1", "clf@v2", "echo"], totals
            xs = [s["ts"] * 1000 for s in page.evaluate("() => live.samples")]
            errors = page.evaluate(CHART_POINTS, "error-chart")
            assert round(charted_requests(errors["bad_predict"], xs)) == sent["bad_predict"]
            assert all(y == 0 for _, y in errors["echo"]), errors["echo"]
            latency = page.evaluate(CHART_POINTS, "latency-chart")
            p50 = dict(map(tuple, latency["echo p50"]))
            p99 = dict(map(tuple, latency["echo p99"]))
            assert p50 and all(0 < p50[x] <= p99[x] for x in p50), (p50, p99)

            # An endpoint stopped leaves the charts and their legend.
            assert gw.post("/kill_server", {"SIGNATURE": "bad_predict"}).status_code == 200
            wait_until(lambda: "bad_predict" not in page.evaluate(CHART_POINTS, "rate-chart"),
                       timeout=20, message="the stopped endpoint leaves the charts")
            assert "bad_predict p99" not in page.evaluate(CHART_POINTS, "latency-chart")
        finally:
            browser.close()


def test_dashboard_shows_each_tenants_share_under_fair_queueing(gateways):
    gw = gateways({"FAIR_QUEUEING": True, "GATEWAY_WORKERS": 2,
                   "CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1}}})
    gw.wait_state("echo", "READY", timeout=60)
    for tenant, count in (("acme", 3), ("beta", 1)):
        for _ in range(count):
            resp = requests.post(gw.url("/run"), json={"SIGNATURE": "echo"},
                                 headers={"X-Customer-ID": tenant}, timeout=30)
            assert resp.status_code == 200, resp.text
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(gw.url("/dashboard"))
            page.locator("#token").fill(ADMIN_TOKEN)
            page.get_by_role("button", name="use").click()
            expect(page.locator("body")).to_have_attribute("data-loaded", "true", timeout=15000)
            expect(row(page, "echo").locator("td.tenants")).to_have_text(
                "acme 75% \u00b7 beta 25%", timeout=15000)
        finally:
            browser.close()
