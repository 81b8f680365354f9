"""``run_gateway``: parse arguments, load the configuration, run the manager."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from .config import GatewayConfig, load_config
from .errors import ConfigError
from .logger import setup_logging
from .manager import EXIT_CONFIG, Manager

log = logging.getLogger("basic_inference_server")

CONFIG_FILE = "config_gateway.json"
# The original project's configuration file: read when no CONFIG_FILE is there.
ORIGINAL_CONFIG_FILE = "config_gateway.txt"


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``run_gateway``."""
    parser = argparse.ArgumentParser(
        prog="run_gateway",
        description="Serve the endpoints of config_gateway.json behind one gateway.")
    parser.add_argument("--host", default=os.environ.get("BIS_HOST", "0.0.0.0"),
                        help="gateway address (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("BIS_PORT", 5002)),
                        help="gateway port (default 5002; endpoint servers take the next ones)")
    parser.add_argument("--config", default=None,
                        help=f"configuration file (default ./{CONFIG_FILE}, else "
                             f"./{ORIGINAL_CONFIG_FILE} when only that one exists)")
    parser.add_argument("--endpoints", default="endpoints",
                        help="folder of endpoint files (default ./endpoints)")
    parser.add_argument("--cache", "-a", "--app_folder", dest="cache", default="_cache",
                        help="folder for state kept across restarts (default ./_cache; "
                             "relative to --base_folder)")
    parser.add_argument("-b", "--base_folder", default=".",
                        help="folder the cache folder is in, when that one is relative "
                             "(default .)")
    return parser


def config_path(given: str | None) -> str:
    """The configuration file to read: ``--config``, else ``config_gateway.json``, else the
    original project's ``config_gateway.txt`` when only that one exists."""
    if given is not None:
        return given
    if not Path(CONFIG_FILE).exists() and Path(ORIGINAL_CONFIG_FILE).is_file():
        return ORIGINAL_CONFIG_FILE
    return CONFIG_FILE


def serve(configuration: Callable[[], GatewayConfig], endpoints: str, host: str, port: int,
          cache_dir: str | Path) -> int:
    """Validate the configuration, run the manager until it stops; the exit code
    (``EXIT_CONFIG`` for an invalid configuration, logged)."""
    setup_logging()
    try:
        config = configuration()
        log.info("configuration: %s", config.source)
        if not Path(endpoints).is_dir():
            raise ConfigError(f"endpoints folder {endpoints} not found "
                              f"(pass --endpoints DIR)")
        return Manager(config, endpoints, host=host, port=port, cache_dir=cache_dir).run()
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return EXIT_CONFIG


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``run_gateway.py`` and of the ``run_gateway`` console script."""
    args = build_parser().parse_args(argv)
    path = config_path(args.config)
    return serve(lambda: load_config(path), args.endpoints, args.host, args.port,
                 Path(args.base_folder) / args.cache)


if __name__ == "__main__":
    sys.exit(main())
