"""Every ERROR_TYPE the code can answer is found, has a status, and is documented.

``gateway/error_kinds.py`` reads the package's source; the OpenAPI document and the
error table of docs/http-api.md list what it finds. A kind raised anywhere (a new
``ServingError`` subclass in any package, a kind set per instance, a literal
``ERROR_TYPE``) and missing from either fails here.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

from basic_inference_server.errors import ServingError
from basic_inference_server.gateway.error_kinds import INSTANCE_KINDS, PACKAGE, SKIPPED, scan
from tests.conftest import ROOT

# The kinds docs/http-api.md once lacked, for the record.
ONCE_MISSING = ("endpoint_error", "unsupported_media_type", "conflict", "overloaded",
                "circuit_open", "too_many_connections", "upstream_dropped", "rate_limited",
                "quota_exceeded")
# What a plain search sees as setting a kind: a class's or an instance's ``kind``, a
# literal ERROR_TYPE in a dict or a call.
PLAIN = re.compile(r"""(?:\bkind\s*=\s*|"ERROR_TYPE"\s*:\s*|\bERROR_TYPE\s*=\s*)"""
                   r"""(?:[^"\n]*\belse\s+)?"([a-z_]+)\"""")


def sources() -> list[tuple[str, str]]:
    return [(rel, path.read_text(encoding="utf-8"))
            for path in sorted(PACKAGE.rglob("*.py"))
            if not (rel := path.relative_to(PACKAGE).as_posix()).startswith(SKIPPED)]


def test_every_kind_has_a_status() -> None:
    lost = {name: sorted(kind.where) for name, kind in scan().items() if not kind.statuses}
    assert not lost, (f"kinds set where their status is not said: {lost}; give each a row "
                      "in INSTANCE_KINDS (basic_inference_server/gateway/error_kinds.py)")
    assert set(INSTANCE_KINDS) <= set(scan()), "INSTANCE_KINDS names a kind nothing sets"


def test_the_scan_finds_every_kind_a_plain_search_finds() -> None:
    found = {(kind, rel) for rel, text in sources() for kind in PLAIN.findall(text)}
    missed = sorted(f"{kind} ({rel})" for kind, rel in found if kind not in scan())
    assert found and not missed, missed


def test_every_serving_error_class_is_found_with_its_kind_and_status() -> None:
    """Import every module that defines a ServingError subclass and walk the classes."""
    for rel, text in sources():
        if re.search(r"^class \w+\(", text, re.M) and "Error" in text and \
                not rel.endswith("__main__.py"):
            importlib.import_module("basic_inference_server." +
                                    rel.removesuffix(".py").replace("/", ".").removesuffix(
                                        ".__init__"))
    todo, seen = [ServingError], []
    while todo:
        cls = todo.pop()
        seen.append(cls)
        todo.extend(cls.__subclasses__())
    assert len(seen) > 20
    kinds = scan()
    for cls in seen:
        if cls.__module__.startswith("basic_inference_server."):
            assert cls.kind in kinds, f"{cls.__module__}.{cls.__name__}: {cls.kind}"
            assert cls.status in kinds[cls.kind].statuses, cls


def test_every_kind_is_in_the_openapi_document_and_the_http_api_page() -> None:
    schemas = json.loads((ROOT / "docs" / "openapi.json").read_text())["components"]["schemas"]
    document = set(schemas["Error"]["properties"]["ERROR_TYPE"]["enum"])
    page = set(re.findall(r"^\| `([a-z_]+)` \| [\d, ]+ \|",
                          (ROOT / "docs" / "http-api.md").read_text(), re.M))
    kinds = set(scan())
    assert set(ONCE_MISSING) <= kinds
    assert not kinds - document, f"not in docs/openapi.json: {sorted(kinds - document)}"
    assert not kinds - page, f"not in docs/http-api.md: {sorted(kinds - page)}"
    for name, kind in scan().items():
        for status in kind.statuses:
            listed = schemas[f"Error{status}"]["allOf"][1]["properties"]["ERROR_TYPE"]["enum"]
            assert name in listed, f"{name} under {status}"


def test_a_kind_added_anywhere_is_picked_up(tmp_path: Path) -> None:
    """A package of its own: subclasses in other modules, per-instance kinds, literals."""
    (tmp_path / "errors.py").write_text(
        'class ServingError(Exception):\n    """Base."""\n    status = 500\n'
        '    kind = "internal_error"\n\n\n'
        'class Unavailable(ServingError):\n    """Not now."""\n    status = 503\n'
        '    kind = "unavailable"\n')
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "cart.py").write_text(
        'from .. import errors\n\n\n'
        'class CartFull(errors.Unavailable):\n    """The cart is full. More words."""\n'
        '    kind = "cart_full"\n\n\n'
        'class Odd(errors.ServingError):\n    def __init__(self, bad):\n'
        '        self.kind = "odd_input" if bad else "odd_state"\n\n\n'
        'def answer():\n    return {"ERROR": "x", "ERROR_TYPE": "teapot"}\n\n\n'
        'TABLE_KINDS = {418: "teapot"}\n')
    (tmp_path / "client").mkdir()
    (tmp_path / "client" / "errors.py").write_text('ERRORS = {"ERROR_TYPE": "client_only"}\n')
    kinds = scan(tmp_path)
    assert kinds["cart_full"].statuses == {503}
    assert kinds["cart_full"].meaning == "The cart is full."
    assert kinds["teapot"].statuses == {418}
    assert {"odd_input", "odd_state"} <= set(kinds)
    assert not kinds["odd_input"].statuses  # test_every_kind_has_a_status would name it
    assert "client_only" not in kinds


@pytest.mark.parametrize("name", ONCE_MISSING)
def test_the_kinds_once_missing_have_their_status(name: str) -> None:
    assert scan()[name].statuses
