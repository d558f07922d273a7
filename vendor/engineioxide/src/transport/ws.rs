//! The ws transport module is responsible for handling websocket connections
//! The only public function is [`new_req`] which is used to upgrade a http request to a websocket connection
//!
//! Other functions are used internally to handle the websocket connection through tasks and channels
//! and to handle upgrade from polling to ws

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures_util::{Sink, SinkExt, Stream, StreamExt, TryStreamExt};
use http::{HeaderValue, Request, Response, StatusCode, request::Parts};
use smallvec::smallvec;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self, Message,
        handshake::derive_accept_key,
        protocol::{Role, WebSocketConfig},
    },
};

use engineioxide_core::{Packet, ProtocolVersion, Sid, Str, TransportType};

use crate::{
    DisconnectReason, Socket, body::ResponseBody, config::EngineIoConfig, engine::EngineIo,
    errors::Error, handler::EngineIoHandler, transport::make_open_packet,
};

/// Create a response for websocket upgrade
fn ws_response<B>(ws_key: &HeaderValue) -> Response<ResponseBody<B>> {
    let derived = derive_accept_key(ws_key.as_bytes());
    let sec = derived.parse::<HeaderValue>().unwrap();
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::UPGRADE, HeaderValue::from_static("websocket"))
        .header(
            http::header::CONNECTION,
            HeaderValue::from_static("Upgrade"),
        )
        .header(http::header::SEC_WEBSOCKET_ACCEPT, sec)
        .body(ResponseBody::empty_response())
        .unwrap() // we are only using constants
}

/// Upgrade a websocket request to create a websocket connection.
///
/// If a sid is provided in the query it means that is is upgraded from an existing HTTP polling request.
/// In this case the http polling request is closed and the SID is kept for the websocket
pub fn new_req<R: Send + 'static, B, H: EngineIoHandler>(
    engine: Arc<EngineIo<H>>,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req: Request<R>,
) -> Result<Response<ResponseBody<B>>, Error> {
    let (parts, body) = req.into_parts();
    let req = Request::from_parts(parts.clone(), body);

    let ws_key = parts
        .headers
        .get("Sec-WebSocket-Key")
        .ok_or(Error::InvalidWebSocketKey)?
        .clone();

    // PATCHED (Parley, see vendor/README.md): the request and its parts reach the task in one
    // box, emptied and freed before the first await. Captured as they were, they stayed in the
    // task's future (about 0.5 KiB) for the connection's life, though used only at its start.
    let upgrade = Box::new((req, parts));
    tokio::spawn(async move {
        let (req, parts) = {
            let upgrade = upgrade;
            *upgrade
        };
        // PATCHED (Parley): the session's future is made in the match and awaited after it,
        // so that the upgrade's result (48 bytes) is not kept in this task for the connection's
        // life (`on_init` awaits nothing itself).
        let session = match hyper::upgrade::on(req).await {
            Ok(conn) => on_init(
                engine.clone(),
                hyper_util::rt::TokioIo::new(conn),
                protocol,
                sid,
                parts,
            ),
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::debug!("ws upgrade error: {}", _e);
                return;
            }
        };
        let res = session.await;

        match res {
            Ok(_) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(?sid, "ws closed")
            }
            Err(Error::MultipleWebsocketRequests) => {}
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(?sid, "ws closed with error: {_e}");
                if let Some(sid) = sid {
                    engine.close_session(sid, DisconnectReason::TransportError);
                }
            }
        }
    });

    Ok(ws_response(&ws_key))
}

/// Handle a websocket connection upgrade
///
/// Sends an open packet if it is not an upgrade from a polling request
///
/// Read packets from the websocket and handle them, it will block until the connection is closed
pub fn on_init<H: EngineIoHandler, S>(
    engine: Arc<EngineIo<H>>,
    conn: S,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req_data: Parts,
) -> impl std::future::Future<Output = Result<(), Error>> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // PATCHED (Parley, see vendor/README.md): the handshake runs in its own boxed future, freed
    // when it ends. Inline, its states (the upgrade's timeout and channel send, the handshake's
    // writes) sized this task's future for the connection's life. `on_init` is no longer an
    // `async fn` so that the connection and the request's parts go straight into that box:
    // as an `async fn`'s arguments they stayed in its future (0.25 KiB) after being moved out.
    let opening = Box::pin(open_session(engine.clone(), conn, protocol, sid, req_data));
    run_session(engine, opening, protocol, sid)
}

/// PATCHED (Parley, see vendor/README.md): what [`on_init`] does once the boxed handshake
/// (`opening`) has ended: the reader and the writer, both in this future. The tracing span that
/// was `on_init`'s is here, around the connection's life. A plain function returning an
/// `async move` block: an `async fn` kept room for its arguments twice, for the connection's
/// life.
fn run_session<H: EngineIoHandler, S>(
    engine: Arc<EngineIo<H>>,
    opening: std::pin::Pin<
        Box<
            impl std::future::Future<Output = Result<(Arc<Socket<H::Data>>, WebSocketStream<S>), Error>>
            + Send
            + 'static,
        >,
    >,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
) -> impl std::future::Future<Output = Result<(), Error>> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    #[cfg(feature = "tracing")]
    let span = tracing::trace_span!("init_websocket", ?protocol, ?sid);
    let session = async move {
        let (socket, ws) = opening.await?;
        // PATCHED (Parley, see vendor/README.md): the WebSocket stays in this future, read and
        // written through `WsHalf`s, instead of being split (see `WsHalf`).
        let ws = Mutex::new(ws);

        // PATCHED (Parley, see vendor/README.md): a session opened on a WebSocket (not upgraded
        // from polling, whose heartbeat task already runs) with protocol v4 runs its heartbeat in
        // the writer (`forward_to_socket`) instead of a task of its own.
        let heartbeat = (sid.is_none() && protocol == ProtocolVersion::V4)
            .then_some((engine.config.ping_interval, engine.config.ping_timeout));

        // Pipe between websocket and internal socket channel.
        // PATCHED (Parley, see vendor/README.md): the writer runs in this task, beside the reader,
        // instead of a task of its own: one task cell per connection instead of two (1,024 bytes
        // against 512 + 896). It outlives the reader as the spawned task did: it drains the
        // queue and closes the sink after the session ends.
        let writer = forward_to_socket::<H, S>(socket.clone(), WsHalf(&ws), heartbeat);
        tokio::pin!(writer);
        let mut writing = true;

        // pipe between internal socket channel and websocket
        // PATCHED (Parley): the reader and what it returned are dropped (their block ends) before
        // the writer's last await below, so that the future keeps no room for them meanwhile.
        {
            let read = {
                // PATCHED (Parley): the socket's `Cancellation`, see `cancel`.
                let reader = socket.cancellation.run_until_cancelled(forward_to_handler(
                    &engine,
                    WsHalf(&ws),
                    &socket,
                ));
                tokio::pin!(reader);
                loop {
                    tokio::select! {
                        read = &mut reader => break read,
                        () = &mut writer, if writing => writing = false,
                    }
                }
            };
            match read {
                Some(Err(e)) => {
                    let reason = Option::<DisconnectReason>::from(&e)
                        .unwrap_or(DisconnectReason::TransportError);

                    #[cfg(feature = "tracing")]
                    tracing::debug!("error when handling packet: {:?}", e);
                    engine.close_session(socket.id, reason);
                }
                Some(Ok(())) => {
                    #[cfg(feature = "tracing")]
                    tracing::debug!(sid = %socket.id, "ws transport was closed");
                    engine.close_session(socket.id, DisconnectReason::TransportClose);
                }
                None => {
                    #[cfg(feature = "tracing")]
                    tracing::debug!(sid = %socket.id, "socket is closing");
                }
            };
        }
        if writing {
            writer.await;
        }
        Ok(())
    };
    #[cfg(feature = "tracing")]
    let session = tracing::Instrument::instrument(session, span);
    session
}

/// PATCHED (Parley, see vendor/README.md): the handshake part of [`on_init`], unchanged, as its
/// own function so that `on_init` can box it.
async fn open_session<H: EngineIoHandler, S>(
    engine: Arc<EngineIo<H>>,
    conn: S,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req_data: Parts,
) -> Result<(Arc<Socket<H::Data>>, WebSocketStream<S>), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(engine.config.ws_read_buffer_size)
        // PATCHED (Parley, see vendor/README.md): configurable write buffer size.
        .write_buffer_size(engine.config.ws_write_buffer_size)
        .max_message_size(Some(engine.config.ws_max_message_size))
        .max_frame_size(Some(engine.config.ws_max_frame_size));

    let ws_init = move || WebSocketStream::from_raw_socket(conn, Role::Server, Some(ws_config));
    let (socket, ws) = if let Some(sid) = sid {
        match engine.get_socket(sid) {
            None => return Err(Error::UnknownSessionID(sid)),
            Some(socket) if socket.is_ws() => return Err(Error::MultipleWebsocketRequests),
            Some(socket) => {
                let mut ws = ws_init().await;

                let upgrade_fut = upgrade_handshake::<H, S>(&socket, &mut ws);
                // PATCHED (Parley): the socket's `Cancellation`, see `cancel`.
                match socket
                    .cancellation
                    .run_until_cancelled(tokio::time::timeout(
                        engine.config.upgrade_timeout,
                        upgrade_fut,
                    ))
                    .await
                {
                    Some(Ok(res)) => res?,
                    Some(Err(_)) => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "ws upgrade timed out, closing session");
                        engine.close_session(socket.id, DisconnectReason::TransportError);
                        return Err(Error::Upgrade);
                    }
                    None => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "socket is being closed");
                        return Err(Error::Upgrade);
                    }
                }
                (socket, ws)
            }
        }
    } else {
        let socket = engine.create_session(protocol, TransportType::Websocket, req_data, false);

        #[cfg(feature = "tracing")]
        tracing::debug!("new websocket connection");

        let mut ws = ws_init().await;
        init_handshake(socket.id, &mut ws, &engine.config).await?;
        // PATCHED (Parley, see vendor/README.md): with v4 the writer runs the heartbeat
        // (`on_init`, `forward_to_socket`).
        if protocol != ProtocolVersion::V4 {
            socket
                .clone()
                .spawn_heartbeat(engine.config.ping_interval, engine.config.ping_timeout);
        }
        (socket, ws)
    };
    Ok((socket, ws))
}

/// PATCHED (Parley, see vendor/README.md): one side of the connection's WebSocket, which the
/// reader (`forward_to_handler`) and the writer (`forward_to_socket`) share in the connection's
/// one task. Upstream split the stream (`StreamExt::split`): a `BiLock` around the stream in an
/// allocation of its own, 0.36 KiB per connection, where the task's future can hold the stream
/// itself. Each poll locks it for that poll only, as the `BiLock` did; in one task the lock is
/// never contended.
struct WsHalf<'a, S>(&'a Mutex<WebSocketStream<S>>);

impl<S> WsHalf<'_, S> {
    fn lock(&self) -> std::sync::MutexGuard<'_, WebSocketStream<S>> {
        // A panic in tungstenite mid-poll leaves nothing half-done that a later poll trusts.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WsHalf<'_, S> {
    type Item = Result<Message, tungstenite::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.lock().poll_next_unpin(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Message> for WsHalf<'_, S> {
    type Error = tungstenite::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.lock().poll_ready_unpin(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        self.lock().start_send_unpin(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.lock().poll_flush_unpin(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.lock().poll_close_unpin(cx)
    }
}

/// Forwards all packets received from a websocket to a EngineIo [`Socket`]
async fn forward_to_handler<H: EngineIoHandler, S>(
    engine: &Arc<EngineIo<H>>,
    mut rx: WsHalf<'_, S>,
    socket: &Arc<Socket<H::Data>>,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    while let Some(msg) = rx.try_next().await? {
        match msg {
            Message::Text(msg) => match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
                Packet::Close => {
                    #[cfg(feature = "tracing")]
                    tracing::debug!("[sid={}] closing session", socket.id);
                    engine.close_session(socket.id, DisconnectReason::TransportClose);
                    break;
                }
                Packet::Pong | Packet::Ping => {
                    // A permit already stored means that the client is already known to be alive.
                    socket.heartbeat_received(); // PATCHED (Parley): see `Socket::heartbeat`.
                    Ok::<(), Error>(())
                }
                Packet::Message(msg) => {
                    engine.handler.on_message(msg, socket.clone());
                    Ok(())
                }
                p => return Err(Error::BadPacket(p)),
            },
            Message::Binary(mut data) => {
                if socket.protocol == ProtocolVersion::V3 && !data.is_empty() {
                    // The first byte is the message type, which we don't need.
                    data = data.split_off(1);
                }
                engine.handler.on_binary(data, socket.clone());
                Ok(())
            }
            Message::Close(_) => {
                #[cfg(feature = "tracing")]
                tracing::debug!("websocket closed, closing session");
                engine.close_session(socket.id, DisconnectReason::TransportClose);
                break;
            }
            _ => {
                #[cfg(feature = "tracing")]
                tracing::debug!(sid = ?socket.id, "unexpected ws message");
                Ok(())
            }
        }?
    }
    Ok(())
}

/// Forwards all packets waiting to be sent to the websocket
///
/// The websocket stream is flushed only when the internal channel is drained
///
/// PATCHED (Parley, see vendor/README.md): with `heartbeat` (`ping_interval`, `ping_timeout`)
/// it also runs the v4 heartbeat, as `Socket::heartbeat_job_v4` does in its own task: a ping
/// at once and then every interval, the session closed with `HeartbeatTimeout` when no pong
/// comes within the timeout; paused while upgrading.
fn forward_to_socket<'a, H: EngineIoHandler, S>(
    socket: Arc<Socket<H::Data>>,
    mut tx: WsHalf<'a, S>,
    heartbeat: Option<(std::time::Duration, std::time::Duration)>,
) -> impl std::future::Future<Output = ()> + Send + 'a
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // PATCHED (Parley): the heartbeat's durations are taken out here, so that the future keeps
    // them once (kept as the captured `Option` and again as locals, 32 bytes more).
    let (ping_interval, ping_timeout) = heartbeat.unwrap_or_default();
    let has_heartbeat = heartbeat.is_some();
    // PATCHED (Parley, see vendor/README.md): an `async move` block, not an `async fn`: an
    // `async fn` moves its arguments into locals and its future keeps room for both (the sink,
    // the heartbeat's durations and the socket twice, 104 bytes, for the connection's life).
    async move {
        // A polling request that was in progress during the upgrade may still hold the lock.
        let lock = socket.internal_rx.lock();
        // PATCHED (Parley): the guard is only held (see below), never read.
        // PATCHED (Parley): boxed, and freed once the lock is held: inline, this wait (192
        // bytes) sized the future for the connection's life, though only its start needs it.
        let Some(_internal_rx) = Box::pin(socket.cancellation.run_until_cancelled(lock)).await
        else {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, "session closed before starting the ws writer");
            return;
        };
        // PATCHED (Parley): the volatile packets come from `socket.volatile` (`VolatileSlot`), the
        // others from `socket.queue`, whose one receiver is whoever holds `internal_rx`.
        let buffered_rx = &socket.queue;

        // PATCHED (Parley, see vendor/README.md): the packets to write, decided by the `select!`
        // below and written after it in one place. Upstream wrote them inside each branch (a
        // `map_fn!` macro expanded three times, each with an await per packet kind): every one of
        // those suspension points kept its own packet and iterator in this task's future, which
        // lives as long as the connection (1,344 bytes, of which the writes were most).
        /// PATCHED (Parley): what woke the writer, see the `poll_fn` below.
        enum Woken {
            /// The queue's next buffer, or `None` once it is closed and empty.
            Buffered(Option<crate::socket::QueuedPackets>),
            Cancelled,
            Volatile(crate::socket::QueuedPackets),
            /// The heartbeat's timer.
            Timer,
            Pong,
        }

        // PATCHED (Parley): the heartbeat's state, see the doc comment. `beating` is false when
        // there is no heartbeat here, or once it has closed the session.
        let mut beating = has_heartbeat;
        let mut next_ping = tokio::time::Instant::now();
        let mut awaiting_pong = false;
        let mut first_ping = true;
        let heartbeat_timer = tokio::time::sleep_until(next_ping);
        tokio::pin!(heartbeat_timer);

        // Forward buffered packets until the channel is closed or the session is cancelled.
        loop {
            // PATCHED (Parley, see vendor/README.md): what woke the writer, found by polling each
            // source in turn (biased, in the order of the `select!` this replaces) rather than
            // by a `select!` over a future per source: those futures (the cancellation's and the
            // pong's `Notified`, the queue's and the volatile slot's receives) were 256 bytes of
            // this task's future for the connection's life. The sources that are not polled
            // here (the cancellation, the volatile slot, the pong) wake the queue's receiver,
            // whose waker the queue's poll has registered before they are checked.
            let woken = std::future::poll_fn(|cx| {
                if let Poll::Ready(items) = buffered_rx.poll_recv(cx) {
                    return Poll::Ready(Woken::Buffered(items));
                }
                if socket.cancellation.is_cancelled() {
                    return Poll::Ready(Woken::Cancelled);
                }
                if let Some(packets) = socket.volatile.take() {
                    return Poll::Ready(Woken::Volatile(packets));
                }
                if beating && heartbeat_timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Woken::Timer);
                }
                if awaiting_pong
                    && beating
                    && futures_util::FutureExt::now_or_never(socket.heartbeat.notified()).is_some()
                {
                    return Poll::Ready(Woken::Pong);
                }
                Poll::Pending
            })
            .await;
            // PATCHED (Parley): the branches that write say what to write, and whether the
            // rest of the queue is drained and written with it (buffered packets) or not
            // (volatile ones, written alone).
            let (mut packets, drain_queue) = match woken {
                Woken::Buffered(Some(packets)) => (packets, true),
                Woken::Buffered(None) | Woken::Cancelled => break,
                Woken::Volatile(packets) => {
                    #[cfg(feature = "tracing")]
                    tracing::debug!(sid = ?socket.id, "ws volatile flush: {} packets", packets.len());
                    (packets, false)
                }
                // PATCHED (Parley): the folded heartbeat (see the doc comment).
                Woken::Timer => {
                    if awaiting_pong {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(id = ?socket.id, "heartbeat error: heartbeat timeout");
                        beating = false;
                        socket.close(DisconnectReason::HeartbeatTimeout);
                    } else if socket.is_upgrading() {
                        next_ping += ping_interval;
                        heartbeat_timer.as_mut().reset(next_ping);
                    } else {
                        if first_ping {
                            // Some clients send the pong packet in first. If that happens, we should consume it.
                            first_ping = false;
                            futures_util::FutureExt::now_or_never(socket.heartbeat.notified());
                        }
                        #[cfg(feature = "tracing")]
                        tracing::trace!(sid = ?socket.id, "emitting ping");
                        let sent = socket
                            // PATCHED (Parley): a `PacketQueue`, see `Socket::queue`.
                            .queue
                            .try_send(Box::new(smallvec![Packet::Ping]));
                        if sent.is_err() {
                            beating = false;
                            socket.close(DisconnectReason::HeartbeatTimeout);
                        } else {
                            awaiting_pong = true;
                            next_ping += ping_interval;
                            heartbeat_timer
                                .as_mut()
                                .reset(tokio::time::Instant::now() + ping_timeout);
                        }
                    }
                    continue;
                }
                Woken::Pong => {
                    #[cfg(feature = "tracing")]
                    tracing::trace!(sid = ?socket.id, "pong received");
                    awaiting_pong = false;
                    heartbeat_timer.as_mut().reset(next_ping);
                    continue;
                }
            };

            // PATCHED (Parley): the one place that writes. Each packet is taken from the buffer
            // and made a message by `next_message`, before the write's await: a packet or an
            // iterator over the buffer kept across that await (200 bytes) made this state the
            // largest of the future, for the connection's life.
            loop {
                // Taken from the back: in order once reversed.
                packets.reverse();
                // What `SinkExt::feed` does, with the message made after the await: the `Feed`
                // future would keep it beside the one it is made from.
                while !packets.is_empty() {
                    let ready = std::future::poll_fn(|cx| tx.poll_ready_unpin(cx)).await;
                    let Some(message) = next_message(&mut packets, socket.protocol) else {
                        break;
                    };
                    if let Err(_e) = ready.and_then(|()| tx.start_send_unpin(message)) {
                        #[cfg(feature = "tracing")]
                        tracing::debug!("[sid={}] error sending packet: {}", socket.id, _e);
                    }
                }
                if !drain_queue {
                    break;
                }
                match buffered_rx.try_recv() {
                    Ok(more) => packets = more,
                    Err(_) => break,
                }
            }

            #[cfg(feature = "tracing")]
            tracing::trace!(sid = %socket.id, "ws flush");
            tx.flush().await.ok();
        }

        #[cfg(feature = "tracing")]
        tracing::trace!(sid = %socket.id, "ws closing flush");

        tx.flush().await.ok();
        tx.close().await.ok();
    }
}
/// PATCHED (Parley, see vendor/README.md): the WebSocket message for the last packet of
/// `packets` (taken off), skipping Noops; `None` once `packets` is empty. Upstream's conversion,
/// out of the writer's future (see `forward_to_socket`).
fn next_message(
    packets: &mut engineioxide_core::PacketBuf,
    protocol: ProtocolVersion,
) -> Option<Message> {
    loop {
        let message = match packets.pop()? {
            Packet::Binary(bin) | Packet::BinaryV3(bin) => {
                if protocol == ProtocolVersion::V3 {
                    // v3 protocol requires packet type as the first byte.
                    // This requires a new buffer. This is OK as it is only for the V3 protocol.
                    let mut buff = Vec::with_capacity(bin.len() + 1);
                    buff.push(0x04);
                    buff.extend(bin);
                    Message::Binary(buff.into())
                } else {
                    Message::Binary(bin)
                }
            }
            // A Noop Packet maybe sent by the server to upgrade from a polling connection
            // In the case that the packet was not poll in time it will remain in the buffer and therefore
            // it should be discarded here
            Packet::Noop => continue,
            item => {
                let packet: String = item.try_into().unwrap();
                Message::Text(packet.into())
            }
        };
        return Some(message);
    }
}

/// Send a Engine.IO [`OpenPacket`] to initiate a websocket connection
async fn init_handshake<S>(
    sid: Sid,
    ws: &mut WebSocketStream<S>,
    config: &EngineIoConfig,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let packet = Packet::Open(make_open_packet(TransportType::Websocket, sid, config));
    let packet: String = packet.into();
    ws.send(Message::Text(packet.into())).await?;
    Ok(())
}

/// Upgrade a session from a polling request to a websocket request.
///
/// Before upgrading the session the server should send a NOOP packet to any pending polling request.
///
/// ## Handshake :
/// ```text
/// CLIENT                                                 SERVER
///│                                                      │
///│   GET /engine.io/?EIO=4&transport=websocket&sid=...  │
///│ ───────────────────────────────────────────────────► │
///│  ◄─────────────────────────────────────────────────┘ │
///│            HTTP 101 (WebSocket handshake)            │
///│                                                      │
///│            -----  WebSocket frames -----             │
///│  ─────────────────────────────────────────────────►  │
///│                         2probe                       │ (ping packet)
///│  ◄─────────────────────────────────────────────────  │
///│                         3probe                       │ (pong packet)
///│  ─────────────────────────────────────────────────►  │
///│                         5                            │ (upgrade packet)
///│                                                      │
///│            -----  WebSocket frames -----             │
/// ```
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", skip(socket, ws))
)]
async fn upgrade_handshake<H: EngineIoHandler, S>(
    socket: &Arc<Socket<H::Data>>,
    ws: &mut WebSocketStream<S>,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    #[cfg(feature = "tracing")]
    tracing::debug!("starting websocket connection upgrade");

    // The socket is upgrading, from now on all polling
    // request will return a `Packet::Noop`
    socket.start_upgrade();

    // We send a last Noop request to close a potential waiting polling request.
    socket
        // PATCHED (Parley): the queue carries boxed buffers (QueuedPackets), in the socket.
        .queue
        .send(Box::new(smallvec![Packet::Noop]))
        .await
        .map_err(|_| Error::Upgrade)?;

    // wait for any current polling connection to finish by waiting for the socket to be unlocked
    // All other polling connection will be immediately closed with a NOOP packet.
    let _lock = socket.internal_rx.lock().await;

    // Fetch the next packet from the ws stream, it should be a PingUpgrade packet
    let msg = match ws.next().await {
        Some(Ok(Message::Text(d))) => d,
        _ => Err(Error::Upgrade)?,
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::PingUpgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("received first ping upgrade");
            // Respond with a PongUpgrade packet
            ws.send(Message::Text(String::from(Packet::PongUpgrade).into()))
                .await?;
        }
        p => Err(Error::BadPacket(p))?,
    };

    // Fetch the next packet from the ws stream, it should be an Upgrade packet
    let msg = match ws.next().await {
        Some(Ok(Message::Text(d))) => d,
        Some(Ok(Message::Close(_))) => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws stream closed before upgrade");
            Err(Error::Upgrade)?
        }
        _ => {
            #[cfg(feature = "tracing")]
            tracing::debug!("unexpected ws message before upgrade");
            Err(Error::Upgrade)?
        }
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::Upgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws upgraded successfully")
        }
        p => Err(Error::BadPacket(p))?,
    };

    socket.upgrade_to_websocket();
    Ok(())
}

fn ws_bytes_to_str(bytes: tungstenite::Utf8Bytes) -> Str {
    // SAFETY: the bytes are guaranteed to be valid UTF-8 by the tungstenite parser
    unsafe { Str::from_bytes_unchecked(bytes.into()) }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use futures_util::StreamExt;
    use http::Request;
    use tokio::io::DuplexStream;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(1);

    #[derive(Debug)]
    struct StubHandler;
    impl EngineIoHandler for StubHandler {
        type Data = ();
        fn on_connect(self: Arc<Self>, _: Arc<Socket<()>>) {}
        fn on_disconnect(&self, _: Arc<Socket<()>>, _: DisconnectReason) {}
        fn on_message(self: &Arc<Self>, _: Str, _: Arc<Socket<()>>) {}
        fn on_binary(self: &Arc<Self>, _: Bytes, _: Arc<Socket<()>>) {}
    }

    fn socket() -> Arc<Socket<()>> {
        Arc::new(Socket::new(
            ProtocolVersion::V4,
            TransportType::Websocket,
            &EngineIoConfig::default(),
            Request::<()>::default().into_parts().0,
            Box::new(|_, _| ()),
            false,
        ))
    }

    async fn ws_pair() -> (WebSocketStream<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (server, client) = tokio::io::duplex(1024);
        (
            WebSocketStream::from_raw_socket(server, Role::Server, None).await,
            WebSocketStream::from_raw_socket(client, Role::Client, None).await,
        )
    }

    /// The writer over `ws`, in a task of its own that owns the stream (in the daemon it is
    /// `run_session`'s future that owns it).
    fn spawn_writer(
        socket: &Arc<Socket<()>>,
        ws: WebSocketStream<DuplexStream>,
        heartbeat: Option<(Duration, Duration)>,
    ) -> tokio::task::JoinHandle<()> {
        let socket = socket.clone();
        tokio::spawn(async move {
            let ws = Mutex::new(ws);
            forward_to_socket::<StubHandler, _>(socket, WsHalf(&ws), heartbeat).await
        })
    }

    /// A socket whose `close` records the reason (the engine's `close_session` would).
    fn socket_recording_close() -> (Arc<Socket<()>>, Arc<Mutex<Vec<DisconnectReason>>>) {
        let closed = Arc::new(Mutex::new(Vec::new()));
        let record = closed.clone();
        let socket = Arc::new(Socket::new(
            ProtocolVersion::V4,
            TransportType::Websocket,
            &EngineIoConfig::default(),
            Request::<()>::default().into_parts().0,
            Box::new(move |_, reason| record.lock().unwrap().push(reason)),
            false,
        ));
        (socket, closed)
    }

    async fn next_text(client: &mut WebSocketStream<DuplexStream>) -> Message {
        tokio::time::timeout(TIMEOUT, client.next())
            .await
            .expect("the writer should send a message")
            .expect("the stream should not end")
            .expect("the message should be valid")
    }

    /// PATCHED (Parley, see vendor/README.md): tokio-tungstenite (vendored) passes one waker
    /// proxy for reads and writes where it had two; a stream split between two tasks (as
    /// upstream engineioxide used it) must still wake each: the writer blocked on a full pipe
    /// when the peer reads, the reader when the peer writes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_split_websocket_wakes_its_reader_and_its_writer_in_two_tasks() {
        let (server, client) = tokio::io::duplex(64);
        let server = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let (mut sink, mut stream) = server.split();

        let reader = tokio::spawn(async move { stream.next().await });
        let big = "x".repeat(16 * 1024);
        let writer = {
            let big = big.clone();
            tokio::spawn(async move { sink.send(Message::text(big)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !writer.is_finished(),
            "the pipe holds 64 bytes: the writer waits"
        );
        assert!(!reader.is_finished(), "nothing was sent to the reader yet");

        assert_eq!(next_text(&mut client).await, Message::text(big));
        tokio::time::timeout(TIMEOUT, writer)
            .await
            .expect("the writer should be woken")
            .unwrap()
            .unwrap();

        client.send(Message::text("hi")).await.unwrap();
        let read = tokio::time::timeout(TIMEOUT, reader)
            .await
            .expect("the reader should be woken")
            .unwrap();
        assert_eq!(read.unwrap().unwrap(), Message::text("hi"));
    }

    /// A polling request can still hold the lock at the end of an upgrade.
    #[tokio::test]
    async fn writer_waits_for_the_lock_of_a_polling_request() {
        let socket = socket();
        let (server, mut client) = ws_pair().await;

        let polling = socket.internal_rx.lock().await;
        let writer = spawn_writer(&socket, server, None);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!writer.is_finished(), "the writer should wait for the lock");

        drop(polling);
        socket.emit(Str::from("hello")).unwrap();
        assert_eq!(next_text(&mut client).await, Message::text("4hello"));
    }

    #[tokio::test]
    async fn writer_waiting_for_the_lock_stops_with_the_session() {
        let socket = socket();
        let (server, _client) = ws_pair().await;

        let _polling = socket.internal_rx.lock().await;
        let writer = spawn_writer(&socket, server, None);
        tokio::time::sleep(Duration::from_millis(20)).await;

        socket.cancel();
        tokio::time::timeout(TIMEOUT, writer)
            .await
            .expect("the writer should stop")
            .unwrap();
    }

    /// The writer does not wait on the cancellation itself: `Socket::cancel` wakes it.
    #[tokio::test]
    async fn an_idle_writer_stops_with_the_session_and_closes_the_websocket() {
        let socket = socket();
        let (server, mut client) = ws_pair().await;
        let writer = spawn_writer(&socket, server, None);
        socket.emit(Str::from("hello")).unwrap();
        assert_eq!(next_text(&mut client).await, Message::text("4hello"));

        socket.cancel();
        tokio::time::timeout(TIMEOUT, writer)
            .await
            .expect("the writer should stop")
            .unwrap();
        assert!(
            matches!(next_text(&mut client).await, Message::Close(_)),
            "the writer closes the sink as it ends"
        );
    }

    /// A volatile send wakes the writer (through the queue's receiver).
    #[tokio::test]
    async fn volatile_packets_wake_the_writer() {
        let socket = socket();
        let (server, mut client) = ws_pair().await;
        let _writer = spawn_writer(&socket, server, None);
        tokio::time::sleep(Duration::from_millis(20)).await;

        assert!(socket.send_volatile(smallvec![
            Packet::Message(Str::from("now")),
            Packet::Noop,
            Packet::Message(Str::from("then")),
        ]));
        assert_eq!(next_text(&mut client).await, Message::text("4now"));
        assert_eq!(
            next_text(&mut client).await,
            Message::text("4then"),
            "a buffer's packets in order, its Noop skipped"
        );
    }

    /// With a heartbeat, a ping goes out at once; a pong (`heartbeat_received`) wakes the
    /// writer, which pings again after the interval; without a pong the session closes.
    #[tokio::test]
    async fn the_writer_pings_takes_pongs_and_closes_a_silent_session() {
        let (socket, closed) = socket_recording_close();
        let (server, mut client) = ws_pair().await;
        let interval = Duration::from_millis(100);
        let timeout = Duration::from_millis(100);
        let _writer = spawn_writer(&socket, server, Some((interval, timeout)));

        assert_eq!(next_text(&mut client).await, Message::text("2"));
        socket.heartbeat_received();
        assert_eq!(
            next_text(&mut client).await,
            Message::text("2"),
            "pinged again"
        );
        assert!(closed.lock().unwrap().is_empty(), "answered in time: open");

        tokio::time::sleep(interval + timeout + Duration::from_millis(100)).await;
        assert_eq!(
            closed.lock().unwrap().as_slice(),
            [DisconnectReason::HeartbeatTimeout],
            "no pong to the second ping: closed"
        );
    }
}
