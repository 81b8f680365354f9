"""A lean Redis client for the front's request path: one connection, commands pipelined.

Every limited request makes a Redis call (the rate-limit script), and ``redis.asyncio``
spends about 70 µs of CPU on each (its connection pool, retries, instrumentation and
a parser in Python), more than the front spends on the whole request. This client
keeps one connection per front process and writes every command issued during one
turn of the event loop in a single write; Redis answers in order, so replies are
matched to callers first in, first out. Under load one write and one read serve many
requests.

It speaks RESP2 and only what the tenants store needs: ``redis://``, ``rediss://``
and ``unix://`` URLs with a user, a password and a database. A command not answered
within ``timeout`` seconds fails every command waiting on the connection, which is
closed; the next command connects again.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

# How long a command whose reply nobody waits for (a slot given back) may wait to go out
# in the same write as the next command.
LAZY = 0.002


class RespError(Exception):
    """An error reply of Redis (``-ERR ...``)."""


class Incomplete(Exception):
    """The buffer ends inside a reply."""


def bulks(args: tuple[Any, ...]) -> bytes:
    """Arguments as RESP bulk strings (a command is an array of them)."""
    out = []
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def encode(args: tuple[Any, ...]) -> bytes:
    """A command as RESP."""
    return b"*%d\r\n" % len(args) + bulks(args)


def parse(buf: bytearray, pos: int) -> tuple[Any, int]:
    """One reply from ``buf`` at ``pos``: the value (an error reply as a RespError) and
    where the next one starts; Incomplete when the buffer ends first."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise Incomplete
    kind, line = buf[pos:pos + 1], bytes(buf[pos + 1:end])
    pos = end + 2
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            raise Incomplete
        return bytes(buf[pos:pos + size]), pos + size + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, pos
        items = []
        for _ in range(count):
            item, pos = parse(buf, pos)
            items.append(item)
        return items, pos
    if kind == b":":
        return int(line), pos
    if kind == b"+":
        return line, pos
    if kind == b"-":
        return RespError(line.decode(errors="replace")), pos
    raise RespError(f"unexpected reply from Redis: {bytes(buf[pos - len(line) - 3:pos])!r}")


class _Protocol(asyncio.Protocol):
    """One connection: replies go to the waiting futures in order."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        # Futures of the commands written, first to answer first (None: reply ignored).
        self.waiting: collections.deque[tuple[asyncio.Future[Any] | None, float]] = \
            collections.deque()
        self.buf = bytearray()
        self.out: list[bytes] = []
        self._soon = False  # a write is due this loop turn
        self._lazy: asyncio.TimerHandle | None = None  # a write is due in LAZY seconds
        self.closed: Exception | None = None
        self._watch: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, data: bytes, loop: asyncio.AbstractEventLoop | None = None
             ) -> asyncio.Future[Any]:
        """Queue one command (written with the others of this loop turn)."""
        loop = loop or asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self.closed is not None:
            future.set_exception(self.closed)
            return future
        self.push(data, future, loop)
        return future

    def push(self, data: bytes, future: asyncio.Future[Any] | None,
             loop: asyncio.AbstractEventLoop) -> None:
        """Queue ``data``; its reply goes to ``future`` (None: dropped). A command nobody
        waits for waits up to ``LAZY`` seconds to go out with the next one."""
        self.out.append(data)
        self.waiting.append((future, time.monotonic()))
        if future is not None:
            if not self._soon:
                self._soon = True
                loop.call_soon(self._flush)
        elif self._lazy is None and not self._soon:
            self._lazy = loop.call_later(LAZY, self._flush)
        if self._watch is None:
            self._watch = loop.call_later(self.timeout, self._check)

    def _flush(self) -> None:
        self._soon = False
        if self._lazy is not None:
            self._lazy.cancel()
            self._lazy = None
        data, self.out = b"".join(self.out), []
        if data and self.transport is not None and self.closed is None:
            self.transport.write(data)

    def _check(self) -> None:
        self._watch = None
        if not self.waiting:
            return
        late = self.waiting[0][1] + self.timeout - time.monotonic()
        if late <= 0:
            self.fail(TimeoutError(f"Redis did not answer within {self.timeout:g} s"))
            if self.transport is not None:
                self.transport.abort()
            return
        self._watch = asyncio.get_running_loop().call_later(late, self._check)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        pos = 0
        try:
            while self.waiting and pos < len(self.buf):
                value, pos = parse(self.buf, pos)
                future = self.waiting.popleft()[0]
                if future is None or future.done():
                    continue
                if isinstance(value, RespError):
                    future.set_exception(value)
                else:
                    future.set_result(value)
        except Incomplete:
            pass
        except (RespError, ValueError) as exc:  # a reply we cannot read: the stream is lost
            self.fail(ConnectionError(f"bad reply from Redis: {exc}"))
            assert self.transport is not None
            self.transport.abort()
            return
        del self.buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(ConnectionError(f"the Redis connection was lost: {exc or 'closed'}"))

    def fail(self, exc: Exception) -> None:
        """Fail every waiting command; the connection takes no more."""
        self.closed = self.closed or exc
        while self.waiting:
            future = self.waiting.popleft()[0]
            if future is not None and not future.done():
                future.set_exception(exc)
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None


def parse_url(url: str) -> dict[str, Any]:
    """What a ``redis://``, ``rediss://`` or ``unix://`` URL names: ``host`` and ``port``
    or ``path``, ``username``, ``password``, ``db`` and the ``ssl_*`` options."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    options: dict[str, Any] = {k: v for k, v in query.items() if k.startswith("ssl_")}
    if parts.username:
        options["username"] = unquote(parts.username)
    if parts.password:
        options["password"] = unquote(parts.password)
    if parts.scheme == "unix":
        options["path"] = unquote(parts.path)
        db = query.get("db", "0")
    else:
        options.update(host=parts.hostname or "localhost", port=parts.port or 6379)
        db = parts.path.lstrip("/") or query.get("db", "0")
    options["db"] = int(db)
    return options


def split_prefix(url: str, default: str = "bis") -> tuple[str, str]:
    """A URL's ``?prefix=`` (the namespace of the keys a store writes; ``default`` when
    absent) and the URL without it."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    prefix = next((v for k, v in query if k == "prefix"), default)
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefix


def _ssl_context(options: dict[str, Any]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    reqs = str(options.get("ssl_cert_reqs", "required")).lower()
    if reqs in ("none", "optional"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE if reqs == "none" else ssl.CERT_OPTIONAL
    return context


class RespClient:
    """Commands to one Redis over one pipelined connection per event loop."""

    def __init__(self, url: str, timeout: float = 2.0, connect_timeout: float = 1.0) -> None:
        self.options = parse_url(url)
        self.tls = url.startswith("rediss://")
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._conn: _Protocol | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None

    async def call(self, *args: Any) -> Any:
        """One command's reply (RespError for an error reply; OSError, ConnectionError or
        TimeoutError when Redis does not answer)."""
        return await self.call_encoded(encode(args))

    async def call_encoded(self, command: bytes) -> Any:
        """:meth:`call` with the command already encoded (:func:`encode`)."""
        conn, loop = self._conn, asyncio.get_running_loop()
        if conn is None or conn.closed is not None or self._loop is not loop:
            conn = await self._connected()
        return await conn.send(command, loop)

    async def script(self, source: str, sha: str, keys: list[Any], args: list[Any]) -> Any:
        """A Lua script's reply: EVALSHA, and the whole script (EVAL) when the server does
        not have it yet (its first call there, or after SCRIPT FLUSH)."""
        try:
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)
        except RespError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            return await self.call("EVAL", source, len(keys), *keys, *args)

    async def send(self, *args: Any) -> None:
        """Send a command whose reply does not matter: not waited for, whatever it is,
        when the connection is up (else it is made, as for :meth:`call`); it goes out
        with the next command, or within ``LAZY`` seconds."""
        conn, loop = self._conn, asyncio.get_running_loop()
        if conn is None or conn.closed is not None or self._loop is not loop:
            await self.call(*args)
        else:
            conn.push(encode(args), None, loop)

    async def calls(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Several commands written together, back to back (a MULTI ... EXEC block stays
        whole); their replies, or the first error."""
        conn = await self._connected()
        replies = await asyncio.gather(*(conn.send(encode(c)) for c in commands),
                                       return_exceptions=True)
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return replies

    def close(self) -> None:
        """Drop the connection (commands waiting on it fail)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.fail(ConnectionError("the client was closed"))
            if conn.transport is not None:
                conn.transport.close()

    async def _connected(self) -> _Protocol:
        """The connection, made once for every caller waiting on it (a caller that gives
        up does not stop it for the others)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new loop (tests, a forked process): start over
            self._loop, self._conn, self._connecting = loop, None, None
        if self._conn is not None and self._conn.closed is None:
            return self._conn
        if self._connecting is None:
            self._connecting = loop.create_task(self._open())
            self._connecting.add_done_callback(self._opened)
        return await asyncio.shield(self._connecting)

    def _opened(self, task: asyncio.Task[_Protocol]) -> None:
        self._connecting = None
        if not task.cancelled() and task.exception() is None:
            self._conn = task.result()

    async def _open(self) -> _Protocol:
        async with asyncio.timeout(self.connect_timeout):
            return await self._handshake()

    async def _handshake(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        options = self.options

        def make() -> _Protocol:
            return _Protocol(self.timeout)

        if "path" in options:
            _transport, conn = await loop.create_unix_connection(make, options["path"])
        else:
            _transport, conn = await loop.create_connection(
                make, options["host"], options["port"],
                ssl=_ssl_context(options) if self.tls else None)
        hello: list[tuple[Any, ...]] = []
        if options.get("password"):
            hello.append(("AUTH", *([options["username"]] if options.get("username") else []),
                          options["password"]))
        if options.get("db"):
            hello.append(("SELECT", options["db"]))
        try:
            for future in [conn.send(encode(c)) for c in hello]:
                await future
        except BaseException:
            if conn.transport is not None:
                conn.transport.abort()
            raise
        return conn
