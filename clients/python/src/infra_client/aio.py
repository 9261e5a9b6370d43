"""``AsyncInfraClient``: the asyncio client. Runs ``protocol``'s plans on a
``redis.asyncio.Redis`` pool; any number of waits may be awaited at once
(each blocked read holds one pooled connection for at most a second)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any

import redis.asyncio

from . import protocol
from .keys import Keys
from .models import DeadLetter, DeployJob, JobEvent, JobKind, JobResult, ProvisionJob
from .protocol import Call, Emit, Plan, T


def _kinds(kind: JobKind | None) -> tuple[JobKind, ...]:
    return (kind,) if kind is not None else tuple(JobKind)


class AsyncInfraClient:
    """The asyncio twin of ``InfraClient``: the same methods, awaited."""

    def __init__(self, connection: redis.asyncio.Redis, *, key_prefix: str = "") -> None:
        self.redis = connection
        self.keys = Keys(key_prefix)

    @classmethod
    def from_url(cls, url: str, *, key_prefix: str = "", **redis_options: Any) -> AsyncInfraClient:
        """A client on its own connection pool to ``url``."""
        return cls(redis.asyncio.Redis.from_url(url, **redis_options), key_prefix=key_prefix)

    async def aclose(self) -> None:
        """Closes the connection pool."""
        await self.redis.aclose()

    async def __aenter__(self) -> AsyncInfraClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------ jobs

    async def enqueue_deploy(self, job: DeployJob | Mapping[str, Any]) -> str:
        """See ``InfraClient.enqueue_deploy``."""
        return await self._run(protocol.enqueue(self.keys, DeployJob.parse(job)))

    async def enqueue_provision(self, job: ProvisionJob | Mapping[str, Any]) -> str:
        """See ``InfraClient.enqueue_provision``."""
        return await self._run(protocol.enqueue(self.keys, ProvisionJob.parse(job)))

    async def enqueue_raw(self, kind: JobKind, payload: bytes | str) -> str:
        """See ``InfraClient.enqueue_raw``."""
        return await self._run(protocol.enqueue_raw(self.keys, kind, payload))

    async def result(self, request_id: str, kind: JobKind | None = None) -> JobResult | None:
        """See ``InfraClient.result``."""
        return await self._run(protocol.read_result(self.keys, request_id, _kinds(kind)))

    async def wait(
        self,
        request_id: str,
        timeout: float = protocol.DEFAULT_TIMEOUT,
        kind: JobKind | None = None,
    ) -> JobResult:
        """See ``InfraClient.wait``."""
        return await self._run(protocol.wait(self.keys, request_id, _kinds(kind), timeout))

    async def events(
        self,
        request_id: str,
        timeout: float = protocol.DEFAULT_TIMEOUT,
        kind: JobKind | None = None,
    ) -> AsyncIterator[JobEvent]:
        """See ``InfraClient.events``."""
        plan = protocol.events(self.keys, request_id, _kinds(kind), timeout)
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
                    reply = await self._call(op)
        finally:
            plan.close()

    async def dead_letters(self, count: int = 100) -> list[DeadLetter]:
        """See ``InfraClient.dead_letters``."""
        return await self._run(protocol.dead_letters(self.keys, count))

    # ------------------------------------------------------------ I/O

    async def _call(self, call: Call) -> Any:
        return await getattr(self.redis, call.method)(*call.args, **call.kwargs)

    async def _run(self, plan: Plan[T]) -> T:
        reply: Any = None
        while True:
            try:
                op = plan.send(reply)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            if isinstance(op, Emit):
                raise TypeError("a plan that emits events runs through events()")
            reply = await self._call(op)
