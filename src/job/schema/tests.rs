//! The committed schemas are this build's, and they agree with the
//! worker's parsers on the shared payload tables
//! (`tests/fixtures/contract/`, read by the Python client's tests too).

use serde::Deserialize;
use serde_json::{Value, json};

use super::files;
use crate::job::{DeployJob, ProvisionJob, ServerAddress};

/// The files under `schema/`, as committed.
const COMMITTED: [(&str, &str); 4] = [
    (
        "deploy_job.schema.json",
        include_str!("../../../schema/deploy_job.schema.json"),
    ),
    (
        "provision_job.schema.json",
        include_str!("../../../schema/provision_job.schema.json"),
    ),
    (
        "job_result.schema.json",
        include_str!("../../../schema/job_result.schema.json"),
    ),
    (
        "job_event.schema.json",
        include_str!("../../../schema/job_event.schema.json"),
    ),
];

const INVALID: &str = include_str!("../../../tests/fixtures/contract/invalid_payloads.json");
const VALID: &str = include_str!("../../../tests/fixtures/contract/valid_payloads.json");

/// A provision entry's id, standing in for an absent `request_id`.
const ENTRY_ID: &str = "1700000000000-0";

/// One row of the invalid table: `field` is the top-level field the
/// worker's refusal names first.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Invalid {
    name: String,
    kind: Kind,
    payload: Value,
    field: String,
}

/// One row of the valid table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Valid {
    name: String,
    kind: Kind,
    payload: Value,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Deploy,
    Provision,
}

fn invalid_cases() -> Vec<Invalid> {
    serde_json::from_str(INVALID).expect("invalid_payloads.json is a table of cases")
}

fn valid_cases() -> Vec<Valid> {
    serde_json::from_str(VALID).expect("valid_payloads.json is a table of cases")
}

/// What the worker's parser says of `payload`: its refusal's reason.
fn worker(kind: Kind, payload: &Value) -> Result<(), String> {
    assert!(payload.is_object(), "the tables hold JSON objects only");
    let bytes = serde_json::to_vec(payload).unwrap();
    match kind {
        Kind::Deploy => DeployJob::parse(&bytes).map(drop),
        Kind::Provision => ProvisionJob::parse(&bytes, ENTRY_ID).map(drop),
    }
    .map_err(|e| e.reason)
}

/// The committed schema of `kind`, ready to validate.
fn validator(kind: Kind) -> jsonschema::Validator {
    let name = match kind {
        Kind::Deploy => "deploy_job.schema.json",
        Kind::Provision => "provision_job.schema.json",
    };
    let text = COMMITTED.iter().find(|(n, _)| *n == name).unwrap().1;
    jsonschema::validator_for(&serde_json::from_str(text).unwrap()).expect("the schema compiles")
}

/// The top-level fields the schema's errors point at: an error's instance
/// path's first segment, or the property a `required` names.
fn schema_fields(validator: &jsonschema::Validator, payload: &Value) -> Vec<String> {
    validator
        .iter_errors(payload)
        .map(
            |error| match (error.instance_path().segments().next(), error.kind()) {
                (Some(segment), _) => segment.to_string(),
                (None, jsonschema::error::ValidationErrorKind::Required { property }) => {
                    property.as_str().unwrap_or_default().to_owned()
                }
                (None, other) => format!("(the payload: {other:?})"),
            },
        )
        .collect()
}

/// Whether the worker's `reason` names `field` first: `field: ...`,
/// `field[i]: ...` for a list element, or `field and ...` for the rule
/// between `force_reinstall` and `is_recovery`.
fn names_first(reason: &str, field: &str) -> bool {
    reason.strip_prefix(field).is_some_and(|rest| {
        rest.starts_with(": ") || rest.starts_with('[') || rest.starts_with(" and ")
    })
}

#[test]
fn the_committed_schemas_are_this_builds() {
    let generated = files();
    assert_eq!(generated.len(), COMMITTED.len());
    for (file, (name, committed)) in generated.iter().zip(COMMITTED) {
        assert_eq!(file.name, name);
        assert!(
            file.text == committed,
            "schema/{name} is stale: regenerate with `cargo run -- schema --out schema` and commit it"
        );
    }
}

#[test]
fn the_schemas_are_draft_2020_12_with_their_ids() {
    for (name, text) in COMMITTED {
        let schema: Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert_eq!(
            schema["$id"],
            format!("https://infra-service/schema/v1/{name}")
        );
        assert!(text.ends_with("}\n"), "{name}");
        jsonschema::meta::validate(&schema).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn the_worker_refuses_every_invalid_payload_naming_its_field_first() {
    let cases = invalid_cases();
    assert!(cases.len() > 100, "{} cases", cases.len());
    for case in cases {
        match worker(case.kind, &case.payload) {
            Ok(()) => panic!("{}: accepted by the worker", case.name),
            Err(reason) => assert!(
                names_first(&reason, &case.field),
                "{}: the worker says {reason:?}, the table {:?}",
                case.name,
                case.field
            ),
        }
    }
}

#[test]
fn the_schema_refuses_every_invalid_payload_at_its_field() {
    let (deploy, provision) = (validator(Kind::Deploy), validator(Kind::Provision));
    for case in invalid_cases() {
        let validator = match case.kind {
            Kind::Deploy => &deploy,
            Kind::Provision => &provision,
        };
        let fields = schema_fields(validator, &case.payload);
        assert!(
            fields.contains(&case.field),
            "{}: the schema's errors are at {fields:?}, the table says {:?}",
            case.name,
            case.field
        );
    }
}

#[test]
fn the_worker_and_the_schema_accept_every_valid_payload() {
    let (deploy, provision) = (validator(Kind::Deploy), validator(Kind::Provision));
    for case in valid_cases() {
        if let Err(reason) = worker(case.kind, &case.payload) {
            panic!("{}: refused by the worker: {reason}", case.name);
        }
        let validator = match case.kind {
            Kind::Deploy => &deploy,
            Kind::Provision => &provision,
        };
        let fields = schema_fields(validator, &case.payload);
        assert!(
            fields.is_empty(),
            "{}: refused by the schema at {fields:?}",
            case.name
        );
    }
}

#[test]
fn every_table_name_is_unique() {
    let mut names: Vec<String> = invalid_cases().into_iter().map(|c| c.name).collect();
    names.extend(valid_cases().into_iter().map(|c| c.name));
    let count = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), count);
}

/// IPv6 spellings built from groups, `::` and an IPv4 tail: every
/// structure up to nine groups, and a few odd ones.
fn ipv6_candidates() -> Vec<String> {
    let mut out = Vec::new();
    for groups in 0..=9 {
        let hex: Vec<String> = (0..groups)
            .map(|i| format!("{:x}", i * 0x1111 + 1))
            .collect();
        out.push(hex.join(":"));
        for at in 0..=groups {
            let (head, tail) = hex.split_at(at);
            out.push(format!("{}::{}", head.join(":"), tail.join(":")));
            let with_v4 = |t: &[String]| {
                let mut t = t.to_vec();
                t.push("192.0.2.1".into());
                t.join(":")
            };
            out.push(format!("{}::{}", head.join(":"), with_v4(tail)));
        }
        let mut full = hex.clone();
        full.push("192.0.2.1".into());
        out.push(full.join(":"));
    }
    for odd in [
        ":::",
        "1:::2",
        ":1::",
        "1::2:",
        "::1:",
        "12345::",
        "g::",
        "::ffff:1.2.3.256",
        "::ffff:01.2.3.4",
        "::1.2.3",
        "FFFF::",
        "0000:0::",
        "1::2::3",
        "::",
        "::0.0.0.0",
    ] {
        out.push(odd.to_owned());
    }
    out
}

#[test]
fn the_server_address_pattern_accepts_what_the_parser_accepts() {
    let deploy = validator(Kind::Deploy);
    let long_label = "a".repeat(63);
    let mut candidates = ipv6_candidates();
    candidates.extend(
        [
            "203.0.113.10",
            "0.0.0.0",
            "255.255.255.255",
            "256.1.1.1",
            "1.2.3.04",
            "1.2.3.4.",
            "1.2.3.4a",
            "a.1",
            "1a",
            "1.a",
            "localhost",
            "LOCALHOST.",
            "xn--bcher-kva.example",
            "a-b.c-d",
            "a",
            "9",
            "a.9",
            "9.a",
            "example.com.",
            "-",
            "a.-b",
            "a.b-",
            "ex ample.com",
        ]
        .map(str::to_owned),
    );
    candidates.push(format!("{long_label}.{long_label}"));
    for candidate in candidates {
        let parsed = ServerAddress::parse(&candidate).is_ok();
        let mut payload: Value = serde_json::from_str(VALID_DEPLOY).unwrap();
        payload["server_ip"] = json!(candidate);
        let valid = deploy.is_valid(&payload);
        assert_eq!(
            valid, parsed,
            "{candidate:?}: schema {valid}, parser {parsed}"
        );
    }
}

const VALID_DEPLOY: &str = r#"{"request_id": "dep-1",
    "project_id": "6f1c2a9e-2b7d-4d8e-9a51-0c7e5b8f3a10", "repo_full_name": "acme/app",
    "server_ip": "203.0.113.10", "port": 8080, "github_token_ref": "env:GITHUB_TOKEN"}"#;
