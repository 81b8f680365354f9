"""``/models``: the model versions in the box's cache, and which endpoint names which."""

from __future__ import annotations

from .. import control_api as api
from ..artifacts import CACHE_FOLDER, artifact_cache, models_spec
from ..redact import mask_url
from .control import Reply, handles
from .core import Core


class ModelCommands:
    """The model cache, as the admin sees it."""

    def __init__(self, core: Core) -> None:
        self.core = core

    @handles(api.MODELS)
    def models(self, _args: api.NoArgs) -> Reply:
        """Each cached version (size, files, last use, whether a process uses it now),
        the repository (its password masked) and the MODEL of each endpoint."""
        config = self.core.config
        spec = models_spec(config["MODEL_REPOSITORY"], self.core.cache_dir,
                           config["MODEL_CACHE_MB"])
        cache = artifact_cache(spec) if spec else None
        repository = config["MODEL_REPOSITORY"]
        return 200, {
            "REPOSITORY": mask_url(repository) if repository else None,
            "CACHE_FOLDER": str(self.core.cache_dir / CACHE_FOLDER),
            "CACHE_LIMIT_MB": config["MODEL_CACHE_MB"],
            "CACHE": cache.listing() if cache else [],
            "ENDPOINTS": {n: ep.config.settings["MODEL"] for n, ep in self.core.endpoints.items()
                          if ep.config.settings["MODEL"]},
        }
