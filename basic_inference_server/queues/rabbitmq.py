"""RabbitMQ backend (pika): a durable queue per endpoint, manual acks, a dead-letter exchange.

Names (``prefix`` from the URL's ``?prefix=``, default ``bis``):

* ``<prefix>.<endpoint>``       the jobs; declared with ``<prefix>.dlx`` as its
  dead-letter exchange, so what it rejects lands in the dead queue, and as a priority
  queue (``x-max-priority``): a job of rank r is published with priority 7 - r, so
  rank 0 is served first, in arrival order within a rank
* ``<prefix>.<endpoint>.retry`` jobs waiting for a retry: each carries its delay as a
  per-message TTL and, when it expires, is dead-lettered back into the jobs queue
* ``<prefix>.<endpoint>.dead``  dead letters (bound to ``<prefix>.dlx``)

Workers pull with ``basic.get`` when they are free (no prefetch into a busy worker). A
job whose consumer died is requeued by the broker the moment its connection drops.
Messages are persistent and published with confirms. Attempts: a redelivered message
counts one run more than its own count says (the broker keeps only a flag, so a job
that kills its worker several times is seen as having done so once per consumer).
pika connections are not thread-safe: each thread has its own.

A jobs queue declared before priority classes has no ``x-max-priority``, and the broker
refuses to redeclare it with one: it is used as it is (arrival order, every rank alike)
and a warning says so, once; delete the queue (drained, or its jobs are lost) to have
it declared again with priorities.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

import pika
from pika.adapters.blocking_connection import BlockingChannel

from .base import MAX_RANKS, Claim, Job, JobQueue, url_options

POLL_FIRST, POLL_CAP = 0.005, 0.1
_PERSISTENT = 2
_PRECONDITION_FAILED = 406
log = logging.getLogger(__name__)


class RabbitQueue(JobQueue):
    """RabbitMQ queue; see the module docstring for the names."""

    def __init__(self, url: str) -> None:
        base, options = url_options(url)
        self.prefix = options.pop("prefix", "bis")
        self.params = pika.URLParameters(base + ("?" + urlencode(options) if options else ""))
        self._local = threading.local()
        # Jobs queues found without priorities (warned about once per process).
        self._unranked: set[str] = set()

    # -- connection and names ---------------------------------------------------------
    def _channel(self) -> BlockingChannel:
        channel: BlockingChannel | None = getattr(self._local, "channel", None)
        if channel is None or channel.is_closed or channel.connection.is_closed:
            connection = pika.BlockingConnection(self.params)
            channel = connection.channel()
            channel.confirm_delivery()
            self._local.channel = channel
            self._local.declared = set()
        return channel

    def _declare_main(self, channel: BlockingChannel, main: str, arguments: dict[str, Any]) -> None:
        """Declare the jobs queue as a priority queue, or use one declared before priority
        classes as it is."""
        # On a channel of its own: the broker refuses a queue's redeclare with other
        # arguments by closing the channel, and this thread's may hold claims.
        probe = channel.connection.channel()
        try:
            probe.queue_declare(main, durable=True,
                                arguments={**arguments, "x-max-priority": MAX_RANKS})
            probe.close()
            return
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != _PRECONDITION_FAILED:
                raise
        channel.queue_declare(main, durable=True, arguments=arguments)
        if main not in self._unranked:
            self._unranked.add(main)
            log.warning("RabbitMQ queue %s was declared without priorities (x-max-priority): "
                        "its jobs are served in arrival order whatever their rank. Delete it "
                        "once drained to have it declared again with priorities.", main)

    def _names(self, endpoint: str) -> tuple[str, str, str]:
        main = f"{self.prefix}.{endpoint}"
        return main, f"{main}.retry", f"{main}.dead"

    def _declare(self, endpoint: str) -> tuple[BlockingChannel, str, str, str]:
        channel = self._channel()
        main, retry, dead = self._names(endpoint)
        if endpoint not in self._local.declared:
            dlx = f"{self.prefix}.dlx"
            channel.exchange_declare(dlx, exchange_type="direct", durable=True)
            self._declare_main(channel, main, {
                "x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": dead})
            channel.queue_declare(dead, durable=True)
            channel.queue_bind(dead, dlx, routing_key=dead)
            channel.queue_declare(retry, durable=True, arguments={
                "x-dead-letter-exchange": "", "x-dead-letter-routing-key": main})
            self._local.declared.add(endpoint)
        return channel, main, retry, dead

    def _call(self, endpoint: str, action: Any) -> Any:
        """Run ``action(channel, main, retry, dead)``, once more on a new connection if the
        broker dropped the old one (an idle connection misses its heartbeats)."""
        try:
            return action(*self._declare(endpoint))
        except (pika.exceptions.ConnectionClosed, pika.exceptions.StreamLostError,
                pika.exceptions.ChannelClosed):
            self._local.channel = None
            return action(*self._declare(endpoint))

    @staticmethod
    def _publish(channel: BlockingChannel, exchange: str, key: str, job: Job,
                 expiration_s: float | None = None) -> None:
        # A retry keeps its priority when its TTL sends it back to the jobs queue.
        props = pika.BasicProperties(delivery_mode=_PERSISTENT, message_id=job.id,
                                     content_type="application/json",
                                     priority=MAX_RANKS - 1 - job.queue_rank)
        if expiration_s is not None:
            props.expiration = str(max(0, int(expiration_s * 1000)))
        channel.basic_publish(exchange, key, job.encode(), properties=props, mandatory=True)

    # -- the interface --------------------------------------------------------------------
    def enqueue(self, job: Job, max_depth: int | None = None) -> bool:
        """Add a job."""
        def act(channel: BlockingChannel, main: str, retry: str, _dead: str) -> bool:
            if max_depth is not None and self._count(channel, main, retry) >= max_depth:
                return False
            self._publish(channel, "", main, job)
            return True

        return bool(self._call(job.endpoint, act))

    def claim(self, endpoint: str, consumer: str, wait: float,
              visibility_timeout: float) -> Claim | None:
        """Take the next job, waiting up to ``wait`` seconds."""
        deadline = time.monotonic() + wait
        pause = POLL_FIRST
        while True:
            got = self._call(endpoint, lambda ch, main, _r, _d: (ch, *ch.basic_get(main)))
            channel, method, props, body = got
            if method is not None:
                job = Job.decode_or_stand_in(body, endpoint,
                                             props.message_id or f"amqp-{method.delivery_tag}")
                job.attempts += 2 if method.redelivered else 1
                return Claim(job=job, receipt=(channel, method.delivery_tag))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            channel.connection.sleep(min(pause, remaining))  # serves heartbeats meanwhile
            pause = min(POLL_CAP, pause * 2)

    def _settle(self, claim: Claim, publish: tuple[str, str, Job, float | None] | None) -> None:
        """Publish what replaces the claimed message (confirmed), then ack it."""
        channel, tag = claim.receipt
        if publish is not None:
            self._publish(channel, *publish)
        channel.basic_ack(tag)

    def ack(self, claim: Claim) -> None:
        """The job finished (its result is stored)."""
        self._settle(claim, None)

    def release(self, claim: Claim) -> None:
        """Give back a job that was not started."""
        main, _retry, _dead = self._names(claim.job.endpoint)
        job = replace(claim.job, attempts=claim.job.attempts - 1)
        self._settle(claim, ("", main, job, None))

    def retry_later(self, claim: Claim, delay: float, error: str) -> None:
        """The attempt failed: make the job claimable again after ``delay`` seconds."""
        _main, retry, _dead = self._names(claim.job.endpoint)
        self._settle(claim, ("", retry, replace(claim.job, last_error=error), delay))

    def dead_letter(self, claim: Claim, error: str) -> None:
        """Move the job to the endpoint's dead-letter queue with its last error."""
        _main, _retry, dead = self._names(claim.job.endpoint)
        job = replace(claim.job, last_error=error)
        self._settle(claim, (f"{self.prefix}.dlx", dead, job, None))

    @staticmethod
    def _count(channel: BlockingChannel, *queues: str) -> int:
        return sum(int(channel.queue_declare(q, passive=True).method.message_count) for q in queues)

    def depth(self, endpoint: str) -> int:
        """Jobs ready and waiting for a retry (the broker does not count unacked ones here)."""
        return int(self._call(endpoint, lambda ch, main, retry, _d: self._count(ch, main, retry)))

    def _drain(self, channel: BlockingChannel, endpoint: str, queue: str,
               limit: int) -> list[tuple[int, Job]]:
        """Take up to ``limit`` messages unacked (they go back on nack or channel close)."""
        out: list[tuple[int, Job]] = []
        while len(out) < limit:
            method, props, body = channel.basic_get(queue)
            if method is None:
                break
            job = Job.decode_or_stand_in(body, endpoint,
                                         props.message_id or f"amqp-{method.delivery_tag}")
            out.append((method.delivery_tag, job))
        return out

    def dead_letters(self, endpoint: str, limit: int = 100) -> list[Job]:
        """Jobs in the dead-letter queue, oldest first, with ``last_error``."""
        def act(channel: BlockingChannel, _m: str, _r: str, dead: str) -> list[Job]:
            taken = self._drain(channel, endpoint, dead, limit)
            if taken:
                channel.basic_nack(taken[-1][0], multiple=True, requeue=True)
            return [job for _tag, job in taken]

        jobs: list[Job] = self._call(endpoint, act)
        return jobs

    def requeue_dead(self, endpoint: str, job_id: str | None = None) -> list[str]:
        """Put dead jobs (one, or all when ``job_id`` is None) back in the queue with their attempts reset."""
        def act(channel: BlockingChannel, main: str, _r: str, dead: str) -> list[str]:
            ids, others = [], []
            # Drain first, give back the others at the end: a message given back at once
            # would be read again by the same drain.
            for tag, job in self._drain(channel, endpoint, dead, 1_000_000):
                if job_id is None or job.id == job_id:
                    self._publish(channel, "", main, replace(job, attempts=0))
                    channel.basic_ack(tag)
                    ids.append(job.id)
                else:
                    others.append(tag)
            for tag in others:
                channel.basic_nack(tag, requeue=True)
            return ids

        ids: list[str] = self._call(endpoint, act)
        return ids

    def close(self) -> None:
        """Release this thread's connections."""
        channel = getattr(self._local, "channel", None)
        self._local.channel = None
        if channel is not None and channel.connection.is_open:
            channel.connection.close()
