"""The names every process shares: the name rule and the target syntax ``name@version``.

At the bottom of the import graph (it imports nothing of the library), so that any
process, an endpoint worker included, reads these words without loading the code that
uses them.
"""

from __future__ import annotations

import re
from typing import Any

# One rule for endpoint names, version labels, tenants and SERVER_CLASS (a file name in
# the endpoints folder), always applied with fullmatch: "$" would let a trailing
# newline through.
NAME_RULE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]{0,63}")
NAME_RULE_TEXT = "1 to 64 letters, digits, '_' or '-', not starting with a digit or '-'"
# An endpoint's version is addressed as "<endpoint>@<label>"; both sides follow the name rule.
VERSION_SEP = "@"


def is_name(value: Any) -> bool:
    """The one name rule of endpoint names and SERVER_CLASS."""
    return isinstance(value, str) and NAME_RULE.fullmatch(value) is not None


def split_target(name: str) -> tuple[str, str | None]:
    """``"clf@v2"`` -> ``("clf", "v2")``; ``"clf"`` -> ``("clf", None)``."""
    base, sep, label = name.partition(VERSION_SEP)
    return (base, label) if sep else (name, None)


def is_target(name: Any) -> bool:
    """A routable name: an endpoint name, or ``endpoint@label`` with both sides names."""
    if not isinstance(name, str):
        return False
    base, label = split_target(name)
    return is_name(base) and (label is None or is_name(label))
