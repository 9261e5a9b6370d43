//! Ports for servers a test stops and starts again on the same port. They
//! come from below the kernel's ephemeral range (32768+ by default), so an
//! outgoing connection can never take one while its server is down, and
//! they never meet the `port 0` picks of the other helpers.

use std::net::TcpListener;

const FIRST: u16 = 20_000;
const LAST: u16 = 32_000;

/// A port of 127.0.0.1 nobody listens on right now. Another test may pick
/// it before our server binds: callers start their server and retry with
/// another port when it cannot bind.
pub(crate) fn free_stable_port() -> u16 {
    for _ in 0..200 {
        let bytes = *uuid::Uuid::new_v4().as_bytes();
        let port = FIRST + u16::from_le_bytes([bytes[0], bytes[1]]) % (LAST - FIRST);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{LAST} on 127.0.0.1");
}
