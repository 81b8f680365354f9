"""An endpoint server: a gunicorn master with NR_WORKERS worker processes.

gunicorn gives us pre-fork, re-spawn of dead workers, TTIN/TTOU to change the worker
count and graceful stops. Each worker is an :class:`EndpointWorker`: its connections
are read on an event loop (:class:`..wire.connection.HttpConnection`, as in the front,
with its header and body deadlines and body limit), and a complete request is handed
to one request thread (:mod:`..wire.handoff`), so user code never runs concurrently in
one process (with ``MAX_BATCH_SIZE`` n > 1 there are n, and one batch thread runs the model:
see ``batching.py``). A ``/run`` goes straight to the process's
:class:`.entry.RunEntry`; other paths (``/health``) go to its Flask app. A slow or idle
client costs a socket, never the worker's thread, and a stop closes idle kept-alive
connections at once. gunicorn's "dirty arbiter" pool is not used: it would add an IPC
hop with JSON re-encoding to every request, and our workers already are dedicated model
processes. Its control socket is disabled: the manager steers a server's worker count
with one signal (:class:`EndpointArbiter`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from .. import protocol
from ..childproc import configure_gunicorn, take_slot
from ..contracts import ServerSpec, probe_path, quota_of_json, workers_path
from ..discovery import endpoint_file
from ..errors import DiscoveryError
from ..events import Event
from ..ipc import Notifier
from ..procutil import die_with_parent
from ..setting import MAX_WORKERS
from ..wire.connection import Answer, HttpConnection, Limits, Request, call_wsgi
from ..wire.handoff import Handoff
from ..wire.worker import LoopWorker, mark_dead
from ..worker import CancelFlag
from .app import WorkerApp, build_app, build_worker
from .consumer import start_consumer, stop_consumer
from .entry import RunEntry
from .placement import cap_memory, next_gpu, place_worker, stop_order
from .probe import ProbeListener

log = logging.getLogger(__name__)
# Open connections one worker process takes; past it 503 too_many_connections.
MAX_WORKER_CONNECTIONS = 1000

# Filled in by post_fork, in the worker process, before the app is loaded.
_worker_slot = {"slot": 0}


def _own_socket_path(spec: ServerSpec, slot: int) -> str:
    return f"{spec.socket}.g{spec.generation}w{slot}"


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _listen_unix(path: str) -> socket.socket:
    """A worker's own socket, beside the shared ones.

    Kept-alive connections stick to the worker that accepted them, so a shared socket
    alone balances badly: one busy worker can hold the connections while another
    idles. The front sends each request to the least busy worker's own socket instead.
    """
    _unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def tcp_address(host: str, port: int) -> str:
    """gunicorn's bind form of ``host:port`` (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class EndpointServer(BaseApplication):
    """gunicorn application for one endpoint."""

    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        self.notifier = Notifier(spec.notify)
        # The endpoint's source as it is now: workers spawned later (scale-up, respawn)
        # run this generation's code even if the file is being edited. Read, not run:
        # user code only ever runs in the workers.
        try:
            self.source: bytes | None = endpoint_file(spec.endpoints_dir, spec.module).read_bytes()
        except (DiscoveryError, OSError):
            self.source = None  # the worker's import reports the problem by name
        super().__init__()

    def load_config(self) -> None:
        """gunicorn's settings of the endpoint server: its workers, binds and hooks."""
        spec = self.spec
        notifier = self.notifier

        def pre_fork(server: EndpointArbiter, worker: Any) -> None:
            take_slot(server, worker)
            worker.bis_gpu = next_gpu(server.gpu_quota,
                                      (getattr(w, "bis_gpu", None) for w in server.WORKERS.values()))

        def post_fork(_server: Any, worker: Any) -> None:
            die_with_parent(signal.SIGKILL)
            _worker_slot["slot"] = worker.bis_slot
            place_worker(spec.worker_config.get("GPUS"), worker.bis_slot, worker.bis_gpu)

        def post_worker_init(worker: Any) -> None:
            path = _own_socket_path(spec, worker.bis_slot)
            worker.sockets.append(_listen_unix(path))
            # Answers the supervisor until the process exits, through a graceful stop
            # too: a draining worker is busy, not hung.
            ProbeListener(probe_path(path), endpoint=spec.name,
                          generation=spec.generation).start()
            stop = signal.getsignal(signal.SIGTERM)

            def on_term(signum: int, frame: Any) -> None:
                # A stopping worker takes no new connection on its own socket: the front
                # sees it gone at once and picks a sibling instead of queueing here.
                _unlink(path)
                stop_consumer()
                if callable(stop):
                    stop(signum, frame)

            signal.signal(signal.SIGTERM, on_term)
            entry = worker.entry
            consumer = start_consumer(entry.execute, entry.config, spec.name, spec.jobs,
                                      spec.tenants, entry.compute.concurrency > 1,
                                      entry.traced_job if entry.tracer is not None else None)
            if consumer is not None:
                entry.guard = consumer.guard
            notifier.send(Event.WORKER_READY, endpoint=spec.name, pid=os.getpid(),
                          slot=worker.bis_slot, socket=path, generation=spec.generation,
                          gpu=worker.bis_gpu)

        def worker_exit(_server: Any, _worker: Any) -> None:
            # In the exiting worker: let a job that is running finish before the exit.
            stop_consumer(timeout=spec.stop_timeout)

        def child_exit(_server: Any, worker: Any) -> None:
            path = _own_socket_path(spec, worker.bis_slot)
            _unlink(path)
            _unlink(probe_path(path))
            mark_dead(worker.pid)
            notifier.send(Event.WORKER_EXIT, endpoint=spec.name, pid=worker.pid,
                          generation=spec.generation)

        def nworkers_changed(_server: Any, new_value: int, _old_value: int | None) -> None:
            notifier.send(Event.NWORKERS, endpoint=spec.name, value=new_value,
                          generation=spec.generation)

        configure_gunicorn(
            self.cfg, proc_name=f"bis-server:{spec.name}",
            worker_class="basic_inference_server.server.gunicorn_app.EndpointWorker",
            workers=spec.nr_workers,
            # Longer than the front's idle pool lifetime: the front closes first.
            keepalive=120,
            # Model loading runs before the worker's heartbeat loop starts.
            timeout=spec.load_timeout, graceful_timeout=spec.stop_timeout,
            # The manager passes the listeners (LISTEN_FDS); gunicorn's bind only names
            # them. No port: the Unix socket alone (TCP_PORT off).
            bind=[*([tcp_address(spec.host, spec.port)] if spec.port is not None else []),
                  f"unix:{spec.socket}"],
            pre_fork=pre_fork, post_fork=post_fork, post_worker_init=post_worker_init,
            child_exit=child_exit,
            worker_exit=worker_exit, nworkers_changed=nworkers_changed)

    def run(self) -> None:
        """Serve under :class:`EndpointArbiter` (gunicorn's, steered in one signal); a
        master that cannot start says why and exits 1, as gunicorn's own."""
        try:
            EndpointArbiter(self).run()
        except RuntimeError as exc:
            print(f"\nError: {exc}\n", file=sys.stderr, flush=True)
            sys.exit(1)

    def load(self) -> WorkerApp:
        """Build the worker (import, model load) in a gunicorn worker process.

        A failure is logged once with its traceback (by the first worker of the first
        attempt; later ones log one line) and reported to the manager; the worker exits
        with gunicorn's "app failed to load" code, so its master stops (exit code 4)
        without a traceback of its own, and the manager decides whether to try again
        (``LOAD_ATTEMPTS``). A load that takes longer than ``LOAD_TIMEOUT`` fails the
        same way, whatever the endpoint's code is doing (:meth:`_deadline`).
        """
        slot = _worker_slot["slot"]
        deadline = self._deadline(slot)
        try:
            if self.spec.worker_config.get("GPU_MEMORY_CAP"):
                cap_memory(self.spec.worker_config["GPU_MEMORY_MB"])
            worker = build_worker(self.spec, slot, self.notifier, self.source)
        except Exception as exc:  # noqa: BLE001 - whatever the endpoint's code raises
            self._load_failed(slot, f"{type(exc).__name__}: {exc}", exc)
            # gunicorn's code for "the app failed to load": its master stops with it,
            # and logs the reason in one line (an AppImportError would print it again).
            raise SystemExit(Arbiter.APP_LOAD_ERROR) from None
        finally:
            deadline.cancel()
        return build_app(self.spec, worker)

    def _load_failed(self, slot: int, error: str, exc: BaseException | None) -> None:
        """Report a failed load to the manager and log it (a traceback the first time)."""
        self.notifier.send(Event.LOAD_FAILED, endpoint=self.spec.name, pid=os.getpid(),
                           error=error, generation=self.spec.generation)
        if slot == 0 and self.spec.load_attempt == 0:
            if exc is None:  # no traceback to show: the reason alone
                log.error("%s: loading failed: %s", self.spec.name, error)
            else:
                log.error("%s: loading failed", self.spec.name, exc_info=exc)
        else:
            log.error("%s worker %d: loading failed again (attempt %d): %s", self.spec.name,
                      slot, self.spec.load_attempt + 1, error)

    def _deadline(self, slot: int) -> threading.Timer:
        """A timer that ends this worker once ``LOAD_TIMEOUT`` has passed in the load.

        A thread, because the load may be anywhere (a C call, a download, a sleep) and
        cannot be interrupted where it is; gunicorn's own worker timeout does not apply
        before the worker's loop runs. It reports the failure, then exits the process
        with gunicorn's "app failed to load" code, as a load that raised does.
        """
        def expired() -> None:
            self._load_failed(slot, f"loading took longer than LOAD_TIMEOUT "
                                    f"({self.spec.load_timeout:g} s)", None)
            for handler in logging.getLogger().handlers:
                handler.flush()
            os._exit(Arbiter.APP_LOAD_ERROR)

        timer = threading.Timer(self.spec.load_timeout, expired)
        timer.daemon = True
        timer.start()
        return timer


class EndpointArbiter(Arbiter):
    """gunicorn's master, steered to the manager's worker count in one signal.

    The manager writes the count it wants (:func:`..contracts.workers_path`), with the
    GPU quota of an endpoint placed by memory, and sends one SIGTTIN (more) or SIGTTOU
    (fewer); the master forks, or gracefully stops, the whole difference at once and
    reports its new count (``nworkers_changed``). Merged signals lose nothing: each
    means "go to the count". Without a count written, a signal is gunicorn's own step
    of one.
    """

    app: EndpointServer
    num_workers: int  # gunicorn's property: its setter reports the count (nworkers_changed)

    def __init__(self, app: EndpointServer) -> None:
        # GPU_MEMORY_MB: how many workers the manager placed on each GPU.
        self.gpu_quota = quota_of_json(app.spec.gpu_quota)
        super().__init__(app)

    def handle_ttin(self) -> None:
        """Steer to the manager's worker count; without one, gunicorn's one more worker."""
        if not self._steer():
            super().handle_ttin()

    def handle_ttou(self) -> None:
        """Steer to the manager's worker count; without one, gunicorn's one fewer worker."""
        if not self._steer():
            super().handle_ttou()

    def _steer(self) -> bool:
        """Take the manager's count; False when there is none to take."""
        spec = self.app.spec
        try:
            steer = json.loads(Path(workers_path(spec.socket, spec.generation)).read_text())
            count, quota = int(steer["workers"]), quota_of_json(steer.get("gpu_quota"))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False
        if not 1 <= count <= MAX_WORKERS:
            return False
        self.gpu_quota = quota
        if count != self.num_workers:
            self.num_workers = count
            self.manage_workers()
        return True

    def manage_workers(self) -> None:
        """gunicorn's, but workers over their GPU's quota are the first to stop (see
        :func:`.placement.stop_order`; without a quota, the oldest, as gunicorn's)."""
        if len(self.WORKERS) < self.num_workers:
            self.spawn_workers()
        excess = len(self.WORKERS) - self.num_workers
        for pid in stop_order(self.WORKERS, self.gpu_quota)[:max(0, excess)]:
            self.kill_worker(pid, signal.SIGTERM)

    def spawn_workers(self) -> None:
        """Fork every missing worker at once: gunicorn's own waits up to 0.1 s after each
        fork, so the last of N added workers would start N x 50 ms late on average."""
        for _ in range(self.num_workers - len(self.WORKERS)):
            self.spawn_worker()


class EndpointWorker(LoopWorker):
    """A worker process of an endpoint server (see the module's docstring)."""

    spec: ServerSpec
    entry: RunEntry
    pool: Handoff
    dropped = 0  # requests whose client went away before they ran
    discarding: set[asyncio.Task[None]]  # streams made for clients already gone, closing

    def load_wsgi(self) -> None:
        """gunicorn's ``wsgi`` is what :meth:`EndpointServer.load` built: the ``/run``
        entry is kept apart, ``self.wsgi`` is the Flask app of the other paths."""
        super().load_wsgi()
        served: WorkerApp = self.wsgi  # type: ignore[has-type]
        self.entry, self.wsgi = served.entry, served.flask

    def sched_batch(self) -> bool:
        """SCHED_BATCH, as the server's spec says."""
        return self.app.spec.sched_batch

    def started(self) -> None:
        """Set up the request threads and the connection limits, on the loop."""
        self.spec = self.app.spec
        # One request at a time, unless the strategy takes more (a batch's worth).
        self.pool = Handoff(self.loop, self.entry.compute.concurrency, "bis-request")
        self.discarding = set()
        self.limits = Limits(header_timeout=self.spec.header_timeout,
                             body_timeout=self.spec.body_timeout,
                             keepalive_timeout=self.cfg.keepalive,
                             max_body=self.spec.max_request_size,
                             max_other_body=min(self.spec.max_request_size,
                                                Limits.max_other_body))

    def stopped(self) -> None:
        """Shut the request threads down; requests still waiting never run."""
        self.pool.shutdown(wait=False, cancel_futures=True)

    def meta(self) -> dict[str, Any]:
        """The server's metadata of every answer."""
        return protocol.base_meta(self.spec.server_name, self.spec.app_version)

    def connection_opened(self, conn: HttpConnection) -> bool:
        """Count a new connection; False past ``MAX_WORKER_CONNECTIONS``."""
        if len(self.connections) >= MAX_WORKER_CONNECTIONS:
            return False
        return super().connection_opened(conn)

    async def handle(self, request: Request) -> Answer:
        """The answer to ``request``, computed on the request threads."""
        # A streamed answer's chunks are made on the same threads, one at a time.
        flag = CancelFlag()
        if request.path == "/run":
            work = self.pool.call(self.entry.answer, request, flag, self.pool)
        else:
            work = self.pool.call(call_wsgi, self.wsgi, request, self.pool, flag)
        try:
            return await work.future
        except asyncio.CancelledError:
            # The connection closed (the client went away): a request still waiting for
            # its thread never runs; one running is told (FlaskWorker.cancelled) and its
            # answer dropped; a stream it made is closed.
            flag.set()
            if work.cancel(self._close_unsent):
                self.dropped += 1
                log.debug("request %s dropped before it ran: its client went away "
                          "(%d so far)", request.request_id, self.dropped)
            raise

    def _close_unsent(self, answer: Answer) -> None:
        """A streamed answer made for a client already gone: closed, so that what it holds
        (the producer, its models, the job consumer's count) is let go."""
        if answer.stream is not None and not self.loop.is_closed():
            task = self.loop.create_task(_drain_closed(answer))
            self.discarding.add(task)
            task.add_done_callback(self.discarding.discard)


async def _drain_closed(answer: Answer) -> None:
    """Close a stream never sent. Its close runs in its body (``threaded_chunks``), which
    must start for it: its first step only writes the chunk taken before answering, and
    the stream ends there (its client is gone)."""
    assert answer.stream is not None
    try:
        async for _chunk in answer.stream:
            break
    finally:
        await answer.stream.aclose()
