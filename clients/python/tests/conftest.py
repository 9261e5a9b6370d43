"""Shared fixtures: the contract tables and, for the tests against the real
worker, the environment the Rust suite test (``tests/suite/python_client.rs``)
gives them. Without it those tests skip, unless ``INFRA_TEST_REQUIRE_WORKER``
is set (as the Rust test sets it): then they fail, so a run that should have
exercised the worker cannot pass without doing so."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from infra_client import AsyncInfraClient, InfraClient

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
#: The tables the worker's and the schema's tests read too.
CONTRACT_FIXTURES = REPO / "tests" / "fixtures" / "contract"
SCHEMA_DIR = REPO / "schema"


def table(name: str) -> list[dict[str, Any]]:
    """The shared table ``tests/fixtures/contract/<name>``."""
    rows: list[dict[str, Any]] = json.loads((CONTRACT_FIXTURES / name).read_text())
    return rows


def same_field(ours: str, table_field: str) -> bool:
    """Whether the field a refusal names is the table's: equal, or an
    element (``modules[1]``, as the worker names it) of the table's field."""
    return ours == table_field or ours.split("[", 1)[0] == table_field


INVALID = table("invalid_payloads.json")
VALID = table("valid_payloads.json")


@dataclass(frozen=True)
class WorkerEnv:
    """Where the suite's worker listens and what a valid deploy to its sshd needs."""

    redis_url: str
    key_prefix: str
    server_ip: str
    github_token_ref: str
    secrets_ref: str
    #: A second worker whose playbook is a stub that answers at once.
    fast_key_prefix: str


_VARS = {
    "redis_url": "INFRA_TEST_REDIS_URL",
    "key_prefix": "INFRA_TEST_KEY_PREFIX",
    "server_ip": "INFRA_TEST_SERVER_IP",
    "github_token_ref": "INFRA_TEST_GITHUB_TOKEN_REF",
    "secrets_ref": "INFRA_TEST_SECRETS_REF",
    "fast_key_prefix": "INFRA_TEST_FAST_KEY_PREFIX",
}


@pytest.fixture(scope="session")
def worker_env() -> WorkerEnv:
    missing = [var for var in _VARS.values() if var not in os.environ]
    if missing:
        message = f"no worker to test against ({', '.join(missing)} unset)"
        if os.environ.get("INFRA_TEST_REQUIRE_WORKER"):
            pytest.fail(message)
        pytest.skip(message + "; `cargo test --test suite python_client` sets them")
    return WorkerEnv(**{field: os.environ[var] for field, var in _VARS.items()})


@pytest.fixture
def client(worker_env: WorkerEnv) -> Iterator[InfraClient]:
    with InfraClient.from_url(worker_env.redis_url, key_prefix=worker_env.key_prefix) as c:
        yield c


@pytest_asyncio.fixture
async def fast_client(worker_env: WorkerEnv) -> AsyncIterator[AsyncInfraClient]:
    async with AsyncInfraClient.from_url(
        worker_env.redis_url, key_prefix=worker_env.fast_key_prefix
    ) as c:
        yield c
