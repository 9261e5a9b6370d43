//! A queue entry's payload as a job of either kind: the one place that
//! picks the parser by queue, and the request id of an entry that could not
//! be handled. Pure, like the rest of `job`: it sees the entry's kind, id
//! and payload bytes, not the queue they came from.

use super::deploy::DeployJob;
use super::fields::{InvalidPayload, RequestId};
use super::provision::ProvisionJob;
use super::result::JobKind;

/// A parsed job of either kind.
#[derive(Debug, Clone)]
pub enum Job {
    Deploy(DeployJob),
    Provision(ProvisionJob),
}

impl Job {
    /// Parses the `payload` field (if the entry has one) of entry
    /// `entry_id` on the `kind` queue; a provision job without a request id
    /// goes by its entry id.
    pub fn parse(
        kind: JobKind,
        payload: Option<&[u8]>,
        entry_id: &str,
    ) -> Result<Job, InvalidPayload> {
        let Some(payload) = payload else {
            return Err(InvalidPayload::new(None, "entry has no `payload` field"));
        };
        match kind {
            JobKind::Deploy => DeployJob::parse(payload).map(Job::Deploy),
            JobKind::Provision => ProvisionJob::parse(payload, entry_id).map(Job::Provision),
        }
    }

    /// Its request id.
    pub fn request_id(&self) -> &str {
        match self {
            Job::Deploy(job) => job.request_id.as_str(),
            Job::Provision(job) => job.request_id.as_str(),
        }
    }

    /// The server the job acts on: a deploy's address, a provision's handle.
    pub fn target(&self) -> &str {
        match self {
            Job::Deploy(job) => job.server_ip.as_str(),
            Job::Provision(job) => job.server_handle.as_str(),
        }
    }

    /// The job's fields under their contract names, as parsed: secret
    /// fields as the references the payload gave, never values. What the
    /// ledger keeps of the payload, for the operator console.
    pub fn to_payload(&self) -> serde_json::Value {
        match self {
            Job::Deploy(job) => serde_json::json!({
                "request_id": job.request_id,
                "project_id": job.project_id.hyphenated().to_string(),
                "project_name": job.project_name,
                "repo_full_name": job.repo_full_name,
                "branch": job.branch,
                "server_ip": job.server_ip,
                "port": job.port,
                "modules": serde_json::Value::from_iter(job.modules.iter().map(|m| m.as_str())),
                "github_token_ref": job.github_token_ref,
                "secrets_ref": job.secrets_ref,
                "action": job.action.as_str(),
                "setup_ci": job.setup_ci,
                "health_path": job.health_path,
            }),
            Job::Provision(job) => serde_json::json!({
                "request_id": job.request_id,
                "server_handle": job.server_handle,
                "force_reinstall": job.force_reinstall,
                "is_recovery": job.is_recovery,
            }),
        }
    }

    /// A deploy's project id.
    pub fn project_id(&self) -> Option<String> {
        match self {
            Job::Deploy(job) => Some(job.project_id.to_string()),
            Job::Provision(_) => None,
        }
    }
}

/// The request id of an entry whose handling failed before a job existed
/// (its handler panicked), if its payload has a valid one; a provision
/// entry without one goes by its entry id.
pub fn readable_request_id(
    kind: JobKind,
    payload: Option<&[u8]>,
    entry_id: &str,
) -> Option<RequestId> {
    let payload: serde_json::Value = serde_json::from_slice(payload?).ok()?;
    match payload.get("request_id").and_then(|id| id.as_str()) {
        Some(id) => RequestId::parse(id).ok(),
        None if kind == JobKind::Provision => RequestId::parse(entry_id).ok(),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jobs_payload_record_keeps_references_as_references() {
        let payload = br#"{"request_id":"r1","project_id":"7f1c0e2a-8a4b-4f7e-9a53-2f4f6b1d9c01",
            "repo_full_name":"acme/app","server_ip":"10.0.0.5","port":8080,
            "github_token_ref":"env:GH_TOKEN","secrets_ref":"file:projects/app.env"}"#;
        let job = Job::parse(JobKind::Deploy, Some(payload), "1-0").unwrap();
        let record = job.to_payload();
        assert_eq!(record["github_token_ref"], "env:GH_TOKEN");
        assert_eq!(record["secrets_ref"], "file:projects/app.env");
        assert_eq!(record["port"], 8080);
        assert_eq!(record["project_name"], "app");
        let job = Job::parse(
            JobKind::Provision,
            Some(br#"{"server_handle":"vps-1"}"#),
            "5-0",
        )
        .unwrap();
        assert_eq!(job.to_payload()["request_id"], "5-0");
    }

    const ENTRY: &str = "1700000000000-0";

    #[test]
    fn an_entry_without_payload_is_refused_without_a_request_id() {
        let refused = Job::parse(JobKind::Deploy, None, ENTRY).unwrap_err();
        assert_eq!(refused.reason, "entry has no `payload` field");
        assert_eq!(refused.request_id, None);
    }

    #[test]
    fn the_queue_decides_the_parser() {
        let provision = br#"{"server_handle": "vps-1"}"#;
        let job = Job::parse(JobKind::Provision, Some(provision), ENTRY).unwrap();
        assert!(matches!(job, Job::Provision(_)));
        assert_eq!((job.request_id(), job.target()), (ENTRY, "vps-1"));
        assert_eq!(job.project_id(), None);
        // The same bytes on the deploy queue break the deploy rules.
        let refused = Job::parse(JobKind::Deploy, Some(provision), ENTRY).unwrap_err();
        assert!(
            refused.reason.starts_with("request_id"),
            "{}",
            refused.reason
        );
    }

    #[test]
    fn a_request_id_is_read_from_any_json_object_that_has_a_valid_one() {
        let payload = br#"{"request_id": "dep-1", "port": "not a port"}"#;
        let id = readable_request_id(JobKind::Deploy, Some(payload), ENTRY);
        assert_eq!(id.as_ref().map(RequestId::as_str), Some("dep-1"));
        let invalid = br#"{"request_id": "has spaces"}"#;
        assert_eq!(
            readable_request_id(JobKind::Deploy, Some(invalid), ENTRY),
            None
        );
        assert_eq!(
            readable_request_id(JobKind::Deploy, Some(b"{}"), ENTRY),
            None
        );
        assert_eq!(
            readable_request_id(JobKind::Deploy, Some(b"[1"), ENTRY),
            None
        );
        assert_eq!(readable_request_id(JobKind::Deploy, None, ENTRY), None);
    }

    #[test]
    fn a_provision_entry_without_a_request_id_goes_by_its_entry_id() {
        let id = readable_request_id(JobKind::Provision, Some(b"{}"), ENTRY);
        assert_eq!(id.as_ref().map(RequestId::as_str), Some(ENTRY));
    }
}
