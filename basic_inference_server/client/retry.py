"""When to send a request again, and after how long.

Only answers that say the request never ran are retried (``BisError.never_ran``:
starting endpoint, bulkhead, connection cap, full queue, rate limit, open breaker, an
unreachable gateway). A request that may have run (``upstream_dropped``, a lost
connection) is resent only when the caller marks the call idempotent; a ``timeout``
never is: the endpoint may still be working on it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .errors import BisError, ConnectionLost, UpstreamDropped


@dataclass(frozen=True)
class RetryPolicy:
    """The retry budget: attempts and seconds, with capped exponential backoff and jitter.

    ``Retry-After`` from the server wins over the backoff (capped by ``max_delay``).
    """

    attempts: int = 5
    budget: float = 30.0
    backoff: float = 0.25
    max_delay: float = 10.0

    def delay(self, error: BisError, attempt: int, elapsed: float,
              idempotent: bool = False) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``; None: give up and raise ``error``."""
        maybe_ran = isinstance(error, (UpstreamDropped, ConnectionLost))
        if not (error.never_ran or (idempotent and maybe_ran)):
            return None
        if attempt >= self.attempts:
            return None
        if error.retry_after is not None:
            wait = min(float(error.retry_after), self.max_delay)
        else:
            wait = min(self.backoff * 2 ** (attempt - 1), self.max_delay)
            wait *= random.uniform(0.5, 1.0)  # callers retrying together spread out
        if elapsed + wait > self.budget:
            return None
        return wait


NO_RETRY = RetryPolicy(attempts=1)


@dataclass(frozen=True)
class PollPolicy:
    """How ``wait()`` polls a job: from ``first`` seconds, times ``factor``, up to ``cap``."""

    first: float = 0.05
    factor: float = 1.5
    cap: float = 2.0

    def delays(self) -> PollDelays:
        """The waits between polls, from ``first`` up to ``cap``."""
        return PollDelays(self)


class PollDelays:
    """The successive polling intervals of one ``wait()``."""

    def __init__(self, policy: PollPolicy) -> None:
        self.policy = policy
        self.next = policy.first

    def __next__(self) -> float:
        current, self.next = self.next, min(self.next * self.policy.factor, self.policy.cap)
        return current

    def __iter__(self) -> PollDelays:
        return self
