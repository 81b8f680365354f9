"""The code's shape: small modules, process packages that meet only through contracts, and
an import graph without cycles whose bottom (what an endpoint worker loads) stays small."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import basic_inference_server

PACKAGE = Path(basic_inference_server.__file__).parent
NAME = PACKAGE.name
# One package per process role; they share only basic_inference_server.contracts and
# the libraries outside these packages (config, ipc, wire, health, queues, ...).
PROCESS_PACKAGES = {"gateway", "server", "manager", "supervisor", "support", "jobrunner"}
MAX_LINES = 500
# The queue backends whose client libraries are optional extras: imported only inside
# the functions that open them.
QUEUE_BACKENDS = {f"{NAME}.queues.{b}" for b in ("redis", "rabbitmq", "sqs")}
# What an endpoint worker process must not load with FlaskWorker: the front's, the
# tenants' and the queues' code.
NOT_IN_A_WORKER = ("traffic", "queues", "tenants", "gateway")


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p) for p in modules()}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _statements(tree: ast.AST, type_checking: bool, in_functions: bool) -> Iterator[ast.AST]:
    """The nodes of ``tree``, leaving out ``if TYPE_CHECKING:`` bodies and function bodies
    as asked."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if not in_functions and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if not type_checking and isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def imported(path: Path, type_checking: bool = True, in_functions: bool = True) -> set[str]:
    """Names of the package's modules that ``path`` imports: ``from X import name`` is an
    import of the module ``X.name`` where there is one, else of ``X``."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    here = parts[:-1]  # the package the module is in (for __init__.py: itself)
    names = set()
    for node in _statements(ast.parse(path.read_text()), type_checking, in_functions):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = list(here[:len(here) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names |= {f"{module}.{a.name}" if f"{module}.{a.name}" in MODULES else module
                      for a in node.names}
    return names & MODULES


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
    """The rules here are only as good as this reader: it resolves ``..`` imports, and
    ``from .. import protocol`` imports the module ``protocol``."""
    found = imported(PACKAGE / "manager" / "commands.py")
    assert f"{NAME}.contracts" in found and f"{NAME}.manager.core" in found
    assert imported(PACKAGE / "traffic" / "remote.py") >= {f"{NAME}.protocol", f"{NAME}.errors"}


def test_the_import_reader_leaves_out_what_is_asked():
    """``if TYPE_CHECKING:`` imports never run; function-level ones run when called."""
    found = imported(PACKAGE / "worker.py", type_checking=False)
    assert f"{NAME}.models.manager" not in found and f"{NAME}.events" in found
    assert f"{NAME}.models.manager" in imported(PACKAGE / "worker.py")
    lazy = imported(PACKAGE / "queues" / "__init__.py")
    assert QUEUE_BACKENDS <= lazy
    assert not QUEUE_BACKENDS & imported(PACKAGE / "queues" / "__init__.py", in_functions=False)


def test_no_import_cycle():
    """No module imports itself through others; imports inside functions count (they
    run), ``TYPE_CHECKING`` ones do not (they never run)."""
    graph = {module_name(p): imported(p, type_checking=False) - {module_name(p)}
             for p in modules()}
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None


def test_queue_backends_are_imported_only_when_opened():
    """Their client libraries are optional extras: no module imports a backend when it
    is imported itself."""
    eager = [f"{p.relative_to(PACKAGE)} imports {name}" for p in modules()
             for name in imported(p, type_checking=False, in_functions=False) & QUEUE_BACKENDS]
    assert not eager, eager


def test_a_worker_loads_no_front_tenant_or_queue_code():
    """``from basic_inference_server import FlaskWorker``, in a fresh interpreter, loads
    no module of the front's packages (the worker's process is not the front's)."""
    code = ("import sys, basic_inference_server.worker\n"
            "from basic_inference_server import FlaskWorker\n"
            "print('\\n'.join(sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(PACKAGE.parent), *filter(None, [os.environ.get("PYTHONPATH")])])}
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=60, check=True).stdout.split()
    assert f"{NAME}.worker" in loaded
    front = sorted(m for m in loaded if m.startswith(f"{NAME}.") and m.split(".")[1] in NOT_IN_A_WORKER)
    assert not front, front


def test_no_function_ranks_d_or_worse():
    """radon's cyclomatic complexity: A-C pass; D (21+) means split it."""
    from radon.complexity import cc_rank, cc_visit

    worst = [f"{p.relative_to(PACKAGE)}:{b.lineno} {b.name} {b.complexity}"
             for p in modules() for b in cc_visit(p.read_text()) if cc_rank(b.complexity) >= "D"]
    assert not worst, worst
