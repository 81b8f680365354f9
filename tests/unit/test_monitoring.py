"""deploy/monitoring: the alert rules pass promtool and its rule unit tests, the Grafana
dashboard loads with Grafana's own model, both query only metrics the gateway exports,
and the files made from others are up to date."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from grafana_foundation_sdk.models.dashboard import Dashboard

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
RULE_TESTS = ROOT / "tests" / "fixtures" / "monitoring" / "alerts_test.yml"
METRIC = re.compile(r"\bbis_[a-z_]+")
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    # scripts/test installs Debian's prometheus package, which has promtool.
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: ./scripts/test installs it (Debian package prometheus)"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120)


def exported() -> set[str]:
    """Every metric family name the library defines (its quoted ``bis_*`` names)."""
    names: set[str] = set()
    for path in (ROOT / "basic_inference_server").rglob("*.py"):
        names.update(re.findall(r"[\"'](bis_[a-z_]+)[\"']", path.read_text()))
    return names


def queries() -> list[str]:
    """Every PromQL expression of the alert rules and the dashboard."""
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    board = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs += [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    return exprs


def test_promtool_checks_the_rules_and_runs_their_unit_tests():
    checked = promtool("check", "rules", str(MONITORING / "alerts.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 9 rules found" in checked.stdout
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    alerts = {r["alert"] for g in yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
              for r in g["rules"]}
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    covered = {case["alertname"] for t in tests for case in t["alert_rule_test"]}
    assert covered == alerts, "every alert has a promtool test that fires it"


def test_the_dashboard_loads_with_grafanas_model():
    data = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    board = Dashboard.from_json(data)
    assert board.uid == "basic-inference-server" and board.panels
    rows = [p for p in data["panels"] if p["type"] == "row"]
    graphs = [p for p in data["panels"] if p["type"] == "timeseries"]
    assert [r["title"] for r in rows] == ["Traffic", "Endpoints", "Jobs", "Tenants",
                                          "GPUs and models"]
    assert len(graphs) == 16 and all(p["targets"] for p in graphs)
    assert all(t["datasource"]["uid"] == "${datasource}" for p in graphs for t in p["targets"])


def test_every_query_names_metrics_the_gateway_exports():
    names = exported()
    assert {"bis_requests_total", "bis_restarts", "bis_queue_oldest_seconds"} <= names
    unknown = set()
    for expr in queries():
        for name in METRIC.findall(expr):
            base = next((name.removesuffix(s) for s in HISTOGRAM_SERIES if name.endswith(s)), name)
            if name not in names and base not in names:
                unknown.add(name)
    assert not unknown, f"queried but not exported: {sorted(unknown)}"


def test_the_files_made_from_others_are_up_to_date():
    built = subprocess.run([sys.executable, str(MONITORING / "build.py"), "--check"],
                           capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr


def test_the_docs_table_lists_every_alert_with_its_severity():
    doc = (ROOT / "docs" / "operations.md").read_text()
    match = re.search(r"<!-- alerts-table:start -->\n(.*?)\n<!-- alerts-table:end -->", doc, re.S)
    assert match, "docs/operations.md lost its alerts-table markers"
    rows = [line.split("|")[1:3] for line in match.group(1).splitlines()[2:]]
    table = {name.strip().strip("`"): severity.strip() for name, severity in rows}
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    assert table == {r["alert"]: r["labels"]["severity"]
                     for g in rules["groups"] for r in g["rules"]}
