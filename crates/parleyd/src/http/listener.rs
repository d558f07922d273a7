//! The HTTP accept loop: hyper's HTTP/1.1 with upgrades (for WebSocket), plain or TLS, with
//! the timeouts that keep silent and slow clients from holding connections (issue 10).
//!
//! `axum::serve` sets no timer at all, and hyper-util's auto builder (under axum-server) first
//! waits for enough bytes to rule out HTTP/2 with no timer running: either way a connection
//! that sends nothing stayed open forever, and 562 of them used up the file descriptors and
//! locked everyone out. hyper's own HTTP/1 connection arms its header timer whenever it waits
//! for a request head: on a new connection, and on a keep-alive one after each response.
//! Request bodies get their own deadline (`DeadlineBody`); TLS handshakes share the header
//! timeout. WebSocket and long-polling connections are not affected: a handler that is running
//! (a poll held open) is not waiting for a head, and an upgraded connection leaves hyper.
//!
//! The port is also the front door of the TURN relay (issue 11): networks that let only HTTPS
//! out still reach TURN over TLS here. Each connection's first bytes (`demux`) decide, before
//! the TLS handshake and again after it: TLS is handshaken; STUN goes to the relay (TURN over
//! TCP, or over TLS inside the handshake); plain HTTP on the TLS port gets a redirect to https;
//! anything else, and a connection silent for `http.header_timeout_secs`, is closed and
//! counted. Before the handshake the bytes are only peeked (TLS, hyper and the relay read them
//! from the socket as if nothing had looked); inside TLS the few bytes read are put back.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::{TowerToHyperService, TowerToHyperServiceFuture};
use parley_turn::{FrontDoor, Transport};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::demux::{Detected, MAX_PREFIX, classify};

/// `http.header_timeout_secs` and `http.body_timeout_secs`.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For a complete request head, from when the server starts waiting for one; also for the
    /// TLS handshake.
    pub header: Duration,
    /// For a whole request body, from when its head arrived.
    pub body: Duration,
}

/// Serves `app` on `listener` until `shutdown`, then gives open connections `drain` to finish.
///
/// With `turn`, the port is also the relay's front door: a connection that opens with a STUN
/// message, in plain TCP or inside TLS, is handed to the relay (issue 11).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    timeouts: Timeouts,
    turn: Option<FrontDoor>,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header);
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some to close, don't spin.
                    log::warn!("cannot accept an HTTP connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let connection = Connection {
            service: ConnectionService {
                router: TowerToHyperService::new(app.clone()),
                peer,
                body_timeout: timeouts.body,
            },
            builder: builder.clone(),
            tls: tls.clone(),
            turn: turn.clone(),
            timeouts,
            shutdown: shutdown.clone(),
            accepted_at: Instant::now(),
        };
        connections.spawn(connection.serve(stream));
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(drain, connections.wait())
        .await
        .is_err()
    {
        log::warn!("HTTP connections still open after {drain:?}; closing them");
    }
}

/// One accepted connection and what it may turn out to be.
struct Connection {
    service: ConnectionService,
    builder: http1::Builder,
    tls: Option<tokio_rustls::TlsAcceptor>,
    turn: Option<FrontDoor>,
    timeouts: Timeouts,
    shutdown: CancellationToken,
    accepted_at: Instant,
}

impl Connection {
    /// Tells the protocol from the first bytes (peeked, so they stay in the socket for TLS,
    /// hyper or the relay), then serves it or closes it.
    async fn serve(self, stream: TcpStream) {
        let peer = self.service.peer;
        // The TLS handshake (as before issue 11) and the first bytes share the header timeout.
        let deadline = self.accepted_at + self.timeouts.header;
        let detected = match peek_first_bytes(&stream, deadline).await {
            Ok(detected) => detected,
            Err(reason) => return FRONT_DOOR.close(reason, peer),
        };
        match (detected, &self.tls, &self.turn) {
            (Detected::Tls, Some(tls), _) => {
                let tls = tls.clone();
                match tokio::time::timeout_at(deadline, tls.accept(stream)).await {
                    Ok(Ok(stream)) => self.serve_inside_tls(stream).await,
                    Ok(Err(e)) => {
                        FRONT_DOOR.add(&FRONT_DOOR.tls_failed);
                        log::debug!("TLS handshake with {peer} failed: {e}");
                    }
                    Err(_) => FRONT_DOOR.close(Closed::Silent, peer),
                }
            }
            (Detected::Stun, _, Some(turn)) => {
                FRONT_DOOR.add(&FRONT_DOOR.turn_tcp);
                let turn = turn.clone();
                turn.serve_stream(stream, peer, Vec::new(), self.accepted_at, Transport::Tcp)
                    .await;
            }
            (Detected::Http, Some(_), _) => {
                FRONT_DOOR.add(&FRONT_DOOR.redirected);
                redirect_to_https(stream, &self.builder, peer).await;
            }
            (Detected::Http, None, _) => {
                FRONT_DOOR.add(&FRONT_DOOR.http);
                let io = TokioIo::new(stream);
                serve_connection(&self.builder, io, self.service, &self.shutdown).await;
            }
            // TLS on a plain port, STUN with the relay off, and anything else.
            _ => FRONT_DOOR.close(Closed::Garbage, peer),
        }
    }

    /// After the handshake: HTTPS goes to hyper, STUN (TURN over TLS) to the relay, with the
    /// bytes read to tell them apart put back in front.
    async fn serve_inside_tls(self, mut stream: TlsStream<TcpStream>) {
        let peer = self.service.peer;
        // A fresh header timeout, as hyper gave a handshaken connection before issue 11.
        let deadline = Instant::now() + self.timeouts.header;
        let (detected, first_bytes) = match read_first_bytes(&mut stream, deadline).await {
            Ok(read) => read,
            Err(reason) => return FRONT_DOOR.close(reason, peer),
        };
        match (detected, &self.turn) {
            (Detected::Http, _) => {
                FRONT_DOOR.add(&FRONT_DOOR.https);
                let io = TokioIo::new(Rewind::new(first_bytes, stream));
                serve_connection(&self.builder, io, self.service, &self.shutdown).await;
            }
            (Detected::Stun, Some(turn)) => {
                FRONT_DOOR.add(&FRONT_DOOR.turn_tls);
                let turn = turn.clone();
                turn.serve_stream(stream, peer, first_bytes, self.accepted_at, Transport::Tls)
                    .await;
            }
            _ => FRONT_DOOR.close(Closed::Garbage, peer),
        }
    }
}

/// Why a connection was closed before it was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    /// Its first bytes are none of TLS, STUN or HTTP (or not what this port serves).
    Garbage,
    /// Nothing, or too little to decide, within `http.header_timeout_secs`.
    Silent,
    /// The client closed its sending side (or reset) before sending a byte, or inside TLS
    /// before its first bytes decided.
    HalfOpen,
}

/// How long to wait before peeking again when the bytes so far do not decide: `peek` answers
/// at once while any byte is unread, so without a pause a client sending its first bytes one
/// at a time would make the task spin.
const PEEK_AGAIN: Duration = Duration::from_millis(5);

/// Peeks at the first bytes until they decide, the deadline passes or the client stops.
async fn peek_first_bytes(stream: &TcpStream, deadline: Instant) -> Result<Detected, Closed> {
    let mut buffer = [0u8; MAX_PREFIX];
    let mut seen = 0;
    loop {
        // `timeout_at` polls the peek first, and a peek with bytes waiting is always ready.
        if Instant::now() >= deadline {
            return Err(Closed::Silent);
        }
        let peeked = match tokio::time::timeout_at(deadline, stream.peek(&mut buffer)).await {
            Err(_) => return Err(Closed::Silent),
            Ok(Err(_)) => return Err(Closed::HalfOpen),
            Ok(Ok(peeked)) => peeked,
        };
        match classify(&buffer[..peeked]) {
            Detected::NeedMore if peeked == 0 => return Err(Closed::HalfOpen),
            Detected::NeedMore => {
                if peeked == seen {
                    let pause = (Instant::now() + PEEK_AGAIN).min(deadline);
                    // A client that sent part and then its FIN looks the same to peek: it
                    // is closed at the deadline, as silent.
                    tokio::time::sleep_until(pause).await;
                }
                seen = peeked;
            }
            detected => return Ok(detected),
        }
    }
}

/// Reads the first bytes inside TLS (where nothing can be peeked) until they decide.
async fn read_first_bytes<S: AsyncRead + Unpin>(
    stream: &mut S,
    deadline: Instant,
) -> Result<(Detected, Vec<u8>), Closed> {
    let mut buffer = [0u8; MAX_PREFIX];
    let mut filled = 0;
    loop {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut buffer[filled..])).await;
        match read {
            Err(_) => return Err(Closed::Silent),
            Ok(Err(_)) | Ok(Ok(0)) => return Err(Closed::HalfOpen),
            Ok(Ok(read)) => filled += read,
        }
        match classify(&buffer[..filled]) {
            Detected::NeedMore => {}
            detected => return Ok((detected, buffer[..filled].to_vec())),
        }
    }
}

/// Answers every request of a plain-HTTP connection to the TLS port with a redirect to the
/// same host and path over https (the same port: it serves both), then closes. Without this a
/// browser that was typed `http://host:443` would wait for a TLS answer that never comes.
async fn redirect_to_https(stream: TcpStream, builder: &http1::Builder, peer: SocketAddr) {
    let local = stream.local_addr().ok();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let response = redirect_response(&request, local);
        async move { Ok::<_, Infallible>(response) }
    });
    let mut builder = builder.clone();
    builder.keep_alive(false);
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        log::debug!("plain HTTP connection from {peer} to the TLS port ended: {e}");
    }
}

fn redirect_response<B>(request: &Request<B>, local: Option<SocketAddr>) -> Response<Body> {
    let host = request
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|host| host.to_str().ok())
        .and_then(|host| host.parse::<axum::http::uri::Authority>().ok())
        .map(|authority| authority.to_string())
        .or_else(|| local.map(|address| address.to_string()))
        .unwrap_or_else(|| "localhost".to_owned());
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |path| path.as_str());
    let location = format!("https://{host}{path}");
    let mut response = Response::new(Body::from(format!("This port speaks HTTPS: {location}\n")));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(location) = HeaderValue::from_str(&location) {
        response
            .headers_mut()
            .insert(axum::http::header::LOCATION, location);
    }
    response
}

/// Bytes already read from a stream, served again before the rest of it.
struct Rewind<S> {
    first: Vec<u8>,
    position: usize,
    inner: S,
}

impl<S> Rewind<S> {
    fn new(first: Vec<u8>, inner: S) -> Self {
        Rewind {
            first,
            position: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.position < this.first.len() {
            let rest = &this.first[this.position..];
            let count = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..count]);
            this.position += count;
            if this.position == this.first.len() {
                this.first = Vec::new();
                this.position = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The front door's counters, for `/metrics`. Process-wide: the daemon has one HTTP listener.
struct FrontDoorCounters {
    http: AtomicU64,
    https: AtomicU64,
    redirected: AtomicU64,
    turn_tcp: AtomicU64,
    turn_tls: AtomicU64,
    garbage: AtomicU64,
    silent: AtomicU64,
    half_open: AtomicU64,
    tls_failed: AtomicU64,
}

static FRONT_DOOR: FrontDoorCounters = FrontDoorCounters {
    http: AtomicU64::new(0),
    https: AtomicU64::new(0),
    redirected: AtomicU64::new(0),
    turn_tcp: AtomicU64::new(0),
    turn_tls: AtomicU64::new(0),
    garbage: AtomicU64::new(0),
    silent: AtomicU64::new(0),
    half_open: AtomicU64::new(0),
    tls_failed: AtomicU64::new(0),
};

impl FrontDoorCounters {
    fn add(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn close(&self, reason: Closed, peer: SocketAddr) {
        let counter = match reason {
            Closed::Garbage => &self.garbage,
            Closed::Silent => &self.silent,
            Closed::HalfOpen => &self.half_open,
        };
        self.add(counter);
        log::debug!("closed the connection of {peer} to the HTTP port: {reason:?}");
    }
}

/// Appends the front door's counters in the Prometheus text format.
pub fn render_metrics(out: &mut String) {
    use std::fmt::Write;
    let c = &FRONT_DOOR;
    let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "# HELP parley_http_port_connections_total Connections to the HTTP(S) port by the protocol their first bytes showed.\n\
         # TYPE parley_http_port_connections_total counter"
    );
    for (protocol, counter) in [
        ("http", &c.http),
        ("https", &c.https),
        ("http_redirected_to_https", &c.redirected),
        ("turn_tcp", &c.turn_tcp),
        ("turn_tls", &c.turn_tls),
    ] {
        let _ = writeln!(
            out,
            "parley_http_port_connections_total{{protocol=\"{protocol}\"}} {}",
            get(counter)
        );
    }
    let _ = writeln!(
        out,
        "# HELP parley_http_port_closed_total Connections to the HTTP(S) port closed before they were served, by reason.\n\
         # TYPE parley_http_port_closed_total counter"
    );
    for (reason, counter) in [
        ("garbage", &c.garbage),
        ("silent", &c.silent),
        ("half_open", &c.half_open),
        ("tls_handshake_failed", &c.tls_failed),
    ] {
        let _ = writeln!(
            out,
            "parley_http_port_closed_total{{reason=\"{reason}\"}} {}",
            get(counter)
        );
    }
}

async fn serve_connection<I>(
    builder: &http1::Builder,
    io: I,
    service: ConnectionService,
    shutdown: &CancellationToken,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let connection = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        // Timeouts, resets and malformed requests: the client's problem, not the admin's.
        log::debug!("HTTP connection ended: {e}");
    }
}

/// The router for one connection: adds the peer address (`ConnectInfo`) and the body deadline.
#[derive(Clone)]
struct ConnectionService {
    router: TowerToHyperService<Router>,
    peer: SocketAddr,
    body_timeout: Duration,
}

impl Service<Request<Incoming>> for ConnectionService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = TowerToHyperServiceFuture<Router, Request<Body>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(ConnectInfo(self.peer));
        let body = Body::new(DeadlineBody::new(body, self.body_timeout));
        self.router.call(Request::from_parts(parts, body))
    }
}

/// A request body that fails once its deadline has passed: a client that sends the head and
/// then trickles (or stops sending) the body cannot hold the handler and the connection.
/// The handler answers with an error and hyper closes the connection, whose body is unread.
struct DeadlineBody {
    inner: Incoming,
    timeout: Duration,
    deadline: Instant,
    /// Made at the first wait, so bodies that are already complete cost no timer.
    timer: Option<Pin<Box<Sleep>>>,
}

impl DeadlineBody {
    fn new(inner: Incoming, timeout: Duration) -> DeadlineBody {
        DeadlineBody {
            inner,
            timeout,
            deadline: Instant::now() + timeout,
            timer: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("request body not received within {0:?} (http.body_timeout_secs)")]
struct BodyTimedOut(Duration);

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|result| result.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimedOut(this.timeout).into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn rewind_serves_the_bytes_read_before_the_rest_of_the_stream() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" / HTTP/1.1\r\n").await.unwrap();
        drop(client);
        let mut stream = Rewind::new(b"GET".to_vec(), server);
        let mut all = String::new();
        stream.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn rewind_hands_out_its_bytes_in_pieces_as_small_as_the_reader_asks() {
        let (_client, server) = tokio::io::duplex(64);
        let mut stream = Rewind::new(b"POST".to_vec(), server);
        let mut two = [0u8; 2];
        stream.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"PO");
        stream.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"ST");
    }

    fn location(request: Request<()>) -> (StatusCode, String) {
        let local = Some(SocketAddr::from(([192, 0, 2, 1], 443)));
        let response = redirect_response(&request, local);
        let location = response.headers()[axum::http::header::LOCATION]
            .to_str()
            .unwrap()
            .to_owned();
        (response.status(), location)
    }

    #[test]
    fn plain_http_on_the_tls_port_is_sent_to_the_same_host_path_and_query_over_https() {
        let request = Request::get("/calls?with=bob")
            .header("host", "parley.example:8443")
            .body(())
            .unwrap();
        assert_eq!(
            location(request),
            (
                StatusCode::PERMANENT_REDIRECT,
                "https://parley.example:8443/calls?with=bob".to_owned()
            )
        );
    }

    #[test]
    fn without_a_usable_host_header_the_redirect_names_the_listener() {
        let request = Request::get("/").body(()).unwrap();
        assert_eq!(location(request).1, "https://192.0.2.1:443/");
        let request = Request::get("/x")
            .header("host", "evil.example/path")
            .body(())
            .unwrap();
        assert_eq!(location(request).1, "https://192.0.2.1:443/x");
    }
}
