"""Python client of a basic_inference_server gateway, sync and async, with the same methods.

    from basic_inference_server.client import Client

    with Client("http://gateway:5002", admin_token=token) as bis:
        answer = bis.run("sentiment", {"INPUT_VALUE": "great"})
        job = bis.submit("sentiment", {"INPUT_VALUE": "later"})
        with bis.stream("generate", PROMPT="once") as tokens:   # a streaming endpoint
            for chunk in tokens:
                print(chunk)
        print(bis.wait(job, timeout=60))      # or: for event in bis.job_events(job): ...

``AsyncClient`` is the same, awaited. Requests the gateway says never ran (429, 503 of
the retryable kinds) are retried within a budget, honouring ``Retry-After``; errors are
typed after the gateway's ``ERROR_TYPE`` (:mod:`.errors`). The ``bis`` command line
(:mod:`.cli`) is built on it. See docs/client.md.
"""

from __future__ import annotations

from .aio import AsyncClient
from .credentials import Credentials, resolve
from .errors import (
    BadRequest,
    BisError,
    CircuitOpen,
    Conflict,
    ConnectFailed,
    ConnectionLost,
    Forbidden,
    InternalError,
    InvalidStream,
    JobFailed,
    JobPending,
    MethodNotAllowed,
    ModelsUnavailable,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    QueueFull,
    QuotaExceeded,
    RateLimited,
    StepFailed,
    StreamTimeout,
    Timeout,
    TooManyConnections,
    Unauthorized,
    Unavailable,
    UpstreamDropped,
    WaitTimeout,
)
from .job_events import AsyncJobEvents, JobEvent, JobEvents
from .retry import NO_RETRY, PollPolicy, RetryPolicy
from .streaming import AsyncStream, Stream
from .sync import Client

__all__ = [
    "AsyncClient", "AsyncJobEvents", "AsyncStream", "BadRequest", "BisError", "CircuitOpen",
    "Client", "Conflict", "ConnectFailed", "ConnectionLost", "Credentials", "Forbidden",
    "InternalError", "InvalidStream", "JobEvent", "JobEvents", "JobFailed", "JobPending",
    "MethodNotAllowed", "ModelsUnavailable", "NO_RETRY", "NotFound", "Overloaded",
    "PayloadTooLarge", "PollPolicy", "QueueFull", "QuotaExceeded", "RateLimited", "resolve",
    "RetryPolicy", "StepFailed", "Stream", "StreamTimeout", "Timeout", "TooManyConnections",
    "Unauthorized", "Unavailable", "UpstreamDropped", "WaitTimeout",
]
