//! The Vault client, through the `Resolver` a workflow uses, against the
//! fake Vault over loopback: each login method, the token's lifecycle
//! (renewal, max TTL, refused renewal, revocation), every failure reason,
//! outages, namespaces and a private CA. No worker, no playbook.

use std::path::Path;
use std::time::{Duration, Instant};

use infra_service::config::{VaultAuth, VaultSettings};
use infra_service::job::SecretRef;
use infra_service::secrets::vault::{CaCert, VaultAddr};
use infra_service::secrets::{FailureReason, ResolveError, Resolver};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use crate::helpers::eventually;
use crate::vault_fake::{FakeConfig, FakeVault};

const TOKEN: &str = "ghp_vaultTokenValue81f2c";
const DB_PASSWORD: &str = "pw-3f9a77c0d1";

/// A fake with the secrets most tests read.
async fn fake_with(config: FakeConfig) -> FakeVault {
    let fake = FakeVault::start(config).await;
    fake.put(
        "secret/ci/github",
        json!({"token": TOKEN, "user": "ci-bot"}),
    );
    fake.put(
        "secret/projects/x",
        json!({"DB_PASSWORD": DB_PASSWORD, "APP_ENV": "prod", "PORT": 8080}),
    );
    fake
}

/// Client settings for `fake`, logging in with `auth`.
fn settings(fake: &FakeVault, auth: VaultAuth) -> VaultSettings {
    VaultSettings {
        addr: Some(VaultAddr::parse(&fake.addr()).unwrap()),
        ca_cert: None,
        namespace: fake.config().namespace.clone(),
        timeout_secs: 5,
        retry_secs: 5,
        auth: Some(auth),
        login_refs: Vec::new(),
        kubernetes_jwt_path: std::path::PathBuf::new(),
    }
}

/// AppRole credentials of `fake` as files in `secrets`.
fn approle(fake: &FakeVault, secrets: &Path) -> VaultAuth {
    std::fs::write(secrets.join("role-id"), &fake.config().role_id).unwrap();
    std::fs::write(secrets.join("secret-id"), &fake.config().secret_id).unwrap();
    VaultAuth::Approle {
        role_id_ref: "file:role-id".into(),
        secret_id_ref: "file:secret-id".into(),
        mount: "approle".into(),
    }
}

/// A resolver logging in to `fake` by AppRole, with `tweak` applied.
fn approle_resolver(
    fake: &FakeVault,
    secrets: &Path,
    tweak: impl FnOnce(&mut VaultSettings),
) -> Resolver {
    let mut s = settings(fake, approle(fake, secrets));
    tweak(&mut s);
    Resolver::with_vault(secrets.to_owned(), &s)
}

/// The stand-in's GitHub token, the reference most tests read.
const GITHUB_TOKEN_REF: &str = "vault:secret/ci/github#token";

async fn one(resolver: &Resolver, reference: &str) -> Result<String, ResolveError> {
    let value = resolver.resolve_str(reference).await?;
    Ok(value.expose_secret().to_owned())
}

/// The GitHub token the stand-in holds, resolved; panics on failure.
async fn github_token(resolver: &Resolver) -> String {
    one(resolver, GITHUB_TOKEN_REF).await.unwrap()
}

async fn env_file(resolver: &Resolver, reference: &str) -> Result<String, ResolveError> {
    let reference = SecretRef::parse(reference).unwrap();
    let value: SecretString = resolver.resolve_env_file(&reference).await?;
    Ok(value.expose_secret().to_owned())
}

/// No URL, and no header but the token's own, carried any of `values`.
fn assert_no_request_carries(fake: &FakeVault, values: &[&str]) {
    for request in fake.requests() {
        let headers = request
            .headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}"))
            .collect::<Vec<_>>()
            .join("\n");
        for value in values {
            let url = request.url_text();
            assert!(!url.contains(value), "{url} carried a value");
            assert!(!headers.contains(value), "{url}: a header carried a value");
        }
    }
}

#[tokio::test]
async fn an_approle_login_reads_one_field_and_a_whole_secret_as_sorted_env_lines() {
    // Arrange
    let fake = fake_with(FakeConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let resolver = approle_resolver(&fake, dir.path(), |_| {});
    assert!(
        fake.requests().is_empty(),
        "no request before the first use"
    );

    // Act
    let token = github_token(&resolver).await;
    let env = env_file(&resolver, "vault:secret/projects/x")
        .await
        .unwrap();
    let field_as_env = env_file(&resolver, "vault:secret/ci/github#user")
        .await
        .unwrap();

    // Assert
    assert_eq!(token, TOKEN);
    assert_eq!(
        env,
        format!("APP_ENV=prod\nDB_PASSWORD={DB_PASSWORD}\nPORT=8080\n")
    );
    assert_eq!(field_as_env, "ci-bot");
    assert_eq!(fake.logins(), 1, "{:#?}", fake.requests());
    let login = &fake.answered("/v1/auth/approle/login", 200)[0];
    assert_eq!(login.method, "POST");
    assert_eq!(fake.read_tokens(), ["token-1", "token-1", "token-1"]);
    for request in fake.requests() {
        assert!(request.namespace.is_none(), "{request:?}");
    }
    let role_id = fake.config().role_id.clone();
    let secret_id = fake.config().secret_id.clone();
    assert_no_request_carries(&fake, &[TOKEN, DB_PASSWORD, &role_id, &secret_id]);
}

#[tokio::test]
async fn a_kubernetes_login_sends_the_role_and_the_service_account_token() {
    let fake = fake_with(FakeConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let jwt = dir.path().join("sa-token");
    std::fs::write(&jwt, format!("{}\n", fake.config().kubernetes_jwt)).unwrap();
    let auth = |role: &str| VaultAuth::Kubernetes {
        role: role.into(),
        jwt_path: jwt.clone(),
        mount: "kubernetes".into(),
    };
    let good = Resolver::with_vault(
        dir.path().to_owned(),
        &settings(&fake, auth("infra-service")),
    );
    let wrong_role = Resolver::with_vault(dir.path().to_owned(), &settings(&fake, auth("other")));

    let token = one(&good, GITHUB_TOKEN_REF).await.unwrap();
    let refused = one(&wrong_role, GITHUB_TOKEN_REF).await.unwrap_err();

    assert_eq!(token, TOKEN);
    assert_eq!(fake.answered("/v1/auth/kubernetes/login", 200).len(), 1);
    assert_eq!(refused.reason(), FailureReason::Forbidden, "{refused}");
    assert!(
        refused.to_string().contains("kubernetes login"),
        "{refused}"
    );
    assert!(!refused.to_string().contains("eyJ"), "{refused}");
}

#[tokio::test]
async fn a_token_file_is_read_again_when_it_changes_as_a_vault_agent_sink_rewrites_it() {
    // Arrange: an operator-made token in a file, as a Vault Agent sink.
    let fake = fake_with(FakeConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let ttl = Duration::from_secs(3600);
    let first = fake.issue_token(ttl, Duration::ZERO, true);
    std::fs::write(dir.path().join("vault-token"), format!("{first}\n")).unwrap();
    let auth = VaultAuth::Token {
        token_ref: "file:vault-token".into(),
    };
    let resolver = Resolver::with_vault(dir.path().to_owned(), &settings(&fake, auth));
    github_token(&resolver).await;

    // Act: the agent writes a new token (a new file renamed over the old
    // one) and the old one is revoked.
    let second = fake.issue_token(ttl, Duration::ZERO, true);
    let staged = dir.path().join(".vault-token.tmp");
    std::fs::write(&staged, format!("{second}\n")).unwrap();
    std::fs::rename(&staged, dir.path().join("vault-token")).unwrap();
    fake.revoke_all_but(&second);
    let token = github_token(&resolver).await;

    // Assert: the new token was looked up and used, without a 403 first.
    assert_eq!(token, TOKEN);
    assert_eq!(fake.answered("/v1/auth/token/lookup-self", 200).len(), 2);
    assert_eq!(fake.read_tokens(), ["token-1", "token-2"]);
    assert!(fake.answered("/data/ci/github", 403).is_empty());
}

#[tokio::test]
async fn the_token_is_renewed_before_its_lease_ends_so_no_new_login_is_needed() {
    // Arrange: tokens of 6 s (renewed at 4 s), renewable without a cap.
    let fake = fake_with(FakeConfig {
        token_ttl: Duration::from_secs(6),
        ..FakeConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let resolver = approle_resolver(&fake, dir.path(), |_| {});
    github_token(&resolver).await;

    // Act: wait past the first lease (a second renewal comes after it).
    let renewed = eventually(Duration::from_secs(30), || async {
        (fake.renewals() >= 2).then_some(())
    })
    .await;
    let token = github_token(&resolver).await;

    // Assert
    assert!(renewed.is_some(), "{:#?}", fake.requests());
    assert_eq!(token, TOKEN);
    assert_eq!(fake.logins(), 1);
    assert_eq!(fake.read_tokens(), ["token-1", "token-1"]);
    let renewals = fake.answered("/v1/auth/token/renew-self", 200);
    assert!(
        renewals
            .iter()
            .all(|r| r.token.as_deref() == Some("token-1"))
    );
}

#[tokio::test]
async fn at_the_max_ttl_the_client_logs_in_again_before_the_token_dies() {
    // Arrange: 6 s tokens that live 8 s at most: the renewal at 4 s
    // gives less than before, so the client logs in again at 6 s.
    let fake = fake_with(FakeConfig {
        token_ttl: Duration::from_secs(6),
        token_max_ttl: Duration::from_secs(8),
        ..FakeConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let resolver = approle_resolver(&fake, dir.path(), |_| {});
    github_token(&resolver).await;

    // Act
    let relogged = eventually(Duration::from_secs(30), || async {
        (fake.logins() >= 2).then_some(())
    })
    .await;
    let token = github_token(&resolver).await;

    // Assert: renewed first, then a new login; the read needed no 403.
    assert!(relogged.is_some(), "{:#?}", fake.requests());
    assert!(fake.renewals() >= 1);
    assert_eq!(token, TOKEN);
    let (read, newest) = fake.last_read_and_newest_login();
    assert_eq!(read, newest, "{:#?}", fake.requests());
    assert!(fake.reads_answered(403).is_empty());
}

#[tokio::test]
async fn a_refused_renewal_means_a_new_login() {
    let fake = fake_with(FakeConfig {
        token_ttl: Duration::from_secs(6),
        ..FakeConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let resolver = approle_resolver(&fake, dir.path(), |_| {});
    github_token(&resolver).await;
    fake.refuse_renewals();

    let relogged = eventually(Duration::from_secs(30), || async {
        (fake.logins() >= 2).then_some(())
    })
    .await;
    let token = github_token(&resolver).await;

    assert!(relogged.is_some(), "{:#?}", fake.requests());
    assert!(!fake.answered("/v1/auth/token/renew-self", 403).is_empty());
    assert_eq!(token, TOKEN);
    // The new login's token, and no 403 on the way.
    let (read, newest) = fake.last_read_and_newest_login();
    assert_eq!(read, newest, "{:#?}", fake.requests());
    assert_ne!(read.as_deref(), Some("token-1"));
    assert!(fake.reads_answered(403).is_empty());
}

#[tokio::test]
async fn a_403_on_a_read_costs_one_new_login_and_one_more_read() {
    let fake = fake_with(FakeConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let resolver = approle_resolver(&fake, dir.path(), |_| {});
    github_token(&resolver).await;
    fake.revoke_all();

    let token = github_token(&resolver).await;

    assert_eq!(token, TOKEN);
    let refused = fake.answered("/v1/secret/data/ci/github", 403);
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].token.as_deref(), Some("token-1"));
    assert_eq!(fake.logins(), 2);
    assert_eq!(fake.read_tokens(), ["token-1", "token-2"]);
}

#[tokio::test]
async fn each_failure_has_the_contracts_reason_and_names_the_reference_not_a_value() {
    // Arrange
    let fake = fake_with(FakeConfig::default()).await;
    fake.put("secret/gone", json!({"k": "deleted-value-1"}));
    fake.delete_latest("secret/gone");
    fake.put("secret/burnt", json!({"k": "destroyed-value-1"}));
    fake.destroy_latest("secret/burnt");
    fake.put("secret/locked", json!({"k": "locked-value-1"}));
    fake.deny("secret/locked");
    fake.put(
        "secret/pem",
        json!({"KEY": "-----BEGIN-----\nAAAA\n-----END-----"}),
    );
    let dir = tempfile::tempdir().unwrap();
    let resolver = approle_resolver(&fake, dir.path(), |_| {});

    // Act and assert: (reference, one value or .env, reason, message part).
    let cases = [
        (
            "vault:secret/absent#k",
            false,
            FailureReason::NotFound,
            "no secret at secret/absent",
        ),
        (
            "vault:secret/gone#k",
            false,
            FailureReason::NotFound,
            "is deleted",
        ),
        (
            "vault:secret/burnt",
            true,
            FailureReason::NotFound,
            "is destroyed",
        ),
        (
            "vault:secret/locked#k",
            false,
            FailureReason::Forbidden,
            "HTTP 403",
        ),
        (
            "vault:secret/ci/github#nope",
            false,
            FailureReason::FieldMissing,
            "no field `nope`",
        ),
        (
            "vault:secret/ci/github",
            false,
            FailureReason::Malformed,
            "#FIELD",
        ),
        ("vault:secret", true, FailureReason::Malformed, "MOUNT/PATH"),
        (
            "vault:secret/pem",
            true,
            FailureReason::Malformed,
            "field `KEY` holds a line break",
        ),
        // No policy grants a mount that does not exist: 403, then again
        // after the new login.
        (
            "vault:nomount/x#k",
            false,
            FailureReason::Forbidden,
            "HTTP 403",
        ),
    ];
    for (reference, as_env, reason, message) in cases {
        let e = if as_env {
            env_file(&resolver, reference).await.unwrap_err()
        } else {
            one(&resolver, reference).await.unwrap_err()
        };
        assert_eq!(e.reason(), reason, "{reference}: {e}");
        assert_eq!(e.reference(), reference);
        let text = e.to_string();
        assert!(text.contains(reference), "{text}");
        assert!(text.contains(message), "{reference}: {text}");
        for value in [
            TOKEN,
            "deleted-value",
            "destroyed-value",
            "locked-value",
            "AAAA",
        ] {
            assert!(!text.contains(value), "{text}");
        }
    }
    // The token was still good, so each 403 was the ACL's final word: the
    // read was not repeated and no new login spent a credential on it.
    assert_eq!(fake.answered("/v1/secret/data/locked", 403).len(), 1);
    assert_eq!(fake.answered("/v1/nomount/data/x", 403).len(), 1);
    assert!(!fake.answered("/v1/auth/token/lookup-self", 200).is_empty());
}

#[tokio::test]
async fn a_vault_that_stays_sealed_past_retry_secs_is_unavailable() {
    let fake = fake_with(FakeConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let resolver = approle_resolver(&fake, dir.path(), |s| s.retry_secs = 1);
    fake.seal();

    let started = Instant::now();
    let e = one(&resolver, GITHUB_TOKEN_REF).await.unwrap_err();
    let waited = started.elapsed();

    assert_eq!(e.reason(), FailureReason::Unavailable, "{e}");
    assert!(e.to_string().contains("HTTP 503"), "{e}");
    assert!(waited >= Duration::from_secs(1), "gave up after {waited:?}");
    // Not long after retry_secs (a bound for a loaded machine).
    assert!(waited < Duration::from_secs(30), "gave up after {waited:?}");
    assert!(
        fake.answered("/login", 503).len() >= 3,
        "{:#?}",
        fake.requests()
    );
}

#[tokio::test]
async fn an_outage_shorter_than_retry_secs_costs_a_delay_not_the_read() {
    let fake = fake_with(FakeConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let resolver = approle_resolver(&fake, dir.path(), |s| s.retry_secs = 10);
    github_token(&resolver).await;

    fake.seal_for(3);
    let started = Instant::now();
    let sealed = one(&resolver, GITHUB_TOKEN_REF).await;
    let waited = started.elapsed();
    fake.fail_next(429, 1);
    let limited = one(&resolver, GITHUB_TOKEN_REF).await;

    assert_eq!(sealed.unwrap(), TOKEN);
    assert_eq!(limited.unwrap(), TOKEN);
    assert_eq!(fake.answered("/v1/secret/data/ci/github", 503).len(), 3);
    assert_eq!(fake.answered("/v1/secret/data/ci/github", 429).len(), 1);
    // Backoff: 200 + 400 + 800 ms between the four tries.
    assert!(waited >= Duration::from_millis(1400), "{waited:?}");
}

#[tokio::test]
async fn a_namespace_is_sent_on_every_request_and_scopes_the_login_the_token_and_the_secrets() {
    // Arrange: the secret and the auth methods exist only in namespace
    // team-a; tokens of 4 s, so the scoped client renews soon.
    let fake = FakeVault::start(FakeConfig {
        namespace: Some("team-a".into()),
        token_ttl: Duration::from_secs(4),
        ..FakeConfig::default()
    })
    .await;
    fake.put_in(Some("team-a"), "secret/ci/github", json!({"token": TOKEN}));
    let dir = tempfile::tempdir().unwrap();
    let scoped = approle_resolver(&fake, dir.path(), |_| {});
    let unscoped = approle_resolver(&fake, dir.path(), |s| s.namespace = None);
    let team_token = fake.issue_token(Duration::from_secs(3600), Duration::ZERO, true);
    std::fs::write(dir.path().join("team-token"), &team_token).unwrap();
    let mut token_settings = settings(
        &fake,
        VaultAuth::Token {
            token_ref: "file:team-token".into(),
        },
    );
    token_settings.namespace = None;
    let token_without_namespace = Resolver::with_vault(dir.path().to_owned(), &token_settings);

    // Act
    let token = one(&scoped, GITHUB_TOKEN_REF).await.unwrap();
    let renewed = eventually(Duration::from_secs(30), || async {
        (fake.renewals() >= 1).then_some(())
    })
    .await;
    let outside = one(&unscoped, GITHUB_TOKEN_REF).await.unwrap_err();
    let header_missing = one(&token_without_namespace, GITHUB_TOKEN_REF)
        .await
        .unwrap_err();

    // Assert: the scoped client's login, read and renewal all carried it.
    assert_eq!(token, TOKEN);
    assert!(renewed.is_some(), "{:#?}", fake.requests());
    let scoped_requests: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.status == 200)
        .collect();
    let paths: Vec<&str> = scoped_requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths[..3],
        [
            "/v1/auth/approle/login",
            "/v1/secret/data/ci/github",
            "/v1/auth/token/renew-self"
        ],
        "{scoped_requests:#?}"
    );
    for request in &scoped_requests {
        assert_eq!(request.namespace.as_deref(), Some("team-a"), "{request:?}");
    }
    // Without the header, no login, and a team-a token is refused.
    assert_eq!(outside.reason(), FailureReason::Forbidden, "{outside}");
    let login = fake.answered("/v1/auth/approle/login", 403);
    assert_eq!(login.len(), 1, "{login:#?}");
    assert_eq!(login[0].namespace, None);
    assert_eq!(
        header_missing.reason(),
        FailureReason::Forbidden,
        "{header_missing}"
    );
    let lookup = fake.answered("/v1/auth/token/lookup-self", 403);
    assert_eq!(lookup.len(), 1, "{lookup:#?}");
    assert_eq!(lookup[0].namespace, None);
    assert_ne!(lookup[0].token.as_deref(), Some("unknown"), "a real token");
}

#[tokio::test]
async fn over_https_the_private_ca_is_trusted_and_nothing_else_is() {
    let fake = FakeVault::start_tls(FakeConfig::default()).await;
    fake.put("secret/ci/github", json!({"token": TOKEN}));
    let dir = tempfile::tempdir().unwrap();
    let ca = CaCert::load(&fake.ca_pem().unwrap()).unwrap();
    let trusting = approle_resolver(&fake, dir.path(), |s| s.ca_cert = Some(ca));
    let system_roots = approle_resolver(&fake, dir.path(), |s| s.retry_secs = 0);

    let token = github_token(&trusting).await;
    let refused = one(&system_roots, GITHUB_TOKEN_REF).await.unwrap_err();

    assert_eq!(token, TOKEN);
    assert!(fake.addr().starts_with("https://"));
    assert_eq!(refused.reason(), FailureReason::Unavailable, "{refused}");
    assert!(
        refused.to_string().to_lowercase().contains("certificate"),
        "{refused}"
    );
}
