"""The model manager in one process, with real torch models and a CPU memory budget."""

from __future__ import annotations

import threading

import pytest
import torch

from basic_inference_server.errors import ModelsUnavailable
from basic_inference_server.models.manager import ModelManager, UnknownModel
from basic_inference_server.models.memory import MB, footprint
from tests.conftest import wait_until

UNITS = 512  # one Linear(512, 512): 1,050,624 bytes
SIZE = UNITS * UNITS * 4 + UNITS * 4


def build(name, spec):
    torch.manual_seed(0)
    return torch.nn.Linear(spec.get("units", UNITS), spec.get("units", UNITS))


def manager(models=("a", "b", "c", "d"), budget_models=3.1, **kw):
    """Room (at the 80 % threshold) for ``budget_models`` models of SIZE bytes."""
    specs = {m: {"path": f"/models/{m}"} for m in models}
    specs["huge"] = {"units": 2048, "memory_mb": 16}
    budget_mb = budget_models * SIZE / MB / 0.8
    return ModelManager(specs, build, budget_mb=budget_mb, endpoint="unit", **kw)


def test_load_reuse_release_and_usage():
    m = manager()
    with m.use("a") as first:
        assert isinstance(first, torch.nn.Linear)
        with m.use("a") as again:
            assert again is first  # reused, not loaded twice
            assert m.loaded()["a"]["refs"] == 2
    assert footprint(first) == SIZE
    assert m.loaded()["a"] == {**m.loaded()["a"], "refs": 0, "size_bytes": SIZE}
    rec = m.usage()["a"]
    assert rec["ref_count"] == 0 and rec["hits"] == 2 and rec["loads"] == 1
    assert rec["path"] == "/models/a" and rec["last_used"] > 0
    assert [c["device"] for c in rec["copies"]] == ["cpu"]


def test_use_releases_on_exception():
    m = manager()
    with pytest.raises(RuntimeError), m.use("a"):
        assert m.loaded()["a"]["refs"] == 1
        raise RuntimeError("model code failed")
    assert m.loaded()["a"]["refs"] == 0 and m.usage()["a"]["ref_count"] == 0


def test_unload_only_at_zero_references():
    m = manager()
    ref = m.acquire("a")
    assert m.unload("a") is False and "a" in m.loaded()
    m.release(ref)
    assert m.unload("a") is True and m.loaded() == {}
    assert "a" not in m.usage()  # no copy, no reference: the record goes


def test_lru_idle_model_is_evicted_and_referenced_one_never():
    m = manager(budget_models=3.1)
    held = m.acquire("a")  # least recently used of all, but referenced
    for name in ("b", "c"):
        with m.use(name):
            pass
    with m.use("b"):  # c is now the least recently used idle model
        pass
    with m.use("d"):
        assert sorted(m.loaded()) == ["a", "b", "d"]
    with m.use("c"):  # d idle and least recently used now... after b
        pass
    assert sorted(m.loaded()) == ["a", "c", "d"]
    m.release(held)


def test_impossible_load_is_models_unavailable():
    m = manager()
    with pytest.raises(ModelsUnavailable) as info:
        m.acquire("huge")
    err = info.value
    assert err.status == 429 and err.headers() == [("Retry-After", "5")]
    body = err.to_dict()
    assert body["error"] == "Required models unavailable"
    assert body["unavailable_models"] == ["huge"] and "temporary overloading" in body["message"]
    assert "huge" not in m.loaded()


def test_full_of_referenced_models_refuses_at_once_without_wait():
    m = manager(budget_models=2.1)
    a, b = m.acquire("a"), m.acquire("b")
    with pytest.raises(ModelsUnavailable, match="c"):
        m.acquire("c")
    assert sorted(m.loaded()) == ["a", "b"]
    m.release(a)
    m.release(b)


def test_waiting_loads_get_room_in_arrival_order():
    m = manager(budget_models=2.1, load_wait=30)
    a, b = m.acquire("a"), m.acquire("b")
    order: list[str] = []
    held: dict[str, object] = {}

    def want(name):
        ref = m.acquire(name)
        order.append(name)
        held[name] = ref

    base = m._next_ticket  # tickets of the loads so far
    first = threading.Thread(target=want, args=("c",))
    first.start()
    wait_until(lambda: m._next_ticket == base + 1, message="c queued")
    second = threading.Thread(target=want, args=("d",))
    second.start()
    wait_until(lambda: m._next_ticket == base + 2, message="d queued behind c")
    assert order == []
    m.release(a)  # room for one: the first in line gets it
    wait_until(lambda: order == ["c"], message="c loaded first")
    m.release(b)
    wait_until(lambda: order == ["c", "d"], message="then d")
    first.join()
    second.join()
    assert sorted(m.loaded()) == ["c", "d"]


def test_wait_times_out_with_429():
    now = [0.0]
    m = manager(budget_models=1.1, load_wait=2, clock=lambda: now[0])
    a = m.acquire("a")
    base = m._next_ticket

    def tick():
        wait_until(lambda: m._next_ticket == base + 1, message="b queued")
        now[0] = 5.0

    ticker = threading.Thread(target=tick)
    ticker.start()
    with pytest.raises(ModelsUnavailable):
        m.acquire("b")
    ticker.join()
    m.release(a)
    with m.use("b"):  # the queue moved on: the next load is served
        assert sorted(m.loaded()) == ["b"]


def test_preload_keeps_a_minimum_reference_count():
    m = manager(budget_models=2.1)
    m.preload(["a"], min_refs=1)
    assert m.loaded()["a"]["refs"] == 1 and m.usage()["a"]["ref_count"] == 1
    for name in ("b", "c", "d"):
        with m.use(name):
            pass
    assert "a" in m.loaded()  # never evicted, though least recently used
    m.close()
    assert m.loaded() == {} and m.usage() == {}


def test_cleanup_unloads_idle_zero_reference_models():
    now = [100.0]
    m = manager(clock=lambda: now[0])
    with m.use("a"):
        pass
    ref = m.acquire("b")
    now[0] += 60
    assert m.cleanup(idle_s=30) == ["a"]  # b is referenced: kept however old
    m.release(ref)
    now[0] += 10
    assert m.cleanup(idle_s=30) == []  # b was used 10 s ago
    now[0] += 30
    assert m.cleanup(idle_s=30) == ["b"]


def test_periodic_cleanup_runs_in_background():
    m = manager()
    with m.use("a"):
        pass
    m.start_cleanup(idle_s=0.05, interval=0.02)
    wait_until(lambda: m.loaded() == {}, timeout=5, message="idle model unloaded")
    m.close()


def test_unknown_model_is_named():
    with pytest.raises(UnknownModel, match="nope"):
        manager().acquire("nope")


def test_thrashing_raises_one_alert_and_clears():
    now = [0.0]
    alerts = []
    m = manager(budget_models=1.1, thrash_limit=4, thrash_window=60, clock=lambda: now[0],
                on_alert=lambda model, hot, n: alerts.append((model, hot)))
    for name in ("a", "b", "a", "b", "a", "b"):  # every load evicts the other model
        with m.use(name):
            pass
        now[0] += 1
    # a's 5th load or unload is its 3rd load; b's 5th is its 3rd load. One alert each.
    assert alerts == [("a", True), ("b", True)]
    now[0] += 120
    assert m.thrash.check("a") is False and alerts[-1] == ("a", False)


@pytest.mark.parametrize("where", ["room", "loader", "state"])
def test_a_failed_load_passes_the_loaders_turn_on(where):
    """Whatever fails while a load holds the turn, the next load gets it (no deadlock)."""
    fail = {"on": True}

    def flaky(name, spec):
        if where == "loader" and fail["on"]:
            raise RuntimeError("weights missing")
        return build(name, spec)

    m = ModelManager(
        {"a": {}, "b": {}, "huge": {"units": 2048, "memory_mb": 16}}, flaky,
        budget_mb=3.1 * SIZE / MB / 0.8, endpoint="unit")
    if where == "state":
        real = m.state.add_copy

        def add_copy(*args):
            if fail["on"]:
                raise ConnectionError("state store down")
            return real(*args)
        m.state.add_copy = add_copy  # type: ignore[method-assign]
    name = "huge" if where == "room" else "a"
    with pytest.raises((ModelsUnavailable, RuntimeError, ConnectionError)):
        m.acquire(name)
    fail["on"] = False
    got: list[object] = []
    loader = threading.Thread(target=lambda: got.append(m.acquire("b")), daemon=True)
    loader.start()
    loader.join(timeout=30)
    assert got and m._serving == m._next_ticket, "the turn was not passed on"
    m.release(got[0])


class LoadsInItsOwnWay:
    """A worker of the original kind: ``_load_model`` keeps a torch module itself."""

    def __init__(self, mb: float) -> None:
        self.mb, self.model = mb, None

    def _load_model(self) -> None:
        self.model = torch.nn.Linear(int(self.mb * MB / 4), 1, bias=False)


def test_what_load_model_loads_is_measured_and_counted_by_the_guard():
    worker = LoadsInItsOwnWay(4)
    m = ModelManager({"small": {"memory_mb": 3}}, build, budget_mb=6, threshold=0.8)
    size = m.load_endpoint_model(worker._load_model, worker)
    assert size == footprint(worker.model) == 4 * MB
    assert m.loaded()["_load_model"]["refs"] == 1 and m.held_bytes() == 4 * MB
    # 4 + 3 MB is over 80 % of 6 MB: the endpoint's own model counts, and is not evicted.
    with pytest.raises(ModelsUnavailable):
        m.acquire("small")
    assert m.cleanup(0) == [] and "_load_model" in m.loaded()


def test_a_known_load_model_size_that_does_not_fit_fails_the_load_before_it_runs():
    from basic_inference_server.models.state import LocalState

    state = LocalState()  # shared, as MODEL_STATE_URL shares it between workers
    first, loaded = ModelManager({}, build, state=state, budget_mb=100), LoadsInItsOwnWay(8)
    assert first.load_endpoint_model(loaded._load_model, loaded) == 8 * MB
    second = ModelManager({}, build, state=state, budget_mb=6)
    late = LoadsInItsOwnWay(8)
    with pytest.raises(ModelsUnavailable, match="_load_model"):
        second.load_endpoint_model(late._load_model, late)
    assert late.model is None
