"""ruff (docstrings of the public API included) and mypy over the project's own files.

A tier of its own (``tests/static``), so that ``pytest tests/unit`` lints nothing. Only
what the project ships is checked: the library, its tests, benchmarks, scripts and
deploy helpers, and the demo endpoints by name. A file someone adds to ``endpoints/`` is
their own: the project's lint rules are not held against it.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

LINTED = ("basic_inference_server", "tests", "bench", "scripts", "deploy", "run_gateway.py")
DEMO_ENDPOINTS = ("cpu_bound", "echo", "embeddings", "support_process", "torch_mlp", "words")
LINTERS = ("ruff", "mypy", "flake8", "pylint", "pydocstyle")


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, check=False)


def ruff_paths(root: Path) -> list[str]:
    """What ruff checks in the checkout at ``root`` (a demo endpoint may have been removed)."""
    named = [*LINTED, *(f"endpoints/{name}.py" for name in DEMO_ENDPOINTS)]
    return [p for p in named if (root / p).exists()]


def test_ruff_is_clean() -> None:
    result = run("ruff", "check", *ruff_paths(ROOT))
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean() -> None:
    result = run("mypy", "basic_inference_server")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_new_endpoint_file_is_not_linted(tmp_path: Path) -> None:
    """A newcomer's endpoint that breaks the lint rules leaves the check green."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / "endpoints").mkdir()
    shutil.copy(ROOT / "endpoints" / "echo.py", tmp_path / "endpoints")
    (tmp_path / "endpoints" / "mine.py").write_text(
        "import os, sys\nfrom basic_inference_server import FlaskWorker\n"
        "class MineWorker(FlaskWorker):\n    def _predict(self, x): return x\n")
    own = run("ruff", "check", "endpoints/mine.py", cwd=tmp_path)
    assert own.returncode == 1 and "F401" in own.stdout, own.stdout + own.stderr
    assert ruff_paths(tmp_path) == ["endpoints/echo.py"]
    result = run("ruff", "check", *ruff_paths(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_unit_tier_runs_no_linter() -> None:
    """No unit test starts a linter: ``pytest tests/unit`` passes whatever the
    endpoints folder holds."""
    found = []
    for path in sorted((ROOT / "tests" / "unit").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in LINTERS:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not found, found
