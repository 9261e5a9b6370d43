//! `SentinelSet`: Redis as Sentinel runs it, of one test's own on
//! 127.0.0.1: a master, one replica and three Sentinels (quorum 2), each an
//! `OwnRedis`, under a master name unique to the test. It waits until a
//! failover could happen (every Sentinel knows the replica and the two
//! other Sentinels), fails over on demand (`SENTINEL FAILOVER`) and names
//! the master of the moment; everything is killed on drop.

use std::time::Duration;

use redis::aio::MultiplexedConnection;

use super::own_redis::OwnRedis;
use super::poll::eventually;

/// How long the set may take to form, or a failover to complete.
const PATIENCE: Duration = Duration::from_secs(60);
/// How long one question to one server may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// A master, a replica and three Sentinels watching them.
pub struct SentinelSet {
    name: String,
    /// The two data servers; which one is master changes with failovers.
    servers: Vec<OwnRedis>,
    sentinels: Vec<OwnRedis>,
}

impl SentinelSet {
    /// Starts the servers and the Sentinels and waits until they know
    /// each other.
    pub async fn start() -> SentinelSet {
        let name = format!("m{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let master = OwnRedis::new().await;
        let replicaof = master.port().to_string();
        let replica = OwnRedis::with(None, &["--replicaof", "127.0.0.1", &replicaof]).await;
        let config = format!(
            "sentinel monitor {name} 127.0.0.1 {port} 2\n\
             sentinel down-after-milliseconds {name} 1000\n\
             sentinel failover-timeout {name} 5000\n",
            port = master.port(),
        );
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            sentinels.push(OwnRedis::with(Some(config.clone()), &["--sentinel"]).await);
        }
        let set = SentinelSet {
            name,
            servers: vec![master, replica],
            sentinels,
        };
        set.wait_formed().await;
        set
    }

    /// The name the Sentinels monitor the master under.
    pub fn master_name(&self) -> &str {
        &self.name
    }

    /// `127.0.0.1:<port>` of each Sentinel, for `redis.sentinels`.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect()
    }

    /// The master's `host:port` as the first Sentinel that answers names it.
    pub async fn master_addr(&self) -> String {
        for sentinel in &self.sentinels {
            if let Some(addr) = self.master_by(sentinel.port()).await {
                return addr;
            }
        }
        panic!("no Sentinel names a master {}", self.name);
    }

    /// `redis://<master>`.
    pub async fn master_url(&self) -> String {
        format!("redis://{}", self.master_addr().await)
    }

    /// The data server on `addr` (`127.0.0.1:<port>`), to stop or kill.
    pub fn server_at(&mut self, addr: &str) -> &mut OwnRedis {
        self.servers
            .iter_mut()
            .find(|s| format!("127.0.0.1:{}", s.port()) == addr)
            .unwrap_or_else(|| panic!("{addr} is none of the set's servers"))
    }

    /// `SENTINEL FAILOVER` and waits until every Sentinel names another
    /// master, which says `ROLE` master; returns its address.
    pub async fn failover(&self) -> String {
        let before = self.master_addr().await;
        let asked: redis::RedisResult<String> = ask(
            self.sentinels[0].port(),
            redis::cmd("SENTINEL").arg("FAILOVER").arg(&self.name),
        )
        .await;
        asked.unwrap_or_else(|e| panic!("SENTINEL FAILOVER {}: {e}", self.name));
        self.wait_master_other_than(&before).await
    }

    /// Waits until every Sentinel names a master other than `old`, which
    /// says `ROLE` master (after a failover the test caused one way or
    /// another); returns its address.
    pub async fn wait_master_other_than(&self, old: &str) -> String {
        let moved = || async {
            let mut named = Vec::new();
            for sentinel in &self.sentinels {
                named.push(self.master_by(sentinel.port()).await?);
            }
            let addr = named.pop()?;
            let agreed = named.iter().all(|a| *a == addr);
            (agreed && addr != old && role_of(&addr).await.as_deref() == Some("master"))
                .then_some(addr)
        };
        eventually(PATIENCE, moved).await.unwrap_or_else(|| {
            panic!(
                "the Sentinels did not agree on a new master within {PATIENCE:?}; logs:\n{}",
                self.logs()
            )
        })
    }

    /// Every server's and Sentinel's log, for a failure message.
    pub fn logs(&self) -> String {
        let servers = self.servers.iter().map(|s| ("server", s));
        let sentinels = self.sentinels.iter().map(|s| ("sentinel", s));
        servers
            .chain(sentinels)
            .map(|(what, s)| {
                format!(
                    "--- {what} {} ---\n{}",
                    s.port(),
                    super::worker::tail(&s.log(), 30)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn master_by(&self, sentinel_port: u16) -> Option<String> {
        let answer: Option<(String, u16)> = ask(
            sentinel_port,
            redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(&self.name),
        )
        .await
        .ok()?;
        answer.map(|(host, port)| format!("{host}:{port}"))
    }

    /// Until each Sentinel sees the replica (and it is in sync) and the two
    /// other Sentinels: only then can a failover be agreed and carried out.
    async fn wait_formed(&self) {
        let formed = || async {
            for sentinel in &self.sentinels {
                let port = sentinel.port();
                let replicas: Vec<redis::Value> =
                    ask(port, redis::cmd("SENTINEL").arg("REPLICAS").arg(&self.name))
                        .await
                        .ok()?;
                let others: Vec<redis::Value> = ask(
                    port,
                    redis::cmd("SENTINEL").arg("SENTINELS").arg(&self.name),
                )
                .await
                .ok()?;
                if replicas.len() != 1 || others.len() != 2 {
                    return None;
                }
                let replica = fields(&replicas[0]);
                let ok = replica.get("flags").is_some_and(|f| f == "slave")
                    && replica.get("master-link-status").is_some_and(|s| s == "ok");
                if !ok {
                    return None;
                }
            }
            Some(())
        };
        eventually(PATIENCE, formed).await.unwrap_or_else(|| {
            panic!(
                "the Sentinel set did not form within {PATIENCE:?}; logs:\n{}",
                self.logs()
            )
        });
    }
}

/// The role a server at `addr` gives (`master`, `slave`), if it answers.
async fn role_of(addr: &str) -> Option<String> {
    let reply: Vec<redis::Value> = ask_addr(addr, &mut redis::cmd("ROLE")).await.ok()?;
    match reply.first()? {
        redis::Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        redis::Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

/// A `SENTINEL` reply's flat field/value list as a map.
fn fields(value: &redis::Value) -> std::collections::HashMap<String, String> {
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        other => format!("{other:?}"),
    };
    match value {
        redis::Value::Array(items) => items
            .chunks(2)
            .filter(|pair| pair.len() == 2)
            .map(|pair| (text(&pair[0]), text(&pair[1])))
            .collect(),
        redis::Value::Map(pairs) => pairs.iter().map(|(k, v)| (text(k), text(v))).collect(),
        _ => Default::default(),
    }
}

async fn ask<T: redis::FromRedisValue>(port: u16, cmd: &mut redis::Cmd) -> redis::RedisResult<T> {
    ask_addr(&format!("127.0.0.1:{port}"), cmd).await
}

/// One command on a fresh connection to `addr`, within `ASK_TIMEOUT`.
pub(crate) async fn ask_addr<T: redis::FromRedisValue>(
    addr: &str,
    cmd: &mut redis::Cmd,
) -> redis::RedisResult<T> {
    let mut conn = connect(addr).await?;
    cmd.query_async(&mut conn).await
}

/// A connection to `addr` with short timeouts.
pub(crate) async fn connect(addr: &str) -> redis::RedisResult<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(ASK_TIMEOUT))
        .set_response_timeout(Some(ASK_TIMEOUT));
    redis::Client::open(format!("redis://{addr}"))?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}
