"""An endpoint server on its own, pulling jobs from a shared queue: scale-out across boxes.

    python -m basic_inference_server.server --endpoint NAME --queue redis://HOST:6379/0

runs the endpoint of ``endpoints/NAME.py`` with its section of ``config_gateway.json``
(when the file is there; the command line wins), serves ``/run`` and ``/health`` on
its own port, and takes a share of the endpoint's jobs from the Redis, RabbitMQ or SQS
queue that the gateway and any number of other such servers share. No gateway, no
manager: the queue is the only thing they have in common.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from ..artifacts import models_spec
from ..config import GatewayConfig, load_config, parse_config, parse_endpoint
from ..contracts import ServerSpec
from ..discovery import endpoint_file
from ..errors import ConfigError, DiscoveryError
from ..hosts import is_loopback_host
from ..ledger import LAST_BATCH_S, ledger_shipper
from ..logger import setup_logging
from ..queues import jobs_spec
from ..redact import mask_url
from ..refs import REF_PREFIXES, resolve_ref
from ..tenants import tenants_spec
from .gunicorn_app import EndpointServer

log = logging.getLogger(__name__)
EXIT_CONFIG = 78


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m basic_inference_server.server``."""
    parser = argparse.ArgumentParser(
        prog="python -m basic_inference_server.server",
        description="Serve one endpoint and pull its async jobs from a shared queue.")
    parser.add_argument("--endpoint", required=True, help="endpoint name (endpoints/<name>.py)")
    parser.add_argument("--queue", help="queue URL, or env:VAR / file:PATH holding it, so that "
                                        "no password shows on the command line "
                                        "(default: QUEUE of the config file)")
    parser.add_argument("--results", help="results store URL, or env:VAR / file:PATH (default: "
                                          "RESULTS of the config, else the queue's Redis or "
                                          "SQLite in --cache)")
    parser.add_argument("--config", default="config_gateway.json",
                        help="configuration file, used when present (default ./config_gateway.json)")
    parser.add_argument("--endpoints", default="endpoints", help="folder of endpoint files")
    parser.add_argument("--cache", default="_cache", help="folder for SQLite state")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address for /run and /health (default loopback: this port has "
                             "none of the gateway's checks)")
    parser.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")
    parser.add_argument("--workers", type=int, default=None, help="NR_WORKERS override")
    return parser


def read_config(args: argparse.Namespace) -> GatewayConfig:
    """The configuration file the command line names (the defaults without one)."""
    return load_config(args.config) if Path(args.config).is_file() else parse_config({})


def build_spec(args: argparse.Namespace, config: GatewayConfig) -> ServerSpec:
    """The server spec from the command line and the configuration file."""
    section = dict(config["CONFIG_ENDPOINTS"].get(args.endpoint, {}))
    if args.workers is not None:
        section["NR_WORKERS"] = args.workers
    endpoint = parse_endpoint(args.endpoint, section, f"endpoint {args.endpoint}")
    try:
        endpoint_file(args.endpoints, endpoint.module_name)
    except DiscoveryError as exc:
        raise ConfigError(str(exc)) from None
    queue, results = (resolve_ref(v, f"--{name}") if v and v.startswith(REF_PREFIXES) else v
                      for name, v in (("queue", args.queue), ("results", args.results)))
    jobs = jobs_spec(queue or config["QUEUE"], results or config["RESULTS"],
                     config["JOB_TTL"], args.cache)
    if jobs.results.startswith("sqlite") and not jobs.queue.startswith("sqlite"):
        log.warning("results go to SQLite on this box (%s): a gateway on another box will not "
                    "see them; pass --results redis://... or postgresql://...", jobs.results)
    run_dir = tempfile.mkdtemp(prefix="bis-server-")
    return ServerSpec(
        name=args.endpoint, module=endpoint.module_name,
        endpoints_dir=str(Path(args.endpoints).resolve()), host=args.host, port=args.port,
        socket=str(Path(run_dir) / "server.sock"), nr_workers=endpoint.settings["NR_WORKERS"],
        worker_config=endpoint.worker_config(), server_name=config["SERVER_NAME"],
        app_version=config["APP_VERSION"], stop_timeout=config["STOP_TIMEOUT"],
        jobs=jobs.to_dict(), sched_batch=config["SCHED_BATCH"],
        server_timing=config["SERVER_TIMING"], load_timeout=endpoint.settings["LOAD_TIMEOUT"],
        models=models_spec(config["MODEL_REPOSITORY"], args.cache, config["MODEL_CACHE_MB"]),
        # Jobs are charged where the gateways keep keys: a shared Redis (a tenants.db in
        # this box's cache would be no gateway's).
        tenants=tenants_spec(config, args.cache)
        if config["API_KEYS"] and config["TENANTS_REDIS"] else None)


def main(argv: list[str] | None = None) -> int:
    """Serve one endpoint as the command line asks; returns the exit code."""
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        config = read_config(args)
        spec = build_spec(args, config)
        # The jobs this server runs are journaled under its cache folder: it ships them.
        ledger = (ledger_shipper(config["LEDGER_POSTGRES"], Path(args.cache))
                  if spec.tenants and spec.tenants.get("journal") else None)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return EXIT_CONFIG
    log.info("%s: serving on %s:%s, jobs from %s", spec.name, spec.host, spec.port,
             mask_url(str(spec.jobs and spec.jobs["queue"]).split("?")[0]))
    if not is_loopback_host(spec.host):
        log.warning("%s: listening on %s beyond loopback: callers there bypass the gateway's "
                    "checks (credential, Host, limits)", spec.name, spec.host)
    sys.argv = [sys.argv[0]]  # gunicorn parses sys.argv: keep it from reading ours
    if ledger is not None:
        ledger.start()
    try:
        EndpointServer(spec).run()
    finally:
        if ledger is not None:
            ledger.stop(LAST_BATCH_S)
        shutil.rmtree(Path(spec.socket).parent, ignore_errors=True)
    return 0
