"""Sockets the manager opens for its children, its run folder and its credential."""

from __future__ import annotations

import ipaddress
import logging
import secrets
import shutil
import socket
import tempfile
from pathlib import Path

from ..config import GatewayConfig
from ..errors import ConfigError
from ..hosts import check_host
from ..privfiles import write_private
from ..procutil import pid_alive

log = logging.getLogger(__name__)

TOKEN_FILE = "admin_token"


def listen_tcp(host: str, port: int) -> socket.socket:
    """A listening TCP socket children inherit; a bad address is a ConfigError."""
    problem = check_host(host)
    if problem:
        raise ConfigError(f"HOST {problem}, got {host!r}")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, UnicodeError, ValueError, OverflowError) as exc:
        sock.close()
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"cannot listen on {host}:{port}: {reason}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def reach_address(sock: socket.socket) -> str:
    """The address a process of this box reaches a listening socket at: the address it
    is bound to, or loopback for a wildcard (``0.0.0.0``, ``::``)."""
    addr = str(sock.getsockname()[0])
    if ipaddress.ip_address(addr.split("%")[0]).is_unspecified:
        return "::1" if sock.family == socket.AF_INET6 else "127.0.0.1"
    return addr


def listen_unix(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def check_resolves(host: str) -> None:
    """A listen address (already a valid name) that resolves here, checked before
    anything changes."""
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"HOST {host!r} cannot be resolved: {exc}") from None


def sweep_stale_run_dirs() -> None:
    """Remove run folders of managers that died without cleaning up (SIGKILL)."""
    for folder in Path(tempfile.gettempdir()).glob("bis-*-*"):
        pid = folder.name.split("-")[1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def admin_token(config: GatewayConfig, cache_dir: Path) -> str | None:
    """The management credential: configured, else generated into the cache folder.

    The token itself is never logged; its file is 0600.
    """
    if config["INSECURE_NO_ADMIN_AUTH"]:
        log.warning("INSECURE_NO_ADMIN_AUTH is true: anyone who reaches this gateway can "
                    "start, stop and shut down everything. For development only.")
        return None
    token = config.admin_token()
    if token is None:
        token = secrets.token_urlsafe(32)
        path = cache_dir / TOKEN_FILE
        write_private(path, token + "\n")
        log.info("admin token generated into %s (send it as 'Authorization: Bearer ...')", path)
    return token
