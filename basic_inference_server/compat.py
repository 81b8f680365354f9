"""What the original project's ``run_gateway.py`` imports, over the current gateway.

The original script builds a :class:`~basic_inference_server.Logger` on
``config_gateway.txt``, prints :func:`get_packages`, then calls
``FlaskGateway(log=..., workers_location=..., workers_suffix=..., host=..., port=...,
server_execution_path=...)``, which serves until the gateway stops. Here that call
validates ``log.config_data`` as any configuration file is validated and runs the
manager in the calling process (blocking, as the original did). Nothing else of the
original gateway object is kept: the HTTP API is the gateway's own (docs/endpoints.md).
"""

from __future__ import annotations

import logging
from importlib.metadata import distributions
from pathlib import Path
from typing import Any

from .errors import ConfigError

logger = logging.getLogger(__name__)

# The one path endpoints are run on; the original let the script choose it.
EXECUTION_PATH = "/run"


def get_packages() -> list[str]:
    """The installed distributions as ``name==version``, sorted by name."""
    found = {f"{d.name}=={d.version}" for d in distributions() if d.name}
    return sorted(found, key=str.lower)


def _endpoints_dir(workers_location: str) -> str:
    """The endpoints folder: a path, or the original's dotted form (``app.endpoints``)."""
    if Path(workers_location).is_dir() or "." not in workers_location.strip("."):
        return workers_location
    return str(Path(*workers_location.split(".")))


def _configuration(raw: Any, server_names: list[str] | None,
                   first_server_port: int | None) -> Any:
    """``log.config_data`` with the constructor's own choices applied: only the endpoints
    ``server_names`` lists are started (the others stay DISABLED), and
    ``first_server_port`` is FIRST_SERVER_PORT."""
    if not isinstance(raw, dict):
        return raw  # parse_config says what is wrong
    raw = dict(raw)
    if first_server_port is not None:
        raw["FIRST_SERVER_PORT"] = first_server_port
    if server_names is not None:
        sections = raw.get("CONFIG_ENDPOINTS") or {}
        if isinstance(sections, dict):
            raw["CONFIG_ENDPOINTS"] = {
                **{name: {**section, "DISABLED": True} if isinstance(section, dict) else section
                   for name, section in sections.items() if name not in server_names},
                **{name: sections.get(name, {}) for name in server_names}}
    return raw


class FlaskGateway:
    """The original's gateway constructor: serves until the gateway stops, then returns.

    ``log`` is a :class:`~basic_inference_server.Logger`: its ``config_data`` is the
    configuration, its data folder (``base_folder``/``app_folder``) the cache folder.
    The manager's exit code is kept as :attr:`exit_code`; a failed start (an invalid
    configuration, a port in use) raises :class:`SystemExit` with it, so the script exits
    as ``run_gateway.py`` would. ``server_execution_path`` must be ``/run``;
    ``workers_suffix`` is not needed (an endpoint's class is found as in any endpoint file).
    """

    def __init__(self, log: Any, workers_location: str, server_names: list[str] | None = None,
                 workers_suffix: str | None = None, host: str | None = None,
                 port: int | None = None, first_server_port: int | None = None,
                 server_execution_path: str | None = None, **_ignored: Any) -> None:
        from .cli import serve  # the manager: imported only by a script that runs it
        from .config import parse_config

        def configuration() -> Any:
            if workers_suffix not in (None, "Worker"):
                logger.warning("workers_suffix %r is not used: an endpoint's class is the one "
                               "FlaskWorker subclass of its file (named <Name>Worker when the "
                               "file has several)", workers_suffix)
            path = server_execution_path
            if path is not None and "/" + path.lstrip("/") != EXECUTION_PATH:
                raise ConfigError(f"server_execution_path {path!r}: endpoints are run on "
                                  f"{EXECUTION_PATH}; pass server_execution_path='{EXECUTION_PATH}'")
            source = getattr(log, "config_file", None)
            if source and not Path(source).is_file():
                raise ConfigError(f"{source}: configuration file not found")
            raw = _configuration(log.config_data, server_names, first_server_port)
            return parse_config(raw, str(source or "log.config_data"))

        self.log = log
        self.exit_code = serve(configuration, _endpoints_dir(workers_location),
                               host=host or "127.0.0.1", port=port or 5002,
                               cache_dir=log.get_data_folder())
        if self.exit_code:
            raise SystemExit(self.exit_code)
