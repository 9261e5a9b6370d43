//! Jobs with `vault:` references end to end: the real worker against the
//! fake Vault and a real sshd. What the client tests already show (each
//! login, each reason) is only sampled here; these show what a job sees:
//! the values on the target, the result's details, the token kept alive
//! across a long job, a Vault outage that costs a delay, references the
//! policy refuses before Vault hears of them, and no value anywhere the
//! job leaves text.

use std::time::Duration;

use infra_service::job::{ErrorCode, JobResult, JobStatus};
use serde_json::{Value, json};

use crate::exfiltration::{NO_REFERENCE_POLICY, NO_TARGET_POLICY};
use crate::helpers::*;
use crate::vault_fake::{FakeConfig, FakeVault};

const TOKEN: &str = "ghp_vaultE2eTokenValue6d0b";
const DB_PASSWORD: &str = "pw-e2e-91c4aa70";
/// The `.env` text `vault:secret/projects/x` becomes: sorted, one line each.
const PROJECT_ENV: &str = "APP_ENV=prod\nDB_PASSWORD=pw-e2e-91c4aa70\nPORT=8080\n";
const HANDLE: &str = "vps-hel1-01";
/// What the worker logs each time a Vault call meets no answer.
const VAULT_RETRY: &str = "Vault did not answer; retrying";

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
    assert!(result.stats.is_none(), "a playbook ran: {result:#?}");
    assert!(
        digest_record(&w.host, &result.request_id).is_none(),
        "a playbook ran"
    );
}

/// None of `values` in the worker's logs, its published results, or any
/// URL or header the fake Vault was sent.
async fn assert_nowhere(w: &World, fake: &FakeVault, values: &[String]) {
    let logs = w.worker.logs();
    let results: String = w
        .queue
        .stream_entries("deploy:results")
        .await
        .into_iter()
        .flat_map(|(_, fields)| fields.into_values())
        .collect();
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
async fn a_deploy_gets_its_token_and_env_from_vault_and_rides_out_an_outage_and_a_revocation() {
    // Arrange
    let mut fake = fake_with(FakeConfig::default()).await;
    fake.put("secret/projects/gone", json!({"A": "deleted-env-value"}));
    fake.delete_latest("secret/projects/gone");
    fake.put("secret/projects/locked", json!({"A": "locked-env-value"}));
    fake.deny("secret/projects/locked");
    let w = World::start(TestHost::start().await, TestRedis::new().await, |b| {
        approle(b, &fake).set("vault.retry_secs", 30)
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

    // Act 2: Vault goes down (connection refused) and the worker's token
    // is revoked meanwhile; a deploy starts while it is down, and Vault is
    // back well within vault.retry_secs.
    fake.stop().await;
    fake.revoke_all();
    let outage = vault_deploy(&w, "vault-outage");
    w.queue.enqueue_deploy(&outage).await;
    let retries = w.worker.wait_log(VAULT_RETRY, 1, START_TIMEOUT).await;
    fake.restart().await;
    let outage_id = outage["request_id"].as_str().unwrap();
    let second = w.worker.wait_deploy_result(&w.queue, outage_id).await;

    // Assert 2: a delay, not the job: retried, logged in again, deployed.
    assert_eq!(second.status, JobStatus::Success, "{second:#?}");
    assert_eq!(
        retries[0]["call"], "the read of secret/ci/github",
        "{retries:#?}"
    );
    let refused = retries[0]["error.message"].as_str().unwrap_or_default();
    assert!(refused.to_lowercase().contains("connect"), "{retries:#?}");
    let reads = "/v1/secret/data/ci/github";
    assert_eq!(fake.answered(reads, 403).len(), 1, "{:#?}", fake.requests());
    assert_eq!(fake.logins(), 2);
    let record = digest_record(&w.host, &second.request_id).expect("the playbook's record");
    assert_eq!(record["token_sha256"], sha256_hex(TOKEN));

    // Act 3: a field the secret lacks, a deleted secret, a denied one, and
    // a whole secret where one value is needed.
    let with = |label: &str, field: &str, reference: &str| {
        let mut payload = vault_deploy(&w, label);
        payload[field] = json!(reference);
        payload
    };
    let failures = [
        (
            "github_token_ref",
            "vault:secret/ci/github#nope",
            "field_missing",
        ),
        ("secrets_ref", "vault:secret/projects/gone", "not_found"),
        ("secrets_ref", "vault:secret/projects/locked", "forbidden"),
        ("github_token_ref", "vault:secret/ci/github", "malformed"),
    ];
    let payloads: Vec<Value> = failures
        .iter()
        .map(|(field, reference, reason)| with(reason, field, reference))
        .collect();
    let results = w.deploy_all(&payloads).await;

    // Assert 3: the contract's reasons, before any playbook; the denied
    // read, with a token Vault still accepted, was not tried again.
    for (result, (_, reference, reason)) in results.iter().zip(failures) {
        assert_secret_unresolved(&w, result, reference, reason);
    }
    let locked = fake.answered("/v1/secret/data/projects/locked", 403);
    assert_eq!(locked.len(), 1, "{locked:#?}");
    let mut values: Vec<String> = [TOKEN, DB_PASSWORD, "deleted-env-value", "locked-env-value"]
        .map(str::to_owned)
        .into();
    values.push(fake.config().secret_id.clone());
    values.extend(fake.issued_tokens());
    assert_nowhere(&w, &fake, &values).await;
}

#[tokio::test]
async fn a_vault_sealed_past_retry_secs_fails_the_job_unavailable_before_any_playbook() {
    // Arrange: a Vault nobody unseals, and a worker that waits 1 s for it.
    let fake = fake_with(FakeConfig::default()).await;
    fake.seal();
    let w = World::start(TestHost::start().await, TestRedis::new().await, |b| {
        approle(b, &fake).set("vault.retry_secs", 1)
    })
    .await;

    // Act
    let result = w.deploy(&vault_deploy(&w, "vault-sealed")).await;

    // Assert: the first reference the job needs names the failure.
    assert_secret_unresolved(&w, &result, "vault:secret/ci/github#token", "unavailable");
    let message = result.message().unwrap();
    assert!(message.contains("vault.retry_secs"), "{message}");
    let logins = fake.answered("/v1/auth/approle/login", 503);
    assert!(logins.len() >= 2, "not retried: {logins:#?}");
    assert!(!w.worker.log_entries(VAULT_RETRY).is_empty());
}

#[tokio::test]
async fn during_a_long_job_the_worker_renews_its_token_then_logs_in_again_at_the_max_ttl() {
    // Arrange: tokens of 6 s that live 8 s at most (renewed at 4 s, a new
    // login at 6 s); a job held open.
    let fake = fake_with(FakeConfig {
        token_ttl: Duration::from_secs(6),
        token_max_ttl: Duration::from_secs(8),
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
    let cycled = eventually(Duration::from_secs(40), || async {
        (fake.renewals() >= 1 && fake.logins() >= 2).then_some(())
    })
    .await;
    let still_running = w.queue.deploy_result(&held_id).await.is_none();
    release_sleepers(&w.host);
    let held_result = w.worker.wait_deploy_result(&w.queue, &held_id).await;
    // Reads with the token of now, failing before any playbook.
    let mut later = vault_deploy(&w, "vault-later");
    later["secrets_ref"] = json!("vault:secret/projects/x#MISSING");
    let later = w.deploy(&later).await;

    // Assert
    assert!(cycled.is_some(), "{:#?}", fake.requests());
    assert!(still_running, "the job ended before the token's lease did");
    assert_eq!(held_result.status, JobStatus::Success, "{held_result:#?}");
    assert_eq!(
        later.code(),
        Some(ErrorCode::SecretUnresolved),
        "{later:#?}"
    );
    assert_eq!(later.detail("reason"), "field_missing", "{later:#?}");
    assert!(sleep_starts(&w.host, &later.request_id).is_empty());
    assert!(
        fake.reads_answered(403).is_empty(),
        "a read met a dead token: {:#?}",
        fake.requests()
    );
    // The later job read with a token of a later login than the first
    // one (which its max TTL has ended by now). Not necessarily the very
    // newest: the renewer may log in again between a read's ticket and
    // its request.
    let issued: Vec<String> = fake
        .requests()
        .into_iter()
        .filter_map(|r| r.issued)
        .collect();
    let (read, _) = fake.last_read_and_newest_login();
    let read = read.expect("the later job's read");
    assert!(issued[1..].contains(&read), "{read} of {issued:?}");
    let logins = w.worker.log_entries("logged in to Vault");
    assert!(logins.len() >= 2, "{logins:#?}");
    assert!(
        logins.iter().all(|l| l["method"] == "approle"),
        "{logins:#?}"
    );
}

/// A deploy to `w`'s host with `secrets_ref` set to `reference`.
fn deploy_naming(w: &World, reference: &str) -> Value {
    let mut payload = valid_deploy_payload(&unique_request_id("refused"), w.host.address(), 8080);
    payload["secrets_ref"] = json!(reference);
    payload
}

#[tokio::test]
async fn a_provision_takes_the_servers_key_from_vault_and_no_job_may_name_it_or_the_token() {
    // Arrange: the server's key lives in Vault; the worker has a token in
    // a file. The reference lists would let the worker's own credentials
    // through: they are refused whatever the lists say.
    let fake = FakeVault::start(FakeConfig::default()).await;
    let host = TestHost::start().await;
    let key = host.client_private_key_pem();
    fake.put(
        "secret/servers/vps-hel1-01",
        json!({"private_key": key.clone()}),
    );
    fake.put("secret/ci/github", json!({"token": TOKEN}));
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
            .set(
                "policy.secrets_ref",
                json!([
                    "vault:secret/projects/*",
                    "vault:secret/servers/*",
                    "file:vault/*"
                ]),
            )
            .env("TMPDIR", tmp.path().to_str().unwrap())
    })
    .await;
    let refused = [
        (
            "vault:secret/servers/vps-hel1-01",
            "is a credential of the worker's own",
        ),
        ("file:vault/token", "is a credential of the worker's own"),
        (
            "vault:secret/ci/github",
            "matches no pattern of `policy.secrets_ref`",
        ),
    ];
    let payloads: Vec<Value> = refused
        .iter()
        .map(|(reference, _)| deploy_naming(&w, reference))
        .collect();

    // Act
    let results = w.deploy_all(&payloads).await;
    let asked_before_the_provision = fake.requests();
    let request_id = unique_request_id("vault-prov");
    let result = w
        .provision(&json!({"request_id": request_id, "server_handle": HANDLE}))
        .await;

    // Assert: each refused before Vault heard of it.
    for (result, (reference, why)) in results.iter().zip(refused) {
        assert_secret_unresolved(&w, result, reference, "not_allowed");
        let message = result.message().unwrap();
        assert!(message.contains(why), "{message}");
    }
    assert!(
        asked_before_the_provision.is_empty(),
        "Vault heard of a refused reference: {asked_before_the_provision:#?}"
    );
    // The provision: the token looked up once, the key read with it.
    assert_eq!(result.status, JobStatus::Success, "{result:#?}");
    assert_eq!(result.field("server_status"), "ready");
    assert_eq!(fake.answered("/v1/auth/token/lookup-self", 200).len(), 1);
    let reads = fake.answered("/v1/secret/data/servers/vps-hel1-01", 200);
    assert_eq!(reads.len(), 1);
    assert_eq!(reads[0].token.as_deref(), Some("token-1"));
    assert!(fake.answered("/v1/secret/data/ci/github", 200).is_empty());
    let key_line = key.lines().nth(1).unwrap().to_owned();
    assert!(
        !w.worker.logs().contains(&key_line),
        "a key line is in the logs"
    );
    assert!(
        !w.worker.logs().contains(&token),
        "the token is in the logs"
    );
    // Half a policy set, and none for targets: both said at start.
    let unset = w.worker.log_entries(NO_REFERENCE_POLICY);
    assert_eq!(unset.len(), 1, "{unset:#?}");
    assert_eq!(
        unset[0]["unset"],
        json!(["policy.github_token_ref"]).to_string()
    );
    assert_eq!(w.worker.log_entries(NO_TARGET_POLICY).len(), 1);
}
