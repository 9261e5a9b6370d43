//! Postgres over TLS: a server of the test's own with `ssl = on` that takes
//! TLS connections only. A wrong CA, a wrong host name, or a server without
//! TLS is refused by `infra-service migrate` (the first connection of every
//! command and of the worker) with an error naming the settings to check;
//! a job runs over a verified connection that logs in with a password from
//! `postgres.password_ref`.

use std::path::Path;
use std::process::Output;

use infra_service::job::JobStatus;

use crate::helpers::*;

/// `infra-service migrate` with `postgres` as the config's section.
fn migrate(dir: &Path, postgres: &str) -> Output {
    let config = dir.join("infra.toml");
    let text = format!("[redis]\nurl = \"redis://127.0.0.1:6379\"\n[postgres]\n{postgres}\n");
    std::fs::write(&config, text).unwrap();
    infra_service()
        .arg("migrate")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap()
}

/// The `postgres` section: `url`, `sslmode`, and `ca_cert` when given.
fn section(url: &str, sslmode: &str, ca_cert: Option<&Path>) -> String {
    let ca = ca_cert.map_or(String::new(), |p| format!("ca_cert = {:?}\n", p.display()));
    format!("url = {url:?}\nsslmode = {sslmode:?}\n{ca}")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn a_wrong_ca_or_host_name_is_refused_naming_the_settings_and_verify_ca_skips_the_name() {
    // Arrange: a TLS-only server whose certificate names db.example.test
    // only, reached as 127.0.0.1; its CA and another one.
    let ca = TestCa::new("pg test ca");
    let pg = OwnPostgres::with_tls(&ca.issue("db.example.test", &["db.example.test"]), None).await;
    let dir = tempfile::tempdir().unwrap();
    let right = ca.write_pem(dir.path(), "ca.pem");
    let wrong = TestCa::new("another ca").write_pem(dir.path(), "wrong.pem");
    let url = pg.url();
    let endpoint = format!("postgres: TLS to 127.0.0.1:{} failed: ", pg.port());
    let hint = "(check postgres.ca_cert, postgres.sslmode and the host name in postgres.url)";

    // Act
    let wrong_ca = migrate(dir.path(), &section(&url, "verify-ca", Some(&wrong)));
    let wrong_name = migrate(dir.path(), &section(&url, "verify-full", Some(&right)));
    let any_name = migrate(dir.path(), &section(&url, "verify-ca", Some(&right)));
    let plain = migrate(dir.path(), &section(&url, "disable", None));

    // Assert
    for (case, out) in [("wrong CA", &wrong_ca), ("wrong host name", &wrong_name)] {
        let err = stderr(out);
        assert_eq!(out.status.code(), Some(2), "{case}: {err}");
        assert!(
            err.contains(&endpoint) && err.contains("certificate verify failed"),
            "{case}: {err}"
        );
        assert!(err.trim_end().ends_with(hint), "{case}: {err}");
    }
    // OpenSSL's words for a name that is an IP address.
    assert!(
        stderr(&wrong_name).contains("(IP address mismatch)"),
        "{}",
        stderr(&wrong_name)
    );
    assert_eq!(any_name.status.code(), Some(0), "{}", stderr(&any_name));
    assert_eq!(
        String::from_utf8_lossy(&any_name.stdout),
        "migrations applied\n"
    );
    // The server takes no plain connection: the suite's TLS is real.
    assert_eq!(plain.status.code(), Some(2), "{}", stderr(&plain));
    assert!(
        stderr(&plain).contains("no encryption"),
        "{}",
        stderr(&plain)
    );
}

#[tokio::test]
async fn require_against_a_server_without_tls_or_an_unset_password_is_refused_by_name() {
    // Arrange: a plain server (ssl off).
    let pg = OwnPostgres::new().await;
    let dir = tempfile::tempdir().unwrap();

    // Act
    let no_tls = migrate(dir.path(), &section(&pg.url(), "require", None));
    let no_password = migrate(
        dir.path(),
        &format!(
            "url = {:?}\npassword_ref = \"env:INFRA_TEST_UNSET_PG_PASSWORD\"\n",
            pg.url()
        ),
    );

    // Assert
    let err = stderr(&no_tls);
    assert_eq!(no_tls.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "postgres: TLS to 127.0.0.1:{} failed: server does not support TLS (check postgres.ca_cert, postgres.sslmode",
            pg.port()
        )),
        "{err}"
    );
    let err = stderr(&no_password);
    assert_eq!(no_password.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            "postgres.password_ref: secret reference `env:INFRA_TEST_UNSET_PG_PASSWORD`: environment variable is not set"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_job_runs_over_verified_tls_logging_in_with_the_password_its_reference_names() {
    // Arrange: a TLS-only server with scram passwords, and a worker that
    // insists on verify-full against the test's CA, its password in a
    // secret file and nowhere in its URL.
    let password = format!("pg-{}", uuid::Uuid::new_v4().simple());
    let ca = TestCa::new("pg test ca");
    let pg = OwnPostgres::with_tls(&ca.issue_loopback(), Some(&password)).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_cert = ca.write_pem(dir.path(), "ca.pem");
    let w = World::start(TestHost::start().await, TestRedis::new().await, |worker| {
        worker
            .postgres_url(&pg.url())
            .set("postgres.sslmode", "verify-full")
            .set("postgres.ca_cert", ca_cert.to_string_lossy())
            .set("postgres.password_ref", "file:postgres/password")
            .secret_file("postgres/password", format!("{password}\n"))
            .concurrency(1)
    })
    .await;
    let id = unique_request_id("pg-tls");

    // Act
    let result = w
        .deploy(&valid_deploy_payload(&id, w.host.address(), 8080))
        .await;

    // Assert: the job ran, its ledger row is on the TLS server, and the
    // password was never logged.
    assert_eq!(
        result.status,
        JobStatus::Success,
        "{result:#?}\n{}",
        tail(&w.worker.logs(), 40)
    );
    let mut conn = pg.connect().await;
    let status: String =
        sqlx::query_scalar("SELECT status FROM jobs WHERE kind = 'deploy' AND request_id = $1")
            .bind(&id)
            .fetch_one(&mut conn)
            .await
            .expect("the job's ledger row");
    assert_eq!(status, "success");
    assert!(
        !w.worker.logs().contains(&password),
        "the password was logged"
    );
}
