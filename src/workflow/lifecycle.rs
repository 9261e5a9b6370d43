//! What a deploy playbook tells the worker about the project's revisions,
//! through `set_stats` (contract section 3): `revision`, `previous_revision`
//! and `rollback`. The values come from the server, so each is checked
//! before it goes into the result; one that is not what the contract says
//! is left out and logged.

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::job::{DeployAction, DeployJob};

/// The revisions a deploy run reported.
#[derive(Debug, Default, PartialEq)]
pub struct Lifecycle {
    revision: Option<String>,
    previous_revision: Option<String>,
    rollback: Option<Rollback>,
}

/// `rollback`: the previous revision checked out and started again after
/// the new one was not healthy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rollback {
    performed: bool,
    revision: String,
    status: RollbackStatus,
}

/// Whether the rolled-back revision came up healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RollbackStatus {
    Success,
    Failed,
}

impl Lifecycle {
    /// Reads the play's `set_stats` data.
    pub fn from_stats(stats: &Map<String, Value>) -> Lifecycle {
        Lifecycle {
            revision: commit(stats, "revision"),
            previous_revision: commit(stats, "previous_revision"),
            rollback: stats.get("rollback").and_then(rollback),
        }
    }

    /// Adds the result fields: `revision` and `previous_revision` after a
    /// `deploy` (`null` when unknown: a deploy that failed before its
    /// checkout, a first deploy), `rollback` when one ran.
    pub fn report_into(self, job: &DeployJob, extra: &mut Map<String, Value>) {
        if job.action != DeployAction::Deploy {
            return;
        }
        extra.insert("revision".into(), json!(self.revision));
        extra.insert("previous_revision".into(), json!(self.previous_revision));
        if let Some(rollback) = self.rollback {
            extra.insert("rollback".into(), json!(rollback));
        }
    }
}

/// `stats[key]` when it is a full commit id (40 hex digits), lower-cased.
fn commit(stats: &Map<String, Value>, key: &str) -> Option<String> {
    let value = stats.get(key)?;
    match value.as_str() {
        Some(text) if is_commit(text) => Some(text.to_ascii_lowercase()),
        _ if value.is_null() => None,
        _ => {
            tracing::warn!(key, "the playbook's {key} is not a commit id; left out");
            None
        }
    }
}

fn is_commit(text: &str) -> bool {
    text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `{"performed": true, "revision": "<sha>", "status": "success"|"failed"}`.
fn rollback(value: &Value) -> Option<Rollback> {
    let revision = value.get("revision").and_then(Value::as_str)?;
    let status = match value.get("status").and_then(Value::as_str) {
        Some("success") => Some(RollbackStatus::Success),
        Some("failed") => Some(RollbackStatus::Failed),
        _ => None,
    };
    let performed = value.get("performed").and_then(Value::as_bool) == Some(true);
    let (true, Some(status)) = (performed && is_commit(revision), status) else {
        tracing::warn!("the playbook's rollback is not what the contract says; left out");
        return None;
    };
    Some(Rollback {
        performed,
        revision: revision.to_ascii_lowercase(),
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123456789abcdef01234567";
    const B: &str = "89ABCDEF0123456789abcdef0123456789abcdef";

    fn stats(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    fn job(action: &str) -> DeployJob {
        let mut job = crate::job::minimal_for_test("acme/app", "203.0.113.10");
        job.action = DeployAction::parse(action).unwrap();
        job
    }

    #[test]
    fn a_deploy_reports_both_revisions_and_a_rollback() {
        let lifecycle = Lifecycle::from_stats(&stats(json!({
            "revision": B,
            "previous_revision": A,
            "rollback": {"performed": true, "revision": A, "status": "success"},
        })));
        let mut extra = Map::new();
        lifecycle.report_into(&job("deploy"), &mut extra);
        assert_eq!(
            Value::Object(extra),
            json!({
                "revision": B.to_ascii_lowercase(),
                "previous_revision": A,
                "rollback": {"performed": true, "revision": A, "status": "success"},
            })
        );
    }

    #[test]
    fn a_first_deploy_has_no_previous_revision_and_no_rollback() {
        let lifecycle = Lifecycle::from_stats(&stats(json!({
            "revision": A,
            "previous_revision": null,
        })));
        let mut extra = Map::new();
        lifecycle.report_into(&job("deploy"), &mut extra);
        assert_eq!(
            Value::Object(extra),
            json!({"revision": A, "previous_revision": null})
        );
    }

    #[test]
    fn what_is_not_a_commit_or_the_contracts_rollback_is_left_out() {
        let lifecycle = Lifecycle::from_stats(&stats(json!({
            "revision": "main",
            "previous_revision": "; rm -rf /",
            "rollback": {"performed": true, "revision": A, "status": "maybe"},
        })));
        assert_eq!(lifecycle, Lifecycle::default());
        let half = json!({"performed": false, "revision": A, "status": "failed"});
        assert_eq!(rollback(&half), None);
    }

    #[test]
    fn other_actions_report_no_revisions() {
        let lifecycle = Lifecycle::from_stats(&stats(json!({"revision": A})));
        let mut extra = Map::new();
        lifecycle.report_into(&job("restart"), &mut extra);
        assert!(extra.is_empty());
    }
}
