"""The front's lean Redis client: replies in order under pipelining, errors, AUTH and
SELECT, a Redis that stops answering, and one that comes back."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
import redis

from basic_inference_server.procutil import free_port
from basic_inference_server.tenants.resp import Incomplete, RespClient, RespError, encode, parse
from tests.services import Service


def test_replies_are_parsed_whole_or_not_at_all():
    reply = b"*4\r\n:1\r\n$3\r\nabc\r\n$-1\r\n*2\r\n+OK\r\n-ERR no\r\n"
    value, end = parse(bytearray(reply), 0)
    assert value[:3] == [1, b"abc", None] and value[3][0] == b"OK"
    assert isinstance(value[3][1], RespError) and end == len(reply)
    for cut in range(len(reply)):
        with pytest.raises(Incomplete):
            parse(bytearray(reply[:cut]), 0)
    assert encode(("SET", "k", 1.5, b"\r\n")) == \
        b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\n1.5\r\n$2\r\n\r\n\r\n"


def test_pipelined_commands_get_their_own_replies(redis_url, redis_prefix):
    client = RespClient(redis_url)
    key = redis_prefix + "n"

    async def run():
        # Issued in one loop turn: one write; each caller gets its own INCR's value.
        got = await asyncio.gather(*(client.call("INCR", key) for _ in range(200)))
        # A command sent without waiting: its reply is dropped, the next one is the next's.
        await client.send("INCRBY", key, 1000)
        assert await client.call("INCRBY", key, -1000) == 200
        with pytest.raises(RespError, match="WRONGTYPE"):
            await client.call("HGET", key, "field")
        block = await client.calls(("MULTI",), ("INCRBY", key, 5), ("GET", key), ("EXEC",))
        last = await client.call("GET", key)
        client.close()
        return got, block, last

    got, block, last = asyncio.run(run())
    assert got == list(range(1, 201))
    assert block[-1] == [205, b"205"] and last == b"205"


def test_password_and_database_from_the_url(tmp_path):
    port = free_port()
    service = Service("redis", tmp_path)
    sock = tmp_path / "redis.sock"
    service.spawn(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--requirepass", "s3cret", "--dir", str(tmp_path),
                   "--unixsocket", str(sock)])
    url = f"redis://:s3cret@127.0.0.1:{port}/3"
    try:
        direct = redis.Redis.from_url(url)
        service.wait_ready(direct.ping, timeout=30)

        async def run(url, value="v"):
            client = RespClient(url)
            try:
                return await client.call("SET", "k", value)
            finally:
                client.close()

        assert asyncio.run(run(url)) == b"OK"
        assert direct.get("k") == b"v"  # in database 3
        assert asyncio.run(run(f"unix://:s3cret@{sock}?db=3", "u")) == b"OK"
        assert direct.get("k") == b"u"
        with pytest.raises(RespError):
            asyncio.run(run(f"redis://:wrong@127.0.0.1:{port}/3"))
        direct.close()
    finally:
        service.stop()


def test_a_silent_redis_times_out_and_the_client_connects_again(redis_url, redis_prefix):
    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen()  # accepts connections, never answers
    client = RespClient(f"redis://127.0.0.1:{mute.getsockname()[1]}/0", timeout=0.3)

    async def run():
        started = time.monotonic()
        results = await asyncio.gather(client.call("PING"), client.call("PING"),
                                       return_exceptions=True)
        waited = time.monotonic() - started
        assert all(isinstance(r, TimeoutError) for r in results), results
        assert 0.25 <= waited < 2
        # Pointed at a live server, the next command makes a new connection.
        client.options = RespClient(redis_url).options
        assert await client.call("PING") == b"PONG"
        client.close()

    try:
        asyncio.run(run())
    finally:
        mute.close()


def test_nothing_listening_is_an_oserror():
    client = RespClient(f"redis://127.0.0.1:{free_port()}/0")

    async def run():
        with pytest.raises(OSError):
            await client.call("PING")

    asyncio.run(run())
