"""An endpoint's own answer keys are never lost to the metadata the server adds.

The metadata of every answer (``ver``, ``time``, ``host``, ``server``, ``signature``,
``call_id``...) replaced an endpoint's keys of the same name. The endpoint's value now
wins, the metadata of that name is left out, and a warning says so once per key.
"""

from __future__ import annotations

import logging

from tests.conftest import write_endpoint
from tests.unit.inprocess import build, post

OWN_KEYS = '''
from basic_inference_server import FlaskWorker


class OwnKeysWorker(FlaskWorker):
    def _pre_process(self, inputs):
        return inputs

    def _predict(self, inputs):
        return inputs

    def _post_process(self, pred):
        return {"host": "my-host", "time": 12.5, "signature": "mine", "call_id": None,
                "value": pred.get("N")}
'''


def test_the_endpoints_own_keys_win_and_the_clash_is_logged_once(tmp_path, caplog):
    write_endpoint(tmp_path, "own_keys", OWN_KEYS)
    app = build("own_keys", tmp_path)
    with caplog.at_level(logging.WARNING, logger="basic_inference_server.server.entry"):
        answers = [post(app, {"SIGNATURE": "own_keys", "N": n})[1] for n in range(3)]
    for n, body in enumerate(answers):
        assert (body["host"], body["time"], body["signature"], body["call_id"]) == (
            "my-host", 12.5, "mine", None)
        assert body["value"] == n
        # The metadata the endpoint did not set is still there.
        assert body["server"] == "unit-box" and body["worker_id"] == "own_keys:0" and "ver" in body
    warned = [r.getMessage() for r in caplog.records if "metadata" in r.getMessage()]
    assert len(warned) == 4, warned  # one per key, not per request
    assert all("own_keys" in line for line in warned)
    assert {key for key in ("host", "time", "signature", "call_id")
            if any(repr(key) in line for line in warned)} == {"host", "time", "signature",
                                                              "call_id"}
