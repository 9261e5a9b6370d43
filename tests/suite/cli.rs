//! The binary's configuration contract: file, `INFRA__*` overrides, and the
//! exit codes operators script against (0 ok, 1 bad configuration).

use std::process::Output;

use crate::helpers::infra_service;

fn check_config(file: Option<&str>, env: &[(&str, &str)]) -> Output {
    check_config_with(&[], file, env)
}

/// `check-config <flags>`, with `file` as the config and only `env` of the
/// `INFRA__*` variables.
fn check_config_with(flags: &[&str], file: Option<&str>, env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut command = infra_service();
    command.arg("check-config").args(flags);
    if let Some(text) = file {
        let path = dir.path().join("infra.toml");
        std::fs::write(&path, text).unwrap();
        // The ops convention: the config path as the last argument.
        command.arg(&path);
    }
    command.envs(env.iter().copied());
    command.output().unwrap()
}

const MINIMAL: &str = "[redis]\nurl = \"redis://127.0.0.1:6379\"\n[postgres]\nurl = \"postgres://postgres@127.0.0.1/test\"\n";

#[test]
fn environment_variables_override_the_file() {
    let out = check_config(
        Some(MINIMAL),
        &[
            ("INFRA__WORKER__CONCURRENCY", "7"),
            ("INFRA__REDIS__GROUP", "blue"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("concurrency: 7"), "{stdout}");
    assert!(stdout.contains("group: \"blue\""), "{stdout}");
}

#[test]
fn a_bad_value_exits_1_naming_the_key() {
    let out = check_config(Some(MINIMAL), &[("INFRA__WORKER__CONCURRENCY", "0")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("worker.concurrency"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_missing_required_key_exits_1_naming_it() {
    let out = check_config(
        None,
        &[("INFRA__POSTGRES__URL", "postgres://x@127.0.0.1/x")],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("redis.url"));
}

#[test]
fn a_bad_time4vps_base_url_exits_1_naming_the_key() {
    let out = check_config(Some(MINIMAL), &[("INFRA__TIME4VPS__BASE_URL", "not a url")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("time4vps.base_url"), "{stderr}");
}

#[test]
fn the_printed_configuration_shows_no_connection_secret() {
    let out = check_config(
        Some(MINIMAL),
        &[(
            "INFRA__REDIS__URL",
            "redis://:hunter2-password@127.0.0.1:6379",
        )],
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hunter2"));
}

#[test]
fn check_config_json_shows_every_section_and_hides_the_urls() {
    let out = check_config_with(
        &["--json"],
        Some(MINIMAL),
        &[(
            "INFRA__REDIS__URL",
            "redis://:hunter2-password@127.0.0.1:6379",
        )],
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["redis"]["url"], "***");
    assert_eq!(json["postgres"]["url"], "***");
    assert_eq!(json["worker"]["concurrency"], 4);
    assert_eq!(json["http"]["listen"], "127.0.0.1:9187");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hunter2"));
}

/// `infra-service dead list | head -1` and the like: a reader that stops
/// early ends the command quietly, as with other Unix tools, not with a
/// panic on stderr.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) writes two descriptors into `fds`.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just created and are owned here alone.
    let (read_end, write_end) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    // The reader is gone before the first line is written.
    drop(read_end);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("infra.toml");
    std::fs::write(&config, MINIMAL).unwrap();
    let out = infra_service()
        .arg("check-config")
        .arg(&config)
        .stdout(std::process::Stdio::from(write_end))
        .output()
        .unwrap();

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
}

#[test]
fn schema_writes_the_committed_schemas_into_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("new");
    let out = infra_service()
        .args(["schema", "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let committed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema");
    for name in [
        "deploy_job.schema.json",
        "provision_job.schema.json",
        "job_result.schema.json",
        "job_event.schema.json",
    ] {
        let written = std::fs::read_to_string(out_dir.join(name)).unwrap();
        let expected = std::fs::read_to_string(committed.join(name)).unwrap();
        assert!(
            written == expected,
            "schema/{name} is stale: regenerate with `cargo run -- schema --out schema`"
        );
    }
}

#[test]
fn schema_without_out_prints_the_four_keyed_by_file_name() {
    let out = infra_service().arg("schema").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&String> = all.as_object().unwrap().keys().collect();
    assert_eq!(
        names,
        [
            "deploy_job.schema.json",
            "job_event.schema.json",
            "job_result.schema.json",
            "provision_job.schema.json",
        ]
    );
    assert_eq!(
        all["deploy_job.schema.json"]["$id"],
        "https://infra-service/schema/v1/deploy_job.schema.json"
    );
}

#[test]
fn schema_into_a_directory_it_cannot_create_exits_2() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let out = infra_service()
        .args(["schema", "--out"])
        .arg(file.path().join("sub"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot write the schemas"));
}
