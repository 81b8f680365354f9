"""schemathesis hooks (``SCHEMATHESIS_HOOKS``): never send the calls that destroy the run.

A valid ``/shutdown`` stops the gateway under test and ``/kill_server`` of ``echo``
stops the endpoint the data-plane cases need; every other generated request is sent.
"""

from __future__ import annotations

from typing import Any

import schemathesis

SHUTDOWN = "SAFE_KILL_SERVER_CMD"
RUNNING = ("echo",)


@schemathesis.hook
def filter_body(context: Any, body: Any) -> bool:
    operation = context.operation
    if operation is None or not isinstance(body, dict):
        return True
    signature = body.get("SIGNATURE")
    if operation.path == "/shutdown":
        return bool(signature != SHUTDOWN)
    if operation.path == "/kill_server":
        return signature not in RUNNING
    return True
