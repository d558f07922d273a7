//! TURN over TCP and TLS (RFC 8656 3.1 / RFC 5766 2.1): STUN messages and ChannelData framed
//! on a stream, the relay side staying UDP.
//!
//! `turn` only reads datagrams from a `Conn`, so each stream listener is one `StreamMux`:
//! a `Conn` whose `recv_from` yields the frames of every connection tagged with the client's
//! address, and whose `send_to` writes to that client's connection. The server's 5-tuple
//! (client address, listener address) then identifies a connection exactly as it does a
//! UDP client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use webrtc_util::Conn;

use crate::guard::Shared;
use crate::metrics::Metrics;

/// Relayed data (ChannelData, Data indications) queued per connection before further frames
/// are dropped, as a congested UDP path would drop them.
const DATA_QUEUE: usize = 256;
/// STUN responses queued per connection. They are never dropped: a TCP client does not
/// retransmit, so a lost response stalls it. A client that stops reading while it keeps
/// sending requests is disconnected instead.
const CONTROL_QUEUE: usize = 256;
/// Frames from all connections waiting for the server.
const READ_QUEUE: usize = 1024;
/// How long a TCP/TLS client may take before it is disconnected (slowloris defence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamTimeouts {
    /// From accepting the connection to the end of the TLS handshake and of the first whole
    /// STUN message; also from the first byte of any frame to its last.
    pub handshake: Duration,
    /// Between two frames once the client has sent a STUN message (allocations refresh
    /// every few minutes and permissions every 5; browsers send media or keepalives
    /// continuously).
    pub idle: Duration,
}

impl Default for StreamTimeouts {
    fn default() -> Self {
        StreamTimeouts {
            handshake: Duration::from_secs(10),
            idle: Duration::from_secs(600),
        }
    }
}

/// The two queues of one connection's writer task.
#[derive(Clone)]
struct Writer {
    data: mpsc::Sender<Vec<u8>>,
    control: mpsc::Sender<Vec<u8>>,
}

/// Relayed data, as opposed to STUN control messages.
fn is_relayed_data(frame: &[u8]) -> bool {
    match frame.first() {
        Some(byte) if byte >> 6 == 1 => true, // ChannelData
        // A STUN indication (class bits 0b01 in the type): Data indications.
        Some(_) if frame.len() >= 2 => frame[1] & 0x10 != 0 && frame[0] & 0x01 == 0,
        _ => false,
    }
}

pub(crate) struct StreamMux {
    local: SocketAddr,
    frames_tx: mpsc::Sender<(Vec<u8>, SocketAddr)>,
    frames_rx: tokio::sync::Mutex<mpsc::Receiver<(Vec<u8>, SocketAddr)>>,
    writers: Mutex<HashMap<SocketAddr, Writer>>,
}

impl StreamMux {
    pub fn new(local: SocketAddr) -> Arc<Self> {
        let (frames_tx, frames_rx) = mpsc::channel(READ_QUEUE);
        Arc::new(StreamMux {
            local,
            frames_tx,
            frames_rx: tokio::sync::Mutex::new(frames_rx),
            writers: Mutex::new(HashMap::new()),
        })
    }

    fn writers(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Writer>> {
        self.writers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Length of the frame starting at `header` (4 bytes): a STUN message (20-byte header plus
/// its length) or ChannelData (4-byte header plus data, padded to 4 on streams).
/// Returns (bytes to read in total, bytes to hand to the server).
pub(crate) fn frame_length(header: [u8; 4]) -> Option<(usize, usize)> {
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    match header[0] >> 6 {
        0 => Some((20 + length, 20 + length)),
        1 => Some((4 + length.div_ceil(4) * 4, 4 + length)),
        _ => None,
    }
}

/// The stream does not carry STUN or ChannelData: the client is out of sync and is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutOfSync;

/// Splits a byte stream into frames, without I/O: bytes in with [`FrameBuffer::push`], whole
/// frames out with [`FrameBuffer::next_frame`].
#[derive(Debug, Default)]
pub(crate) struct FrameBuffer {
    buffered: Vec<u8>,
}

impl FrameBuffer {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffered.extend_from_slice(bytes);
    }

    /// Whether part of a frame has arrived and the rest has not.
    pub fn has_partial_frame(&self) -> bool {
        !self.buffered.is_empty()
    }

    /// The next complete frame (as handed to the server: ChannelData without its padding).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, OutOfSync> {
        let Some(header) = self.buffered.first_chunk::<4>() else {
            return Ok(None);
        };
        let (total, payload) = frame_length(*header).ok_or(OutOfSync)?;
        if self.buffered.len() < total {
            return Ok(None);
        }
        let mut frame: Vec<u8> = self.buffered.drain(..total).collect();
        frame.truncate(payload);
        Ok(Some(frame))
    }
}

/// A frame carrying a STUN message (as opposed to ChannelData).
fn is_stun(frame: &[u8]) -> bool {
    frame.len() >= 20 && frame[0] >> 6 == 0 && frame[4..8] == [0x21, 0x12, 0xA4, 0x42]
}

/// When the client must next have made progress, or be disconnected.
#[derive(Debug)]
struct ReadDeadline {
    timeouts: StreamTimeouts,
    accepted_at: Instant,
    seen_stun: bool,
    /// When the first byte of the frame now in the buffer arrived.
    partial_since: Option<Instant>,
    last_frame_at: Instant,
}

impl ReadDeadline {
    fn new(timeouts: StreamTimeouts, accepted_at: Instant) -> Self {
        ReadDeadline {
            timeouts,
            accepted_at,
            seen_stun: false,
            partial_since: None,
            last_frame_at: accepted_at,
        }
    }

    fn frame(&mut self, frame: &[u8], now: Instant) {
        self.seen_stun |= is_stun(frame);
        self.last_frame_at = now;
    }

    fn buffered(&mut self, partial: bool, now: Instant) {
        self.partial_since = match (partial, self.partial_since) {
            (false, _) => None,
            (true, None) => Some(now),
            (true, since) => since,
        };
    }

    fn deadline(&self) -> Instant {
        let first_message = self.accepted_at + self.timeouts.handshake;
        let frame = self
            .partial_since
            .map(|since| since + self.timeouts.handshake);
        let idle = self.last_frame_at + self.timeouts.idle;
        let mut deadline = frame.map_or(idle, |frame| frame.min(idle));
        if !self.seen_stun {
            deadline = deadline.min(first_message);
        }
        deadline
    }
}

async fn read_frames<R: AsyncRead + Unpin>(
    mut reader: R,
    peer: SocketAddr,
    already_read: &[u8],
    frames: &mpsc::Sender<(Vec<u8>, SocketAddr)>,
    mut deadline: ReadDeadline,
    shared: &Shared,
) {
    let mut buffer = FrameBuffer::default();
    buffer.push(already_read);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        loop {
            match buffer.next_frame() {
                Ok(Some(frame)) => {
                    deadline.frame(&frame, Instant::now());
                    if frames.send((frame, peer)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(OutOfSync) => return,
            }
        }
        deadline.buffered(buffer.has_partial_frame(), Instant::now());
        match tokio::time::timeout_at(deadline.deadline(), reader.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => buffer.push(&chunk[..n]),
            Err(_) => {
                Metrics::add(&shared.metrics.stream_timeouts, 1);
                if shared.may_log() {
                    log::info!(
                        "turn: closed the connection of {peer}: no whole STUN message, a frame left unfinished, or idle (see turn.handshake_timeout_secs and turn.idle_timeout_secs)"
                    );
                }
                return;
            }
        }
    }
}

async fn write_frames<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut control: mpsc::Receiver<Vec<u8>>,
    mut data: mpsc::Receiver<Vec<u8>>,
) {
    loop {
        // Responses first: a client waiting for one should not wait behind media.
        let frame = tokio::select! {
            biased;
            Some(frame) = control.recv() => frame,
            Some(frame) = data.recv() => frame,
            else => break,
        };
        let mut frame = frame;
        // ChannelData is padded to a multiple of 4 on streams; `turn` already pads, but a
        // short frame from elsewhere must not desynchronise the client.
        if frame.len() >= 4 && frame[0] >> 6 == 1 {
            frame.resize(frame.len().div_ceil(4) * 4, 0);
        }
        if writer.write_all(&frame).await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

/// Serves one accepted connection until it ends; `already_read` are bytes the caller read
/// from it before (the front door's classifier), framed before anything else.
async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    already_read: Vec<u8>,
    mux: Arc<StreamMux>,
    shared: Arc<Shared>,
    deadline: ReadDeadline,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (reader, writer) = tokio::io::split(stream);
    let (data_tx, data_rx) = mpsc::channel(DATA_QUEUE);
    let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
    mux.writers().insert(
        peer,
        Writer {
            data: data_tx,
            control: control_tx,
        },
    );
    let writer_task = tokio::spawn(write_frames(writer, control_rx, data_rx));
    read_frames(
        reader,
        peer,
        &already_read,
        &mux.frames_tx,
        deadline,
        &shared,
    )
    .await;
    mux.writers().remove(&peer);
    writer_task.abort();
    // The allocation ends with its connection (RFC 6062 / RFC 8656 3.1); `turn` has no hook
    // for that, so delete it with a Refresh of lifetime 0 on the client's behalf.
    if let Some(release) = shared.release_request((peer, mux.local)) {
        let _ = mux.frames_tx.send((release, peer)).await;
    }
}

/// How many connections one stream listener holds, and for how long.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamLimits {
    pub max_connections: usize,
    pub timeouts: StreamTimeouts,
}

/// Accepts connections until `shutdown` flips, wrapping each in TLS if an acceptor is given.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    mux: Arc<StreamMux>,
    shared: Arc<Shared>,
    limits: StreamLimits,
    up: Arc<AtomicBool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let StreamLimits {
        max_connections,
        timeouts,
    } = limits;
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {
                shared.metrics.stream_connections.store(tasks.len() as u64, Ordering::Relaxed);
                continue;
            }
        };
        let (stream, peer) = match accepted {
            Ok(v) => v,
            Err(err) => {
                // EMFILE and friends: back off rather than spin.
                if shared.may_log() {
                    log::warn!("turn: accepting a TCP connection failed: {err}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if tasks.len() >= max_connections {
            if shared.may_log() {
                log::warn!(
                    "turn: refusing TCP connection from {peer}: {max_connections} connections open"
                );
            }
            continue; // dropping the stream closes it
        }
        let _ = stream.set_nodelay(true);
        let deadline = ReadDeadline::new(timeouts, Instant::now());
        let mux = Arc::clone(&mux);
        let shared_for_task = Arc::clone(&shared);
        match &tls {
            None => {
                tasks.spawn(serve_connection(
                    stream,
                    peer,
                    Vec::new(),
                    mux,
                    shared_for_task,
                    deadline,
                ));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tasks.spawn(async move {
                    match tokio::time::timeout(timeouts.handshake, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            serve_connection(tls_stream, peer, Vec::new(), mux, shared_for_task, deadline)
                                .await
                        }
                        Ok(Err(err)) => {
                            if shared_for_task.may_log() {
                                log::info!("turn: TLS handshake with {peer} failed: {err}");
                            }
                        }
                        Err(_) => {
                            Metrics::add(&shared_for_task.metrics.stream_timeouts, 1);
                            if shared_for_task.may_log() {
                                log::info!(
                                    "turn: closed the connection of {peer}: TLS handshake unfinished after turn.handshake_timeout_secs"
                                );
                            }
                        }
                    }
                });
            }
        }
        shared
            .metrics
            .stream_connections
            .store(tasks.len() as u64, Ordering::Relaxed);
    }
    up.store(false, Ordering::Relaxed);
    tasks.shutdown().await;
    shared
        .metrics
        .stream_connections
        .store(0, Ordering::Relaxed);
}

/// TURN over TCP and TLS on a port that another server owns: the daemon's HTTPS port (issue 11,
/// "one front door"). That server accepts, does the TLS handshake, tells STUN from HTTP by the
/// first bytes, and hands each TURN connection here with the bytes it has already read.
///
/// Behind it is one more [`StreamMux`] registered with the `turn` server like a listener of
/// its own, so the connections keep every limit of the relay's own listeners: framing, the
/// handshake and idle deadlines, the connection cap, quotas and the peer policy (the gate sees
/// every request). TCP and TLS connections share the mux: each client's address is distinct.
#[derive(Clone)]
pub struct FrontDoor {
    mux: Arc<StreamMux>,
    shared: Arc<Shared>,
    limits: StreamLimits,
    open: Arc<AtomicUsize>,
    shutdown: watch::Receiver<bool>,
}

impl std::fmt::Debug for FrontDoor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontDoor")
            .field("local", &self.mux.local)
            .field("open", &self.open.load(Ordering::Relaxed))
            .finish()
    }
}

/// Takes one place among a front door's open connections; gives it back when dropped.
struct OpenSlot(Arc<AtomicUsize>);

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl FrontDoor {
    /// The front door for connections accepted on `local`, and the `Conn` to register with the
    /// `turn` server for it.
    pub(crate) fn new(
        local: SocketAddr,
        shared: Arc<Shared>,
        limits: StreamLimits,
        shutdown: watch::Receiver<bool>,
    ) -> (FrontDoor, Arc<StreamMux>) {
        let mux = StreamMux::new(local);
        let door = FrontDoor {
            mux: Arc::clone(&mux),
            shared,
            limits,
            open: Arc::new(AtomicUsize::new(0)),
            shutdown,
        };
        (door, mux)
    }

    /// The address the connections were accepted on (the server side of their 5-tuple).
    pub fn local_addr(&self) -> SocketAddr {
        self.mux.local
    }

    /// TURN connections open through this door now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Serves one TURN connection until it ends, the relay stops, or a deadline passes.
    ///
    /// `already_read` are the bytes the caller read to classify the connection (after the TLS
    /// handshake for `Transport::Tls`); they are framed first. `accepted_at` is when the TCP
    /// connection was accepted: the first whole STUN message is due within
    /// `turn.handshake_timeout_secs` of it, classification and TLS handshake included.
    pub async fn serve_stream<S>(
        &self,
        io: S,
        peer: SocketAddr,
        already_read: Vec<u8>,
        accepted_at: Instant,
        transport: crate::Transport,
    ) where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let mut shutdown = self.shutdown.clone();
        if *shutdown.borrow() {
            return;
        }
        let max = self.limits.max_connections;
        if self.open.fetch_add(1, Ordering::Relaxed) >= max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            if self.shared.may_log() {
                log::warn!(
                    "turn: refusing {} connection from {peer} on the HTTPS port: {max} connections open",
                    transport.as_str()
                );
            }
            return; // dropping `io` closes it
        }
        let _slot = OpenSlot(Arc::clone(&self.open));
        let deadline = ReadDeadline::new(self.limits.timeouts, accepted_at);
        let serve = serve_connection(
            io,
            peer,
            already_read,
            Arc::clone(&self.mux),
            Arc::clone(&self.shared),
            deadline,
        );
        tokio::select! {
            () = serve => {}
            _ = shutdown.wait_for(|stopped| *stopped) => {
                // The relay is stopping and closes every allocation itself; dropping the
                // queues ends the writer task, which closes the connection.
                self.mux.writers().remove(&peer);
            }
        }
    }
}

#[async_trait]
impl Conn for StreamMux {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(webrtc_util::Error::Other(
            "a stream listener does not connect".into(),
        ))
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        self.recv_from(buf).await.map(|(n, _)| n)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let mut frames = self.frames_rx.lock().await;
        loop {
            let Some((frame, peer)) = frames.recv().await else {
                return Err(webrtc_util::Error::ErrClosedListener);
            };
            if frame.len() > buf.len() {
                continue; // larger than the server's buffer; UDP would truncate it
            }
            buf[..frame.len()].copy_from_slice(&frame);
            return Ok((frame.len(), peer));
        }
    }

    async fn send(&self, _buf: &[u8]) -> webrtc_util::Result<usize> {
        Err(webrtc_util::Error::Other(
            "a stream listener needs a destination".into(),
        ))
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        let writer = self.writers().get(&target).cloned();
        match writer {
            // A full data queue drops the frame, as a congested UDP path would.
            Some(writer) if is_relayed_data(buf) => {
                let _ = writer.data.try_send(buf.to_vec());
                Ok(buf.len())
            }
            Some(writer) => {
                if writer.control.try_send(buf.to_vec()).is_err() {
                    // Not reading its responses: dropping the queues ends the writer task,
                    // which closes our side of the connection.
                    self.writers().remove(&target);
                }
                Ok(buf.len())
            }
            // The connection is gone (the answer to the release request sent on its behalf,
            // or data racing the close): drop silently, as UDP would, instead of an error
            // that `turn` logs at ERROR.
            None => Ok(buf.len()),
        }
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stun_frames_carry_their_header() {
        assert_eq!(frame_length([0x00, 0x03, 0x00, 0x08]), Some((28, 28)));
    }

    #[test]
    fn channel_data_is_padded_on_the_stream_but_not_for_the_server() {
        assert_eq!(frame_length([0x40, 0x00, 0x00, 0x05]), Some((12, 9)));
        assert_eq!(frame_length([0x7f, 0xff, 0x00, 0x04]), Some((8, 8)));
        assert_eq!(frame_length([0x40, 0x00, 0x00, 0x00]), Some((4, 4)));
    }

    #[test]
    fn relayed_data_is_told_from_responses() {
        assert!(is_relayed_data(&[0x40, 0x01, 0x00, 0x00]));
        assert!(is_relayed_data(&[0x00, 0x17, 0x00, 0x00])); // Data indication (0x0017)
        assert!(is_relayed_data(&[0x00, 0x16, 0x00, 0x00])); // Send indication (0x0016)
        assert!(!is_relayed_data(&[0x01, 0x03, 0x00, 0x00])); // Allocate success (0x0103)
        assert!(!is_relayed_data(&[0x01, 0x13, 0x00, 0x00])); // Allocate error (0x0113)
        assert!(!is_relayed_data(&[0x01, 0x09, 0x00, 0x00])); // ChannelBind success (0x0109)
        assert!(!is_relayed_data(&[0x01, 0x01, 0x00, 0x00])); // Binding success
    }

    #[test]
    fn the_buffer_yields_whole_frames_across_chunks() {
        let mut buffer = FrameBuffer::default();
        buffer.push(&[0x40, 0x00, 0x00, 0x05, 1, 2]);
        assert_eq!(buffer.next_frame(), Ok(None));
        assert!(buffer.has_partial_frame());
        buffer.push(&[3, 4, 5, 0, 0, 0, 0x40, 0x01]);
        assert_eq!(
            buffer.next_frame(),
            Ok(Some(vec![0x40, 0, 0, 5, 1, 2, 3, 4, 5]))
        );
        assert_eq!(buffer.next_frame(), Ok(None));
        assert!(buffer.has_partial_frame(), "the next header has begun");
        buffer.push(&[0, 0]);
        assert_eq!(buffer.next_frame(), Ok(Some(vec![0x40, 1, 0, 0])));
        assert!(!buffer.has_partial_frame());
        buffer.push(&[0xC0, 0, 0, 0]);
        assert_eq!(buffer.next_frame(), Err(OutOfSync));
    }

    fn timeouts() -> StreamTimeouts {
        StreamTimeouts {
            handshake: Duration::from_secs(10),
            idle: Duration::from_secs(600),
        }
    }

    fn stun_frame() -> Vec<u8> {
        let mut frame = vec![0u8; 20];
        frame[1] = 1;
        frame[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        frame
    }

    #[test]
    fn the_first_stun_message_is_due_within_the_handshake_timeout() {
        let start = Instant::now();
        let mut deadline = ReadDeadline::new(timeouts(), start);
        assert_eq!(deadline.deadline(), start + Duration::from_secs(10));
        // ChannelData does not count as the first message.
        deadline.frame(&[0x40, 0, 0, 0], start + Duration::from_secs(1));
        assert_eq!(deadline.deadline(), start + Duration::from_secs(10));
        deadline.frame(&stun_frame(), start + Duration::from_secs(2));
        assert_eq!(deadline.deadline(), start + Duration::from_secs(602));
    }

    #[test]
    fn a_started_frame_is_due_within_the_handshake_timeout() {
        let start = Instant::now();
        let mut deadline = ReadDeadline::new(timeouts(), start);
        deadline.frame(&stun_frame(), start);
        let began = start + Duration::from_secs(100);
        deadline.buffered(true, began);
        deadline.buffered(true, began + Duration::from_secs(5)); // more bytes, same frame
        assert_eq!(deadline.deadline(), began + Duration::from_secs(10));
        deadline.frame(&stun_frame(), began + Duration::from_secs(6));
        deadline.buffered(false, began + Duration::from_secs(6));
        assert_eq!(deadline.deadline(), began + Duration::from_secs(606));
    }

    /// A front door's connection: the bytes the HTTPS listener read to classify it come first,
    /// and the relay answers the Binding request they began (issue 11).
    #[tokio::test]
    async fn the_front_door_frames_the_bytes_already_read_first() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut sockets =
            crate::RelaySockets::bind("127.0.0.1:0".parse().unwrap(), true, 1, false).unwrap();
        let https: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        sockets.add_front_door(https);
        let options = crate::RelayOptions::new("s".into(), [127, 0, 0, 1].into());
        let relay = crate::Relay::start(options, sockets).await.unwrap();
        let door = relay.front_door().expect("asked for");
        assert_eq!(door.local_addr(), https);

        let (mut client, server) = tokio::io::duplex(4096);
        let binding = stun_frame();
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let serve = door.serve_stream(
            server,
            peer,
            binding[..8].to_vec(),
            Instant::now(),
            crate::Transport::Tcp,
        );
        let exchange = async {
            client.write_all(&binding[8..]).await.unwrap();
            let mut header = [0u8; 20];
            client.read_exact(&mut header).await.unwrap();
            assert_eq!(header[..2], [0x01, 0x01], "a Binding success response");
            assert_eq!(header[8..20], binding[8..20], "for our transaction");
            assert_eq!(door.open_connections(), 1);
            drop(client);
        };
        tokio::join!(serve, exchange);
        assert_eq!(door.open_connections(), 0);
        relay.shutdown().await;
    }

    #[test]
    fn other_bytes_are_not_frames() {
        assert_eq!(frame_length([0xC0, 0, 0, 0]), None);
        assert_eq!(frame_length([0x80, 0, 0, 0]), None);
        assert_eq!(
            frame_length([0x16, 0x03, 0x01, 0x00]),
            Some((276, 276)),
            "a TLS hello looks like STUN; the server rejects it"
        );
    }
}
