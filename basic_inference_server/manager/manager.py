"""The manager: the control plane. It runs no user code and never waits on HTTP.

:class:`Manager` is the loop and its I/O (:mod:`.core`) given the handlers of the
management commands (:mod:`.commands`, :mod:`.reports`, :mod:`.traffic_commands`,
:mod:`.rollout_commands`, :mod:`.remote_commands`, :mod:`.idle_commands`,
:mod:`.model_commands`), which its control socket (:mod:`.control`) answers. The
endpoints' states and their transitions are in :mod:`.state`.
"""

from __future__ import annotations

from .commands import EndpointCommands
from .control import Handler, handlers_of
from .core import EXIT_CONFIG, EXIT_ERROR, EXIT_OK, Core
from .idle_commands import IdleCommands
from .model_commands import ModelCommands
from .remote_commands import RemoteCommands
from .reports import ReportCommands
from .rollout_commands import RolloutCommands
from .traffic_commands import TrafficCommands

__all__ = ["EXIT_CONFIG", "EXIT_ERROR", "EXIT_OK", "Manager"]


class Manager(Core):
    """Owns the process tree of one gateway and answers its management commands."""

    def command_handlers(self) -> dict[str, Handler]:
        """The handler of each management command, from the command groups' objects."""
        return handlers_of(EndpointCommands(self), ReportCommands(self), TrafficCommands(self),
                           RolloutCommands(self), RemoteCommands(self), IdleCommands(self),
                           ModelCommands(self))
