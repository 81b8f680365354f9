"""Logging: standard :mod:`logging` underneath, the original ``Logger.P`` on top.

``Logger`` is the compatibility layer for code written for the original project
(endpoint files, support scripts): ``log.P(msg, color=...)``, ``log.config_data``,
``log.update_config_data(...)``. Its constructor accepts and ignores the original's
storage and TensorFlow arguments. Framework code uses ``logging.getLogger(__name__)``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

from .redact import mask_text

_COLOR_LEVELS = {"r": logging.ERROR, "red": logging.ERROR, "y": logging.WARNING,
                 "yellow": logging.WARNING}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON line."""
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "access", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class MaskingFormatter(logging.Formatter):
    """Wraps a formatter: every password in a URL of the line is masked (``***``)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        """The inner formatter's line, with secrets masked."""
        return mask_text(self.inner.format(record))


def setup_logging(level: str | None = None) -> None:
    """Configure the root logger once per process (stderr; JSON if BIS_LOG_JSON=1)."""
    root = logging.getLogger()
    if getattr(root, "_bis_configured", False):
        return
    handler = logging.StreamHandler(sys.stderr)
    inner = (JsonFormatter() if os.environ.get("BIS_LOG_JSON") == "1" else
             logging.Formatter("%(asctime)s %(process)d %(levelname).1s %(name)s: %(message)s"))
    handler.setFormatter(MaskingFormatter(inner))
    root.handlers[:] = [handler]
    root.setLevel(level or os.environ.get("BIS_LOG_LEVEL", "INFO"))
    root._bis_configured = True  # type: ignore[attr-defined]


class Logger:
    """The original project's logger interface, kept for endpoint and support code."""

    def __init__(self, lib_name: str = "BIS", config_file: str | None = None,
                 base_folder: str = ".", app_folder: str = "_cache", **_ignored: Any) -> None:
        setup_logging()
        self.lib_name = lib_name
        self.base_folder = base_folder
        self.app_folder = app_folder
        self._log = logging.getLogger(f"bis.{lib_name}")
        self.config_data: dict[str, Any] = {}
        self.config_file = config_file  # named in configuration errors
        if config_file and os.path.isfile(config_file):
            with open(config_file, encoding="utf-8") as fh:
                self.config_data = json.load(fh)

    def P(self, msg: Any, color: str | None = None, **_ignored: Any) -> None:  # noqa: N802
        """Log ``msg``; a red color logs an error, yellow a warning."""
        self._log.log(_COLOR_LEVELS.get(color or "", logging.INFO), "%s", msg)

    def update_config_data(self, new_data: dict[str, Any]) -> None:
        """Merge ``new_data`` into ``config_data``."""
        self.config_data.update(new_data)

    def get_data_folder(self) -> str:
        """The data folder: ``<base_folder>/<app_folder>``."""
        return os.path.join(self.base_folder, self.app_folder)


class PrefixedLog:
    """What a worker sees as ``self.log``: ``P`` with the worker's prefix."""

    def __init__(self, name: str, prefix: str = "") -> None:
        self._log = logging.getLogger(name)
        self.prefix = prefix

    def P(self, msg: Any, color: str | None = None, **_ignored: Any) -> None:  # noqa: N802
        """Log ``msg`` at the level its ``color`` stands for (INFO by default)."""
        text = f"{self.prefix} {msg}" if self.prefix else str(msg)
        self._log.log(_COLOR_LEVELS.get(color or "", logging.INFO), "%s", text)
