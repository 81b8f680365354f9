"""Which models a request needs (the design's model factory and configuration system).

The union, in this order, of:

1. the endpoint's ``REQUIRED_MODELS`` (what every request of the endpoint needs);
2. ``MODEL_<ANY>=<name>`` environment variables: models every endpoint that declares
   them needs (names an endpoint does not declare in ``MODELS`` are ignored there);
3. ``CUSTOMER_MODELS[<X-Customer-ID header>]``;
4. the request's ``"models"`` field: a list of names, each of which must be in the
   endpoint's ``MODELS`` (the allow-list); an unknown one is a 400 that names it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..errors import BadRequest

REQUEST_FIELD = "models"
ENV_PREFIX = "MODEL_"


def env_models(environ: Mapping[str, str] | None = None) -> list[str]:
    """Model names from ``MODEL_*`` environment variables, sorted by variable name."""
    env = os.environ if environ is None else environ
    return [env[k] for k in sorted(env) if k.startswith(ENV_PREFIX) and env[k]]


class ModelFactory:
    """Resolves the models of a request from config, environment, customer and body."""

    def __init__(self, allowed: Mapping[str, Any], required: list[str] | None = None,
                 customers: Mapping[str, list[str]] | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self.allowed = set(allowed)
        self.customers = dict(customers or {})
        base = [*(required or []), *(m for m in env_models(environ) if m in self.allowed)]
        unknown = [m for m in [*base, *(m for ms in self.customers.values() for m in ms)]
                   if m not in self.allowed]
        if unknown:
            raise ValueError(f"models {sorted(set(unknown))} are required but not declared in MODELS "
                             f"(declared: {sorted(self.allowed)})")
        self.base = list(dict.fromkeys(base))

    def required(self, inputs: Mapping[str, Any], customer_id: str | None = None) -> list[str]:
        """The models to hold while serving ``inputs``; 400 on a bad ``models`` field."""
        names = list(self.base)
        if customer_id:
            names.extend(self.customers.get(customer_id, []))
        asked = inputs.get(REQUEST_FIELD)
        if asked is not None:
            if not isinstance(asked, list) or not all(isinstance(m, str) for m in asked):
                raise BadRequest(f"field {REQUEST_FIELD!r} must be a list of model names",
                                 FIELD=REQUEST_FIELD)
            bad = [m for m in asked if m not in self.allowed]
            if bad:
                raise BadRequest(f"models not allowed on this endpoint: {', '.join(bad)}",
                                 FIELD=REQUEST_FIELD, unknown_models=bad,
                                 allowed_models=sorted(self.allowed))
            names.extend(asked)
        return list(dict.fromkeys(names))
