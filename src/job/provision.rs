//! `ProvisionJob`: the Scheduler's request to prepare or recover a server.
//!
//! Owns the ProvisionJob table of CONTRACT.md section 1, including the rule
//! that an absent `request_id` is replaced by the stream entry id.

use schemars::{JsonSchema, Schema};
use serde_json::json;

use super::fields::*;
use super::payload::{self, Object};

/// A provision request that satisfies every rule of the contract.
#[derive(Debug, Clone, PartialEq)]
pub struct ProvisionJob {
    pub request_id: RequestId,
    pub server_handle: ServerHandle,
    pub force_reinstall: bool,
    pub is_recovery: bool,
}

impl ProvisionJob {
    /// Parses a stream entry's `payload`; `entry_id` stands in for an absent
    /// `request_id`.
    ///
    /// Checks, first failure wins: size, UTF-8, JSON, object, then
    /// `request_id`, `server_handle`, `force_reinstall`, `is_recovery`, and
    /// last the two flags together. A refusal carries the request id whenever
    /// the payload is an object whose `request_id` is valid or absent (then
    /// the entry id); not for bytes that are not a JSON object at all.
    pub fn parse(payload: &[u8], entry_id: &str) -> Result<ProvisionJob, InvalidPayload> {
        let object = payload::read_object(payload).map_err(|unusable| {
            let request_id = unusable
                .object
                .as_ref()
                .and_then(|object| read_request_id(object, entry_id).ok());
            InvalidPayload::new(request_id, unusable.reason)
        })?;
        let request_id = read_request_id(&object, entry_id)
            .map_err(|reason| InvalidPayload::new(None, reason))?;
        Self::parse_fields(&object, request_id.clone())
            .map_err(|reason| InvalidPayload::new(Some(request_id), reason))
    }

    /// Every field after `request_id`, in contract order.
    fn parse_fields(object: &Object, request_id: RequestId) -> Result<ProvisionJob, String> {
        let server_handle = payload::required(object, "server_handle", ServerHandle::parse)?;
        let force_reinstall = payload::flag(object, "force_reinstall")?;
        let is_recovery = payload::flag(object, "is_recovery")?;
        if force_reinstall && is_recovery {
            // A reinstall wipes the server a recovery would repair: the
            // producer must choose, not us.
            return Err("force_reinstall and is_recovery cannot both be true".to_owned());
        }
        Ok(ProvisionJob {
            request_id,
            server_handle,
            force_reinstall,
            is_recovery,
        })
    }
}

/// The payload `ProvisionJob::parse` accepts, as a JSON Schema. A schema,
/// never a value: the payload is parsed by hand, and `null` counts as absent.
#[derive(JsonSchema)]
#[schemars(
    title = "ProvisionJob",
    description = "The payload of a provisioner:queue entry (CONTRACT.md section 1): the \
        Scheduler's request to prepare or recover a server. Unknown fields are ignored; null \
        counts as absent. The worker also refuses a payload over 1 MiB.",
    transform = provision_rules
)]
#[allow(dead_code)] // never built: it only describes
pub(super) struct ProvisionPayload {
    /// The job's id (the result key is provisioner:result:<request_id>); when absent, the
    /// stream entry id is used.
    request_id: Option<RequestId>,
    /// The server to provision: a row of the worker's servers table.
    server_handle: ServerHandle,
    /// Rebuild the OS through the provider API before setup; not together with is_recovery.
    #[schemars(extend("default" = false))]
    force_reinstall: Option<bool>,
    /// Run the recovery playbook instead of the full setup; not together with force_reinstall.
    #[schemars(extend("default" = false))]
    is_recovery: Option<bool>,
}

/// `force_reinstall` and `is_recovery` are not both true; the refusal
/// names `force_reinstall` first, as the worker's does. Unknown fields
/// allowed.
fn provision_rules(schema: &mut Schema) {
    schema.insert("additionalProperties".into(), true.into());
    schema.insert(
        "if".into(),
        json!({"properties": {"is_recovery": {"const": true}}, "required": ["is_recovery"]}),
    );
    schema.insert(
        "then".into(),
        json!({"properties": {"force_reinstall": {"not": {"const": true}}}}),
    );
}

/// The payload's `request_id`, or `entry_id` when it is absent or `null`.
fn read_request_id(object: &Object, entry_id: &str) -> Result<RequestId, String> {
    match payload::optional(object, "request_id", RequestId::parse)? {
        Some(id) => Ok(id),
        // Redis entry ids (`1700000000000-0`) fit the rule; the check guards
        // a caller passing something else.
        None => RequestId::parse(entry_id)
            .map_err(|rule| format!("request_id: absent, and the stream entry id {rule}")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::job::MAX_PAYLOAD_BYTES;

    const ENTRY: &str = "1700000000000-0";

    /// The contract's ProvisionJob example, verbatim.
    const EXAMPLE: &str = r#"{
      "request_id": "prov-7f3c",
      "server_handle": "vps-hel1-01",
      "force_reinstall": false,
      "is_recovery": false
    }"#;

    fn parse(payload: serde_json::Value) -> Result<ProvisionJob, InvalidPayload> {
        ProvisionJob::parse(&serde_json::to_vec(&payload).unwrap(), ENTRY)
    }

    #[test]
    fn the_contract_example_parses() {
        let job = ProvisionJob::parse(EXAMPLE.as_bytes(), ENTRY).unwrap();
        assert_eq!(job.request_id.as_str(), "prov-7f3c");
        assert_eq!(job.server_handle.as_str(), "vps-hel1-01");
        assert!(!job.force_reinstall && !job.is_recovery);
    }

    #[test]
    fn an_absent_request_id_is_the_stream_entry_id() {
        let job = parse(json!({"server_handle": "vps-1"})).unwrap();
        assert_eq!(job.request_id.as_str(), ENTRY);
        let job = parse(json!({"request_id": null, "server_handle": "vps-1"})).unwrap();
        assert_eq!(job.request_id.as_str(), ENTRY);
    }

    #[test]
    fn absent_flags_are_false() {
        let job = parse(json!({"server_handle": "vps-1", "is_recovery": null})).unwrap();
        assert!(!job.force_reinstall && !job.is_recovery);
    }

    #[test]
    fn either_flag_alone_is_accepted() {
        assert!(
            parse(json!({"server_handle": "s", "force_reinstall": true}))
                .unwrap()
                .force_reinstall
        );
        assert!(
            parse(json!({"server_handle": "s", "is_recovery": true}))
                .unwrap()
                .is_recovery
        );
    }

    #[test]
    fn both_flags_together_are_refused_with_the_request_id() {
        let err = parse(json!({
            "request_id": "prov-1", "server_handle": "s",
            "force_reinstall": true, "is_recovery": true,
        }))
        .unwrap_err();
        assert_eq!(
            err,
            InvalidPayload::new(
                Some(RequestId::parse("prov-1").unwrap()),
                "force_reinstall and is_recovery cannot both be true"
            )
        );
    }

    #[test]
    fn a_flag_that_is_not_a_boolean_is_refused() {
        let err = parse(json!({"server_handle": "s", "force_reinstall": "yes"})).unwrap_err();
        assert_eq!(
            err.reason,
            "force_reinstall: must be true or false, got a string"
        );
        let err = parse(json!({"server_handle": "s", "is_recovery": 1})).unwrap_err();
        assert_eq!(
            err.reason,
            "is_recovery: must be true or false, got a number"
        );
    }

    #[test]
    fn a_missing_server_handle_is_refused_with_the_entry_id() {
        let err = parse(json!({})).unwrap_err();
        assert_eq!(err.reason, "server_handle: is required");
        assert_eq!(err.request_id.as_ref().map(RequestId::as_str), Some(ENTRY));
    }

    #[test]
    fn an_invalid_server_handle_is_refused() {
        let err = parse(json!({"request_id": "p", "server_handle": "vps 1; reboot"})).unwrap_err();
        assert!(
            err.reason.starts_with("server_handle: must be 1-128"),
            "{}",
            err.reason
        );
        assert_eq!(err.request_id.as_ref().map(RequestId::as_str), Some("p"));
        let err = parse(json!({"server_handle": ["vps-1"]})).unwrap_err();
        assert_eq!(err.reason, "server_handle: must be a string, got an array");
    }

    #[test]
    fn an_invalid_request_id_is_refused_without_a_request_id() {
        let err = parse(json!({"request_id": "a b", "server_handle": "s"})).unwrap_err();
        assert_eq!(err.request_id, None);
        assert!(err.reason.starts_with("request_id: "), "{}", err.reason);
    }

    #[test]
    fn an_entry_id_breaking_the_request_id_rule_is_refused() {
        let err = ProvisionJob::parse(br#"{"server_handle": "s"}"#, "bad id").unwrap_err();
        assert_eq!(err.request_id, None);
        assert!(
            err.reason.starts_with("request_id: absent"),
            "{}",
            err.reason
        );
    }

    #[test]
    fn bytes_that_are_not_a_json_object_are_refused_without_a_request_id() {
        for payload in [&b"not json"[..], b"[1]", br#""x""#] {
            let err = ProvisionJob::parse(payload, ENTRY).unwrap_err();
            assert_eq!(err.request_id, None);
            assert!(err.reason.starts_with("payload: "), "{}", err.reason);
        }
    }

    #[test]
    fn an_oversized_payload_is_refused_but_keeps_its_request_id() {
        let payload = json!({
            "request_id": "prov-big", "server_handle": "s",
            "padding": "x".repeat(MAX_PAYLOAD_BYTES),
        });
        let err = parse(payload).unwrap_err();
        assert_eq!(
            err.request_id.as_ref().map(RequestId::as_str),
            Some("prov-big")
        );
        assert!(
            err.reason.contains("exceeds the 1048576-byte limit"),
            "{}",
            err.reason
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let job = parse(json!({"server_handle": "s", "priority": "high"})).unwrap();
        assert_eq!(job.server_handle.as_str(), "s");
    }
}
