"""The supervisor loop: probe every worker on its endpoint's schedule, sample health.

It runs apart from the manager so that nothing slow (a probe waiting out its deadline,
an NVML call, walking process trees) ever holds up the control plane, and apart from
user code so that a stuck model cannot stop its own watchdog. It acts only through
the manager: it asks what to watch (``supervision``), reports hung processes
(``report_hung``) and pushes samples (``health_sample``); the manager decides and
does the killing and restarting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import psutil

from ..contracts import SupervisorSpec
from ..control_api import (
    HEALTH_SAMPLE,
    REMOTE_HEALTH,
    REPORT_HUNG,
    SUPERVISION,
    HealthSample,
)
from ..health.sampler import collect_sample
from ..ipc import ControlUnavailable, control_call
from .hangs import MASTER, HangDetector, Verdict
from .probe import Outcome, ping, probe_url

log = logging.getLogger(__name__)

# The longest the loop sleeps: new endpoints and changed intervals are seen this fast.
MAX_WAIT = 1.0



def master_outcome(pid: int) -> Outcome:
    """A server's master has no probe socket: a stopped (SIGSTOP) master counts as a miss."""
    try:
        status = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return Outcome.GONE
    except psutil.Error:
        return Outcome.OK
    if status in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP):
        return Outcome.TIMEOUT
    return Outcome.GONE if status in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD) else Outcome.OK


class Supervisor:
    """One supervisor; :meth:`run_once` does one round and says when the next is due."""

    def __init__(self, spec: SupervisorSpec, *, clock: Callable[[], float] = time.monotonic,
                 call: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None,
                 pinger: Callable[[str, float], Outcome] = ping,
                 url_prober: Callable[[str, float], dict[str, Any]] = probe_url,
                 master: Callable[[int], Outcome] = master_outcome,
                 sampler: Callable[..., dict[str, Any]] = collect_sample) -> None:
        self.spec = spec
        self.clock = clock
        self.call = call or (lambda path, req: control_call(path, req, timeout=5.0))
        self.pinger = pinger
        self.url_prober = url_prober
        self.master = master
        self.sampler = sampler
        self.detector = HangDetector()
        self.next_ping: dict[str, float] = {}
        self.next_remote: dict[str, float] = {}
        self.next_sample = 0.0
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="bis-probe")

    def _manager(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """Send a command's request (:meth:`..control_api.Command.request`); its reply's
        body, or None when the manager does not answer."""
        try:
            reply = self.call(self.spec.control, request)
        except ControlUnavailable as exc:
            log.warning("manager not answering %s: %s", request["cmd"], exc)
            return None
        body: dict[str, Any] = reply.get("body", {})
        return body

    def run(self) -> None:
        """Supervise until the manager goes (this process dies with it)."""
        log.info("supervisor started (health sample every %g s)", self.spec.sample_interval)
        while True:
            time.sleep(self.run_once())

    def run_once(self) -> float:
        """Probe the servers that are due, sample if due; seconds until the next round."""
        targets = self._manager(SUPERVISION.request({}))
        if targets is None:
            return MAX_WAIT
        now = self.clock()
        endpoints: dict[str, Any] = targets.get("endpoints", {})
        for name in [n for n in self.next_ping if n not in endpoints]:
            del self.next_ping[name]
            self.detector.forget(name)
        due = self._due(self.next_ping, endpoints, now)
        remote_due = self._due(self.next_remote, targets.get("remotes", {}), now)
        # Remote URLs are probed while the workers are: a slow host costs no extra round.
        remote_probes = {(name, url): self.pool.submit(self.url_prober, url,
                                                       float(t["ping_timeout"]))
                         for name, t in remote_due.items() for url in t["urls"]}
        for name, outcomes in self._probe(due).items():
            target = due[name]
            verdict = self.detector.observe(name, target["generation"], outcomes,
                                            int(target["ping_misses"]))
            if verdict:
                self._report(name, target, verdict, outcomes)
        for name in remote_due:
            urls = {url: probe.result() for (n, url), probe in remote_probes.items() if n == name}
            self._manager(REMOTE_HEALTH.request({"SIGNATURE": name, "URLS": urls}))
        if now >= self.next_sample:
            self.next_sample = now + self.spec.sample_interval
            sample = self.sampler(targets.get("trees", {}), self.spec.disk_path)
            # The sampler's dict is the command's type (collect_sample), stamped here.
            self._manager(HEALTH_SAMPLE.request(
                cast(HealthSample, {**sample, "taken_at": time.time()})))
        upcoming = [*self.next_ping.values(), *self.next_remote.values(), self.next_sample]
        return max(0.0, min(MAX_WAIT, min(upcoming) - self.clock()))

    @staticmethod
    def _due(schedule: dict[str, float], targets: dict[str, Any], now: float) -> dict[str, Any]:
        """The targets whose probe is due, scheduled again; ``schedule`` forgets the gone."""
        for name in [n for n in schedule if n not in targets]:
            del schedule[name]
        due = {n: t for n, t in targets.items() if now >= schedule.get(n, now)}
        for name, target in due.items():
            schedule[name] = now + float(target["ping_interval"])
        return due

    def _probe(self, due: dict[str, Any]) -> dict[str, dict[int, Outcome]]:
        """Every worker of every due server at once: a stuck one costs one deadline, not N."""
        jobs = [(name, int(pid), path, float(t["ping_timeout"]))
                for name, t in due.items() for pid, path in t["workers"].items()]
        results = self.pool.map(lambda job: self.pinger(job[2], job[3]), jobs)
        out: dict[str, dict[int, Outcome]] = {
            name: {MASTER: self.master(int(t["pid"]))} for name, t in due.items()}
        for (name, pid, _path, _timeout), outcome in zip(jobs, results, strict=True):
            out[name][pid] = outcome
        return out

    def _report(self, name: str, target: dict[str, Any], verdict: Verdict,
                outcomes: dict[int, Outcome]) -> None:
        misses = target["ping_misses"]
        if verdict.server:
            stuck = "its master" if outcomes.get(MASTER) == Outcome.TIMEOUT else "every worker"
            reason = f"hung: {stuck} missed {misses} health probes in a row"
        else:
            reason = f"hung: missed {misses} health probes in a row"
        log.error("%s: %s", name, reason + ("" if verdict.server else f" (workers {verdict.workers})"))
        self._manager(REPORT_HUNG.request({
            "SIGNATURE": name, "generation": target["generation"], "server": verdict.server,
            "pids": verdict.workers, "reason": reason}))
