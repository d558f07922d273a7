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

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::{TowerToHyperService, TowerToHyperServiceFuture};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    timeouts: Timeouts,
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
        let service = ConnectionService {
            router: TowerToHyperService::new(app.clone()),
            peer,
            body_timeout: timeouts.body,
        };
        let (builder, tls, shutdown) = (builder.clone(), tls.clone(), shutdown.clone());
        connections.spawn(async move {
            let Some(tls) = tls else {
                return serve_connection(&builder, TokioIo::new(stream), service, &shutdown).await;
            };
            match tokio::time::timeout(timeouts.header, tls.accept(stream)).await {
                Ok(Ok(stream)) => {
                    serve_connection(&builder, TokioIo::new(stream), service, &shutdown).await;
                }
                Ok(Err(e)) => log::debug!("TLS handshake with {peer} failed: {e}"),
                Err(_) => log::debug!("TLS handshake with {peer} timed out"),
            }
        });
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
