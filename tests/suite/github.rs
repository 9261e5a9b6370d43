//! The GitHub Actions secrets client against the fake GitHub API over
//! loopback: with a token and as an App (installation tokens cached and
//! renewed), created and updated secrets opened with PyNaCl (libsodium),
//! refusals, rate limits and outages. No worker, no playbook.

use std::time::{Duration, Instant};

use infra_service::config::{GithubApp, GithubSettings};
use infra_service::github::{ApiUrl, GithubError, PartialWrite, SecretsClient, Written};
use infra_service::job::RepoName;
use infra_service::secrets::Resolver;
use secrecy::SecretString;

use crate::github_fake::{Failure, FakeApp, FakeConfig, FakeGithub, Role};

const REPO: &str = "acme/shop";
const SSH_KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA-ci-key-Qx9\n-----END OPENSSH PRIVATE KEY-----\n";

/// The values a CI setup writes, one of them multi-line.
fn secrets() -> Vec<(&'static str, SecretString)> {
    vec![
        ("DEPLOY_HOST", SecretString::from("203.0.113.10")),
        ("DEPLOY_SSH_KEY", SecretString::from(SSH_KEY)),
    ]
}

fn settings(fake: &FakeGithub, app: Option<GithubApp>, retry_secs: u64) -> GithubSettings {
    GithubSettings {
        api_url: ApiUrl::parse(&fake.api_url()).unwrap(),
        app,
        timeout_secs: 5,
        retry_secs,
    }
}

fn client(settings: &GithubSettings) -> SecretsClient {
    SecretsClient::new(settings, Resolver::new(std::env::temp_dir())).unwrap()
}

fn repo(name: &str) -> RepoName {
    RepoName::parse(name).unwrap()
}

fn token(fake: &FakeGithub) -> SecretString {
    SecretString::from(fake.config().token.clone())
}

/// Writes `secrets()` to the shop with the fake's token.
async fn write(client: &SecretsClient, fake: &FakeGithub) -> Result<Vec<Written>, PartialWrite> {
    client
        .write_secrets(&repo(REPO), &token(fake), &secrets())
        .await
}

/// Opens a value the fake stored with PyNaCl: what GitHub would read.
fn open_with_pynacl(fake: &FakeGithub, name: &str) -> String {
    fake.open_secret(REPO, name)
}

/// Neither an error's text nor any URL the fake saw holds a credential or
/// a value.
fn assert_nothing_leaks(fake: &FakeGithub, error: Option<&GithubError>) {
    let mut needles = vec![fake.config().token.clone(), "203.0.113.10".to_owned()];
    needles.push("ci-key-Qx9".to_owned());
    needles.extend(fake.credentials_seen());
    let error = error.map(|e| format!("{e} {e:?}")).unwrap_or_default();
    for needle in &needles {
        assert!(!error.contains(needle.as_str()), "{error}");
        for request in fake.requests() {
            assert!(!request.uri.contains(needle.as_str()), "{}", request.uri);
        }
    }
}

/// A fake GitHub that knows an App whose tokens live `token_lifetime`, and
/// our side of that App, its key a `file:` reference in the returned dir.
async fn app_fake(token_lifetime: Duration) -> (tempfile::TempDir, FakeGithub, GithubApp) {
    let dir = tempfile::tempdir().unwrap();
    let (fake_app, app) = app_pair(dir.path(), token_lifetime);
    let fake = FakeGithub::start(FakeConfig {
        app: Some(fake_app),
        ..FakeConfig::default()
    })
    .await;
    (dir, fake, app)
}

/// An App the fake knows, its key as a `file:` reference in `dir`.
fn app_pair(dir: &std::path::Path, token_lifetime: Duration) -> (FakeApp, GithubApp) {
    let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
    std::fs::write(dir.join("app.pem"), rsa.private_key_to_pem().unwrap()).unwrap();
    let fake = FakeApp {
        app_id: 918273,
        public_pem: rsa.public_key_to_pem().unwrap(),
        token_lifetime,
    };
    let ours = GithubApp {
        app_id: 918273,
        private_key_ref: "file:app.pem".into(),
    };
    (fake, ours)
}

#[tokio::test]
async fn secrets_written_with_a_token_open_with_libsodium_and_a_rewrite_updates_them() {
    let fake = FakeGithub::start(FakeConfig::default()).await;
    let client = client(&settings(&fake, None, 10));

    let first = write(&client, &fake).await.unwrap();
    let second = write(&client, &fake).await.unwrap();

    assert_eq!(first, [Written::Created, Written::Created]);
    assert_eq!(second, [Written::Updated, Written::Updated]);
    assert_eq!(open_with_pynacl(&fake, "DEPLOY_HOST"), "203.0.113.10");
    assert_eq!(open_with_pynacl(&fake, "DEPLOY_SSH_KEY"), SSH_KEY);
    let expected_auth = format!("Bearer {}", fake.config().token);
    for request in fake.requests() {
        assert_eq!(
            request.authorization.as_deref(),
            Some(expected_auth.as_str())
        );
        assert_eq!(
            request.accept.as_deref(),
            Some("application/vnd.github+json")
        );
        assert_eq!(request.api_version.as_deref(), Some("2022-11-28"));
    }
    let answered: Vec<(String, u16)> = fake
        .requests()
        .iter()
        .map(|r| (r.method.clone(), r.status))
        .collect();
    let expected = [
        ("GET", 200),
        ("PUT", 201),
        ("PUT", 201),
        ("GET", 200),
        ("PUT", 204),
        ("PUT", 204),
    ];
    let expected: Vec<(String, u16)> = expected.iter().map(|(m, s)| (m.to_string(), *s)).collect();
    assert_eq!(answered, expected);
    assert_nothing_leaks(&fake, None);
}

#[tokio::test]
async fn an_app_mints_one_installation_token_and_reuses_it_while_it_is_fresh() {
    let (dir, fake, app) = app_fake(Duration::from_secs(3600)).await;
    let settings = settings(&fake, Some(app), 10);
    let client = SecretsClient::new(&settings, Resolver::new(dir.path().to_owned())).unwrap();
    // The job's token only shows that the job may push to the repository.
    let job_token = token(&fake);

    client
        .write_secrets(&repo(REPO), &job_token, &secrets())
        .await
        .unwrap();
    client
        .write_secrets(&repo(REPO), &job_token, &secrets())
        .await
        .unwrap();

    assert_eq!(fake.tokens_minted(), 1);
    assert_eq!(open_with_pynacl(&fake, "DEPLOY_SSH_KEY"), SSH_KEY);
    let requests = fake.requests();
    let with_job_token: Vec<&str> = requests
        .iter()
        .filter(|r| r.authorization.as_deref() == Some(&format!("Bearer {}", fake.config().token)))
        .map(|r| r.uri.as_str())
        .collect();
    assert_eq!(with_job_token, ["/repos/acme/shop", "/repos/acme/shop"]);
    assert_eq!(requests[0].uri, "/repos/acme/shop");
    assert_eq!(requests[1].uri, "/repos/acme/shop/installation");
    assert_eq!(requests[2].uri, "/app/installations/4242/access_tokens");
    assert!(requests.iter().all(|r| r.status < 300), "{requests:?}");
    assert_nothing_leaks(&fake, None);
}

#[tokio::test]
async fn an_installation_token_near_its_expiry_is_renewed() {
    let dir = tempfile::tempdir().unwrap();
    // Two minutes: inside the client's renewal margin from the start.
    let (fake_app, app) = app_pair(dir.path(), Duration::from_secs(120));
    let fake = FakeGithub::start(FakeConfig {
        app: Some(fake_app),
        ..FakeConfig::default()
    })
    .await;
    let settings = settings(&fake, Some(app), 10);
    let client = SecretsClient::new(&settings, Resolver::new(dir.path().to_owned())).unwrap();

    for _ in 0..2 {
        write(&client, &fake).await.unwrap();
    }

    assert_eq!(fake.tokens_minted(), 2);
}

#[tokio::test]
async fn a_slow_installation_lookup_for_one_repository_does_not_hold_up_another() {
    let dir = tempfile::tempdir().unwrap();
    let (fake_app, app) = app_pair(dir.path(), Duration::from_secs(3600));
    let fake = FakeGithub::start(FakeConfig {
        app: Some(fake_app),
        repos: vec![REPO.to_owned(), "acme/blog".to_owned()],
        ..FakeConfig::default()
    })
    .await;
    // Long enough for the blog's whole write, however loaded the machine.
    fake.slow_down("/repos/acme/shop/installation", Duration::from_secs(4));
    let settings = settings(&fake, Some(app), 10);
    let client = SecretsClient::new(&settings, Resolver::new(dir.path().to_owned())).unwrap();

    let slow = async {
        let written = write(&client, &fake).await;
        (written, Instant::now())
    };
    let fast = async {
        // Once the shop's token is being minted: its lookup is at the fake.
        fake.received("/repos/acme/shop/installation").await;
        let written = client
            .write_secrets(&repo("acme/blog"), &token(&fake), &secrets())
            .await;
        (written, Instant::now())
    };
    let ((shop, shop_done), (blog, blog_done)) = tokio::join!(slow, fast);

    assert_eq!(blog.unwrap(), [Written::Created, Written::Created]);
    assert_eq!(shop.unwrap(), [Written::Created, Written::Created]);
    assert!(
        blog_done < shop_done,
        "the blog waited for the shop's token: it finished {:?} after the shop",
        blog_done - shop_done
    );
    assert_eq!(fake.tokens_minted(), 2);
}

#[tokio::test]
async fn concurrent_writes_to_one_repository_share_one_installation_token() {
    let (dir, fake, app) = app_fake(Duration::from_secs(3600)).await;
    // Long enough for the second write to arrive during the first's mint.
    fake.slow_down("/repos/acme/shop/installation", Duration::from_millis(500));
    let settings = settings(&fake, Some(app), 10);
    let client = SecretsClient::new(&settings, Resolver::new(dir.path().to_owned())).unwrap();

    let (shop, unused, values) = (repo(REPO), token(&fake), secrets());

    let (first, second) = tokio::join!(
        client.write_secrets(&shop, &unused, &values),
        client.write_secrets(&shop, &unused, &values),
    );

    first.unwrap();
    second.unwrap();
    assert_eq!(fake.tokens_minted(), 1);
    let count = |uri: &str| fake.requests().iter().filter(|r| r.uri == uri).count();
    assert_eq!(count("/repos/acme/shop/installation"), 1);
    assert_eq!(count("/app/installations/4242/access_tokens"), 1);
    assert_nothing_leaks(&fake, None);
}

#[tokio::test]
async fn a_token_without_secrets_write_is_forbidden_and_says_so() {
    let fake = FakeGithub::start(FakeConfig {
        secrets_write: false,
        ..FakeConfig::default()
    })
    .await;
    let client = client(&settings(&fake, None, 10));

    let e = write(&client, &fake).await.unwrap_err().error;

    assert!(matches!(e, GithubError::Forbidden { .. }), "{e:?}");
    assert!(e.to_string().contains("secrets: write"), "{e}");
    // Refusals are final: one PUT, no retry.
    assert_eq!(fake.requests().len(), 2);
    assert_nothing_leaks(&fake, Some(&e));
}

#[tokio::test]
async fn a_missing_repository_is_not_found_for_a_token_and_not_entitled_for_an_app() {
    let (dir, fake, app) = app_fake(Duration::from_secs(3600)).await;
    let with_token = client(&settings(&fake, None, 10));
    let as_app = SecretsClient::new(
        &settings(&fake, Some(app), 10),
        Resolver::new(dir.path().to_owned()),
    )
    .unwrap();

    for (client, reason) in [(with_token, "not_found"), (as_app, "not_entitled")] {
        let e = client
            .write_secrets(&repo("acme/gone"), &token(&fake), &secrets())
            .await
            .unwrap_err()
            .error;
        assert_eq!(e.reason(), reason, "{e:?}");
        assert!(e.to_string().contains("acme/gone"), "{e}");
        assert_nothing_leaks(&fake, Some(&e));
    }
    assert_eq!(fake.tokens_minted(), 0);
}

#[tokio::test]
async fn an_app_writes_only_where_the_jobs_own_token_may_push() {
    // Arrange: the App is installed on both; the job's token may push to
    // the shop but only read the blog.
    let dir = tempfile::tempdir().unwrap();
    let (fake_app, app) = app_pair(dir.path(), Duration::from_secs(3600));
    let blog = "acme/blog";
    let fake = FakeGithub::start(FakeConfig {
        app: Some(fake_app),
        repos: vec![REPO.to_owned(), blog.to_owned()],
        pat_roles: [(blog.to_owned(), Role::Read)].into(),
        ..FakeConfig::default()
    })
    .await;
    let settings = settings(&fake, Some(app), 10);
    let client = SecretsClient::new(&settings, Resolver::new(dir.path().to_owned())).unwrap();

    // Act
    let refused = client
        .write_secrets(&repo(blog), &token(&fake), &secrets())
        .await
        .unwrap_err();
    let minted_for_the_blog = fake.tokens_minted();
    let written = write(&client, &fake).await.unwrap();

    // Assert
    let e = &refused.error;
    assert!(matches!(e, GithubError::NotEntitled { .. }), "{e:?}");
    assert_eq!(e.reason(), "not_entitled");
    assert!(
        e.to_string()
            .contains("the job's GitHub token may not push to acme/blog"),
        "{e}"
    );
    assert!(refused.written.is_empty());
    assert_eq!(minted_for_the_blog, 0, "a token was minted for the blog");
    for name in ["DEPLOY_HOST", "DEPLOY_SSH_KEY"] {
        assert!(fake.secret(blog, name).is_none(), "{name} was written");
    }
    assert_eq!(written, [Written::Created, Written::Created]);
    assert_eq!(fake.open_secret(REPO, "DEPLOY_SSH_KEY"), SSH_KEY);
    assert_nothing_leaks(&fake, Some(e));
}

#[tokio::test]
async fn a_secondary_rate_limit_is_waited_out_as_retry_after_says() {
    let fake = FakeGithub::start(FakeConfig::default()).await;
    let client = client(&settings(&fake, None, 10));
    fake.fail_next(Failure::RetryAfter {
        status: 429,
        secs: 1,
    });
    fake.fail_next(Failure::RetryAfter {
        status: 403,
        secs: 1,
    });
    let started = Instant::now();

    let written = write(&client, &fake).await.unwrap();

    assert_eq!(written, [Written::Created, Written::Created]);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(open_with_pynacl(&fake, "DEPLOY_HOST"), "203.0.113.10");
}

#[tokio::test]
async fn an_exhausted_rate_limit_is_waited_out_until_its_reset() {
    let fake = FakeGithub::start(FakeConfig::default()).await;
    let client = client(&settings(&fake, None, 10));
    fake.fail_next(Failure::PrimaryLimit { secs: 1 });

    let written = write(&client, &fake).await.unwrap();

    assert_eq!(written, [Written::Created, Written::Created]);
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [403, 200, 201, 201]);
}

#[tokio::test]
async fn a_rate_limit_past_the_deadline_fails_at_once() {
    let fake = FakeGithub::start(FakeConfig::default()).await;
    let client = client(&settings(&fake, None, 5));
    fake.fail_next(Failure::RetryAfter {
        status: 429,
        secs: 3600,
    });
    let started = Instant::now();

    let e = write(&client, &fake).await.unwrap_err().error;

    assert!(matches!(e, GithubError::RateLimited { .. }), "{e:?}");
    // At once: far from the wait asked for (a bound for a loaded machine,
    // not a speed check).
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_secondary_limit_named_only_in_a_403_message_is_rate_limited_not_forbidden() {
    let fake = FakeGithub::start(FakeConfig::default()).await;
    // Shorter than the minute GitHub asks for when it names no wait.
    let client = client(&settings(&fake, None, 5));
    fake.fail_next(Failure::SecondaryLimit);
    let started = Instant::now();

    let e = write(&client, &fake).await.unwrap_err().error;

    // GitHub's "at least one minute" for a limit that names no wait.
    assert!(
        matches!(e, GithubError::RateLimited { asked, .. } if asked == Duration::from_secs(60)),
        "{e:?}"
    );
    assert!(!e.to_string().contains("secrets: write"), "{e}");
    // At once: far from the wait asked for (a bound for a loaded machine,
    // not a speed check).
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    // The wait would pass the deadline: no second try.
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [403]);
    assert_nothing_leaks(&fake, Some(&e));
}

#[tokio::test]
async fn server_errors_past_the_deadline_make_github_unavailable() {
    let fake = FakeGithub::start(FakeConfig::default()).await;
    let client = client(&settings(&fake, None, 2));
    fake.set_down(Some(502));
    let started = Instant::now();

    let e = write(&client, &fake).await.unwrap_err().error;

    assert!(matches!(e, GithubError::Unavailable { .. }), "{e:?}");
    assert!(e.to_string().contains("HTTP 502"), "{e}");
    let waited = started.elapsed();
    assert!(
        // Until the deadline, and not for ever after it (a loaded machine's
        // bound, not a speed check).
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(30),
        "{waited:?}"
    );
    assert!(fake.requests().len() > 2, "retried with backoff");
    assert_nothing_leaks(&fake, Some(&e));
}

#[tokio::test]
async fn a_passing_outage_is_retried_to_success() {
    let fake = FakeGithub::start(FakeConfig::default()).await;
    let client = client(&settings(&fake, None, 10));
    fake.fail_next(Failure::Server(503));
    fake.fail_next(Failure::Server(500));

    let written = write(&client, &fake).await.unwrap();

    assert_eq!(written, [Written::Created, Written::Created]);
}

#[tokio::test]
async fn a_wrong_token_is_unauthorized_without_echoing_it() {
    let fake = FakeGithub::start(FakeConfig::default()).await;
    let client = client(&settings(&fake, None, 10));
    let wrong = SecretString::from("ghp_wrongTokenValue55");

    let e = client
        .write_secrets(&repo(REPO), &wrong, &secrets())
        .await
        .unwrap_err()
        .error;

    assert!(matches!(e, GithubError::Unauthorized { .. }), "{e:?}");
    assert!(!format!("{e} {e:?}").contains("wrongTokenValue"), "{e}");
}

#[tokio::test]
async fn a_revoked_installation_token_fails_one_write_and_the_next_mints_anew() {
    let (dir, fake, app) = app_fake(Duration::from_secs(3600)).await;
    let settings = settings(&fake, Some(app), 10);
    let client = SecretsClient::new(&settings, Resolver::new(dir.path().to_owned())).unwrap();
    write(&client, &fake).await.unwrap();
    fake.revoke_tokens();

    let refused = write(&client, &fake).await;
    let again = write(&client, &fake).await;

    assert!(
        matches!(&refused, Err(failed) if matches!(failed.error, GithubError::Unauthorized { .. })),
        "{refused:?}"
    );
    assert_eq!(again.unwrap(), [Written::Updated, Written::Updated]);
    assert_eq!(fake.tokens_minted(), 2);
}
