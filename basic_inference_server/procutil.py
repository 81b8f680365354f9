"""Process helpers: die with the parent, find free ports, stop process groups."""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL, expected_parent: int | None = None) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux).

    The kernel tracks the parent *thread*, so parents spawn children from their main
    thread. If the parent is already gone (it died before this call), exit at once.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)


def batch_scheduling() -> None:
    """Run this thread, and the threads it starts from now on, under SCHED_BATCH (Linux).

    A request crosses the front and an endpoint server, each waking the other; under the
    default policy each wake-up preempts the running process, so the CPU switches on
    every hop. A SCHED_BATCH process woken up waits for the running one's slice instead
    (sched(7)): each process handles what is ready in one go. Lowering the policy needs no
    privilege; where there is none to set, nothing changes.
    """
    if hasattr(os, "SCHED_BATCH"):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError as exc:
        if exc.errno == errno.EPERM:
            return False
        raise
    return True


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def adopt_listeners(fds: str) -> int:
    """Take listening sockets passed by the manager, systemd style.

    The manager owns every listening socket, so a restarted or reloaded server keeps
    the same port and the connections waiting in its backlog. The sockets are moved
    to fds 3, 4, ... and announced with ``LISTEN_FDS``/``LISTEN_PID``, the socket
    activation protocol gunicorn understands; gunicorn then also leaves the Unix
    socket's path in place when it stops.
    """
    numbers = [int(x) for x in fds.split(",") if x]
    if not numbers:
        return 0
    first = 3
    for i, fd in enumerate(numbers):
        target = first + i
        if fd != target:
            if target in numbers[i + 1:]:
                raise RuntimeError(f"cannot move inherited fd {fd}: fd {target} is still needed")
            os.dup2(fd, target)
            os.close(fd)
        os.set_inheritable(target, True)
    os.environ["LISTEN_FDS"] = str(len(numbers))
    os.environ["LISTEN_PID"] = str(os.getpid())
    return len(numbers)
