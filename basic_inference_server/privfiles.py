"""Files private to their user: 0700 folders, 0600 files, opened without following links.

The cache folder holds job bodies, results, the health history and the admin token:
other local users must read none of it, and a symlink planted in it must not turn one
of our writes into a write elsewhere.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO

from .errors import ConfigError

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: str | Path) -> Path:
    """Create ``path`` (0700) or make an existing one 0700; refuse what we cannot use.

    The error says exactly what to run: a folder left by an older image that ran as
    root is the usual case.
    """
    folder = Path(path)
    try:
        folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the cache folder {folder}: {exc.strerror}; "
                          f"create it writable by uid {os.getuid()} or pass --cache DIR") from None
    info = folder.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"the cache folder {folder} is not a folder")
    fix = (f"run `chown -R {os.getuid()}:{os.getgid()} {folder.resolve()}` "
           f"(for a Docker volume: `docker run --rm -u 0 -v VOLUME:{folder.resolve()} IMAGE "
           f"chown -R {os.getuid()}:{os.getgid()} {folder.resolve()}`) or pass --cache DIR")
    if info.st_uid != os.getuid():
        raise ConfigError(f"the cache folder {folder} belongs to uid {info.st_uid}, not to this "
                          f"process (uid {os.getuid()}); {fix}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"the cache folder {folder} is not writable; {fix}")
    foreign = sorted(p.name for p in folder.iterdir() if p.lstat().st_uid != os.getuid())
    if foreign:
        raise ConfigError(f"files in the cache folder {folder} belong to another user "
                          f"({', '.join(foreign[:5])}); {fix}")
    if stat.S_IMODE(info.st_mode) != DIR_MODE:
        os.chmod(folder, DIR_MODE)
    return folder


def create_private(path: str | Path) -> None:
    """Make sure ``path`` exists as a regular 0600 file (not a link); keeps its content."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def open_private(path: str | Path, mode: str = "a") -> IO[str]:
    """Open a text file for writing (``"a"`` or ``"w"``): 0600, never through a symlink."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    flags |= os.O_APPEND if mode == "a" else os.O_TRUNC
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        return os.fdopen(fd, mode, encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise


def write_private(path: str | Path, text: str) -> None:
    """Replace ``path`` atomically with ``text`` in a 0600 file."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, target)
