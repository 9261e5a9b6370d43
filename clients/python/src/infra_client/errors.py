"""The client's errors: one base class, and a subclass per thing a caller
does differently (fix the payload, read the failure, wait longer)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import ErrorCode, JobKind, JobResult


class InfraClientError(Exception):
    """Base of every error this package raises (Redis errors pass through)."""


class InvalidPayload(InfraClientError, ValueError):
    """A payload breaks a rule of the contract; nothing was enqueued.

    ``field`` is the name the worker's own refusal starts with (``port``,
    ``modules[1]``, ``payload``); ``rule`` states the rule as the worker
    does; ``reason`` is the start of the worker's ``error.message`` for the
    same payload (the offending value, which the worker appends after
    ``, got``, is left out: it may be a secret sent by mistake).
    """

    def __init__(self, kind: JobKind, field: str, rule: str, reason: str | None = None) -> None:
        self.kind = kind
        self.field = field
        self.rule = rule
        self.reason = reason if reason is not None else f"{field}: {rule}"
        super().__init__(f"not a valid {kind.value} job: {self.reason}")


class JobFailed(InfraClientError):
    """The job ran (or was refused by the worker) and its result is ``failed``.

    ``code`` is the contract's error code, ``details`` the error's details,
    ``result`` the whole result (``rollback``, ``failed_task``, ``stats``...).
    """

    def __init__(self, result: JobResult) -> None:
        self.result = result
        self.request_id = result.request_id
        error = result.error
        self.code: ErrorCode | None = error.code if error else None
        self.message = error.message if error else "failed without an error object"
        self.details: dict[str, Any] = dict(error.details) if error else {}
        code = self.code.value if self.code else "unknown"
        super().__init__(f"{result.job.value} {result.request_id} failed: {code}: {self.message}")


class Timeout(InfraClientError, TimeoutError):
    """No result (or no end of the progress stream) in time. The job may
    still finish: ask ``result(request_id)`` later (results are kept an hour)."""

    def __init__(self, request_id: str, timeout: float, waiting_for: str = "result") -> None:
        self.request_id = request_id
        self.timeout = timeout
        super().__init__(
            f"no {waiting_for} for {request_id} within {timeout:g} s; the job may still finish"
        )


class UnreadableResult(InfraClientError):
    """A result key or stream entry held text this version cannot read as a
    result (the worker's CLI shows such text and takes it for a failure)."""

    def __init__(self, request_id: str, text: str, problem: str) -> None:
        self.request_id = request_id
        self.text = text
        self.problem = problem
        super().__init__(f"unreadable result for {request_id}: {problem}")
