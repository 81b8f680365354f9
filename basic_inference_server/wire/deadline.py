"""One timer for the successive deadlines of a connection.

A request moves its connection's read deadline three times (its headers, its body, the
keep-alive wait after its answer). Setting a new timer each time costs the event loop a
timer handle and a cancel per move; :class:`Deadline` keeps one timer and moves it only
for a deadline earlier than the timer. A timer that fires before the deadline due sets
itself for the rest, so a busy connection touches no timer at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

# A deadline this close counts as reached (the loop's timers have a millisecond's grain).
SLACK = 0.001


class Deadline:
    """Calls ``expired`` once the deadline last :meth:`set` passes, unless :meth:`clear`
    came first."""

    __slots__ = ("loop", "expired", "due", "timer", "timer_at")

    def __init__(self, loop: asyncio.AbstractEventLoop, expired: Callable[[], None]) -> None:
        self.loop = loop
        self.expired = expired
        self.due: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0

    def set(self, seconds: float) -> None:
        """The deadline is ``seconds`` from now (the last one is forgotten)."""
        due = self.due = self.loop.time() + seconds
        if self.timer is None or self.timer_at > due:
            if self.timer is not None:
                self.timer.cancel()
            self._start(due)

    def clear(self) -> None:
        """No deadline (the timer, if it fires, finds nothing due)."""
        self.due = None

    def cancel(self) -> None:
        """No deadline, and no timer: the connection is gone."""
        self.due = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _start(self, at: float) -> None:
        self.timer = self.loop.call_at(at, self._fired)
        self.timer_at = at

    def _fired(self) -> None:
        self.timer = None
        if self.due is None:
            return
        if self.due > self.loop.time() + SLACK:
            self._start(self.due)  # moved later since this timer was set
            return
        self.due = None
        self.expired()
