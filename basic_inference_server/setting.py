"""One configuration key, and the name rule shared by endpoints, versions and files."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .refs import REF_PREFIXES, resolve_ref

# One rule for endpoint names and SERVER_CLASS (a file name in the endpoints folder),
# always applied with fullmatch: "$" would let a trailing newline through.
NAME_RULE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]{0,63}")
NAME_RULE_TEXT = "1 to 64 letters, digits, '_' or '-', not starting with a digit or '-'"
# One bound on worker processes per endpoint, wherever a count is set.
MAX_WORKERS = 256
# Longest wait, timeout or interval a setting may ask for (a week).
MAX_SECONDS = 7 * 86400


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
    def check(v: Any) -> str | None:
        ok = (isinstance(v, int) or math.isfinite(v)) and low <= v <= high
        return None if ok else f"must be >= {low} and <= {high}"

    return check


def is_name(value: Any) -> bool:
    """The one name rule of endpoint names and SERVER_CLASS."""
    return isinstance(value, str) and NAME_RULE.fullmatch(value) is not None


def check_name(v: str | None) -> str | None:
    return None if v is None or is_name(v) else f"must be {NAME_RULE_TEXT}"


