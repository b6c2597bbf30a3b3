//! The gRPC connection every Seam client uses: unary calls over one HTTP/2 connection, made
//! with `h2` directly.
//!
//! tonic's `Channel` sends a call through a buffer task, then hyper's connection task, which
//! spawns one task for the response and one more for the request body whenever the new
//! stream has no send capacity yet (always, for a new stream). Each of those hops wakes a
//! task, often on another thread: on this project's 2-core test machines one gRPC round
//! trip took about 140 µs against 42 µs for a raw loopback round trip. Seam's calls are all
//! unary with small messages, so [`Conn`] does less: the calling task encodes the request,
//! hands HEADERS and the whole message (with END_STREAM) to h2 at once, and waits for the
//! answer; the only other task is the connection's, which does the reads and writes.
//!
//! A `Conn` connects on its first call and again on the first call after its connection
//! failed. A call that fails before its request was handed to a live connection fails with
//! [`NotSent`] in its error's source chain: it certainly did not reach the server. Optional
//! HTTP/2 keep-alive pings close a connection whose peer stopped answering (a partition
//! that drops packets would otherwise leave it open until the OS gives up). Seam's SDK, the
//! nodes' connections to each other and the benchmark's etcd driver all use it.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use http_body::{Body as HttpBody, Frame};
use tonic::body::Body;
use tonic::codegen::{http, Bytes, Service};
use tonic::Status;

/// HTTP/2 receive window of each call's stream (hyper's client default). Messages larger
/// than this still arrive, a window at a time.
pub const STREAM_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
/// HTTP/2 receive window of a whole connection (hyper's client default).
pub const CONNECTION_WINDOW_BYTES: u32 = 5 * 1024 * 1024;
/// Bytes h2 buffers per stream for sending at most before it waits for the peer's window.
pub const SEND_BUFFER_BYTES: usize = 1024 * 1024;

/// How a [`Conn`] connects and keeps its connection.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// How long a TCP connect and the HTTP/2 handshake may take together.
    pub connect_timeout: Duration,
    /// Every `interval`, ping the server and close the connection if no answer comes
    /// within `timeout`. `None`: no pings.
    pub keepalive: Option<Keepalive>,
}

/// HTTP/2 keep-alive pings (see [`Settings::keepalive`]).
#[derive(Clone, Copy, Debug)]
pub struct Keepalive {
    /// Time between pings.
    pub interval: Duration,
    /// How long an answer may take.
    pub timeout: Duration,
}

/// A lazily made HTTP/2 connection to one server; cheap to clone (clones share it).
#[derive(Clone)]
pub struct Conn {
    inner: Arc<Inner>,
}

struct Inner {
    /// `host:port`, what the TCP connect dials.
    addr: String,
    /// `http` and `host:port`, put on every request.
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    settings: Settings,
    /// The live connection. An async mutex: callers that find none wait for one connect
    /// instead of each making their own.
    slot: tokio::sync::Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    /// Connections made so far: tells a stale handle from the current one.
    generation: u64,
    /// The live connection's handle, if any.
    sender: Option<h2::client::SendRequest<Bytes>>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("addr", &self.inner.addr).finish()
    }
}

/// The error of a call that certainly never reached the server: no connection could be
/// made, or the connection was found closed before the request was handed to it.
#[derive(Debug, thiserror::Error)]
#[error("not sent to {addr}: {reason}")]
pub struct NotSent {
    /// The server's `host:port`.
    pub addr: String,
    /// What went wrong.
    pub reason: String,
    /// The underlying error, when there is one tonic would not misread.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// A bad address for [`Conn::lazy`].
#[derive(Debug, thiserror::Error)]
#[error("bad server address {addr:?}: {reason}")]
pub struct BadAddress {
    /// The address as given.
    pub addr: String,
    /// What is wrong with it.
    pub reason: String,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Conn {
    /// A connection to `uri` (`http://host:port`, or `host:port`), made on the first call.
    pub fn lazy(uri: &str, settings: Settings) -> Result<Conn, BadAddress> {
        let bad = |reason: &str| BadAddress { addr: uri.to_string(), reason: reason.to_string() };
        let full = if uri.contains("://") { uri.to_string() } else { format!("http://{uri}") };
        let parsed: http::Uri = full.parse().map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        let scheme = parsed.scheme().cloned().ok_or_else(|| bad("no scheme"))?;
        if scheme != http::uri::Scheme::HTTP {
            return Err(bad("only http:// is supported"));
        }
        let authority = parsed.authority().cloned().ok_or_else(|| bad("no host:port"))?;
        if authority.port_u16().is_none() {
            return Err(bad("no port"));
        }
        if !matches!(parsed.path(), "" | "/") {
            return Err(bad("a path is not allowed"));
        }
        let addr = authority.as_str().to_string();
        let inner = Inner { addr, scheme, authority, settings, slot: Default::default() };
        Ok(Conn { inner: Arc::new(inner) })
    }

    /// Connects now if not connected (a call does so anyway); an error says why it failed.
    pub async fn connect(&self) -> Result<(), NotSent> {
        self.inner.sender().await.map(drop)
    }

    async fn call(
        inner: Arc<Inner>,
        request: http::Request<Body>,
    ) -> Result<http::Response<RecvBody>, BoxError> {
        let (mut parts, body) = request.into_parts();
        let frames = collect(body).await?;
        let mut uri = http::uri::Parts::from(parts.uri);
        uri.scheme = Some(inner.scheme.clone());
        uri.authority = Some(inner.authority.clone());
        parts.uri = http::Uri::from_parts(uri)?;
        let request = http::Request::from_parts(parts, ());

        let mut sender = inner.ready_sender().await.map_err(unavailable)?;
        let empty = frames.is_empty();
        let (response, mut stream) = sender
            .send_request(request, empty)
            .map_err(|e| unavailable(inner.not_sent(format!("the connection refused a new stream: {e}"))))?;
        // From here the request may have reached the server: errors are not `NotSent`.
        let last = frames.len().saturating_sub(1);
        for (i, frame) in frames.into_iter().enumerate() {
            stream.send_data(frame, i == last)?;
        }
        let response = response.await?;
        Ok(response.map(|recv| RecvBody { recv, data_done: false, done: false }))
    }

    /// Opens a gRPC call at `path` (`/package.Service/Method`) with a stream of messages
    /// each way, over this connection (connecting first if need be). See [`BidiStream`].
    pub async fn bidi(&self, path: &str) -> Result<BidiStream, Status> {
        let inner = &self.inner;
        let uri = http::Uri::builder()
            .scheme(inner.scheme.clone())
            .authority(inner.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|e| Status::internal(format!("bad gRPC path {path:?}: {e}")))?;
        let request = http::Request::post(uri)
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(())
            .map_err(|e| Status::internal(format!("bad gRPC request for {path:?}: {e}")))?;
        let mut sender = inner.ready_sender().await.map_err(not_sent_status)?;
        let (response, send) = sender.send_request(request, false).map_err(|e| {
            not_sent_status(inner.not_sent(format!("the connection refused a new stream: {e}")))
        })?;
        Ok(BidiStream { send, response: Some(response), recv: None, received: BytesMut::new() })
    }
}

/// Bytes of the prefix gRPC puts before each message: a compression flag and a length.
const GRPC_PREFIX_BYTES: usize = 5;

/// One gRPC call with a stream of messages each way, opened by [`Conn::bidi`]. Messages go
/// out as they are sent, each in one DATA frame, and come back in order; no task other
/// than the connection's is involved. Messages are not compressed. Dropping the stream
/// cancels the call (the server sees RST_STREAM).
///
/// Used where one peer sends many small requests in turn: a unary call costs a new HTTP/2
/// stream each (HEADERS both ways, a new task on the server), a message on an open stream
/// only its DATA frame.
pub struct BidiStream {
    send: h2::SendStream<Bytes>,
    /// The response's headers, until the first receive.
    response: Option<h2::client::ResponseFuture>,
    recv: Option<h2::RecvStream>,
    /// Bytes received and not yet returned as messages: at most one message under the
    /// receiver's limit, plus the DATA frame that completed it.
    received: BytesMut,
}

impl BidiStream {
    /// Sends one message, of at most `bytes_max` bytes encoded. It is buffered by h2 (at
    /// most this message, as long as the caller waits for answers) until the peer's
    /// flow-control window lets it out.
    pub fn send(&mut self, message: &impl prost::Message, bytes_max: usize) -> Result<(), Status> {
        let len = message.encoded_len();
        let too_large = || {
            Status::resource_exhausted(format!(
                "a {len} byte message is larger than the limit of {bytes_max}"
            ))
        };
        if len > bytes_max {
            return Err(too_large());
        }
        let prefix_len = u32::try_from(len).map_err(|_| too_large())?;
        let mut frame = BytesMut::with_capacity(GRPC_PREFIX_BYTES + len);
        frame.put_u8(0);
        frame.put_u32(prefix_len);
        message.encode(&mut frame).map_err(|e| Status::internal(format!("encoding a message: {e}")))?;
        self.send
            .send_data(frame.freeze(), false)
            .map_err(|e| Status::unavailable(format!("sending on the stream: {e}")))
    }

    /// Receives the next message, of at most `bytes_max` bytes encoded. The stream's end is
    /// an error: its gRPC status if the server gave one, else `Unavailable`.
    pub async fn recv<M: prost::Message + Default>(&mut self, bytes_max: usize) -> Result<M, Status> {
        let message = self.recv_encoded(bytes_max).await?;
        M::decode(message).map_err(|e| Status::internal(format!("an undecodable message on the stream: {e}")))
    }

    async fn recv_encoded(&mut self, bytes_max: usize) -> Result<Bytes, Status> {
        if self.recv.is_none() {
            let Some(response) = self.response.take() else {
                return Err(Status::unavailable("the stream has ended"));
            };
            let response =
                response.await.map_err(|e| Status::unavailable(format!("opening the stream: {e}")))?;
            // A call refused at once ("trailers-only") carries its status in the headers.
            if let Some(status) = Status::from_header_map(response.headers()) {
                if status.code() != tonic::Code::Ok {
                    return Err(status);
                }
            }
            if response.status() != http::StatusCode::OK {
                return Err(Status::unknown(format!("HTTP status {} on a gRPC stream", response.status())));
            }
            self.recv = Some(response.into_body());
        }
        let Some(recv) = self.recv.as_mut() else {
            return Err(Status::unavailable("the stream has ended"));
        };
        loop {
            if let Some(message) = next_message(&mut self.received, bytes_max)? {
                return Ok(message);
            }
            match recv.data().await {
                Some(Ok(chunk)) => {
                    // Gives the window back, so the server may send more.
                    let _ = recv.flow_control().release_capacity(chunk.len());
                    self.received.extend_from_slice(&chunk);
                }
                Some(Err(e)) => return Err(Status::unavailable(format!("receiving on the stream: {e}"))),
                None => {
                    let trailers = recv.trailers().await.ok().flatten();
                    let status = trailers.as_ref().and_then(Status::from_header_map);
                    return Err(match status {
                        Some(status) if status.code() != tonic::Code::Ok => status,
                        _ => Status::unavailable("the server ended the stream"),
                    });
                }
            }
        }
    }
}

/// The first whole message in `received`, taken out, if there is one.
fn next_message(received: &mut BytesMut, bytes_max: usize) -> Result<Option<Bytes>, Status> {
    if received.len() < GRPC_PREFIX_BYTES {
        return Ok(None);
    }
    if received[0] != 0 {
        return Err(Status::internal("a compressed message on the stream (none was asked for)"));
    }
    let len = u32::from_be_bytes([received[1], received[2], received[3], received[4]]) as usize;
    if len > bytes_max {
        return Err(Status::resource_exhausted(format!(
            "a {len} byte message on the stream is larger than the limit of {bytes_max}"
        )));
    }
    if received.len() < GRPC_PREFIX_BYTES + len {
        return Ok(None);
    }
    received.advance(GRPC_PREFIX_BYTES);
    Ok(Some(received.split_to(len).freeze()))
}

/// What tonic makes of a [`NotSent`]: `Unavailable`, with the `NotSent` as its source.
fn unavailable(e: NotSent) -> BoxError {
    Box::new(not_sent_status(e))
}

/// `Unavailable`, with the `NotSent` as its source.
fn not_sent_status(e: NotSent) -> Status {
    let mut status = Status::unavailable(e.to_string());
    status.set_source(Arc::new(e));
    status
}

impl Inner {
    /// The live connection's handle and its generation, connecting first if there is none.
    async fn sender(&self) -> Result<(u64, h2::client::SendRequest<Bytes>), NotSent> {
        let mut slot = self.slot.lock().await;
        if let Some(sender) = &slot.sender {
            return Ok((slot.generation, sender.clone()));
        }
        let sender = self.dial().await?;
        slot.generation += 1;
        slot.sender = Some(sender.clone());
        Ok((slot.generation, sender))
    }

    /// A handle ready to open a stream. A connection found closed is forgotten and made
    /// again, once per call.
    async fn ready_sender(&self) -> Result<h2::client::SendRequest<Bytes>, NotSent> {
        let (generation, sender) = self.sender().await?;
        match sender.ready().await {
            Ok(ready) => Ok(ready),
            Err(e) => {
                tracing::debug!(addr = %self.addr, error = %e, "connection closed; connecting again");
                {
                    let mut slot = self.slot.lock().await;
                    if slot.generation == generation {
                        slot.sender = None;
                    }
                }
                let (_, sender) = self.sender().await?;
                sender
                    .ready()
                    .await
                    .map_err(|e| self.not_sent(format!("the new connection closed at once: {e}")))
            }
        }
    }

    /// A `NotSent` with no source. An h2 error goes into the text, never the source: tonic
    /// would turn an h2 error it finds in the chain into a status of its own and drop the
    /// `NotSent`.
    fn not_sent(&self, reason: String) -> NotSent {
        NotSent { addr: self.addr.clone(), reason, source: None }
    }

    async fn dial(&self) -> Result<h2::client::SendRequest<Bytes>, NotSent> {
        let not_sent = |reason| self.not_sent(reason);
        let handshake = async {
            let tcp = tokio::net::TcpStream::connect(&self.addr).await.map_err(|e| NotSent {
                addr: self.addr.clone(),
                reason: format!("cannot connect: {e}"),
                source: Some(Box::new(e)),
            })?;
            tcp.set_nodelay(true).map_err(|e| not_sent(format!("cannot set TCP_NODELAY: {e}")))?;
            h2::client::Builder::new()
                .initial_window_size(STREAM_WINDOW_BYTES)
                .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
                .max_send_buffer_size(SEND_BUFFER_BYTES)
                .enable_push(false)
                .handshake::<_, Bytes>(tcp)
                .await
                .map_err(|e| not_sent(format!("HTTP/2 handshake failed: {e}")))
        };
        let timeout = self.settings.connect_timeout;
        let (sender, connection) = tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| not_sent(format!("no connection within {timeout:?}")))??;
        tokio::spawn(drive(connection, self.settings.keepalive, self.addr.clone()));
        Ok(sender)
    }
}

/// Runs a connection until it closes (every handle and stream dropped, or an error), or
/// until a keep-alive ping goes unanswered.
async fn drive(
    mut connection: h2::client::Connection<tokio::net::TcpStream, Bytes>,
    keepalive: Option<Keepalive>,
    addr: String,
) {
    let pings = keepalive.and_then(|k| connection.ping_pong().map(|p| (k, p)));
    let Some((keepalive, mut ping_pong)) = pings else {
        if let Err(e) = connection.await {
            tracing::debug!(%addr, error = %e, "connection ended");
        }
        return;
    };
    let watchdog = async move {
        loop {
            tokio::time::sleep(keepalive.interval).await;
            match tokio::time::timeout(keepalive.timeout, ping_pong.ping(h2::Ping::opaque())).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return format!("ping failed: {e}"),
                Err(_) => return format!("no answer to a ping within {:?}", keepalive.timeout),
            }
        }
    };
    tokio::select! {
        ended = connection => if let Err(e) = ended {
            tracing::debug!(%addr, error = %e, "connection ended");
        },
        why = watchdog => tracing::debug!(%addr, %why, "closing the connection"),
    }
}

/// Every DATA frame of a request body (one, for a unary call), in order.
async fn collect(mut body: Body) -> Result<Vec<Bytes>, Status> {
    let mut frames = Vec::with_capacity(1);
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        if let Ok(data) = frame?.into_data() {
            if !data.is_empty() {
                frames.push(data);
            }
        }
    }
    Ok(frames)
}

impl Service<http::Request<Body>> for Conn {
    type Response = http::Response<RecvBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is waited for per call, on the connection's stream limit.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        Box::pin(Conn::call(self.inner.clone(), request))
    }
}

/// A response body: h2's stream, its DATA frames then its trailers.
pub struct RecvBody {
    recv: h2::RecvStream,
    data_done: bool,
    done: bool,
}

impl HttpBody for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match this.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    // Gives the window back, so the server may send more.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => this.data_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        match this.recv.poll_trailers(cx) {
            Poll::Ready(result) => {
                this.done = true;
                match result {
                    Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                    Ok(None) => Poll::Ready(None),
                    Err(e) => Poll::Ready(Some(Err(e))),
                }
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.recv.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seam_proto::v1 as pb;
    use seam_proto::v1::kv_client::KvClient;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::net::TcpListener;

    const SETTINGS: Settings = Settings { connect_timeout: Duration::from_secs(2), keepalive: None };

    /// An HTTP/2 server that answers every call with the gRPC status NOT_FOUND and, with
    /// `close_after_each`, then closes the connection (GOAWAY). Counts connections.
    async fn h2_server(close_after_each: bool) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(socket).await else { return };
                    while let Some(Ok((_request, mut respond))) = conn.accept().await {
                        let response = http::Response::builder()
                            .header("content-type", "application/grpc")
                            .header("grpc-status", "5")
                            .header("grpc-message", "nope")
                            .body(())
                            .expect("response");
                        let _ = respond.send_response(response, true);
                        if close_after_each {
                            conn.graceful_shutdown();
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    async fn get(conn: &Conn) -> Status {
        KvClient::new(conn.clone())
            .get(pb::GetRequest::default())
            .await
            .expect_err("the server says NOT_FOUND")
    }

    fn has_not_sent(status: &Status) -> bool {
        let mut source = std::error::Error::source(status);
        while let Some(e) = source {
            if e.downcast_ref::<NotSent>().is_some() {
                return true;
            }
            source = e.source();
        }
        false
    }

    #[tokio::test]
    async fn a_call_reaches_the_server_and_brings_its_status_back() {
        let (addr, accepted) = h2_server(false).await;
        let conn = Conn::lazy(&addr, SETTINGS).expect("address");
        for _ in 0..3 {
            let status = get(&conn).await;
            assert_eq!((status.code(), status.message()), (tonic::Code::NotFound, "nope"));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "calls share one connection");
    }

    #[tokio::test]
    async fn a_closed_connection_is_made_again_by_the_next_call() {
        let (addr, accepted) = h2_server(true).await;
        let conn = Conn::lazy(&addr, SETTINGS).expect("address");
        for round in 1..=3 {
            assert_eq!(get(&conn).await.code(), tonic::Code::NotFound, "call {round}");
            // Let the GOAWAY arrive before the next call.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    /// A loopback address nobody listens on.
    async fn dead_address() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("addr").to_string()
    }

    #[tokio::test]
    async fn a_call_nobody_accepts_is_unavailable_and_not_sent() {
        let conn = Conn::lazy(&dead_address().await, SETTINGS).expect("address");
        let status = get(&conn).await;
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(has_not_sent(&status), "{status:?}");
    }

    #[tokio::test]
    async fn an_unanswered_ping_closes_the_connection() {
        // A server that completes the handshake and then never reads again.
        async fn silent_server() -> String {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr").to_string();
            tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok((socket, _)) = listener.accept().await {
                    if let Ok(conn) = h2::server::handshake(socket).await {
                        held.push(conn);
                    }
                }
            });
            addr
        }
        async fn open_after_a_while(keepalive: Option<Keepalive>) -> bool {
            let conn =
                Conn::lazy(&silent_server().await, Settings { keepalive, ..SETTINGS }).expect("address");
            conn.connect().await.expect("the handshake completes");
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (_, sender) = conn.inner.sender().await.expect("connected");
            tokio::time::timeout(Duration::from_millis(100), sender.ready()).await.is_ok_and(|r| r.is_ok())
        }
        let pings = Keepalive { interval: Duration::from_millis(100), timeout: Duration::from_millis(100) };
        assert!(!open_after_a_while(Some(pings)).await, "no answer to a ping: closed");
        assert!(open_after_a_while(None).await, "without pings the connection stays");
    }

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut frame = vec![0];
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(message);
        frame
    }

    #[test]
    fn messages_are_taken_whole_from_what_arrived() {
        let mut received = BytesMut::new();
        let two = [framed(b"first"), framed(b"second")].concat();
        received.extend_from_slice(&two[..3]);
        assert_eq!(next_message(&mut received, 100).expect("ok"), None, "half a prefix");
        received.extend_from_slice(&two[3..8]);
        assert_eq!(next_message(&mut received, 100).expect("ok"), None, "half a message");
        received.extend_from_slice(&two[8..]);
        assert_eq!(next_message(&mut received, 100).expect("ok").as_deref(), Some(&b"first"[..]));
        assert_eq!(next_message(&mut received, 100).expect("ok").as_deref(), Some(&b"second"[..]));
        assert_eq!(next_message(&mut received, 100).expect("ok"), None);
        assert!(received.is_empty());
    }

    #[test]
    fn an_oversized_or_compressed_message_is_refused() {
        let mut received = BytesMut::from(&framed(b"0123456789")[..]);
        let e = next_message(&mut received, 9).expect_err("over the limit");
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
        let mut compressed = framed(b"x");
        compressed[0] = 1;
        let e = next_message(&mut BytesMut::from(&compressed[..]), 9).expect_err("compressed");
        assert_eq!(e.code(), tonic::Code::Internal, "{e:?}");
    }

    /// An HTTP/2 server whose every call echoes the DATA it receives and ends with status OK
    /// when the caller ends its side; with `refuse`, it answers each call at once with
    /// UNIMPLEMENTED ("trailers-only").
    async fn echo_server(refuse: bool) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(socket).await else { return };
                    while let Some(Ok((request, mut respond))) = conn.accept().await {
                        let headers = http::Response::builder().header("content-type", "application/grpc");
                        if refuse {
                            let refusal = headers.header("grpc-status", "12").body(()).expect("response");
                            let _ = respond.send_response(refusal, true);
                            continue;
                        }
                        let Ok(mut send) = respond.send_response(headers.body(()).expect("response"), false)
                        else {
                            return;
                        };
                        let mut body = request.into_body();
                        tokio::spawn(async move {
                            while let Some(Ok(chunk)) = body.data().await {
                                let _ = body.flow_control().release_capacity(chunk.len());
                                let _ = send.send_data(chunk, false);
                            }
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                            let _ = send.send_trailers(trailers);
                        });
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_bidi_stream_carries_messages_both_ways_in_order() {
        let conn = Conn::lazy(&echo_server(false).await, SETTINGS).expect("address");
        let mut stream = conn.bidi("/test.Echo/Stream").await.expect("open");
        for i in 0..50u32 {
            let message = vec![i as u8; i as usize * 1000];
            stream.send(&message, 1 << 20).expect("send");
            assert_eq!(stream.recv::<Vec<u8>>(1 << 20).await.expect("recv"), message, "message {i}");
        }
        // A message larger than the sender's limit is not sent.
        let e = stream.send(&vec![7u8; 2000], 1000).expect_err("too large to send");
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        // A message larger than the receiver's limit is refused, not returned cut.
        stream.send(&vec![7u8; 2000], 1 << 20).expect("send");
        let e = stream.recv::<Vec<u8>>(1000).await.expect_err("too large to receive");
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    }

    #[tokio::test]
    async fn a_refused_bidi_call_brings_its_status_back() {
        let conn = Conn::lazy(&echo_server(true).await, SETTINGS).expect("address");
        let mut stream = conn.bidi("/test.Echo/Stream").await.expect("open");
        stream.send(&b"hello".to_vec(), 1 << 20).expect("send");
        let status = stream.recv::<Vec<u8>>(1 << 20).await.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
    }

    #[tokio::test]
    async fn a_bidi_call_nobody_accepts_is_unavailable_and_not_sent() {
        let conn = Conn::lazy(&dead_address().await, SETTINGS).expect("address");
        let e = conn.bidi("/test.Echo/Stream").await.err().expect("nobody listens");
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        assert!(has_not_sent(&e), "{e:?}");
    }

    #[test]
    fn addresses_are_checked() {
        assert!(Conn::lazy("127.0.0.1:7000", SETTINGS).is_ok());
        assert!(Conn::lazy("http://127.0.0.1:7000", SETTINGS).is_ok());
        for bad in ["https://127.0.0.1:7000", "127.0.0.1", "http://a:1/path", "not an address"] {
            assert!(Conn::lazy(bad, SETTINGS).is_err(), "{bad}");
        }
    }
}
