"""The client's rules against the JSON Schemas of ``schema/`` (the other
half of issue 17): both accept the valid table, both refuse each invalid
payload naming the same field, and the schemas' shape (properties, required
fields, enums, bounds) is the models'. Skipped while ``schema/`` is absent."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from conftest import INVALID, SCHEMA_DIR, VALID
from infra_client import DeployJob, ProvisionJob

SCHEMAS = {
    "deploy": SCHEMA_DIR / "deploy_job.schema.json",
    "provision": SCHEMA_DIR / "provision_job.schema.json",
}
MODELS = {"deploy": DeployJob, "provision": ProvisionJob}


def validator(kind: str) -> Any:
    schema = json.loads(SCHEMAS[kind].read_text())
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


@pytest.mark.parametrize("case", VALID, ids=[c["name"] for c in VALID])
def test_the_schema_accepts_what_the_client_accepts(case: dict[str, Any]) -> None:
    assert list(validator(case["kind"]).iter_errors(case["payload"])) == []


@pytest.mark.parametrize("case", INVALID, ids=[c["name"] for c in INVALID])
def test_the_schema_refuses_what_the_client_refuses_at_the_same_field(
    case: dict[str, Any],
) -> None:
    errors = list(validator(case["kind"]).iter_errors(case["payload"]))
    assert errors, "the schema accepts it"
    field = case["field"].split("[")[0]

    def names(error: Any) -> set[str]:
        found = {str(error.absolute_path[0])} if error.absolute_path else set()
        # A missing field, or one an if/then names.
        found |= set(error.validator_value) if error.validator == "required" else set()
        found |= {str(p) for e in error.context or [] for p in list(e.absolute_path)[:1]}
        return found

    assert any(field in names(e) or (not names(e) and field == "payload") for e in errors), [
        e.message for e in errors
    ]


@pytest.mark.parametrize("kind", ["deploy", "provision"])
def test_the_schema_and_the_model_have_the_same_shape(kind: str) -> None:
    schema = json.loads(SCHEMAS[kind].read_text())
    model = MODELS[kind].model_json_schema()
    assert set(schema["properties"]) == set(model["properties"])
    assert set(schema.get("required", [])) == set(model.get("required", []))
    for name, prop in schema["properties"].items():
        mine = model["properties"][name]
        for bound in ("minimum", "maximum", "maxLength"):
            if bound in prop:
                assert _find(mine, bound) == prop[bound], (name, bound)
        if "enum" in prop:
            assert set(_find(mine, "enum") or []) == set(prop["enum"]), name


def _find(node: Any, key: str) -> Any:
    # pydantic nests Optional fields under anyOf and enums under $defs.
    if isinstance(node, dict):
        if key in node:
            return node[key]
        for value in node.values():
            found = _find(value, key)
            if found is not None:
                return found
    if isinstance(node, list):
        for value in node:
            found = _find(value, key)
            if found is not None:
                return found
    return None
