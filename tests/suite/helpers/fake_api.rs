//! Serving a stand-in HTTP API (Time4VPS, GitHub) on a free loopback port
//! for as long as the test holds it.

use std::net::SocketAddr;

use axum::Router;
use tokio::task::JoinHandle;

/// Serves `router` on 127.0.0.1, a port the kernel picks; `what` names the
/// stand-in in a panic. Abort the handle to stop it.
pub async fn serve_on_loopback(router: Router, what: &str) -> (SocketAddr, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind {what}: {e}"));
    let addr = listener.local_addr().expect("the listener's address");
    let what = what.to_owned();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .await
            .unwrap_or_else(|e| panic!("{what} stopped: {e}"));
    });
    (addr, server)
}
