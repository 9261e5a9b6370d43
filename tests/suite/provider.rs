//! The Time4VPS client against the fake API over loopback HTTP.

use std::time::Duration;

use infra_service::provider::time4vps::{
    BaseUrl, Client, PollPolicy, ProviderError, TaskId, TaskState,
};
use secrecy::SecretString;
use serde_json::json;

use crate::time4vps_fake::{FakeConfig, FakeTime4vps, TaskBehaviour};

const SERVER_ID: u64 = 748457;
const OS: &str = "ubuntu-22.04-x86_64";
const SSH_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests infra-service";

/// Milliseconds, so a never-completing task fails the test quickly.
const FAST_POLL: PollPolicy = PollPolicy {
    interval: Duration::from_millis(20),
    deadline: Duration::from_secs(5),
};

fn client_for(fake: &FakeTime4vps) -> Client {
    client_with(fake, &fake.config().password, Duration::from_secs(5))
}

fn client_with(fake: &FakeTime4vps, password: &str, request_timeout: Duration) -> Client {
    Client::new(
        BaseUrl::parse(&fake.base_url()).unwrap(),
        SecretString::from(fake.config().username.clone()),
        SecretString::from(password.to_owned()),
        request_timeout,
    )
    .unwrap()
}

#[tokio::test]
async fn a_reinstall_sends_basic_auth_the_os_and_the_ssh_key_and_returns_the_task_id() {
    // Arrange
    let fake = FakeTime4vps::start(FakeConfig::default()).await;
    let client = client_for(&fake);

    // Act
    let task_id = client.reinstall(SERVER_ID, OS, SSH_KEY).await.unwrap();

    // Assert
    assert_eq!(task_id, TaskId(fake.config().first_task_id));
    let reinstalls = fake.reinstalls();
    assert_eq!(reinstalls.len(), 1);
    let request = &reinstalls[0];
    assert_eq!(request.path, format!("/api/server/{SERVER_ID}/reinstall"));
    assert_eq!(
        request.auth_user.as_deref(),
        Some(fake.config().username.as_str())
    );
    assert!(request.auth_ok);
    assert_eq!(request.body, Some(json!({"os": OS, "ssh_key": SSH_KEY})));
}

#[tokio::test]
async fn the_task_goes_from_queued_to_running_to_completed() {
    let fake = FakeTime4vps::start(FakeConfig {
        task: TaskBehaviour::CompletesAfterPolls(3),
        ..FakeConfig::default()
    })
    .await;
    let client = client_for(&fake);
    let task_id = client.reinstall(SERVER_ID, OS, SSH_KEY).await.unwrap();

    let mut states = Vec::new();
    for _ in 0..3 {
        states.push(client.task(SERVER_ID, task_id).await.unwrap());
    }

    assert_eq!(
        states,
        [TaskState::Queued, TaskState::Running, TaskState::Completed]
    );
}

#[tokio::test]
async fn reinstall_and_wait_polls_until_the_task_completes() {
    let fake = FakeTime4vps::start(FakeConfig {
        task: TaskBehaviour::CompletesAfterPolls(4),
        ..FakeConfig::default()
    })
    .await;
    let client = client_for(&fake);

    client
        .reinstall_and_wait(SERVER_ID, OS, SSH_KEY, FAST_POLL)
        .await
        .unwrap();

    assert_eq!(fake.task_polls(), 4);
    let polls: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    assert!(polls.iter().all(|r| r.path
        == format!(
            "/api/server/{SERVER_ID}/task/{}",
            fake.config().first_task_id
        )
        && r.auth_ok));
}

#[tokio::test]
async fn polling_goes_on_after_a_transient_bad_gateway() {
    let fake = FakeTime4vps::start(FakeConfig {
        task: TaskBehaviour::CompletesAfterPolls(2),
        failing_polls: 2,
        ..FakeConfig::default()
    })
    .await;
    let client = client_for(&fake);

    client
        .reinstall_and_wait(SERVER_ID, OS, SSH_KEY, FAST_POLL)
        .await
        .unwrap();

    assert_eq!(fake.task_polls(), 4);
}

#[tokio::test]
async fn wrong_credentials_are_a_provider_error_carrying_wronglogin() {
    let fake = FakeTime4vps::start(FakeConfig::default()).await;
    let client = client_with(&fake, "not-the-password", Duration::from_secs(5));

    let error = client
        .reinstall_and_wait(SERVER_ID, OS, SSH_KEY, FAST_POLL)
        .await
        .unwrap_err();

    assert!(
        matches!(&error, ProviderError::Api { messages, .. } if messages == &["wronglogin"]),
        "{error:?}"
    );
    assert!(
        error.message().contains("wronglogin"),
        "{}",
        error.message()
    );
    assert!(!fake.requests()[0].auth_ok);
    assert_eq!(fake.task_polls(), 0);
}

#[tokio::test]
async fn an_http_500_is_a_provider_error_carrying_the_status() {
    let fake = FakeTime4vps::start(FakeConfig {
        reinstall_status: Some(500),
        ..FakeConfig::default()
    })
    .await;
    let client = client_for(&fake);

    let error = client
        .reinstall_and_wait(SERVER_ID, OS, SSH_KEY, FAST_POLL)
        .await
        .unwrap_err();

    assert!(
        matches!(&error, ProviderError::Status { status: 500, .. }),
        "{error:?}"
    );
    assert!(error.message().contains("500"), "{}", error.message());
    // A reinstall is never sent twice.
    assert_eq!(fake.reinstalls().len(), 1);
}

#[tokio::test]
async fn a_task_that_never_completes_ends_in_a_deadline_error() {
    let fake = FakeTime4vps::start(FakeConfig {
        task: TaskBehaviour::NeverCompletes,
        ..FakeConfig::default()
    })
    .await;
    let client = client_for(&fake);
    let poll = PollPolicy {
        interval: Duration::from_millis(20),
        deadline: Duration::from_millis(200),
    };

    let started = std::time::Instant::now();
    let error = client
        .reinstall_and_wait(SERVER_ID, OS, SSH_KEY, poll)
        .await
        .unwrap_err();

    assert!(
        matches!(&error, ProviderError::Deadline { .. }),
        "{error:?}"
    );
    // Stopped at the deadline, not the reinstall's whole wait (a bound for
    // a loaded machine, not a speed check).
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(fake.task_polls() >= 3, "polled {} times", fake.task_polls());
    assert!(
        error.message().contains("did not complete"),
        "{}",
        error.message()
    );
}

#[tokio::test]
async fn a_slow_answer_is_a_request_timeout() {
    let fake = FakeTime4vps::start(FakeConfig {
        answer_delay: Duration::from_millis(500),
        ..FakeConfig::default()
    })
    .await;
    let client = client_with(&fake, &fake.config().password, Duration::from_millis(100));

    let error = client.reinstall(SERVER_ID, OS, SSH_KEY).await.unwrap_err();

    assert!(
        matches!(&error, ProviderError::RequestTimeout(_)),
        "{error:?}"
    );
}

#[tokio::test]
async fn an_unknown_task_is_a_failed_task() {
    let fake = FakeTime4vps::start(FakeConfig::default()).await;
    let client = client_for(&fake);

    let error = client.task(SERVER_ID, TaskId(1)).await.unwrap_err();

    assert!(
        matches!(
            &error,
            ProviderError::TaskFailed {
                task_id: TaskId(1),
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.message().contains("Invalid task ID"));
}

#[tokio::test]
async fn no_error_or_debug_text_contains_the_password() {
    let fake = FakeTime4vps::start(FakeConfig {
        task: TaskBehaviour::NeverCompletes,
        failing_polls: 1000,
        ..FakeConfig::default()
    })
    .await;
    let password = fake.config().password.clone();
    let wrong_password = "wrong-password-Kx93".to_owned();
    let client = client_for(&fake);
    let rejected = client_with(&fake, &wrong_password, Duration::from_secs(5));
    let slow_poll = PollPolicy {
        interval: Duration::from_millis(20),
        deadline: Duration::from_millis(100),
    };

    let mut errors = vec![
        rejected
            .reinstall(SERVER_ID, OS, SSH_KEY)
            .await
            .unwrap_err(),
        client
            .reinstall_and_wait(SERVER_ID, OS, SSH_KEY, slow_poll)
            .await
            .unwrap_err(),
        client.task(SERVER_ID, TaskId(1)).await.unwrap_err(),
    ];
    let unreachable = Client::new(
        BaseUrl::parse("http://127.0.0.1:1/api/").unwrap(),
        SecretString::from(fake.config().username.clone()),
        SecretString::from(password.clone()),
        Duration::from_secs(2),
    )
    .unwrap();
    errors.push(
        unreachable
            .reinstall(SERVER_ID, OS, SSH_KEY)
            .await
            .unwrap_err(),
    );

    let mut texts = vec![format!("{client:?}"), format!("{rejected:?}")];
    for error in &errors {
        texts.push(error.to_string());
        texts.push(error.message());
        texts.push(format!("{error:?}"));
    }
    for text in &texts {
        assert!(!text.contains(&password), "password leaked: {text}");
        assert!(!text.contains(&wrong_password), "password leaked: {text}");
        assert!(!text.contains("Authorization"), "header leaked: {text}");
        assert!(!text.contains("Basic "), "header leaked: {text}");
    }
}
