"""The dashboard in a real headless Chromium: it lists endpoints, draws charts, scales."""

from __future__ import annotations

import shutil
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

from tests.conftest import wait_until

CONFIG = {"HEALTH_SAMPLE_INTERVAL": 0.5,
          "CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1}, "slow": {"NR_WORKERS": 1}}}
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
            page.goto(gw.url("/dashboard"))
            expect(page.locator("body")).to_have_attribute("data-loaded", "true", timeout=15000)

            expect(row(page, "echo").locator("td.state")).to_have_text("READY")
            expect(row(page, "slow").locator("td.state")).to_have_text("READY")
            expect(row(page, "echo").locator("td.workers")).to_have_text("1 / 1")

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
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
