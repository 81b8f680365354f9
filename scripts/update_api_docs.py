"""Rewrite docs/openapi.json and the tables of docs/http-api.md from the code.

    python scripts/update_api_docs.py

Run it after changing a route in basic_inference_server/gateway/api_table.py or adding
an error kind anywhere (gateway/error_kinds.py finds them);
tests/contract/test_openapi_document.py and tests/unit/test_docs.py fail while the
files differ.
"""

from __future__ import annotations

from pathlib import Path

from basic_inference_server.gateway.api_docs import with_tables
from basic_inference_server.gateway.openapi import document_text

DOCS = Path(__file__).resolve().parents[1] / "docs"


def main() -> None:
    (DOCS / "openapi.json").write_text(document_text(), encoding="utf-8")
    page = DOCS / "http-api.md"
    page.write_text(with_tables(page.read_text(encoding="utf-8")), encoding="utf-8")


if __name__ == "__main__":
    main()
