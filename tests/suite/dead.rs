//! The dead-letter commands: `infra-service dead list` shows what a
//! real worker dead-lettered, `dead replay <id>` puts the exact payload back
//! on its queue and removes the letter; refusals exit 1 and change nothing.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

const DEAD_TIMEOUT: Duration = Duration::from_secs(60);

/// `infra-service dead <args>` as an operator runs it: with the worker's
/// config file as the last argument, or with only the `INFRA__*` variables
/// naming Redis and the prefix.
async fn dead_cli(redis: &TestRedis, config: Option<&Path>, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::from(infra_service());
    command.arg("dead").args(args);
    match config {
        Some(path) => {
            command.arg(path);
        }
        None => {
            command
                .env("INFRA__REDIS__URL", redis.url())
                .env("INFRA__REDIS__KEY_PREFIX", redis.prefix())
                // Required by the configuration, never used by `dead`.
                .env("INFRA__POSTGRES__URL", "postgres://nobody@127.0.0.1:1/none");
        }
    }
    command.output().await.expect("run infra-service dead")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `dead list --json`, which must succeed, parsed.
async fn list_json(redis: &TestRedis, config: Option<&Path>) -> Vec<Value> {
    let out = dead_cli(redis, config, &["list", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "dead list: {}", stderr(&out));
    let parsed: Value = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("dead list --json is not JSON ({e}): {}", stdout(&out)));
    parsed.as_array().expect("a JSON array").clone()
}

/// Every entry of a stream under the prefix, with its raw field bytes.
async fn raw_entries(redis: &TestRedis, stream: &str) -> Vec<(String, Vec<Vec<u8>>)> {
    let mut conn = redis.connection();
    redis::cmd("XRANGE")
        .arg(redis.queue().key(stream))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("XRANGE {stream}: {e}"))
}

/// Writes a dead letter the way `Queue::finish` does, for the refusals.
async fn add_dead_letter(redis: &TestRedis, stream: &str, payload: Option<&[u8]>) -> String {
    let mut xadd = redis::cmd("XADD");
    xadd.arg(redis.queue().key("infra:dead"))
        .arg("*")
        .arg("reason")
        .arg("written by the test")
        .arg("stream")
        .arg(stream)
        .arg("entry_id")
        .arg("1-0")
        .arg("request_id")
        .arg("")
        .arg("worker")
        .arg("test")
        .arg("dead_at")
        .arg("2026-01-01T00:00:00.000Z");
    if let Some(payload) = payload {
        xadd.arg("payload").arg(payload);
    }
    let mut conn = redis.connection();
    xadd.query_async(&mut conn).await.expect("XADD dead letter")
}

#[tokio::test]
async fn a_dead_letter_is_listed_with_its_reason_and_replays_byte_exact_onto_its_queue() {
    // Arrange: a real worker dead-letters an invalid payload, then stops.
    let redis = TestRedis::new().await;
    let queue = redis.queue();
    let request_id = unique_request_id("dead");
    // Valid but for the port, so the reason names the port.
    let payload = valid_deploy_payload(&request_id, "203.0.113.10", 0).to_string();
    let worker = TestWorker::builder(&redis).spawn().await;
    let original_entry = queue.enqueue_raw(&payload).await;
    let letters = queue.wait_dead_letters(1, DEAD_TIMEOUT).await;
    assert_eq!(letters.len(), 1, "no dead letter; logs:\n{}", worker.logs());
    worker.sigterm();
    assert!(worker.wait_exit(Duration::from_secs(30)).await.success());
    let config = worker.config_path();

    // Act: list, as JSON and as a table.
    let listed = list_json(&redis, Some(&config)).await;
    let table = dead_cli(&redis, Some(&config), &["list"]).await;

    // Assert: every field, the payload whole, the reason naming the rule.
    assert_eq!(listed.len(), 1, "{listed:#?}");
    let letter = &listed[0];
    let dead_id = letter["id"].as_str().expect("an id").to_owned();
    assert!(
        letter["reason"]
            .as_str()
            .is_some_and(|r| r.contains("port")),
        "{letter:#}"
    );
    assert_eq!(letter["request_id"], request_id.as_str(), "{letter:#}");
    assert_eq!(letter["stream"], queue.key("ansible:deploy:queue"));
    assert_eq!(letter["entry_id"], original_entry.as_str());
    assert_eq!(letter["payload"], payload.as_str());
    assert_eq!(letter["payload_size"], payload.len());
    assert_eq!(letter["payload_truncated"], false);
    assert!(letter["worker"].is_string() && letter["dead_at"].is_string());
    // The table: one line per letter, the queue without the prefix, the
    // payload's size but never the payload.
    assert_eq!(table.status.code(), Some(0), "{}", stderr(&table));
    let text = stdout(&table);
    let line = text
        .lines()
        .find(|l| l.starts_with(&dead_id))
        .unwrap_or_else(|| panic!("no row for {dead_id}:\n{text}"));
    assert!(line.contains(&request_id), "{line}");
    assert!(line.contains(" ansible:deploy:queue "), "{line}");
    assert!(!line.contains(redis.prefix()), "{line}");
    assert!(line.contains(&format!("{} B", payload.len())), "{line}");
    assert!(!text.contains(r#""port":0"#), "{text}");

    // Act: replay it.
    let replay = dead_cli(&redis, Some(&config), &["replay", "--json", &dead_id]).await;

    // Assert: the exact bytes are a new entry of the deploy queue, and the
    // letter is gone.
    assert_eq!(replay.status.code(), Some(0), "{}", stderr(&replay));
    let outcome: Value = serde_json::from_str(&stdout(&replay)).expect("replay --json");
    let new_entry = outcome["entry_id"].as_str().expect("entry_id").to_owned();
    assert_eq!(outcome["stream"], queue.key("ansible:deploy:queue"));
    let entries = raw_entries(&redis, "ansible:deploy:queue").await;
    let (id, fields) = entries.last().expect("the deploy queue has entries");
    assert_eq!(id, &new_entry);
    assert_ne!(id, &original_entry);
    assert_eq!(
        fields,
        &vec![b"payload".to_vec(), payload.as_bytes().to_vec()]
    );
    assert!(list_json(&redis, Some(&config)).await.is_empty());

    // Act: a worker takes the replayed entry.
    let again = TestWorker::builder(&redis).spawn().await;
    let letters = queue.wait_dead_letters(1, DEAD_TIMEOUT).await;

    // Assert: still invalid, so dead-lettered again, from its new entry.
    assert_eq!(letters.len(), 1, "logs:\n{}", again.logs());
    assert_eq!(letters[0]["entry_id"], new_entry);
    assert_eq!(letters[0]["request_id"], request_id);
}

#[tokio::test]
async fn replay_moves_a_binary_payload_unchanged_to_the_provision_queue() {
    // Arrange: bytes that are not UTF-8, from the other queue.
    let redis = TestRedis::new().await;
    let payload: Vec<u8> = b"\xff\xfe{\"server_handle\":\"x\"}\x00\x80end".to_vec();
    let stream = redis.queue().key("provisioner:queue");
    let dead_id = add_dead_letter(&redis, &stream, Some(&payload)).await;

    // Act
    let out = dead_cli(&redis, None, &["replay", &dead_id]).await;

    // Assert: the human line names the queue without prefix and the new id.
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let entries = raw_entries(&redis, "provisioner:queue").await;
    assert_eq!(entries.len(), 1);
    let (id, fields) = &entries[0];
    assert_eq!(fields, &vec![b"payload".to_vec(), payload]);
    let text = stdout(&out);
    assert!(text.contains(id.as_str()), "{text}");
    assert!(text.contains(" provisioner:queue "), "{text}");
    assert!(raw_entries(&redis, "infra:dead").await.is_empty());
}

#[tokio::test]
async fn replaying_an_unknown_id_exits_1_and_changes_nothing() {
    // Arrange
    let redis = TestRedis::new().await;
    let stream = redis.queue().key("ansible:deploy:queue");
    let kept = add_dead_letter(&redis, &stream, Some(b"{}")).await;

    // Act
    let unknown = dead_cli(&redis, None, &["replay", "1-1"]).await;
    let malformed = dead_cli(&redis, None, &["replay", "1"]).await;

    // Assert
    assert_eq!(unknown.status.code(), Some(1), "{}", stdout(&unknown));
    assert!(
        stderr(&unknown).contains("no dead letter with id `1-1`"),
        "{}",
        stderr(&unknown)
    );
    assert_eq!(malformed.status.code(), Some(1));
    assert!(stderr(&malformed).contains("not a stream entry id"));
    let dead = raw_entries(&redis, "infra:dead").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, kept);
    assert!(raw_entries(&redis, "ansible:deploy:queue").await.is_empty());
}

#[tokio::test]
async fn a_letter_without_payload_or_from_a_foreign_stream_is_refused_and_kept() {
    // Arrange
    let redis = TestRedis::new().await;
    let deploy = redis.queue().key("ansible:deploy:queue");
    let no_payload = add_dead_letter(&redis, &deploy, None).await;
    // The same queue name, but unprefixed: another configuration's queue.
    let foreign = add_dead_letter(&redis, "ansible:deploy:queue", Some(b"{}")).await;

    // Act
    let first = dead_cli(&redis, None, &["replay", &no_payload]).await;
    let second = dead_cli(&redis, None, &["replay", &foreign]).await;

    // Assert
    assert_eq!(first.status.code(), Some(1));
    assert!(
        stderr(&first).contains("has no payload"),
        "{}",
        stderr(&first)
    );
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains("not a job queue"),
        "{}",
        stderr(&second)
    );
    assert_eq!(raw_entries(&redis, "infra:dead").await.len(), 2);
    assert!(raw_entries(&redis, "ansible:deploy:queue").await.is_empty());
}

#[tokio::test]
async fn list_json_cuts_payloads_over_one_mib_and_says_so() {
    // Arrange: 3 MiB, well over the cap.
    let redis = TestRedis::new().await;
    let big = vec![b'x'; 3 * 1024 * 1024];
    let deploy = redis.queue().key("ansible:deploy:queue");
    add_dead_letter(&redis, &deploy, Some(&big)).await;
    add_dead_letter(&redis, &deploy, Some(b"small")).await;

    // Act
    let listed = list_json(&redis, None).await;
    let table = dead_cli(&redis, None, &["list"]).await;

    // Assert: oldest first; the big one cut to 1 MiB and marked.
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["payload"].as_str().unwrap().len(), 1024 * 1024);
    assert_eq!(listed[0]["payload_size"], big.len());
    assert_eq!(listed[0]["payload_truncated"], true);
    assert_eq!(listed[1]["payload"], "small");
    assert_eq!(listed[1]["payload_truncated"], false);
    let text = stdout(&table);
    assert!(text.contains("3.0 MiB"), "{text}");
    assert!(text.lines().count() < 4 && text.len() < 1000, "{text}");
}

#[tokio::test]
async fn list_count_shows_the_newest_and_says_how_many_there_are() {
    // Arrange
    let redis = TestRedis::new().await;
    let deploy = redis.queue().key("ansible:deploy:queue");
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(add_dead_letter(&redis, &deploy, Some(b"{}")).await);
    }

    // Act
    let out = dead_cli(&redis, None, &["list", "--json", "--count", "2"]).await;

    // Assert
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let listed: Vec<Value> = serde_json::from_str(&stdout(&out)).unwrap();
    let listed: Vec<&str> = listed.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(listed, [ids[1].as_str(), ids[2].as_str()]);
    assert!(stderr(&out).contains("newest 2 of 3"), "{}", stderr(&out));
}
