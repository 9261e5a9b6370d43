"""Against the real worker (``tests/suite/python_client.rs`` starts it, with
its sshd and a Redis prefix of its own, and passes them in the environment)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest

from conftest import INVALID, WorkerEnv, same_field
from infra_client import (
    AsyncInfraClient,
    DeployJob,
    ErrorCode,
    EventKind,
    InfraClient,
    InvalidPayload,
    JobFailed,
    JobKind,
    ProvisionJob,
    Timeout,
)


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}"


def deploy_payload(env: WorkerEnv, request_id: str, server_ip: str | None = None) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "project_id": str(uuid.uuid4()),
        "project_name": "digest-test",
        "repo_full_name": "acme/digest-test",
        "branch": "release/1.2",
        "server_ip": server_ip or env.server_ip,
        "port": 8080,
        "modules": ["backend"],
        "github_token_ref": env.github_token_ref,
        "secrets_ref": env.secrets_ref,
    }


def test_a_deploy_enqueued_through_the_client_succeeds_and_its_events_arrive_in_order(
    client: InfraClient, worker_env: WorkerEnv
) -> None:
    request_id = client.enqueue_deploy(deploy_payload(worker_env, unique("py-deploy")))

    events = list(client.events(request_id, timeout=180, kind=JobKind.DEPLOY))
    result = client.wait(request_id, timeout=30, kind=JobKind.DEPLOY)

    assert result.succeeded, result
    assert result.request_id == request_id
    assert result.stats
    assert all(s.failed == 0 for s in result.stats.values())
    assert result.url == f"http://{worker_env.server_ip}:8080"
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert len({e.seq for e in events}) == len(events)
    assert events[0].event is EventKind.PLAYBOOK_ON_TASK_START
    assert events[-1].event is EventKind.JOB_FINISHED
    assert events[-1].status is not None
    assert events[-1].status.value == "success"
    tasks = [e.task for e in events if e.is_task_start]
    assert "Write the record" in tasks
    assert client.result(request_id) == result


@pytest.mark.parametrize("case", INVALID, ids=[c["name"] for c in INVALID])
def test_an_invalid_payload_is_refused_locally_and_by_the_worker_with_the_same_rule(
    client: InfraClient, case: dict[str, Any]
) -> None:
    kind = JobKind(case["kind"])
    payload = dict(case["payload"])
    if isinstance(payload.get("request_id"), str) and payload["request_id"].startswith(
        ("dep-", "prov-")
    ):
        payload["request_id"] = unique(payload["request_id"])
    enqueue = client.enqueue_deploy if kind is JobKind.DEPLOY else client.enqueue_provision
    before = len(client.redis.xrange(client.keys.queue(kind)))

    # Arrange / Act: refused locally, nothing enqueued.
    with pytest.raises(InvalidPayload) as local:
        enqueue(payload)
    assert same_field(local.value.field, case["field"]), local.value.field
    assert len(client.redis.xrange(client.keys.queue(kind))) == before

    # Act: the same payload, raw.
    entry_id = client.enqueue_raw(kind, json.dumps(payload))

    # Assert: the worker's refusal (its dead letter, which every refused
    # entry gets) starts with the same field and rule.
    letter = wait_for_dead_letter(client, entry_id)
    assert letter.reason is not None
    assert letter.reason.startswith(local.value.reason), (letter.reason, local.value.reason)
    assert letter.kind is kind
    # With a readable request id, a result too: wait raises JobFailed.
    rid = letter.request_id
    if rid is not None:
        with pytest.raises(JobFailed) as failed:
            client.wait(rid, timeout=30, kind=kind)
        assert failed.value.code is ErrorCode.INVALID_PAYLOAD
        assert failed.value.message.startswith(local.value.reason)


def wait_for_dead_letter(client: InfraClient, entry_id: str) -> Any:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for letter in client.dead_letters(count=1000):
            if letter.entry_id == entry_id:
                return letter
        time.sleep(0.05)
    raise AssertionError(f"no dead letter for entry {entry_id}")


def test_wait_times_out_cleanly(client: InfraClient) -> None:
    request_id = unique("never-enqueued")
    started = time.monotonic()

    with pytest.raises(Timeout) as timed_out:
        client.wait(request_id, timeout=1.5)

    elapsed = time.monotonic() - started
    assert 1.5 <= elapsed < 3.0, elapsed
    assert timed_out.value.request_id == request_id
    # No connection left checked out of the pool, blocked on a read.
    assert not client.redis.connection_pool._in_use_connections  # type: ignore[attr-defined]
    with pytest.raises(Timeout):
        list(client.events(request_id, timeout=1.0))


@pytest.mark.asyncio
async def test_the_asyncio_client_times_out_cleanly(worker_env: WorkerEnv) -> None:
    async with AsyncInfraClient.from_url(
        worker_env.redis_url, key_prefix=worker_env.key_prefix
    ) as client:
        with pytest.raises(Timeout):
            await client.wait(unique("never-enqueued"), timeout=1.0)
        assert not client.redis.connection_pool._in_use_connections  # type: ignore[attr-defined]
        assert len(asyncio.all_tasks()) == 1  # this test's own


@pytest.mark.asyncio
async def test_fifty_jobs_awaited_at_once_all_get_their_own_result(
    fast_client: AsyncInfraClient, worker_env: WorkerEnv
) -> None:
    # The fast worker's playbook is a stub that prints a recap: each job
    # takes the worker's whole path (claim, lock, run, publish) in
    # milliseconds. Fifty loopback addresses, so no job waits for another's
    # server lock.
    payloads = [
        deploy_payload(worker_env, unique(f"py-fifty-{i}"), server_ip=f"127.0.0.{i + 1}")
        for i in range(50)
    ]
    ids = await asyncio.gather(*(fast_client.enqueue_deploy(p) for p in payloads))

    results = await asyncio.wait_for(
        asyncio.gather(*(fast_client.wait(i, timeout=120, kind=JobKind.DEPLOY) for i in ids)),
        timeout=150,
    )

    assert [r.request_id for r in results] == ids
    assert all(r.succeeded for r in results)
    assert {r.server_ip for r in results} == {p["server_ip"] for p in payloads}


@pytest.mark.asyncio
async def test_the_asyncio_events_follow_a_job_to_job_finished(
    fast_client: AsyncInfraClient, worker_env: WorkerEnv
) -> None:
    request_id = await fast_client.enqueue_deploy(
        DeployJob.parse(deploy_payload(worker_env, unique("py-async-events"), "127.0.0.99"))
    )
    events = [e async for e in fast_client.events(request_id, timeout=120)]
    assert events
    assert events[-1].is_finish
    assert (await fast_client.wait(request_id, timeout=10)).succeeded


def test_a_provision_of_an_unknown_server_fails_with_its_code(client: InfraClient) -> None:
    request_id = client.enqueue_provision(ProvisionJob.parse({"server_handle": unique("nosuch")}))

    with pytest.raises(JobFailed) as failed:
        client.wait(request_id, timeout=120)

    assert failed.value.code is ErrorCode.SERVER_NOT_FOUND
    assert failed.value.result.job is JobKind.PROVISION
