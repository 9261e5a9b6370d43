//! Operator commands that act once and exit: `migrate` and `servers`.

use crate::cli::{AddServer, ServersAction};
use crate::config::Settings;
use crate::job::{SecretRef, ServerAddress, ServerHandle};
use crate::store::{NewServer, Server, Store, StoreError};

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The operator asked for something that does not fit (exit 1).
    #[error("{0}")]
    Usage(String),
    /// The database failed (exit 2).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Applies the migrations.
pub async fn migrate(settings: &Settings) -> Result<(), OperatorError> {
    let store = Store::connect_lazy(settings.postgres.url.as_ref(), 0)?;
    store.migrate().await?;
    println!("migrations applied");
    Ok(())
}

/// Runs one `servers` subcommand.
pub async fn servers(settings: &Settings, action: ServersAction) -> Result<(), OperatorError> {
    let store = Store::connect_lazy(settings.postgres.url.as_ref(), 0)?;
    store.migrate().await?;
    match action {
        ServersAction::Add(args) => {
            let server = new_server(args)?;
            store.add_server(&server).await.map_err(|e| match e {
                StoreError::ServerExists(_) => OperatorError::Usage(e.to_string()),
                e => e.into(),
            })?;
            println!("server {} added (status new)", server.handle);
        }
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
        ServersAction::Remove { handle } => {
            if !store.remove_server(&handle).await? {
                return Err(not_found(&handle));
            }
            println!("server {handle} removed");
        }
        ServersAction::ResetHostKey { handle } => {
            if !store.reset_server_host_key(&handle).await? {
                return Err(not_found(&handle));
            }
            println!("host key of {handle} forgotten; the next provision pins the key it sees");
        }
    }
    Ok(())
}

/// Checks an operator's input with the same rules jobs obey.
fn new_server(args: AddServer) -> Result<NewServer, OperatorError> {
    let usage = |field: &str, problem: String| OperatorError::Usage(format!("{field}: {problem}"));
    ServerHandle::parse(&args.handle).map_err(|e| usage("handle", e))?;
    ServerAddress::parse(&args.address).map_err(|e| usage("--address", e))?;
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
        public_ip: args.address,
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
