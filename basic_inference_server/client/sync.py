"""The blocking client: one pooled ``httpx.Client``."""

from __future__ import annotations

import time
from typing import Any

import httpx

from .api import BaseClient
from .flows import Answer, Call, Flow, Sleep
from .job_events import JobEvents
from .streaming import Stream


class Client(BaseClient):
    """Blocking client of a gateway. Use as a context manager, or call :meth:`close`.

    >>> with Client("http://127.0.0.1:5002", admin_token=token) as bis:
    ...     bis.run("echo", {"x": 1})
    """

    def __init__(self, url: str = "http://127.0.0.1:5002", **options: Any) -> None:
        super().__init__(url, **options)
        self._http = httpx.Client(timeout=self.timeout, limits=self.limits)

    def _send(self, call: Call) -> Any:
        try:
            if call.stream:
                return self._open(call)
            return self._answer(self._http.request(**self._request_args(call)))
        except httpx.TransportError as exc:
            raise self._transport_error(call, exc) from exc

    def _open(self, call: Call) -> Answer:
        """A stream call's answer: an event stream left open as the body, else read whole."""
        resp = self._http.send(self._http.build_request(**self._request_args(call)), stream=True)
        if self._streaming(resp):
            return Answer(resp.status_code, resp, resp.headers)
        try:
            resp.read()
        finally:
            resp.close()
        return self._answer(resp)

    def _stream(self, flow: Flow[Answer]) -> Stream:
        return Stream(lambda: self._drive(flow))

    def _job_events(self, job_id: str, after: int) -> JobEvents:
        return JobEvents(lambda last: self._drive(self.flows.open_events(job_id, last)), after)

    def _drive(self, flow: Flow[Any]) -> Any:
        try:
            step = next(flow)
            while True:
                if isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    step = flow.send(None)
                    continue
                try:
                    answer = self._send(step)
                except Exception as exc:  # noqa: BLE001 - handed to the flow, which decides
                    step = flow.throw(exc)
                    continue
                step = flow.send(answer)
        except StopIteration as stop:
            return stop.value

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
