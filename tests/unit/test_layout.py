"""The code's shape: small modules, and process packages that meet only through contracts."""

from __future__ import annotations

import ast
from pathlib import Path

import basic_inference_server

PACKAGE = Path(basic_inference_server.__file__).parent
NAME = PACKAGE.name
# One package per process role; they share only basic_inference_server.contracts and
# the libraries outside these packages (config, ipc, wire, health, queues, ...).
PROCESS_PACKAGES = {"gateway", "server", "manager", "supervisor", "support", "jobrunner"}
MAX_LINES = 500


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Absolute names of the package's modules that ``path`` imports."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    here = parts[:-1]  # the package the module is in (for __init__.py: itself)
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = list(here[:len(here) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names |= {f"{module}.{a.name}" for a in node.names}
    return {n for n in names if n.split(".")[0] == NAME}


def process_package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PROCESS_PACKAGES else None


def test_no_module_over_500_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in modules()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_process_packages_import_no_other_process_package():
    """The entry points outside them (cli.py runs the manager) may import one."""
    crossings = []
    for path in modules():
        own = process_package(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        for name in imported(path):
            other = process_package(name)
            if own is not None and other is not None and other != own:
                crossings.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not crossings, crossings


def test_the_import_reader_sees_relative_imports():
    """The rule above is only as good as this reader: it resolves ``..`` imports."""
    found = imported(PACKAGE / "manager" / "commands.py")
    assert f"{NAME}.contracts" in found and f"{NAME}.manager.core" in found


def test_no_function_ranks_d_or_worse():
    """radon's cyclomatic complexity: A-C pass; D (21+) means split it."""
    from radon.complexity import cc_rank, cc_visit

    worst = [f"{p.relative_to(PACKAGE)}:{b.lineno} {b.name} {b.complexity}"
             for p in modules() for b in cc_visit(p.read_text()) if cc_rank(b.complexity) >= "D"]
    assert not worst, worst
