"""The client's public methods, shared by :class:`~.Client` and :class:`~.AsyncClient`.

Each method builds a flow (see :mod:`.flows`) and hands it to ``_drive``: the sync
client runs it and returns the value, the async client returns a coroutine of it.
Python's type system cannot say "T or Awaitable[T]" per subclass, so the methods are
annotated ``Any`` and their docstrings name what they return.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from .. import streams
from .errors import BisError, ConnectFailed, ConnectionLost
from .flows import Answer, Call, Flow, Flows
from .retry import PollPolicy, RetryPolicy

DEFAULT_URL = "http://127.0.0.1:5002"
API_KEY_HEADER = "X-API-Key"
# Connect errors happen before a byte of the request leaves: it cannot have run.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class BaseClient:
    """Connection settings, credentials and the shared methods; see the subclasses."""

    def __init__(self, url: str = DEFAULT_URL, *, admin_token: str | None = None,
                 api_key: str | None = None, api_key_header: str = API_KEY_HEADER,
                 timeout: float = 75.0, connect_timeout: float = 5.0,
                 retry: RetryPolicy | None = None, poll: PollPolicy | None = None,
                 max_connections: int = 20) -> None:
        self.url = url.rstrip("/")
        self._admin_token = admin_token
        self._api_key = api_key
        self._api_key_header = api_key_header
        self.timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self.limits = httpx.Limits(max_connections=max_connections,
                                   max_keepalive_connections=max_connections)
        self.flows = Flows(retry or RetryPolicy(), poll or PollPolicy())

    def __repr__(self) -> str:  # never shows the credentials
        return f"{type(self).__name__}({self.url!r})"

    # -- for the drivers -----------------------------------------------------------------
    def _request_args(self, call: Call) -> dict[str, Any]:
        headers = {"Accept": streams.SSE_TYPE if call.stream else "application/json"}
        # The admin token goes with every call but the data path's when an API key is set:
        # which read-only routes need it is the gateway's choice, not the client's.
        if self._admin_token and (call.admin or not self._api_key):
            headers["Authorization"] = f"Bearer {self._admin_token}"
        if not call.admin and self._api_key:
            headers[self._api_key_header] = self._api_key
        if call.last_event_id:
            headers["Last-Event-ID"] = str(call.last_event_id)
        args: dict[str, Any] = {"method": call.method, "url": self.url + call.path,
                                "headers": headers, "json": call.json, "params": call.params}
        if call.timeout is not None:
            args["timeout"] = httpx.Timeout(call.timeout, connect=self.timeout.connect)
        return args

    @staticmethod
    def _answer(resp: httpx.Response) -> Answer:
        try:
            body = resp.json()
        except ValueError:
            body = {"ERROR": f"non-JSON answer: {resp.text[:200]!r}"}
        return Answer(resp.status_code, body, resp.headers)

    @staticmethod
    def _streaming(resp: httpx.Response) -> bool:
        """Whether an answer to a stream call is an event stream to read as it comes."""
        return resp.status_code < 300 and \
            streams.format_of(resp.headers.get("content-type")) is streams.Format.SSE

    @staticmethod
    def _transport_error(call: Call, exc: httpx.TransportError) -> BisError:
        cls = ConnectFailed if isinstance(exc, NOT_SENT) else ConnectionLost
        return cls(f"{call.method} {call.path}: {type(exc).__name__}: {exc}")

    def _drive(self, flow: Flow[Any]) -> Any:
        raise NotImplementedError

    def _stream(self, flow: Flow[Answer]) -> Any:
        raise NotImplementedError

    # -- data path ---------------------------------------------------------------------
    def run(self, signature: str, payload: Mapping[str, Any] | None = None, *,
            idempotent: bool = False, timeout: float | None = None,
            retry: RetryPolicy | None = None) -> Any:
        """Call an endpoint; the answer's JSON body (a dict).

        ``idempotent``: the request may be sent again after its worker died running it.
        """
        return self._drive(self.flows.run(signature, payload, idempotent, timeout, retry))

    def stream(self, signature: str, payload: Mapping[str, Any] | None = None, /, *,
               timeout: float | None = None, retry: RetryPolicy | None = None,
               **fields: Any) -> Any:
        """Call a streaming endpoint; an iterator of its chunks (dicts), read as they come.

        A :class:`~.streaming.Stream` (``AsyncStream`` from the async client): the request
        is sent when the iteration starts; ``done`` holds the last event's data once it
        ends; closing it closes the response, which stops the work. The fields are
        ``payload`` and ``fields`` together. ``timeout``: the longest wait for the answer
        to begin and between two chunks. A refusal before the first event is retried as
        :meth:`run`'s; an ``error`` event raises its typed error (never resent).
        """
        fields = {**(payload or {}), **fields}
        if fields.get("ASYNC"):  # the gateway would answer 202 with a job, not a stream
            raise ValueError("stream() runs now: submit() a job instead of ASYNC true")
        return self._stream(self.flows.open_stream(signature, fields, timeout, retry))

    def submit(self, signature: str, payload: Mapping[str, Any] | None = None, *,
               retry: RetryPolicy | None = None) -> Any:
        """Submit an async job; its id (str)."""
        return self._drive(self.flows.submit(signature, payload, retry))

    def status(self, job_id: str) -> Any:
        """A job's record: STATUS, ATTEMPTS, timestamps, RESULT once done (dict)."""
        return self._drive(self.flows.status(job_id))

    def result(self, job_id: str) -> Any:
        """A finished job's answer (dict); JobPending before, JobFailed if it failed."""
        return self._drive(self.flows.result(job_id))

    def wait(self, job_id: str, timeout: float | None = None) -> Any:
        """Poll a job, backing off, until it finishes; its answer (dict) or JobFailed."""
        return self._drive(self.flows.wait(job_id, timeout))

    def cancel(self, job_id: str) -> Any:
        """Cancel a job: its record (dict), ``STATUS`` ``cancelled`` (it waited) or
        ``running`` with ``CANCEL_REQUESTED`` (it is being stopped); Conflict once over."""
        return self._drive(self.flows.cancel(job_id))

    def job_events(self, job_id: str, last_event_id: int = 0) -> Any:
        """A job's events as they come, after ``last_event_id``: an iterator of
        :class:`~.job_events.JobEvent` (``AsyncJobEvents`` from the async client) that
        ends after the job's last event and resumes by itself after a dropped connection."""
        return self._job_events(job_id, last_event_id)

    def _job_events(self, job_id: str, after: int) -> Any:
        raise NotImplementedError

    # -- management ----------------------------------------------------------------------
    def list_servers(self) -> Any:
        """Endpoints with state, workers and errors (dict)."""
        return self._drive(self.flows.admin("GET", "/list_servers"))

    def system_status(self) -> Any:
        """Memory, disk, GPU, alerts and queues (dict)."""
        return self._drive(self.flows.admin("GET", "/system_status"))

    def start_server(self, signature: str, **settings: Any) -> Any:
        """Start an endpoint, optionally with new settings."""
        return self._drive(self.flows.admin("POST", "/start_server",
                                            {**settings, "SIGNATURE": signature}))

    def kill_server(self, signature: str) -> Any:
        """Stop an endpoint (it drains first)."""
        return self._drive(self.flows.admin("POST", "/kill_server", {"SIGNATURE": signature}))

    def scale(self, signature: str, workers: int) -> Any:
        """Set an endpoint's number of worker processes."""
        return self._drive(self.flows.admin("POST", "/update_workers",
                                            {"SIGNATURE": signature, "NR_WORKERS": workers}))

    def reload(self, signature: str) -> Any:
        """Zero-downtime reload of an endpoint's code."""
        return self._drive(self.flows.admin("POST", "/reload_server", {"SIGNATURE": signature},
                                            idempotent=False))

    def shutdown(self) -> Any:
        """Drain the gateway and stop it."""
        return self._drive(self.flows.shutdown())

    def dead_letters(self, signature: str, limit: int = 100) -> Any:
        """An endpoint's dead letters (dict with DEAD_LETTERS)."""
        return self._drive(self.flows.admin("GET", "/jobs/dead",
                                            params={"SIGNATURE": signature, "LIMIT": limit}))

    def requeue(self, signature: str, job_id: str | None = None) -> Any:
        """Requeue one dead letter, or all of an endpoint's."""
        body: dict[str, Any] = {"SIGNATURE": signature}
        if job_id is not None:
            body["JOB_ID"] = job_id
        return self._drive(self.flows.admin("POST", "/jobs/requeue", body, idempotent=False))

    def ready(self) -> Any:
        """True when ``/health/ready`` answers 200."""
        return self._drive(self.flows.ready())
