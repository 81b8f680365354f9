"""Find the worker class of an endpoint file, with errors that say the fix."""

from __future__ import annotations

import importlib.util
import inspect
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from .config import NAME_RULE_TEXT, is_name
from .errors import ConfigError, DiscoveryError
from .worker import FlaskWorker


def expected_class_name(module_name: str) -> str:
    """``dummy_model_demo1`` -> ``DummyModelDemo1Worker``."""
    parts = module_name.replace("-", "_").split("_")
    return "".join(p[:1].upper() + p[1:] for p in parts if p) + "Worker"


def endpoint_file(endpoints_dir: str | Path, module_name: str, setting: str = "SERVER_CLASS") -> Path:
    """Path of ``<endpoints_dir>/<module_name>.py``; an error lists what exists.

    A name outside the name rule is a :class:`ConfigError` (it never reaches the file
    system); a file that resolves outside the folder (a link out of it) is refused
    too: only the operator's endpoint files ever run. ``setting`` names the setting
    the name came from, in errors.
    """
    if not is_name(module_name):
        raise ConfigError(f"{setting} {module_name!r} must be {NAME_RULE_TEXT}")
    folder = Path(endpoints_dir)
    path = folder / f"{module_name}.py"
    if path.exists() and not path.resolve().is_relative_to(folder.resolve()):
        raise DiscoveryError(f"{setting} {module_name!r}: {path} resolves outside {folder}; "
                             f"endpoint files must lie inside the endpoints folder")
    if not path.is_file():
        present = sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))
        raise DiscoveryError(
            f"endpoint file {path} not found; files in {folder}: {', '.join(present) or 'none'}. "
            f"Create {path} or set {setting} to one of those names."
        )
    return path


def import_endpoint(path: Path, source: bytes | None = None) -> ModuleType:
    """Import an endpoint file as a fresh module; errors name the file and line.

    With ``source``, that text runs instead of what the file holds now: every worker of
    one server generation runs the code the server started with, even mid-edit.
    """
    folder = str(path.parent.resolve())
    if folder not in sys.path:
        # Lets an endpoint import helper modules that sit beside it.
        sys.path.insert(0, folder)
    name = f"bis_endpoint_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise DiscoveryError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        if source is None:
            spec.loader.exec_module(module)
        else:
            exec(compile(source, str(path), "exec"), module.__dict__)  # noqa: S102
    except Exception as exc:
        sys.modules.pop(name, None)
        frame = _last_frame_in(exc, path)
        where = f"{path}:{frame.lineno}" if frame else str(path)
        raise DiscoveryError(
            f"{where}: importing the endpoint failed with {type(exc).__name__}: {exc}. "
            f"Fix the error in the file (or install what it imports)."
        ) from exc
    return module


def _last_frame_in(exc: BaseException, path: Path) -> traceback.FrameSummary | None:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == path]
    if frames:
        return frames[-1]
    if isinstance(exc, SyntaxError) and exc.lineno:
        return traceback.FrameSummary(str(path), exc.lineno, "<module>")
    return None


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
