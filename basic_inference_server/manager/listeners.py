"""Sockets the manager opens for its children, its run folder and its credential."""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import GatewayConfig, check_token
from ..errors import ConfigError
from ..hosts import check_host, is_loopback_host
from ..privfiles import write_private
from ..procutil import pid_alive

if TYPE_CHECKING:
    from .state import Endpoint

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
    """A listening Unix socket at ``path``, inheritable by a child."""
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def open_server_listeners(ep: Endpoint, run_dir: Path, allocate_port: Callable[[Endpoint], int]
                          ) -> None:
    """An endpoint server's Unix socket (the front's way in, in our private run folder)
    and, only when ``TCP_PORT`` asks for it, a TCP port: that one has none of the
    gateway's checks, so any local user could call the endpoint through it."""
    ep.socket_path = str(run_dir / f"srv-{ep.name}.sock")
    ep.listeners = [listen_unix(ep.socket_path)]
    if not ep.config.settings["TCP_PORT"]:
        ep.port = None
        return
    host = ep.config.settings["HOST"]
    ep.port = ep.port or allocate_port(ep)
    try:
        ep.listeners.insert(0, listen_tcp(host, ep.port))
    except ConfigError:
        close_server_listeners(ep)
        raise
    log.warning("%s: endpoint server listens on %s:%d (TCP_PORT): callers there bypass the "
                "gateway's checks (API key, scopes, quotas)%s", ep.name, host, ep.port,
                "" if is_loopback_host(host) else ", from beyond loopback too")


def close_server_listeners(ep: Endpoint) -> None:
    """Close an endpoint server's listeners and remove its Unix socket."""
    for sock in ep.listeners:
        sock.close()
    ep.listeners = []
    if ep.socket_path and os.path.exists(ep.socket_path):
        os.unlink(ep.socket_path)


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
    """The management credential: configured, else the one kept in the cache folder,
    else a new one written there (0600) and kept for the next starts.

    Deleting the file rotates the generated token at the next start; configuring one
    (ADMIN_TOKEN, BIS_ADMIN_TOKEN, BIS_ADMIN_TOKEN_FILE) removes the file, which would
    no longer be valid. The token itself is never logged.
    """
    if config["INSECURE_NO_ADMIN_AUTH"]:
        log.warning("INSECURE_NO_ADMIN_AUTH is true: anyone who reaches this gateway can "
                    "start, stop and shut down everything. For development only.")
        return None
    path = cache_dir / TOKEN_FILE
    token = config.admin_token()
    if token is not None:
        if path.is_file() and not path.is_symlink():
            path.unlink()
            log.info("admin token configured: the generated %s is removed", path)
        return token
    token = _kept_token(path)
    if token is not None:
        log.info("admin token read from %s (delete the file to make a new one)", path)
        return token
    token = secrets.token_urlsafe(32)
    write_private(path, token + "\n")
    log.info("admin token generated into %s (send it as 'Authorization: Bearer ...'); "
             "it is kept until the file is deleted", path)
    return token


def _kept_token(path: Path) -> str | None:
    """The token a previous start generated, when its file is there and sound."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read the admin token file {path}: {exc.strerror}") from None
    with os.fdopen(fd, encoding="ascii", errors="replace") as f:
        mode = os.fstat(f.fileno()).st_mode
        token = f.read(2048).strip()
    if stat.S_IMODE(mode) & 0o077:
        log.warning("%s is readable by other users: a new admin token is generated", path)
        return None
    if check_token(token):
        log.warning("%s does not hold a valid token: a new one is generated", path)
        return None
    return token
