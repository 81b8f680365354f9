"""Model artifacts: versions in a repository (a folder or S3), with manifests of sha256
sums, downloaded once per box into a bounded cache and verified before use.

An endpoint names one version (``MODEL: "<model>/<version>"``); its workers find the
files at ``self.model_path`` when ``_load_model`` runs. A missing or corrupt artifact
fails the load with ``model_integrity``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .cache import ArtifactCache
from .manifest import ModelIntegrityError, ModelRef, ModelRefError, make_manifest
from .repository import check_repository_url, open_repository

# The cache's folder under the gateway's cache folder.
CACHE_FOLDER = "models"
MB = 1024 * 1024

__all__ = ["CACHE_FOLDER", "ArtifactCache", "ModelIntegrityError", "ModelRef", "ModelRefError",
           "artifact_cache", "check_repository_url", "make_manifest", "models_spec"]


def models_spec(repository: str | None, cache_dir: str | Path, cache_mb: int) -> dict[str, Any] | None:
    """What an endpoint server needs to find its model (None without a repository)."""
    if not repository:
        return None
    return {"repository": repository, "folder": str(Path(cache_dir).resolve() / CACHE_FOLDER),
            "limit_mb": cache_mb}


def artifact_cache(spec: dict[str, Any]) -> ArtifactCache:
    """The cache :func:`models_spec` describes."""
    return ArtifactCache(open_repository(spec["repository"]), spec["folder"],
                         int(spec["limit_mb"]) * MB)
