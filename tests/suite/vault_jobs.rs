//! Jobs with `vault:` references end to end: the real worker against the
//! fake Vault and a real sshd. What the client tests already show (each
//! login, each reason) is only sampled here; these show what a job sees:
//! the values on the target, the result's details, the token kept alive
//! across a long job, and no value anywhere the job leaves text.

use std::time::Duration;

use infra_service::job::{ErrorCode, JobResult, JobStatus};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::vault_fake::{FakeConfig, FakeVault};

const TOKEN: &str = "ghp_vaultE2eTokenValue6d0b";
const DB_PASSWORD: &str = "pw-e2e-91c4aa70";
/// The `.env` text `vault:secret/projects/x` becomes: sorted, one line each.
const PROJECT_ENV: &str = "APP_ENV=prod\nDB_PASSWORD=pw-e2e-91c4aa70\nPORT=8080\n";
const HANDLE: &str = "vps-hel1-01";

async fn fake_with(config: FakeConfig) -> FakeVault {
    let fake = FakeVault::start(config).await;
    fake.put("secret/ci/github", json!({"token": TOKEN}));
    fake.put(
        "secret/projects/x",
        json!({"PORT": 8080, "DB_PASSWORD": DB_PASSWORD, "APP_ENV": "prod"}),
    );
    fake
}

/// The worker's `[vault]` section for `fake`, logging in by AppRole with
/// credentials in its secrets dir.
fn approle(worker: TestWorkerBuilder, fake: &FakeVault) -> TestWorkerBuilder {
    worker
        .set("vault.addr", fake.addr())
        .set("vault.auth", "approle")
        .set("vault.approle_role_id_ref", "file:vault/role-id")
        .set("vault.approle_secret_id_ref", "file:vault/secret-id")
        .secret_file("vault/role-id", fake.config().role_id.clone())
        .secret_file("vault/secret-id", fake.config().secret_id.clone())
}

/// A valid deploy whose token and `.env` come from Vault.
fn vault_deploy(w: &World, label: &str) -> Value {
    let mut payload = valid_deploy_payload(&unique_request_id(label), w.host.address(), 8080);
    payload["github_token_ref"] = json!("vault:secret/ci/github#token");
    payload["secrets_ref"] = json!("vault:secret/projects/x");
    payload
}

fn assert_secret_unresolved(w: &World, result: &JobResult, reference: &str, reason: &str) {
    assert_eq!(
        result.code(),
        Some(ErrorCode::SecretUnresolved),
        "{result:#?}"
    );
    assert_eq!(result.detail("reference"), reference, "{result:#?}");
    assert_eq!(result.detail("reason"), reason, "{result:#?}");
    assert!(
        digest_record(&w.host, &result.request_id).is_none(),
        "a playbook ran"
    );
}

/// None of `values` in the worker's logs, its published results, or any
/// URL or header the fake Vault was sent.
async fn assert_nowhere(w: &World, fake: &FakeVault, values: &[String]) {
    let logs = w.worker.logs();
    let results = serde_json::to_string(&w.queue.deploy_results_stream().await).unwrap();
    for value in values {
        assert!(
            !logs.contains(value.as_str()),
            "a value is in the worker's logs"
        );
        assert!(!results.contains(value.as_str()), "a value is in a result");
        for request in fake.requests() {
            assert!(
                !request.url_text().contains(value.as_str()),
                "{}",
                request.url_text()
            );
            for (name, header) in &request.headers {
                assert!(!header.contains(value.as_str()), "header {name}");
            }
        }
    }
}

#[tokio::test]
async fn a_deploy_gets_its_token_and_env_from_vault_and_rides_out_a_seal_and_a_revocation() {
    // Arrange
    let fake = fake_with(FakeConfig::default()).await;
    fake.put("secret/projects/gone", json!({"A": "deleted-env-value"}));
    fake.delete_latest("secret/projects/gone");
    let w = World::start(TestHost::start().await, TestRedis::new().await, |b| {
        approle(b, &fake).set("vault.retry_secs", 20)
    })
    .await;
    w.worker
        .wait_log("worker started", 1, Duration::from_secs(60))
        .await;
    assert!(
        fake.requests().is_empty(),
        "the worker asked Vault at start"
    );

    // Act 1: a deploy naming both secrets in Vault.
    let first = w.deploy(&vault_deploy(&w, "vault-digest")).await;

    // Assert 1: the token and the whole secret as .env reached the target.
    assert_eq!(first.status, JobStatus::Success, "{first:#?}");
    let record = digest_record(&w.host, &first.request_id).expect("the playbook's record");
    assert_eq!(record["token_sha256"], sha256_hex(TOKEN));
    assert_eq!(record["project_env_sha256"], sha256_hex(PROJECT_ENV));
    assert_eq!(fake.logins(), 1);

    // Act 2: Vault is sealed for three requests and the worker's token is
    // revoked; Vault is back well within vault.retry_secs.
    fake.revoke_all();
    fake.seal_for(3);
    let second = w.deploy(&vault_deploy(&w, "vault-outage")).await;

    // Assert 2: a delay, not the job: retried, logged in again, deployed.
    assert_eq!(second.status, JobStatus::Success, "{second:#?}");
    let reads = "/v1/secret/data/ci/github";
    assert_eq!(fake.answered(reads, 503).len(), 3, "{:#?}", fake.requests());
    assert_eq!(fake.answered(reads, 403).len(), 1);
    assert_eq!(fake.logins(), 2);
    let record = digest_record(&w.host, &second.request_id).expect("the playbook's record");
    assert_eq!(record["token_sha256"], sha256_hex(TOKEN));

    // Act 3: a field the secret lacks, and a deleted secret.
    let mut no_field = vault_deploy(&w, "vault-nofield");
    no_field["github_token_ref"] = json!("vault:secret/ci/github#nope");
    let mut deleted = vault_deploy(&w, "vault-deleted");
    deleted["secrets_ref"] = json!("vault:secret/projects/gone");
    let no_field = w.deploy(&no_field).await;
    let deleted = w.deploy(&deleted).await;

    // Assert 3: the contract's reasons, before any playbook.
    assert_secret_unresolved(
        &w,
        &no_field,
        "vault:secret/ci/github#nope",
        "field_missing",
    );
    assert_secret_unresolved(&w, &deleted, "vault:secret/projects/gone", "not_found");
    let mut values: Vec<String> = [TOKEN, DB_PASSWORD, "deleted-env-value"]
        .map(str::to_owned)
        .into();
    values.push(fake.config().secret_id.clone());
    values.extend(fake.issued_tokens());
    assert_nowhere(&w, &fake, &values).await;
}

#[tokio::test]
async fn during_a_long_job_the_worker_renews_its_token_then_logs_in_again_at_the_max_ttl() {
    // Arrange: tokens of 2 s that live 5 s at most; a job held open.
    let fake = fake_with(FakeConfig {
        token_ttl: Duration::from_secs(2),
        token_max_ttl: Duration::from_secs(5),
        ..FakeConfig::default()
    })
    .await;
    let w = World::start(TestHost::start().await, TestRedis::new().await, |b| {
        approle(b, &fake).deploy_playbook("deploy_sleep.yml")
    })
    .await;
    let held = vault_deploy(&w, "vault-held");
    let held_id = held["request_id"].as_str().unwrap().to_owned();
    w.queue.enqueue_deploy(&held).await;
    let started =
        wait_sleepers_started(&w.host, std::slice::from_ref(&held_id), RESULT_TIMEOUT).await;
    assert!(started, "the held job never started");

    // Act: while the job runs, the token's lease ends more than once.
    let cycled = eventually(Duration::from_secs(30), || async {
        (fake.renewals() >= 1 && fake.logins() >= 2).then_some(())
    })
    .await;
    let still_running = w.queue.deploy_result(&held_id).await.is_none();
    release_sleepers(&w.host);
    let held_result = w.worker.wait_deploy_result(&w.queue, &held_id).await;
    let later = w.deploy(&vault_deploy(&w, "vault-later")).await;

    // Assert
    assert!(cycled.is_some(), "{:#?}", fake.requests());
    assert!(still_running, "the job ended before the token's lease did");
    assert_eq!(held_result.status, JobStatus::Success, "{held_result:#?}");
    assert_eq!(later.status, JobStatus::Success, "{later:#?}");
    assert!(
        fake.answered("/data/", 403).is_empty(),
        "a read met a dead token"
    );
    let logins = w.worker.log_entries("logged in to Vault");
    assert!(logins.len() >= 2, "{logins:#?}");
    assert!(
        logins.iter().all(|l| l["method"] == "approle"),
        "{logins:#?}"
    );
}

#[tokio::test]
async fn a_provision_takes_the_servers_key_from_vault_with_a_token_from_a_file() {
    // Arrange: the server's key lives in Vault; the worker has a token.
    let fake = FakeVault::start(FakeConfig::default()).await;
    let host = TestHost::start().await;
    let key = host.client_private_key_pem();
    fake.put(
        "secret/servers/vps-hel1-01",
        json!({"private_key": key.clone()}),
    );
    let token = fake.issue_token(Duration::from_secs(3600), Duration::ZERO, true);
    let db = TestDb::new().await;
    let port = host.port().to_string();
    db.servers_cli(&[
        "add",
        HANDLE,
        "--address",
        host.address(),
        "--port",
        &port,
        "--user",
        host.user(),
        "--key-ref",
        "vault:secret/servers/vps-hel1-01#private_key",
    ])
    .await;
    // Short: ssh ControlPath sockets live below it (108-byte limit).
    let tmp = tempfile::Builder::new()
        .prefix("iw")
        .tempdir_in("/tmp")
        .unwrap();
    let w = World::start(host, TestRedis::new().await, |b| {
        b.postgres_url(db.url())
            .set("ansible.provision_playbook", "provision_setup.yml")
            .set("vault.addr", fake.addr())
            .set("vault.token_ref", "file:vault/token")
            .secret_file("vault/token", format!("{token}\n"))
            .env("TMPDIR", tmp.path().to_str().unwrap())
    })
    .await;
    let request_id = unique_request_id("vault-prov");

    // Act
    let result = w
        .provision(&json!({"request_id": request_id, "server_handle": HANDLE}))
        .await;

    // Assert
    assert_eq!(result.status, JobStatus::Success, "{result:#?}");
    assert_eq!(result.field("server_status"), "ready");
    assert_eq!(fake.answered("/v1/auth/token/lookup-self", 200).len(), 1);
    let reads = fake.answered("/v1/secret/data/servers/vps-hel1-01", 200);
    assert_eq!(reads.len(), 1);
    assert_eq!(reads[0].token.as_deref(), Some("token-1"));
    let key_line = key.lines().nth(1).unwrap().to_owned();
    assert!(
        !w.worker.logs().contains(&key_line),
        "a key line is in the logs"
    );
    assert!(
        !w.worker.logs().contains(&token),
        "the token is in the logs"
    );
}
