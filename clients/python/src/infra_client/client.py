"""``InfraClient``: the blocking client. Runs ``protocol``'s plans on a
``redis.Redis`` connection pool; thread-safe as redis-py's pool is."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any

import redis

from . import protocol
from .keys import Keys
from .models import DeadLetter, DeployJob, JobEvent, JobKind, JobResult, ProvisionJob
from .protocol import Call, Emit, Plan, T


def _kinds(kind: JobKind | None) -> tuple[JobKind, ...]:
    return (kind,) if kind is not None else tuple(JobKind)


class InfraClient:
    """Enqueues jobs for infra-service and follows them to their results.

    ``key_prefix`` is the worker's ``redis.key_prefix`` (empty in
    production). The connection's socket timeout, if any, must exceed
    ``protocol.READ_BLOCK`` (1 s): waits block that long per read.
    """

    def __init__(self, connection: redis.Redis, *, key_prefix: str = "") -> None:
        self.redis = connection
        self.keys = Keys(key_prefix)

    @classmethod
    def from_url(cls, url: str, *, key_prefix: str = "", **redis_options: Any) -> InfraClient:
        """A client on its own connection pool to ``url``."""
        return cls(redis.Redis.from_url(url, **redis_options), key_prefix=key_prefix)

    def close(self) -> None:
        """Closes the connection pool's connections."""
        # What `Redis.close()` does for a pool of its own (untyped in redis 5).
        self.redis.connection_pool.disconnect()

    def __enter__(self) -> InfraClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------ jobs

    def enqueue_deploy(self, job: DeployJob | Mapping[str, Any]) -> str:
        """Checks ``job`` as the worker will (``InvalidPayload`` names the
        first field that breaks a rule), enqueues it; returns its request id."""
        return self._run(protocol.enqueue(self.keys, DeployJob.parse(job)))

    def enqueue_provision(self, job: ProvisionJob | Mapping[str, Any]) -> str:
        """As ``enqueue_deploy``; without a ``request_id`` in ``job`` the
        returned id is the new stream entry's, which the worker uses."""
        return self._run(protocol.enqueue(self.keys, ProvisionJob.parse(job)))

    def enqueue_raw(self, kind: JobKind, payload: bytes | str) -> str:
        """Enqueues ``payload`` exactly as given, unchecked; the entry id."""
        return self._run(protocol.enqueue_raw(self.keys, kind, payload))

    def result(self, request_id: str, kind: JobKind | None = None) -> JobResult | None:
        """The published result (success or failure), None if there is none
        (not finished, never enqueued, or expired after an hour)."""
        return self._run(protocol.read_result(self.keys, request_id, _kinds(kind)))

    def wait(
        self,
        request_id: str,
        timeout: float = protocol.DEFAULT_TIMEOUT,
        kind: JobKind | None = None,
    ) -> JobResult:
        """Blocks until ``request_id``'s result; returns it if it succeeded,
        raises ``JobFailed`` (with the code, details and whole result) if
        not, ``Timeout`` after ``timeout`` seconds. ``kind`` narrows the
        watch to one result stream (default: both)."""
        return self._run(protocol.wait(self.keys, request_id, _kinds(kind), timeout))

    def events(
        self,
        request_id: str,
        timeout: float = protocol.DEFAULT_TIMEOUT,
        kind: JobKind | None = None,
    ) -> Iterator[JobEvent]:
        """The job's progress events from the first, in order, ending with
        ``job_finished`` (or, for a job refused before it ran, once its
        result exists). Raises ``Timeout`` after ``timeout`` seconds."""
        return self._iterate(protocol.events(self.keys, request_id, _kinds(kind), timeout))

    def dead_letters(self, count: int = 100) -> list[DeadLetter]:
        """The newest ``count`` entries of ``infra:dead``, oldest first."""
        return self._run(protocol.dead_letters(self.keys, count))

    # ------------------------------------------------------------ I/O

    def _call(self, call: Call) -> Any:
        return getattr(self.redis, call.method)(*call.args, **call.kwargs)

    def _run(self, plan: Plan[T]) -> T:
        reply: Any = None
        while True:
            try:
                op = plan.send(reply)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            if isinstance(op, Emit):
                raise TypeError("a plan that emits events runs through _iterate")
            reply = self._call(op)

    def _iterate(self, plan: Plan[None]) -> Iterator[JobEvent]:
        reply: Any = None
        try:
            while True:
                try:
                    op = plan.send(reply)
                except StopIteration:
                    return
                if isinstance(op, Emit):
                    yield op.event
                    reply = None
                else:
                    reply = self._call(op)
        finally:
            plan.close()
