"""The manager: the control plane. It runs no user code and never waits on HTTP.

:class:`Manager` is the loop and its I/O (:mod:`.core`) with the management commands
(:mod:`.commands`, :mod:`.reports`) answered on its control socket (:mod:`.control`).
The endpoints' states and their transitions are in :mod:`.state`.
"""

from __future__ import annotations

from .commands import EndpointCommands
from .core import EXIT_CONFIG, EXIT_ERROR, EXIT_OK
from .remote_commands import RemoteCommands
from .reports import ReportCommands
from .rollout_commands import RolloutCommands
from .traffic_commands import TrafficCommands

__all__ = ["EXIT_CONFIG", "EXIT_ERROR", "EXIT_OK", "Manager"]


class Manager(EndpointCommands, ReportCommands, TrafficCommands, RolloutCommands,
              RemoteCommands):
    """Owns the process tree of one gateway and answers its management commands."""
