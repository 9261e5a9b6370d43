"""The contract's payload rules (CONTRACT.md section 1), as the worker
applies them: a port of its parser (``src/job/fields.rs``, ``deploy.rs``,
``provision.rs``, ``payload.rs``), check for check and in the same order, so
a payload refused here names the same field, with the same rule, as the
worker's ``invalid_payload`` result for it.

Rules a regular expression states exactly are kept as patterns (the models
publish them in their JSON Schema, and the checks below use the very same
constants); the rest (git ref names, addresses, secret references) are
functions, as in the worker. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

#: Payloads larger than this are refused by the worker before JSON parsing.
MAX_PAYLOAD_BYTES = 1024 * 1024

ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
UUID_PATTERN = r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"
PROJECT_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
REPO_PATTERN = r"^(?!\.\.?/)[A-Za-z0-9._-]{1,100}/(?!\.\.?$)[A-Za-z0-9._-]{1,100}$"
MODULE_PATTERN = r"^[a-z0-9_-]{1,64}$"
HEALTH_PATH_PATTERN = r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]{0,511}$"
#: The shape a secret reference's check amounts to: no whitespace or control
#: characters, a non-empty scheme before the first ``:``.
SECRET_REF_PATTERN = r"^[^\s:\x00-\x1f\x7f-\x9f]+:[^\s\x00-\x1f\x7f-\x9f]*$"
ACTIONS = ("deploy", "restart", "stop", "remove", "logs")
PORT_MIN, PORT_MAX = 1, 65535
SECRET_REF_MAX_CHARS = 1024
GIT_REF_MAX_BYTES = 255

ID_RULE = "must be 1-128 characters of [A-Za-z0-9._:-]"
UUID_RULE = "must be a UUID (8-4-4-4-12 hex digits)"
PROJECT_NAME_RULE = "must match [a-z0-9][a-z0-9-]{0,62} (kebab-case, at most 63 characters)"
REPO_RULE = (
    "must be owner/repo, each part 1-100 characters of [A-Za-z0-9._-] and neither part . or .."
)
ADDRESS_RULE = "must be an IPv4 or IPv6 address or a DNS host name"
PORT_RULE = "must be an integer 1-65535"
MODULE_RULE = "must be 1-64 characters of [a-z0-9_-]"
ACTION_RULE = "must be one of deploy, restart, stop, remove, logs"
HEALTH_PATH_RULE = (
    "must be an HTTP path starting with / (at most 512 of [A-Za-z0-9._~!$&'()*+,;=:@%/?-])"
)
FLAG_RULE = "must be true or false"
STRING_RULE = "must be a string"
LIST_RULE = "must be an array of strings"
REQUIRED_RULE = "is required"
TOKEN_FOR_DEPLOY_RULE = "is required for action deploy"
BOTH_FLAGS_RULE = "force_reinstall and is_recovery cannot both be true"
OBJECT_RULE = "must be a JSON object"


@dataclass(frozen=True)
class Violation:
    """The first rule a payload breaks: the field the worker names, the
    rule, and the text the worker's refusal starts with."""

    field: str
    rule: str
    reason: str


class _Refused(Exception):
    def __init__(self, field: str, rule: str, reason: str | None = None) -> None:
        super().__init__(field, rule)
        self.violation = Violation(
            field, rule, reason if reason is not None else f"{field}: {rule}"
        )


Check = Callable[[str], "str | None"]


def _fullmatch(pattern: str) -> re.Pattern[str]:
    # `^...$` kept for the JSON Schema; matched with fullmatch, where `$`
    # cannot match before a trailing newline as it does with `re.match`.
    return re.compile(pattern.removeprefix("^").removesuffix("$"))


_ID = _fullmatch(ID_PATTERN)
_UUID = _fullmatch(UUID_PATTERN)
_PROJECT_NAME = _fullmatch(PROJECT_NAME_PATTERN)
_REPO = _fullmatch(REPO_PATTERN)
_MODULE = _fullmatch(MODULE_PATTERN)
_HEALTH_PATH = _fullmatch(HEALTH_PATH_PATTERN)


def check_id(value: str) -> str | None:
    """A request id or server handle: 1-128 of ``[A-Za-z0-9._:-]``."""
    return None if _ID.fullmatch(value) else ID_RULE


def check_uuid(value: str) -> str | None:
    """A UUID in its hyphenated form, either case."""
    return None if _UUID.fullmatch(value) else UUID_RULE


def check_project_name(value: str) -> str | None:
    """kebab-case, at most 63 characters."""
    return None if _PROJECT_NAME.fullmatch(value) else PROJECT_NAME_RULE


def check_repo(value: str) -> str | None:
    """``owner/repo``, neither part ``.`` or ``..``."""
    return None if _REPO.fullmatch(value) else REPO_RULE


def check_module(value: str) -> str | None:
    """A docker compose profile name."""
    return None if _MODULE.fullmatch(value) else MODULE_RULE


def check_health_path(value: str) -> str | None:
    """An HTTP path that cannot break out of the URL it is put in."""
    return None if _HEALTH_PATH.fullmatch(value) else HEALTH_PATH_RULE


def check_action(value: str) -> str | None:
    """One of the contract's five actions."""
    return None if value in ACTIONS else ACTION_RULE


_GIT_REF_FORBIDDEN = frozenset(" ~^:?*[\\")


def git_ref_violation(value: str) -> str | None:
    """The first ``git check-ref-format --allow-onelevel`` rule (plus the
    worker's own: no leading ``-``, no template delimiter) ``value`` breaks."""
    if value == "":
        return "empty"
    if len(value.encode()) > GIT_REF_MAX_BYTES:
        return "longer than 255 bytes"
    if value.startswith("-"):
        return "starts with -"
    if value == "@":
        return "is @"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return "contains a control character"
    if any(c in _GIT_REF_FORBIDDEN for c in value):
        return "contains a space or one of ~ ^ : ? * [ \\"
    if ".." in value:
        return "contains .."
    if "@{" in value:
        return "contains @{"
    if any(delimiter in value for delimiter in ("{{", "{%", "{#")):
        return "contains a template delimiter {{, {% or {#"
    if value.startswith("/") or value.endswith("/") or "//" in value:
        return "starts or ends with / or contains //"
    if value.endswith("."):
        return "ends with ."
    if any(c.startswith(".") or c.endswith(".lock") for c in value.split("/")):
        return "a component starts with . or ends with .lock"
    return None


def check_branch(value: str) -> str | None:
    """A valid git ref name, no leading ``-``, at most 255 bytes."""
    violation = git_ref_violation(value)
    return None if violation is None else f"must be a valid git ref name ({violation})"


_LABEL = re.compile(r"[A-Za-z0-9-]{1,63}")


def _is_ip(value: str) -> bool:
    # The worker's std parser takes no zone (`%eth0`) and no brackets.
    if "%" in value:
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_host_name(value: str) -> bool:
    name = value.removesuffix(".")
    labels = name.split(".")
    if not 1 <= len(name) <= 253 or (labels[-1].isascii() and labels[-1].isdigit()):
        return False
    return all(
        _LABEL.fullmatch(label) and not label.startswith("-") and not label.endswith("-")
        for label in labels
    )


def check_address(value: str) -> str | None:
    """An IPv4/IPv6 address, or a DNS host name whose last label is not all
    digits (so a mistyped IPv4 such as ``10.0.0.256`` is refused)."""
    return None if _is_ip(value) or _is_host_name(value) else ADDRESS_RULE


def check_secret_ref(value: str) -> str | None:
    """A reference's shape only: ``SCHEME:REST``, 1-1024 characters, no
    whitespace or control characters. Never echoes the value."""
    if not 1 <= len(value) <= SECRET_REF_MAX_CHARS:
        return "must be a secret reference of 1-1024 characters"
    if any(c.isspace() or unicodedata.category(c) == "Cc" for c in value):
        return "must be a secret reference without whitespace or control characters"
    scheme, colon, _ = value.partition(":")
    if not colon or not scheme:
        return "must be a secret reference SCHEME:REST (env:, file:, vault:)"
    return None


# ---------------------------------------------------------------- readers
# As the worker's `payload.rs`: `null` counts as absent everywhere.


def _get(payload: Mapping[str, Any], field: str) -> Any:
    return payload.get(field)


def _optional(payload: Mapping[str, Any], field: str, check: Check) -> str | None:
    value = _get(payload, field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Refused(field, STRING_RULE)
    rule = check(value)
    if rule is not None:
        raise _Refused(field, rule)
    return value


def _required(payload: Mapping[str, Any], field: str, check: Check) -> str:
    value = _optional(payload, field, check)
    if value is None:
        raise _Refused(field, REQUIRED_RULE)
    return value


def _flag(payload: Mapping[str, Any], field: str) -> bool:
    value = _get(payload, field)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _Refused(field, FLAG_RULE)
    return value


def _port(payload: Mapping[str, Any], field: str) -> int:
    value = _get(payload, field)
    if value is None:
        raise _Refused(field, REQUIRED_RULE)
    # A JSON integer: not 8080.0, not "8080", not true.
    if isinstance(value, bool) or not isinstance(value, int) or not PORT_MIN <= value <= PORT_MAX:
        raise _Refused(field, PORT_RULE)
    return value


def _list(payload: Mapping[str, Any], field: str, check: Check) -> list[str]:
    value = _get(payload, field)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Refused(field, LIST_RULE)
    items: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _Refused(f"{field}[{i}]", STRING_RULE)
        rule = check(item)
        if rule is not None:
            raise _Refused(f"{field}[{i}]", rule)
        items.append(item)
    return items


def _object(payload: object) -> Mapping[str, Any]:
    if not isinstance(payload, Mapping):
        raise _Refused("payload", OBJECT_RULE)
    return payload


def normalize_deploy(payload: object) -> dict[str, Any]:
    """The DeployJob ``payload`` describes, with the contract's defaults
    filled in (``project_name`` stays absent: the worker derives it);
    raises ``_Refused`` with the worker's first violation.

    Order, as the worker's: request_id, project_id, project_name,
    repo_full_name, branch, server_ip, port, modules, github_token_ref,
    secrets_ref, action, setup_ci, health_path; then the token a deploy needs.
    """
    obj = _object(payload)
    job: dict[str, Any] = {k: v for k, v in obj.items()}  # unknown fields travel on
    job["request_id"] = _required(obj, "request_id", check_id)
    job["project_id"] = _required(obj, "project_id", check_uuid)
    job["project_name"] = _optional(obj, "project_name", check_project_name)
    job["repo_full_name"] = _required(obj, "repo_full_name", check_repo)
    job["branch"] = _optional(obj, "branch", check_branch) or "main"
    job["server_ip"] = _required(obj, "server_ip", check_address)
    job["port"] = _port(obj, "port")
    job["modules"] = _list(obj, "modules", check_module)
    job["github_token_ref"] = _optional(obj, "github_token_ref", check_secret_ref)
    job["secrets_ref"] = _optional(obj, "secrets_ref", check_secret_ref)
    job["action"] = _optional(obj, "action", check_action) or "deploy"
    job["setup_ci"] = _flag(obj, "setup_ci")
    job["health_path"] = _optional(obj, "health_path", check_health_path)
    if job["action"] == "deploy" and job["github_token_ref"] is None:
        raise _Refused("github_token_ref", TOKEN_FOR_DEPLOY_RULE)
    return job


def normalize_provision(payload: object) -> dict[str, Any]:
    """The ProvisionJob ``payload`` describes (``request_id`` may stay
    absent: the worker then goes by the stream entry id); raises
    ``_Refused`` with the worker's first violation."""
    obj = _object(payload)
    job: dict[str, Any] = {k: v for k, v in obj.items()}
    job["request_id"] = _optional(obj, "request_id", check_id)
    job["server_handle"] = _required(obj, "server_handle", check_id)
    job["force_reinstall"] = _flag(obj, "force_reinstall")
    job["is_recovery"] = _flag(obj, "is_recovery")
    if job["force_reinstall"] and job["is_recovery"]:
        # The worker's reason has no `field:` prefix here; it starts with
        # the first flag's name.
        raise _Refused("force_reinstall", BOTH_FLAGS_RULE, BOTH_FLAGS_RULE)
    return job


def first_violation(kind: str, payload: object) -> Violation | None:
    """The first rule ``payload`` breaks for a job of ``kind`` (``deploy``
    or ``provision``), or None when the worker would accept it."""
    try:
        (normalize_deploy if kind == "deploy" else normalize_provision)(payload)
    except _Refused as refused:
        return refused.violation
    return None
