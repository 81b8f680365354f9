"""The tables of docs/http-api.md, written from the route table and the error kinds.

``python scripts/update_api_docs.py`` rewrites them between their markers
(``<!-- paths-table:start -->`` ... ``<!-- paths-table:end -->``, and ``errors-table``)
with docs/openapi.json; tests/unit/test_docs.py fails while they differ.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .api_table import ROUTES
from .error_kinds import scan

# Who may call a route, by its ``auth``.
CALLERS = {"admin": "admin token", "metrics": "admin token or `METRICS_TOKEN`",
           "open": "anyone", "data": "anyone; an API key with `API_KEYS`"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def paths_table() -> str:
    """One row per route: path, methods, who may call it, what it does, its own statuses."""
    rows = ["| path | methods | who | what | statuses |", "| --- | --- | --- | --- | --- |"]
    for route in ROUTES:
        rows.append(f"| `{route.shown}` | {', '.join(route.methods)} | {CALLERS[route.auth]} | "
                    f"{_cell(route.summary)} | {', '.join(map(str, route.statuses))} |")
    return "\n".join(rows)


def errors_table() -> str:
    """One row per ``ERROR_TYPE`` the code can answer, by status."""
    kinds = sorted(scan().values(), key=lambda k: (k.status, k.name))
    rows = ["| `ERROR_TYPE` | status | when |", "| --- | --- | --- |"]
    for kind in kinds:
        statuses = ", ".join(map(str, sorted(kind.statuses)))
        rows.append(f"| `{kind.name}` | {statuses} | {_cell(kind.meaning)} |")
    return "\n".join(rows)


TABLES: dict[str, Callable[[], str]] = {"paths-table": paths_table, "errors-table": errors_table}


def marked(name: str) -> re.Pattern[str]:
    """The markers around a generated table, and what lies between them."""
    return re.compile(rf"(<!-- {name}:start -->\n)(.*?)(<!-- {name}:end -->)", re.S)


def with_tables(markdown: str) -> str:
    """``markdown`` with every generated table rewritten; ValueError when a marker is lost."""
    for name, table in TABLES.items():
        found = marked(name).search(markdown)
        if not found:
            raise ValueError(f"the {name} markers are missing")
        markdown = (markdown[:found.start()] + found.group(1) + table() + "\n" +
                    found.group(3) + markdown[found.end():])
    return markdown
