//! A small TURN client over UDP, TCP or TLS: enough to allocate, open permissions and
//! channels, and relay a datagram. `parley doctor` uses it to check a deployment from the
//! server itself, and the tests use it for the refusal cases that browsers never show.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use stun::agent::TransactionId;
use stun::attributes::*;
use stun::error_code::ErrorCodeAttribute;
use stun::integrity::MessageIntegrity;
use stun::message::*;
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use turn::proto::chandata::ChannelData;
use turn::proto::channum::ChannelNumber;
use turn::proto::data::Data;
use turn::proto::lifetime::Lifetime;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::relayaddr::RelayedAddress;
use turn::proto::reqtrans::RequestedTransport;

/// An attribute written as raw bytes (for those whose types keep their fields private).
struct RawAttribute(AttrType, Vec<u8>);

impl Setter for RawAttribute {
    fn add_to(&self, message: &mut Message) -> Result<(), stun::Error> {
        message.add(self.0, &self.1);
        Ok(())
    }
}

/// How the client reaches the server.
#[derive(Clone)]
pub enum ProbeTransport {
    Udp,
    Tcp,
    /// TLS with this server name and client configuration (trust anchors).
    Tls {
        server_name: String,
        config: Arc<rustls::ClientConfig>,
    },
}

/// What went wrong, worded for `parley doctor`'s output.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    #[error("network error: {0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {0:?} (is a firewall dropping the traffic?)")]
    Timeout(Duration),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("the server answered {code} {reason}")]
    Refused { code: u16, reason: String },
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

impl ProbeError {
    /// The STUN error code, if the server refused.
    pub fn code(&self) -> Option<u16> {
        match self {
            ProbeError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

enum Io {
    Udp(UdpSocket),
    Stream(Box<dyn Stream>),
}

/// A TURN client holding at most one allocation.
pub struct TurnClient {
    io: Io,
    server: SocketAddr,
    timeout: Duration,
    username: String,
    realm: String,
    nonce: String,
    key: Vec<u8>,
    /// Data that arrived while waiting for a response.
    backlog: VecDeque<(SocketAddr, Vec<u8>)>,
    channels: Vec<(u16, SocketAddr)>,
}

impl TurnClient {
    /// Connects (for TCP/TLS) or binds a local socket (UDP) for talking to `server`.
    pub async fn connect(
        server: SocketAddr,
        transport: ProbeTransport,
        timeout: Duration,
    ) -> Result<Self, ProbeError> {
        let io = match transport {
            ProbeTransport::Udp => {
                let local: SocketAddr = if server.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    "[::]:0".parse().expect("valid literal")
                };
                Io::Udp(UdpSocket::bind(local).await?)
            }
            ProbeTransport::Tcp => {
                let stream = tokio::time::timeout(timeout, TcpStream::connect(server))
                    .await
                    .map_err(|_| ProbeError::Timeout(timeout))??;
                stream.set_nodelay(true)?;
                Io::Stream(Box::new(stream))
            }
            ProbeTransport::Tls {
                server_name,
                config,
            } => {
                let stream = tokio::time::timeout(timeout, TcpStream::connect(server))
                    .await
                    .map_err(|_| ProbeError::Timeout(timeout))??;
                stream.set_nodelay(true)?;
                let name = rustls::pki_types::ServerName::try_from(server_name)
                    .map_err(|e| ProbeError::Protocol(format!("invalid TLS server name: {e}")))?;
                let connector = tokio_rustls::TlsConnector::from(config);
                let tls = tokio::time::timeout(timeout, connector.connect(name, stream))
                    .await
                    .map_err(|_| ProbeError::Timeout(timeout))?
                    .map_err(ProbeError::Tls)?;
                Io::Stream(Box::new(tls))
            }
        };
        Ok(TurnClient {
            io,
            server,
            timeout,
            username: String::new(),
            realm: String::new(),
            nonce: String::new(),
            key: Vec::new(),
            backlog: VecDeque::new(),
            channels: Vec::new(),
        })
    }

    /// Sends raw bytes (a STUN message or ChannelData) to the server.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ProbeError> {
        match &mut self.io {
            Io::Udp(socket) => {
                socket.send_to(bytes, self.server).await?;
            }
            Io::Stream(stream) => {
                let mut framed = bytes.to_vec();
                framed.resize(bytes.len().div_ceil(4) * 4, 0);
                stream.write_all(&framed).await?;
            }
        }
        Ok(())
    }

    /// Receives one datagram or frame from the server.
    pub async fn recv_raw(&mut self, timeout: Duration) -> Result<Vec<u8>, ProbeError> {
        let receive = async {
            match &mut self.io {
                Io::Udp(socket) => {
                    let mut buf = vec![0u8; 2048];
                    loop {
                        let (n, from) = socket.recv_from(&mut buf).await?;
                        if from == self.server {
                            buf.truncate(n);
                            return Ok::<_, ProbeError>(buf);
                        }
                    }
                }
                Io::Stream(stream) => {
                    let mut header = [0u8; 4];
                    stream.read_exact(&mut header).await?;
                    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
                    let (total, payload) = match header[0] >> 6 {
                        0 => (20 + length, 20 + length),
                        1 => (4 + length.div_ceil(4) * 4, 4 + length),
                        _ => {
                            return Err(ProbeError::Protocol(
                                "the server sent bytes that are not TURN".into(),
                            ));
                        }
                    };
                    let mut frame = vec![0u8; total];
                    frame[..4].copy_from_slice(&header);
                    stream.read_exact(&mut frame[4..]).await?;
                    frame.truncate(payload);
                    Ok(frame)
                }
            }
        };
        tokio::time::timeout(timeout, receive)
            .await
            .map_err(|_| ProbeError::Timeout(timeout))?
    }

    /// Sends `request` and waits for the response with its transaction id, retransmitting
    /// over UDP. Data arriving meanwhile is kept for `recv_from_peer`.
    pub async fn transact(&mut self, request: &Message) -> Result<Message, ProbeError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut interval = Duration::from_millis(250);
        loop {
            self.send_raw(&request.raw).await?;
            let resend_at = tokio::time::Instant::now() + interval;
            loop {
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Err(ProbeError::Timeout(self.timeout));
                }
                let wait = match self.io {
                    Io::Udp(_) => resend_at.min(deadline) - now,
                    Io::Stream(_) => deadline - now,
                };
                let raw = match self.recv_raw(wait).await {
                    Ok(raw) => raw,
                    Err(ProbeError::Timeout(_)) => break, // retransmit
                    Err(err) => return Err(err),
                };
                if let Some(message) = self.dispatch(raw)
                    && message.transaction_id == request.transaction_id
                {
                    return Ok(message);
                }
            }
            interval = (interval * 2).min(Duration::from_secs(2));
        }
    }

    /// Keeps relayed data, returns STUN responses.
    fn dispatch(&mut self, raw: Vec<u8>) -> Option<Message> {
        if ChannelData::is_channel_data(&raw) {
            let mut data = ChannelData {
                raw,
                ..Default::default()
            };
            if data.decode().is_ok()
                && let Some((_, peer)) = self.channels.iter().find(|(n, _)| *n == data.number.0)
            {
                self.backlog.push_back((*peer, data.data));
            }
            return None;
        }
        let mut message = Message {
            raw,
            ..Default::default()
        };
        message.decode().ok()?;
        if message.typ == MessageType::new(METHOD_DATA, CLASS_INDICATION) {
            let mut peer = PeerAddress::default();
            let mut data = Data::default();
            if peer.get_from(&message).is_ok() && data.get_from(&message).is_ok() {
                self.backlog
                    .push_back((SocketAddr::new(peer.ip, peer.port), data.0));
            }
            return None;
        }
        Some(message)
    }

    fn error_of(response: &Message) -> ProbeError {
        let mut code = ErrorCodeAttribute::default();
        if code.get_from(response).is_ok() {
            ProbeError::Refused {
                code: code.code.0,
                reason: String::from_utf8_lossy(&code.reason).into_owned(),
            }
        } else {
            ProbeError::Protocol(format!("{} without ERROR-CODE", response.typ))
        }
    }

    fn build(setters: Vec<Box<dyn Setter>>) -> Result<Message, ProbeError> {
        let mut message = Message::new();
        message
            .build(&setters)
            .map_err(|e| ProbeError::Protocol(e.to_string()))?;
        Ok(message)
    }

    /// A STUN Binding request: the address the server sees us at.
    pub async fn binding(&mut self) -> Result<SocketAddr, ProbeError> {
        let request = Self::build(vec![
            Box::new(TransactionId::new()),
            Box::new(BINDING_REQUEST),
        ])?;
        let response = self.transact(&request).await?;
        if response.typ.class != CLASS_SUCCESS_RESPONSE {
            return Err(Self::error_of(&response));
        }
        let mut mapped = XorMappedAddress::default();
        mapped
            .get_from(&response)
            .map_err(|e| ProbeError::Protocol(e.to_string()))?;
        Ok(SocketAddr::new(mapped.ip, mapped.port))
    }

    /// An Allocate request without credentials, as every client's first request is: returns
    /// the nonce the server challenged with.
    pub async fn challenge(&mut self) -> Result<String, ProbeError> {
        let request = Self::build(vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
            Box::new(RequestedTransport {
                protocol: turn::proto::PROTO_UDP,
            }),
        ])?;
        let response = self.transact(&request).await?;
        let error = Self::error_of(&response);
        if error.code() != Some(401) {
            return Err(error);
        }
        let nonce = TextAttribute::get_from_as(&response, ATTR_NONCE)
            .map_err(|e| ProbeError::Protocol(e.to_string()))?;
        let realm = TextAttribute::get_from_as(&response, ATTR_REALM)
            .map_err(|e| ProbeError::Protocol(e.to_string()))?;
        self.nonce = nonce.text.clone();
        self.realm = realm.text;
        Ok(nonce.text)
    }

    /// The nonce the client currently uses.
    pub fn nonce(&self) -> &str {
        &self.nonce
    }

    /// Replaces the nonce (tests use it to present forged ones).
    pub fn set_nonce(&mut self, nonce: String) {
        self.nonce = nonce;
    }

    fn authenticated(
        &self,
        method: Method,
        mut attributes: Vec<Box<dyn Setter>>,
    ) -> Result<Message, ProbeError> {
        let mut setters: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(method, CLASS_REQUEST)),
        ];
        setters.append(&mut attributes);
        setters.push(Box::new(TextAttribute::new(
            ATTR_USERNAME,
            self.username.clone(),
        )));
        setters.push(Box::new(TextAttribute::new(ATTR_REALM, self.realm.clone())));
        setters.push(Box::new(TextAttribute::new(ATTR_NONCE, self.nonce.clone())));
        setters.push(Box::new(MessageIntegrity(self.key.clone())));
        Self::build(setters)
    }

    /// Sends an authenticated request, following one 438 Stale Nonce.
    async fn authenticated_transact(
        &mut self,
        method: Method,
        attributes: impl Fn() -> Vec<Box<dyn Setter>>,
    ) -> Result<Message, ProbeError> {
        for _ in 0..2 {
            let request = self.authenticated(method, attributes())?;
            let response = self.transact(&request).await?;
            if response.typ.class == CLASS_SUCCESS_RESPONSE {
                return Ok(response);
            }
            let error = Self::error_of(&response);
            if error.code() == Some(438)
                && let Ok(nonce) = TextAttribute::get_from_as(&response, ATTR_NONCE)
            {
                self.nonce = nonce.text;
                continue;
            }
            return Err(error);
        }
        Err(ProbeError::Refused {
            code: 438,
            reason: "Stale Nonce twice".into(),
        })
    }

    /// Allocates a UDP relay with long-term credentials; returns the relayed address.
    pub async fn allocate(
        &mut self,
        username: &str,
        password: &str,
    ) -> Result<SocketAddr, ProbeError> {
        self.allocate_with(username, password, false).await
    }

    /// Allocates with EVEN-PORT (reserving the next port too), as RTP/RTCP clients do.
    pub async fn allocate_even_port(
        &mut self,
        username: &str,
        password: &str,
    ) -> Result<SocketAddr, ProbeError> {
        self.allocate_with(username, password, true).await
    }

    async fn allocate_with(
        &mut self,
        username: &str,
        password: &str,
        even_port: bool,
    ) -> Result<SocketAddr, ProbeError> {
        if self.nonce.is_empty() {
            self.challenge().await?;
        }
        self.username = username.to_owned();
        self.key = crate::credentials::long_term_key(username, &self.realm, password);
        let response = self
            .authenticated_transact(METHOD_ALLOCATE, || {
                let mut attributes = vec![Box::new(RequestedTransport {
                    protocol: turn::proto::PROTO_UDP,
                }) as Box<dyn Setter>];
                if even_port {
                    attributes.push(Box::new(RawAttribute(ATTR_EVEN_PORT, vec![0x80]))); // R bit: reserve the next port
                }
                attributes
            })
            .await?;
        let mut relayed = RelayedAddress::default();
        relayed
            .get_from(&response)
            .map_err(|e| ProbeError::Protocol(e.to_string()))?;
        Ok(SocketAddr::new(relayed.ip, relayed.port))
    }

    /// Installs permissions for all `peers` in one request.
    pub async fn create_permission(&mut self, peers: &[SocketAddr]) -> Result<(), ProbeError> {
        let peers = peers.to_vec();
        self.authenticated_transact(METHOD_CREATE_PERMISSION, || {
            peers
                .iter()
                .map(|p| {
                    Box::new(PeerAddress {
                        ip: p.ip(),
                        port: p.port(),
                    }) as Box<dyn Setter>
                })
                .collect()
        })
        .await
        .map(|_| ())
    }

    /// Binds `channel` (0x4000..=0x7FFF) to `peer`.
    pub async fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Result<(), ProbeError> {
        self.authenticated_transact(METHOD_CHANNEL_BIND, || {
            vec![
                Box::new(ChannelNumber(channel)) as Box<dyn Setter>,
                Box::new(PeerAddress {
                    ip: peer.ip(),
                    port: peer.port(),
                }),
            ]
        })
        .await?;
        self.channels.push((channel, peer));
        Ok(())
    }

    /// Refreshes the allocation; lifetime 0 deletes it.
    pub async fn refresh(&mut self, lifetime: Duration) -> Result<(), ProbeError> {
        self.authenticated_transact(METHOD_REFRESH, || {
            vec![Box::new(Lifetime(lifetime)) as Box<dyn Setter>]
        })
        .await
        .map(|_| ())
    }

    /// Relays `data` to `peer` in a Send indication.
    pub async fn send_indication(
        &mut self,
        peer: SocketAddr,
        data: &[u8],
    ) -> Result<(), ProbeError> {
        let message = Self::build(vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_SEND, CLASS_INDICATION)),
            Box::new(PeerAddress {
                ip: peer.ip(),
                port: peer.port(),
            }),
            Box::new(Data(data.to_vec())),
        ])?;
        self.send_raw(&message.raw).await
    }

    /// Relays `data` on a bound channel.
    pub async fn send_channel_data(&mut self, channel: u16, data: &[u8]) -> Result<(), ProbeError> {
        let mut frame = ChannelData {
            data: data.to_vec(),
            number: ChannelNumber(channel),
            raw: Vec::new(),
        };
        frame.encode();
        self.send_raw(&frame.raw).await
    }

    /// The next datagram a peer sent through the relay.
    pub async fn recv_from_peer(
        &mut self,
        timeout: Duration,
    ) -> Result<(SocketAddr, Vec<u8>), ProbeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(item) = self.backlog.pop_front() {
                return Ok(item);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(ProbeError::Timeout(timeout));
            }
            let raw = self.recv_raw(deadline - now).await?;
            let _ = self.dispatch(raw);
        }
    }
}
