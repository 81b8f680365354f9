"""The manager process: owns the process tree, the route table and the management API."""

from .manager import EXIT_CONFIG, EXIT_ERROR, EXIT_OK, Manager

__all__ = ["EXIT_CONFIG", "EXIT_ERROR", "EXIT_OK", "Manager"]
