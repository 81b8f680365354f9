"""Typed arguments: a ``TypedDict`` checked at run time and written as JSON Schema.

A field's bounds and rules ride on its type as ``Annotated`` metadata (:class:`Range`,
:class:`Length`, :class:`Rule`, :class:`Doc`). :func:`check_fields` checks a decoded
JSON object against the type (a wrong field is a :class:`..errors.BadRequest` that
names it) and :func:`fields_schema` writes the same type as JSON Schema.
"""

from __future__ import annotations

import math
import re
import types
from dataclasses import dataclass
from typing import (
    Annotated,
    Any,
    Literal,
    NotRequired,
    Required,
    Union,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

from .errors import BadRequest

Schema = dict[str, Any]


# -- the rules a field may carry -----------------------------------------------------------
@dataclass(frozen=True)
class Range:
    """A number's bounds (``None``: unbounded); ``above`` makes ``low`` exclusive."""

    low: float | None = None
    high: float | None = None
    above: bool = False

    def problem(self, value: float) -> str | None:
        """What is wrong with ``value``, or None."""
        low_ok = self.low is None or (value > self.low if self.above else value >= self.low)
        high_ok = self.high is None or value <= self.high
        if low_ok and high_ok:
            return None
        parts = [f"{'>' if self.above else '>='} {self.low:g}" if self.low is not None else "",
                 f"<= {self.high:g}" if self.high is not None else ""]
        return "must be " + " and ".join(p for p in parts if p)

    def schema(self) -> Schema:
        """The bounds in JSON Schema."""
        out: Schema = {}
        if self.low is not None:
            out["exclusiveMinimum" if self.above else "minimum"] = self.low
        if self.high is not None:
            out["maximum"] = self.high
        return out


@dataclass(frozen=True)
class Length:
    """How many characters a string, or items a list, may have."""

    low: int = 0
    high: int | None = None

    def problem(self, value: str | list[Any]) -> str | None:
        """What is wrong with ``value``, or None."""
        if len(value) >= self.low and (self.high is None or len(value) <= self.high):
            return None
        return f"must have {self.low} to {self.high if self.high is not None else 'any'} items" \
            if isinstance(value, list) else \
            f"must be {self.low} to {self.high if self.high is not None else 'any'} characters"

    def schema(self, of: str) -> Schema:
        """The length in JSON Schema, of a string or (``of`` "array") a list."""
        low, high = ("minItems", "maxItems") if of == "array" else ("minLength", "maxLength")
        return {low: self.low, **({high: self.high} if self.high is not None else {})}


@dataclass(frozen=True)
class Rule:
    """A string's pattern (matched whole), with what it means in words."""

    pattern: re.Pattern[str]
    text: str

    def problem(self, value: str) -> str | None:
        """What is wrong with ``value``, or None."""
        return None if self.pattern.fullmatch(value) else f"must be {self.text}"

    def schema(self) -> Schema:
        """The pattern in JSON Schema."""
        return {"pattern": f"^{self.pattern.pattern}$"}


@dataclass(frozen=True)
class Doc:
    """What a field is, for the API's documentation."""

    text: str


# -- checking a value against a type -------------------------------------------------------
_KINDS: dict[type, str] = {str: "a string", bool: "true or false", int: "an integer",
                           float: "a number", dict: "an object", list: "an array"}


def _fits(value: Any, kind: type) -> bool:
    """JSON's view of Python types: a bool is no number, an int is a float, and a float
    without a fraction (``2.0``) is an integer."""
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
    if kind is int and isinstance(value, float):
        return math.isfinite(value) and value.is_integer()
    return isinstance(value, kind)


def check_value(value: Any, hint: Any, where: str) -> Any:
    """``value`` as a ``hint`` (an integer sent as ``2.0`` becomes ``2``); raise
    :class:`..errors.BadRequest` naming ``where`` when it is not one."""
    origin = get_origin(hint)
    if hint is Any or (value is None and hint is type(None)):
        return value
    if origin is Annotated:
        return _check_annotated(value, hint, where)
    if origin is Literal:
        if not any(value == v and type(value) is type(v) for v in get_args(hint)):
            raise BadRequest(f"{where} must be one of {list(get_args(hint))}, got {_shown(value)}")
        return value
    if origin in (Union, types.UnionType):
        return _check_union(value, hint, where)
    if is_typeddict(hint):
        return check_fields(value, hint, where)
    return _check_plain(value, hint, where)


def _check_annotated(value: Any, hint: Any, where: str) -> Any:
    base, *rules = get_args(hint)
    value = check_value(value, base, where)
    for rule in rules:
        problem = rule.problem(value) if hasattr(rule, "problem") else None
        if problem:
            raise BadRequest(f"{where} {problem}, got {_shown(value)}")
    return value


def _check_union(value: Any, hint: Any, where: str) -> Any:
    errors = []
    for option in get_args(hint):
        try:
            return check_value(value, option, where)
        except BadRequest as exc:
            errors.append(exc.message)
    raise BadRequest(" or ".join(errors))


def _check_plain(value: Any, hint: Any, where: str) -> Any:
    """A str, bool, int, float, or a list or dict (of typed items when the hint says)."""
    kind = get_origin(hint) or hint
    if not _fits(value, kind):
        raise BadRequest(f"{where} must be {_KINDS.get(kind, kind.__name__)}, got {_shown(value)}")
    if kind is int:
        return int(value)
    if kind is list and get_args(hint):
        return [check_value(item, get_args(hint)[0], f"{where}[{i}]")
                for i, item in enumerate(value)]
    if kind is dict and get_args(hint):
        keys, values = get_args(hint)
        return {check_value(key, keys, f"{where} key"):
                check_value(item, values, f"{where}.{str(key)[:100]}")
                for key, item in value.items()}
    return value


def check_fields(value: Any, typed: type, where: str = "") -> dict[str, Any]:
    """``value``, an object holding ``typed``'s required keys, each of its type; other
    keys are left to the handler (``/start_server``'s settings, a support report)."""
    if not isinstance(value, dict):
        raise BadRequest(f"{where or 'the arguments'} must be a JSON object")
    missing = sorted(required_keys(typed) - set(value))
    if missing:
        raise BadRequest(f"{where + ': ' if where else ''}{', '.join(missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} required")
    prefix = f"{where}." if where else ""
    hints = field_hints(typed)
    return {key: check_value(item, hints[key], prefix + key) if key in hints else item
            for key, item in value.items()}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


def required_keys(typed: type) -> set[str]:
    """The keys ``typed`` requires. Read from its hints: with postponed annotations,
    Python 3.11's ``__required_keys__`` misses ``Required[...]``."""
    total = getattr(typed, "__total__", True)
    hints = get_type_hints(typed, include_extras=True)
    return {k for k, h in hints.items()
            if get_origin(h) is Required or (total and get_origin(h) is not NotRequired)}


def field_hints(typed: type) -> dict[str, Any]:
    """``typed``'s fields and their types (``Required[...]`` unwrapped)."""
    hints = get_type_hints(typed, include_extras=True)
    return {k: get_args(h)[0] if get_origin(h) in (Required, NotRequired) else h
            for k, h in hints.items()}


# -- the same type as JSON Schema ------------------------------------------------------------
def schema_of(hint: Any) -> Schema:
    """JSON Schema of a type as :func:`check_value` reads it."""
    origin = get_origin(hint)
    if hint is Any:
        return {}
    if origin is Annotated:
        return _annotated_schema(hint)
    if origin is Literal:
        values = list(get_args(hint))
        return {"const": values[0]} if len(values) == 1 else {"enum": values}
    if origin in (Union, types.UnionType):
        return {"anyOf": [schema_of(option) for option in get_args(hint)]}
    if hint is type(None):
        return {"type": "null"}
    if is_typeddict(hint):
        return fields_schema(hint)
    return _plain_schema(hint)


def _annotated_schema(hint: Any) -> Schema:
    base, *rules = get_args(hint)
    out = schema_of(base)
    for rule in rules:
        if isinstance(rule, Length):
            out.update(rule.schema(out.get("type", "string")))
        elif isinstance(rule, Doc):
            out["description"] = rule.text
        elif hasattr(rule, "schema"):
            out.update(rule.schema())
    return out


def _plain_schema(hint: Any) -> Schema:
    kind = get_origin(hint) or hint
    out: Schema = {"type": {str: "string", bool: "boolean", int: "integer", float: "number",
                            dict: "object", list: "array"}[kind]}
    if kind is list and get_args(hint):
        out["items"] = schema_of(get_args(hint)[0])
    elif kind is dict and get_args(hint):
        keys, values = get_args(hint)
        names = schema_of(keys)
        if names != {"type": "string"}:
            out["propertyNames"] = names
        if values is not Any:
            out["additionalProperties"] = schema_of(values)
    return out


def fields_schema(typed: type) -> Schema:
    """An object with ``typed``'s fields (others are allowed)."""
    out: Schema = {"type": "object",
                   "properties": {k: schema_of(h) for k, h in field_hints(typed).items()}}
    required = [k for k in field_hints(typed) if k in required_keys(typed)]
    if required:
        out["required"] = required
    return out


def answer(required: tuple[str, ...] = (), **props: Schema) -> Schema:
    """A reply: a JSON object with these properties (others are allowed)."""
    schema: Schema = {"type": "object", "properties": props}
    if required:
        schema["required"] = list(required)
    return schema
