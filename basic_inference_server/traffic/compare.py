"""Comparators of a primary version's answer and its shadow's (shadow traffic).

Two answers are compared as the front forwarded them: a status and a body (bytes, or a
body already decoded). Different statuses always disagree. Bodies are decoded as JSON
when they are JSON; the metadata every answer carries and that always differs between
two calls (:data:`META_FIELDS`) and the policy's ``IGNORE`` fields are dropped from the
top level of both; then the policy's ``COMPARE`` decides:

- ``exact``: equal values. Numbers compare by value (``1`` equals ``1.0``), ``true`` is
  not ``1``.
- ``numeric``: as ``exact``, but two numbers agree when they differ by at most
  ``TOLERANCE`` absolutely or relative to the larger of the two
  (``math.isclose(a, b, rel_tol=TOLERANCE, abs_tol=TOLERANCE)``), at any depth of
  lists and objects.
- ``hook``: the operator's function ``HOOK`` (``"module:function"``, a module in the
  endpoints folder, see :mod:`.hooks`) gets both bodies and returns ``True`` (agree)
  or ``False``. A hook that raises or returns anything else is a comparator error.

Bodies that are not JSON (files) agree only when byte for byte equal, whatever
``COMPARE`` says.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import Enum
from typing import Any

import orjson

from ..names import NAME_RULE_TEXT, is_name

# Metadata of every answer (protocol.base_meta, the endpoint server's meta(), the usage
# the front strips): they name the time, the host, the worker and the call, never the
# result, so they differ between any two calls.
META_FIELDS = frozenset({"ver", "app_ver", "time", "host", "server", "call_id", "worker_id",
                         "worker_pid", "signature", "USAGE"})
COMPARATORS = ("exact", "numeric", "hook")
# The SHADOW setting's keys and their defaults (VERSION has none: it is required).
SHADOW_DEFAULTS: dict[str, Any] = {"FROM": None, "FRACTION": 1.0, "COMPARE": "exact",
                                   "TOLERANCE": 1e-6, "HOOK": None, "IGNORE": []}
SHADOW_KEYS = ("VERSION", *SHADOW_DEFAULTS)

Hook = Callable[[Any, Any], Any]


class Result(str, Enum):
    """What became of one request's mirror (the ``result`` label of the shadow metrics)."""

    AGREE = "agree"
    DISAGREE = "disagree"
    ERROR = "error"  # the shadow gave no answer, or the comparator failed
    DROPPED = "dropped"  # not sent: too many mirrors in flight, or the shadow was full


class ComparatorError(Exception):
    """The comparison itself failed (a hook that raised, or could not be loaded)."""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def same(a: Any, b: Any, close: Callable[[float, float], bool] | None = None) -> bool:
    """Whether two decoded JSON values are equal; ``close`` decides between two numbers."""
    if _number(a) and _number(b):
        return close(a, b) if close is not None else a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], close) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y, close) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def decode(body: Any, ignore: frozenset[str] | set[str] = frozenset()) -> Any:
    """A body as compared: decoded JSON without the metadata and ``ignore`` fields, or
    the bytes themselves when they are not JSON."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError:
            return bytes(body)
    if isinstance(body, dict):
        return {k: v for k, v in body.items() if k not in META_FIELDS and k not in ignore}
    return body


def agree(policy: dict[str, Any], primary: tuple[int, Any], shadow: tuple[int, Any],
          hook: Hook | None = None) -> bool:
    """Whether the shadow's ``(status, body)`` agrees with the primary's under ``policy``
    (a validated SHADOW value); :class:`ComparatorError` when the hook fails."""
    if primary[0] != shadow[0]:
        return False
    ignore = frozenset(policy.get("IGNORE") or ())
    first, second = decode(primary[1], ignore), decode(shadow[1], ignore)
    if isinstance(first, bytes) or isinstance(second, bytes):
        return first == second
    compare = policy.get("COMPARE", SHADOW_DEFAULTS["COMPARE"])
    if compare == "numeric":
        tol = float(policy.get("TOLERANCE", SHADOW_DEFAULTS["TOLERANCE"]))
        return same(first, second, lambda a, b: math.isclose(a, b, rel_tol=tol, abs_tol=tol))
    if compare == "hook":
        return _call_hook(hook, first, second)
    return same(first, second)


def _call_hook(hook: Hook | None, primary: Any, shadow: Any) -> bool:
    if hook is None:
        raise ComparatorError("no HOOK function to compare with")
    try:
        verdict = hook(primary, shadow)
    except Exception as exc:  # noqa: BLE001 - the operator's code: any failure is its error
        raise ComparatorError(f"HOOK raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(verdict, bool):
        raise ComparatorError(f"HOOK must return true or false, got {type(verdict).__name__}")
    return verdict


def judge(policy: dict[str, Any], primary: tuple[int, Any], shadow: tuple[int, Any],
          hook: Hook | None = None) -> Result:
    """:func:`agree` as a :class:`Result`: a failing comparator is an error, never raised."""
    try:
        return Result.AGREE if agree(policy, primary, shadow, hook) else Result.DISAGREE
    except ComparatorError:
        return Result.ERROR


# -- the SHADOW setting -----------------------------------------------------------------
def _check_hook(value: Any) -> str | None:
    module, sep, function = value.partition(":") if isinstance(value, str) else ("", "", "")
    if not sep or not is_name(module) or not function.isidentifier():
        return (f"HOOK must be \"module:function\", a module of the endpoints folder "
                f"({NAME_RULE_TEXT}) and a function name")
    return None


def _check_fields(value: dict[str, Any]) -> str | None:
    unknown = sorted(set(value) - set(SHADOW_KEYS))
    if unknown:
        return f"has unknown keys {', '.join(unknown)} (known: {', '.join(SHADOW_KEYS)})"
    if not is_name(value.get("VERSION")):
        return f"VERSION must name the shadow version ({NAME_RULE_TEXT})"
    source = value.get("FROM")
    if source is not None and (not is_name(source) or source == value["VERSION"]):
        return "FROM must be null or a version label other than VERSION"
    fraction = value.get("FRACTION", SHADOW_DEFAULTS["FRACTION"])
    if not _number(fraction) or not 0 <= fraction <= 1:
        return "FRACTION must be a number from 0 to 1"
    tolerance = value.get("TOLERANCE", SHADOW_DEFAULTS["TOLERANCE"])
    if not _number(tolerance) or not math.isfinite(tolerance) or tolerance < 0:
        return "TOLERANCE must be a number of at least 0"
    ignore = value.get("IGNORE", [])
    if not isinstance(ignore, list) or not all(isinstance(f, str) and f for f in ignore):
        return "IGNORE must be a list of field names"
    return None


def validate_shadow(value: Any) -> str | None:
    """What is wrong with a SHADOW setting (null, or an object of :data:`SHADOW_KEYS`), or None."""
    if value is None:
        return None
    if not isinstance(value, dict):
        return "must be null or an object"
    problem = _check_fields(value)
    if problem:
        return problem
    compare = value.get("COMPARE", SHADOW_DEFAULTS["COMPARE"])
    if compare not in COMPARATORS:
        return f"COMPARE must be one of {', '.join(COMPARATORS)}"
    if compare == "hook":
        return _check_hook(value.get("HOOK"))
    if value.get("HOOK") is not None:
        return "HOOK is used only with COMPARE \"hook\""
    return None


def with_defaults(value: dict[str, Any]) -> dict[str, Any]:
    """A valid SHADOW value with every key present."""
    return {**SHADOW_DEFAULTS, **value}
