"""Every ``ERROR_TYPE`` the gateway's processes can answer, read from the package's source.

The OpenAPI document and the error table of docs/http-api.md list what this finds, so
a kind added anywhere is documented when they are regenerated
(``python scripts/update_api_docs.py``). The source is read, not imported: the kinds
live in every process package (``server/``, ``tenants/``, ``traffic/`` ...), which the
front does not import. What counts:

- every :class:`..errors.ServingError` subclass, wherever it is defined: its ``kind``
  and ``status`` (inherited when not its own);
- a kind set per instance (``self.kind = ...``), a literal ``"ERROR_TYPE": "..."`` or
  ``ERROR_TYPE="..."``, and the kinds of a table named ``*ERROR_TYPES`` or ``*KINDS``
  (with the statuses of an ``{status: kind}`` table).

A kind whose status the source does not say where it is set (a per-instance kind)
needs a row in :data:`INSTANCE_KINDS`; tests/unit/test_error_kinds.py fails until it
has one.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
# Not answers of the gateway: the client maps kinds, it does not answer them; the
# documents list kinds, they do not set them.
SKIPPED = ("client/", "gateway/error_kinds.py", "gateway/openapi.py", "gateway/api_docs.py")
ROOT_CLASS = "ServingError"

# Kinds set per instance: their statuses and what they mean.
INSTANCE_KINDS: dict[str, tuple[tuple[int, ...], str]] = {
    "endpoint_error": ((500,), "The endpoint's own code raised (`_predict`, "
                               "`_post_process`): the body names the exception, its "
                               "message, file and line."),
}
# Statuses a class's instances take besides its own (a pipeline step's failure follows
# the step's status where it says more than 502: traffic/pipeline.py, failure_status).
EXTRA_STATUSES: dict[str, tuple[int, ...]] = {"step_failed": (400, 413, 429, 503, 504)}
# The root class's own docstring says what the class is, not when its kind is answered.
ROOT_MEANING = "An error of the gateway itself, or an answer it could not use."


@dataclass
class Kind:
    """One ``ERROR_TYPE``: the statuses it comes with, what it means, where it is set."""

    name: str
    statuses: set[int] = field(default_factory=set)
    status: int = 0  # its class's own status: the table's order
    meaning: str = ""
    where: set[str] = field(default_factory=set)


@dataclass
class _Class:
    name: str
    bases: list[str]
    module: str
    kind: str | None = None
    status: int | None = None
    doc: str = ""
    instance_kinds: list[str] = field(default_factory=list)


def _name(node: ast.expr) -> str:
    """``Foo`` for ``Foo`` and ``errors.Foo``."""
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def _strings(node: ast.AST | None) -> list[str]:
    """The strings an expression may evaluate to: a constant, or either branch of a
    conditional (``"a" if x else "b"``, ``x or "a"``); a table's values."""
    if isinstance(node, ast.Constant):
        return [node.value] if isinstance(node.value, str) else []
    if isinstance(node, ast.IfExp):
        return _strings(node.body) + _strings(node.orelse)
    if isinstance(node, ast.BoolOp):
        return [s for value in node.values for s in _strings(value)]
    if isinstance(node, (ast.Set, ast.List, ast.Tuple)):
        return [s for value in node.elts for s in _strings(value)]
    if isinstance(node, ast.Call) and node.args:  # frozenset({...})
        return _strings(node.args[0])
    return []


class _Reader(ast.NodeVisitor):
    """Collects a module's classes and the kinds its code sets."""

    def __init__(self, module: str) -> None:
        self.module = module
        self.classes: list[_Class] = []
        self.literals: list[tuple[str, int | None]] = []  # (kind, status if known)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        # The docstring's first sentence, in Markdown.
        doc = " ".join((ast.get_docstring(node) or "").split()).replace("``", "`")
        cls = _Class(node.name, [_name(b) for b in node.bases], self.module,
                     doc=doc.split(". ")[0].rstrip(".") + "." if doc else "")
        for item in node.body:
            if isinstance(item, ast.Assign) and isinstance(item.value, ast.Constant):
                for target in item.targets:
                    if _name(target) == "kind" and isinstance(item.value.value, str):
                        cls.kind = item.value.value
                    if _name(target) == "status" and isinstance(item.value.value, int):
                        cls.status = item.value.value
        for sub in ast.walk(node):
            if isinstance(sub, ast.Assign) and any(
                    isinstance(t, ast.Attribute) and t.attr == "kind" and _name(t.value) == "self"
                    for t in sub.targets):
                cls.instance_kinds += _strings(sub.value)
        self.classes.append(cls)
        self.generic_visit(node)

    def visit_Dict(self, node: ast.Dict) -> None:
        for key, value in zip(node.keys, node.values, strict=True):
            if isinstance(key, ast.Constant) and key.value == "ERROR_TYPE":
                self.literals += [(kind, None) for kind in _strings(value)]
        self.generic_visit(node)

    def visit_keyword(self, node: ast.keyword) -> None:
        if node.arg == "ERROR_TYPE":
            self.literals += [(kind, None) for kind in _strings(node.value)]
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        if any(_name(t).endswith(("ERROR_TYPES", "KINDS")) for t in node.targets):
            if isinstance(node.value, ast.Dict):
                for key, value in zip(node.value.keys, node.value.values, strict=True):
                    status = key.value if isinstance(key, ast.Constant) and \
                        isinstance(key.value, int) else None
                    self.literals += [(kind, status) for kind in _strings(value)]
            else:
                self.literals += [(kind, None) for kind in _strings(node.value)]
        self.generic_visit(node)


def _modules(package: Path) -> list[tuple[str, ast.Module]]:
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if rel.startswith(SKIPPED):
            continue
        text = path.read_text(encoding="utf-8")
        if any(word in text for word in ("kind =", "ERROR_TYPE", "KINDS", ROOT_CLASS)):
            found.append((rel, ast.parse(text, filename=str(path))))
    return found


def _serving_classes(classes: list[_Class]) -> list[_Class]:
    """The classes derived from ServingError (by name, through any module), root first,
    each with its kind, status and meaning inherited where it has none of its own."""
    by_name: dict[str, _Class] = {}
    serving: list[_Class] = []
    todo = [c for c in classes if c.name == ROOT_CLASS]
    while todo:
        cls = todo.pop(0)
        if cls.name in by_name:
            continue
        parent = next((by_name[b] for b in cls.bases if b in by_name), None)
        if parent is not None:
            cls.kind = cls.kind or parent.kind
            cls.status = cls.status or parent.status
            cls.doc = cls.doc or parent.doc
        by_name[cls.name] = cls
        serving.append(cls)
        todo += [c for c in classes if cls.name in c.bases and c.name not in by_name]
    return serving


@lru_cache(maxsize=1)
def scan(package: Path = PACKAGE) -> dict[str, Kind]:
    """Every kind the package's code can answer, by name."""
    classes: list[_Class] = []
    literals: list[tuple[str, int | None, str]] = []
    for module, tree in _modules(package):
        reader = _Reader(module)
        reader.visit(tree)
        classes += reader.classes
        literals += [(kind, status, module) for kind, status in reader.literals]
    kinds: dict[str, Kind] = {}

    def add(name: str, module: str, status: int | None = None, meaning: str = "") -> Kind:
        kind = kinds.setdefault(name, Kind(name))
        kind.where.add(module)
        if status is not None:
            kind.statuses.add(status)
        kind.meaning = kind.meaning or meaning
        kind.status = kind.status or status or 0
        return kind

    for cls in _serving_classes(classes):
        if cls.kind:
            meaning = ROOT_MEANING if cls.name == ROOT_CLASS else cls.doc
            add(cls.kind, cls.module, cls.status, meaning).statuses.update(
                EXTRA_STATUSES.get(cls.kind, ()))
        literals += [(kind, None, cls.module) for kind in cls.instance_kinds]
    for name, status, module in literals:
        add(name, module, status)
    for name, (statuses, meaning) in INSTANCE_KINDS.items():
        if name in kinds:
            kinds[name].statuses.update(statuses)
            kinds[name].status = kinds[name].status or min(statuses)
            kinds[name].meaning = kinds[name].meaning or meaning
    return dict(sorted(kinds.items()))


def kinds_by_status() -> dict[int, list[str]]:
    """``ERROR_TYPE`` values per status, for the OpenAPI document."""
    out: dict[int, set[str]] = {}
    for kind in scan().values():
        for status in kind.statuses:
            out.setdefault(status, set()).add(kind.name)
    return {status: sorted(names) for status, names in sorted(out.items())}
