"""Find the worker class of an endpoint file, with errors that say the fix."""

from __future__ import annotations

import inspect
from pathlib import Path
from types import ModuleType
from typing import Any

from .endpoint_files import endpoint_file, import_endpoint
from .errors import DiscoveryError
from .worker import FlaskWorker


def expected_class_name(module_name: str) -> str:
    """``dummy_model_demo1`` -> ``DummyModelDemo1Worker``."""
    parts = module_name.replace("-", "_").split("_")
    return "".join(p[:1].upper() + p[1:] for p in parts if p) + "Worker"


def find_worker_class(module: ModuleType, module_name: str, path: Path) -> type[FlaskWorker]:
    """The one FlaskWorker subclass defined in ``module`` (by the naming rule if several)."""
    expected = expected_class_name(module_name)
    defined = [
        obj for obj in vars(module).values()
        if inspect.isclass(obj) and obj.__module__ == module.__name__
    ]
    workers = [c for c in defined if issubclass(c, FlaskWorker)]
    if len(workers) == 1:
        return workers[0]
    if len(workers) > 1:
        named = [c for c in workers if c.__name__ == expected]
        if named:
            return named[0]
        names = ", ".join(sorted(c.__name__ for c in workers))
        raise DiscoveryError(
            f"{path}: several FlaskWorker subclasses ({names}) and none named {expected}. "
            f"Name the one to serve {expected}."
        )
    wrong_base = [c for c in defined if c.__name__.endswith("Worker")]
    if wrong_base:
        cls = wrong_base[0]
        raise DiscoveryError(
            f"{path}: class {cls.__name__} does not derive from FlaskWorker. "
            f"Declare it as `class {cls.__name__}(FlaskWorker)` with "
            f"`from basic_inference_server import FlaskWorker`."
        )
    raise DiscoveryError(
        f"{path}: no worker class found. Define `class {expected}(FlaskWorker)` "
        f"implementing _load_model, _pre_process, _predict and _post_process."
    )


def load_worker_class(endpoints_dir: str | Path, module_name: str,
                      source: bytes | None = None) -> tuple[type[FlaskWorker], dict[str, Any]]:
    """Import ``<endpoints_dir>/<module_name>.py``; return its worker class and ``_CONFIG``."""
    path = endpoint_file(endpoints_dir, module_name)
    module = import_endpoint(path, source)
    cls = find_worker_class(module, module_name, path)
    defaults = getattr(module, "_CONFIG", {})
    if not isinstance(defaults, dict):
        raise DiscoveryError(f"{path}: _CONFIG must be a dict, got {type(defaults).__name__}")
    return cls, dict(defaults)
