"""The front's upstream client over TCP and TLS: remote endpoints (``URLS``).

Real TCP (and TLS) servers in-process on free ports answer, drop, hang or are absent,
and record what reached them: the request line, the Host header, the credential.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time

from basic_inference_server.errors import Unavailable, UpstreamDropped, UpstreamTimeout
from basic_inference_server.gateway import upstream as upstream_module
from basic_inference_server.gateway.upstream import Upstream
from tests.conftest import until
from tests.integration.test_front_tls import self_signed

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nContent-Type: application/json\r\n\r\n{\"ok\":true}"

DENIED = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"


def unused_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TcpServer:
    """A TCP (or TLS) server that answers (``once``: then closes; ``deny``: 401), drops
    after reading, or holds each request."""

    def __init__(self, mode: str = "ok", tls=None) -> None:
        self.mode, self.tls = mode, tls
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        self.connections = 0
        self.release = asyncio.Event()
        self.port = 0

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def start(self) -> TcpServer:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                self.bodies.append(await reader.readexactly(length))
                self.heads.append(head)
                if self.mode == "drop":
                    writer.transport.abort()
                    return
                if self.mode == "hold":
                    await self.release.wait()
                writer.write(DENIED if self.mode == "deny" else OK)
                await writer.drain()
                if self.mode == "once":
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed its kept-alive connection
        finally:
            writer.close()

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


def route(*urls: str, api_key: str | None = None, timeout: float = 5,
          retry_on_crash: bool = False) -> dict:
    return {"state": "READY", "timeout": timeout, "retry_on_crash": retry_on_crash,
            "remote": {"urls": list(urls), "signature": "there", "api_key": api_key}}


async def forward(up: Upstream, rt: dict, head: bytes = b"X-Request-ID: r1\r\n",
                  body: bytes = b'{"SIGNATURE": "there"}') -> object:
    try:
        return await up.forward_remote(rt, "rem", head, body)
    except Exception as exc:  # noqa: BLE001 - the test looks at which error it was
        return exc


def headers(head: bytes) -> dict[str, str]:
    lines = head.decode().split("\r\n")
    return {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:] if line)}


def test_a_request_names_the_remotes_run_host_and_credential(tmp_path):
    key = tmp_path / "remote_key"
    key.write_text("bis_remote_key_1\n")

    async def main():
        server = await TcpServer().start()
        up = Upstream()
        rt = route(server.url, api_key=f"file:{key}")
        first, second = await forward(up, rt), await forward(up, rt)
        up.close_idle(0)
        await server.stop()
        return server, first, second

    server, first, second = asyncio.run(main())
    assert first.status == 200 and first.body == b'{"ok":true}' and first.worker == server.url
    assert second.status == 200
    assert server.connections == 1, "the second request reuses the kept-alive connection"
    head = server.heads[0]
    assert head.startswith(b"POST /run HTTP/1.1\r\n")
    got = headers(head)
    assert got["host"] == f"127.0.0.1:{server.port}"
    assert got["authorization"] == "Bearer bis_remote_key_1"
    assert got["x-request-id"] == "r1" and got["content-length"] == str(len(server.bodies[0]))
    assert server.bodies[0] == b'{"SIGNATURE": "there"}'


def test_no_credential_no_authorization_header():
    async def main():
        server = await TcpServer().start()
        up = Upstream()
        resp = await forward(up, route(server.url))
        up.close_idle(0)
        await server.stop()
        return server, resp

    server, resp = asyncio.run(main())
    assert resp.status == 200 and "authorization" not in headers(server.heads[0])


def test_a_refusing_url_hands_the_request_to_the_next():
    async def main():
        server = await TcpServer().start()
        up = Upstream()
        up._by_load = lambda urls: list(urls)  # type: ignore[method-assign]
        resp = await forward(up, route(f"http://127.0.0.1:{unused_port()}", server.url))
        up.close_idle(0)
        await server.stop()
        return server, resp

    server, resp = asyncio.run(main())
    assert resp.status == 200 and resp.worker == server.url and len(server.heads) == 1


def test_nothing_reachable_is_503():
    async def main():
        return await forward(Upstream(), route(f"http://127.0.0.1:{unused_port()}",
                                               f"http://127.0.0.1:{unused_port()}"))

    err = asyncio.run(main())
    assert isinstance(err, Unavailable) and not isinstance(err, UpstreamDropped)
    assert "not accepting connections" in str(err) and err.retry_after


def test_a_dropped_request_is_not_resent_without_retry_on_crash():
    async def main(retry: bool):
        dropping, ok = await TcpServer("drop").start(), await TcpServer().start()
        up = Upstream()
        up._by_load = lambda urls: list(urls)  # type: ignore[method-assign]
        result = await forward(up, route(dropping.url, ok.url, retry_on_crash=retry))
        up.close_idle(0)
        for s in (dropping, ok):
            await s.stop()
        return [len(s.heads) for s in (dropping, ok)], result

    counts, err = asyncio.run(main(False))
    assert isinstance(err, UpstreamDropped) and counts == [1, 0]
    counts, resp = asyncio.run(main(True))
    assert resp.status == 200 and counts == [1, 1]


def test_no_answer_in_time_is_504_and_never_resent():
    async def main():
        holding, ok = await TcpServer("hold").start(), await TcpServer().start()
        up = Upstream()
        up._by_load = lambda urls: list(urls)  # type: ignore[method-assign]
        result = await forward(up, route(holding.url, ok.url, timeout=0.3))
        holding.release.set()
        for s in (holding, ok):
            await s.stop()
        return [len(s.heads) for s in (holding, ok)], result

    counts, err = asyncio.run(main())
    assert isinstance(err, UpstreamTimeout) and counts == [1, 0]



def test_a_kept_alive_connection_times_out_by_each_requests_own_timeout():
    """The connection's one timer, set by a request with a long TIMEOUT, is moved earlier
    for the next request on it with a short one; and a request answered in time on it
    is not failed later by an earlier request's deadline."""
    async def main():
        server = await TcpServer().start()
        up = Upstream()
        rt = route(server.url, timeout=30)
        first = await forward(up, rt)
        server.mode = "hold"
        started = time.monotonic()
        second = await forward(up, route(server.url, timeout=0.3))
        took = time.monotonic() - started
        server.mode = "ok"
        server.release.set()
        third = await forward(up, route(server.url, timeout=0.3))
        await asyncio.sleep(0.5)  # past the short deadline: nothing may fire on the pooled one
        fourth = await forward(up, rt)
        up.close_idle(0)
        await server.stop()
        return first, second, took, third, fourth, server.connections

    first, second, took, third, fourth, connections = asyncio.run(main())
    assert first.status == 200 and isinstance(second, UpstreamTimeout)
    assert took < 30 / 3, "the short TIMEOUT, not the first request's, ended the wait"
    assert third.status == 200 and fourth.status == 200
    # The timed-out connection was closed (its request may still run); the third opened
    # a new one, which the fourth reused after the third's deadline had passed.
    assert connections == 2


def test_a_connection_that_is_not_made_in_time_never_ran(monkeypatch):
    """A host that drops connection attempts (here: a full listen backlog) is skipped
    after CONNECT_S, not after the endpoint's TIMEOUT."""
    monkeypatch.setattr(upstream_module, "CONNECT_S", 0.3)
    timeout = 30
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        filler = socket.create_connection(full.getsockname())

        async def main():
            ok = await TcpServer().start()
            up = Upstream()
            up._by_load = lambda urls: list(urls)  # type: ignore[method-assign]
            started = time.monotonic()
            resp = await forward(up, route(f"http://127.0.0.1:{full.getsockname()[1]}", ok.url,
                                           timeout=timeout))
            took = time.monotonic() - started
            up.close_idle(0)
            await ok.stop()
            return resp, took, len(ok.heads)

        try:
            resp, took, served = asyncio.run(main())
        finally:
            filler.close()
    # The next URL answered long before the TIMEOUT that the first one would have taken.
    assert resp.status == 200 and served == 1 and took < timeout / 3


def test_balances_by_requests_in_flight():
    async def main():
        a, b = await TcpServer("hold").start(), await TcpServer("hold").start()
        up = Upstream()
        rt = route(a.url, b.url)
        calls = [asyncio.create_task(forward(up, rt)) for _ in range(4)]
        await until(lambda: len(a.heads) + len(b.heads) == 4, message="the four calls arrived")
        counts = [len(a.heads), len(b.heads)]
        a.release.set()
        b.release.set()
        results = await asyncio.gather(*calls)
        up.close_idle(0)
        for s in (a, b):
            await s.stop()
        return counts, results

    counts, results = asyncio.run(main())
    assert counts == [2, 2] and all(r.status == 200 for r in results)


def test_https_checks_the_certificate(tmp_path, monkeypatch):
    cert, key = self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)

    async def main():
        server = await TcpServer(tls=server_tls).start()
        up = Upstream()
        result = await forward(up, route(server.url))
        up.close_idle(0)
        await server.stop()
        return server, result

    # Unknown to the system's CAs: refused, and said so.
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-ca.pem"))
    server, err = asyncio.run(main())
    assert isinstance(err, Unavailable) and "CERTIFICATE_VERIFY_FAILED" in str(err)
    assert not server.heads
    # Trusted through SSL_CERT_FILE (the OpenSSL variable the client context honours).
    monkeypatch.setenv("SSL_CERT_FILE", cert)
    server, resp = asyncio.run(main())
    assert resp.status == 200 and server.url.startswith("https://")
    assert headers(server.heads[0])["host"] == f"127.0.0.1:{server.port}"


def test_a_connection_the_remote_closed_while_idle_is_not_reused():
    """The remote closes idle kept-alive connections on its own schedule."""

    async def main():
        server = await TcpServer("once").start()
        up = Upstream()
        first = await forward(up, route(server.url))
        await until(lambda: not any(c.open for c in up._idle.get(server.url, [])),
                    message="the pool saw the remote's close")
        second = await forward(up, route(server.url))
        up.close_idle(0)
        await server.stop()
        return server, first, second

    server, first, second = asyncio.run(main())
    assert first.status == 200 and second.status == 200
    assert server.connections == 2 and len(server.heads) == 2


def test_urls_the_probes_found_down_are_tried_last():
    async def main():
        a, b = await TcpServer().start(), await TcpServer().start()
        up = Upstream()
        rt = route(a.url, b.url)
        rt["remote"]["down"] = [a.url]
        answers = [await forward(up, rt) for _ in range(4)]
        up.close_idle(0)
        for s in (a, b):
            await s.stop()
        return [len(s.heads) for s in (a, b)], answers

    counts, answers = asyncio.run(main())
    assert counts == [0, 4] and all(r.status == 200 for r in answers)


def test_idle_remote_connections_are_closed_before_a_remote_gateway_would():
    async def main():
        server = await TcpServer().start()
        up = Upstream()
        await forward(up, route(server.url))
        [conn] = up._idle[server.url]
        conn.idle_since -= upstream_module.REMOTE_IDLE_S - 1
        up.close_idle()
        kept = list(up._idle.get(server.url, []))
        conn.idle_since -= 2
        up.close_idle()
        gone = server.url not in up._idle and not conn.open
        await server.stop()
        return kept, gone

    kept, gone = asyncio.run(main())
    assert len(kept) == 1 and gone
    assert upstream_module.REMOTE_IDLE_S < 30 <= upstream_module.IDLE_S  # 30: KEEPALIVE_TIMEOUT


def test_a_refused_key_is_read_again_for_the_next_request(tmp_path):
    key = tmp_path / "remote_key"
    key.write_text("bis_old\n")

    async def main():
        server = await TcpServer("deny").start()
        up = Upstream()
        rt = route(server.url, api_key=f"file:{key}")
        first = await forward(up, rt)
        key.write_text("bis_rotated\n")
        server.mode = "ok"
        second = await forward(up, rt)
        up.close_idle(0)
        await server.stop()
        return server, first, second

    server, first, second = asyncio.run(main())
    assert first.status == 401 and second.status == 200
    assert [headers(h)["authorization"] for h in server.heads] == ["Bearer bis_old",
                                                                  "Bearer bis_rotated"]
