"""infra-service's Python client: enqueue deploy and provision jobs on
Redis Streams, checked locally by the worker's own rules, and follow them to
their results (wire contract v1, CONTRACT.md).

Layout: ``rules`` (the payload rules, a port of the worker's parser),
``models`` (typed payloads, results, events, dead letters), ``errors``,
``keys`` (Redis names under a prefix), ``protocol`` (what is said to Redis
and made of its replies, no I/O), ``client`` (blocking) and ``aio``
(asyncio), which only run ``protocol``'s plans.
"""

from .aio import AsyncInfraClient
from .client import InfraClient
from .errors import InfraClientError, InvalidPayload, JobFailed, Timeout, UnreadableResult
from .keys import Keys
from .models import (
    CiSetup,
    DeadLetter,
    DeployAction,
    DeployJob,
    ErrorCode,
    EventKind,
    FailedTask,
    HostStats,
    JobError,
    JobEvent,
    JobKind,
    JobResult,
    JobStatus,
    ProvisionJob,
    Rollback,
    Timings,
)

__all__ = [
    "AsyncInfraClient",
    "CiSetup",
    "DeadLetter",
    "DeployAction",
    "DeployJob",
    "ErrorCode",
    "EventKind",
    "FailedTask",
    "HostStats",
    "InfraClient",
    "InfraClientError",
    "InvalidPayload",
    "JobError",
    "JobEvent",
    "JobFailed",
    "JobKind",
    "JobResult",
    "JobStatus",
    "Keys",
    "ProvisionJob",
    "Rollback",
    "Timeout",
    "Timings",
    "UnreadableResult",
]
