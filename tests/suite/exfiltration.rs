//! Payloads that try to make the worker hand over its own secrets or deploy
//! where the operator did not allow (CONTRACT.md section 2, "What a job may
//! name"). Each is refused with the contract's code and `details.reason`
//! before anything runs: no SSH connection reaches the test's sshd, and the
//! secret's value (or its sha256) appears in no result, dead letter,
//! progress event, log line or file on the target. An allowed deploy still
//! runs, by a worker whose Vault is down.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use infra_service::job::{ErrorCode, JobKind, JobResult, JobStatus};
use serde_json::{Value, json};

use crate::helpers::*;

/// The start-up warnings of a worker without (part of) a policy.
pub(crate) const NO_REFERENCE_POLICY: &str = "no reference policy set: jobs may name any secret the worker can read, except its own credentials";
pub(crate) const NO_TARGET_POLICY: &str =
    "no deploy target policy set: jobs may deploy to any host";

/// A world on `host` whose worker also gets `configure`'s settings.
async fn world_with(
    host: TestHost,
    configure: impl FnOnce(TestWorkerBuilder) -> TestWorkerBuilder,
) -> World {
    World::start(host, TestRedis::new().await, configure).await
}

/// The default valid deploy to `server_ip`, with `changes` merged in (a
/// `null` removes the field).
fn payload(label: &str, server_ip: &str, changes: Value) -> Value {
    let mut payload = valid_deploy_payload(&unique_request_id(label), server_ip, 8080);
    let fields = payload.as_object_mut().unwrap();
    for (key, value) in changes.as_object().unwrap() {
        match value {
            Value::Null => fields.remove(key),
            value => fields.insert(key.clone(), value.clone()),
        };
    }
    payload
}

fn id(payload: &Value) -> &str {
    payload["request_id"].as_str().unwrap()
}

/// A reference the policy refused: `secret_unresolved`, `not_allowed`,
/// naming the reference.
fn assert_not_allowed(result: &JobResult, reference: &str) {
    assert_eq!(result.status, JobStatus::Failed, "{result:#?}");
    assert_eq!(
        result.code(),
        Some(ErrorCode::SecretUnresolved),
        "{result:#?}"
    );
    assert_eq!(result.detail("reason"), "not_allowed", "{result:#?}");
    assert_eq!(result.detail("reference"), reference, "{result:#?}");
    assert!(result.stats.is_none(), "no playbook ran: {result:#?}");
}

/// A target the policy refused: `invalid_payload`, `target_not_allowed`,
/// and a dead letter for the request.
async fn assert_target_refused(w: &World, result: &JobResult) {
    assert_eq!(result.status, JobStatus::Failed, "{result:#?}");
    assert_eq!(
        result.code(),
        Some(ErrorCode::InvalidPayload),
        "{result:#?}"
    );
    assert_eq!(result.detail("reason"), "target_not_allowed", "{result:#?}");
    assert!(
        result
            .message()
            .is_some_and(|m| m.starts_with("server_ip: ")),
        "{result:#?}"
    );
    let dead = w.queue.dead_letters().await;
    assert!(
        dead.iter()
            .any(|letter| letter["request_id"] == result.request_id),
        "no dead letter for {}: {dead:?}",
        result.request_id
    );
}

/// `value` is in none of the places a job's words go: its result (key and
/// stream), the dead letters, its progress events, the worker's logs, the
/// target's files; nor its sha256 (what the fixture playbooks write); and
/// no playbook left a record on the target for any of `request_ids`.
async fn assert_nowhere(w: &World, request_ids: &[&str], value: &str) {
    let mut places: Vec<(String, String)> = Vec::new();
    for request_id in request_ids {
        let result = w.queue.result_text(JobKind::Deploy, request_id).await;
        let result = result.unwrap_or_else(|| panic!("no result for {request_id}"));
        places.push((format!("result {request_id}"), result));
        let events = stream_text(w, &format!("job:events:{request_id}")).await;
        places.push((format!("events {request_id}"), events));
        for record in [format!("{request_id}.json"), format!("{request_id}.start")] {
            let path = w.host.out_dir().join(&record);
            assert!(!path.exists(), "a playbook ran: {record} on the target");
        }
    }
    places.push((
        "deploy:results".into(),
        stream_text(w, "deploy:results").await,
    ));
    places.push(("dead letters".into(), stream_text(w, "infra:dead").await));
    places.push(("worker logs".into(), w.worker.logs()));
    places.push(("the target".into(), files_text(&w.host.out_dir())));
    // A file's value loses one trailing newline when resolved.
    let digests = [value, value.strip_suffix('\n').unwrap_or(value)].map(sha256_hex);
    let digests = digests.iter().map(String::as_str);
    for fragment in fragments(value).into_iter().chain(digests) {
        for (place, text) in &places {
            assert!(
                !text.contains(fragment),
                "a secret's value or digest is in the {place}"
            );
        }
    }
}

/// No SSH connection reached `w`'s sshd since it counted `before`. sshd
/// logs a connection a moment after accepting it: one of the test's own,
/// once logged, tells that an earlier one would be counted by then.
async fn assert_no_connection_since(w: &World, before: usize) {
    w.host.knock().await;
    let counted = eventually(Duration::from_secs(30), || async {
        let now = w.host.connections();
        (now > before).then_some(now)
    })
    .await;
    assert_eq!(counted, Some(before + 1), "{}", w.host.sshd_log());
}

/// The worker's own `secrets.dir`.
fn secrets_dir(w: &World) -> PathBuf {
    w.worker.config_path().parent().unwrap().join("secrets")
}

/// Registers a server in `db` through the operator's command.
async fn register(db: &TestDb, handle: &str, address: &str, port: u16, key_ref: &str) {
    let port = port.to_string();
    let args = [
        "add",
        handle,
        "--address",
        address,
        "--port",
        &port,
        "--key-ref",
        key_ref,
    ];
    db.servers_cli(&args).await;
}

#[tokio::test]
async fn the_deploy_key_sent_to_a_host_outside_the_allowed_ranges_is_refused_before_any_connection()
{
    // Arrange: only 10.0.0.0/8 may be deployed to; the test's sshd, the
    // "attacker's host", is on 127.0.0.1.
    let w = world_with(TestHost::start().await, |worker| {
        worker.set("policy.deploy_targets", json!(["10.0.0.0/8"]))
    })
    .await;
    let key = w.host.client_private_key_pem();
    let steal = payload(
        "steal-key",
        w.host.address(),
        json!({"secrets_ref": SSH_KEY_REF}),
    );
    let by_name = payload("by-name", "localhost", json!({}));
    let connections = w.host.connections();

    // Act
    let results = w.deploy_all(&[steal.clone(), by_name.clone()]).await;

    // Assert
    for result in &results {
        assert_target_refused(&w, result).await;
    }
    let message = results[1].message().unwrap();
    let localhost = localhost_addresses().await;
    assert!(
        localhost.iter().any(|ip| message.contains(&ip.to_string())),
        "{message} names none of {localhost:?}"
    );
    assert_no_connection_since(&w, connections).await;
    assert!(digest_record(&w.host, id(&steal)).is_none());
    let ids = [id(&steal), id(&by_name)];
    assert_nowhere(&w, &ids, &key).await;
    assert_nowhere(&w, &ids, w.worker.github_token()).await;
    assert_eq!(w.worker.log_entries(NO_REFERENCE_POLICY).len(), 1);
    assert!(w.worker.log_entries(NO_TARGET_POLICY).is_empty());
}

#[tokio::test]
async fn the_deploy_key_under_other_spellings_or_through_a_symlink_is_not_allowed() {
    // Arrange: the target is allowed, and no reference policy is set: the
    // worker's own key stays out of reach all the same.
    let w = world_with(TestHost::start().await, |worker| {
        worker.set("policy.deploy_targets", json!(["127.0.0.0/8"]))
    })
    .await;
    let secrets = secrets_dir(&w);
    std::fs::create_dir(secrets.join("projects")).unwrap();
    std::os::unix::fs::symlink("../ssh/id_ed25519", secrets.join("projects/key-link")).unwrap();
    let outside = tempfile::NamedTempFile::new().unwrap();
    let outside_value = format!("outside-{}", unique_request_id("v"));
    std::fs::write(outside.path(), &outside_value).unwrap();
    std::os::unix::fs::symlink(outside.path(), secrets.join("projects/outside")).unwrap();
    let attempts = [
        ("secrets_ref", "file:ssh/./id_ed25519"),
        ("secrets_ref", "file:ssh//id_ed25519"),
        ("secrets_ref", "file:projects/key-link"),
        ("secrets_ref", "file:projects/outside"),
        ("github_token_ref", SSH_KEY_REF),
    ];
    let payloads: Vec<Value> = attempts
        .iter()
        .map(|(field, reference)| payload("spelling", w.host.address(), json!({*field: reference})))
        .collect();
    let connections = w.host.connections();

    // Act
    let results = w.deploy_all(&payloads).await;

    // Assert
    for (result, (_, reference)) in results.iter().zip(attempts) {
        assert_not_allowed(result, reference);
    }
    assert_no_connection_since(&w, connections).await;
    assert!(w.queue.dead_letters().await.is_empty());
    let ids: Vec<&str> = payloads.iter().map(id).collect();
    assert_nowhere(&w, &ids, &w.host.client_private_key_pem()).await;
    assert_nowhere(&w, &ids, &outside_value).await;
    assert_eq!(w.worker.log_entries(NO_REFERENCE_POLICY).len(), 1);
}

#[tokio::test]
async fn the_workers_environment_is_not_allowed_whatever_the_patterns_and_patterns_are_enforced() {
    // Arrange: `env:*` lets a job name any variable, but the worker's own;
    // `.env` files must come from Vault.
    let db = TestDb::new().await;
    let pg_password = unique_request_id("pgpw");
    let become_password = unique_request_id("become");
    let file_token = unique_request_id("ghp_file");
    let w = world_with(TestHost::start().await, |worker| {
        worker
            .postgres_url(db.url())
            .env("INFRA__POSTGRES__URL", db.url())
            .env("PGPASSWORD", &pg_password)
            .env("ANSIBLE_BECOME_PASS", &become_password)
            .secret_file("projects/token", file_token.clone())
            .set("policy.deploy_targets", json!(["127.0.0.1"]))
            .set("policy.github_token_ref", json!(["env:*"]))
            .set("policy.secrets_ref", json!(["vault:secret/projects/*"]))
    })
    .await;
    let database_url = payload(
        "db-url",
        w.host.address(),
        json!({"github_token_ref": "env:INFRA__POSTGRES__URL", "secrets_ref": null}),
    );
    let password = payload(
        "pg-password",
        w.host.address(),
        json!({"github_token_ref": "env:PGPASSWORD", "secrets_ref": null}),
    );
    let become_pass = payload(
        "become-pass",
        w.host.address(),
        json!({"github_token_ref": "env:ANSIBLE_BECOME_PASS", "secrets_ref": null}),
    );
    let unlisted = payload("unlisted", w.host.address(), json!({}));
    let unlisted_token = payload(
        "unlisted-token",
        w.host.address(),
        json!({"github_token_ref": "file:projects/token", "secrets_ref": null}),
    );
    let connections = w.host.connections();

    // Act
    let payloads = [
        database_url,
        password,
        become_pass,
        unlisted,
        unlisted_token,
    ];
    let results = w.deploy_all(&payloads).await;

    // Assert
    assert_not_allowed(&results[0], "env:INFRA__POSTGRES__URL");
    assert_not_allowed(&results[1], "env:PGPASSWORD");
    assert_not_allowed(&results[2], "env:ANSIBLE_BECOME_PASS");
    assert_not_allowed(&results[3], &format!("env:{PROJECT_ENV_VAR}"));
    assert_not_allowed(&results[4], "file:projects/token");
    let why = [
        "names the worker's own configuration",
        "names the worker's own configuration",
        "names the worker's own configuration",
        "matches no pattern of `policy.secrets_ref`",
        "matches no pattern of `policy.github_token_ref`",
    ];
    for (result, why) in results.iter().zip(why) {
        let message = result.message().unwrap();
        assert!(message.contains(why), "{message}");
    }
    assert_no_connection_since(&w, connections).await;
    let ids: Vec<&str> = payloads.iter().map(id).collect();
    assert_nowhere(&w, &ids, db.url()).await;
    assert_nowhere(&w, &ids, &pg_password).await;
    assert_nowhere(&w, &ids, &become_password).await;
    assert_nowhere(&w, &ids, w.worker.env_value(PROJECT_ENV_VAR)).await;
    assert_nowhere(&w, &ids, &file_token).await;
    assert!(w.worker.log_entries(NO_REFERENCE_POLICY).is_empty());
}

#[tokio::test]
async fn a_registered_servers_key_is_not_allowed_and_an_unregistered_target_is_refused() {
    // Arrange: one sshd on two addresses; 127.0.0.2 is a registered
    // server (its key in the secrets dir), 127.0.0.1 is not.
    let db = TestDb::new().await;
    let host = TestHost::start_on_all(&["127.0.0.1", "127.0.0.2"]).await;
    register(
        &db,
        "vps-1",
        "127.0.0.2",
        host.port(),
        "file:servers/vps-1.key",
    )
    .await;
    let server_key = host.client_private_key_pem();
    let w = world_with(host, |worker| {
        worker
            .postgres_url(db.url())
            .secret_file("servers/vps-1.key", server_key.clone())
            .set("policy.deploy_targets", json!(["registered"]))
    })
    .await;
    let steal = payload(
        "server-key",
        "127.0.0.2",
        json!({"secrets_ref": "file:servers//vps-1.key"}),
    );
    let unregistered = payload("unregistered", "127.0.0.1", json!({}));
    let connections = w.host.connections();

    // Act
    let results = w.deploy_all(&[steal.clone(), unregistered.clone()]).await;

    // Assert
    assert_not_allowed(&results[0], "file:servers//vps-1.key");
    assert_target_refused(&w, &results[1]).await;
    assert_no_connection_since(&w, connections).await;
    assert_nowhere(&w, &[id(&steal), id(&unregistered)], &server_key).await;
}

/// The addresses `localhost` resolves to on this machine, 127.0.0.1
/// first; checked to be loopback ones a `TestHost` can listen on, so a
/// test that deploys to `localhost` never reaches beyond this machine.
async fn localhost_addresses() -> Vec<IpAddr> {
    let found = tokio::net::lookup_host(("localhost", 22)).await.unwrap();
    let mut addresses: Vec<IpAddr> = Vec::new();
    for ip in found.map(|a| a.ip().to_canonical()) {
        if !addresses.contains(&ip) {
            addresses.push(ip);
        }
    }
    let first = IpAddr::from([127, 0, 0, 1]);
    let usable = |ip: &IpAddr| match ip {
        IpAddr::V4(v4) => v4.octets()[..3] == [127, 0, 0] && (1..=16).contains(&v4.octets()[3]),
        IpAddr::V6(v6) => v6.is_loopback(),
    };
    assert!(
        addresses.contains(&first) && addresses.iter().all(usable),
        "these tests need `localhost` to resolve to 127.0.0.1, and else only to \
         127.0.0.2-16 or ::1 (/etc/hosts), not {addresses:?}"
    );
    addresses.sort_by_key(|ip| *ip != first);
    addresses
}

/// A host name is checked by the address it resolves to (a registered
/// server's), and ssh then connects to that address while the host key
/// is kept under the name.
#[tokio::test]
async fn an_allowed_reference_and_a_host_name_resolving_to_a_registered_server_still_deploy() {
    // Arrange: a strict policy that this job keeps to; one sshd on every
    // address of `localhost`, each a registered server. Vault is down
    // (nobody listens at its address): the job names no Vault secret.
    let localhost: Vec<String> = localhost_addresses()
        .await
        .iter()
        .map(IpAddr::to_string)
        .collect();
    let localhost: Vec<&str> = localhost.iter().map(String::as_str).collect();
    let db = TestDb::new().await;
    let host = TestHost::start_on_all(&localhost).await;
    for (i, address) in localhost.iter().enumerate() {
        let handle = format!("vps-{}", i + 1);
        register(&db, &handle, address, host.port(), SSH_KEY_REF).await;
    }
    let vault_down = format!("http://127.0.0.1:{}", free_stable_port());
    let w = world_with(host, |worker| {
        worker
            .postgres_url(db.url())
            .set("vault.addr", vault_down)
            .set("vault.token_ref", "file:vault/token")
            .secret_file("vault/token", "hvs.never-sent")
            .set(
                "policy.github_token_ref",
                json!(["env:GITHUB_TOKEN_FOR_TEST"]),
            )
            .set(
                "policy.secrets_ref",
                json!(["env:PROJECT_ENV_*", "vault:secret/projects/*"]),
            )
            .set("policy.deploy_targets", json!(["registered"]))
    })
    .await;
    let job = payload("allowed", "localhost", json!({}));
    let connections = w.host.connections();

    // Act
    let result = w.deploy(&job).await;

    // Assert
    assert_eq!(result.status, JobStatus::Success, "{result:#?}");
    assert!(w.host.connections() > connections);
    let stats = result.stats.as_ref().expect("stats after a run");
    assert!(stats.contains_key("localhost"), "{stats:?}");
    let record = digest_record(&w.host, id(&job)).expect("the playbook ran");
    assert_eq!(record["token_sha256"], sha256_hex(w.worker.github_token()));
    let mut conn = db.connect().await;
    let pinned: Vec<(String, String)> = sqlx::query_as("SELECT address, host_key FROM host_keys")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(pinned.len(), 1, "{pinned:?}");
    // Under the address that was checked and connected to, where the
    // registered server's lock and pin live, not under the job's name.
    assert_eq!(pinned[0].0, "127.0.0.1");
    let kept_as = format!("[127.0.0.1]:{} ", w.host.port());
    assert!(
        pinned[0].1.lines().all(|line| line.starts_with(&kept_as)),
        "the key is kept under the checked address: {pinned:?}"
    );
    assert!(w.worker.log_entries(NO_REFERENCE_POLICY).is_empty());
    assert!(w.worker.log_entries(NO_TARGET_POLICY).is_empty());
    let asked_vault = w.worker.log_entries("Vault did not answer; retrying");
    assert!(asked_vault.is_empty(), "{asked_vault:#?}");
}

#[tokio::test]
async fn a_bad_deploy_target_entry_stops_the_worker_at_start_naming_the_key() {
    // Arrange
    let redis = TestRedis::new().await;
    let worker = TestWorker::builder(&redis)
        .set(
            "policy.deploy_targets",
            json!(["registered", "10.0.0.0/33"]),
        )
        .spawn()
        .await;

    // Act
    let status = worker.wait_exit(std::time::Duration::from_secs(30)).await;

    // Assert
    assert_eq!(status.code(), Some(1), "{}", worker.logs());
    assert!(
        worker
            .logs()
            .contains("configuration key `policy.deploy_targets`: entry \"10.0.0.0/33\""),
        "{}",
        worker.logs()
    );
}
