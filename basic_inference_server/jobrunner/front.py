"""The job runner's client of the gateway front: one job = one ``POST /run``.

The front listens on a socket the manager opened and holds, so the job runner calls
it on its own address (loopback when the gateway listens on every address). With TLS
the certificate names the public host, not this address: it is not checked, which
costs nothing here because no one but this gateway can listen on that socket.

Every call presents the front's internal credential (``Authorization: Bearer``),
which with API keys on stands in for a key, and names the job's tenant with
``X-Customer-ID`` (what the endpoint would have seen had the job run at once). The
job id is the request id, so the front's access log names the job.

A call is cut short when its job is cancelled: the client runs on an event loop of its
thread's own, and the call is a task it looks at every :data:`CANCEL_CHECK` seconds;
once the job's flag is set, the task is cancelled and httpx closes the connection. The
front takes that as a caller that left: it closes its connection to the endpoint, whose
``self.cancelled()`` turns true and whose generator is closed (docs/streaming.md).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import ssl
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from .. import protocol
from ..queues.base import Job
from ..queues.consumer import NotRun

# Beyond the endpoint's TIMEOUT (which the front enforces with a 504), how long the job
# runner waits before it gives up on the front itself.
TIMEOUT_MARGIN = 10.0
# Shorter than the front's keep-alive timeout (30 s by default): the client drops an
# idle connection before the front does.
KEEPALIVE = 10.0
# How often a call in progress looks at its job's flag (a memory read, no I/O).
CANCEL_CHECK = 0.05
# The answer kept for a call cut short by its job's cancel (499: the caller left).
CUT_SHORT = 499
_FILENAME = re.compile(r'filename="?([^";]+)"?')


def _tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _stored(resp: httpx.Response) -> dict[str, Any]:
    """A JSON answer as it is; a file answer base64-encoded, as the servers store it."""
    kind = resp.headers.get("content-type", "")
    if kind.startswith(protocol.JSON):
        try:
            answer = orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            answer = None
        if isinstance(answer, dict):
            return answer
    if resp.status_code != 200:
        return {"ERROR": f"the gateway answered {resp.status_code} without a JSON error",
                "ERROR_TYPE": "internal_error"}
    found = _FILENAME.search(resp.headers.get("content-disposition", ""))
    return {"FILE": {"filename": found.group(1) if found else None, "mimetype": kind or None,
                     "base64": base64.b64encode(resp.content).decode("ascii")}}


class FrontClient:
    """``POST /run`` on the front for one thread (its own keep-alive connection and event
    loop)."""

    def __init__(self, url: str, credential: str) -> None:
        self.credential = credential
        self.loop = asyncio.Runner()
        self.http = httpx.AsyncClient(
            base_url=url, verify=_tls_context() if url.startswith("https:") else True,
            limits=httpx.Limits(max_connections=1, keepalive_expiry=KEEPALIVE))

    def run(self, job: Job, tenant: str | None, timeout: float,
            cancelled: Callable[[], bool] = lambda: False) -> tuple[int, dict[str, Any]]:
        """Run one job now: its status and answer; :class:`NotRun` when the front is
        unreachable (the job was not sent). Once ``cancelled()`` is true the call is cut
        short (its connection closed) and answers 499."""
        return self.loop.run(self._watched(job, tenant, timeout, cancelled))

    async def _watched(self, job: Job, tenant: str | None, timeout: float,
                       cancelled: Callable[[], bool]) -> tuple[int, dict[str, Any]]:
        call = asyncio.ensure_future(self._post(job, tenant, timeout))
        while not call.done():
            await asyncio.wait({call}, timeout=CANCEL_CHECK)
            if not call.done() and cancelled():
                call.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await call
                # (dropped: a cancelled job keeps no answer)
                return CUT_SHORT, {"ERROR": f"job {job.id} was cancelled while it ran"}
        return call.result()

    async def _post(self, job: Job, tenant: str | None,
                    timeout: float) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {self.credential}",
                   "Content-Type": protocol.JSON, "X-Request-ID": f"job-{job.id}"}
        if tenant:
            headers["X-Customer-ID"] = tenant
        if job.traceparent:  # the front goes on with the trace its submit began
            headers["traceparent"] = job.traceparent
        try:
            resp = await self.http.post("/run", content=protocol.dumps(job.body),
                                        headers=headers, timeout=timeout + TIMEOUT_MARGIN)
        except httpx.ConnectError as exc:
            raise NotRun(f"the gateway front is not reachable: {exc}") from None
        except httpx.TimeoutException:
            return 504, {"ERROR": f"no answer from the gateway in {timeout + TIMEOUT_MARGIN:g} s",
                         "ERROR_TYPE": "timeout"}
        except httpx.HTTPError as exc:
            # Sent, then the connection failed: the job may have run.
            return 503, {"ERROR": f"the gateway front dropped the request: {exc}",
                         "ERROR_TYPE": "upstream_dropped"}
        answer = _stored(resp)
        version = resp.headers.get("x-endpoint-version")
        if version:
            # The version that ran the job, as X-Endpoint-Version says it for a /run.
            answer["ENDPOINT_VERSION"] = version
        return resp.status_code, answer

    def close(self) -> None:
        """Close the HTTP client, then its event loop."""
        try:
            self.loop.run(self.http.aclose())
        finally:
            self.loop.close()
