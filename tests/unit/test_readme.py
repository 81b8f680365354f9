"""The README stays true: its config table and its test command."""

from __future__ import annotations

import re
from pathlib import Path

from basic_inference_server.config import settings_table_markdown

ROOT = Path(__file__).resolve().parents[2]


def test_config_table_is_generated_from_settings() -> None:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- settings-table:start -->\n(.*?)\n<!-- settings-table:end -->",
                      readme, re.S)
    assert match, "README lost its settings-table markers"
    assert match.group(1).strip() == settings_table_markdown().strip(), (
        "README config table is stale: regenerate it with python -m basic_inference_server.config")


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    test_cmd = blocks[1].strip()
    assert "pytest" in test_cmd
    pytest_part = test_cmd.splitlines()[-1].strip()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert pytest_part in ci_lines
