//! Operator commands that act once and exit: `migrate`, `servers`, `dead`,
//! and (in `jobs`) `enqueue` and `status`. Output goes to stdout (a table or,
//! with `--json`, JSON); notes and errors to stderr.

mod jobs;

pub use jobs::{EXIT_FAILED, EXIT_RUNNING, EXIT_SUCCESS, EXIT_UNKNOWN, enqueue, status};

use serde::Serialize;

use crate::cli::{AddServer, DeadAction, ServersAction};
use crate::config::Settings;
use crate::job::{SecretRef, ServerAddress, ServerHandle};
use crate::queue::{DeadLetterEntry, DeadLetterPage, DeadLetters, Names, QueueError, ReplayError};
use crate::store::{NewServer, Server, Store, StoreError};

/// The most of one payload `dead list --json` prints; longer ones are cut
/// and marked `payload_truncated`.
pub const JSON_PAYLOAD_CAP: usize = 1024 * 1024;

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The operator asked for something that does not fit (exit 1).
    #[error("{0}")]
    Usage(String),
    /// The database failed (exit 2).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Redis failed (exit 2).
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A wait ran out of time (exit 2).
    #[error("{0}")]
    Timeout(String),
}

/// Applies the migrations.
pub async fn migrate(settings: &Settings) -> Result<(), OperatorError> {
    let store = Store::open(settings, 0).await?;
    store.migrate().await?;
    println!("migrations applied");
    Ok(())
}

/// Runs one `servers` subcommand.
pub async fn servers(settings: &Settings, action: ServersAction) -> Result<(), OperatorError> {
    let store = Store::open(settings, 0).await?;
    store.migrate().await?;
    match action {
        ServersAction::Add(args) => add_server(&store, args).await?,
        ServersAction::List { json } => {
            let servers = store.servers().await?;
            if json {
                println!("{}", to_json(&servers));
            } else {
                print_table(&servers);
            }
        }
        ServersAction::Show { handle, json } => {
            let server = store
                .server(&handle)
                .await?
                .ok_or_else(|| not_found(&handle))?;
            if json {
                println!("{}", to_json(&server));
            } else {
                print_server(&server);
            }
        }
        ServersAction::Remove { handle, json } => {
            if !store.remove_server(&handle).await? {
                return Err(not_found(&handle));
            }
            if json {
                println!("{}", serde_json::json!({"handle": handle, "removed": true}));
            } else {
                println!("server {handle} removed");
            }
        }
        ServersAction::ResetHostKey { handle, json } => {
            if !store.reset_server_host_key(&handle).await? {
                return Err(not_found(&handle));
            }
            if json {
                println!("{}", to_json(&store.server(&handle).await?));
            } else {
                println!("host key of {handle} forgotten; the next provision pins the key it sees");
            }
        }
    }
    Ok(())
}

/// `servers add`: checks the flags, registers the server (status `new`).
async fn add_server(store: &Store, args: AddServer) -> Result<(), OperatorError> {
    let json = args.json;
    let server = new_server(args)?;
    store.add_server(&server).await.map_err(|e| match e {
        StoreError::ServerExists(_) => OperatorError::Usage(e.to_string()),
        e => e.into(),
    })?;
    if json {
        let added = store.server(&server.handle).await?;
        println!("{}", to_json(&added));
    } else {
        println!("server {} added (status new)", server.handle);
    }
    Ok(())
}

/// Runs one `dead` subcommand; needs Redis only.
pub async fn dead(settings: &Settings, action: DeadAction) -> Result<(), OperatorError> {
    let letters = DeadLetters::connect(&settings.redis).await?;
    match action {
        DeadAction::List(args) => {
            // The table shows sizes only: keep payloads in Redis.
            let cap = if args.json { JSON_PAYLOAD_CAP } else { 0 };
            let page = letters.list(args.count as usize, cap).await?;
            if args.json {
                let rows: Vec<DeadLetterJson> = page.entries.iter().map(Into::into).collect();
                println!("{}", to_json(&rows));
            } else {
                print_dead_table(letters.names(), &page);
            }
            if (page.entries.len() as u64) < page.total {
                eprintln!(
                    "showing the newest {} of {} dead letters; --count N shows more",
                    page.entries.len(),
                    page.total
                );
            }
        }
        DeadAction::Replay(args) => {
            let replayed = letters.replay(&args.id).await.map_err(|e| match e {
                ReplayError::Queue(e) => OperatorError::Queue(e),
                e => OperatorError::Usage(e.to_string()),
            })?;
            if args.json {
                let out = serde_json::json!({
                    "dead_letter_id": args.id,
                    "stream": replayed.stream,
                    "entry_id": replayed.entry_id,
                });
                println!("{}", to_json(&out));
            } else {
                println!(
                    "replayed dead letter {} onto {} as entry {}",
                    args.id,
                    letters.names().unprefixed(&replayed.stream),
                    replayed.entry_id
                );
            }
        }
    }
    Ok(())
}

/// A dead letter in `dead list --json`: every field as stored (`stream`
/// with its key prefix), the payload as lossy UTF-8.
#[derive(Serialize)]
struct DeadLetterJson<'a> {
    id: &'a str,
    reason: Option<&'a str>,
    stream: Option<&'a str>,
    entry_id: Option<&'a str>,
    request_id: Option<&'a str>,
    worker: Option<&'a str>,
    dead_at: Option<&'a str>,
    payload: Option<String>,
    /// The whole payload's length in bytes.
    payload_size: Option<u64>,
    /// True when `payload` holds only the first `JSON_PAYLOAD_CAP` bytes.
    payload_truncated: bool,
}

impl<'a> From<&'a DeadLetterEntry> for DeadLetterJson<'a> {
    fn from(letter: &'a DeadLetterEntry) -> Self {
        DeadLetterJson {
            id: &letter.id,
            reason: letter.reason.as_deref(),
            stream: letter.stream.as_deref(),
            entry_id: letter.entry_id.as_deref(),
            request_id: letter.request_id.as_deref(),
            worker: letter.worker.as_deref(),
            dead_at: letter.dead_at.as_deref(),
            payload: letter
                .payload
                .as_deref()
                .map(|bytes| String::from_utf8_lossy(bytes).into_owned()),
            payload_size: letter.payload_size,
            payload_truncated: letter.payload_truncated(),
        }
    }
}

fn print_dead_table(names: &Names, page: &DeadLetterPage) {
    println!(
        "{:<20} {:<24} {:<22} {:<30} {:>9}  REASON",
        "ID", "DEAD AT", "STREAM", "REQUEST ID", "PAYLOAD"
    );
    for letter in &page.entries {
        let reason = letter.reason.as_deref().unwrap_or("-");
        println!(
            "{:<20} {:<24} {:<22} {:<30} {:>9}  {}",
            letter.id,
            letter.dead_at.as_deref().unwrap_or("-"),
            letter
                .stream
                .as_deref()
                .map_or("-", |s| names.unprefixed(s)),
            letter.request_id.as_deref().unwrap_or("-"),
            letter
                .payload_size
                .map_or_else(|| "-".to_owned(), human_size),
            // One line per letter, whatever the reason holds.
            reason.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }
}

/// `512 B`, `3.4 KiB`, `10.0 MiB`.
fn human_size(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b < KIB {
        format!("{bytes} B")
    } else if b < KIB * KIB {
        format!("{:.1} KiB", b / KIB)
    } else {
        format!("{:.1} MiB", b / (KIB * KIB))
    }
}

/// Checks an operator's input with the same rules jobs obey.
fn new_server(args: AddServer) -> Result<NewServer, OperatorError> {
    let usage = |field: &str, problem: String| OperatorError::Usage(format!("{field}: {problem}"));
    ServerHandle::parse(&args.handle).map_err(|e| usage("handle", e))?;
    // Stored in its canonical spelling: deploys look registered servers up
    // (lock, pin, target policy) by that spelling.
    let address = ServerAddress::parse(&args.address).map_err(|e| usage("--address", e))?;
    SecretRef::parse(&args.key_ref).map_err(|e| usage("--key-ref", e))?;
    if args.port == 0 {
        return Err(usage("--port", "must be 1-65535".to_owned()));
    }
    if args.provider == "time4vps" && args.provider_id.is_none() {
        return Err(usage(
            "--provider-id",
            "is required for time4vps servers (reinstalls need it)".to_owned(),
        ));
    }
    Ok(NewServer {
        handle: args.handle,
        public_ip: address.canonical(),
        ssh_port: args.port,
        ssh_user: args.user,
        ssh_key_ref: args.key_ref,
        provider: args.provider,
        provider_server_id: args.provider_id,
    })
}

fn not_found(handle: &str) -> OperatorError {
    OperatorError::Usage(format!("no server with handle `{handle}`"))
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).expect("rows always serialize")
}

fn print_table(servers: &[Server]) {
    println!(
        "{:<24} {:<22} {:<12} {:<9} {:<12} LAST ERROR",
        "HANDLE", "ADDRESS", "STATUS", "PROVIDER", "HOST KEY"
    );
    for s in servers {
        println!(
            "{:<24} {:<22} {:<12} {:<9} {:<12} {}",
            s.handle,
            format!("{}:{}", s.public_ip, s.ssh_port),
            s.status,
            s.provider,
            if s.host_key.is_some() { "pinned" } else { "-" },
            s.last_error.as_deref().unwrap_or("-")
        );
    }
}

fn print_server(s: &Server) {
    println!("handle:             {}", s.handle);
    println!("address:            {}:{}", s.public_ip, s.ssh_port);
    println!("user:               {}", s.ssh_user);
    println!("key reference:      {}", s.ssh_key_ref);
    println!("provider:           {}", s.provider);
    println!(
        "provider server id: {}",
        s.provider_server_id.as_deref().unwrap_or("-")
    );
    println!("status:             {}", s.status);
    println!(
        "last error:         {}",
        s.last_error.as_deref().unwrap_or("-")
    );
    println!(
        "host key:           {}",
        s.host_key.as_deref().map_or("not pinned", str::trim)
    );
    println!("updated at:         {}", s.updated_at.to_rfc3339());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_in_the_largest_fitting_unit() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(10 * 1024 * 1024), "10.0 MiB");
    }
}
