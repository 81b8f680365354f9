"""Launching and stopping the manager's children.

Every child runs in its own session (its own process group, so a stop reaches the
whole tree) and asks the kernel to kill it when the manager dies.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..config import SECRET_ENV
from ..contracts import SUPPORT_LAUNCHER
from ..procutil import signal_group


@dataclass
class Child:
    """A running child process and what the manager knows of it."""

    role: str
    name: str
    proc: subprocess.Popen
    generation: int = 0
    started_at: float = field(default_factory=time.monotonic)
    stop_deadline: float | None = None
    # Why the manager killed it, when it did (a hang): reported instead of the exit code.
    kill_reason: str | None = None

    @property
    def pid(self) -> int:
        """The child's process id (its process group's too)."""
        return self.proc.pid

    def poll(self) -> int | None:
        """The exit code once the child has exited, else None."""
        return self.proc.poll()

    def terminate(self, timeout: float) -> None:
        """Ask the process group to stop gracefully; :meth:`enforce` kills it at the deadline."""
        if self.stop_deadline is None:
            self.stop_deadline = time.monotonic() + timeout
            signal_group(self.pid, signal.SIGTERM)

    def enforce(self, now: float) -> None:
        """Kill the process group once its stop deadline has passed."""
        if self.stop_deadline is not None and now >= self.stop_deadline:
            signal_group(self.pid, signal.SIGKILL)

    def kill_group(self) -> None:
        """Kill the process group at once (SIGKILL)."""
        signal_group(self.pid, signal.SIGKILL)


def child_env(extra: dict[str, str] | None = None, hide: tuple[str, ...] = ()) -> dict[str, str]:
    """Our environment without the admin credential (children get what they need in
    their spec; endpoint code never sees it) and the variables ``hide`` names, plus
    ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV and k not in hide}
    env.update(extra or {})
    return env


def spawn(role: str, name: str, module: str, spec: Any, *, fds: tuple[int, ...] = (),
          generation: int = 0, env: dict[str, str] | None = None,
          hide: tuple[str, ...] = ()) -> Child:
    """Start ``python -m <module> --spec-fd N`` as a child that dies with us.

``spec`` is one of the dataclasses of :mod:`basic_inference_server.contracts`.
    The spec (which may hold the admin token and URLs with passwords) travels in an
    unlinked temporary file the child inherits as fd N, never on the command line,
    where every local user could read it.
    """
    with tempfile.TemporaryFile() as spec_file:
        spec_file.write(json.dumps(asdict(spec)).encode())
        spec_file.flush()
        spec_file.seek(0)
        spec_fd = spec_file.fileno()
        argv = [sys.executable, "-m", module, "--spec-fd", str(spec_fd),
                "--parent", str(os.getpid())]
        if fds:
            argv += ["--fds", ",".join(str(fd) for fd in fds)]
        proc = subprocess.Popen(argv, pass_fds=(*fds, spec_fd), start_new_session=True,
                                stdin=subprocess.DEVNULL, env=child_env(env, hide))
    return Child(role=role, name=name, proc=proc, generation=generation)


def spawn_script(name: str, script: str, args: list[str], hide: tuple[str, ...] = (),
                 launcher: tuple[str, ...] = ()) -> Child:
    """Start a plain script (a support process) through the die-with-parent launcher
    (``launcher``: its own options, see :mod:`..support.launch`)."""
    argv = [sys.executable, "-m", SUPPORT_LAUNCHER,
            "--parent", str(os.getpid()), *launcher, script, *args]
    proc = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL,
                            env=child_env(hide=hide))
    return Child(role="support", name=name, proc=proc)


BACKOFF_FIRST = 1.0
BACKOFF_CAP = 60.0


def backoff(step: int) -> float:
    """The delay before restart number ``step`` of a failing child: 1 s, 2 s, 4 s ... capped."""
    return float(min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** max(0, step)))


@dataclass
class Service:
    """A child of which there is exactly one (the front, the supervisor), kept running.

    A death is followed by a restart: at once after a lone one, then with exponential
    backoff while the service keeps dying within ``stable_after`` seconds of its start.
    """

    name: str
    start: Callable[[], Child]
    stable_after: float
    child: Child | None = None
    failures: int = 0
    restart_at: float | None = None

    def launch(self) -> None:
        """Start the service's child now."""
        self.restart_at = None
        self.child = self.start()

    def exited(self, now: float) -> float:
        """Forget the dead child and schedule the next start; returns the delay."""
        assert self.child is not None
        run_for = now - self.child.started_at
        self.child = None
        self.failures = 0 if run_for > self.stable_after else self.failures + 1
        delay = 0.0 if self.failures <= 1 else backoff(self.failures - 2)
        self.restart_at = now + delay
        return delay

    def due(self, now: float) -> bool:
        """Whether a scheduled restart is due at ``now``."""
        return self.restart_at is not None and now >= self.restart_at
