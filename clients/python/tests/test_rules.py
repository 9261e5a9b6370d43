"""Local validation: the worker's rules, field for field and in its order."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import INVALID, VALID, same_field
from infra_client import DeployJob, InvalidPayload, JobKind, ProvisionJob, rules


def parse(kind: str, payload: Any) -> DeployJob | ProvisionJob:
    return DeployJob.parse(payload) if kind == "deploy" else ProvisionJob.parse(payload)


@pytest.mark.parametrize("case", INVALID, ids=[c["name"] for c in INVALID])
def test_each_invalid_payload_is_refused_naming_the_field_the_worker_names(
    case: dict[str, Any],
) -> None:
    with pytest.raises(InvalidPayload) as refused:
        parse(case["kind"], case["payload"])
    assert same_field(refused.value.field, case["field"]), refused.value.field
    assert refused.value.kind is JobKind(case["kind"])
    assert refused.value.reason.startswith(case["field"])


@pytest.mark.parametrize("case", VALID, ids=[c["name"] for c in VALID])
def test_each_valid_payload_is_accepted(case: dict[str, Any]) -> None:
    parse(case["kind"], case["payload"])


def test_a_refusal_states_the_rule_as_the_worker_does_without_the_value() -> None:
    payload = {**VALID[0]["payload"], "github_token_ref": "ghp_REALTOKEN"}
    with pytest.raises(InvalidPayload) as refused:
        DeployJob.parse(payload)
    assert refused.value.rule == "must be a secret reference SCHEME:REST (env:, file:, vault:)"
    assert refused.value.reason == f"github_token_ref: {refused.value.rule}"
    assert "REALTOKEN" not in str(refused.value)


def test_a_branch_refusal_names_the_git_rule_it_breaks() -> None:
    with pytest.raises(InvalidPayload) as refused:
        DeployJob.parse({**VALID[0]["payload"], "branch": "--upload-pack=x"})
    assert refused.value.rule == "must be a valid git ref name (starts with -)"


def test_defaults_are_filled_in_and_project_name_is_left_to_the_worker() -> None:
    job = DeployJob.parse(VALID[1]["payload"])
    assert job.branch == "main"
    assert job.modules == []
    assert job.action.value == "deploy"
    assert job.setup_ci is False
    assert job.project_name is None
    assert '"project_name"' not in job.to_json()


def test_unknown_fields_travel_on_to_the_worker() -> None:
    job = DeployJob.parse({**VALID[0]["payload"], "added_later": {"x": [1]}})
    assert '"added_later":{"x":[1]}' in job.to_json()


def test_a_provision_without_request_id_has_none() -> None:
    assert ProvisionJob.parse({"server_handle": "vps-1"}).request_id is None


def test_a_payload_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(InvalidPayload) as refused:
        DeployJob.parse(["not", "an", "object"])  # type: ignore[arg-type]
    assert refused.value.field == "payload"


@pytest.mark.parametrize(
    "address",
    [
        "203.0.113.10",
        "2001:db8::1",
        "::1",
        "::ffff:1.2.3.4",
        "example.com",
        "example.com.",
        "vps-1",
        "a1.b-2.c3",
        "localhost",
        "1.2.3.4a",
    ],
)
def test_addresses_the_worker_accepts(address: str) -> None:
    assert rules.check_address(address) is None


@pytest.mark.parametrize(
    "address",
    [
        "",
        ".",
        "-a.com",
        "a-.com",
        "a..com",
        "a.com..",
        "a_b.com",
        "a b",
        "[::1]",
        "fe80::1%eth0",
        "user@host",
        "host:22",
        "10.0.0.256",
        "1.2.3",
        "a" * 64 + ".com",
    ],
)
def test_addresses_the_worker_refuses(address: str) -> None:
    assert rules.check_address(address) == rules.ADDRESS_RULE


@pytest.mark.parametrize(
    "ref",
    [
        "",
        "@",
        "a..b",
        "a b",
        "a~1",
        "a^",
        "a:b",
        "a?",
        "a*",
        "a[b",
        "a\\b",
        "a@{1}",
        "a\x7f",
        "a\tb",
        "/a",
        "a/",
        "a//b",
        "a.",
        ".a",
        "a/.b",
        "a.lock",
        "a.lock/b",
        "x{%b",
        "r" * 256,
    ],
)
def test_git_refs_the_worker_refuses(ref: str) -> None:
    assert rules.git_ref_violation(ref) is not None


@pytest.mark.parametrize(
    "ref", ["main", "feature/x-1", "release/v1.2.3", "refs/heads/dev", "a@b", "ünï", "a{b}"]
)
def test_git_refs_the_worker_accepts(ref: str) -> None:
    assert rules.git_ref_violation(ref) is None


def test_the_model_schema_publishes_the_rules_patterns() -> None:
    props = DeployJob.model_json_schema()["properties"]
    assert props["request_id"]["pattern"] == rules.ID_PATTERN
    assert props["port"]["minimum"] == 1
    assert props["port"]["maximum"] == 65535
    assert props["modules"]["items"]["pattern"] == rules.MODULE_PATTERN
    assert set(DeployJob.model_json_schema()["required"]) == {
        "request_id",
        "project_id",
        "repo_full_name",
        "server_ip",
        "port",
    }
    assert ProvisionJob.model_json_schema()["required"] == ["server_handle"]


@pytest.mark.parametrize("case", VALID, ids=[c["name"] for c in VALID])
def test_every_pattern_the_models_publish_holds_for_the_valid_payloads(
    case: dict[str, Any],
) -> None:
    # The field types' own constraints (pydantic's check, not ours) accept
    # what the worker's checks accept: the two descriptions agree.
    cls = DeployJob if case["kind"] == "deploy" else ProvisionJob
    job = cls.parse(case["payload"])
    cls.model_validate(job.model_dump())
