"""The plans, driven against an in-memory Redis with a fake clock: what
``wait`` and ``events`` make of each order in which things can happen."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from infra_client import JobFailed, JobKind, Keys, Timeout, UnreadableResult, protocol
from infra_client.protocol import Call, Emit, Plan

KEYS = Keys("t:")


def result_json(request_id: str, status: str = "success", **extra: Any) -> str:
    body: dict[str, Any] = {
        "request_id": request_id,
        "job": "deploy",
        "status": status,
        "started_at": "2026-11-23T10:00:00.123Z",
        "finished_at": "2026-11-23T10:01:12.456Z",
        "duration_ms": 72333,
        "attempt": 1,
        "worker": "w-1",
        "output_tail": "",
        "failed_task": None,
        "timings": {"queue_wait_ms": 1, "preflight_ms": 2, "playbook_ms": 3},
        "error": None,
    }
    if status == "failed":
        body["error"] = {
            "code": "playbook_failed",
            "message": "task x failed",
            "details": {"task": "x"},
        }
    body.update(extra)
    return json.dumps(body)


class FakeRedis:
    """Strings and streams; ``xread`` never blocks but lets time pass (and
    runs what was scheduled for that time)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.strings: dict[str, bytes] = {}
        self.streams: dict[str, list[tuple[str, dict[bytes, bytes]]]] = {}
        self.scheduled: list[tuple[float, Callable[[], None]]] = []
        self.seq = 0

    def clock(self) -> float:
        return self.now

    def at(self, when: float, action: Callable[[], None]) -> None:
        self.scheduled.append((when, action))

    def _advance(self, to: float) -> None:
        self.now = to
        due = [a for a in self.scheduled if a[0] <= to]
        self.scheduled = [a for a in self.scheduled if a[0] > to]
        for _, action in sorted(due, key=lambda a: a[0]):
            action()

    def get(self, key: str) -> bytes | None:
        return self.strings.get(key)

    def exists(self, key: str) -> int:
        return int(key in self.strings)

    def set(self, key: str, value: str) -> None:
        self.strings[key] = value.encode()

    def xadd(self, stream: str, fields: dict[str, Any]) -> bytes:
        self.seq += 1
        entry_id = f"{self.seq}-0"
        encoded = {
            k.encode(): (v if isinstance(v, bytes) else str(v).encode()) for k, v in fields.items()
        }
        self.streams.setdefault(stream, []).append((entry_id, encoded))
        return entry_id.encode()

    def xrevrange(self, stream: str, _max: str, _min: str, count: int) -> list[Any]:
        return [(i.encode(), f) for i, f in reversed(self.streams.get(stream, []))][:count]

    def _after(self, streams: dict[str, str], count: int) -> list[Any]:
        out = []
        for stream, after in streams.items():
            newer = [
                (i.encode(), f) for i, f in self.streams.get(stream, []) if _id(i) > _id(after)
            ][:count]
            if newer:
                out.append([stream.encode(), newer])
        return out

    def xread(self, streams: dict[str, str], count: int, block: int) -> list[Any]:
        ready = self._after(streams, count)
        if ready:
            return ready
        self._advance(self.now + block / 1000)
        return self._after(streams, count)

    def publish(self, request_id: str, text: str) -> None:
        """As the worker's FINISH: the key, then the stream, at once."""
        self.set(KEYS.result_key(JobKind.DEPLOY, request_id), text)
        self.xadd(KEYS.result_stream(JobKind.DEPLOY), {"payload": text})


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def run(fake: FakeRedis, plan: Plan[Any]) -> tuple[Any, list[Any]]:
    reply: Any = None
    emitted = []
    while True:
        try:
            op = plan.send(reply)
        except StopIteration as done:
            return done.value, emitted
        if isinstance(op, Emit):
            emitted.append(op.event)
            reply = None
        else:
            assert isinstance(op, Call)
            reply = getattr(fake, op.method)(*op.args, **op.kwargs)


def wait(fake: FakeRedis, request_id: str, timeout: float = 30) -> Any:
    plan = protocol.wait(KEYS, request_id, (JobKind.DEPLOY,), timeout, fake.clock)
    return run(fake, plan)[0]


def test_a_result_published_before_the_wait_is_read_from_its_key() -> None:
    fake = FakeRedis()
    fake.publish("d1", result_json("d1"))
    assert wait(fake, "d1").request_id == "d1"


def test_a_result_published_during_the_wait_comes_from_the_stream() -> None:
    fake = FakeRedis()
    fake.at(3.0, lambda: fake.publish("other", result_json("other")))
    fake.at(5.0, lambda: fake.publish("d1", result_json("d1")))
    result = wait(fake, "d1")
    assert result.request_id == "d1"
    assert 5.0 <= fake.now < 6.0


def test_a_result_missing_from_the_stream_is_found_by_its_key() -> None:
    fake = FakeRedis()
    # Trimmed from the stream: only the key is left.
    fake.at(2.0, lambda: fake.set(KEYS.result_key(JobKind.DEPLOY, "d1"), result_json("d1")))
    assert wait(fake, "d1").request_id == "d1"
    assert fake.now <= 4.0


def test_a_failed_result_raises_job_failed_with_its_code_details_and_result() -> None:
    fake = FakeRedis()
    rollback = {"performed": True, "revision": "a" * 40, "status": "success"}
    fake.publish("d1", result_json("d1", "failed", rollback=rollback))
    with pytest.raises(JobFailed) as failed:
        wait(fake, "d1")
    assert failed.value.code is not None
    assert failed.value.code.value == "playbook_failed"
    assert failed.value.details == {"task": "x"}
    assert failed.value.result.rollback is not None
    assert failed.value.result.rollback.performed


def test_no_result_in_time_raises_timeout_at_the_deadline() -> None:
    fake = FakeRedis()
    with pytest.raises(Timeout) as timed_out:
        wait(fake, "d1", timeout=2.5)
    assert timed_out.value.request_id == "d1"
    assert 2.5 <= fake.now < 2.6


def test_a_result_this_version_cannot_read_is_reported_with_its_text() -> None:
    fake = FakeRedis()
    fake.publish("d1", "not json")
    with pytest.raises(UnreadableResult) as unreadable:
        wait(fake, "d1")
    assert unreadable.value.text == "not json"


def event(seq: int, kind: str, **extra: Any) -> dict[str, Any]:
    return {"payload": json.dumps({"seq": seq, "event": kind, **extra})}


def test_events_come_in_order_and_end_with_job_finished() -> None:
    fake = FakeRedis()
    stream = KEYS.events("d1")
    fake.xadd(stream, event(1, "playbook_on_task_start", task="a"))
    fake.at(1.5, lambda: fake.xadd(stream, event(2, "runner_on_ok", task="a", changed=True)))
    fake.at(1.5, lambda: fake.xadd(stream, {"payload": "garbage"}))
    fake.at(2.5, lambda: fake.xadd(stream, event(3, "job_finished", status="success")))
    plan = protocol.events(KEYS, "d1", (JobKind.DEPLOY,), 30, fake.clock)
    _, emitted = run(fake, plan)
    assert [e.seq for e in emitted] == [1, 2, 3]
    assert emitted[-1].is_finish


def test_events_of_a_job_refused_before_it_ran_end_after_the_grace() -> None:
    fake = FakeRedis()
    fake.publish("d1", result_json("d1", "failed"))
    plan = protocol.events(KEYS, "d1", (JobKind.DEPLOY,), 30, fake.clock)
    _, emitted = run(fake, plan)
    assert emitted == []
    assert protocol.RESULT_GRACE <= fake.now < 30


def test_events_time_out_when_nothing_comes() -> None:
    fake = FakeRedis()
    plan = protocol.events(KEYS, "d1", (JobKind.DEPLOY,), 3, fake.clock)
    with pytest.raises(Timeout):
        run(fake, plan)


def test_dead_letters_are_read_oldest_first_with_their_kind() -> None:
    fake = FakeRedis()
    for n in (1, 2):
        fake.xadd(
            KEYS.dead_letters(),
            {
                "reason": f"port: must be an integer 1-65535, got {n}",
                "stream": KEYS.queue(JobKind.DEPLOY),
                "entry_id": f"{n}-0",
                "request_id": "",
                "worker": "w-1",
                "dead_at": "2026-11-23T10:00:00.123Z",
                "payload": b"\xff",
            },
        )
    letters = run(fake, protocol.dead_letters(KEYS, 10))[0]
    assert [d.entry_id for d in letters] == ["1-0", "2-0"]
    assert letters[0].kind is JobKind.DEPLOY
    assert letters[0].request_id is None
    assert letters[0].payload == b"\xff"
    assert letters[0].dead_at is not None
    assert letters[0].dead_at.year == 2026
