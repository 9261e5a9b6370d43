"""Typed models of everything on the wire (CONTRACT.md sections 1 and 3):
the two job payloads, the result, a progress event, a dead letter.

The payload models run the worker's own checks (``rules``) before pydantic
sees the fields, so a refusal names the field the worker would name; their
fields also carry the contract's patterns, ranges and enums, which their
JSON Schema (``model_json_schema()``) publishes. Reading results and events
is lenient where the contract lets them grow: unknown fields are kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from . import rules
from .errors import InvalidPayload


class JobKind(str, Enum):
    """Which queue a job goes on; decides the result key and stream."""

    DEPLOY = "deploy"
    PROVISION = "provision"


class DeployAction(str, Enum):
    """What a DeployJob does on the server (contract section 6)."""

    DEPLOY = "deploy"
    RESTART = "restart"
    STOP = "stop"
    REMOVE = "remove"
    LOGS = "logs"


class JobStatus(str, Enum):
    """A result's status: ``success`` exactly when it has no ``error``."""

    SUCCESS = "success"
    FAILED = "failed"


class ErrorCode(str, Enum):
    """The contract's error codes."""

    INVALID_PAYLOAD = "invalid_payload"
    SECRET_UNRESOLVED = "secret_unresolved"
    SERVER_NOT_FOUND = "server_not_found"
    SSH_UNREACHABLE = "ssh_unreachable"
    SSH_AUTH_FAILED = "ssh_auth_failed"
    HOST_KEY_MISMATCH = "host_key_mismatch"
    PROVIDER_ERROR = "provider_error"
    PLAYBOOK_FAILED = "playbook_failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    WORKER_LOST = "worker_lost"
    INTERNAL = "internal"


class EventKind(str, Enum):
    """A progress event's ``event``."""

    PLAYBOOK_ON_TASK_START = "playbook_on_task_start"
    PLAYBOOK_ON_HANDLER_TASK_START = "playbook_on_handler_task_start"
    RUNNER_ON_OK = "runner_on_ok"
    RUNNER_ON_FAILED = "runner_on_failed"
    RUNNER_ON_SKIPPED = "runner_on_skipped"
    RUNNER_ON_UNREACHABLE = "runner_on_unreachable"
    JOB_FINISHED = "job_finished"


# ---------------------------------------------------------------- payloads

RequestId = Annotated[str, Field(pattern=rules.ID_PATTERN)]
SecretRef = Annotated[
    str,
    Field(min_length=1, max_length=rules.SECRET_REF_MAX_CHARS, pattern=rules.SECRET_REF_PATTERN),
]


def _refuse(kind: JobKind, payload: object, normalize: Any) -> dict[str, Any]:
    try:
        normalized: dict[str, Any] = normalize(payload)
    except rules._Refused as refused:
        v = refused.violation
        raise InvalidPayload(kind, v.field, v.rule, v.reason) from None
    return normalized


_P = TypeVar("_P", bound="_Payload")


class _Payload(BaseModel):
    # Unknown fields are kept and sent: producers may add fields first.
    model_config = ConfigDict(extra="allow", frozen=True, regex_engine="python-re")

    def to_json(self) -> str:
        """The ``payload`` field's JSON, as enqueued (absent, not null, for
        unset optional fields)."""
        return self.model_dump_json(exclude_none=True)


class DeployJob(_Payload):
    """The DeployerNode's request to ship a project to a server."""

    request_id: RequestId
    project_id: Annotated[str, Field(pattern=rules.UUID_PATTERN)]
    #: None: the worker derives it from ``repo_full_name``.
    project_name: Annotated[str, Field(pattern=rules.PROJECT_NAME_PATTERN)] | None = None
    repo_full_name: Annotated[str, Field(pattern=rules.REPO_PATTERN)]
    branch: Annotated[str, Field(min_length=1, max_length=rules.GIT_REF_MAX_BYTES)] = "main"
    server_ip: Annotated[str, Field(min_length=1, max_length=253)]
    port: Annotated[int, Field(strict=True, ge=rules.PORT_MIN, le=rules.PORT_MAX)]
    modules: list[Annotated[str, Field(pattern=rules.MODULE_PATTERN)]] = Field(default_factory=list)
    #: Required for ``action: deploy``.
    github_token_ref: SecretRef | None = None
    secrets_ref: SecretRef | None = None
    action: DeployAction = DeployAction.DEPLOY
    setup_ci: Annotated[bool, Field(strict=True)] = False
    health_path: Annotated[str, Field(pattern=rules.HEALTH_PATH_PATTERN)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _worker_rules(cls, data: Any) -> Any:
        # The worker's checks, in its order: the first refusal names the
        # field the worker names. Raising InvalidPayload through pydantic
        # would wrap it; `parse` re-raises it whole.
        return _refuse(JobKind.DEPLOY, data, rules.normalize_deploy)

    @model_validator(mode="after")
    def _token_for_a_deploy(self) -> DeployJob:
        if self.action is DeployAction.DEPLOY and self.github_token_ref is None:
            raise InvalidPayload(JobKind.DEPLOY, "github_token_ref", rules.TOKEN_FOR_DEPLOY_RULE)
        return self

    @classmethod
    def parse(cls, payload: Mapping[str, Any] | DeployJob) -> DeployJob:
        """A DeployJob from a payload mapping; raises ``InvalidPayload``
        naming the first field that breaks a rule, as the worker would."""
        if isinstance(payload, DeployJob):
            return payload
        return _validate(cls, payload)


class ProvisionJob(_Payload):
    """The Scheduler's request to prepare or recover a server."""

    #: None: the worker goes by the stream entry id (``enqueue`` returns it).
    request_id: RequestId | None = None
    server_handle: Annotated[str, Field(pattern=rules.ID_PATTERN)]
    force_reinstall: Annotated[bool, Field(strict=True)] = False
    is_recovery: Annotated[bool, Field(strict=True)] = False

    @model_validator(mode="before")
    @classmethod
    def _worker_rules(cls, data: Any) -> Any:
        return _refuse(JobKind.PROVISION, data, rules.normalize_provision)

    @model_validator(mode="after")
    def _one_flag_at_most(self) -> ProvisionJob:
        if self.force_reinstall and self.is_recovery:
            raise InvalidPayload(
                JobKind.PROVISION, "force_reinstall", rules.BOTH_FLAGS_RULE, rules.BOTH_FLAGS_RULE
            )
        return self

    @classmethod
    def parse(cls, payload: Mapping[str, Any] | ProvisionJob) -> ProvisionJob:
        """A ProvisionJob from a payload mapping; raises ``InvalidPayload``
        naming the first field that breaks a rule, as the worker would."""
        if isinstance(payload, ProvisionJob):
            return payload
        return _validate(cls, payload)


def _validate(cls: type[_P], payload: object) -> _P:
    try:
        return cls.model_validate(payload)
    except ValidationError as e:
        # Our validators raise InvalidPayload (a ValueError); pydantic keeps
        # it in the error's context. Anything else is a rule the field
        # types state and the worker's checks missed: a bug here, reported
        # under the field's name all the same.
        for error in e.errors():
            cause = (error.get("ctx") or {}).get("error")
            if isinstance(cause, InvalidPayload):
                raise cause from None
        first = e.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "payload"
        kind = JobKind.DEPLOY if cls is DeployJob else JobKind.PROVISION
        raise InvalidPayload(kind, field, first["msg"]) from None


# ---------------------------------------------------------------- results


class _Lenient(BaseModel):
    # Results and events may grow: unknown fields are kept, not refused.
    model_config = ConfigDict(extra="allow", frozen=True)


class JobError(_Lenient):
    """A failed result's ``error``."""

    code: ErrorCode
    message: str = ""
    details: dict[str, Any] = Field(default_factory=dict)


class HostStats(_Lenient):
    """One host's PLAY RECAP line."""

    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0


class FailedTask(_Lenient):
    """The first failed task (message redacted)."""

    host: str = ""
    task: str = ""
    message: str = ""


class Timings(_Lenient):
    """Where the job's time went."""

    queue_wait_ms: int = 0
    preflight_ms: int = 0
    playbook_ms: int = 0


class Rollback(_Lenient):
    """A failed deploy rolled back to the revision that ran before."""

    performed: bool
    revision: str | None = None
    status: JobStatus | None = None


class CiError(_Lenient):
    """Why setting up the repository's CI secrets failed."""

    code: str
    message: str = ""


class CiSetup(_Lenient):
    """``setup_ci``'s outcome; a CI failure leaves a deploy's status alone."""

    status: str
    secrets: list[str] = Field(default_factory=list)
    key_fingerprint: str | None = None
    error: CiError | None = None


class JobResult(_Lenient):
    """The one final result of a job (CONTRACT.md section 3)."""

    request_id: str
    job: JobKind
    status: JobStatus
    error: JobError | None = None
    started_at: datetime
    finished_at: datetime
    duration_ms: int = 0
    attempt: int = 0
    worker: str = ""
    output_tail: str = ""
    #: Absent if the playbook never ran.
    stats: dict[str, HostStats] | None = None
    failed_task: FailedTask | None = None
    timings: Timings = Field(default_factory=Timings)
    # deploy
    project_id: str | None = None
    server_ip: str | None = None
    port: int | None = None
    url: str | None = None
    action: DeployAction | None = None
    revision: str | None = None
    previous_revision: str | None = None
    rollback: Rollback | None = None
    ci: CiSetup | None = None
    # provision
    server_handle: str | None = None
    server_status: str | None = None

    @property
    def succeeded(self) -> bool:
        """Whether ``status`` is ``success``."""
        return self.status is JobStatus.SUCCESS


class JobEvent(_Lenient):
    """One entry of ``job:events:<request_id>``: a task start or result, or
    the last entry, ``job_finished``."""

    seq: int
    event: EventKind
    play: str | None = None
    task: str | None = None
    host: str | None = None
    changed: bool | None = None
    message: str | None = None
    ignored: bool = False
    #: ``job_finished`` only.
    status: JobStatus | None = None
    #: ``job_finished`` only, when it failed.
    error_code: ErrorCode | None = None

    @property
    def is_finish(self) -> bool:
        """Whether this is the stream's last entry."""
        return self.event is EventKind.JOB_FINISHED

    @property
    def is_task_start(self) -> bool:
        """Whether a task (or handler) starts here."""
        return self.event in (
            EventKind.PLAYBOOK_ON_TASK_START,
            EventKind.PLAYBOOK_ON_HANDLER_TASK_START,
        )


class DeadLetter(BaseModel):
    """One entry of ``infra:dead``: a payload the worker could not run."""

    model_config = ConfigDict(frozen=True)

    #: The dead-letter stream's entry id.
    id: str
    reason: str | None = None
    #: The (prefixed) queue the entry came from.
    stream: str | None = None
    #: Its id on that queue.
    entry_id: str | None = None
    request_id: str | None = None
    #: The worker (consumer) that dead-lettered it.
    worker: str | None = None
    dead_at: datetime | None = None
    #: The payload as it was enqueued (may not be UTF-8 or JSON).
    payload: bytes | None = None
    #: The job kind of ``stream``, when it is one of this prefix's queues.
    kind: JobKind | None = None
