//! Redis over TLS: a real `redis-server` of the test's own serving TLS
//! with certificates from a CA the test makes, demanding a client
//! certificate, and an ACL user for the worker. A job runs over it; each
//! mistake an operator can make (another CA, a certificate for another
//! name, no client certificate, a wrong password) is refused with an
//! error that names the setting to look at.

use std::path::{Path, PathBuf};
use std::process::Output;

use infra_service::job::JobStatus;

use crate::helpers::*;

/// The worker's ACL user and its password.
const USER: &str = "infra-worker";
const PASSWORD: &str = "tls-test-password-7f3a";

/// A CA, a TLS Redis whose certificate names `names`, and the worker's
/// client certificate; the files in `dir`.
struct TlsRedis {
    ca: TestCa,
    ca_path: PathBuf,
    client: Issued,
    client_cert: PathBuf,
    own: OwnRedis,
    dir: tempfile::TempDir,
}

impl TlsRedis {
    async fn start(names: &[&str]) -> TlsRedis {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("redis-test-ca");
        let ca_path = ca.write_pem(dir.path(), "ca.crt");
        let (cert, key) = ca.issue(names[0], names).write(dir.path(), "server");
        let own = OwnRedis::with_tls(RedisTlsFiles {
            cert,
            key,
            client_ca: ca_path.clone(),
        })
        .await;
        let client = ca.issue(USER, &[]);
        let (client_cert, _) = client.write(dir.path(), "client");
        let admin = TestRedis::on(&own.url()).await;
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg(USER)
            .arg(&["on", &format!(">{PASSWORD}"), "~*", "&*", "+@all"])
            .query_async::<()>(&mut admin.connection())
            .await
            .expect("ACL SETUSER");
        TlsRedis {
            ca,
            ca_path,
            client,
            client_cert,
            own,
            dir,
        }
    }

    fn url(&self, host: &str) -> String {
        format!("rediss://{host}:{}", self.own.tls_port())
    }

    /// The server's clients as `CLIENT LIST` gives them, one per line.
    async fn clients(&self) -> String {
        let admin = TestRedis::on(&self.own.url()).await;
        redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut admin.connection())
            .await
            .expect("CLIENT LIST")
    }
}

/// A worker configured for TLS, a client certificate and the ACL user
/// runs a deploy; its connections are on the TLS port as that user.
#[tokio::test]
async fn jobs_run_over_tls_with_a_client_certificate_and_an_acl_user() {
    let tls = TlsRedis::start(&["127.0.0.1", "localhost"]).await;
    let redis = TestRedis::on(&tls.own.url()).await;
    let host = TestHost::start().await;
    let w = World::start(host, redis, |worker| {
        worker
            .set("redis.url", tls.url("127.0.0.1"))
            .set("redis.ca_cert", tls.ca_path.to_string_lossy())
            .set("redis.client_cert", tls.client_cert.to_string_lossy())
            .set("redis.client_key_ref", "file:redis/client.key")
            .secret_file("redis/client.key", tls.client.key_pem.clone())
            .set("redis.username", USER)
            .set("redis.password_ref", "file:redis/password")
            .secret_file("redis/password", format!("{PASSWORD}\n"))
    })
    .await;

    let request_id = unique_request_id("tls");
    let result = w
        .deploy(&valid_deploy_payload(&request_id, w.host.address(), 8080))
        .await;

    assert_eq!(result.status, JobStatus::Success, "{result:#?}");
    let tls_port = format!("laddr=127.0.0.1:{}", tls.own.tls_port());
    let clients = tls.clients().await;
    let worker_clients: Vec<&str> = clients
        .lines()
        .filter(|line| line.contains(&format!("user={USER} ")))
        .collect();
    assert!(!worker_clients.is_empty(), "no connection as {USER}");
    for client in &worker_clients {
        assert!(client.contains(&tls_port), "not on the TLS port: {client}");
    }
    assert!(
        !w.worker.logs().contains(PASSWORD),
        "the Redis password is in the worker's log"
    );
}

/// `infra-service dead list` (it needs Redis only) against the TLS server,
/// configured by `INFRA__*` variables: `settings` on top of a working set.
async fn dead_list(tls: &TlsRedis, secrets: &Path, settings: &[(&str, String)]) -> Output {
    let mut command = tokio::process::Command::from(infra_service());
    command
        .args(["dead", "list"])
        .env("INFRA__REDIS__URL", tls.url("localhost"))
        .env("INFRA__REDIS__CA_CERT", &tls.ca_path)
        .env("INFRA__REDIS__CLIENT_CERT", &tls.client_cert)
        .env("INFRA__REDIS__CLIENT_KEY_REF", "file:client.key")
        .env("INFRA__REDIS__USERNAME", USER)
        .env("INFRA__REDIS__PASSWORD_REF", "env:TEST_REDIS_PASSWORD")
        .env("TEST_REDIS_PASSWORD", PASSWORD)
        .env("INFRA__SECRETS__DIR", secrets)
        // Required by the configuration, never used by `dead`.
        .env("INFRA__POSTGRES__URL", "postgres://nobody@127.0.0.1:1/none");
    for (key, value) in settings {
        command.env(key, value);
    }
    command.output().await.expect("run infra-service dead list")
}

fn refusal(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected a Redis failure (exit 2): {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn tls_and_login_mistakes_are_refused_naming_the_setting() {
    // The server's certificate names `localhost` only.
    let tls = TlsRedis::start(&["localhost"]).await;
    let secrets = tls.dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(secrets.join("client.key"), &tls.client.key_pem).unwrap();

    // Everything right: the refusals below are each one setting's doing.
    let ok = dead_list(&tls, &secrets, &[]).await;
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let other_ca = TestCa::new("another-ca").write_pem(tls.dir.path(), "other-ca.crt");
    let wrong_ca = dead_list(
        &tls,
        &secrets,
        &[(
            "INFRA__REDIS__CA_CERT",
            other_ca.to_string_lossy().into_owned(),
        )],
    )
    .await;
    let message = refusal(&wrong_ca);
    assert!(message.contains("TLS to localhost:"), "{message}");
    assert!(message.contains("redis.ca_cert"), "{message}");

    // Right CA, but 127.0.0.1 is not a name the certificate gives.
    let wrong_name = dead_list(
        &tls,
        &secrets,
        &[("INFRA__REDIS__URL", tls.url("127.0.0.1"))],
    )
    .await;
    let message = refusal(&wrong_name);
    assert!(message.contains("TLS to 127.0.0.1:"), "{message}");
    assert!(message.contains("host name in redis.url"), "{message}");

    let wrong_password = dead_list(
        &tls,
        &secrets,
        &[("TEST_REDIS_PASSWORD", "not-the-password".to_owned())],
    )
    .await;
    let message = refusal(&wrong_password);
    assert!(message.contains("redis.password_ref"), "{message}");
    assert!(!message.contains("not-the-password"), "{message}");

    // A key that does not belong to the certificate: the TLS library
    // refuses the pair before any connection.
    let other_key = tls.ca.issue(USER, &[]);
    std::fs::write(secrets.join("other.key"), &other_key.key_pem).unwrap();
    let mismatched = dead_list(
        &tls,
        &secrets,
        &[("INFRA__REDIS__CLIENT_KEY_REF", "file:other.key".to_owned())],
    )
    .await;
    assert_ne!(mismatched.status.code(), Some(0));
}
