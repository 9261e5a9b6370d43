//! Redis for tests: one server per test binary (`TEST_REDIS_URL`, else a
//! container), and per test a unique key prefix, so tests never see each
//! other's streams; or, for a test that breaks Redis, a server of its own
//! (`TestRedis::on`). `Queue` is the producer's and caller's side of the
//! wire; its connection reconnects by itself, so it outlives a restart.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use infra_service::job::{JobKind, JobResult};
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde_json::Value;

use super::containers;
use super::poll::eventually;

static SERVER_URL: OnceLock<String> = OnceLock::new();

fn server_url() -> String {
    SERVER_URL
        .get_or_init(|| match std::env::var("TEST_REDIS_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => containers::redis_url(),
        })
        .clone()
}

/// One test's slice of Redis: the server URL and a prefix of its own.
pub struct TestRedis {
    url: String,
    prefix: String,
    conn: ConnectionManager,
}

impl TestRedis {
    /// Connects to the shared server and picks a fresh `t<uuid>:` prefix.
    pub async fn new() -> TestRedis {
        TestRedis::on(&server_url()).await
    }

    /// A fresh prefix on the server at `url` (an `OwnRedis`).
    pub async fn on(url: &str) -> TestRedis {
        let prefix = format!("t{}:", uuid::Uuid::new_v4().simple());
        let conn = connect(url).await;
        TestRedis {
            url: url.to_owned(),
            prefix,
            conn,
        }
    }

    /// The same prefix on the server at `url`: after a failover, the
    /// master the Sentinels name now.
    pub async fn moved_to(&self, url: &str) -> TestRedis {
        TestRedis {
            url: url.to_owned(),
            prefix: self.prefix.clone(),
            conn: connect(url).await,
        }
    }

    /// The server URL, for the worker's `redis.url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The test's `redis.key_prefix`, e.g. `t0c1d...:`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A connection that is not prefixed: build names with `Queue::key`.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The producer/caller side of the queues under this test's prefix.
    pub fn queue(&self) -> Queue {
        Queue {
            conn: self.conn.clone(),
            prefix: self.prefix.clone(),
        }
    }
}

impl Drop for TestRedis {
    /// Deletes every key under the prefix (a 10 MB stream entry must not
    /// outlive its test on a shared server). Best effort.
    fn drop(&mut self) {
        let (url, pattern) = (self.url.clone(), format!("{}*", self.prefix));
        let cleanup = std::thread::spawn(move || -> redis::RedisResult<()> {
            let mut conn = redis::Client::open(url)?.get_connection()?;
            let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query(&mut conn)?;
            if !keys.is_empty() {
                redis::cmd("UNLINK").arg(keys).query::<()>(&mut conn)?;
            }
            Ok(())
        });
        let _ = cleanup.join();
    }
}

async fn connect(url: &str) -> ConnectionManager {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        // Large payloads (10 MB) take longer than the 500 ms default.
        .set_response_timeout(Some(Duration::from_secs(30)));
    redis::Client::open(url)
        .unwrap_or_else(|e| panic!("bad redis url {url}: {e}"))
        .get_connection_manager_with_config(config)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to redis at {url}: {e}"))
}

/// Enqueues jobs and reads results, results stream and dead letters, as the
/// contract's producers and callers do, under one test's prefix.
#[derive(Clone)]
pub struct Queue {
    conn: ConnectionManager,
    prefix: String,
}

impl Queue {
    /// A stream or key name under the test's prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Pings until the server answers (after an `OwnRedis` restart, the
    /// first command on the old connection fails while it reconnects);
    /// panics after `timeout`.
    pub async fn wait_until_reachable(&self, timeout: Duration) {
        let answers = || async { self.ping().await.ok() };
        if eventually(timeout, answers).await.is_none() {
            let error = self.ping().await.err();
            panic!("redis unreachable for {timeout:?}: {error:?}");
        }
    }

    async fn ping(&self) -> redis::RedisResult<String> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async(&mut conn).await
    }

    /// `XADD <prefix>ansible:deploy:queue * payload <json>`; returns the entry id.
    pub async fn enqueue_deploy(&self, payload: &Value) -> String {
        self.enqueue_raw(payload.to_string()).await
    }

    /// Enqueues any bytes as the `payload` field of a deploy queue entry.
    pub async fn enqueue_raw(&self, payload: impl AsRef<[u8]>) -> String {
        self.enqueue_to("ansible:deploy:queue", payload.as_ref())
            .await
    }

    /// `XADD <prefix><stream> * payload <bytes>`; returns the entry id.
    pub async fn enqueue_to(&self, stream: &str, payload: &[u8]) -> String {
        let mut conn = self.conn.clone();
        redis::cmd("XADD")
            .arg(self.key(stream))
            .arg("*")
            .arg("payload")
            .arg(payload)
            .query_async(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("XADD to {stream} failed: {e}"))
    }

    /// `XADD <prefix>provisioner:queue * payload <json>`; returns the entry id.
    pub async fn enqueue_provision(&self, payload: &Value) -> String {
        self.enqueue_to("provisioner:queue", payload.to_string().as_bytes())
            .await
    }

    /// The result at `<prefix>deploy:result:<request_id>`, if published,
    /// parsed by the library; one it cannot parse panics with its JSON.
    pub async fn deploy_result(&self, request_id: &str) -> Option<JobResult> {
        self.parsed_result(JobKind::Deploy, request_id).await
    }

    /// The result at `<prefix>provisioner:result:<request_id>`, if
    /// published, parsed as `deploy_result` parses.
    pub async fn provision_result(&self, request_id: &str) -> Option<JobResult> {
        self.parsed_result(JobKind::Provision, request_id).await
    }

    /// The JSON at `<prefix>deploy:result:<request_id>` as published, for
    /// tests about the wire format itself (key names, `null` or absent).
    pub async fn deploy_result_json(&self, request_id: &str) -> Option<Value> {
        self.result_json(JobKind::Deploy, request_id).await
    }

    /// The JSON at `<prefix>provisioner:result:<request_id>` as published,
    /// as `deploy_result_json` reads it.
    pub async fn provision_result_json(&self, request_id: &str) -> Option<Value> {
        self.result_json(JobKind::Provision, request_id).await
    }

    /// The text of a `kind` result key exactly as stored, for scans of what
    /// was published (a secret must not be in it); a parse and print of it
    /// could hide what the stored text holds.
    pub async fn result_text(&self, kind: JobKind, request_id: &str) -> Option<String> {
        let mut conn = self.conn.clone();
        conn.get(self.result_key(kind, request_id))
            .await
            .expect("GET result key")
    }

    async fn result_json(&self, kind: JobKind, request_id: &str) -> Option<Value> {
        self.result_text(kind, request_id).await.map(|text| {
            serde_json::from_str(&text).unwrap_or_else(|e| {
                let key = self.result_key(kind, request_id);
                panic!("result at {key} is not JSON ({e}): {text}")
            })
        })
    }

    async fn parsed_result(&self, kind: JobKind, request_id: &str) -> Option<JobResult> {
        self.result_text(kind, request_id).await.map(|text| {
            JobResult::from_json(&text).unwrap_or_else(|e| {
                let key = self.result_key(kind, request_id);
                panic!("result at {key} breaks the contract ({e}): {text}")
            })
        })
    }

    /// Where a result of `kind` is published, as the contract names it.
    fn result_key(&self, kind: JobKind, request_id: &str) -> String {
        match kind {
            JobKind::Deploy => self.key(&format!("deploy:result:{request_id}")),
            JobKind::Provision => self.key(&format!("provisioner:result:{request_id}")),
        }
    }

    /// Remaining TTL of the result key in seconds (-2: missing, -1: none).
    pub async fn deploy_result_ttl(&self, request_id: &str) -> i64 {
        let mut conn = self.conn.clone();
        conn.ttl(self.result_key(JobKind::Deploy, request_id))
            .await
            .expect("TTL result key")
    }

    /// Every `payload` of `<prefix>deploy:results`, oldest first, parsed.
    pub async fn deploy_results_stream(&self) -> Vec<Value> {
        self.stream_entries("deploy:results")
            .await
            .into_iter()
            .map(|(id, fields)| {
                let payload = fields
                    .get("payload")
                    .unwrap_or_else(|| panic!("deploy:results entry {id} has no payload"));
                serde_json::from_str(payload)
                    .unwrap_or_else(|e| panic!("deploy:results entry {id} is not JSON: {e}"))
            })
            .collect()
    }

    /// The fields of every `<prefix>infra:dead` entry, oldest first.
    pub async fn dead_letters(&self) -> Vec<HashMap<String, String>> {
        self.stream_entries("infra:dead")
            .await
            .into_iter()
            .map(|(_, fields)| fields)
            .collect()
    }

    /// Polls `infra:dead` until it holds at least `count` entries; what it
    /// holds after `timeout` otherwise.
    pub async fn wait_dead_letters(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Vec<HashMap<String, String>> {
        let enough = move || async move {
            let letters = self.dead_letters().await;
            (letters.len() >= count).then_some(letters)
        };
        match eventually(timeout, enough).await {
            Some(letters) => letters,
            None => self.dead_letters().await,
        }
    }

    /// How many entries of a stream under the prefix the worker's group
    /// (`infra-service`, the default `redis.group`) still holds pending. A
    /// stream or group that does not exist (NOGROUP) holds none.
    pub async fn pending_count(&self, stream: &str) -> u64 {
        let mut conn = self.conn.clone();
        let summary: redis::RedisResult<(u64, redis::Value, redis::Value, redis::Value)> =
            redis::cmd("XPENDING")
                .arg(self.key(stream))
                .arg("infra-service")
                .query_async(&mut conn)
                .await;
        match summary {
            Ok((count, ..)) => count,
            Err(e) if e.code() == Some("NOGROUP") => 0,
            Err(e) => panic!("XPENDING {stream} failed: {e}"),
        }
    }

    /// XRANGE of a stream under the prefix: entry ids with their fields
    /// (values decoded lossily, so binary payloads can be inspected too).
    pub async fn stream_entries(&self, stream: &str) -> Vec<(String, HashMap<String, String>)> {
        let mut conn = self.conn.clone();
        let entries: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
            .arg(self.key(stream))
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("XRANGE {stream} failed: {e}"));
        entries
            .into_iter()
            .map(|(id, flat)| {
                let fields = flat
                    .chunks(2)
                    .map(|pair| {
                        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                        (
                            text(&pair[0]),
                            pair.get(1).map(|v| text(v)).unwrap_or_default(),
                        )
                    })
                    .collect();
                (id, fields)
            })
            .collect()
    }
}
