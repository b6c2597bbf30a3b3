//! Asking a node how it is: `GET /health` on its metrics address (plain HTTP/1.1 over a
//! TCP stream; the harness needs nothing more).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes of a /health answer read at most.
pub const HEALTH_BYTES_MAX: u64 = 64 * 1024;
/// How long one probe may take.
pub const PROBE_TIMEOUT_MS: u64 = 1_000;

/// The fields of `/health` the harness uses.
#[derive(Clone, Debug, Deserialize)]
pub struct Health {
    /// `ok`, `degraded`, or `not-member` (the node is not in the membership it knows).
    pub status: String,
    /// The node.
    pub node_id: u64,
    /// leader | follower | candidate | learner | shutdown
    pub role: String,
    /// The leader it knows of.
    pub leader: Option<u64>,
    /// Its term.
    pub term: u64,
    /// Its applied index.
    pub applied_index: u64,
}

/// The node's /health, or why it could not be had.
pub async fn health(addr: SocketAddr) -> Result<Health, String> {
    let probe = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
        let mut bytes = Vec::new();
        (&mut stream)
            .take(HEALTH_BYTES_MAX)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&bytes);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).ok_or("no HTTP body")?;
        // Tolerate chunked encoding: the JSON object is between the outer braces.
        let start = body.find('{').ok_or("no JSON in the body")?;
        let end = body.rfind('}').ok_or("no JSON in the body")?;
        serde_json::from_str::<Health>(&body[start..=end]).map_err(|e| format!("bad /health JSON: {e}"))
    };
    tokio::time::timeout(Duration::from_millis(PROBE_TIMEOUT_MS), probe)
        .await
        .map_err(|_| format!("no answer within {PROBE_TIMEOUT_MS} ms"))?
}
