"""The front's upstream client against a real gateway over TCP: the remote-endpoint case.

A gateway serving ``echo`` (API keys on) is the remote; :class:`Upstream` forwards to
its URL as the front of another gateway does for an endpoint with ``URLS``.
"""

from __future__ import annotations

import asyncio
import os

import orjson

from basic_inference_server.errors import Unavailable
from basic_inference_server.gateway.upstream import Upstream
from basic_inference_server.traffic.remote import rewrite_signature
from tests.tenants.conftest import make_key


def remote_route(url: str, api_key: str | None) -> dict:
    return {"state": "READY", "timeout": 10, "retry_on_crash": False,
            "remote": {"urls": [url], "signature": "echo", "api_key": api_key}}


def forward_all(route: dict, bodies: list[bytes], head: bytes = b"") -> list[object]:
    """Forward ``bodies`` one after the other on one Upstream (kept-alive connections)."""

    async def main() -> list[object]:
        up = Upstream()
        results: list[object] = []
        for i, body in enumerate(bodies):
            try:
                results.append(await up.forward_remote(
                    route, "rem", head + f"X-Request-ID: remote-{i}\r\n".encode(), body))
            except Unavailable as err:
                results.append(err)
        up.close_idle(0)
        return results

    return asyncio.run(main())


def test_upstream_runs_a_remote_gateways_endpoint_with_its_key(gateways, tmp_path):
    remote = gateways({"API_KEYS": True, "CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 2}}})
    key_file = tmp_path / "remote_key"
    key_file.write_text(make_key(remote, TENANT="edge")["KEY"] + "\n")
    os.chmod(key_file, 0o600)
    url = f"http://127.0.0.1:{remote.port}"
    # The caller named the endpoint "rem" here; the remote knows it as "echo".
    bodies = [rewrite_signature(orjson.dumps({"SIGNATURE": "rem", "i": i}), "echo")
              for i in range(5)]
    answers = forward_all(remote_route(url, f"file:{key_file}"), bodies)
    for i, resp in enumerate(answers):
        assert resp.status == 200, resp.body
        assert orjson.loads(resp.body)["echo"] == {"i": i}
        assert resp.worker == url
    # Without the key the remote refuses: its 401 comes back as it is.
    (refused,) = forward_all(remote_route(url, None), bodies[:1])
    assert refused.status == 401 and b"API key" in refused.body
    # Gone (its whole process tree): nothing accepts on its port any more.
    remote.stop()
    (gone,) = forward_all(remote_route(url, f"file:{key_file}"), bodies[:1])
    assert isinstance(gone, Unavailable) and "not accepting connections" in str(gone)
