"""Calls handed from a worker process's event loop to its request threads.

An endpoint server runs user code on threads of its own, never on the event loop, which
keeps reading connections and so sees a client leave while its request runs. Over a
``ThreadPoolExecutor`` with ``asyncio.wrap_future``, each call costs a concurrent Future
with its Condition, the pool's idle semaphore, and an asyncio Future chained to it by
callbacks in both directions: on a noop behind the front, about a fifth of the server's
CPU per request. A :meth:`Handoff.call` is one ``SimpleQueue.put``, and its answer one
``call_soon_threadsafe`` onto the loop, whose wake-ups uvloop coalesces.

A :class:`Handoff` is also an :class:`~concurrent.futures.Executor` (``submit``), on the
same threads, for code that wants a concurrent Future (a stream's chunks, its close): so
user code still runs on no more threads than the strategy asks for.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

# What a call's result slot holds before its thread has settled it.
_UNSET: Any = object()


class Pending(Generic[T]):
    """One call given to a :class:`Handoff`: await :attr:`future` on the loop."""

    __slots__ = ("_args", "_fn", "_left", "_leftover", "_waiting", "future")

    def __init__(self, fn: Callable[..., T], args: tuple[Any, ...],
                 future: asyncio.Future[T], waiting: set[Pending[Any]]) -> None:
        self._fn, self._args = fn, args
        self.future = future
        self._waiting = waiting
        self._leftover: Callable[[T], None] | None = None
        self._left: Any = _UNSET

    def cancel(self, leftover: Callable[[T], None]) -> bool:
        """The caller is gone (on the loop). True if the call had not started: it never
        will. Otherwise it runs to its end, and ``leftover`` gets its result, if it ends
        with one, on the loop."""
        try:
            # set.remove is one step under the GIL: the thread's own remove (see
            # Handoff._run) and this one cannot both succeed.
            self._waiting.remove(self)
        except KeyError:
            if self._left is not _UNSET:
                leftover(self._left)
            else:
                self._leftover = leftover
            return False
        return True

    def _settle(self, result: T) -> None:
        if not self.future.done():
            self.future.set_result(result)
        elif self._leftover is not None:
            self._leftover(result)
        else:
            # Cancelled, its cancel() not run yet: it takes the result when it is.
            self._left = result

    def _fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class Handoff(concurrent.futures.Executor):
    """``threads`` request threads fed from ``loop`` (see the module's docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, threads: int, name: str) -> None:
        self._loop = loop
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._waiting: set[Pending[Any]] = set()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True)
                         for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def call(self, fn: Callable[..., T], *args: Any) -> Pending[T]:
        """``fn(*args)`` on a request thread, its result on the loop's future. Call it on
        the loop."""
        if self._closed:
            raise RuntimeError("the request threads are stopped")
        pending = Pending(fn, args, self._loop.create_future(), self._waiting)
        self._waiting.add(pending)
        self._queue.put(pending)
        return pending

    def submit(self, fn: Callable[..., T], /, *args: Any,
               **kwargs: Any) -> concurrent.futures.Future[T]:
        """:meth:`concurrent.futures.Executor.submit`, on the same threads, from any thread."""
        if self._closed:
            raise RuntimeError("the request threads are stopped")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put((future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the threads once they finish what they run; with ``cancel_futures``, what
        waits never runs."""
        self._closed = True
        if cancel_futures:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, tuple):
                    item[0].cancel()
                else:
                    self._waiting.discard(item)
        for _thread in self._threads:
            self._queue.put(None)
        if wait:
            for thread in self._threads:
                thread.join()

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            if isinstance(item, tuple):
                _run_submitted(*item)
            else:
                self._run(item)

    def _run(self, pending: Pending[Any]) -> None:
        try:
            self._waiting.remove(pending)
        except KeyError:
            return  # cancelled before it started
        settle: Callable[..., None]
        try:
            value: Any = pending._fn(*pending._args)
            settle = pending._settle
        except BaseException as exc:  # noqa: BLE001 - user code: the caller gets whatever it raised
            value, settle = exc, pending._fail
        # Let go of the request (its body) now, not when the loop drops the call.
        pending._args = ()
        try:
            self._loop.call_soon_threadsafe(settle, value)
        except RuntimeError:
            pass  # the loop is closed: the process is stopping, nobody waits


def _run_submitted(future: concurrent.futures.Future[Any], fn: Callable[..., Any],
                   args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(fn(*args, **kwargs))
    except BaseException as exc:  # noqa: BLE001 - as ThreadPoolExecutor: the future carries it
        future.set_exception(exc)
