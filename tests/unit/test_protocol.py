"""Wire format, error mapping and the request pipeline (pure functions, no processes)."""

from __future__ import annotations

import base64
import time

import orjson
import pytest

from basic_inference_server import FileOutput, FlaskWorker
from basic_inference_server.config import parse_endpoint
from basic_inference_server.errors import (
    BadRequest,
    PayloadTooLarge,
    ServingError,
    Unavailable,
    UpstreamTimeout,
)
from basic_inference_server.manager.children import BACKOFF_CAP
from basic_inference_server.manager.state import Endpoint, State
from basic_inference_server.protocol import base_meta, dumps, parse_body, signature_of
from basic_inference_server.server.stages import (
    StageError,
    decode_base64_fields,
    encode_base64_fields,
    run_stages,
)
from basic_inference_server.version import __version__


@pytest.mark.parametrize("raw,fragment", [
    (b"", "empty body"),
    (b"[1, 2]", "must be a JSON object, got list"),
    (b'"text"', "must be a JSON object, got str"),
    (b"42", "must be a JSON object, got int"),
    (b"null", "must be a JSON object, got NoneType"),
    (b'{"a": ', "not valid JSON"),
    (b'{"a": "\xff"}', "not valid JSON"),
    (b"[" * 100000 + b"]" * 100000, "not valid JSON"),
    (b"\xef\xbb\xbf{}", "not valid JSON"),
])
def test_parse_body_rejects(raw, fragment):
    with pytest.raises(BadRequest) as info:
        parse_body(raw)
    assert fragment in info.value.message
    assert info.value.status == 400


def test_parse_body_accepts_an_object():
    assert parse_body(b'{"SIGNATURE": "x", "n": [1, {"a": null}]}') == {
        "SIGNATURE": "x", "n": [1, {"a": None}]}


@pytest.mark.parametrize("body,fragment", [
    ({}, "missing SIGNATURE"),
    ({"SIGNATURE": None}, "missing SIGNATURE"),
    ({"SIGNATURE": ""}, "non-empty string"),
    ({"SIGNATURE": 5}, "got int"),
    ({"SIGNATURE": ["echo"]}, "got list"),
    ({"SIGNATURE": {"a": 1}}, "got dict"),
])
def test_signature_of_rejects(body, fragment):
    with pytest.raises(BadRequest, match=fragment):
        signature_of(body)


def test_signature_of():
    assert signature_of({"SIGNATURE": "echo"}) == "echo"


def test_dumps_serialises_what_json_lacks():
    out = orjson.loads(dumps({"b": b"ab", "t": (1, 2), "s": {3}, "o": object, 1: "int key"}))
    assert out["b"] == "ab" and out["t"] == [1, 2] and out["s"] == [3]
    assert out["o"].startswith("<class") and out["1"] == "int key"


def test_base_meta():
    meta = base_meta("box", "1.2.3")
    assert meta["ver"] == __version__ and meta["app_ver"] == "1.2.3" and meta["server"] == "box"
    assert meta["host"] and time.strptime(meta["time"], "%Y-%m-%d %H:%M:%S")


@pytest.mark.parametrize("err,status", [
    (BadRequest("x"), 400), (PayloadTooLarge("x"), 413), (Unavailable("x"), 503),
    (UpstreamTimeout("x"), 504), (ServingError("x"), 500),
])
def test_error_bodies(err, status):
    body = err.to_dict()
    assert err.status == status and body["ERROR"] == "x" and body["ERROR_TYPE"] == err.kind


@pytest.mark.parametrize("retry_after,header", [(None, None), (0.2, "1"), (2.6, "3"), (60, "60")])
def test_retry_after_header(retry_after, header):
    headers = dict(Unavailable("x", retry_after=retry_after).headers())
    assert headers.get("Retry-After") == header


def test_error_details_are_fields():
    body = Unavailable("down", retry_after=1, SIGNATURE="m", STATE="FAILED").to_dict()
    assert body["SIGNATURE"] == "m" and body["STATE"] == "FAILED"


class Recorder(FlaskWorker):
    def __init__(self, fail_in=None, **kw):
        super().__init__(**kw)
        self.fail_in = fail_in

    def _pre_process(self, inputs):
        if self.fail_in == "_pre_process":
            raise KeyError("INPUT_VALUE")
        return inputs["x"]

    def _predict(self, prep):
        if self.fail_in == "_predict":
            raise ZeroDivisionError("boom")
        return prep * 2

    def _post_process(self, pred):
        if self.fail_in == "_post_process":
            raise TypeError("cannot pack")
        return {"y": pred}


def test_pipeline_runs_the_three_hooks():
    assert run_stages(Recorder(), {"x": 21}) == {"y": 42}


@pytest.mark.parametrize("stage,status,exc", [
    ("_pre_process", 400, "KeyError"), ("_predict", 500, "ZeroDivisionError"),
    ("_post_process", 500, "TypeError"),
])
def test_pipeline_errors_say_where(stage, status, exc):
    with pytest.raises(StageError) as info:
        run_stages(Recorder(fail_in=stage), {"x": 1})
    err = info.value
    body = err.to_dict()
    assert err.status == status
    assert body["EXCEPTION"] == exc and body["ERROR_STAGE"] == stage
    assert body["ERROR_FILE"] == __file__ and isinstance(body["ERROR_LINE"], int)
    assert stage in body["ERROR"]


def test_base64_fields():
    inputs = {"DATA": base64.b64encode(b"\x00\xffhi").decode(), "OTHER": "aGk="}
    decode_base64_fields(inputs, ["DATA", "MISSING"])
    assert inputs == {"DATA": b"\x00\xffhi", "OTHER": "aGk="}
    out = {"OUT": b"\x01\x02", "TEXT": "keep"}
    encode_base64_fields(out, ["OUT", "TEXT", "ABSENT"])
    assert out == {"OUT": "AQI=", "TEXT": "keep"}


@pytest.mark.parametrize("bad", ["not base64!", "abc", "YQ==YQ=="])
def test_bad_base64_is_a_400_naming_the_field(bad):
    with pytest.raises(BadRequest) as info:
        decode_base64_fields({"DATA": bad}, ["DATA"])
    assert info.value.to_dict()["FIELD"] == "DATA"


def test_worker_config_attributes():
    w = FlaskWorker(default_config={"WEIGHT": 1, "BIAS": 2}, upstream_config={"WEIGHT": 5})
    assert w.cfg_weight == 5 and w.cfg_bias == 2
    assert w.config_data == {"WEIGHT": 5, "BIAS": 2}
    with pytest.raises(AttributeError, match="no setting 'MISSING'.*_CONFIG"):
        _ = w.cfg_missing
    with pytest.raises(AttributeError):
        _ = w.something_else


def test_worker_hooks_must_be_implemented():
    w = FlaskWorker()
    w._load_model()  # optional
    for hook in (w._pre_process, w._predict, w._post_process):
        with pytest.raises(NotImplementedError):
            hook({})


def test_notifications_without_a_manager_are_dropped():
    FlaskWorker()._create_notification(notif="log", msg="nobody listens")


def test_file_response():
    out = FlaskWorker.file_response(data=b"abc", filename="x.bin")
    assert out == FileOutput(data=b"abc", filename="x.bin")
    with pytest.raises(ValueError):
        FlaskWorker.file_response()
    with pytest.raises(ValueError):
        FlaskWorker.file_response(data=b"a", path="/tmp/a")


def test_restart_backoff_grows_and_is_capped():
    ep = Endpoint(config=parse_endpoint("e", {}, "t"))
    ep.state = State.RESTARTING
    ep.failures = 1
    assert ep.backoff() == 0.0  # a lone crash restarts at once
    ep.state = State.FAILED
    assert ep.backoff() == 1.0
    delays = []
    for failures in range(2, 12):
        ep.failures = failures
        delays.append(ep.backoff())
    assert delays[:3] == [2.0, 4.0, 8.0]
    assert delays == sorted(delays) and max(delays) == BACKOFF_CAP
