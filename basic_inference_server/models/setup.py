"""Wires a worker to its model manager from the endpoint's settings (after the fork)."""

from __future__ import annotations

import atexit
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..worker import FlaskWorker
from .factory import ModelFactory
from .manager import ModelManager
from .state import LocalState, ModelState


def build_manager(worker: FlaskWorker) -> ModelManager:
    """The worker's :class:`ModelManager`, configured by its ``MODEL_*`` settings."""
    cfg = worker.config_data
    state: ModelState
    if cfg.get("MODEL_STATE_URL"):
        from .redis_state import RedisState  # redis is an optional extra

        state = RedisState(cfg["MODEL_STATE_URL"], lease=float(cfg.get("MODEL_LEASE", 30)),
                           prefix=str(cfg.get("MODEL_STATE_PREFIX") or ""))
    else:
        state = LocalState()

    def alert(model: str, thrashing: bool, count: int) -> None:
        msg = (f"model {model} thrashes: {count} loads/unloads in {cfg.get('MODEL_THRASH_WINDOW')} s"
               if thrashing else f"model {model} no longer thrashes")
        worker._create_notification(notif="alert", msg=msg, model=model, thrashing=thrashing)

    manager = ModelManager(
        dict(cfg.get("MODELS") or {}), worker._build_model, state=state,
        threshold=float(cfg.get("MODEL_MEMORY_THRESHOLD", 0.8)),
        budget_mb=cfg.get("MODEL_MEMORY_BUDGET_MB"), load_wait=float(cfg.get("MODEL_LOAD_WAIT", 0)),
        endpoint=worker.endpoint, thrash_limit=int(cfg.get("MODEL_THRASH_LIMIT", 10)),
        thrash_window=float(cfg.get("MODEL_THRASH_WINDOW", 300)), on_alert=alert)
    if cfg.get("MODEL_IDLE_UNLOAD"):
        manager.start_cleanup(float(cfg["MODEL_IDLE_UNLOAD"]))
    atexit.register(manager.close)
    return manager


class RequestModels:
    """Holds the models a request needs while it runs (the design's model request manager)."""

    def __init__(self, manager: ModelManager, factory: ModelFactory) -> None:
        self.manager = manager
        self.factory = factory

    @classmethod
    def for_worker(cls, worker: FlaskWorker) -> RequestModels | None:
        """None when the endpoint declares no models: requests then skip this step."""
        cfg = worker.config_data
        if not cfg.get("MODELS"):
            return None
        factory = ModelFactory(cfg["MODELS"], list(cfg.get("REQUIRED_MODELS") or []),
                               cfg.get("CUSTOMER_MODELS") or {})
        return cls(worker.models, factory)

    @contextmanager
    def hold(self, inputs: dict[str, Any], customer_id: str | None) -> Iterator[dict[str, Any]]:
        """400 for a bad ``models`` field, 429 when some cannot be loaded now."""
        with self.manager.use_all(self.factory.required(inputs, customer_id)) as held:
            yield held
