"""The route table is the one source: Flask's routes, the front's own routes,
``/get_paths`` and the OpenAPI document all come from it, and docs/openapi.json is
the document as generated (``python scripts/update_api_docs.py`` rewrites it)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import schemathesis

from basic_inference_server import errors
from basic_inference_server.gateway.api_table import FRONT, NATIVE, ROUTES, paths_listing
from basic_inference_server.gateway.app import Front
from basic_inference_server.gateway.management import build_management_app
from basic_inference_server.gateway.openai_front import OpenAIRoutes
from basic_inference_server.gateway.openapi import document, document_text, statuses
from tests.conftest import ROOT

CHECKED_IN = ROOT / "docs" / "openapi.json"


def test_the_checked_in_document_is_the_generated_one():
    assert CHECKED_IN.read_text(encoding="utf-8") == document_text(), \
        "docs/openapi.json is stale: run python scripts/update_api_docs.py"


def test_the_document_is_valid_openapi_3_1():
    doc = document()
    assert doc["openapi"].startswith("3.1")
    schemathesis.openapi.from_dict(json.loads(document_text())).validate()


def test_flask_registers_exactly_the_table_routes_the_front_does_not_answer():
    app = build_management_app(SimpleNamespace(jobs=None, spec=None))  # type: ignore[arg-type]
    registered = {(rule.rule, frozenset(rule.methods - {"HEAD", "OPTIONS"}))
                  for rule in app.url_map.iter_rules() if rule.endpoint != "static"}
    wanted = {(r.path, frozenset(r.methods)) for r in ROUTES if r.view != FRONT}
    assert registered == wanted


def test_the_front_answers_the_table_native_routes_itself():
    assert set(NATIVE) == {"/run", "/jobs", "/usage", "/dashboard/events", "/v1/chat/completions",
                           "/v1/completions", "/v1/embeddings", "/v1/models"}
    # A path with a parameter is matched by its own handler (gateway/job_events.py).
    assert {r.path for r in ROUTES if r.view == FRONT} - set(NATIVE) == \
        {"/jobs/<string(length=32):job_id>/events"}
    for handler in NATIVE.values():
        method = OpenAIRoutes.HANDLERS.get(handler)
        assert callable(getattr(OpenAIRoutes, method) if method else getattr(Front, handler))


def test_get_paths_lists_every_route_of_the_table():
    listing = paths_listing()
    assert len(listing) == len(ROUTES)
    assert listing["/jobs/<job_id>"]["methods"] == ["GET", "DELETE"]
    assert listing["/jobs/<job_id>"]["info"].startswith(
        "GET: status, attempts, timestamps and result of a job; DELETE: cancel it")
    assert {p for p, info in listing.items() if info["admin"]} == \
        {r.shown for r in ROUTES if r.auth == "admin"}


def test_admin_operations_need_the_token_and_list_its_refusals():
    doc = document()
    for route in ROUTES:
        path = doc["paths"][route.shown.replace("<", "{").replace(">", "}")]
        for method in route.methods:
            op = path[method.lower()]
            codes = set(op["responses"])
            assert {"400", "413", "503"} <= codes
            if route.auth == "admin":
                assert op["security"] == [{"adminToken": []}]
                assert {"401", "403"} <= codes
                if method == "POST":
                    assert {"413", "415"} <= codes and op["requestBody"]["required"]
            elif route.auth == "metrics":
                assert op["security"] == [{"adminToken": []}, {"metricsToken": []}]
                assert "401" in codes
            elif route.auth == "data":  # a key with API_KEYS on, nothing with it off
                assert op["security"] == [{}, {"apiKey": []}]
                assert {"401", "403"} <= codes
            else:
                assert op["security"] == []
    assert set(doc["components"]["securitySchemes"]) == {"adminToken", "apiKey", "metricsToken"}


def test_every_error_kind_is_in_the_document_under_its_status():
    doc = document()
    schemas = doc["components"]["schemas"]
    every = set(schemas["Error"]["properties"]["ERROR_TYPE"]["enum"])
    todo: list[type[errors.ServingError]] = [errors.ServingError]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        assert cls.kind in every
        if f"Error{cls.status}" in schemas:
            assert cls.kind in schemas[f"Error{cls.status}"]["allOf"][1]["properties"][
                "ERROR_TYPE"]["enum"]
    assert {"overloaded", "too_many_connections", "upstream_dropped", "unavailable",
            "circuit_open"} <= set(schemas["Error503"]["allOf"][1]["properties"]["ERROR_TYPE"]["enum"])
    assert {"rate_limited", "quota_exceeded", "queue_full", "models_unavailable"} <= \
        set(schemas["Error429"]["allOf"][1]["properties"]["ERROR_TYPE"]["enum"])
    run = next(r for r in ROUTES if r.path == "/run")
    assert {400, 404, 413, 429, 500, 503, 504} <= set(statuses(run))


def test_run_documents_its_streamed_answers_on_post_only():
    doc = document()
    post = doc["paths"]["/run"]["post"]
    content = post["responses"]["200"]["content"]
    assert set(content) == {"application/json", "text/event-stream", "application/x-ndjson"}
    assert post["requestBody"]["content"]["application/json"]["schema"]["properties"][
        "STREAM"]["type"] == "boolean"
    schemas = doc["components"]["schemas"]
    events = {line["properties"]["event"]["const"]: line["properties"]["data"]["$ref"]
              for line in schemas["StreamEvent"]["oneOf"]}
    assert events == {"chunk": "#/components/schemas/StreamChunk",
                      "done": "#/components/schemas/StreamDone",
                      "error": "#/components/schemas/StreamError"}
    assert schemas["StreamDone"]["required"] == ["CHUNKS"]
    assert set(doc["paths"]["/run"]["get"]["responses"]["200"]["content"]) == {"application/json"}
    assert "STREAM" not in json.dumps(doc["paths"]["/jobs"]["post"]["requestBody"])
