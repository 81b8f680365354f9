"""Rewrite docs/openapi.json from the gateway's route table.

    python scripts/update_openapi.py

Run it after changing a route in basic_inference_server/gateway/api_table.py;
tests/contract/test_openapi_document.py fails while the file differs.
"""

from __future__ import annotations

from pathlib import Path

from basic_inference_server.gateway.openapi import document_text

DOC = Path(__file__).resolve().parents[1] / "docs" / "openapi.json"

if __name__ == "__main__":
    DOC.write_text(document_text(), encoding="utf-8")
