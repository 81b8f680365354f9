"""The asyncio client: one pooled ``httpx.AsyncClient``; the same methods, awaited."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from .api import BaseClient
from .flows import Answer, Call, Flow, Sleep
from .job_events import AsyncJobEvents
from .streaming import AsyncStream


class AsyncClient(BaseClient):
    """Asyncio client of a gateway: ``await bis.run(...)``; ``async with`` closes it."""

    def __init__(self, url: str = "http://127.0.0.1:5002", **options: Any) -> None:
        super().__init__(url, **options)
        self._http = httpx.AsyncClient(timeout=self.timeout, limits=self.limits)

    async def _send(self, call: Call) -> Any:
        try:
            if call.stream:
                return await self._open(call)
            return self._answer(await self._http.request(**self._request_args(call)))
        except httpx.TransportError as exc:
            raise self._transport_error(call, exc) from exc

    async def _open(self, call: Call) -> Answer:
        """A stream call's answer: an event stream left open as the body, else read whole."""
        request = self._http.build_request(**self._request_args(call))
        resp = await self._http.send(request, stream=True)
        if self._streaming(resp):
            return Answer(resp.status_code, resp, resp.headers)
        try:
            await resp.aread()
        finally:
            await resp.aclose()
        return self._answer(resp)

    def _stream(self, flow: Flow[Answer]) -> AsyncStream:
        return AsyncStream(lambda: self._drive(flow))

    def _job_events(self, job_id: str, after: int) -> AsyncJobEvents:
        return AsyncJobEvents(lambda last: self._drive(self.flows.open_events(job_id, last)),
                              after)

    async def _drive(self, flow: Flow[Any]) -> Any:
        try:
            step = next(flow)
            while True:
                if isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                    step = flow.send(None)
                    continue
                try:
                    answer = await self._send(step)
                except Exception as exc:  # noqa: BLE001 - handed to the flow, which decides
                    step = flow.throw(exc)
                    continue
                step = flow.send(answer)
        except StopIteration as stop:
            return stop.value

    async def close(self) -> None:
        """Close the HTTP connections."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
