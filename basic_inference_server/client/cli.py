"""``bis``: the gateway from a shell, built on :class:`~.Client`.

    bis run echo text=hello            bis jobs submit echo text=later
    bis run --stream generate n=5
    bis jobs wait <id>                 bis servers
    bis scale echo 4                   bis reload echo
    bis shutdown --yes

The URL comes from ``--url`` or ``BIS_URL``; the admin token from ``--token-file``,
``BIS_ADMIN_TOKEN``, ``BIS_ADMIN_TOKEN_FILE`` or ``_cache/admin_token``; an API key
from ``--api-key-file``, ``BIS_API_KEY`` or ``BIS_API_KEY_FILE``. Answers print as
JSON on stdout; an error prints its ``ERROR`` / ``ERROR_TYPE`` JSON on stderr and
exits 1 (2: bad usage or credentials). ``run --stream`` prints each chunk as one JSON
line as it comes, then the ``done`` event's data on stderr; an ``error`` event exits 1
as an error answer does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .credentials import CredentialError, resolve
from .errors import BisError
from .retry import NO_RETRY, RetryPolicy
from .sync import Client

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def parse_fields(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; a VALUE that parses as JSON is taken as JSON, else as text."""
    fields: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {item!r}")
        try:
            fields[key] = json.loads(value)
        except ValueError:
            fields[key] = value
    return fields


def payload_of(args: argparse.Namespace) -> dict[str, Any]:
    """The request body the arguments give (``--input``, then ``key=value`` pairs)."""
    payload: dict[str, Any] = {}
    if args.input:
        text = sys.stdin.read() if args.input == "-" else Path(args.input).read_text("utf-8")
        loaded = json.loads(text)
        if not isinstance(loaded, dict):
            raise argparse.ArgumentTypeError("--input must hold a JSON object")
        payload.update(loaded)
    payload.update(parse_fields(args.fields))
    return payload


def _servers_table(body: dict[str, Any]) -> str:
    rows = [("ENDPOINT", "STATE", "WORKERS", "PORT", "RESTARTS", "LAST ERROR")]
    for name, s in body.get("SERVERS", {}).items():
        rows.append((name, s["state"], f"{s.get('workers_ready', '-')}/{s.get('nr_workers', '-')}",
                     str(s.get("port") or "-"), str(s.get("restarts", 0)),
                     (s.get("last_error") or "")[:60]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
             for r in rows)
    return "\n".join(line.rstrip() for line in lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``bis``."""
    parser = argparse.ArgumentParser(prog="bis", description="Talk to a basic_inference_server "
                                     "gateway (admin token and API key from files or env only).")
    parser.add_argument("--url", help="gateway URL (env BIS_URL; default http://127.0.0.1:5002)")
    parser.add_argument("--token-file", help="file holding the admin token "
                                             "(env BIS_ADMIN_TOKEN or BIS_ADMIN_TOKEN_FILE)")
    parser.add_argument("--api-key-file", help="file holding an API key "
                                               "(env BIS_API_KEY or BIS_API_KEY_FILE)")
    parser.add_argument("--timeout", type=float, default=75.0, help="seconds per request")
    parser.add_argument("--retry-budget", type=float, default=30.0,
                        help="seconds spent retrying requests that did not run (0: no retry)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def fields_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("signature", help="endpoint name")
        p.add_argument("fields", nargs="*", metavar="KEY=VALUE", help="request fields (JSON values)")
        p.add_argument("--input", help="JSON object file with the request fields ('-': stdin)")

    run = sub.add_parser("run", help="call an endpoint and print its answer")
    fields_args(run)
    run.add_argument("--idempotent", action="store_true",
                     help="the request may run twice: resend it if its worker died running it")
    how = run.add_mutually_exclusive_group()
    how.add_argument("--async", dest="as_job", action="store_true",
                     help="submit as a job, wait for it and print its answer")
    how.add_argument("--stream", action="store_true",
                     help="print each chunk of a streaming endpoint as one JSON line as it "
                          "comes; the done event's data goes to stderr")

    jobs = sub.add_parser("jobs", help="async jobs").add_subparsers(dest="jobs_cmd", required=True,
                                                                      metavar="ACTION")
    fields_args(jobs.add_parser("submit", help="submit a job; prints its id"))
    for name, text in (("status", "a job's record"), ("result", "a finished job's answer")):
        jobs.add_parser(name, help=text).add_argument("job_id")
    wait = jobs.add_parser("wait", help="wait for a job and print its answer")
    wait.add_argument("job_id")
    wait.add_argument("--wait-timeout", type=float, default=None, help="give up after seconds")
    dead = jobs.add_parser("dead", help="an endpoint's dead letters")
    dead.add_argument("signature")
    dead.add_argument("--limit", type=int, default=100)
    requeue = jobs.add_parser("requeue", help="requeue dead letters")
    requeue.add_argument("signature")
    requeue.add_argument("--job", dest="job_id", help="one job id (default: all)")

    servers = sub.add_parser("servers", help="list endpoints (or start / stop one)")
    servers.add_argument("--json", action="store_true", help="the full answer as JSON")
    servers_sub = servers.add_subparsers(dest="servers_cmd", metavar="ACTION")
    start = servers_sub.add_parser("start", help="start an endpoint")
    start.add_argument("signature")
    start.add_argument("fields", nargs="*", metavar="KEY=VALUE", help="endpoint settings")
    servers_sub.add_parser("stop", help="stop an endpoint").add_argument("signature")

    scale = sub.add_parser("scale", help="set an endpoint's worker processes")
    scale.add_argument("signature")
    scale.add_argument("workers", type=int)
    sub.add_parser("reload", help="zero-downtime reload of an endpoint").add_argument("signature")
    shutdown = sub.add_parser("shutdown", help="drain and stop the gateway")
    shutdown.add_argument("--yes", action="store_true", required=True,
                          help="confirm: the gateway stops")
    return parser


def print_stream(bis: Client, args: argparse.Namespace) -> None:
    """``run --stream``: the chunks on stdout as they come, then the done data on stderr.

    A reader that goes away (``| head``) or Ctrl-C closes the stream, which stops the
    work on the server.
    """
    with bis.stream(args.signature, payload_of(args)) as chunks:
        try:
            for chunk in chunks:
                print(json.dumps(chunk, sort_keys=True), flush=True)
        except BrokenPipeError:
            # Python would complain again when it flushes stdout at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return
    print(json.dumps(chunks.done, sort_keys=True), file=sys.stderr)


def dispatch(bis: Client, args: argparse.Namespace) -> Any:
    """Run the command; the value to print (str as is, None: nothing, else as JSON)."""
    commands: dict[str, Callable[[], Any]] = {
        "scale": lambda: bis.scale(args.signature, args.workers),
        "reload": lambda: bis.reload(args.signature),
        "shutdown": bis.shutdown,
    }
    if args.command == "run":
        if args.stream:
            return print_stream(bis, args)
        if args.as_job:
            return bis.wait(bis.submit(args.signature, payload_of(args)))
        return bis.run(args.signature, payload_of(args), idempotent=args.idempotent)
    if args.command == "jobs":
        jobs: dict[str, Callable[[], Any]] = {
            "submit": lambda: bis.submit(args.signature, payload_of(args)),
            "status": lambda: bis.status(args.job_id),
            "result": lambda: bis.result(args.job_id),
            "wait": lambda: bis.wait(args.job_id, args.wait_timeout),
            "dead": lambda: bis.dead_letters(args.signature, args.limit),
            "requeue": lambda: bis.requeue(args.signature, args.job_id),
        }
        return jobs[args.jobs_cmd]()
    if args.command == "servers":
        if args.servers_cmd == "start":
            return bis.start_server(args.signature, **parse_fields(args.fields))
        if args.servers_cmd == "stop":
            return bis.kill_server(args.signature)
        body = bis.list_servers()
        return body if args.json else _servers_table(body)
    return commands[args.command]()


def main(argv: list[str] | None = None) -> int:
    """Run ``bis`` with ``argv``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        creds = resolve(args.url, args.token_file, args.api_key_file)
    except CredentialError as exc:
        print(f"bis: {exc}", file=sys.stderr)
        return EXIT_USAGE
    retry = RetryPolicy(budget=args.retry_budget) if args.retry_budget > 0 else NO_RETRY
    try:
        with Client(creds.url, admin_token=creds.admin_token, api_key=creds.api_key,
                    timeout=args.timeout, retry=retry) as bis:
            out = dispatch(bis, args)
    except BisError as exc:
        error = {"ERROR": exc.message, "ERROR_TYPE": exc.kind, "STATUS": exc.status,
                 "ATTEMPTS": exc.attempts}
        print(json.dumps(error), file=sys.stderr)
        return EXIT_ERROR
    except (argparse.ArgumentTypeError, OSError, ValueError) as exc:
        print(f"bis: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    if out is not None:
        print(out if isinstance(out, str) else json.dumps(out, indent=2, sort_keys=True))
    return 0
