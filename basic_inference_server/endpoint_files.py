"""Find and import a file of the endpoints folder, with errors that say the fix.

Endpoint files and the front's comparison hooks (``SHADOW.HOOK``) are both found and
imported this way; :mod:`~basic_inference_server.discovery` then finds a worker class in
an endpoint file.
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
from pathlib import Path
from types import ModuleType

from .errors import ConfigError, DiscoveryError
from .names import NAME_RULE_TEXT, is_name


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
