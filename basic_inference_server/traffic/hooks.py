"""The operator's comparator functions of shadow traffic (``SHADOW.HOOK``).

A hook is ``"module:function"``: ``module`` is a file of the endpoints folder, found
under the same rules as an endpoint file (:func:`..endpoint_files.endpoint_file`: the name
rule, and no link out of the folder), imported as an endpoint file is. It is imported
again when the file changes, so an edited hook takes effect without a restart. It runs
in the gateway front, beside the request path's code: keep it to comparing.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from ..endpoint_files import endpoint_file, import_endpoint
from ..errors import ConfigError, DiscoveryError
from .compare import ComparatorError, Hook

log = logging.getLogger("bis.shadow")


class Hooks:
    """The HOOK functions of one endpoints folder, each imported once per file version."""

    def __init__(self, endpoints_dir: str | Path | None) -> None:
        self.endpoints_dir = endpoints_dir
        # spec -> (the file's mtime, its function or why it could not be loaded)
        self._loaded: dict[str, tuple[int, Hook | ComparatorError]] = {}
        self._lock = threading.Lock()

    def get(self, spec: str) -> Hook:
        """The function ``spec`` names; :class:`ComparatorError` when it cannot be had."""
        if self.endpoints_dir is None:
            raise ComparatorError("HOOK needs the endpoints folder, and none is known here")
        module, _, function = spec.partition(":")
        with self._lock:
            try:
                path = endpoint_file(self.endpoints_dir, module, setting="HOOK")
                stamp = path.stat().st_mtime_ns
            except (ConfigError, DiscoveryError, OSError) as exc:
                raise ComparatorError(str(exc)) from None
            cached = self._loaded.get(spec)
            if cached is None or cached[0] != stamp:
                cached = (stamp, _load(path, spec, function))
                self._loaded[spec] = cached
        found = cached[1]
        if isinstance(found, ComparatorError):
            raise found
        return found


def _load(path: Path, spec: str, function: str) -> Hook | ComparatorError:
    """The hook function, or the error that says why it is not there (logged once)."""
    try:
        module = import_endpoint(path)
    except DiscoveryError as exc:
        problem = str(exc)
    else:
        found: Any = getattr(module, function, None)
        if callable(found):
            return found  # type: ignore[no-any-return]
        problem = f"{path} has no function {function!r}"
    log.warning("SHADOW.HOOK %s cannot be used: %s", spec, problem)
    return ComparatorError(problem)
