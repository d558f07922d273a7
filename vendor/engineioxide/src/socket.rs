//! ## A [`Socket`] represents a client connection to the server
//!
//! It can be used to :
//! * Emit binary or string data
//! * Get a reference to the request made to connect to the socket.io server
//! * Close the connection
//!
//! #### Example :
//! ```rust
//! # use bytes::Bytes;
//! # use engineioxide::service::EngineIoService;
//! # use engineioxide::handler::EngineIoHandler;
//! # use engineioxide::{Socket, DisconnectReason, Str};
//! # use std::sync::{Mutex, Arc};
//! # use std::sync::atomic::{AtomicUsize, Ordering};
//! // Global state
//! #[derive(Debug, Default)]
//! struct MyHandler {
//!     user_cnt: AtomicUsize,
//! }
//!
//! // Socket state
//! #[derive(Debug, Default)]
//! struct SocketState {
//!     id: Mutex<String>,
//! }
//!
//! impl EngineIoHandler for MyHandler {
//!     type Data = SocketState;
//!
//!     fn on_connect(self: Arc<Self>, socket: Arc<Socket<SocketState>>) {
//!         // Get the request made to initialize the connection
//!         // and check that the authorization header is correct
//!         let connected = socket.req_parts().headers.get("Authorization")
//!             .map(|a| a == "mysuperpassword!").unwrap_or_default();
//!         // Close the socket if the authentication is invalid
//!         if !connected {
//!             socket.close(DisconnectReason::TransportError);
//!             return;
//!         }
//!
//!         let cnt = self.user_cnt.fetch_add(1, Ordering::Relaxed) + 1;
//!         // Emit string data to the client
//!         socket.emit(cnt.to_string()).ok();
//!     }
//!     fn on_disconnect(&self, socket: Arc<Socket<SocketState>>, reason: DisconnectReason) {
//!         let cnt = self.user_cnt.fetch_sub(1, Ordering::Relaxed) - 1;
//!     }
//!     fn on_message(self: &Arc<Self>, msg: Str, socket: Arc<Socket<SocketState>>) {
//!         *socket.data.id.lock().unwrap() = msg.into(); // bind a provided user id to a socket
//!     }
//!     fn on_binary(self: &Arc<Self>, data: Bytes, socket: Arc<Socket<SocketState>>) { }
//! }
//!
//! let svc = EngineIoService::new(Arc::new(MyHandler::default()));
//! ```
use std::{
    collections::VecDeque,
    fmt::Debug,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, Ordering},
    },
    time::Duration,
};

use crate::{config::EngineIoConfig, errors::Error};
use bytes::Bytes;
use engineioxide_core::{Packet, PacketBuf, ProtocolVersion, Str, TransportType};
use futures_util::FutureExt;
use http::request::Parts;
use smallvec::{SmallVec, smallvec};
use tokio::sync::{
    Mutex,
    Notify,
    // PATCHED (Parley): the packets wait in a `PacketQueue`, not an mpsc channel.
    mpsc::error::TrySendError,
};

pub use engineioxide_core::Sid;

/// A [`DisconnectReason`] represents the reason why a [`Socket`] was closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client gracefully closed the connection
    TransportClose,
    /// The client sent multiple polling requests at the same time (it is forbidden according to the engine.io protocol)
    MultipleHttpPollingError,
    /// The client sent a bad request / the packet could not be parsed correctly
    PacketParsingError,
    /// An error occured in the transport layer
    /// (e.g. the client closed the connection without sending a close packet)
    TransportError,
    /// The client did not respond to the heartbeat
    HeartbeatTimeout,
    /// The server is being closed
    ClosingServer,
}

/// Convert an [`Error`] to a [`DisconnectReason`] if possible
/// This is used to notify the [`Handler`](crate::handler::EngineIoHandler) of the reason why a [`Socket`] was closed
/// If the error cannot be converted to a [`DisconnectReason`] it means that the error was not fatal and the [`Socket`] can be kept alive
impl From<&Error> for Option<DisconnectReason> {
    fn from(err: &Error) -> Self {
        use Error::*;
        match err {
            WsTransport(_) => Some(DisconnectReason::TransportError),
            BadPacket(_) | PacketParse(_) => Some(DisconnectReason::PacketParsingError),
            HeartbeatTimeout => Some(DisconnectReason::HeartbeatTimeout),
            _ => None,
        }
    }
}

/// A permit to emit a message to the client.
/// A permit holds a place in the internal channel to send one packet to the client.
pub struct Permit<'a> {
    // PATCHED (Parley): a place in the socket's `PacketQueue`.
    inner: crate::queue::Permit<'a>,
}
impl Permit<'_> {
    /// Consume the permit and emit a message to the client.
    #[inline]
    pub fn emit(self, msg: Str) {
        // PATCHED (Parley): boxed, see `QueuedPackets`.
        self.inner.send(Box::new(smallvec![Packet::Message(msg)]));
    }
    /// Consume the permit and emit a binary message to the client.
    #[inline]
    pub fn emit_binary(self, data: Bytes) {
        // PATCHED (Parley): boxed, see `QueuedPackets`.
        self.inner.send(Box::new(smallvec![Packet::Binary(data)]));
    }

    /// Consume the permit and emit a message with multiple binary data to the client.
    ///
    /// It can be used to ensure atomicity when sending a string packet with adjacent binary packets.
    pub fn emit_many(self, msg: Str, data: VecDeque<Bytes>) {
        let mut packets = SmallVec::with_capacity(data.len() + 1);
        packets.push(Packet::Message(msg));
        for d in data {
            packets.push(Packet::Binary(d));
        }
        // PATCHED (Parley): boxed, see `QueuedPackets`.
        self.inner.send(Box::new(packets));
    }

    /// Consume the permit and emit a message with multiple binary data to the client.
    ///
    /// It can be used to ensure atomicity when sending a string packet with adjacent binary packets.
    pub fn emit_many_binary(self, bin: Bytes, data: Vec<Bytes>) {
        let mut packets = SmallVec::with_capacity(data.len() + 1);
        packets.push(Packet::Binary(bin));
        for d in data {
            packets.push(Packet::Binary(d));
        }
        // PATCHED (Parley): boxed, see `QueuedPackets`.
        self.inner.send(Box::new(packets));
    }
}

/// PATCHED (Parley, see vendor/README.md): what the socket's queue carries, boxed. A
/// `PacketBuf` is about 170 bytes: with the tokio mpsc channel this replaced, whose slots come
/// in blocks of 32 from the start, every socket kept a 5.4 KiB block even when idle; in the
/// socket's [`PacketQueue`](crate::queue::PacketQueue), the slots a queue keeps are pointers.
/// The cost is one allocation per queued packet buffer.
pub(crate) type QueuedPackets = Box<PacketBuf>;

/// PATCHED (Parley, see vendor/README.md): the volatile packets waiting to be sent, in place of
/// a `watch::channel(None)` (`volatile_tx` / `volatile_rx`), whose shared state was a heap
/// allocation of about 0.5 KiB made for every socket, although volatile packets are rare.
/// The same rules: only the latest packets are kept (a send replaces what was not sent yet),
/// and the connection that holds [`Socket::internal_rx`] takes them when it is woken.
#[derive(Debug, Default)]
pub(crate) struct VolatileSlot {
    /// Boxed: a `PacketBuf` inline would add its 170 bytes to every socket.
    latest: std::sync::Mutex<Option<QueuedPackets>>,
}

impl VolatileSlot {
    /// Replaces the packets not sent yet, if any. The caller wakes the connection
    /// ([`Socket::send_volatile`]).
    fn put(&self, packets: PacketBuf) {
        *self.lock() = Some(Box::new(packets));
    }

    /// The latest packets, if any are waiting. The connection that holds
    /// [`Socket::internal_rx`] takes them when the queue's receiver is woken: a wake-up comes
    /// after each `put`, as the watch channel's came after each version.
    pub(crate) fn take(&self) -> Option<QueuedPackets> {
        self.lock().take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<QueuedPackets>> {
        self.latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// PATCHED (Parley): whoever holds this (behind [`Socket::internal_rx`]) is the one receiver
/// of [`Socket::queue`]; the volatile receiver is `Socket::volatile`, see `VolatileSlot`.
#[derive(Debug, Default)]
pub(crate) struct InternalRx {
    /// PATCHED (Parley, see vendor/README.md): boxed. Only a polling request whose payload
    /// reached `max_payload` leaves a packet here; inline, its 176 bytes were in every socket.
    pub peeked_packet: Option<QueuedPackets>,
}

/// A [`Socket`] represents a client connection to the server.
/// It is agnostic to the [`TransportType`].
///
/// It handles :
/// * the packet communication between with the `Engine`
///   and the user defined [`Handler`](crate::handler::EngineIoHandler).
/// * the user defined [`Data`](crate::handler::EngineIoHandler::Data) bound to the socket.
/// * the heartbeat job that verify that the connection is still up by sending packets periodically.
pub struct Socket<D>
where
    D: Default + Send + Sync + 'static,
{
    /// The socket id
    pub id: Sid,

    /// The protocol version used by the socket
    pub protocol: ProtocolVersion,

    /// The transport type represented as a bitfield
    /// It is represented as a bitfield to allow the use of an [`AtomicU8`] so it can be shared between threads
    /// without any mutex
    transport: AtomicU8,

    /// Whether the socket is currently upgrading to a new transport.
    upgrading: AtomicBool,

    /// Channel to send [`PacketBuf`] to the connection
    ///
    /// It is used and managed by the [`EngineIo`](crate::engine) struct depending on the transport type
    ///
    /// It is locked if [`EngineIo`](crate::engine) is currently reading from it :
    /// * In case of polling transport it will be locked and released for each request
    /// * In case of websocket transport it will always be locked until the connection is closed
    ///
    /// Closing behavior is driven by the [`Socket::cancellation`].
    ///
    /// The channel is made of a [`SmallVec`] of [`Packet`]s so that adjacent packets can be sent atomically.
    pub(crate) internal_rx: Mutex<InternalRx>,

    /// The [PacketBuf]s waiting for the connection.
    /// PATCHED (Parley): a [`PacketQueue`](crate::queue::PacketQueue) in the socket instead of
    /// an mpsc channel (`internal_tx` and the receiver in `InternalRx`), whose shared state and
    /// first block were about 0.8 KiB of heap per socket.
    pub(crate) queue: crate::queue::PacketQueue,

    /// Volatile [PacketBuf]s that bypass the internal buffer: only the latest volatile
    /// message is retained; subsequent volatile sends overwrite the previous one.
    /// PATCHED (Parley): a [`VolatileSlot`] instead of a `watch` channel.
    pub(crate) volatile: VolatileSlot,

    /// Notified by the connection when a Pong [`Packet`] (v4 protocol) or a Ping (v3 protocol)
    /// arrives ([`Socket::heartbeat_received`]), for the heartbeat job: its own task waits on
    /// it; the WebSocket writer, woken through the queue, takes the permit.
    ///
    /// PATCHED (Parley, see vendor/README.md): a [`Notify`] in the socket instead of a
    /// `mpsc::channel(1)` (`heartbeat_tx` / `heartbeat_rx`), whose shared state was a heap
    /// allocation of about 0.5 KiB per socket. `notify_one` keeps one permit when nobody
    /// waits, as `try_send` into a channel of one slot kept one message.
    pub(crate) heartbeat: Notify,

    /// Triggered when the socket is being closed.
    /// PATCHED (Parley, see vendor/README.md): a [`Cancellation`](crate::cancel::Cancellation)
    /// in the socket instead of a `CancellationToken` (an `Arc` of 112 bytes).
    pub(crate) cancellation: crate::cancel::Cancellation,

    /// Function to call when the socket is closed
    close_fn: Box<dyn Fn(Sid, DisconnectReason) + Send + Sync>,
    /// User data bound to the socket
    pub data: D,

    /// Http Request data used to create a socket
    ///
    /// PATCHED (Parley, see vendor/README.md): behind [`Socket::req_parts`] and
    /// [`Socket::release_req_parts`] instead of a public `Parts` field, so that a server that
    /// has read what it needs (in a connect middleware) can drop it: kept for the socket's
    /// life, the request's headers, URI and extensions were about 0.85 KiB per idle socket.
    req_parts: std::sync::Mutex<Option<Arc<Parts>>>,

    /// If the client supports binary packets (via polling XHR2)
    pub(crate) supports_binary: bool,
}

impl<D> Socket<D>
where
    D: Default + Send + Sync + 'static,
{
    pub(crate) fn new(
        protocol: ProtocolVersion,
        transport: TransportType,
        config: &EngineIoConfig,
        req_parts: Parts,
        close_fn: Box<dyn Fn(Sid, DisconnectReason) + Send + Sync>,
        supports_binary: bool,
    ) -> Self {
        Self {
            id: Sid::new(),
            protocol,
            transport: AtomicU8::new(transport as u8),
            upgrading: AtomicBool::new(false),

            // PATCHED (Parley): see `queue`.
            internal_rx: Mutex::new(InternalRx::default()),
            queue: crate::queue::PacketQueue::new(config.max_buffer_size),

            // PATCHED (Parley): see `VolatileSlot`.
            volatile: VolatileSlot::default(),

            // PATCHED (Parley): see `heartbeat`.
            heartbeat: Notify::new(),
            cancellation: Default::default(),

            close_fn,

            data: D::default(),
            // PATCHED (Parley): see `req_parts`.
            req_parts: std::sync::Mutex::new(Some(Arc::new(req_parts))),

            supports_binary,
        }
    }

    /// Sends a packet to the connection.
    pub(crate) fn send(&self, packet: Packet) -> Result<(), TrySendError<Packet>> {
        #[cfg(feature = "tracing")]
        tracing::debug!(?packet, "sending packet");

        self.queue
            // PATCHED (Parley): boxed, see `QueuedPackets`; a `PacketQueue`, see `queue`.
            .try_send(Box::new(smallvec![packet]))
            .map_err(|p| match p {
                TrySendError::Full(mut p) => TrySendError::Full(p.pop().unwrap()),
                TrySendError::Closed(mut p) => TrySendError::Closed(p.pop().unwrap()),
            })?;
        Ok(())
    }
    pub(crate) fn is_upgrading(&self) -> bool {
        self.upgrading.load(Ordering::Relaxed)
    }
    pub(crate) fn start_upgrade(&self) {
        self.upgrading.store(true, Ordering::Relaxed);
    }

    /// Spawn the heartbeat job
    ///
    /// Keep a handle to the job so that it can be aborted when the socket is closed
    pub(crate) fn spawn_heartbeat(self: Arc<Self>, interval: Duration, timeout: Duration) {
        // PATCHED (Parley): the task owns the socket and runs until its cancellation.
        tokio::spawn(async move {
            let socket = &self;
            let _v = socket
                .cancellation
                .run_until_cancelled(async move {
                    if let Err(_e) = socket.heartbeat_job(interval, timeout).await {
                        socket.close(DisconnectReason::HeartbeatTimeout);
                        #[cfg(feature = "tracing")]
                        tracing::debug!(id = ?socket.id, "heartbeat error: {_e}");
                    }
                })
                .await;
            #[cfg(feature = "tracing")]
            tracing::debug!(aborted = _v.is_none(), "heartbeat job completed");
        });
    }

    /// Heartbeat is sent every `interval` milliseconds by the client and the server `is` expected to respond within `timeout` milliseconds.
    ///
    /// If the client or server does not respond within the timeout, the connection is closed.
    #[cfg(feature = "v3")]
    async fn heartbeat_job(&self, interval: Duration, timeout: Duration) -> Result<(), Error> {
        match self.protocol {
            ProtocolVersion::V3 => self.heartbeat_job_v3(interval, timeout).await,
            ProtocolVersion::V4 => self.heartbeat_job_v4(interval, timeout).await,
        }
    }

    /// Heartbeat is sent every `interval` milliseconds and the client is expected to respond within `timeout` milliseconds.
    ///
    /// If the client does not respond within the timeout, the connection is closed.
    #[cfg(not(feature = "v3"))]
    async fn heartbeat_job(&self, interval: Duration, timeout: Duration) -> Result<(), Error> {
        self.heartbeat_job_v4(interval, timeout).await
    }

    /// Heartbeat is sent every `interval` milliseconds and the client is expected to respond within `timeout` milliseconds.
    ///
    /// If the client does not respond within the timeout, the connection is closed.
    async fn heartbeat_job_v4(&self, interval: Duration, timeout: Duration) -> Result<(), Error> {
        #[cfg(feature = "tracing")]
        tracing::debug!(sid = ?self.id, "heartbeat sender routine started");

        let mut interval_tick = tokio::time::interval(interval);
        interval_tick.tick().await;
        // Some clients send the pong packet in first. If that happens, we should consume it.
        // PATCHED (Parley): takes the `heartbeat` permit if there is one.
        self.heartbeat.notified().now_or_never();
        loop {
            // If we are currently upgrading we should pause the heartbeat process
            if self.is_upgrading() {
                interval_tick.tick().await;
                continue;
            }

            #[cfg(feature = "tracing")]
            tracing::trace!(sid = ?self.id, "emitting ping");

            self.queue
                // PATCHED (Parley): boxed, see `QueuedPackets`; a `PacketQueue`, see `queue`.
                .try_send(Box::new(smallvec![Packet::Ping]))
                .map_err(|_| Error::HeartbeatTimeout)?;

            #[cfg(feature = "tracing")]
            tracing::trace!(sid = ?self.id, "waiting for pong");

            // PATCHED (Parley): see `heartbeat`.
            tokio::time::timeout(timeout, self.heartbeat.notified())
                .await
                .map_err(|_| Error::HeartbeatTimeout)?;

            #[cfg(feature = "tracing")]
            tracing::trace!(sid = ?self.id, "pong received");

            interval_tick.tick().await;
        }
    }

    #[cfg(feature = "v3")]
    async fn heartbeat_job_v3(&self, interval: Duration, timeout: Duration) -> Result<(), Error> {
        #[cfg(feature = "tracing")]
        tracing::debug!(sid = ?self.id, "heartbeat receiver routine started");

        loop {
            // PATCHED (Parley): see `heartbeat`.
            tokio::time::timeout(interval + timeout, self.heartbeat.notified())
                .await
                .map_err(|_| Error::HeartbeatTimeout)?;

            #[cfg(feature = "tracing")]
            tracing::trace!(sid = ?self.id, "ping received, sending pong");
            self.queue
                // PATCHED (Parley): boxed, see `QueuedPackets`; a `PacketQueue`, see `queue`.
                .try_send(Box::new(smallvec![Packet::Pong]))
                .map_err(|_| Error::HeartbeatTimeout)?;
        }
    }

    /// Returns true if the [`Socket`] has a websocket [`TransportType`]
    pub(crate) fn is_ws(&self) -> bool {
        self.transport.load(Ordering::Relaxed) == TransportType::Websocket as u8
    }
    /// returns true if the [`Socket`] has an HTTP [`TransportType`]
    pub(crate) fn is_http(&self) -> bool {
        self.transport.load(Ordering::Relaxed) == TransportType::Polling as u8
    }

    /// Sets the [`TransportType`] to WebSocket
    /// Used when the client upgrade the connection from HTTP to WebSocket
    pub(crate) fn upgrade_to_websocket(&self) {
        self.upgrading.store(false, Ordering::Relaxed);
        self.transport
            .store(TransportType::Websocket as u8, Ordering::Relaxed);
    }

    /// Returns the current [`TransportType`] of the [`Socket`]
    pub fn transport_type(&self) -> TransportType {
        TransportType::from(self.transport.load(Ordering::Relaxed))
    }

    /// Reserve `n` permits to emit multiple messages and ensure that there is enough
    /// space in the internal chan.
    ///
    /// If the internal chan is full, the function will return a [`TrySendError::Full`] error.
    /// If the socket is closed, the function will return a [`TrySendError::Closed`] error.
    #[inline]
    pub fn reserve(&self) -> Result<Permit<'_>, TrySendError<()>> {
        // PATCHED (Parley): a `PacketQueue`, see `queue`.
        let permit = self.queue.try_reserve()?;
        Ok(Permit { inner: permit })
    }

    /// Emits a message to the client.
    ///
    /// If the transport is in websocket mode, the message is directly sent as a text frame.
    ///
    /// If the transport is in polling mode, the message is buffered and sent as a text frame to the next polling request.
    ///
    /// ⚠️ If the buffer is full or the socket is disconnected, an error will be returned with the original data
    pub fn emit(&self, msg: impl Into<Str>) -> Result<(), TrySendError<Str>> {
        self.send(Packet::Message(msg.into())).map_err(|e| match e {
            TrySendError::Full(p) => TrySendError::Full(p.into_message()),
            TrySendError::Closed(p) => TrySendError::Closed(p.into_message()),
        })
    }

    /// Immediately closes the socket and the underlying connection.
    /// The socket will be removed from the `Engine` and the [`Handler`](crate::handler::EngineIoHandler) will be notified.
    #[cfg_attr(feature = "tracing", tracing::instrument(skip(self)))]
    pub fn close(&self, reason: DisconnectReason) {
        // Try to send a close packet is the connection is still operational.
        self.send(Packet::Close).ok();

        (self.close_fn)(self.id, reason);
    }

    /// Returns true if the socket is closed
    /// It means that no more packets can be sent to the client
    pub fn is_closed(&self) -> bool {
        // PATCHED (Parley): a `PacketQueue`, see `queue`.
        self.queue.is_closed()
    }

    /// Wait for the socket to be fully closed
    pub async fn closed(&self) {
        // PATCHED (Parley): a `PacketQueue`, see `queue`.
        self.queue.closed().await
    }

    /// Emits a binary message to the client.
    ///
    /// If the transport is in websocket mode, the message is directly sent as a binary frame.
    ///
    /// If the transport is in polling mode, the message is buffered and sent as a text frame **encoded in base64** to the next polling request.
    ///
    /// ⚠️ If the buffer is full or the socket is disconnected, an error will be returned with the original data
    pub fn emit_binary<B: Into<Bytes>>(&self, data: B) -> Result<(), TrySendError<Bytes>> {
        if self.protocol == ProtocolVersion::V3 {
            self.send(Packet::BinaryV3(data.into()))
        } else {
            self.send(Packet::Binary(data.into()))
        }
        .map_err(|e| match e {
            TrySendError::Full(p) => TrySendError::Full(p.into_binary()),
            TrySendError::Closed(p) => TrySendError::Closed(p.into_binary()),
        })
    }

    /// Try to send a volatile message bypassing the internal buffer channel.
    /// Volatile messages may be dropped if the transport is not ready to
    /// receive them.
    ///
    /// Because volatile messages bypass the main mpsc buffer queue, they may
    /// arrive out of order relative to regular messages.
    ///
    /// Returns `true` if the message was queued for sending, `false` if it
    /// was dropped (channel full or transport shutting down).
    #[inline]
    pub fn emit_volatile(&self, msg: impl Into<Str>) -> bool {
        self.send_volatile(smallvec![Packet::Message(msg.into())])
    }

    /// Try to send a volatile binary message bypassing the internal buffer channel.
    /// Volatile messages may be dropped if the transport is not ready to
    /// receive them.
    ///
    /// Returns `true` if the message was queued for sending, `false` if it
    /// was dropped.
    #[inline]
    pub fn emit_binary_volatile<B: Into<Bytes>>(&self, data: B) -> bool {
        if self.protocol == ProtocolVersion::V3 {
            self.send_volatile(smallvec![Packet::BinaryV3(data.into())])
        } else {
            self.send_volatile(smallvec![Packet::Binary(data.into())])
        }
    }

    /// Try to send a volatile message with multiple adjacent binary payloads.
    /// The message and all binary payloads are sent atomically as a single
    /// volatile write.
    ///
    /// Returns `true` if the message was queued for sending, `false` if it
    /// was dropped.
    #[inline]
    pub fn emit_many_volatile(&self, msg: Str, data: VecDeque<Bytes>) -> bool {
        let mut packets = SmallVec::with_capacity(1 + data.len());
        packets.push(Packet::Message(msg));
        for bin in data {
            packets.push(Packet::Binary(bin));
        }
        self.send_volatile(packets)
    }

    /// The HTTP request parts of the request that created this socket, or empty parts (a GET
    /// of `/` without headers or extensions) once [`Socket::release_req_parts`] was called.
    ///
    /// PATCHED (Parley, see vendor/README.md): was the public field `req_parts`.
    pub fn req_parts(&self) -> Arc<Parts> {
        let kept = self
            .req_parts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        kept.unwrap_or_else(|| Arc::new(http::Request::<()>::default().into_parts().0))
    }

    /// Drops the HTTP request parts kept for this socket (headers, URI and extensions, with
    /// whatever a middleware put there), for a server that has read what it needs from them.
    /// Afterwards [`Socket::req_parts`] returns empty parts.
    ///
    /// PATCHED (Parley, see vendor/README.md): new.
    pub fn release_req_parts(&self) {
        let released = self
            .req_parts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        drop(released);
    }

    pub(crate) fn send_volatile(&self, packets: PacketBuf) -> bool {
        // PATCHED (Parley): see `VolatileSlot`. The watch channel's send failed only without a
        // receiver, and its receiver lived in this socket: it never failed.
        self.volatile.put(packets);
        self.queue.wake_receiver();
        true
    }

    /// Cancels the session's transports: a pending polling request, the WebSocket's reader,
    /// and its writer, which learns of it when the queue's receiver is woken.
    ///
    /// PATCHED (Parley, see vendor/README.md): the WebSocket writer no longer waits on the
    /// token itself (see `forward_to_socket`).
    pub(crate) fn cancel(&self) {
        self.cancellation.cancel();
        self.queue.wake_receiver();
    }

    /// A Pong (v4) or Ping (v3) from the client: for the heartbeat, in its own task (it waits on
    /// [`Socket::heartbeat`]) or in the WebSocket writer (woken as the queue's receiver).
    ///
    /// PATCHED (Parley, see vendor/README.md): new.
    pub(crate) fn heartbeat_received(&self) {
        self.heartbeat.notify_one();
        self.queue.wake_receiver();
    }
}

impl<D: Default + Send + Sync + 'static> std::fmt::Debug for Socket<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("sid", &self.id)
            .field("protocol", &self.protocol)
            .field("conn", &self.transport)
            .field("internal_rx", &self.internal_rx)
            .field("queue", &self.queue)
            .field("heartbeat", &self.heartbeat)
            .field("cancellation", &self.cancellation)
            .field("req_data", &self.req_parts)
            .finish()
    }
}

#[doc(hidden)]
#[cfg(feature = "__test_harness")]
impl<D> Drop for Socket<D>
where
    D: Default + Send + Sync + 'static,
{
    fn drop(&mut self) {
        #[cfg(feature = "tracing")]
        tracing::debug!("[sid={}] dropping socket", self.id);
    }
}

#[doc(hidden)]
#[cfg(feature = "__test_harness")]
impl<D> Socket<D>
where
    D: Default + Send + Sync + 'static,
{
    /// Create a dummy socket for testing purpose
    pub fn new_dummy(
        sid: Sid,
        close_fn: Box<dyn Fn(Sid, DisconnectReason) + Send + Sync>,
    ) -> Arc<Socket<D>> {
        let (s, mut rx) = Socket::new_dummy_piped(sid, close_fn, 1024);
        tokio::spawn(async move {
            while let Some(_el) = rx.recv().await {
                #[cfg(feature = "tracing")]
                tracing::debug!(?sid, ?_el, "emitting eio msg");
            }
        });
        s
    }

    /// Create a dummy socket for testing purpose with a
    /// receiver to get the packets sent to the client
    pub fn new_dummy_piped(
        sid: Sid,
        close_fn: Box<dyn Fn(Sid, DisconnectReason) + Send + Sync>,
        buffer_size: usize,
    ) -> (Arc<Socket<D>>, tokio::sync::mpsc::Receiver<Packet>) {
        let sock = Self {
            id: sid,
            protocol: ProtocolVersion::V4,
            transport: AtomicU8::new(TransportType::Websocket as u8),
            upgrading: AtomicBool::new(false),

            // PATCHED (Parley): see `queue`.
            internal_rx: Mutex::new(InternalRx::default()),
            queue: crate::queue::PacketQueue::new(buffer_size),

            // PATCHED (Parley): see `VolatileSlot`.
            volatile: VolatileSlot::default(),

            // PATCHED (Parley): see `heartbeat`.
            heartbeat: Notify::new(),
            cancellation: Default::default(),
            close_fn,

            data: D::default(),
            // PATCHED (Parley): see `req_parts`.
            req_parts: std::sync::Mutex::new(Some(Arc::new(
                http::Request::<()>::default().into_parts().0,
            ))),

            supports_binary: true,
        };
        let sock = Arc::new(sock);

        let (tx, rx) = tokio::sync::mpsc::channel(buffer_size);
        let sock_clone = sock.clone();
        tokio::spawn(async move {
            // PATCHED (Parley): the receiver is whoever holds `internal_rx`, see `queue`.
            let _internal_rx = sock_clone.internal_rx.try_lock().unwrap();
            while let Some(packets) = sock_clone.queue.recv().await {
                // PATCHED (Parley): boxed, see `QueuedPackets`.
                for packet in *packets {
                    tx.send(packet).await.unwrap();
                }
            }
        });

        (sock, rx)
    }
}
