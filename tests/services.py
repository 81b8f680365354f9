"""Real Redis, RabbitMQ and PostgreSQL servers of the test session's own: free ports,
temporary folders.

Nothing is expected to listen on 6379, 5672 or 5432: each server runs from its Debian
binary (``scripts/test`` installs them) in a folder of its own, in a new session,
armed to die with the test process even if that one is SIGKILLed, and is stopped
(its whole process group) when the session ends.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import pika
import redis

from basic_inference_server.procutil import die_with_parent, free_port, signal_group
from tests.conftest import wait_until

INSTALL_HINT = "run scripts/test once: it installs the test dependencies"


class Service:
    """A server process group started in ``folder`` and stopped with :meth:`stop`."""

    def __init__(self, name: str, folder: Path, stop_signal: int = signal.SIGTERM) -> None:
        self.name = name
        self.folder = folder
        self.log_path = folder / f"{name}.log"
        self.procs: list[subprocess.Popen] = []
        self.stop_signal = stop_signal
        self.cleanups: list[Callable[[], None]] = []

    def spawn(self, argv: list[str], env: dict[str, str] | None = None,
              user: str | None = None) -> subprocess.Popen:
        binary = shutil.which(argv[0])
        assert binary, f"{argv[0]} is not installed: {INSTALL_HINT}"
        parent = os.getpid()
        with open(self.log_path, "ab") as log:
            # (The parent-death signal is set after the switch to ``user``, which clears it.)
            proc = subprocess.Popen([binary, *argv[1:]], cwd=self.folder, env=env,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, user=user,
                                    preexec_fn=lambda: die_with_parent(expected_parent=parent))
        self.procs.append(proc)
        return proc

    def wait_ready(self, probe: Callable[[], bool], timeout: float,
                   ignore: tuple[type[BaseException], ...] = ()) -> None:
        def ready() -> bool:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise AssertionError(f"{self.name} exited with {proc.returncode}:\n{self.log_tail()}")
            return probe()

        try:
            wait_until(ready, timeout=timeout, interval=0.1, message=f"{self.name} accepts connections",
                       ignore=(OSError, redis.RedisError, pika.exceptions.AMQPError, *ignore))
        except AssertionError:
            self.stop()
            raise

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        """Signal each process group (last started first), SIGKILL what is left."""
        for proc in reversed(self.procs):
            signal_group(proc.pid, self.stop_signal)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            signal_group(proc.pid, signal.SIGKILL)  # helpers it may have left in its group
        while self.cleanups:
            self.cleanups.pop()()


def start_moto(folder: Path) -> tuple[Service, str]:
    """moto's S3- and SQS-compatible server on a free port; its log (``service.log_path``)
    has one line per request it answered."""
    import requests

    port = free_port()
    service = Service("moto", folder)
    service.spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)])
    url = f"http://127.0.0.1:{port}"
    service.wait_ready(lambda: requests.get(url + "/moto-api/", timeout=1).status_code < 500,
                       timeout=30, ignore=(requests.RequestException,))
    return service, url


def start_redis(folder: Path) -> tuple[Service, str]:
    """redis-server on a free port, nothing persisted; returns it and its URL."""
    port = free_port()
    service = Service("redis", folder)
    service.spawn(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                   "--save", "", "--appendonly", "no", "--dir", str(folder)])
    url = f"redis://127.0.0.1:{port}/0"

    def ping() -> bool:
        with redis.Redis.from_url(url, socket_timeout=2) as client:
            return bool(client.ping())

    service.wait_ready(ping, timeout=30)
    return service, url


def start_rabbitmq(folder: Path, attempts: int = 3) -> tuple[Service, str]:
    """A RabbitMQ node of its own, on fresh free ports; returns it and its URL.

    The node takes seconds to boot before it binds its AMQP port, long enough for another
    process to take that port meanwhile: a start that fails on a port in use is tried
    again on new ports.
    """
    attempt = 1
    while True:
        node = folder / f"node{attempt}"
        node.mkdir()
        try:
            return _start_rabbitmq(node)
        except AssertionError as exc:
            if "eaddrinuse" not in str(exc) or attempt == attempts:
                raise
        attempt += 1


def _start_rabbitmq(folder: Path) -> tuple[Service, str]:
    """A RabbitMQ node of its own beside any other one on the machine; returns it and its URL.

    Its own epmd port (epmd runs in the foreground here, so it cannot outlive the
    session), node name, distribution and AMQP ports, data and log folders, cookie
    (``HOME``), config and no plugins: the machine's /etc/rabbitmq is not read.
    """
    amqp_port, dist_port, epmd_port = free_port(), free_port(), free_port()
    conf = folder / "rabbitmq.conf"
    conf.write_text(f"listeners.tcp.local = 127.0.0.1:{amqp_port}\nloopback_users.guest = true\n")
    (folder / "rabbitmq-env.conf").write_text("")
    (folder / "enabled_plugins").write_text("[].\n")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(folder),
        "LANG": "C.UTF-8",
        "ERL_EPMD_PORT": str(epmd_port),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODENAME": f"bistest-{uuid.uuid4().hex[:8]}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(amqp_port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_CONFIG_FILE": str(conf),
        "RABBITMQ_CONF_ENV_FILE": str(folder / "rabbitmq-env.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
        "RABBITMQ_LOG_BASE": str(folder / "log"),
        "RABBITMQ_LOGS": "-",
        # Run the VM in place of the start script (no shell left in between), without a shell.
        "RABBITMQ_ALLOW_INPUT": "1",
        "RABBITMQ_SERVER_START_ARGS": "-noinput",
    }
    service = Service("rabbitmq", folder)
    service.spawn(["epmd", "-port", str(epmd_port), "-address", "127.0.0.1"], env=env)
    server = shutil.which("rabbitmq-server", path="/usr/lib/rabbitmq/bin") or "rabbitmq-server"
    service.spawn([server], env=env)
    url = f"amqp://guest:guest@127.0.0.1:{amqp_port}/%2F"

    def connect() -> bool:
        pika.BlockingConnection(pika.URLParameters(url + "?connection_attempts=1")).close()
        return True

    try:
        service.wait_ready(connect, timeout=120)
    except AssertionError:
        service.stop()
        raise
    return service, url


def postgres_bin(name: str) -> str:
    """A PostgreSQL server binary of Debian's package (not on PATH there)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    assert found, f"PostgreSQL's {name} is not installed: {INSTALL_HINT}"
    return found[-1]


def start_postgres(folder: Path) -> tuple[Service, str]:
    """A PostgreSQL server of its own on a free port; returns it and its URL (trust
    authentication on 127.0.0.1, database ``postgres``).

    PostgreSQL refuses to run as root: under root, its data folder (in /tmp, which the
    ``postgres`` user can reach, unlike pytest's folders) belongs to that user and the
    server runs as it. Stopped by SIGINT, its fast shutdown: SIGTERM would wait for
    every client to leave.
    """
    import psycopg

    user = "postgres" if os.getuid() == 0 else None
    data = Path(tempfile.mkdtemp(prefix="bis-test-pg-"))
    service = Service("postgres", folder, stop_signal=signal.SIGINT)
    service.cleanups.append(lambda: shutil.rmtree(data, ignore_errors=True))
    if user is not None:
        shutil.chown(data, user)
    port = free_port()
    with open(service.log_path, "ab") as log:
        subprocess.run([postgres_bin("initdb"), "-D", str(data / "db"), "-A", "trust", "-U",
                        "postgres", "-E", "UTF8", "--no-sync"], check=True, user=user, cwd=data,
                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    # No durability asked of a test server: fsync off.
    service.spawn([postgres_bin("postgres"), "-D", str(data / "db"), "-p", str(port),
                   "-k", str(data), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
                  user=user)
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def connect() -> bool:
        psycopg.connect(url, connect_timeout=2).close()
        return True

    service.wait_ready(connect, timeout=60, ignore=(psycopg.OperationalError,))
    return service, url


def create_database(url: str) -> str:
    """A new, empty database on the server of ``url``; its URL (drop it with
    :func:`drop_database`)."""
    import psycopg

    name = f"bis_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + "/" + name


def drop_database(url: str) -> None:
    """Drop the database of ``url``, closing what is still connected to it."""
    import psycopg

    server, name = url.rsplit("/", 1)
    with psycopg.connect(server + "/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
