"""One configuration key, and the checks several settings tables share."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .names import NAME_RULE_TEXT, is_name
from .refs import REF_PREFIXES, resolve_ref

# One bound on worker processes per endpoint, wherever a count is set.
MAX_WORKERS = 256
# Longest wait, timeout or interval a setting may ask for (a week).
MAX_SECONDS = 7 * 86400
# The LOAD_TIMEOUT endpoint setting's default (the server spec's too).
DEFAULT_LOAD_TIMEOUT = 300


@dataclass(frozen=True)
class Setting:
    """One configuration key: its type, default, validity check and description."""

    name: str
    kind: type | tuple[type, ...]
    default: Any
    desc: str
    check: Callable[[Any], str | None] | None = None
    # The value may be ``env:NAME`` or ``file:PATH``, read at start (see resolve_ref).
    secret_ref: bool = False
    # A wrong value may hold a secret (a key instead of its reference, a URL's password):
    # errors never repeat it; the check's own message says what is wrong.
    secret: bool = False

    def validate(self, value: Any, where: str, refs: bool = True) -> Any:
        """The checked value; ``refs`` False refuses ``env:``/``file:`` references (they
        are the operator's, read from the configuration file, never from a request)."""
        if self.secret_ref and isinstance(value, str) and value.startswith(REF_PREFIXES):
            if not refs:
                raise ConfigError(f"{where}: {self.name} references (env:, file:) are read "
                                  f"from the configuration file only")
            value = resolve_ref(value, f"{where}: {self.name}")
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        # bool is an int in Python; an int setting must not accept true/false.
        bad_bool = isinstance(value, bool) and bool not in kinds
        if bad_bool or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            shown = "" if self.secret else f" {value!r}"
            raise ConfigError(
                f"{where}: {self.name} must be {names}, got {type(value).__name__}{shown}"
            )
        if self.check is not None:
            problem = self.check(value)
            if problem:
                shown = "" if self.secret else f", got {value!r}"
                raise ConfigError(f"{where}: {self.name} {problem}{shown}")
        return value


def at_least(low: float, high: float = MAX_SECONDS) -> Callable[[Any], str | None]:
    """Settings-table check: a number from ``low`` to ``high``."""
    def check(v: Any) -> str | None:
        ok = (isinstance(v, int) or math.isfinite(v)) and low <= v <= high
        return None if ok else f"must be >= {low} and <= {high}"

    return check


def check_name(v: str | None) -> str | None:
    """Settings-table check: null or a name (:data:`~basic_inference_server.names.NAME_RULE`)."""
    return None if v is None or is_name(v) else f"must be {NAME_RULE_TEXT}"


def check_workers(v: int) -> str | None:
    """Settings-table check: a count of worker processes."""
    return None if 1 <= v <= MAX_WORKERS else f"must be >= 1 and <= {MAX_WORKERS}"


def check_port_or_null(v: int | None) -> str | None:
    """Settings-table check: null or a TCP port number (0 picks a free one)."""
    return None if v is None or 0 <= v <= 65535 else "must be a port number (0-65535)"


