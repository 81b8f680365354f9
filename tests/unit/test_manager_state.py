"""Every endpoint transition, without a process: the record changes and says what to do."""

from __future__ import annotations

import signal

import pytest

from basic_inference_server.config import parse_endpoint
from basic_inference_server.hosts import NO_HOST
from basic_inference_server.manager.children import BACKOFF_CAP, Child, Service
from basic_inference_server.manager.state import LOAD_ATTEMPTS, STABLE_AFTER, Change, Endpoint, State


class FakeProc:
    """What Child asks of a Popen: a pid and an exit status."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


def child(gen: int, pid: int = 100, started_at: float = 0.0) -> Child:
    return Child(role="server", name="e", proc=FakeProc(pid), generation=gen,  # type: ignore[arg-type]
                 started_at=started_at)


def endpoint(**settings) -> Endpoint:
    cfg = parse_endpoint("e", {"NR_WORKERS": 2, **settings}, "test")
    return Endpoint(config=cfg, port=5100, target_workers=2)


def started(ep: Endpoint, now: float = 0.0) -> Child:
    c = child(ep.next_generation(), started_at=now)
    change = ep.started(c, now)
    assert ep.state == State.STARTING and change.publish
    return c


def test_start_then_first_worker_makes_it_ready():
    ep = endpoint()
    c = started(ep)
    change = ep.worker_ready(c.generation, 11, "/run/w11", now=1.0)
    assert ep.state == State.READY and ep.ready_since == 1.0
    assert change.publish and change.info and not change.stop
    assert ep.ready_pids == {11} and ep.worker_sockets == {11: "/run/w11"}
    assert ep.route().workers == ("/run/w11",)
    # A second worker adds its socket; the state stays.
    assert ep.worker_ready(c.generation, 12, "/run/w12", now=2.0).publish
    assert ep.ready_since == 1.0 and len(ep.route().workers) == 2


def test_events_of_another_generation_change_nothing():
    ep = endpoint()
    c = started(ep)
    change = ep.worker_ready(c.generation + 5, 11, "/run/w11", now=1.0)
    assert ep.state == State.STARTING and not change.publish and not ep.ready_pids
    ep.worker_ready(c.generation, 11, "/run/w11", now=1.0)
    assert not ep.worker_exit(None, 11).publish and ep.ready_pids == {11}


def test_worker_exit_drops_its_socket():
    ep = endpoint()
    c = started(ep)
    ep.worker_ready(c.generation, 11, "/run/w11", now=1.0)
    assert ep.worker_exit(c.generation, 11).publish
    assert not ep.ready_pids and not ep.worker_sockets
    assert not ep.worker_exit(c.generation, 11).publish  # already gone: nothing to publish


def test_start_failure_is_failed_and_published():
    ep = endpoint()
    change = ep.start_failed("cannot listen on 127.0.0.1:80: Permission denied")
    assert ep.state == State.FAILED and change.publish and "Permission" in ep.last_error


def test_crash_restarts_at_once_then_backs_off_into_a_crash_loop():
    ep = endpoint()
    now = 0.0
    delays = []
    for attempt in range(4):
        c = started(ep, now)
        c.proc.returncode = 1  # type: ignore[attr-defined]
        change = ep.exited(1, now + 1, shutting_down=False)
        assert change.publish and change.event and change.event[0] == "server_exit"
        assert ep.child is None and not ep.ready_pids
        delays.append(ep.restart_at - (now + 1))
        assert ep.state == (State.RESTARTING if attempt < 2 else State.CRASHLOOP)
        assert ep.last_error == "process exited with code 1" and ep.last_exit["exit_code"] == 1
        now = ep.restart_at
        assert not ep.restart_due(now - 0.01) and ep.restart_due(now)
        assert ep.restarts == attempt + 1 and ep.restart_at is None
    assert delays == [0.0, 2.0, 4.0, 8.0]


def test_failed_load_waits_then_doubles_then_gives_up():
    ep = endpoint()
    now, delays = 0.0, []
    for _ in range(LOAD_ATTEMPTS - 1):
        started(ep, now)
        ep.load_failed(ep.generation, "ValueError: weights missing")
        ep.exited(3, now + 1, shutting_down=False)
        delays.append(ep.restart_at - (now + 1))
        now = ep.restart_at
    assert delays == [1.0, 2.0]
    started(ep, now)
    ep.load_failed(ep.generation, "ValueError: weights missing")
    change = ep.exited(4, now + 1, shutting_down=False)
    assert ep.restart_at is None and not ep.restart_due(now + 3600)
    assert ep.state == State.FAILED and ep.last_error == "ValueError: weights missing"
    assert "not retried" in change.log
    ep.reset_failures()  # an operator's /start_server
    assert ep.failures == 0


def test_backoff_is_capped_and_a_stable_run_resets_it():
    ep = endpoint()
    ep.failures = 50
    started(ep, 0.0)
    ep.exited(1, 1.0, shutting_down=False)
    assert ep.restart_at - 1.0 == BACKOFF_CAP
    started(ep, 100.0)
    ep.exited(1, 100.0 + STABLE_AFTER + 1, shutting_down=False)
    assert ep.failures == 0 and ep.state == State.RESTARTING
    assert ep.restart_at == 100.0 + STABLE_AFTER + 1


def test_hung_server_reports_why_it_died():
    ep = endpoint()
    c = started(ep)
    ep.worker_ready(c.generation, 11, "/run/w11", now=1.0)
    assert ep.serves(c.generation) and not ep.serves(c.generation - 1) and not ep.serves(None)
    change = ep.hung("server missed 3 pings")
    assert change.event == ("server_hung", {"endpoint": "e", "reason": "server missed 3 pings"})
    ep.exited(-9, 5.0, shutting_down=False)
    assert ep.last_error == "server missed 3 pings" and ep.state == State.RESTARTING


def test_reload_success_switches_generation_and_drains_the_old():
    ep = endpoint()
    old = started(ep)
    ep.worker_ready(old.generation, 11, "/run/w11", now=1.0)
    new = child(ep.next_generation(), pid=200)
    ep.reload_started(new)
    # The old generation keeps serving while the new one loads.
    assert ep.worker_exit(old.generation, 11).publish and ep.pending is new
    change = ep.worker_ready(new.generation, 21, "/run/w21", now=2.0)
    assert ep.child is new and ep.pending is None and ep.draining == [old]
    assert change.stop == [old] and change.publish and change.event[0] == "reload"
    assert ep.ready_pids == {21} and ep.state == State.READY
    assert ep.drained(old, shutting_down=False).publish is False  # READY: nothing to publish
    assert ep.draining == []


def test_reload_failure_keeps_the_old_generation():
    ep = endpoint()
    old = started(ep)
    ep.worker_ready(old.generation, 11, "/run/w11", now=1.0)
    ep.reload_started(child(ep.next_generation(), pid=200))
    change = ep.pending_exited(3)
    assert ep.pending is None and ep.child is old and ep.state == State.READY
    assert ep.generation == old.generation and change.log
    # READY as before: the failure shows apart, not as the serving one's last_error.
    assert ep.last_error is None and "reload failed" in ep.describe()["reload_error"]["error"]
    assert ep.serves(old.generation)


def test_stop_drains_both_generations_then_frees_the_port():
    ep = endpoint()
    old = started(ep)
    new = child(ep.next_generation(), pid=200)
    ep.reload_started(new)
    change = ep.stop()
    assert ep.state == State.STOPPING and change.stop == [old, new] and change.publish
    assert ep.child is None and ep.pending is None and ep.children() == [old, new]
    assert not ep.drained(old, shutting_down=False).publish
    last = ep.drained(new, shutting_down=False)
    assert ep.state == State.STOPPED and last.publish and last.close_listeners


def test_stop_with_nothing_running_is_stopped_at_once():
    ep = endpoint()
    ep.restart_at = 10.0
    change = ep.stop()
    assert ep.state == State.STOPPED and ep.restart_at is None and not change.stop


def test_shutdown_keeps_listeners_and_counts_no_failure():
    ep = endpoint()
    started(ep)
    change = ep.exited(0, 1.0, shutting_down=True)
    assert ep.state == State.STOPPED and change.publish and not change.log
    assert ep.failures == 0 and ep.restart_at is None
    c = started(ep)
    ep.stop()
    assert not ep.drained(c, shutting_down=True).close_listeners
    ep.restart_at = 3.0
    ep.cancel_restart()
    assert not ep.restart_due(10.0)


@pytest.mark.parametrize(("reported", "target", "sig"), [
    (1, 3, signal.SIGTTIN), (3, 1, signal.SIGTTOU), (2, 2, None)])
def test_workers_are_steered_to_the_target_in_one_signal(reported, target, sig):
    ep = endpoint()
    c = started(ep)
    assert ep.scale(target).signal is None  # no count reported yet: wait for gunicorn's
    change = ep.workers_reported(c.generation, reported)
    assert change.signal == sig and change.workers == (target if sig else None)
    assert ep.workers_reported(c.generation + 1, reported).signal is None  # not serving


def test_support_process_is_ready_when_spawned():
    ep = Endpoint(config=parse_endpoint("s", {"HOST": NO_HOST}, "test"))
    assert ep.is_support
    change = ep.started(child(ep.next_generation()), now=4.0)
    assert ep.state == State.READY and ep.ready_since == 4.0 and not change.publish


def test_reconfigure_frees_the_port_only_when_the_address_moves():
    ep = endpoint()
    same = parse_endpoint("e", {"NR_WORKERS": 3}, "test")
    assert not ep.reconfigure(same).close_listeners and ep.port == 5100
    assert ep.target_workers == 3
    moved = parse_endpoint("e", {"PORT": 5200}, "test")
    assert ep.reconfigure(moved).close_listeners and ep.port is None


def test_service_restarts_at_once_then_backs_off():
    """The front and the supervisor: 0, 1, 2, 4 s while they keep dying young."""
    launched: list[Child] = []

    def start() -> Child:
        launched.append(child(0, started_at=now))
        return launched[-1]

    service = Service("front", start, stable_after=STABLE_AFTER)
    now, delays = 0.0, []
    for _ in range(4):
        service.launch()
        now += 1
        delays.append(service.exited(now))
        assert service.child is None and not service.due(now + delays[-1] - 0.01)
        now += delays[-1]
        assert service.due(now)
    assert delays == [0.0, 1.0, 2.0, 4.0]
    service.launch()
    assert service.exited(now + STABLE_AFTER + 1) == 0.0 and service.failures == 0


def test_scale_to_zero_drains_the_server_and_keeps_the_listeners():
    ep = endpoint()
    c = started(ep)
    ep.worker_ready(c.generation, 11, "/run/w11", now=2.0)
    assert ep.state == State.READY and ep.start_s is not None
    change = ep.scale_to_zero(300)
    assert ep.state == State.IDLE and change.stop == [c] and change.publish
    assert not change.close_listeners and ep.child is None and ep.worker_sockets == {}
    assert change.event == ("scaled_to_zero", {"endpoint": ep.name, "generation": c.generation,
                                               "idle_s": 300})
    assert ep.drained(c, shutting_down=False) == Change() and ep.state == State.IDLE
    stop = ep.stop()  # /kill_server of an endpoint at zero: stopped now, its port freed
    assert ep.state == State.STOPPED and stop.close_listeners and not stop.stop
