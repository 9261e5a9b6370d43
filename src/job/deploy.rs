//! `DeployJob`: the DeployerNode's request to ship a project to a server.

use super::fields::*;

/// A deploy request that satisfies every rule of the contract.
#[derive(Debug, Clone, PartialEq)]
pub struct DeployJob {
    pub request_id: RequestId,
    pub project_id: uuid::Uuid,
    pub project_name: ProjectName,
    pub repo_full_name: RepoName,
    pub branch: GitRef,
    pub server_ip: ServerAddress,
    pub port: u16,
    pub modules: Vec<Module>,
    pub github_token_ref: SecretRef,
    pub secrets_ref: Option<SecretRef>,
}

impl DeployJob {
    /// Parses a stream entry's `payload` field.
    pub fn parse(_payload: &[u8]) -> Result<DeployJob, InvalidPayload> {
        unimplemented!()
    }

    /// Every non-secret field under its contract name, `port` as
    /// `service_port`: the playbook's extra vars.
    pub fn extra_vars(&self) -> serde_json::Value {
        unimplemented!()
    }
}
