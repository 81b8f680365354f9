"""Rewrite the settings table of docs/configuration.md from basic_inference_server/config.py.

    python scripts/update_settings_doc.py

The table sits between the ``settings-table`` markers; tests/unit/test_docs.py fails
while it differs from ``python -m basic_inference_server.config``.
"""

from __future__ import annotations

import re
from pathlib import Path

from basic_inference_server.config import settings_table_markdown

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
TABLE = re.compile(r"(<!-- settings-table:start -->\n)(.*?)(\n<!-- settings-table:end -->)", re.S)


def main() -> None:
    text = DOC.read_text()
    assert TABLE.search(text), f"{DOC} lost its settings-table markers"
    DOC.write_text(TABLE.sub(lambda m: m.group(1) + settings_table_markdown().strip() + m.group(3), text))


if __name__ == "__main__":
    main()
