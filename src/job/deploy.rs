//! `DeployJob`: the DeployerNode's request to ship a project to a server.
//!
//! Owns the DeployJob table of CONTRACT.md section 1: which fields are
//! required, their defaults, and the extra vars a deploy playbook receives.
//! Rules are checked in the table's order and the first failure is reported.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::{Value, json};

use super::fields::*;
use super::payload::{self, Object, Port};

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
    /// Given for every `deploy`; the other actions need no token.
    pub github_token_ref: Option<SecretRef>,
    pub secrets_ref: Option<SecretRef>,
    pub action: DeployAction,
    /// After a successful deploy, give the repository's CI its own way in
    /// (contract section 7).
    pub setup_ci: bool,
    /// Healthy means HTTP 2xx/3xx here; without it, the port accepts TCP.
    pub health_path: Option<HealthPath>,
}

/// The branch deployed when the payload names none.
const DEFAULT_BRANCH: &str = "main";

impl DeployJob {
    /// Parses a stream entry's `payload` field.
    ///
    /// Checks, first failure wins: size, UTF-8, JSON, object, then the fields
    /// in contract order (`request_id`, `project_id`, `project_name`,
    /// `repo_full_name`, `branch`, `server_ip`, `port`, `modules`,
    /// `github_token_ref`, `secrets_ref`, `action`, `setup_ci`,
    /// `health_path`; then `github_token_ref` again if `action` is
    /// `deploy` and it was not given). Once `request_id` is valid, every
    /// refusal carries it, including the size refusal.
    pub fn parse(payload: &[u8]) -> Result<DeployJob, InvalidPayload> {
        let object = payload::read_object(payload).map_err(|unusable| {
            let request_id = unusable.object.as_ref().and_then(read_request_id);
            InvalidPayload::new(request_id, unusable.reason)
        })?;
        let request_id = payload::required(&object, "request_id", RequestId::parse)
            .map_err(|reason| InvalidPayload::new(None, reason))?;
        Self::parse_fields(&object, request_id.clone())
            .map_err(|reason| InvalidPayload::new(Some(request_id), reason))
    }

    /// Every field after `request_id`, in contract order.
    fn parse_fields(object: &Object, request_id: RequestId) -> Result<DeployJob, String> {
        let project_id = payload::required(object, "project_id", parse_uuid)?;
        let project_name = payload::optional(object, "project_name", ProjectName::parse)?;
        let repo_full_name = payload::required(object, "repo_full_name", RepoName::parse)?;
        let branch = match payload::optional(object, "branch", GitRef::parse)? {
            Some(branch) => branch,
            None => GitRef::parse(DEFAULT_BRANCH)?,
        };
        let server_ip = payload::required(object, "server_ip", ServerAddress::parse)?;
        let port = payload::port(object, "port")?;
        let modules = payload::list(object, "modules", Module::parse)?;
        let github_token_ref = payload::optional(object, "github_token_ref", SecretRef::parse)?;
        let secrets_ref = payload::optional(object, "secrets_ref", SecretRef::parse)?;
        let action = payload::optional(object, "action", DeployAction::parse)?;
        let action = action.unwrap_or(DeployAction::Deploy);
        let setup_ci = payload::flag(object, "setup_ci")?;
        let health_path = payload::optional(object, "health_path", HealthPath::parse)?;
        if action == DeployAction::Deploy && github_token_ref.is_none() {
            return Err("github_token_ref: is required for action deploy".to_owned());
        }
        Ok(DeployJob {
            request_id,
            project_id,
            project_name: project_name.unwrap_or_else(|| ProjectName::default_for(&repo_full_name)),
            repo_full_name,
            branch,
            server_ip,
            port,
            modules,
            github_token_ref,
            secrets_ref,
            action,
            setup_ci,
            health_path,
        })
    }

    /// Every non-secret field under its contract name, `port` as
    /// `service_port` and `action` as `deploy_action`: the playbook's extra
    /// vars.
    pub fn extra_vars(&self) -> serde_json::Value {
        // `port` is an Ansible connection keyword: as an extra var it would
        // redirect SSH to the service's port. The `*_ref` fields stay out:
        // playbooks get secrets only through GITHUB_TOKEN and PROJECT_ENV.
        let mut vars = json!({
            "request_id": self.request_id,
            "project_id": self.project_id.hyphenated().to_string(),
            "project_name": self.project_name,
            "repo_full_name": self.repo_full_name,
            "branch": self.branch,
            "server_ip": self.server_ip,
            "modules": Value::from_iter(self.modules.iter().map(|m| m.as_str())),
            "service_port": self.port,
            // `action` is an Ansible keyword, as `port` is.
            "deploy_action": self.action.as_str(),
        });
        // Absent, not null: the role tells "check the port" by its absence.
        if let Some(path) = &self.health_path {
            vars["health_path"] = json!(path);
        }
        vars
    }
}

/// The payload `DeployJob::parse` accepts, as a JSON Schema: the fields in
/// contract order with the contract's words. A schema, never a value: the
/// payload is parsed by hand, and `null` counts as absent.
#[derive(JsonSchema)]
#[schemars(
    title = "DeployJob",
    description = "The payload of an ansible:deploy:queue entry (CONTRACT.md section 1): the \
        DeployerNode's request to ship a project to a server. Unknown fields are ignored, so \
        producers can add fields first; null counts as absent. The worker also refuses a payload \
        over 1 MiB, and checks github_token_ref, secrets_ref and server_ip against its operator's \
        policy before anything runs (contract section 2).",
    transform = deploy_rules
)]
#[allow(dead_code)] // never built: it only describes
pub(super) struct DeployPayload {
    /// The job's id: the result key is deploy:result:<request_id>, the progress stream
    /// job:events:<request_id>. A payload without a valid one gets no result, only a dead letter.
    request_id: RequestId,
    /// The project's UUID (8-4-4-4-12 hex digits, either case).
    project_id: ProjectId,
    /// Kebab-case project name; default: the repo part of repo_full_name, lower-cased, every
    /// character outside [a-z0-9-] made -, leading - dropped, cut to 63 ("project" if nothing is
    /// left).
    project_name: Option<ProjectName>,
    /// The GitHub repository, owner/repo.
    repo_full_name: RepoName,
    /// The git branch (any ref name) to check out.
    #[schemars(extend("default" = "main"))]
    branch: Option<GitRef>,
    /// The server to deploy to: an IPv4/IPv6 address or a DNS host name.
    server_ip: ServerAddress,
    /// The project's service port on the server.
    port: Port,
    /// Docker compose profiles to enable.
    #[schemars(extend("default" = []))]
    modules: Option<Vec<Module>>,
    /// A secret reference to the GitHub token that checks out the repository; required when
    /// action is deploy.
    github_token_ref: Option<SecretRef>,
    /// A secret reference resolving to the project's .env (KEY=VALUE lines).
    secrets_ref: Option<SecretRef>,
    /// What to do on the server (contract section 6).
    #[schemars(extend("default" = "deploy"))]
    action: Option<DeployAction>,
    /// After a successful deploy, configure the repository's GitHub Actions deploy secrets
    /// (contract section 7).
    #[schemars(extend("default" = false))]
    setup_ci: Option<bool>,
    /// The deploy is healthy when http://127.0.0.1:<port><health_path> on the server answers
    /// 2xx/3xx; without it, when the port accepts TCP connections.
    health_path: Option<HealthPath>,
}

/// The rules between fields: `github_token_ref` for a `deploy` (an absent
/// or `null` action is one); unknown fields allowed.
fn deploy_rules(schema: &mut Schema) {
    schema.insert("additionalProperties".into(), true.into());
    schema.insert(
        "if".into(),
        json!({"properties": {"action": {"enum": ["deploy", null]}}}),
    );
    schema.insert(
        "then".into(),
        json!({
            "required": ["github_token_ref"],
            "properties": {"github_token_ref": {"type": "string"}},
        }),
    );
}

/// A minimal valid job for `repo_full_name` to `server_ip`, for other
/// modules' unit tests.
#[cfg(test)]
pub(crate) fn minimal_for_test(repo_full_name: &str, server_ip: &str) -> DeployJob {
    let payload = json!({
        "request_id": "dep-1",
        "project_id": "6f1c2a9e-2b7d-4d8e-9a51-0c7e5b8f3a10",
        "repo_full_name": repo_full_name,
        "server_ip": server_ip,
        "port": 8080,
        "github_token_ref": "env:GITHUB_TOKEN",
    });
    DeployJob::parse(payload.to_string().as_bytes()).unwrap()
}

/// The request id of an oversized payload, when it has a valid one.
fn read_request_id(object: &Object) -> Option<RequestId> {
    payload::required(object, "request_id", RequestId::parse).ok()
}

/// A UUID in its hyphenated form (`8-4-4-4-12` hex digits, either case),
/// the form every producer writes; braced, URN and bare-hex forms are
/// refused so the id we echo back is the id they sent, modulo case.
fn parse_uuid(s: &str) -> Result<uuid::Uuid, String> {
    let rule = || format!("must be a UUID (8-4-4-4-12 hex digits), got {}", shown(s));
    if s.len() != 36 {
        return Err(rule());
    }
    uuid::Uuid::try_parse(s).map_err(|_| rule())
}

/// `parse_uuid`'s rule as a schema: a schema, never a value.
pub(super) struct ProjectId;

impl JsonSchema for ProjectId {
    fn schema_name() -> Cow<'static, str> {
        "ProjectId".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        const HEX: &str = "[0-9A-Fa-f]";
        json_schema!({
            "title": "ProjectId",
            "description": "A UUID in its hyphenated form, 8-4-4-4-12 hex digits, either case; \
                braced, URN and bare-hex forms are refused.",
            "type": "string",
            "format": "uuid",
            "pattern": whole(&format!("{HEX}{{8}}-{HEX}{{4}}-{HEX}{{4}}-{HEX}{{4}}-{HEX}{{12}}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value, json};

    use super::*;
    use crate::job::MAX_PAYLOAD_BYTES;

    /// The contract's DeployJob example, verbatim.
    const EXAMPLE: &str = r#"{
      "request_id": "dep-0c1d",
      "project_id": "6f1c2a9e-2b7d-4d8e-9a51-0c7e5b8f3a10",
      "project_name": "my-project",
      "repo_full_name": "acme/my-project",
      "branch": "main",
      "server_ip": "203.0.113.10",
      "port": 8080,
      "modules": ["backend", "tg_bot"],
      "github_token_ref": "vault:secret/github#token",
      "secrets_ref": "vault:secret/projects/my-project"
    }"#;

    fn example() -> Map<String, Value> {
        serde_json::from_str(EXAMPLE).unwrap()
    }

    /// The example with `field` set to `value`.
    fn with(field: &str, value: Value) -> Vec<u8> {
        let mut object = example();
        object.insert(field.to_owned(), value);
        serde_json::to_vec(&object).unwrap()
    }

    /// The example without `field`.
    fn without(field: &str) -> Vec<u8> {
        let mut object = example();
        object.remove(field);
        serde_json::to_vec(&object).unwrap()
    }

    /// Parses and expects a refusal carrying the example's request id.
    fn refused(payload: &[u8]) -> String {
        let err = DeployJob::parse(payload).unwrap_err();
        assert_eq!(
            err.request_id.as_ref().map(RequestId::as_str),
            Some("dep-0c1d")
        );
        err.reason
    }

    #[test]
    fn the_contract_example_parses() {
        let job = DeployJob::parse(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(job.request_id.as_str(), "dep-0c1d");
        assert_eq!(
            job.project_id.to_string(),
            "6f1c2a9e-2b7d-4d8e-9a51-0c7e5b8f3a10"
        );
        assert_eq!(job.project_name.as_str(), "my-project");
        assert_eq!(job.repo_full_name.as_str(), "acme/my-project");
        assert_eq!(job.branch.as_str(), "main");
        assert_eq!(job.server_ip.as_str(), "203.0.113.10");
        assert_eq!(job.port, 8080);
        let modules: Vec<&str> = job.modules.iter().map(Module::as_str).collect();
        assert_eq!(modules, ["backend", "tg_bot"]);
        assert_eq!(
            job.github_token_ref
                .as_ref()
                .map(SecretRef::as_str)
                .unwrap(),
            "vault:secret/github#token"
        );
        assert_eq!(
            job.secrets_ref.as_ref().map(SecretRef::as_str),
            Some("vault:secret/projects/my-project")
        );
    }

    #[test]
    fn the_contract_example_without_optional_fields_gets_the_defaults() {
        let mut object = example();
        for optional in ["project_name", "branch", "modules", "secrets_ref"] {
            object.remove(optional);
        }
        object.insert("repo_full_name".into(), json!("Acme/My_Project"));
        let job = DeployJob::parse(&serde_json::to_vec(&object).unwrap()).unwrap();
        assert_eq!(job.project_name.as_str(), "my-project");
        assert_eq!(job.branch.as_str(), "main");
        assert!(job.modules.is_empty());
        assert_eq!(job.secrets_ref, None);
        assert!(!job.setup_ci);
    }

    #[test]
    fn setup_ci_is_a_json_boolean() {
        let job = DeployJob::parse(&with("setup_ci", json!(true))).unwrap();
        assert!(job.setup_ci);
        let reason = refused(&with("setup_ci", json!("yes")));
        assert_eq!(reason, "setup_ci: must be true or false, got a string");
    }

    #[test]
    fn null_optional_fields_get_the_defaults() {
        let mut object = example();
        for optional in ["project_name", "branch", "modules", "secrets_ref"] {
            object.insert(optional.into(), Value::Null);
        }
        let job = DeployJob::parse(&serde_json::to_vec(&object).unwrap()).unwrap();
        assert_eq!(job.project_name.as_str(), "my-project");
        assert_eq!(job.branch.as_str(), "main");
        assert!(job.modules.is_empty());
        assert_eq!(job.secrets_ref, None);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let job = DeployJob::parse(&with("added_later", json!({"x": [1]}))).unwrap();
        assert_eq!(job, DeployJob::parse(EXAMPLE.as_bytes()).unwrap());
    }

    #[test]
    fn a_payload_that_is_not_json_is_refused_without_a_request_id() {
        let err = DeployJob::parse(b"not json").unwrap_err();
        assert_eq!(err.request_id, None);
        assert!(
            err.reason.starts_with("payload: must be JSON"),
            "{}",
            err.reason
        );
    }

    #[test]
    fn a_payload_that_is_not_an_object_is_refused_without_a_request_id() {
        for (payload, kind) in [
            (&b"[1]"[..], "an array"),
            (br#""x""#, "a string"),
            (b"42", "a number"),
        ] {
            let err = DeployJob::parse(payload).unwrap_err();
            assert_eq!(err.request_id, None);
            assert_eq!(
                err.reason,
                format!("payload: must be a JSON object, got {kind}")
            );
        }
    }

    #[test]
    fn a_missing_request_id_is_refused_without_a_request_id() {
        let err = DeployJob::parse(&without("request_id")).unwrap_err();
        assert_eq!(err, InvalidPayload::new(None, "request_id: is required"));
    }

    #[test]
    fn an_invalid_request_id_is_refused_without_a_request_id() {
        for bad in [json!("a b"), json!(""), json!(42), Value::Null] {
            let err = DeployJob::parse(&with("request_id", bad.clone())).unwrap_err();
            assert_eq!(err.request_id, None, "{bad}");
            assert!(err.reason.starts_with("request_id: "), "{}", err.reason);
        }
    }

    #[test]
    fn each_missing_required_field_is_named_with_the_request_id() {
        for field in ["project_id", "repo_full_name", "server_ip", "port"] {
            assert_eq!(refused(&without(field)), format!("{field}: is required"));
            assert_eq!(
                refused(&with(field, Value::Null)),
                format!("{field}: is required")
            );
        }
    }

    #[test]
    fn the_github_token_is_required_for_a_deploy_only() {
        assert_eq!(
            refused(&without("github_token_ref")),
            "github_token_ref: is required for action deploy"
        );
        for action in ["restart", "stop", "remove", "logs"] {
            let mut object = example();
            object.remove("github_token_ref");
            object.insert("action".into(), json!(action));
            let job = DeployJob::parse(&serde_json::to_vec(&object).unwrap()).unwrap();
            assert_eq!(job.action.as_str(), action);
            assert_eq!(job.github_token_ref, None);
        }
    }

    #[test]
    fn action_and_health_path_are_checked_and_reach_the_playbook() {
        let reason = refused(&with("action", json!("delete")));
        assert!(
            reason.starts_with("action: must be one of deploy"),
            "{reason}"
        );
        let reason = refused(&with("health_path", json!("healthz")));
        assert!(
            reason.starts_with("health_path: must be an HTTP path"),
            "{reason}"
        );
        let mut object = example();
        object.insert("action".into(), json!("restart"));
        object.insert("health_path".into(), json!("/healthz"));
        let job = DeployJob::parse(&serde_json::to_vec(&object).unwrap()).unwrap();
        assert_eq!(job.extra_vars()["deploy_action"], "restart");
        assert_eq!(job.extra_vars()["health_path"], "/healthz");
    }

    #[test]
    fn a_string_field_of_another_json_type_is_named() {
        for field in [
            "project_id",
            "project_name",
            "repo_full_name",
            "branch",
            "server_ip",
            "github_token_ref",
            "secrets_ref",
        ] {
            assert_eq!(
                refused(&with(field, json!(1))),
                format!("{field}: must be a string, got a number")
            );
        }
    }

    #[test]
    fn a_project_id_that_is_not_a_uuid_is_refused() {
        for bad in [
            "x",
            "6f1c2a9e2b7d4d8e9a510c7e5b8f3a10",
            "{6f1c2a9e-2b7d-4d8e-9a51-0c7e5b8f3a10}",
        ] {
            assert!(
                refused(&with("project_id", json!(bad))).starts_with("project_id: must be a UUID")
            );
        }
    }

    #[test]
    fn an_upper_case_project_id_is_accepted() {
        let job = DeployJob::parse(&with(
            "project_id",
            json!("6F1C2A9E-2B7D-4D8E-9A51-0C7E5B8F3A10"),
        ));
        assert_eq!(
            job.unwrap().project_id.to_string(),
            "6f1c2a9e-2b7d-4d8e-9a51-0c7e5b8f3a10"
        );
    }

    #[test]
    fn a_project_name_that_is_not_kebab_case_is_refused() {
        assert!(refused(&with("project_name", json!("My_Project"))).starts_with("project_name: "));
    }

    #[test]
    fn a_repo_full_name_climbing_out_is_refused() {
        let reason = refused(&with("repo_full_name", json!("../x")));
        assert!(
            reason.starts_with("repo_full_name: must be owner/repo"),
            "{reason}"
        );
    }

    #[test]
    fn a_branch_that_is_an_option_is_refused() {
        let reason = refused(&with("branch", json!("--upload-pack=x")));
        assert!(
            reason.starts_with("branch: must be a valid git ref name"),
            "{reason}"
        );
    }

    #[test]
    fn a_shell_command_as_server_ip_is_refused() {
        let reason = refused(&with("server_ip", json!("; rm -rf /")));
        assert_eq!(
            reason,
            r#"server_ip: must be an IPv4 or IPv6 address or a DNS host name, got "; rm -rf /""#
        );
    }

    #[test]
    fn a_host_name_or_ipv6_server_ip_is_accepted() {
        assert!(DeployJob::parse(&with("server_ip", json!("vps1.example.com"))).is_ok());
        assert!(DeployJob::parse(&with("server_ip", json!("2001:db8::10"))).is_ok());
    }

    #[test]
    fn a_port_out_of_range_is_refused() {
        assert_eq!(
            refused(&with("port", json!(0))),
            "port: must be an integer 1-65535, got 0"
        );
        assert_eq!(
            refused(&with("port", json!(70000))),
            "port: must be an integer 1-65535, got 70000"
        );
        assert_eq!(
            refused(&with("port", json!(-1))),
            "port: must be an integer 1-65535, got -1"
        );
    }

    #[test]
    fn a_port_that_is_not_a_json_integer_is_refused() {
        assert_eq!(
            refused(&with("port", json!(8080.5))),
            "port: must be an integer 1-65535, got 8080.5"
        );
        assert_eq!(
            refused(&with("port", json!("8080"))),
            r#"port: must be an integer 1-65535, got "8080""#
        );
        assert!(refused(&with("port", json!(8080.0))).starts_with("port: "));
        assert!(refused(&with("port", json!(true))).starts_with("port: "));
    }

    #[test]
    fn the_edge_ports_are_accepted() {
        assert_eq!(DeployJob::parse(&with("port", json!(1))).unwrap().port, 1);
        assert_eq!(
            DeployJob::parse(&with("port", json!(65535))).unwrap().port,
            65535
        );
    }

    #[test]
    fn a_module_with_a_space_is_refused_naming_its_position() {
        let reason = refused(&with("modules", json!(["backend", "tg bot"])));
        assert_eq!(
            reason,
            r#"modules[1]: must be 1-64 characters of [a-z0-9_-], got "tg bot""#
        );
    }

    #[test]
    fn modules_that_are_not_an_array_of_strings_are_refused() {
        assert_eq!(
            refused(&with("modules", json!("backend"))),
            "modules: must be an array of strings, got a string"
        );
        assert_eq!(
            refused(&with("modules", json!(["backend", 1]))),
            "modules[1]: must be a string, got a number"
        );
    }

    #[test]
    fn a_malformed_secret_reference_is_refused_without_echoing_it() {
        let reason = refused(&with("github_token_ref", json!("ghp_REALTOKEN")));
        assert!(
            reason.starts_with("github_token_ref: must be a secret reference"),
            "{reason}"
        );
        assert!(!reason.contains("REALTOKEN"));
        let reason = refused(&with("secrets_ref", json!("A=1\nB=2")));
        assert!(reason.starts_with("secrets_ref: "), "{reason}");
        assert!(!reason.contains("A=1"));
    }

    #[test]
    fn the_first_failing_field_in_contract_order_is_reported() {
        let mut object = example();
        object.insert("server_ip".into(), json!("; rm -rf /"));
        object.insert("port".into(), json!(0));
        object.insert("branch".into(), json!("a..b"));
        let reason = refused(&serde_json::to_vec(&object).unwrap());
        assert!(reason.starts_with("branch: "), "{reason}");
    }

    #[test]
    fn a_10_mb_payload_is_refused_but_keeps_its_request_id() {
        let payload = with("padding", json!("x".repeat(10 * 1024 * 1024)));
        let started = std::time::Instant::now();
        let reason = refused(&payload);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(
            reason,
            format!(
                "payload: {} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit",
                payload.len()
            )
        );
    }

    #[test]
    fn an_oversized_payload_without_a_valid_request_id_carries_none() {
        let mut object = example();
        object.insert("request_id".into(), json!("not valid"));
        object.insert("padding".into(), json!("x".repeat(MAX_PAYLOAD_BYTES)));
        let err = DeployJob::parse(&serde_json::to_vec(&object).unwrap()).unwrap_err();
        assert_eq!(err.request_id, None);
        assert!(err.reason.starts_with("payload: "), "{}", err.reason);
    }

    #[test]
    fn extra_vars_carry_every_non_secret_field_and_port_as_service_port() {
        let job = DeployJob::parse(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(
            job.extra_vars(),
            json!({
                "request_id": "dep-0c1d",
                "project_id": "6f1c2a9e-2b7d-4d8e-9a51-0c7e5b8f3a10",
                "project_name": "my-project",
                "repo_full_name": "acme/my-project",
                "branch": "main",
                "server_ip": "203.0.113.10",
                "modules": ["backend", "tg_bot"],
                "service_port": 8080,
                "deploy_action": "deploy",
            })
        );
    }

    #[test]
    fn extra_vars_hold_no_port_and_no_secret_reference() {
        let vars = DeployJob::parse(EXAMPLE.as_bytes()).unwrap().extra_vars();
        for absent in ["port", "github_token_ref", "secrets_ref"] {
            assert!(vars.get(absent).is_none(), "{absent}");
        }
    }
}
