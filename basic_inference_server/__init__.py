"""basic_inference_server: serve AI models as microservices behind one gateway.

Public API:

* :class:`FlaskWorker` - subclass it in ``endpoints/<name>.py``;
* :class:`Logger` - the original project's logger (``log.P``) for support scripts;
* :func:`run_gateway` - start the gateway (what ``run_gateway.py`` calls);
* ``__version__`` (also ``LIB_VER``);
* :class:`FlaskGateway` and :func:`get_packages` - what the original project's
  ``run_gateway.py`` calls (:mod:`.compat`, docs/endpoints.md).
"""

from __future__ import annotations

from .compat import FlaskGateway, get_packages
from .logger import Logger
from .version import __version__
from .worker import FileOutput, FlaskWorker

LIB_VER = __version__


def run_gateway(argv: list[str] | None = None) -> int:
    """Run the gateway as ``run_gateway.py`` does; returns the exit code."""
    from .cli import main  # imported here: endpoint workers import this package too

    return main(argv)


__all__ = ["FileOutput", "FlaskGateway", "FlaskWorker", "LIB_VER", "Logger", "__version__",
           "get_packages", "run_gateway"]
