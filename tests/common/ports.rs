//! Loopback ports for the servers a test or a benchmark starts: one free
//! now, and waiting until a server listens on one.

use std::time::Duration;

/// A TCP port free on loopback now (for a server a test starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// Returns once something listens on `127.0.0.1:port` (5 s at most;
/// `what` names the server in the panic otherwise).
pub async fn wait_listening(port: u16, what: &str) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not listen on 127.0.0.1:{port}");
}
