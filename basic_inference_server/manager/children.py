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
import time
from dataclasses import dataclass, field
from typing import Any

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

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def terminate(self, timeout: float) -> None:
        """Ask the process group to stop gracefully; :meth:`enforce` kills it at the deadline."""
        if self.stop_deadline is None:
            self.stop_deadline = time.monotonic() + timeout
            signal_group(self.pid, signal.SIGTERM)

    def enforce(self, now: float) -> None:
        if self.stop_deadline is not None and now >= self.stop_deadline:
            signal_group(self.pid, signal.SIGKILL)

    def kill_group(self) -> None:
        signal_group(self.pid, signal.SIGKILL)


def spawn(role: str, name: str, module: str, spec: dict[str, Any], *, fds: tuple[int, ...] = (),
          generation: int = 0, env: dict[str, str] | None = None) -> Child:
    """Start ``python -m <module> --spec <json>`` as a child that dies with us."""
    argv = [sys.executable, "-m", module, "--spec", json.dumps(spec), "--parent", str(os.getpid())]
    if fds:
        argv += ["--fds", ",".join(str(fd) for fd in fds)]
    proc = subprocess.Popen(argv, pass_fds=fds, start_new_session=True, stdin=subprocess.DEVNULL,
                            env={**os.environ, **env} if env else None)
    return Child(role=role, name=name, proc=proc, generation=generation)


def spawn_script(name: str, script: str, args: list[str]) -> Child:
    """Start a plain script (a support process) through the die-with-parent launcher."""
    argv = [sys.executable, "-m", "basic_inference_server.support.launch",
            "--parent", str(os.getpid()), script, *args]
    proc = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL)
    return Child(role="support", name=name, proc=proc)
