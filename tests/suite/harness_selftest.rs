//! The harness checked on its own, without the worker: if these fail, the
//! deploy tests' failures say nothing about the worker.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn a_test_host_accepts_its_client_key_and_runs_commands_as_its_user() {
    // Arrange
    let host = TestHost::start().await;

    // Act
    let who = host.run_ok("id -un").await;

    // Assert
    assert_eq!(who.trim(), host.user());
    assert!(host.client_private_key_pem().contains("PRIVATE KEY"));
    assert!(host.host_public_key().starts_with("ssh-ed25519 "));
}

#[tokio::test]
async fn a_test_host_puts_its_stub_bin_dir_first_on_the_path_of_ssh_commands() {
    // Arrange
    let host = TestHost::start().await;
    let stub = host.add_stub("docker", "#!/bin/sh\necho \"stub-docker $*\"\n");

    // Act
    let found = host.run_ok("command -v docker").await;
    let said = host.run_ok("docker compose up -d").await;

    // Assert
    assert_eq!(found.trim(), stub.to_string_lossy());
    assert_eq!(said.trim(), "stub-docker compose up -d");
}

#[tokio::test]
async fn a_test_host_can_listen_on_another_loopback_address() {
    // Arrange
    let host = TestHost::start_on("127.0.0.7").await;

    // Act
    let seen = host.run_ok("echo \"$SSH_CONNECTION\"").await;

    // Assert: SSH_CONNECTION is "client_ip client_port server_ip server_port".
    let fields: Vec<&str> = seen.split_whitespace().collect();
    assert_eq!(fields[2], "127.0.0.7");
    assert_eq!(fields[3], host.port().to_string());
}

#[tokio::test]
async fn a_test_host_rejects_a_key_it_was_not_given() {
    // Arrange
    let host = TestHost::start().await;
    let other = TestHost::start().await;
    let mut args = host.ssh_args();
    let key_at = args.iter().position(|a| a == "-i").unwrap() + 1;
    args[key_at] = other.client_key_path().to_string_lossy().into_owned();

    // Act
    let out = tokio::process::Command::new("ssh")
        .args(&args)
        .arg(format!("{}@{}", host.user(), host.address()))
        .arg("true")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();

    // Assert
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
}

#[tokio::test]
async fn restarting_a_test_host_changes_its_host_key_and_keeps_its_port() {
    // Arrange
    let mut host = TestHost::start().await;
    let (old_key, port) = (host.host_public_key(), host.port());

    // Act
    host.restart_with_new_host_key().await;

    // Assert
    assert_ne!(host.host_public_key(), old_key);
    assert_eq!(host.port(), port);
    let scanned = tokio::process::Command::new("ssh-keyscan")
        .args(["-t", "ed25519", "-p", &port.to_string(), host.address()])
        .output()
        .await
        .unwrap();
    let scanned = String::from_utf8_lossy(&scanned.stdout);
    assert!(scanned.contains(&host.host_public_key()), "{scanned}");
    host.run_ok("true").await;
}

#[tokio::test]
async fn the_digest_fixture_runs_against_a_test_host_with_plain_ansible_playbook() {
    // Arrange: what the worker will do, by hand: inventory, extra vars, env.
    let host = TestHost::start().await;
    let work = tempfile::tempdir().unwrap();
    let request_id = unique_request_id("selftest");
    let token = format!("ghp_selftest{}", uuid::Uuid::new_v4().simple());
    let inventory = work.path().join("inventory.ini");
    std::fs::write(
        &inventory,
        format!(
            "target ansible_host={} ansible_port={} ansible_user={} ansible_ssh_private_key_file={} \
             ansible_ssh_common_args='-o UserKnownHostsFile={}'\n",
            host.address(),
            host.port(),
            host.user(),
            host.client_key_path().display(),
            work.path().join("known_hosts").display()
        ),
    )
    .unwrap();
    let vars = json!({
        "request_id": request_id,
        "project_id": "6f1c2a9e-2b7d-4d8e-9a51-0c7e5b8f3a10",
        "project_name": "my-project",
        "repo_full_name": "acme/my-project",
        "branch": "main",
        "server_ip": host.address(),
        "modules": ["backend", "tg_bot"],
        "service_port": 8080,
    });
    let vars_file = work.path().join("vars.json");
    std::fs::write(&vars_file, vars.to_string()).unwrap();

    // Act
    let out = tokio::process::Command::new(ansible_playbook_bin())
        .arg("-i")
        .arg(&inventory)
        .arg("-e")
        .arg(format!("@{}", vars_file.display()))
        .arg(fixtures_dir().join("deploy_digest.yml"))
        .current_dir(fixtures_dir())
        .env("ANSIBLE_CONFIG", fixtures_dir().join("ansible.cfg"))
        .env("GITHUB_TOKEN", &token)
        .env("PROJECT_ENV", "A=1\n")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run ansible-playbook");

    // Assert
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains(&token), "the fixture printed the token");
    let record = digest_record(&host, &request_id).expect("the playbook wrote its record");
    assert_eq!(record["token_sha256"], sha256_hex(&token));
    assert_eq!(record["project_env_sha256"], sha256_hex("A=1\n"));
    assert_eq!(record["vars"], vars);
    let stub_first = format!("{}:", host.stub_bin_dir().display());
    assert!(
        record["target_path"]
            .as_str()
            .unwrap()
            .starts_with(&stub_first),
        "modules run with PATH {}",
        record["target_path"]
    );
}

#[tokio::test]
async fn the_process_scan_finds_a_marker_in_a_command_line_and_an_environment() {
    // Arrange
    let marker = format!("marker{}", uuid::Uuid::new_v4().simple());
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", "sleep 30", &marker])
        .env("SOME_SECRET", &marker)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap() as i32;

    // Act: poll, since the child may not have exec'd `sh` yet.
    let marker = marker.as_str();
    let scan = move || {
        let in_argv: Vec<i32> = all_cmdlines()
            .into_iter()
            .filter(|(_, c)| c.contains(marker))
            .map(|(p, _)| p)
            .collect();
        (in_argv, pids_with_environ_containing(marker))
    };
    let found = move || async move {
        let (in_argv, in_env) = scan();
        (in_argv.contains(&pid) && in_env.contains(&pid)).then_some(())
    };
    eventually(Duration::from_secs(2), found).await;
    let (in_argv, in_env) = scan();

    // Assert
    assert!(in_argv.contains(&pid), "{in_argv:?}");
    assert!(in_env.contains(&pid), "{in_env:?}");
    child.kill().await.unwrap();
}

#[tokio::test]
async fn a_queue_writes_under_its_own_prefix_and_cleans_up_after_its_test() {
    // Arrange
    let redis = TestRedis::new().await;
    let other = TestRedis::new().await;
    let queue = redis.queue();

    // Act
    let id = queue.enqueue_deploy(&json!({"request_id": "x"})).await;
    let raw_id = queue.enqueue_raw(b"\xffnot utf-8").await;

    // Assert
    assert_ne!(redis.prefix(), other.prefix());
    let entries = queue.stream_entries("ansible:deploy:queue").await;
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].0, id);
    assert_eq!(entries[0].1["payload"], r#"{"request_id":"x"}"#);
    assert_eq!(entries[1].0, raw_id);
    assert!(
        other
            .queue()
            .stream_entries("ansible:deploy:queue")
            .await
            .is_empty()
    );
    let mut conn = other.connection();
    let key = queue.key("ansible:deploy:queue");
    drop(redis);
    let exists: bool = redis::AsyncCommands::exists(&mut conn, &key).await.unwrap();
    assert!(!exists, "{key} outlived its TestRedis");
}

#[tokio::test]
async fn a_test_db_is_a_fresh_database_of_its_own() {
    // Arrange
    let db = TestDb::new().await;
    let other = TestDb::new().await;

    // Act
    let mut conn = db.connect().await;
    let (name,): (String,) = sqlx::query_as("SELECT current_database()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let (tables,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();

    // Assert
    assert_eq!(name, db.name());
    assert_ne!(db.name(), other.name());
    assert_eq!(tables, 0);
    tokio::time::timeout(Duration::from_secs(5), sqlx::Connection::close(conn))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn an_own_redis_restarts_empty_on_the_same_port() {
    // Arrange
    let mut own = OwnRedis::new().await;
    let url = own.url();
    let redis = TestRedis::on(&url).await;
    let queue = redis.queue();
    queue.enqueue_raw("before").await;

    // Act
    own.stop().await;
    let mut conn = redis.connection();
    let while_down: redis::RedisResult<i64> = redis::AsyncCommands::exists(&mut conn, "x").await;
    own.start().await;

    // Assert: same URL, nothing kept, and the queue's connection came back.
    assert!(while_down.is_err(), "redis answered while stopped");
    assert_eq!(own.url(), url);
    assert!(
        queue
            .stream_entries("ansible:deploy:queue")
            .await
            .is_empty(),
        "the stream survived a restart without persistence"
    );
    queue.enqueue_raw("after").await;
    assert_eq!(queue.stream_entries("ansible:deploy:queue").await.len(), 1);
}

#[tokio::test]
async fn an_own_postgres_restarts_on_the_same_port_with_its_data() {
    // Arrange
    let mut pg = OwnPostgres::new().await;
    let url = pg.url();
    let mut conn = pg.connect().await;
    for sql in ["CREATE TABLE kept (n int)", "INSERT INTO kept VALUES (7)"] {
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }

    // Act
    pg.stop().await;
    let while_down = sqlx::query("SELECT 1").execute(&mut conn).await;
    pg.start().await;

    // Assert
    assert!(while_down.is_err(), "postgres answered while stopped");
    assert_eq!(pg.url(), url);
    let mut conn = pg.connect().await;
    let n: i32 = sqlx::query_scalar("SELECT n FROM kept")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 7);
}

/// A page with what the browser helper must handle: a form, a link to a
/// second page, a POST answered 403.
async fn serve_selftest_pages() -> (String, tokio::task::JoinHandle<()>) {
    use axum::http::StatusCode;
    use axum::response::Html;
    use axum::routing::get;
    let form = r#"<!doctype html><html lang="en"><head><title>form</title></head><body>
        <a href="/#main" id="skip">Skip</a>
        <main id="main"><h1>Form</h1>
        <form id="f" method="get" action="/done"><label for="q">Q</label>
        <input id="q" name="q"><button id="go">Go</button></form>
        <ul id="items"><li>one</li><li>two</li></ul></main></body></html>"#;
    let done = "<!doctype html><html lang=\"en\"><body><main id=\"main\">\
        <p id=\"got\">done</p></main></body></html>";
    let router = axum::Router::new()
        .route("/", get(move || async move { Html(form) }))
        .route(
            "/done",
            get(move || async move { Html(done) }).post(|| async { (StatusCode::FORBIDDEN, "no") }),
        );
    let (addr, server) = serve_on_loopback(router, "browser selftest pages").await;
    (format!("http://{addr}"), server)
}

#[tokio::test]
async fn the_browser_drives_a_page_and_leaves_a_screenshot_when_its_test_fails() {
    // Arrange: a page to drive, and a test of our own in a thread of its
    // own, named as a test is, that fails on purpose at its end.
    let (base, server) = serve_selftest_pages().await;
    let name = "browser_selftest_failure";
    let (checked_tx, checked_rx) = std::sync::mpsc::channel();
    let artifacts = std::thread::Builder::new()
        .name(format!("harness_selftest::{name}"))
        .spawn(move || -> std::path::PathBuf { artifacts_dir() })
        .expect("thread")
        .join()
        .expect("artifacts dir");
    let failing = std::thread::Builder::new()
        .name(format!("harness_selftest::{name}"))
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let browser = Browser::start(1280, 800).await;

                // Act: navigate, read, type, submit, script, keyboard.
                browser.goto(&format!("{base}/")).await;
                assert_eq!(browser.find("h1").await.text().await, "Form");
                assert_eq!(browser.count("#items li").await, 2);
                assert!(browser.try_find("#absent").await.is_none());
                let two = browser.find_by_text("#items li", "two").await;
                assert_eq!(two.text().await, "two");
                assert_eq!(
                    browser.find("#q").await.attr("name").await.as_deref(),
                    Some("q")
                );
                browser.press_tab().await;
                let focused = browser
                    .script("return document.activeElement.id;", json!([]))
                    .await;
                assert_eq!(focused, "skip");
                browser.find("#q").await.fill("a b").await;
                browser.find("#q").await.submit().await;
                browser.wait_path("/done?q=a+b").await;
                let status = browser
                    .script_async(
                        "const done = arguments[arguments.length - 1];\
                         fetch('/done', {method: 'POST'}).then(r => done(r.status));",
                        json!([]),
                    )
                    .await;
                assert_eq!(status, 403);
                let width = browser.script("return window.innerWidth;", json!([])).await;
                assert_eq!(width, 1280);
                browser.set_window_size(375, 812).await;
                browser
                    .wait_js("a 375 px viewport", "return window.innerWidth === 375;")
                    .await;
                checked_tx.send(()).expect("report the checks");
                panic!("deliberate: the harness checks its failure artifacts");
            });
        })
        .expect("thread");

    // Assert: every check passed, then the failure left its artifacts.
    // Joined off the runtime, which serves the pages meanwhile.
    let outcome = tokio::task::spawn_blocking(move || failing.join())
        .await
        .expect("join the test thread");
    server.abort();
    assert!(
        checked_rx.try_recv().is_ok(),
        "a browser check failed (above)"
    );
    assert!(outcome.is_err(), "the test thread should have panicked");
    for file in [
        "failure.png",
        "failure.html",
        "failure-url.txt",
        "visits.txt",
    ] {
        assert!(
            artifacts.join(file).is_file(),
            "no {file} in {}",
            artifacts.display()
        );
    }
    let png = std::fs::read(artifacts.join("failure.png")).expect("failure.png");
    assert!(png.starts_with(b"\x89PNG"), "failure.png is not a PNG");
    let html = std::fs::read_to_string(artifacts.join("failure.html")).expect("failure.html");
    assert!(html.contains(r#"id="got""#), "{html}");
    let visits = std::fs::read_to_string(artifacts.join("visits.txt")).expect("visits.txt");
    assert_eq!(visits.lines().count(), 2, "{visits}");
    assert!(visits.contains("/done?q=a+b"), "{visits}");
    assert!(artifacts.join("visit-02.png").is_file());
    std::fs::remove_dir_all(&artifacts).expect("remove the deliberate artifacts");
}
