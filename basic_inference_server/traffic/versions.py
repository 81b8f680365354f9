"""An endpoint section with ``VERSIONS`` becomes one endpoint per version.

Each version runs as its own server named ``<endpoint>@<label>``: the section's
settings and keys, then the version's overrides. The section's traffic keys
(``POLICY_KEYS``) describe the endpoint as a whole and stay with it.
"""

from __future__ import annotations

from ..config import ENDPOINT_SETTINGS, EndpointConfig, parse_endpoint
from ..names import VERSION_SEP
from .settings import POLICY_KEYS


def expand(cfg: EndpointConfig, where: str = "config") -> dict[str, EndpointConfig]:
    """The endpoints a section runs: itself, or one per version (raises ConfigError)."""
    versions = cfg.settings["VERSIONS"]
    if not versions:
        return {cfg.name: cfg}
    out: dict[str, EndpointConfig] = {}
    for label, overrides in versions.items():
        part = parse_endpoint(cfg.name, overrides, f"{where}: {cfg.name}.VERSIONS.{label}")
        settings = {**cfg.settings, **{k: part.settings[k] for k in part.given}}
        # A version runs the section's file unless it names its own.
        settings["SERVER_CLASS"] = part.settings["SERVER_CLASS"] or cfg.module_name
        for key in POLICY_KEYS:
            settings[key] = ENDPOINT_SETTINGS[key].default
        given = (cfg.given | part.given | {"SERVER_CLASS"}) - set(POLICY_KEYS)
        name = f"{cfg.name}{VERSION_SEP}{label}"
        out[name] = EndpointConfig(name=name, settings=settings,
                                   extra={**cfg.extra, **part.extra}, given=frozenset(given))
    return out
