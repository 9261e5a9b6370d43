//! Contract-valid job payloads (CONTRACT.md section 1) and unique ids.

use serde_json::{Value, json};

use super::worker::{GITHUB_TOKEN_VAR, PROJECT_ENV_VAR};

/// A request id unique to this run: `<label>-<12 hex>`.
pub fn unique_request_id(label: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{label}-{}", &id[..12])
}

/// A DeployJob with every field set, valid under every rule; the secrets
/// are `env:` references to the variables `TestWorker` sets by default.
/// `port` is the project's service port (not SSH's).
pub fn valid_deploy_payload(request_id: &str, server_ip: &str, port: u16) -> Value {
    json!({
        "request_id": request_id,
        "project_id": uuid::Uuid::new_v4().to_string(),
        "project_name": "digest-test",
        "repo_full_name": "acme/digest-test",
        "branch": "release/1.2",
        "server_ip": server_ip,
        "port": port,
        "modules": ["backend", "tg_bot"],
        "github_token_ref": format!("env:{GITHUB_TOKEN_VAR}"),
        "secrets_ref": format!("env:{PROJECT_ENV_VAR}"),
    })
}
