//! The playbooks of `ansible/` run for real over SSH against a `TestHost`,
//! without the worker: the stubs of `tests/fixtures/stubs/` stand in for
//! docker, ufw, systemctl, df, journalctl and apt-get, a local bare git
//! repository for GitHub. Each test asserts what an operator would see on
//! the server and in the playbook's output.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::json;

use crate::helpers::*;

const REPO: &str = "acme/Shop-Api";
const PROJECT: &str = "shop-api";
const BRANCH: &str = "release";

/// A test host with the stubs, a bare repository of `REPO` whose `BRANCH`
/// differs from its default branch, and an empty services root.
struct DeployFixture {
    // Before `host`: dropping it stops the stub's listener, whose pid file
    // lives in the host's directory.
    stubs: StubState,
    host: TestHost,
    dir: tempfile::TempDir,
    port: u16,
    token: String,
    secret: String,
}

impl DeployFixture {
    async fn new() -> DeployFixture {
        let (host, stubs, dir, ()) = stubbed_host("infra-content-", |dir| {
            bare_repository(dir, REPO, BRANCH);
        })
        .await;
        let token = format!("ghp_{}", uuid::Uuid::new_v4().simple());
        let secret = format!("dsn{}", uuid::Uuid::new_v4().simple());
        DeployFixture {
            stubs,
            host,
            dir,
            port: free_port(),
            token,
            secret,
        }
    }

    fn services_root(&self) -> PathBuf {
        self.dir.path().join("services")
    }

    fn project_dir(&self) -> PathBuf {
        self.services_root().join(PROJECT)
    }

    fn project_env(&self) -> String {
        format!(
            "SENTRY_DSN=https://{}@sentry.example/1\nPORT=1\nFEATURE_FLAGS=a,b\n",
            self.secret
        )
    }

    async fn deploy(&self, args: &[&str]) -> PlaybookRun {
        let vars = json!({
            "request_id": unique_request_id("content"),
            "project_id": "6f1c2a9e-2b7d-4d8e-9a51-0c7e5b8f3a10",
            "project_name": PROJECT,
            "repo_full_name": REPO,
            "branch": BRANCH,
            "server_ip": self.host.address(),
            "modules": ["backend", "tg_bot"],
            "service_port": self.port,
            "services_root": self.services_root(),
            "git_base_url": format!("file://{}", self.dir.path().join("git").display()),
            "deploy_wait_timeout": 30,
        });
        let env = self.project_env();
        run_playbook(
            &self.host,
            "deploy_project.yml",
            &vars,
            &[("GITHUB_TOKEN", &self.token), ("PROJECT_ENV", &env)],
            args,
        )
        .await
    }

    fn env_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.project_dir().join(".env"))
            .expect("the deploy wrote .env")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn env_value(&self, key: &str) -> Option<String> {
        let prefix = format!("{key}=");
        self.env_lines()
            .iter()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
    }
}

#[tokio::test]
async fn a_deploy_checks_out_the_branch_writes_a_private_env_and_starts_the_module_profiles() {
    // Arrange
    let fx = DeployFixture::new().await;

    // Act
    let run = fx.deploy(&[]).await;

    // Assert
    assert_eq!(run.code, 0, "{run:?}");
    let head = fx
        .host
        .run_ok(&format!(
            "git -C {} rev-parse --abbrev-ref HEAD",
            fx.project_dir().display()
        ))
        .await;
    assert_eq!(head.trim(), BRANCH);
    let prod = std::fs::read_to_string(fx.project_dir().join("infra/compose.prod.yml")).unwrap();
    assert!(prod.contains("# release branch"), "{prod}");

    let env_file = fx.project_dir().join(".env");
    let mode = std::fs::metadata(&env_file).unwrap().permissions().mode() & 0o777;
    // Group-readable: setup_ci gives the CI user's group read access.
    assert_eq!(mode, 0o640, "mode of .env is {mode:o}");
    let lines = fx.env_lines();
    for expected in [
        format!("PORT={}", fx.port),
        format!("BACKEND_IMAGE=ghcr.io/acme/{PROJECT}-backend:latest"),
        format!("TG_BOT_IMAGE=ghcr.io/acme/{PROJECT}-tg-bot:latest"),
        "POSTGRES_DB=shop_api".to_owned(),
        "POSTGRES_USER=postgres".to_owned(),
        // CI's own `docker compose` in that directory enables the same.
        "COMPOSE_PROFILES=backend,tg_bot".to_owned(),
        format!("SENTRY_DSN=https://{}@sentry.example/1", fx.secret),
        "FEATURE_FLAGS=a,b".to_owned(),
    ] {
        assert!(
            lines.contains(&expected),
            "no `{expected}` in .env: {lines:#?}"
        );
    }
    let ports: Vec<_> = lines.iter().filter(|l| l.starts_with("PORT=")).collect();
    assert_eq!(
        ports.len(),
        1,
        "PROJECT_ENV's PORT=1 must not survive: {ports:?}"
    );
    let password = fx.env_value("POSTGRES_PASSWORD").unwrap_or_default();
    assert!(password.len() >= 16, "POSTGRES_PASSWORD={password:?}");

    let calls = fx.stubs.calls();
    let at = |wanted: &dyn Fn(&str) -> bool, what: &str| {
        calls
            .iter()
            .position(|c| wanted(c))
            .unwrap_or_else(|| panic!("no {what} among the stub calls: {calls:#?}"))
    };
    let profiles =
        "-f infra/compose.base.yml -f infra/compose.prod.yml --profile backend --profile tg_bot";
    at(
        &|c| c == "docker login ghcr.io --username acme --password-stdin",
        "registry login with the password on stdin",
    );
    // Ansible ends stdin with a newline, which `docker login` strips.
    at(
        &|c| {
            c == format!("docker login-stdin-bytes={}", fx.token.len())
                || c == format!("docker login-stdin-bytes={}", fx.token.len() + 1)
        },
        "token on the login's stdin",
    );
    let pull = at(
        &|c| c.starts_with("docker compose ") && c.ends_with(&format!("{profiles} pull")),
        "compose pull",
    );
    let up = at(
        &|c| {
            c.starts_with("docker compose ")
                && c.ends_with(&format!("{profiles} up -d --remove-orphans"))
        },
        "compose up",
    );
    assert!(pull < up, "pull must come before up: {calls:#?}");
    at(&|c| c.starts_with("docker image prune"), "image prune");
    at(
        &|c| c == format!("ufw allow {}/tcp", fx.port),
        "ufw allow of the service port",
    );
}

#[tokio::test]
async fn a_second_deploy_keeps_the_database_password_and_no_deploy_leaks_the_token() {
    // Arrange
    let fx = DeployFixture::new().await;
    let first = fx.deploy(&[]).await;
    assert_eq!(first.code, 0, "{first:?}");
    let password = fx
        .env_value("POSTGRES_PASSWORD")
        .expect("a generated password");

    // Act: verbose, as an operator chasing a problem would run it.
    let second = fx.deploy(&["-vvv"]).await;

    // Assert
    assert_eq!(second.code, 0, "{second:?}");
    assert_eq!(
        fx.env_value("POSTGRES_PASSWORD").as_deref(),
        Some(password.as_str())
    );

    let b64 = base64::engine::general_purpose::STANDARD;
    let forms = [
        fx.token.clone(),
        b64.encode(&fx.token),
        b64.encode(format!("x-access-token:{}", fx.token)),
    ];
    let git_config = std::fs::read_to_string(fx.project_dir().join(".git/config")).unwrap();
    let recorded = fx.stubs.all_text();
    let output = format!("{}\n{}", first.output(), second.output());
    for form in &forms {
        assert!(!git_config.contains(form), ".git/config holds the token");
        assert!(!recorded.contains(form), "a stub was given the token");
        assert!(!output.contains(form), "the playbook printed the token");
    }
    assert!(
        !output.contains(&fx.secret),
        "the playbook printed PROJECT_ENV's secret"
    );
}

#[tokio::test]
async fn recovery_reports_and_fixes_a_full_disk_and_a_hung_docker_daemon() {
    // Arrange
    let host = TestHost::start().await;
    let stubs = install_stubs(&host);
    stubs.set("df_percent", "97");
    stubs.set("df_percent_after_prune", "40");
    stubs.set("docker_info_hang", "");
    let vars = json!({
        "request_id": unique_request_id("recovery"),
        "server_handle": "web-1",
        "recovery_docker_info_timeout": 2,
        "recovery_docker_restart_delay": 1,
    });

    // Act
    let run = run_playbook(&host, "recovery.yml", &vars, &[], &[]).await;

    // Assert
    assert_eq!(run.code, 0, "{run:?}");
    for reported in [
        "disk / is at 97% (threshold 85%)",
        "docker info timed out after 2s (daemon hung)",
        "docker system prune: Total reclaimed space: 1.2GB",
        "journald vacuumed to 200M",
        "apt cache cleaned",
        "disk / now at 40%",
        "docker restarted, docker info answers (server 27.3.1)",
    ] {
        assert!(
            run.stdout.contains(reported),
            "the report lacks `{reported}`: {run:?}"
        );
    }
    let calls = stubs.calls();
    for wanted in [
        "docker system prune --force --all",
        "journalctl --vacuum-size=200M",
        "apt-get clean",
    ] {
        assert!(
            calls.iter().any(|c| c == wanted),
            "no `{wanted}`: {calls:#?}"
        );
    }
    let restart = calls
        .iter()
        .position(|c| c.starts_with("systemctl restart") && c.contains("docker"))
        .unwrap_or_else(|| panic!("docker was not restarted: {calls:#?}"));
    let prune = calls
        .iter()
        .position(|c| c.starts_with("docker system prune"))
        .unwrap();
    assert!(
        restart < prune,
        "prune needs a daemon that answers: {calls:#?}"
    );
    assert!(!stubs.exists("docker_info_hang"));
}

#[tokio::test]
async fn setup_server_in_check_mode_passes_and_reports_changes_it_does_not_make() {
    // Arrange
    let host = TestHost::start().await;
    let _stubs = install_stubs(&host);
    let key = std::fs::read_to_string(host.client_key_path().with_extension("pub")).unwrap();
    let vars = json!({
        "request_id": unique_request_id("setup"),
        "server_handle": "web-1",
        "docker_install_source": "distro",
        "deploy_authorized_key": key.trim(),
    });
    let written = [
        "/home/deploy",
        "/etc/docker/daemon.json",
        "/etc/sudoers.d/90-infra-deploy",
        "/etc/ssh/sshd_config.d/00-infra-hardening.conf",
        "/etc/fail2ban/jail.local",
    ];
    let existed: Vec<bool> = written.iter().map(|p| Path::new(p).exists()).collect();

    // Act
    let run = run_playbook(&host, "setup_server.yml", &vars, &[], &["--check"]).await;

    // Assert
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.changed().is_some_and(|n| n > 0),
        "a fresh host needs changes: {run:?}"
    );
    let exist: Vec<bool> = written.iter().map(|p| Path::new(p).exists()).collect();
    assert_eq!(exist, existed, "check mode wrote some of {written:?}");
}

#[tokio::test]
async fn docker_service_writes_a_unit_per_service_and_timers_and_a_rerun_changes_nothing() {
    // Arrange
    let host = TestHost::start().await;
    let stubs = install_stubs(&host);
    let dir = login_user_dir(&host);
    let (units, srv) = (dir.path().join("units"), dir.path().join("srv"));
    for d in [&units, &srv] {
        std::fs::create_dir(d).unwrap();
        give_to_login_user(&host, d);
    }
    let vars = json!({
        "docker_service_unit_dir": units,
        "docker_service_srv_root": srv,
        "docker_service_server": "web-1",
        "service": [
            {"image": "order-sync", "params": "-v /var/log/shop:/srv/log:ro", "args": "--verbose"},
            {"image": "price-scraper", "minute": "*/5", "timeout": 600},
            {"image": "daily-report", "flavor": "eu", "oncalendar": "daily"},
        ],
    });

    // Act
    let first = run_playbook(&host, "docker_service.yml", &vars, &[], &[]).await;
    let second = run_playbook(&host, "docker_service.yml", &vars, &[], &[]).await;

    // Assert
    assert_eq!(first.code, 0, "{first:?}");
    let mut files: Vec<String> = std::fs::read_dir(&units)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "daily_report_eu.service",
            "daily_report_eu.timer",
            "order_sync.service",
            "price_scraper.service",
            "price_scraper.timer",
        ]
    );
    let unit = |name: &str| std::fs::read_to_string(units.join(name)).unwrap();

    let order_sync = unit("order_sync.service");
    let srv = srv.display();
    for expected in [
        "Restart=always".to_owned(),
        "--network=host".to_owned(),
        "-e SERVICE_NAME=order_sync".to_owned(),
        "-e SERVICE_IMAGE=order-sync".to_owned(),
        "-e \"SERVICE_ARGS=--verbose\"".to_owned(),
        "-e SERVICE_SERVER=web-1".to_owned(),
        "-e SERVICE_CONFIG=/cfg/web-1/order_sync.toml".to_owned(),
        format!("-v {srv}/spool/order_sync:/srv/spool/order_sync"),
        format!("-v {srv}/run/order_sync:/srv/run/order_sync"),
        format!("-v {srv}/cfg:/cfg:ro"),
        "-v /var/log/shop:/srv/log:ro".to_owned(),
        "exec ./main --verbose /cfg/web-1/order_sync.toml ||".to_owned(),
        "exec python -m main --verbose /cfg/web-1/order_sync.toml'".to_owned(),
        "WantedBy=multi-user.target".to_owned(),
    ] {
        assert!(
            order_sync.contains(&expected),
            "order_sync.service lacks `{expected}`:\n{order_sync}"
        );
    }
    assert!(srv_dir_exists(&dir, "spool/order_sync") && srv_dir_exists(&dir, "run/order_sync"));

    let scraper = unit("price_scraper.service");
    assert!(scraper.contains("Type=oneshot"), "{scraper}");
    assert!(scraper.contains("TimeoutStartSec=600\n"), "{scraper}");
    assert!(
        !scraper.contains("[Install]"),
        "a timer's service is not enabled itself"
    );
    let scraper_timer = unit("price_scraper.timer");
    assert!(
        scraper_timer.contains("OnCalendar=*-*-* *:00/5:00\n"),
        "{scraper_timer}"
    );
    assert!(scraper_timer.contains("Unit=price_scraper.service\n"));

    let report = unit("daily_report_eu.service");
    assert!(report.contains("-e SERVICE_FLAVOR=eu"), "{report}");
    assert!(
        report.contains("/cfg/web-1/daily_report_eu.toml'"),
        "{report}"
    );
    assert!(unit("daily_report_eu.timer").contains("OnCalendar=daily\n"));

    assert_eq!(second.code, 0, "{second:?}");
    assert_eq!(second.changed(), Some(0), "{second:?}");
    // Over both runs: one reload and one restart, of the new long-running
    // unit, after the first run wrote it.
    let calls = stubs.calls();
    let count = |wanted: &str| calls.iter().filter(|c| c.starts_with(wanted)).count();
    assert_eq!(count("systemctl daemon-reload"), 1, "{calls:#?}");
    assert_eq!(count("systemctl restart"), 1, "{calls:#?}");
    assert_eq!(
        count("systemctl restart order_sync.service"),
        1,
        "{calls:#?}"
    );
}

fn srv_dir_exists(dir: &tempfile::TempDir, sub: &str) -> bool {
    dir.path().join("srv").join(sub).is_dir()
}

/// A bare repository `<dir>/git/<repo>.git` whose default branch `main` and
/// whose `branch` hold different `infra/compose.prod.yml` files.
fn bare_repository(dir: &Path, repo: &str, branch: &str) {
    let src = dir.join("src");
    let bare = dir.join("git").join(format!("{repo}.git"));
    std::fs::create_dir_all(&bare).unwrap();
    compose_work_tree(&src, "main", "# main branch\n");
    git(&src, &["checkout", "-q", "-b", branch]);
    std::fs::write(src.join("infra/compose.prod.yml"), "# release branch\n").unwrap();
    git(&src, &["commit", "-q", "-am", branch]);
    git(&bare, &["init", "-q", "--bare", "-b", "main"]);
    git(
        &src,
        &["push", "-q", &bare.to_string_lossy(), "main", branch],
    );
}
