"""The request pipeline: one place calls the worker's hooks and classifies errors."""

from __future__ import annotations

import base64
import binascii
import traceback
from typing import Any

from ..errors import BadRequest, ServingError
from ..worker import FlaskWorker


class StageError(ServingError):
    """An exception raised by one of the worker's hooks, with where it happened."""

    def __init__(self, stage: str, exc: BaseException) -> None:
        frames = traceback.extract_tb(exc.__traceback__)
        last = frames[-1] if frames else None
        super().__init__(
            f"{type(exc).__name__} in {stage}: {exc}",
            EXCEPTION=type(exc).__name__,
            ERROR_MESSAGE=str(exc),
            ERROR_STAGE=stage,
            ERROR_FILE=last.filename if last else None,
            ERROR_LINE=last.lineno if last else None,
        )
        self.stage = stage
        self.cause = exc  # its traceback is logged by the server (the caller gets the summary)
        # _pre_process checks the caller's input: its failures are the caller's fault.
        self.status = 400 if stage == "_pre_process" else 500
        self.kind = "bad_request" if self.status == 400 else "endpoint_error"


def decode_base64_fields(inputs: dict[str, Any], keys: list[str]) -> None:
    """Decode the configured base64 input fields in place (400 on bad base64)."""
    for key in keys:
        if key in inputs and isinstance(inputs[key], str):
            try:
                inputs[key] = base64.b64decode(inputs[key], validate=True)
            except (binascii.Error, ValueError):
                raise BadRequest(f"field {key} is not valid base64", FIELD=key) from None


def encode_base64_fields(result: dict[str, Any], keys: list[str]) -> None:
    for key in keys:
        value = result.get(key)
        if isinstance(value, (bytes, bytearray)):
            result[key] = base64.b64encode(value).decode("ascii")


def run_pipeline(worker: FlaskWorker, inputs: dict[str, Any]) -> Any:
    """``_pre_process -> _predict -> _post_process``; raises :class:`StageError`."""
    stage = "_pre_process"
    try:
        prep = worker._pre_process(inputs)
        stage = "_predict"
        pred = worker._predict(prep)
        stage = "_post_process"
        return worker._post_process(pred)
    except ServingError:
        raise  # already an answer (a model the request needs is unavailable: 429)
    except Exception as exc:
        raise StageError(stage, exc) from exc
