//! Throwaway Redis and Postgres containers for machines without the local
//! services. One container per kind per test binary: started on first use in
//! a thread of its own (so it outlives each test's runtime), removed at exit.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, Once, mpsc};
use std::time::Duration;

use testcontainers::runners::AsyncRunner;
use testcontainers_modules::{postgres::Postgres, redis::Redis};

type Started = Result<(Box<dyn Any + Send>, u16), String>;
type Starter = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = Started> + Send>> + Send>;

/// Stop signal and "removed" acknowledgement of each live container.
static LIVE: Mutex<Vec<(tokio::sync::oneshot::Sender<()>, mpsc::Receiver<()>)>> =
    Mutex::new(Vec::new());
static AT_EXIT: Once = Once::new();

/// Starts a Redis container and returns its URL.
pub(crate) fn redis_url() -> String {
    let port = keep_alive(
        "redis",
        Box::new(|| {
            Box::pin(async {
                let c = Redis::default().start().await.map_err(|e| e.to_string())?;
                let port = c
                    .get_host_port_ipv4(6379)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok((Box::new(c) as Box<dyn Any + Send>, port))
            })
        }),
    );
    format!("redis://127.0.0.1:{port}")
}

/// Starts a Postgres container and returns a URL of its `postgres` database.
pub(crate) fn postgres_url() -> String {
    let port = keep_alive(
        "postgres",
        Box::new(|| {
            Box::pin(async {
                let c = Postgres::default()
                    .start()
                    .await
                    .map_err(|e| e.to_string())?;
                let port = c
                    .get_host_port_ipv4(5432)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok((Box::new(c) as Box<dyn Any + Send>, port))
            })
        }),
    );
    format!("postgres://postgres:postgres@127.0.0.1:{port}/postgres")
}

fn keep_alive(what: &str, start: Starter) -> u16 {
    let (port_tx, port_rx) = mpsc::channel::<Result<u16, String>>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the container thread");
        rt.block_on(async move {
            match start().await {
                Ok((container, port)) => {
                    let _ = port_tx.send(Ok(port));
                    let _ = stop_rx.await;
                    // Dropping a ContainerAsync removes the container.
                    drop(container);
                }
                Err(e) => {
                    let _ = port_tx.send(Err(e));
                }
            }
        });
        let _ = done_tx.send(());
    });
    let port = port_rx
        .recv()
        .expect("the container thread answers")
        .unwrap_or_else(|e| {
            panic!(
                "starting a {what} container failed: {e}\n\
                 (no Docker here? set TEST_REDIS_URL / TEST_DATABASE_URL to local servers)"
            )
        });
    LIVE.lock().unwrap().push((stop_tx, done_rx));
    AT_EXIT.call_once(|| {
        // SAFETY: registering a plain extern "C" function with no captured state.
        unsafe {
            libc::atexit(remove_all);
        }
    });
    port
}

extern "C" fn remove_all() {
    let live = std::mem::take(&mut *LIVE.lock().unwrap_or_else(|p| p.into_inner()));
    for (stop, done) in live {
        let _ = stop.send(());
        let _ = done.recv_timeout(Duration::from_secs(20));
    }
}
