"""Run a support script so that it dies with the manager.

``python -m basic_inference_server.support.launch --parent PID script.py ARGS...``
sets the parent-death signal, then runs the script as ``__main__`` in this same
interpreter (no second Python start-up), exactly as ``python script.py ARGS`` would.

With ``--tls-cert CERT --gateway ADDR:PORT`` (the gateway serves HTTPS), the script's
connections to exactly that address are made over TLS, verified against ``CERT``: the
original's support scripts post to ``http://SERVER:SERVER_PORT`` and cannot be told
the scheme. Every other connection of the script is left as it is.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import ipaddress
import os
import runpy
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from typing import Any

from ..procutil import die_with_parent

CreateConnection = Callable[..., socket.socket]


def _endpoint(host: str, port: Any) -> tuple[str, int] | None:
    """``(address, port)`` as compared: brackets and IPv4-mapped forms removed."""
    try:
        ip = ipaddress.ip_address(str(host).strip("[]"))
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return str(ip), int(port)
    except ValueError:
        return None


def tls_to(gateway: tuple[str, int], cert: str) -> Callable[[CreateConnection], CreateConnection]:
    """A wrapper of ``create_connection`` functions: a connection to ``gateway`` comes
    back wrapped in TLS, the gateway's certificate checked against ``cert``.

    ``cert`` is the gateway's own certificate file (TLS_CERT), trusted as is (a partial
    chain): the script reaches the address the manager gave it, so no host name check
    is needed to know it is our front.
    """
    context = ssl.create_default_context(cafile=cert)
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    target = _endpoint(*gateway)

    def wrap(create: CreateConnection) -> CreateConnection:
        @functools.wraps(create)
        def create_connection(address: tuple[Any, ...], *args: Any, **kw: Any) -> socket.socket:
            sock = create(address, *args, **kw)
            if _endpoint(address[0], address[1]) == target:
                return context.wrap_socket(sock)
            return sock

        return create_connection

    return wrap


def upgrade_gateway_connections(gateway: tuple[str, int], cert: str) -> None:
    """Route the script's plain HTTP to the gateway through TLS: ``http.client`` and
    ``urllib.request`` connect with ``socket.create_connection``, ``requests`` (urllib3)
    with its own ``create_connection``; both are wrapped."""
    wrap = tls_to(gateway, cert)
    socket.create_connection = wrap(socket.create_connection)  # type: ignore[assignment]
    try:
        urllib3_connection = importlib.import_module("urllib3.util.connection")
    except ImportError:
        return  # the script cannot use requests either
    setattr(urllib3_connection, "create_connection",  # noqa: B010 - a module attribute
            wrap(urllib3_connection.create_connection))


def _gateway(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def main() -> None:
    """Run a support script as the manager asks (``python -m ...support.launch``)."""
    parser = argparse.ArgumentParser(prog="python -m basic_inference_server.support.launch")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--tls-cert", help="the gateway's certificate: it serves HTTPS")
    parser.add_argument("--gateway", type=_gateway, help="ADDR:PORT the script reports to")
    parser.add_argument("script")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    opts = parser.parse_args()
    die_with_parent(signal.SIGKILL, expected_parent=opts.parent)
    if opts.tls_cert and opts.gateway:
        upgrade_gateway_connections(opts.gateway, opts.tls_cert)
    sys.argv = [opts.script, *opts.args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(opts.script)))
    runpy.run_path(opts.script, run_name="__main__")


if __name__ == "__main__":
    main()
