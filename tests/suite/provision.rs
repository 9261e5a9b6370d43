//! Provisioning jobs end to end: a ProvisionJob on
//! `provisioner:queue` for a server registered in Postgres, a real sshd as
//! that server, fixture playbooks that record which of them ran, and a fake
//! Time4VPS API for reinstalls.

use infra_service::job::{ErrorCode, JobKind, JobStatus};
use serde_json::{Value, json};
use sqlx::Connection;

use crate::helpers::*;
use crate::time4vps_fake::{FakeConfig, FakeTime4vps, TaskBehaviour};

const HANDLE: &str = "vps-hel1-01";

/// One registered server: its sshd and a worker that provisions it (in
/// `world`, dropped first), the database it is registered in, and the
/// worker's `$TMPDIR`, where every job's private directory lives.
struct Registered {
    world: World,
    db: TestDb,
    tmp: tempfile::TempDir,
}

#[derive(Default)]
struct Options {
    /// Register the server on this port instead of the sshd's.
    port: Option<u16>,
    provider: Option<(String, String)>,
    worker: Vec<(&'static str, Value)>,
    env: Vec<(&'static str, String)>,
}

/// The text of the provision result as stored, for scans of what was
/// published.
async fn stored_result(server: &Registered, request_id: &str) -> String {
    let queue = &server.world.queue;
    let stored = queue.result_text(JobKind::Provision, request_id).await;
    stored.unwrap_or_else(|| panic!("no result stored for {request_id}"))
}

async fn registered(options: Options) -> Registered {
    let redis = TestRedis::new().await;
    let db = TestDb::new().await;
    let host = TestHost::start().await;
    let port = options.port.unwrap_or(host.port()).to_string();
    let mut add = vec![
        "add",
        HANDLE,
        "--address",
        host.address(),
        "--port",
        &port,
        "--user",
        host.user(),
        "--key-ref",
        SSH_KEY_REF,
    ]
    .into_iter()
    .map(str::to_owned)
    .collect::<Vec<_>>();
    if let Some((provider, id)) = &options.provider {
        add.extend([
            "--provider".into(),
            provider.clone(),
            "--provider-id".into(),
            id.clone(),
        ]);
    }
    db.servers_cli(&add).await;
    record_status_changes(&db).await;

    // Short: ssh ControlPath sockets live below it (108-byte limit).
    let tmp = tempfile::Builder::new()
        .prefix("iw")
        .tempdir_in("/tmp")
        .unwrap();
    let world = World::start(host, redis, |mut worker| {
        worker = worker
            .postgres_url(db.url())
            .set("ansible.provision_playbook", "provision_setup.yml")
            .set("ansible.recovery_playbook", "provision_recovery.yml")
            .env("TMPDIR", tmp.path().to_str().unwrap());
        for (key, value) in options.worker {
            worker = worker.set(key, value);
        }
        for (name, value) in options.env {
            worker = worker.env(name, value);
        }
        worker
    })
    .await;
    Registered { world, db, tmp }
}

/// A trigger in the test's own database logs every status the worker writes.
async fn record_status_changes(db: &TestDb) {
    let mut conn = db.connect().await;
    for statement in [
        "CREATE TABLE status_log (id serial PRIMARY KEY, handle text, status text, last_error text)",
        "CREATE FUNCTION log_status() RETURNS trigger AS $$ BEGIN
           INSERT INTO status_log (handle, status, last_error) VALUES (NEW.handle, NEW.status, NEW.last_error);
           RETURN NEW; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER servers_status AFTER UPDATE OF status ON servers
           FOR EACH ROW EXECUTE FUNCTION log_status()",
    ] {
        sqlx::query(statement).execute(&mut conn).await.unwrap();
    }
    conn.close().await.unwrap();
}

async fn statuses(db: &TestDb) -> Vec<String> {
    let mut conn = db.connect().await;
    sqlx::query_scalar("SELECT status FROM status_log ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

async fn server_row(db: &TestDb) -> (String, Option<String>, Option<String>) {
    let mut conn = db.connect().await;
    sqlx::query_as("SELECT status, last_error, host_key FROM servers WHERE handle = $1")
        .bind(HANDLE)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// The lines the fixture playbooks appended on the target.
fn provision_log(host: &TestHost) -> Vec<String> {
    std::fs::read_to_string(host.out_dir().join("provision.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn leftovers(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn a_reachable_server_is_set_up_and_becomes_ready() {
    let server = registered(Options::default()).await;
    let request_id = unique_request_id("prov");

    let result = server
        .world
        .provision(&json!({"request_id": request_id, "server_handle": HANDLE}))
        .await;

    assert_eq!(result.status, JobStatus::Success, "{result:#?}");
    assert_eq!(result.job, JobKind::Provision);
    assert_eq!(result.error, None);
    assert_eq!(result.field("server_handle"), HANDLE);
    assert_eq!(result.field("server_status"), "ready");
    assert!(result.stats.is_some(), "{result:#?}");
    assert_eq!(statuses(&server.db).await, ["provisioning", "ready"]);
    assert_eq!(
        provision_log(&server.world.host),
        [format!("setup {request_id} key")]
    );
    let (status, last_error, host_key) = server_row(&server.db).await;
    assert_eq!((status.as_str(), last_error), ("ready", None));
    let pinned = host_key.expect("the first provision pins the host key");
    assert!(
        pinned.contains(
            server
                .world
                .host
                .host_public_key()
                .split(' ')
                .nth(1)
                .unwrap()
        )
    );
    assert!(
        leftovers(server.tmp.path()).is_empty(),
        "{:?}",
        leftovers(server.tmp.path())
    );
}

#[tokio::test]
async fn an_unreachable_server_is_tried_four_times_with_growing_gaps_then_marked_unreachable() {
    // A loopback port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = registered(Options {
        port: Some(closed),
        worker: vec![
            ("ssh.retry_base_ms", json!(150)),
            ("ssh.retry_max_ms", json!(5000)),
        ],
        ..Options::default()
    })
    .await;
    let request_id = unique_request_id("unreach");

    let result = server
        .world
        .provision(&json!({"request_id": request_id, "server_handle": HANDLE}))
        .await;

    assert_eq!(result.status, JobStatus::Failed);
    assert_eq!(
        result.code(),
        Some(ErrorCode::SshUnreachable),
        "{result:#?}"
    );
    assert_eq!(result.detail("reason"), "refused");
    assert_eq!(result.field("server_status"), "unreachable");
    let attempts = result.detail("attempts").as_array().unwrap();
    assert_eq!(attempts.len(), 4, "{result:#?}");
    let times: Vec<chrono::DateTime<chrono::FixedOffset>> = attempts
        .iter()
        .map(|a| chrono::DateTime::parse_from_rfc3339(a["at"].as_str().unwrap()).unwrap())
        .collect();
    let gaps: Vec<i64> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).num_milliseconds())
        .collect();
    assert!(
        gaps[0] >= 150 && gaps[1] >= 300 && gaps[2] >= 600,
        "gaps {gaps:?}"
    );
    assert!(gaps[0] < gaps[1] && gaps[1] < gaps[2], "gaps {gaps:?}");
    assert_eq!(statuses(&server.db).await, ["provisioning", "unreachable"]);
    let (_, last_error, _) = server_row(&server.db).await;
    assert!(last_error.unwrap().contains("connection refused"));
    let published = server.world.queue.provision_result_json(&request_id).await;
    let published = published.expect("a published result");
    assert_eq!(
        published.get("stats"),
        None,
        "absent, the playbook never started: {published:#}"
    );
    assert!(provision_log(&server.world.host).is_empty());
    assert!(
        leftovers(server.tmp.path()).is_empty(),
        "{:?}",
        leftovers(server.tmp.path())
    );
}

#[tokio::test]
async fn an_unknown_handle_and_contradicting_flags_are_refused() {
    let server = registered(Options::default()).await;
    let unknown = unique_request_id("unknown");
    let both = unique_request_id("both");

    let not_found = server
        .world
        .provision(&json!({"request_id": unknown, "server_handle": "vps-nowhere-9"}))
        .await;
    let invalid = server
        .world
        .provision(&json!({
            "request_id": both, "server_handle": HANDLE,
            "force_reinstall": true, "is_recovery": true,
        }))
        .await;

    assert_eq!(
        not_found.code(),
        Some(ErrorCode::ServerNotFound),
        "{not_found:#?}"
    );
    assert_eq!(not_found.field("server_handle"), "vps-nowhere-9");
    assert_eq!(
        invalid.code(),
        Some(ErrorCode::InvalidPayload),
        "{invalid:#?}"
    );
    let dead = server.world.queue.dead_letters().await;
    assert!(dead.iter().any(|d| d["request_id"] == both), "{dead:?}");
    assert!(
        statuses(&server.db).await.is_empty(),
        "nothing touched the server"
    );
    assert!(provision_log(&server.world.host).is_empty());
}

#[tokio::test]
async fn a_recovery_runs_the_recovery_playbook_not_the_setup() {
    let server = registered(Options::default()).await;
    let request_id = unique_request_id("recover");

    let result = server
        .world
        .provision(&json!({"request_id": request_id, "server_handle": HANDLE, "is_recovery": true}))
        .await;

    assert_eq!(result.status, JobStatus::Success, "{result:#?}");
    assert_eq!(
        provision_log(&server.world.host),
        [format!("recovery {request_id} key")]
    );
    assert_eq!(statuses(&server.db).await, ["recovering", "ready"]);
}

fn time4vps_options(fake: &FakeTime4vps, config: &FakeConfig) -> Options {
    Options {
        provider: Some(("time4vps".into(), "42".into())),
        worker: vec![
            ("time4vps.base_url", json!(fake.base_url())),
            ("time4vps.username_ref", json!("env:T4_USER")),
            ("time4vps.password_ref", json!("env:T4_PASSWORD")),
            ("time4vps.os", json!("debian-12-x86_64")),
            ("time4vps.poll_interval_secs", json!(1)),
            ("time4vps.reinstall_deadline_secs", json!(3)),
            ("provision.reinstall_ssh_wait_secs", json!(2)),
        ],
        env: vec![
            ("T4_USER", config.username.clone()),
            ("T4_PASSWORD", config.password.clone()),
        ],
        ..Options::default()
    }
}

#[tokio::test]
async fn a_forced_reinstall_rebuilds_through_time4vps_then_sets_up() {
    let config = FakeConfig::default();
    let fake = FakeTime4vps::start(config.clone()).await;
    let server = registered(time4vps_options(&fake, &config)).await;
    let request_id = unique_request_id("reinstall");

    let result = server
        .world
        .provision(
            &json!({"request_id": request_id, "server_handle": HANDLE, "force_reinstall": true}),
        )
        .await;

    assert_eq!(result.status, JobStatus::Success, "{result:#?}");
    let reinstalls = fake.reinstalls();
    assert_eq!(reinstalls.len(), 1);
    assert_eq!(reinstalls[0].path, "/api/server/42/reinstall");
    assert_eq!(
        reinstalls[0].auth_user.as_deref(),
        Some(config.username.as_str())
    );
    assert!(reinstalls[0].auth_ok);
    let body = reinstalls[0].body.clone().unwrap();
    assert_eq!(body["os"], "debian-12-x86_64");
    assert!(
        body["ssh_key"]
            .as_str()
            .unwrap()
            .starts_with("ssh-ed25519 ")
    );
    assert!(fake.task_polls() >= 2, "polled until done");
    assert_eq!(
        statuses(&server.db).await,
        ["reinstalling", "provisioning", "ready"]
    );
    assert_eq!(
        provision_log(&server.world.host),
        [format!("setup {request_id} key")]
    );
    let stored = stored_result(&server, &request_id).await;
    assert!(!stored.contains(&config.password), "{stored}");
}

#[tokio::test]
async fn wrong_api_credentials_are_a_provider_error_naming_wronglogin() {
    let config = FakeConfig::default();
    let fake = FakeTime4vps::start(config.clone()).await;
    let mut options = time4vps_options(&fake, &config);
    options.env.retain(|(name, _)| *name != "T4_PASSWORD");
    options.env.push(("T4_PASSWORD", "not-the-password".into()));
    let server = registered(options).await;
    let request_id = unique_request_id("wronglogin");

    let result = server
        .world
        .provision(
            &json!({"request_id": request_id, "server_handle": HANDLE, "force_reinstall": true}),
        )
        .await;

    assert_eq!(result.code(), Some(ErrorCode::ProviderError), "{result:#?}");
    assert!(
        result.message().unwrap().contains("wronglogin"),
        "{result:#?}"
    );
    let stored = stored_result(&server, &request_id).await;
    assert!(!stored.contains("not-the-password"), "{stored}");
    assert_eq!(result.field("server_status"), "failed");
    assert_eq!(statuses(&server.db).await, ["reinstalling", "failed"]);
    assert!(
        provision_log(&server.world.host).is_empty(),
        "setup never ran"
    );
    assert!(
        leftovers(server.tmp.path()).is_empty(),
        "{:?}",
        leftovers(server.tmp.path())
    );
}

#[tokio::test]
async fn a_reinstall_task_that_never_completes_is_a_provider_error() {
    let config = FakeConfig {
        task: TaskBehaviour::NeverCompletes,
        ..FakeConfig::default()
    };
    let fake = FakeTime4vps::start(config.clone()).await;
    let server = registered(time4vps_options(&fake, &config)).await;
    let request_id = unique_request_id("hung");

    let result = server
        .world
        .provision(
            &json!({"request_id": request_id, "server_handle": HANDLE, "force_reinstall": true}),
        )
        .await;

    assert_eq!(result.code(), Some(ErrorCode::ProviderError), "{result:#?}");
    assert!(fake.task_polls() >= 2, "it kept polling until the deadline");
    assert_eq!(result.field("server_status"), "failed");
    assert!(
        provision_log(&server.world.host).is_empty(),
        "setup never ran"
    );
    assert!(
        leftovers(server.tmp.path()).is_empty(),
        "{:?}",
        leftovers(server.tmp.path())
    );
}

#[tokio::test]
async fn a_changed_host_key_fails_with_host_key_mismatch_until_an_operator_resets_it() {
    let mut server = registered(Options::default()).await;
    let first = unique_request_id("pin");
    let second = unique_request_id("mitm");
    let third = unique_request_id("reset");
    let pinned = server
        .world
        .provision(&json!({"request_id": first, "server_handle": HANDLE}))
        .await;
    assert_eq!(pinned.status, JobStatus::Success, "{pinned:#?}");

    server.world.host.restart_with_new_host_key().await;
    let refused = server
        .world
        .provision(&json!({"request_id": second, "server_handle": HANDLE}))
        .await;
    server.db.servers_cli(&["reset-host-key", HANDLE]).await;
    let accepted = server
        .world
        .provision(&json!({"request_id": third, "server_handle": HANDLE}))
        .await;

    assert_eq!(
        refused.code(),
        Some(ErrorCode::HostKeyMismatch),
        "{refused:#?}"
    );
    assert_eq!(refused.field("server_status"), "failed");
    assert_eq!(accepted.status, JobStatus::Success, "{accepted:#?}");
    assert_eq!(
        provision_log(&server.world.host),
        [format!("setup {first} key"), format!("setup {third} key")],
        "the playbook never ran against the impostor"
    );
    let (_, _, host_key) = server_row(&server.db).await;
    let new_key = server.world.host.host_public_key();
    assert!(
        host_key
            .unwrap()
            .contains(new_key.split(' ').nth(1).unwrap())
    );
}
