//! Hostile input to the real daemon's relay (issue 10): malformed and duplicated
//! XOR-PEER-ADDRESS attributes, unknown comprehension-required attributes, and slow or silent
//! TCP/TLS clients. The hostile messages are built here byte by byte; parley-turn's probe
//! client only carries them (UDP, TCP or TLS) and performs the ordinary Allocate. The peer
//! policy stays at its default, so loopback peers are refused: a UDP socket on 127.x.y.z
//! stands in for an internal service and must receive nothing.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parley_turn::credentials::long_term_key;
use parley_turn::probe::{ProbeTransport, TurnClient};
use stun::agent::TransactionId;
use stun::attributes::*;
use stun::error_code::ErrorCodeAttribute;
use stun::integrity::MessageIntegrity;
use stun::message::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::daemon::{Daemon, free_port, relay_ports};

const SECRET: &str = "it-hostile-secret";
const REALM: &str = "parley";
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
/// How long a peer socket listens for a datagram that must not come.
const SILENCE: Duration = Duration::from_millis(700);
/// `turn.handshake_timeout_secs` and `turn.idle_timeout_secs` of these daemons.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// Upper bound for a close that is due after a timeout: generous for a loaded 2-core machine,
/// far below the 30 s (and unbounded) waits of issue 10.
const CLOSE_MARGIN: Duration = Duration::from_secs(8);

struct Relay {
    daemon: Daemon,
    tls: SocketAddr,
    tls_config: Arc<rustls::ClientConfig>,
    _certs: tempfile::TempDir,
}

#[derive(Clone, Copy, Debug)]
enum Via {
    Udp,
    Tcp,
    Tls,
}

fn start_relay() -> Relay {
    start_relay_with("")
}

/// `extra` is appended to the `[turn]` section.
fn start_relay_with(extra: &str) -> Relay {
    let certs = tempfile::tempdir().expect("temp dir");
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = certs.path().join("cert.pem");
    let key = certs.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let tls = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (relay_low, relay_high) = relay_ports(20);
    let daemon = Daemon::start(&format!(
        "[turn]\nsecret = \"{SECRET}\"\nrelay_ports = \"{relay_low}-{relay_high}\"\n\
         tls_listen = \"{tls}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\
         handshake_timeout_secs = {}\nidle_timeout_secs = {}\n{extra}\n",
        cert.display(),
        key.display(),
        HANDSHAKE_TIMEOUT.as_secs(),
        IDLE_TIMEOUT.as_secs(),
    ));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Relay {
        daemon,
        tls,
        tls_config: Arc::new(tls_config),
        _certs: certs,
    }
}

impl Relay {
    async fn client(&self, via: Via) -> TurnClient {
        let (address, transport) = match via {
            Via::Udp => (self.daemon.turn, ProbeTransport::Udp),
            Via::Tcp => (self.daemon.turn, ProbeTransport::Tcp),
            Via::Tls => (
                self.tls,
                ProbeTransport::Tls {
                    server_name: "localhost".into(),
                    config: Arc::clone(&self.tls_config),
                },
            ),
        };
        TurnClient::connect(address, transport, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("reach the relay over {via:?}: {e}"))
    }

    /// A client holding an allocation, and the credentials for signing our own requests.
    async fn allocated(&self, via: Via) -> (TurnClient, Credentials) {
        let mut client = self.client(via).await;
        let expiry = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        let (username, password) = parley_turn::mint(SECRET, 7, 3600, expiry - 3600);
        client
            .allocate(&username, &password)
            .await
            .unwrap_or_else(|e| panic!("allocate over {via:?}: {e}"));
        let credentials = Credentials {
            key: long_term_key(&username, REALM, &password),
            username,
            nonce: client.nonce().to_owned(),
        };
        (client, credentials)
    }
}

struct Credentials {
    username: String,
    key: Vec<u8>,
    nonce: String,
}

/// A STUN message with the given raw attributes, signed with `credentials` if given.
fn message(
    method: Method,
    class: MessageClass,
    attributes: &[(u16, Vec<u8>)],
    credentials: Option<&Credentials>,
) -> Message {
    let mut msg = Message::new();
    msg.set_type(MessageType::new(method, class));
    msg.transaction_id = TransactionId::new();
    msg.write_header();
    for (typ, value) in attributes {
        msg.add(AttrType(*typ), value);
    }
    if let Some(credentials) = credentials {
        msg.add(ATTR_USERNAME, credentials.username.as_bytes());
        msg.add(ATTR_REALM, REALM.as_bytes());
        msg.add(ATTR_NONCE, credentials.nonce.as_bytes());
        MessageIntegrity(credentials.key.clone())
            .add_to(&mut msg)
            .unwrap();
    }
    msg
}

const XOR_PEER_ADDRESS: u16 = 0x0012;
const DATA: u16 = 0x0013;
const CHANNEL_NUMBER: u16 = 0x000C;
const REQUESTED_TRANSPORT: u16 = 0x0019;

/// A well-formed IPv4 XOR-PEER-ADDRESS value (8 bytes).
fn xor_peer(peer: SocketAddrV4) -> Vec<u8> {
    let port = peer.port() ^ 0x2112;
    let mut value = vec![0x00, 0x01];
    value.extend_from_slice(&port.to_be_bytes());
    for (octet, mask) in peer.ip().octets().iter().zip(MAGIC_COOKIE) {
        value.push(octet ^ mask);
    }
    value
}

/// The first `address_bytes` of the XOR-PEER-ADDRESS of `peer`: the server used to fill
/// the rest with zeros.
fn short_xor_peer(peer: SocketAddrV4, address_bytes: usize) -> Vec<u8> {
    let mut value = xor_peer(peer);
    value.truncate(4 + address_bytes);
    value
}

fn channel_number(number: u16) -> Vec<u8> {
    let mut value = number.to_be_bytes().to_vec();
    value.extend_from_slice(&[0, 0]);
    value
}

fn error_code(response: &Message) -> Option<u16> {
    let mut code = ErrorCodeAttribute::default();
    code.get_from(response).ok()?;
    Some(code.code.0)
}

/// A socket on a loopback address, standing in for an internal service.
async fn internal_service(ip: Ipv4Addr) -> (UdpSocket, SocketAddrV4) {
    let socket = UdpSocket::bind(SocketAddrV4::new(ip, 0)).await.unwrap();
    let SocketAddr::V4(address) = socket.local_addr().unwrap() else {
        unreachable!("bound to IPv4")
    };
    (socket, address)
}

async fn assert_receives_nothing(service: &UdpSocket, what: &str) {
    let mut buf = [0u8; 2048];
    if let Ok(Ok((n, from))) = tokio::time::timeout(SILENCE, service.recv_from(&mut buf)).await {
        panic!(
            "{what}: the internal service at {:?} received {n} bytes from {from}",
            service.local_addr()
        );
    }
}

/// Sends `request` and asserts the relay answers it with error `code`.
async fn assert_refused(client: &mut TurnClient, request: &Message, code: u16, what: &str) {
    let response = client
        .transact(request)
        .await
        .unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
    assert_eq!(
        (response.typ.class, error_code(&response)),
        (CLASS_ERROR_RESPONSE, Some(code)),
        "{what}: answered {}",
        response.typ
    );
}

/// Tries every way to get data to `service` without a permission for it.
async fn try_to_reach(
    client: &mut TurnClient,
    service: &UdpSocket,
    peer: SocketAddrV4,
    what: &str,
) {
    let send = message(
        METHOD_SEND,
        CLASS_INDICATION,
        &[
            (XOR_PEER_ADDRESS, xor_peer(peer)),
            (DATA, b"hostile send".to_vec()),
        ],
        None,
    );
    client.send_raw(&send.raw).await.unwrap();
    // ChannelData on the channel a refused ChannelBind asked for.
    client
        .send_raw(&[0x40, 0x00, 0x00, 0x04, b'h', b'o', b's', b't'])
        .await
        .unwrap();
    assert_receives_nothing(service, what).await;
}

/// Issue 10: every malformed, short or duplicated XOR-PEER-ADDRESS is refused with 400
/// before the server sees it, and no Send indication or ChannelData reaches the address.
async fn malformed_peer_addresses_are_refused(via: Via) {
    let relay = start_relay();
    let (mut client, credentials) = relay.allocated(via).await;
    let creds = Some(&credentials);
    let (service, peer) = internal_service(Ipv4Addr::LOCALHOST).await;
    let truncated = vec![0x00, 0x01, 0x04, 0xd2, 0x01, 0x02];

    let request = message(
        METHOD_CREATE_PERMISSION,
        CLASS_REQUEST,
        &[
            (XOR_PEER_ADDRESS, xor_peer(peer)),
            (XOR_PEER_ADDRESS, truncated.clone()),
        ],
        creds,
    );
    let what = format!("{via:?}: CreatePermission with {peer} then a truncated address");
    assert_refused(&mut client, &request, 400, &what).await;
    try_to_reach(&mut client, &service, peer, &what).await;

    // A single short address: 2 bytes reach 127.1.0.0, 3 bytes 127.0.1.0.
    for (ip, bytes) in [
        (Ipv4Addr::new(127, 1, 0, 0), 2),
        (Ipv4Addr::new(127, 0, 1, 0), 3),
    ] {
        let (service, peer) = internal_service(ip).await;
        let request = message(
            METHOD_CREATE_PERMISSION,
            CLASS_REQUEST,
            &[(XOR_PEER_ADDRESS, short_xor_peer(peer, bytes))],
            creds,
        );
        let what = format!("{via:?}: CreatePermission with {bytes} address bytes of {peer}");
        assert_refused(&mut client, &request, 400, &what).await;
        try_to_reach(&mut client, &service, peer, &what).await;

        let request = message(
            METHOD_CHANNEL_BIND,
            CLASS_REQUEST,
            &[
                (CHANNEL_NUMBER, channel_number(0x4000)),
                (XOR_PEER_ADDRESS, short_xor_peer(peer, bytes)),
            ],
            creds,
        );
        let what = format!("{via:?}: ChannelBind with {bytes} address bytes of {peer}");
        assert_refused(&mut client, &request, 400, &what).await;
        try_to_reach(&mut client, &service, peer, &what).await;
    }

    let request = message(
        METHOD_CHANNEL_BIND,
        CLASS_REQUEST,
        &[
            (CHANNEL_NUMBER, channel_number(0x4000)),
            (XOR_PEER_ADDRESS, xor_peer(peer)),
            (XOR_PEER_ADDRESS, truncated.clone()),
        ],
        creds,
    );
    let what = format!("{via:?}: ChannelBind with {peer} then a truncated address");
    assert_refused(&mut client, &request, 400, &what).await;
    try_to_reach(&mut client, &service, peer, &what).await;

    let public = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 9); // TEST-NET-1, never sent to
    let request = message(
        METHOD_CHANNEL_BIND,
        CLASS_REQUEST,
        &[
            (CHANNEL_NUMBER, channel_number(0x4000)),
            (XOR_PEER_ADDRESS, xor_peer(public)),
            (XOR_PEER_ADDRESS, xor_peer(peer)),
        ],
        creds,
    );
    let what = format!("{via:?}: ChannelBind with two addresses");
    assert_refused(&mut client, &request, 400, &what).await;
    try_to_reach(&mut client, &service, peer, &what).await;

    // A family byte that is not 0 (the address is 127.0.0.1 again).
    let mut odd_family = xor_peer(peer);
    odd_family[0] = 0x01;
    let request = message(
        METHOD_CREATE_PERMISSION,
        CLASS_REQUEST,
        &[(XOR_PEER_ADDRESS, odd_family)],
        creds,
    );
    let what = format!("{via:?}: CreatePermission with a nonzero first byte");
    assert_refused(&mut client, &request, 400, &what).await;
    try_to_reach(&mut client, &service, peer, &what).await;

    // A well-formed loopback address is refused by the policy, and the relay still serves.
    let request = message(
        METHOD_CREATE_PERMISSION,
        CLASS_REQUEST,
        &[(XOR_PEER_ADDRESS, xor_peer(peer))],
        creds,
    );
    let what = format!("{via:?}: CreatePermission with {peer}");
    assert_refused(&mut client, &request, 403, &what).await;
    try_to_reach(&mut client, &service, peer, &what).await;
    client
        .binding()
        .await
        .expect("the relay keeps serving this client");
}

#[tokio::test]
async fn malformed_peer_addresses_are_refused_over_udp_issue_10() {
    malformed_peer_addresses_are_refused(Via::Udp).await;
}

#[tokio::test]
async fn malformed_peer_addresses_are_refused_over_tcp_issue_10() {
    malformed_peer_addresses_are_refused(Via::Tcp).await;
}

#[tokio::test]
async fn malformed_peer_addresses_are_refused_over_tls_issue_10() {
    malformed_peer_addresses_are_refused(Via::Tls).await;
}

/// Issue 10: RFC 8489 7.3.1: an unknown comprehension-required attribute gets 420 listing it.
#[tokio::test]
async fn binding_with_unknown_comprehension_required_attribute_gets_420_issue_10() {
    let relay = start_relay();
    for via in [Via::Udp, Via::Tcp, Via::Tls] {
        let mut client = relay.client(via).await;
        let request = message(
            METHOD_BINDING,
            CLASS_REQUEST,
            &[(0x7777, vec![1, 2, 3, 4]), (0x8777, vec![5, 6, 7, 8])],
            None,
        );
        let what = format!("{via:?}: Binding with attribute 0x7777");
        assert_refused(&mut client, &request, 420, &what).await;
        let response = client.transact(&request).await.unwrap();
        let unknown = response
            .get(ATTR_UNKNOWN_ATTRIBUTES)
            .unwrap_or_else(|_| panic!("{what}: no UNKNOWN-ATTRIBUTES"));
        assert_eq!(
            unknown,
            vec![0x77, 0x77],
            "{what}: lists only the required one"
        );
        client.binding().await.expect("a plain Binding still works");
    }
}

/// Reads until the server closes the connection; returns how long that took from `since`.
async fn closed_after<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    since: Instant,
    what: &str,
) -> Duration {
    let mut buf = [0u8; 512];
    let deadline = since + HANDSHAKE_TIMEOUT.max(IDLE_TIMEOUT) + CLOSE_MARGIN;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return since.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("{what}: still open after {:?}", since.elapsed()),
        }
    }
}

fn binding_request() -> Vec<u8> {
    message(METHOD_BINDING, CLASS_REQUEST, &[], None).raw
}

/// Issue 10: a connection that never sends a whole STUN message, or starts a frame and never
/// finishes it, is closed after `turn.handshake_timeout_secs` (slowloris).
#[tokio::test]
async fn silent_and_half_sent_connections_are_closed_after_the_handshake_timeout_issue_10() {
    let relay = start_relay();
    // Not before the timeout: half of it, since the server's clock starts a moment before or
    // after ours.
    let at_least = HANDSHAKE_TIMEOUT / 2;
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&relay.tls_config));
    let name = || rustls::pki_types::ServerName::try_from("localhost").unwrap();

    let silent_tcp = async {
        let mut stream = TcpStream::connect(relay.daemon.turn).await.unwrap();
        let start = Instant::now();
        let took = closed_after(&mut stream, start, "silent TCP").await;
        assert!(took >= at_least, "silent TCP closed after only {took:?}");
    };
    let silent_before_tls_handshake = async {
        let mut stream = TcpStream::connect(relay.tls).await.unwrap();
        let start = Instant::now();
        let took = closed_after(&mut stream, start, "no TLS handshake").await;
        assert!(
            took >= at_least,
            "no-handshake TLS closed after only {took:?}"
        );
    };
    let silent_after_tls_handshake = async {
        let start = Instant::now();
        let tcp = TcpStream::connect(relay.tls).await.unwrap();
        let mut stream = connector.connect(name(), tcp).await.unwrap();
        let took = closed_after(&mut stream, start, "silent TLS").await;
        assert!(took >= at_least, "silent TLS closed after only {took:?}");
    };
    let half_frame_tcp = async {
        let mut stream = TcpStream::connect(relay.daemon.turn).await.unwrap();
        stream.write_all(&binding_request()).await.unwrap();
        let mut response = [0u8; 20];
        stream.read_exact(&mut response).await.unwrap();
        // The header of a Binding with 8 attribute bytes, and 4 of them.
        let mut partial = binding_request();
        partial[3] = 8;
        partial.extend_from_slice(&[0x80, 0x22, 0x00, 0x04]);
        stream.write_all(&partial).await.unwrap();
        let start = Instant::now();
        let took = closed_after(&mut stream, start, "half-sent TCP frame").await;
        assert!(
            took >= at_least,
            "half-sent frame closed after only {took:?}"
        );
    };
    let half_frame_tls = async {
        let tcp = TcpStream::connect(relay.tls).await.unwrap();
        let mut stream = connector.connect(name(), tcp).await.unwrap();
        stream.write_all(&[0x00, 0x01, 0x00]).await.unwrap();
        stream.flush().await.unwrap();
        let start = Instant::now();
        let took = closed_after(&mut stream, start, "half-sent TLS frame").await;
        assert!(
            took >= at_least,
            "half-sent TLS frame closed after only {took:?}"
        );
    };
    tokio::join!(
        silent_tcp,
        silent_before_tls_handshake,
        silent_after_tls_handshake,
        half_frame_tcp,
        half_frame_tls
    );
    // Everyone else is still served.
    let mut client = relay.client(Via::Tcp).await;
    client.binding().await.expect("the relay keeps serving");
}

/// Issue 10: a connection that sent valid messages and then falls silent is closed after
/// `turn.idle_timeout_secs`, and not before.
#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout_issue_10() {
    let relay = start_relay();
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&relay.tls_config));
    let idle_tcp = async {
        let mut stream = TcpStream::connect(relay.daemon.turn).await.unwrap();
        stream.write_all(&binding_request()).await.unwrap();
        let mut header = [0u8; 20];
        stream.read_exact(&mut header).await.unwrap();
        let start = Instant::now();
        let took = closed_after(&mut stream, start, "idle TCP").await;
        assert!(
            took >= IDLE_TIMEOUT / 2,
            "idle TCP closed after only {took:?}"
        );
    };
    let idle_tls = async {
        let tcp = TcpStream::connect(relay.tls).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut stream = connector.connect(name, tcp).await.unwrap();
        stream.write_all(&binding_request()).await.unwrap();
        let mut header = [0u8; 20];
        stream.read_exact(&mut header).await.unwrap();
        let start = Instant::now();
        let took = closed_after(&mut stream, start, "idle TLS").await;
        assert!(
            took >= IDLE_TIMEOUT / 2,
            "idle TLS closed after only {took:?}"
        );
    };
    tokio::join!(idle_tcp, idle_tls);
}

/// The control for the tests above: with loopback allowed, the same client, messages and
/// service do get through, so "receives nothing" above is the relay's doing.
#[tokio::test]
async fn with_loopback_allowed_the_same_messages_reach_the_service() {
    let relay = start_relay_with("allowed_peer_ranges = [\"127.0.0.0/8\"]");
    let (mut client, credentials) = relay.allocated(Via::Udp).await;
    let (service, peer) = internal_service(Ipv4Addr::LOCALHOST).await;
    let request = message(
        METHOD_CREATE_PERMISSION,
        CLASS_REQUEST,
        &[(XOR_PEER_ADDRESS, xor_peer(peer))],
        Some(&credentials),
    );
    let response = client.transact(&request).await.unwrap();
    assert_eq!(
        response.typ.class, CLASS_SUCCESS_RESPONSE,
        "{}",
        response.typ
    );
    let send = message(
        METHOD_SEND,
        CLASS_INDICATION,
        &[
            (XOR_PEER_ADDRESS, xor_peer(peer)),
            (DATA, b"allowed send".to_vec()),
        ],
        None,
    );
    client.send_raw(&send.raw).await.unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), service.recv_from(&mut buf))
        .await
        .expect("the allowed service receives the Send indication's data")
        .unwrap();
    assert_eq!(&buf[..n], b"allowed send");
}

/// STUN over UDP retransmits a request whose response did not come. Allocate is not
/// idempotent: a client whose success response was lost must get that success again, not a
/// 437 (Allocation Mismatch) that makes it allocate again from another port while the first
/// allocation holds a relay port and a slot of its user's quota until it expires. A new
/// Allocate (another transaction) from the same address is still refused with 437.
#[tokio::test]
async fn a_retransmitted_allocate_gets_the_same_success_and_a_new_one_437() {
    let relay = start_relay();
    let mut client = relay.client(Via::Udp).await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (username, password) = parley_turn::mint(SECRET, 7, 3600, now);
    let nonce = client.challenge().await.expect("challenged");
    let credentials = Credentials {
        key: long_term_key(&username, REALM, &password),
        username,
        nonce,
    };
    let allocate = || {
        message(
            METHOD_ALLOCATE,
            CLASS_REQUEST,
            &[(REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
            Some(&credentials),
        )
    };
    let request = allocate();
    let first = client.transact(&request).await.expect("allocated");
    assert_eq!(first.typ.class, CLASS_SUCCESS_RESPONSE, "{}", first.typ);

    // The same datagram again, as a retransmission after a lost response.
    client.send_raw(&request.raw).await.unwrap();
    let again = client
        .recv_raw(Duration::from_secs(5))
        .await
        .expect("the retransmission is answered");
    assert_eq!(again, first.raw, "the same success response, byte for byte");

    assert_refused(
        &mut client,
        &allocate(),
        437,
        "a second Allocate from the same address and port",
    )
    .await;
}
