"""What the client says to Redis and makes of the replies, without doing
any I/O: each operation is a *plan*, a generator that yields the Redis
calls it needs (``Call``), the events it has for the caller (``Emit``),
and returns its value. ``client`` runs plans on a blocking connection,
``aio`` on an asyncio one; the logic exists once, here.

The waits mirror the worker's own CLI (``src/operator/jobs.rs``,
``src/queue/caller.rs``): blocking reads of at most ``READ_BLOCK`` with the
result key checked between them; a ``job_finished`` event ends a progress
stream, and so does a result key that appeared without one (a payload the
worker refused never runs, so its stream has no events) once
``RESULT_GRACE`` has passed for late events.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from pydantic import ValidationError

from .errors import InvalidPayload, JobFailed, Timeout, UnreadableResult
from .keys import Keys
from .models import DeadLetter, DeployJob, JobEvent, JobKind, JobResult, ProvisionJob
from .rules import MAX_PAYLOAD_BYTES

#: Each blocking read (``XREAD BLOCK``); the result key is checked between
#: reads (the worker's CLI: ``READ_BLOCK``).
READ_BLOCK = 1.0
#: After a result key appears without ``job_finished``: how long late
#: progress events may still take (the CLI's ``RESULT_GRACE``).
RESULT_GRACE = 1.5
#: Entries taken per read.
READ_COUNT = 100
#: The default timeout of ``wait`` and ``events``, as the CLI's ``--timeout``.
DEFAULT_TIMEOUT = 3600.0


@dataclass(frozen=True)
class Call:
    """A redis-py command, by method name (the same on ``redis.Redis`` and
    ``redis.asyncio.Redis``)."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Emit:
    """A progress event for the caller."""

    event: JobEvent


Op = Call | Emit
T = TypeVar("T")
#: A plan: yields ``Op``s, is sent each ``Call``'s reply (None after an
#: ``Emit``), returns ``T``.
Plan = Generator[Op, Any, T]
Clock = Callable[[], float]


# ---------------------------------------------------------------- replies


def text(value: Any) -> str:
    """A reply's string (bytes decoded as UTF-8, leniently)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _fields(raw: Any) -> dict[str, bytes]:
    # A stream entry's fields: a dict (redis-py's parser) or a flat list.
    if isinstance(raw, Mapping):
        items: Iterable[tuple[Any, Any]] = raw.items()
    else:
        flat = list(raw or [])
        items = zip(flat[::2], flat[1::2], strict=False)
    out: dict[str, bytes] = {}
    for key, value in items:
        out[text(key)] = value if isinstance(value, bytes) else str(value).encode()
    return out


def stream_entries(raw: Any) -> list[tuple[str, dict[str, bytes]]]:
    """``XRANGE``-shaped entries as ``(id, fields)``."""
    return [(text(entry_id), _fields(fields)) for entry_id, fields in raw or []]


def xread_entries(raw: Any) -> list[tuple[str, list[tuple[str, dict[str, bytes]]]]]:
    """An ``XREAD`` reply (RESP2 list or RESP3 map) as ``(stream, entries)``."""
    if not raw:
        return []
    pairs = raw.items() if isinstance(raw, Mapping) else raw
    out = []
    for stream, entries in pairs:
        # RESP3 via redis-py may nest the entries one level deeper.
        if (
            entries
            and isinstance(entries, list)
            and len(entries) == 1
            and _is_entry_list(entries[0])
        ):
            entries = entries[0]
        out.append((text(stream), stream_entries(entries)))
    return out


def _is_entry_list(value: Any) -> bool:
    return isinstance(value, list) and (not value or isinstance(value[0], (list, tuple)))


def parse_result(request_id: str, raw: bytes | str) -> JobResult:
    """A result key's or stream entry's JSON; ``UnreadableResult`` if it is
    not a result this version can read."""
    body = text(raw)
    try:
        return JobResult.model_validate_json(body)
    except ValidationError as e:
        raise UnreadableResult(request_id, body, str(e).splitlines()[0]) from None


def parse_event(raw: bytes | None) -> JobEvent | None:
    """A progress entry's payload, if it is one (others are skipped, as the
    worker's CLI skips them)."""
    if raw is None:
        return None
    try:
        return JobEvent.model_validate_json(raw)
    except ValidationError:
        return None


def settled(result: JobResult) -> JobResult:
    """``result`` if it succeeded; raises ``JobFailed`` otherwise."""
    if not result.succeeded:
        raise JobFailed(result)
    return result


def _request_id_of(payload: bytes) -> str | None:
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    rid = value.get("request_id") if isinstance(value, dict) else None
    return rid if isinstance(rid, str) else None


# ---------------------------------------------------------------- plans


def enqueue(keys: Keys, job: DeployJob | ProvisionJob) -> Plan[str]:
    """``XADD <queue> * payload <json>``; returns the request id (for a
    provision job without one, the new entry's id, which the worker uses)."""
    kind = JobKind.DEPLOY if isinstance(job, DeployJob) else JobKind.PROVISION
    body = job.to_json()
    size = len(body.encode())
    if size > MAX_PAYLOAD_BYTES:
        raise InvalidPayload(
            kind, "payload", f"{size} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit"
        )
    entry_id = yield Call("xadd", (keys.queue(kind), {"payload": body}))
    return job.request_id if job.request_id is not None else text(entry_id)


def enqueue_raw(keys: Keys, kind: JobKind, payload: bytes | str) -> Plan[str]:
    """``XADD`` of ``payload`` exactly as given, unchecked (for tests and
    replays); returns the entry id."""
    entry_id = yield Call("xadd", (keys.queue(kind), {"payload": payload}))
    return text(entry_id)


def read_result(keys: Keys, request_id: str, kinds: Sequence[JobKind]) -> Plan[JobResult | None]:
    """The published result of ``request_id`` from its key, if it still
    exists (kept an hour); ``kinds`` are tried in order."""
    for kind in kinds:
        raw = yield Call("get", (keys.result_key(kind, request_id),))
        if raw is not None:
            return parse_result(request_id, raw)
    return None


def wait(
    keys: Keys,
    request_id: str,
    kinds: Sequence[JobKind],
    timeout: float,
    clock: Clock = time.monotonic,
) -> Plan[JobResult]:
    """Waits for ``request_id``'s result: read from the result stream(s)
    with ``XREAD BLOCK``, from their newest entries as found at the start,
    with the result key as the fallback (a result published before the wait
    began, or trimmed from the stream). The worker sets the key and appends
    to the stream in one atomic script, so "positions first, then the key"
    misses no result. Returns a successful result; raises ``JobFailed`` for
    a failed one, ``Timeout`` after ``timeout`` seconds."""
    deadline = clock() + timeout
    streams = {keys.result_stream(kind): kind for kind in kinds}
    positions: dict[str, str] = {}
    for stream in streams:
        newest = yield Call("xrevrange", (stream, "+", "-"), {"count": 1})
        entries = stream_entries(newest)
        positions[stream] = entries[0][0] if entries else "0-0"
    key_checked_at: float | None = None
    while True:
        now = clock()
        if key_checked_at is None or now - key_checked_at >= READ_BLOCK:
            found = yield from read_result(keys, request_id, kinds)
            if found is not None:
                return settled(found)
            key_checked_at = clock()
        remaining = deadline - clock()
        if remaining <= 0:
            raise Timeout(request_id, timeout)
        block_ms = max(1, int(min(READ_BLOCK, remaining) * 1000))
        reply = yield Call(
            "xread", (), {"streams": dict(positions), "count": READ_COUNT, "block": block_ms}
        )
        for stream, entries in xread_entries(reply):
            for entry_id, fields in entries:
                positions[stream] = entry_id
                payload = fields.get("payload")
                if payload is not None and _request_id_of(payload) == request_id:
                    return settled(parse_result(request_id, payload))


def events(
    keys: Keys,
    request_id: str,
    kinds: Sequence[JobKind],
    timeout: float,
    clock: Clock = time.monotonic,
) -> Plan[None]:
    """Emits ``request_id``'s progress events from the start of its stream,
    in order, up to and including ``job_finished``; ends too when its result
    key exists without ``job_finished`` after ``RESULT_GRACE`` (a refused
    payload has no events). Raises ``Timeout`` after ``timeout`` seconds."""
    deadline = clock() + timeout
    stream = keys.events(request_id)
    after = "0-0"
    result_seen_at: float | None = None
    while True:
        remaining = deadline - clock()
        if remaining <= 0:
            raise Timeout(request_id, timeout, "end of the progress stream")
        block_ms = max(1, int(min(READ_BLOCK, remaining) * 1000))
        reply = yield Call(
            "xread", (), {"streams": {stream: after}, "count": READ_COUNT, "block": block_ms}
        )
        for _, entries in xread_entries(reply):
            for entry_id, fields in entries:
                after = entry_id
                event = parse_event(fields.get("payload"))
                if event is None:
                    continue
                yield Emit(event)
                if event.is_finish:
                    return
        if result_seen_at is not None:
            if clock() - result_seen_at >= RESULT_GRACE:
                return
        else:
            for kind in kinds:
                exists = yield Call("exists", (keys.result_key(kind, request_id),))
                if exists:
                    result_seen_at = clock()
                    break


def dead_letters(keys: Keys, count: int) -> Plan[list[DeadLetter]]:
    """The newest ``count`` dead letters, oldest first."""
    raw = yield Call("xrevrange", (keys.dead_letters(), "+", "-"), {"count": count})
    letters = [dead_letter(keys, entry_id, fields) for entry_id, fields in stream_entries(raw)]
    letters.reverse()
    return letters


def dead_letter(keys: Keys, entry_id: str, fields: Mapping[str, bytes]) -> DeadLetter:
    """One ``infra:dead`` entry, as the worker writes it."""

    def field_text(name: str) -> str | None:
        value = fields.get(name)
        return text(value) if value else None

    dead_at = field_text("dead_at")
    stream = field_text("stream")
    return DeadLetter(
        id=entry_id,
        reason=field_text("reason"),
        stream=stream,
        entry_id=field_text("entry_id"),
        request_id=field_text("request_id"),
        worker=field_text("worker"),
        dead_at=_timestamp(dead_at),
        payload=fields.get("payload"),
        kind=keys.kind_of_queue(stream) if stream else None,
    )


def _timestamp(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
