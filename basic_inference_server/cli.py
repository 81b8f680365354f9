"""``run_gateway``: parse arguments, load the configuration, run the manager."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .config import load_config
from .errors import ConfigError
from .logger import setup_logging
from .manager import EXIT_CONFIG, Manager

log = logging.getLogger("basic_inference_server")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_gateway",
        description="Serve the endpoints of config_gateway.json behind one gateway.")
    parser.add_argument("--host", default=os.environ.get("BIS_HOST", "0.0.0.0"),
                        help="gateway address (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("BIS_PORT", 5002)),
                        help="gateway port (default 5002; endpoint servers take the next ones)")
    parser.add_argument("--config", default="config_gateway.json",
                        help="configuration file (default ./config_gateway.json)")
    parser.add_argument("--endpoints", default="endpoints",
                        help="folder of endpoint files (default ./endpoints)")
    parser.add_argument("--cache", default="_cache",
                        help="folder for state kept across restarts (default ./_cache)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``run_gateway.py`` and of the ``run_gateway`` console script."""
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        config = load_config(args.config)
        if not Path(args.endpoints).is_dir():
            raise ConfigError(f"endpoints folder {args.endpoints} not found "
                              f"(pass --endpoints DIR)")
        return Manager(config, args.endpoints, host=args.host, port=args.port,
                       cache_dir=args.cache).run()
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
