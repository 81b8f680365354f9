#!/usr/bin/env python
"""Write the monitoring files made from others: the Grafana dashboard and the PrometheusRule.

    python deploy/monitoring/build.py          # write grafana-dashboard.json, prometheusrule.yaml
    python deploy/monitoring/build.py --check  # exit 1 if either is not what this writes

The dashboard is built with grafana-foundation-sdk (Grafana's own typed dashboard model,
a dev dependency), so every panel is a valid object of its schema; the PrometheusRule is
``alerts.yml``'s rule groups, for the prometheus-operator. Both are committed: the
deployments read them as files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from grafana_foundation_sdk.builders.dashboard import Dashboard as DashboardBuilder
from grafana_foundation_sdk.builders.dashboard import DatasourceVariable, Row
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.timeseries import Panel
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

HERE = Path(__file__).resolve().parent
DASHBOARD = HERE / "grafana-dashboard.json"
ALERTS = HERE / "alerts.yml"
PROMETHEUS_RULE = HERE / "prometheusrule.yaml"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "[$__rate_interval]"

# (row, [(panel title, unit, [(PromQL, legend)])]): what the dashboard shows.
ROWS: list[tuple[str, list[tuple[str, str, list[tuple[str, str]]]]]] = [
    ("Traffic", [
        ("Requests per second by endpoint and version", "reqps", [
            (f"sum by (endpoint, version) (rate(bis_requests_total{RATE}))",
             "{{endpoint}} {{version}}")]),
        ("Latency through the gateway, p50 and p99", "s", [
            ("histogram_quantile(0.5, sum by (endpoint, le) "
             f"(rate(bis_request_seconds_bucket{RATE})))", "p50 {{endpoint}}"),
            ("histogram_quantile(0.99, sum by (endpoint, le) "
             f"(rate(bis_request_seconds_bucket{RATE})))", "p99 {{endpoint}}")]),
        ("Errors per second by endpoint and status", "reqps", [
            (f'sum by (endpoint, status) (rate(bis_requests_total{{status!~"2.."}}{RATE}))',
             "{{endpoint}} {{status}}")]),
        ("Requests in flight, and work stopped early by reason", "short", [
            ("sum by (endpoint) (bis_in_flight)", "in flight {{endpoint}}"),
            (f"sum by (endpoint, reason) (rate(bis_cancelled_total{RATE}))",
             "stopped/s {{endpoint}} {{reason}}")]),
    ]),
    ("Endpoints", [
        ("Workers ready and asked for", "short", [
            ("sum by (endpoint) (bis_workers)", "ready {{endpoint}}"),
            ("sum by (endpoint) (bis_workers_target)", "target {{endpoint}}")]),
        ("Restarts since the gateway started, and readiness", "short", [
            ("max by (endpoint) (bis_restarts)", "restarts {{endpoint}}"),
            ("max by (endpoint) (bis_endpoint_ready)", "ready {{endpoint}}")]),
        ("Endpoints by state", "short", [
            ("sum by (state) (bis_endpoint_state)", "{{state}}")]),
    ]),
    ("Jobs", [
        ("Jobs waiting or running", "short", [
            ("max by (endpoint) (bis_queue_depth)", "{{endpoint}}")]),
        ("Age of the oldest unfinished job", "s", [
            ("max by (endpoint) (bis_queue_oldest_seconds)", "{{endpoint}}")]),
    ]),
    ("Tenants", [
        ("Requests per second by tenant", "reqps", [
            (f"sum by (tenant) (rate(bis_tenant_requests_total{RATE}))", "{{tenant}}")]),
        ("Units (USAGE) per second by tenant", "short", [
            (f"sum by (tenant) (rate(bis_tenant_units_total{RATE}))", "{{tenant}}")]),
        ("Share of its quota spent this period, by tenant", "percentunit", [
            ("max by (tenant) (bis_tenant_quota_used_ratio)", "{{tenant}}")]),
    ]),
    ("GPUs and models", [
        ("GPU memory in use", "percentunit", [
            ("max by (gpu, name) (bis_gpu_memory_used_bytes / bis_gpu_memory_total_bytes)",
             "GPU {{gpu}} {{name}}")]),
        ("GPU utilisation", "percent", [
            ("max by (gpu, name) (bis_gpu_utilization_percent)", "GPU {{gpu}} {{name}}")]),
        ("Memory of loaded models", "bytes", [
            ("sum by (endpoint, model) (bis_model_memory_bytes)", "{{endpoint}} {{model}}")]),
        ("Model loads and cache hits per second", "ops", [
            (f"sum by (endpoint, model) (rate(bis_model_loads_total{RATE}))",
             "loads {{endpoint}} {{model}}"),
            (f"sum by (endpoint, model) (rate(bis_model_hits_total{RATE}))",
             "hits {{endpoint}} {{model}}")]),
    ]),
]


def dashboard() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model."""
    builder = (DashboardBuilder("basic_inference_server")
               .uid("basic-inference-server")
               .tags(["basic_inference_server"])
               .refresh("30s")
               .time("now-1h", "now")
               .with_variable(DatasourceVariable("datasource").label("Prometheus")
                              .type("prometheus")))
    for title, panels in ROWS:
        builder = builder.with_row(Row(title))
        for panel_title, unit, queries in panels:
            panel = Panel().title(panel_title).unit(unit).datasource(DATASOURCE).height(8).span(12)
            for ref, (expr, legend) in zip("ABCDEFGH", queries, strict=False):
                panel = panel.with_target(Dataquery().expr(expr).legend_format(legend)
                                          .ref_id(ref).datasource(DATASOURCE))
            builder = builder.with_panel(panel)
    return json.loads(JSONEncoder(sort_keys=True, indent=2).encode(builder.build()))


def prometheus_rule() -> dict[str, Any]:
    """``alerts.yml`` as a prometheus-operator PrometheusRule."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "bis-alerts",
                         "labels": {"app.kubernetes.io/part-of": "bis"}},
            "spec": {"groups": groups}}


def rendered() -> dict[Path, str]:
    """Each written file's text."""
    header = "# Written by deploy/monitoring/build.py from alerts.yml: edit that file.\n"
    return {DASHBOARD: json.dumps(dashboard(), indent=2, sort_keys=True) + "\n",
            PROMETHEUS_RULE: header + yaml.safe_dump(prometheus_rule(), sort_keys=False,
                                                     width=100)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="only check that the files are what this script writes")
    args = parser.parse_args()
    stale = []
    for path, text in rendered().items():
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print(f"not up to date: {', '.join(stale)}; run python {Path(__file__).name}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
