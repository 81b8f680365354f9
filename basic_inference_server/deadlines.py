"""Request deadlines: ``X-Request-Deadline``, in milliseconds from the request's receipt.

The gateway caps it by the endpoint's ``TIMEOUT``, answers 504 ``deadline_exceeded``
when it passes before the request is sent or while its answer is awaited, and passes
what is left of it on to the endpoint server (and to a remote endpoint's gateway). The
endpoint server counts from its own receipt of the request and does not start a request
whose deadline passed while it waited (for a worker thread, a batch, or a place in the
decode loop), nor one whose deadline is closer than twice its worker's recent run
time: ``_predict`` never runs for it. A job submitted with one (``POST /jobs``)
goes to the dead letters unrun when no worker started it in time.
"""

from __future__ import annotations

import math

from prometheus_client import Counter

from .errors import BadRequest

HEADER = b"x-request-deadline"
MAX_MS = 86_400_000  # a day

MISSES = Counter("bis_deadline_exceeded_total",
                 "Requests answered 504 deadline_exceeded: where the deadline passed "
                 "(gateway: before the request was sent or while its answer was awaited; "
                 "server: waiting in the endpoint server, _predict never started; queue: "
                 "a job not started in time, dead-lettered unrun)",
                 ["endpoint", "where"])


class TypicalRun:
    """How long a worker's runs take lately (a moving average), so that a request that
    can no longer finish before its deadline is not started: under a sustained overload
    a queue served first come, first served would otherwise start only requests that
    had waited nearly their whole deadline, and finish them late."""

    WEIGHT = 0.2  # of the newest run

    def __init__(self) -> None:
        self.seconds = 0.0

    def add(self, seconds: float) -> None:
        """One more run's time."""
        self.seconds += self.WEIGHT * (seconds - self.seconds)

    def too_late(self, deadline: float, now: float) -> bool:
        """Whether a run started ``now`` would likely end too late for ``deadline``
        (perf_counter): less than twice the recent run time is left. Twice: runs vary,
        and the answer must still get back through the gateway before the deadline
        (bench/bench_deadlines.py: at 2x overload, once is not enough for most answers
        to arrive in time)."""
        return deadline - now <= 2 * self.seconds


def deadline_seconds(headers: list[tuple[bytes, bytes]]) -> float | None:
    """The request's deadline in seconds from its receipt (None: it has none); a 400
    when the header is not a whole number of milliseconds from 1 to a day."""
    for name, value in headers:
        if name == HEADER:
            text = value.strip()
            ms = int(text) if text.isdigit() and len(text) <= 9 else 0
            if not 1 <= ms <= MAX_MS:
                raise BadRequest(f"X-Request-Deadline must be whole milliseconds from 1 to "
                                 f"{MAX_MS}, got {value[:20].decode('latin-1')!r}")
            return ms / 1000
    return None


def deadline_at(headers: list[tuple[bytes, bytes]], received: float) -> float | None:
    """When the request's deadline passes, on the clock of ``received`` (None: never)."""
    seconds = deadline_seconds(headers)
    return None if seconds is None else received + seconds


def left_ms(seconds_left: float) -> int:
    """What is left of a deadline as the header passes it on: whole milliseconds,
    rounded down (the next hop counts from its own receipt, a little later), 0 when
    less than one is left (the request is not sent)."""
    return math.floor(seconds_left * 1000)


def header_line(ms: int) -> bytes:
    """The header line that passes on ``ms`` milliseconds of a deadline."""
    return b"X-Request-Deadline: %d\r\n" % ms
