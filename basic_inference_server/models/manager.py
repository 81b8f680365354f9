"""The model manager: load or reuse, reference, release and unload models in a worker.

The operations of the design, by their names here:

* :meth:`ModelManager.acquire` (load or reuse, count a reference, stamp last use) and
  :meth:`ModelManager.release`; :meth:`ModelManager.use` wraps the pair in a context
  manager so a release is never forgotten, exceptions included::

      with self.models.use("encoder") as encoder:
          out = encoder(batch)

* :meth:`ModelManager.unload` (only at zero references), :meth:`ModelManager.usage`,
  :meth:`ModelManager.preload` (kept with a minimum reference count) and
  :meth:`ModelManager.cleanup` (idle zero-reference models; :meth:`start_cleanup`
  runs it periodically).

Before a load the device's memory is checked (see :mod:`.memory`): above the threshold
the least recently used zero-reference copies are unloaded until the new model fits (its
size is the spec's ``memory_mb``, else the size its last load measured, else that of the
largest model seen; the check runs again once it is loaded and measured). If
it still does not fit, the load waits in a first-come first-served queue for up to
``load_wait`` seconds for references to be released, then fails with
:class:`~basic_inference_server.errors.ModelsUnavailable` (HTTP 429). Loads run one at a
time per process, in arrival order: two loads never both count on the same free memory.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..errors import ModelsUnavailable
from . import metrics
from .memory import MB, MemoryProbe, choose_probe, footprint, process_rss
from .metrics import ThrashDetector
from .state import LocalState, ModelState

log = logging.getLogger(__name__)

Loader = Callable[[str, dict[str, Any]], Any]
# The name the memory guard gives to what the worker's own ``_load_model`` loads.
ENDPOINT_MODEL = "_load_model"


class UnknownModel(LookupError):
    """A model name the endpoint does not declare."""


@dataclass
class ModelRef:
    """One held reference: give it back with :meth:`ModelManager.release`."""

    name: str
    model: Any
    ref_id: str


@dataclass
class _Copy:
    model: Any
    size: int
    loaded_at: float
    last_used: float
    refs: int = 0


class ModelManager:
    """Models of one worker process, their memory and their shared records.

    ``specs`` maps each model name the endpoint may use to its spec (a dict handed to
    ``loader(name, spec)``; ``path`` is recorded, ``memory_mb`` is the size expected
    before the first load). ``state`` keeps the shared records (in-process by default).
    """

    def __init__(self, specs: dict[str, dict[str, Any]], loader: Loader, *,
                 state: ModelState | None = None, probe: MemoryProbe | None = None,
                 threshold: float = 0.8, budget_mb: float | None = None, load_wait: float = 0.0,
                 retry_after: float = 5.0, endpoint: str = "", thrash_limit: int = 10,
                 thrash_window: float = 300.0,
                 on_alert: Callable[[str, bool, int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.specs = specs
        self.loader = loader
        self.state: ModelState = state or LocalState()
        self.probe = probe or choose_probe(budget_mb, self.held_bytes)
        self.threshold = threshold
        self.load_wait = load_wait
        self.retry_after = retry_after
        self.endpoint = endpoint
        self.clock = clock
        self.thrash = ThrashDetector(endpoint, thrash_limit, thrash_window, on_alert, clock)
        self._copies: dict[str, _Copy] = {}
        self._pins: list[ModelRef] = []
        self._measured: dict[str, int] = {}
        self._cond = threading.Condition()
        self._next_ticket = 0
        self._serving = 0
        self._stop = threading.Event()
        self._cleaner: threading.Thread | None = None

    # -- references ----------------------------------------------------------------------
    def acquire(self, name: str) -> ModelRef:
        """Load ``name`` (or reuse the loaded copy) and hold a reference to it."""
        spec = self._spec(name)
        copy = self._hold(name, spec)
        try:
            ref_id = self.state.acquire(name, str(spec.get("path", name)))
        except BaseException:
            self._drop_ref(name)
            raise
        return ModelRef(name, copy.model, ref_id)

    def release(self, ref: ModelRef) -> None:
        """Give back a reference taken by :meth:`acquire`."""
        self._drop_ref(ref.name)
        self.state.release(ref.name, ref.ref_id)

    @contextmanager
    def use(self, name: str) -> Iterator[Any]:
        """``with manager.use(name) as model:`` holds a reference for the block."""
        ref = self.acquire(name)
        try:
            yield ref.model
        finally:
            self.release(ref)

    @contextmanager
    def use_all(self, names: Iterable[str]) -> Iterator[dict[str, Any]]:
        """Hold every model in ``names`` for the block; 429 naming all that cannot be loaded."""
        held: list[ModelRef] = []
        missing: list[str] = []
        try:
            for name in names:
                try:
                    held.append(self.acquire(name))
                except ModelsUnavailable as exc:
                    missing.extend(exc.models)
            if missing:
                raise ModelsUnavailable(missing, "not enough memory for them now",
                                        retry_after=self.retry_after)
            yield {ref.name: ref.model for ref in held}
        finally:
            for ref in reversed(held):
                self.release(ref)

    def load_endpoint_model(self, load: Callable[[], None], owner: Any) -> int:
        """Run the worker's ``_load_model`` under the memory guard; returns its size.

        The original's way of loading is protected too: when an earlier load of this
        endpoint measured its size (shared state), there must be room for it first
        (idle ``MODELS`` copies are evicted for it, else ModelsUnavailable: the load
        fails and is retried with backoff). What it loaded is measured (the torch
        modules ``owner`` holds, else the process's growth) and held as a copy named
        ``_load_model`` that is never evicted, so the guard counts it before every
        later load.
        """
        hint = self.state.size_hint(ENDPOINT_MODEL)
        with self._loader_turn():
            if hint:
                with self._cond:
                    self._make_room(ENDPOINT_MODEL, hint)
            _, size, _ = _measured(load, lambda _result: owner)
            self.state.add_copy(ENDPOINT_MODEL, ENDPOINT_MODEL, size, self.probe.device)
            now = self.clock()
            with self._cond:
                self._copies[ENDPOINT_MODEL] = _Copy(model=None, size=size, loaded_at=time.time(),
                                                     last_used=now, refs=1)
                self._measured[ENDPOINT_MODEL] = size
        metrics.MEMORY.labels(self.endpoint, ENDPOINT_MODEL).set(size)
        return size

    def preload(self, names: Iterable[str], min_refs: int = 1) -> None:
        """Load models now and keep ``min_refs`` references on each until :meth:`close`."""
        for name in names:
            for _ in range(min_refs):
                self._pins.append(self.acquire(name))

    # -- loading and unloading -------------------------------------------------------------
    def _spec(self, name: str) -> dict[str, Any]:
        try:
            return self.specs[name]
        except KeyError:
            raise UnknownModel(f"model {name!r} is not declared in MODELS of endpoint "
                               f"{self.endpoint!r} (known: {sorted(self.specs)})") from None

    def _take_hit(self, name: str) -> _Copy | None:
        copy = self._copies.get(name)
        if copy is not None:
            copy.refs += 1
            copy.last_used = self.clock()
            metrics.HITS.labels(self.endpoint, name).inc()
            metrics.REFS.labels(self.endpoint, name).inc()
        return copy

    def _hold(self, name: str, spec: dict[str, Any]) -> _Copy:
        with self._cond:
            copy = self._take_hit(name)
            if copy is not None:
                return copy
        with self._loader_turn():
            with self._cond:
                copy = self._take_hit(name)  # loaded by the turn before ours
                if copy is not None:
                    return copy
                self._make_room(name, self._expected_size(name, spec))
            # Load outside the lock: references to other models come and go meanwhile.
            model, size, seconds = self._load(name, spec)
            copy = _Copy(model=model, size=size, loaded_at=time.time(), last_used=self.clock(),
                         refs=1)
            self.state.add_copy(name, str(spec.get("path", name)), size, self.probe.device)
            with self._cond:
                self._copies[name] = copy
                self._measured[name] = size
                self._trim()  # its size was a guess until now
        log.info("%s: model %s loaded in %.3f s (%.1f MB)", self.endpoint, name, seconds, size / MB)
        metrics.LOADS.labels(self.endpoint, name).inc()
        metrics.LOAD_SECONDS.labels(self.endpoint, name).observe(seconds)
        metrics.MEMORY.labels(self.endpoint, name).set(size)
        metrics.REFS.labels(self.endpoint, name).inc()
        self.thrash.record(name)
        return copy

    @contextmanager
    def _loader_turn(self) -> Iterator[None]:
        """The loader's turn: loads run one at a time, in arrival order.

        Waits for this caller's ticket, holds the turn for the block (the lock itself
        is free meanwhile) and passes it on however the block ends: a turn left
        behind would block every later load.
        """
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
        try:
            with self._cond:
                while self._serving != ticket:
                    self._cond.wait()
            yield
        finally:
            with self._cond:
                self._serving += 1
                self._cond.notify_all()

    def _expected_size(self, name: str, spec: dict[str, Any]) -> int:
        if spec.get("memory_mb") is not None:
            return int(float(spec["memory_mb"]) * MB)
        known = self.state.size_hint(name)
        if known is not None:
            return known
        # Never loaded anywhere: guess it is like the largest model seen so far.
        return max(self._measured.values(), default=0)

    def _make_room(self, name: str, need: int) -> None:
        """Unload LRU idle copies until ``need`` bytes fit under the threshold, or wait, or 429."""
        deadline = self.clock() + self.load_wait
        while True:
            used, total = self.probe.sample()
            limit = self.threshold * total
            if used + need <= limit:
                return
            left = deadline - self.clock()
            idle = sum(c.size for c in self._copies.values() if c.refs == 0)
            # Evict only for a load that can succeed: never for one that cannot fit at all,
            # nor, when there is no time to wait, for one that would not fit even then.
            hopeless = need > limit or (left <= 0 and used - idle + need > limit)
            victim = None if hopeless else self._least_recently_used_idle()
            if victim is not None:
                self._unload_locked(victim, "evicted")
                continue
            if hopeless or left <= 0:
                metrics.UNAVAILABLE.labels(self.endpoint, name).inc()
                reason = (f"needs {need / MB:.1f} MB, {used / MB:.1f} of {total / MB:.1f} MB in use, "
                          f"threshold {self.threshold:.0%}")
                log.warning("%s: cannot load %s: %s", self.endpoint, name, reason)
                raise ModelsUnavailable([name], reason, retry_after=self.retry_after)
            self._cond.wait(min(left, 0.25))  # a release notifies; other processes free memory too

    def _trim(self) -> None:
        """Unload LRU idle copies while memory is over the threshold (after a load)."""
        while True:
            used, total = self.probe.sample()
            victim = self._least_recently_used_idle() if used > self.threshold * total else None
            if victim is None:
                return
            self._unload_locked(victim, "evicted")

    def _least_recently_used_idle(self) -> str | None:
        idle = [(c.last_used, n) for n, c in self._copies.items() if c.refs == 0]
        return min(idle)[1] if idle else None

    def _load(self, name: str, spec: dict[str, Any]) -> tuple[Any, int, float]:
        return _measured(lambda: self.loader(name, spec), lambda model: model)

    def _drop_ref(self, name: str) -> None:
        with self._cond:
            copy = self._copies.get(name)
            if copy is not None:
                copy.refs -= 1
                copy.last_used = self.clock()
                metrics.REFS.labels(self.endpoint, name).dec()
            self._cond.notify_all()

    def _unload_locked(self, name: str, reason: str) -> bool:
        copy = self._copies.get(name)
        if copy is None or copy.refs > 0 or not self.state.remove_copy(name):
            return False
        del self._copies[name]
        del copy
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and self.probe.device.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.empty_cache()  # give the freed blocks back to the device
        log.info("%s: model %s unloaded (%s)", self.endpoint, name, reason)
        metrics.UNLOADS.labels(self.endpoint, name, reason).inc()
        metrics.MEMORY.labels(self.endpoint, name).set(0)
        self.thrash.record(name)
        self._cond.notify_all()
        return True

    def unload(self, name: str) -> bool:
        """Unload this process's copy of ``name``; False when it is referenced or not loaded."""
        with self._cond:
            return self._unload_locked(name, "unload")

    def cleanup(self, idle_s: float) -> list[str]:
        """Unload copies with no reference that have not been used for ``idle_s`` seconds."""
        now = self.clock()
        with self._cond:
            stale = [n for n, c in self._copies.items() if c.refs == 0 and now - c.last_used >= idle_s]
            return [n for n in stale if self._unload_locked(n, "idle")]

    def start_cleanup(self, idle_s: float, interval: float | None = None) -> None:
        """Run :meth:`cleanup` in a background thread every ``interval`` seconds."""
        period = interval if interval is not None else max(0.05, idle_s / 2)

        def loop() -> None:
            while not self._stop.wait(period):
                self.cleanup(idle_s)

        self._cleaner = threading.Thread(target=loop, name="bis-model-cleanup", daemon=True)
        self._cleaner.start()

    # -- views ---------------------------------------------------------------------------
    def held_bytes(self) -> int:
        """Bytes taken by the copies loaded in this process."""
        return sum(c.size for c in list(self._copies.values()))

    def loaded(self) -> dict[str, dict[str, Any]]:
        """This process's copies: references, size, load time and last use."""
        with self._cond:
            return {n: {"refs": c.refs, "size_bytes": c.size, "loaded_at": c.loaded_at,
                        "last_used": c.last_used} for n, c in self._copies.items()}

    def usage(self) -> dict[str, dict[str, Any]]:
        """The shared records of every model (all holders when the state is shared)."""
        return self.state.usage()

    def close(self) -> None:
        """Drop the preload references, unload every copy and stop background work."""
        self._stop.set()
        if self._cleaner is not None:
            self._cleaner.join(timeout=5)
        for ref in self._pins:
            self.release(ref)
        self._pins.clear()
        with self._cond:
            for name in list(self._copies):
                self._unload_locked(name, "close")
        self.state.close()


def _measured(load: Callable[[], Any], holder: Callable[[Any], Any]) -> tuple[Any, int, float]:
    """``load()``'s result, the bytes it took and its seconds: the torch modules
    ``holder(result)`` holds, else the process's growth meanwhile."""
    rss = process_rss()
    started = time.perf_counter()
    result = load()
    seconds = time.perf_counter() - started
    size = footprint(holder(result))
    if size is None:
        size = max(0, process_rss() - rss)
    return result, size, seconds
