//! The relay on real loopback sockets, driven by the crate's own TURN client: the refusal
//! cases browsers never show, and the TCP/TLS framing.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parley_turn::probe::{ProbeError, ProbeTransport, TurnClient};
use parley_turn::{PeerPolicy, Relay, RelayOptions, RelaySockets, Secrets, mint};
use tokio::net::UdpSocket;

const SECRET: &str = "test-secret";
const TIMEOUT: Duration = Duration::from_secs(3);

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn loopback() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

fn options(allow_loopback: bool) -> RelayOptions {
    let mut options = RelayOptions::new(SECRET.into(), loopback());
    if allow_loopback {
        options.peer_policy = PeerPolicy::from_ranges(&["127.0.0.0/8"]).unwrap();
    }
    options.relay_ports = (40000, 40999);
    options
}

struct TestRelay {
    relay: Relay,
    udp: SocketAddr,
    tcp: SocketAddr,
    tls: SocketAddr,
    client_tls: Arc<rustls::ClientConfig>,
}

fn tls_configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["turn.test".to_owned()]).unwrap();
    let cert_der = cert.cert.der().clone();
    let key_der =
        rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key_der)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der).unwrap();
    let client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

async fn start(options: RelayOptions) -> TestRelay {
    let mut sockets = RelaySockets::bind("127.0.0.1:0".parse().unwrap(), true, 2, true).unwrap();
    let (server_tls, client_tls) = tls_configs();
    sockets
        .bind_tls("127.0.0.1:0".parse().unwrap(), server_tls)
        .unwrap();
    let (udp, tcp, tls) = (
        sockets.udp_addr().unwrap(),
        sockets.tcp_addr().unwrap(),
        sockets.tls_addr().unwrap(),
    );
    let relay = Relay::start(options, sockets).await.unwrap();
    TestRelay {
        relay,
        udp,
        tcp,
        tls,
        client_tls,
    }
}

impl TestRelay {
    async fn client(&self, transport: &str) -> TurnClient {
        let (address, transport) = match transport {
            "udp" => (self.udp, ProbeTransport::Udp),
            "tcp" => (self.tcp, ProbeTransport::Tcp),
            "tls" => (
                self.tls,
                ProbeTransport::Tls {
                    server_name: "turn.test".into(),
                    config: self.client_tls.clone(),
                },
            ),
            other => panic!("unknown transport {other}"),
        };
        TurnClient::connect(address, transport, TIMEOUT)
            .await
            .unwrap()
    }

    fn metric(&self, name: &str) -> u64 {
        let mut text = String::new();
        self.relay.render_metrics(&mut text);
        text.lines()
            .find_map(|line| {
                line.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .unwrap_or_else(|| panic!("metric {name} missing"))
            .parse()
            .unwrap()
    }
}

/// A UDP peer that echoes every datagram back to its sender.
async fn echo_peer() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    (address, task)
}

async fn relay_roundtrip(relay: &TestRelay, transport: &str) {
    let (peer, _echo) = echo_peer().await;
    let mut client = relay.client(transport).await;
    let (username, password) = mint(SECRET, 7, 600, now_unix());
    let relayed = client.allocate(&username, &password).await.unwrap();
    assert_eq!(relayed.ip(), loopback());
    assert!(
        (40000..=40999).contains(&relayed.port()),
        "relay port {relayed} outside turn.relay_ports"
    );

    client.create_permission(&[peer]).await.unwrap();
    client
        .send_indication(peer, b"via send indication")
        .await
        .unwrap();
    let (from, data) = client.recv_from_peer(TIMEOUT).await.unwrap();
    assert_eq!(
        (from, data.as_slice()),
        (peer, b"via send indication".as_slice())
    );

    client.channel_bind(0x4001, peer).await.unwrap();
    for size in [1usize, 3, 4, 5, 1000] {
        let payload = vec![size as u8; size];
        client.send_channel_data(0x4001, &payload).await.unwrap();
        let (from, data) = client.recv_from_peer(TIMEOUT).await.unwrap();
        assert_eq!(
            (from, data),
            (peer, payload),
            "{transport} channel data of {size} bytes"
        );
    }
    client.refresh(Duration::ZERO).await.unwrap();
}

#[tokio::test]
async fn relays_over_udp() {
    let relay = start(options(true)).await;
    relay_roundtrip(&relay, "udp").await;
    assert!(relay.metric("parley_turn_relayed_packets_to_peers_total") >= 6);
    assert!(relay.metric("parley_turn_relayed_bytes_from_peers_total") >= 1000);
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn relays_over_tcp() {
    let relay = start(options(true)).await;
    relay_roundtrip(&relay, "tcp").await;
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn relays_over_tls() {
    let relay = start(options(true)).await;
    relay_roundtrip(&relay, "tls").await;
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn stun_binding_reports_the_mapped_address() {
    let relay = start(options(false)).await;
    for transport in ["udp", "tcp"] {
        let mut client = relay.client(transport).await;
        let mapped = client.binding().await.unwrap();
        assert_eq!(mapped.ip(), loopback(), "{transport}");
    }
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn expired_credential_is_refused_with_401() {
    let relay = start(options(true)).await;
    let mut client = relay.client("udp").await;
    let (username, password) = mint(SECRET, 7, 0, now_unix() - 10);
    let error = client.allocate(&username, &password).await.unwrap_err();
    assert_eq!(error.code(), Some(401), "{error}");
    assert_eq!(relay.metric("parley_turn_auth_failures_total"), 1);
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn forged_credential_is_refused_with_401() {
    let relay = start(options(true)).await;
    for transport in ["udp", "tcp"] {
        let mut client = relay.client(transport).await;
        let (username, password) = mint("not-the-secret", 7, 600, now_unix());
        let error = client.allocate(&username, &password).await.unwrap_err();
        assert_eq!(error.code(), Some(401), "{transport}: {error}");
        // A valid password for a different username is just as forged.
        let mut client = relay.client(transport).await;
        let (_, other_password) = mint(SECRET, 8, 600, now_unix());
        let error = client
            .allocate(&username, &other_password)
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some(401), "{transport}: {error}");
    }
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn previous_secret_and_bare_expiry_username_are_accepted() {
    let mut opts = options(true);
    opts.secrets = Secrets::new("rotated-in".into(), vec![SECRET.into()]);
    let relay = start(opts).await;
    let mut client = relay.client("udp").await;
    let (username, password) = mint(SECRET, 7, 600, now_unix());
    client
        .allocate(&username, &password)
        .await
        .expect("previous secret still accepted");

    // turnutils_uclient -W sends the bare expiry as the username.
    let mut client = relay.client("udp").await;
    let bare = (now_unix() + 600).to_string();
    let password = parley_turn::credentials::password_for("rotated-in", &bare);
    client
        .allocate(&bare, &password)
        .await
        .expect("bare expiry username accepted");
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn denied_peers_are_refused_with_403_and_never_reached() {
    let relay = start(options(false)).await;
    let (peer, _echo) = echo_peer().await;
    let port = peer.port();
    let denied: Vec<SocketAddr> = [
        "127.0.0.1",
        "::ffff:127.0.0.1",
        "0.0.0.0",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "169.254.169.254",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "fd00::1",
        "fe80::1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
    ]
    .iter()
    .map(|ip| SocketAddr::new(ip.parse().unwrap(), port))
    .collect();

    let mut client = relay.client("udp").await;
    let (username, password) = mint(SECRET, 7, 600, now_unix());
    client.allocate(&username, &password).await.unwrap();
    for (n, address) in denied.iter().enumerate() {
        let error = client.create_permission(&[*address]).await.unwrap_err();
        assert_eq!(
            error.code(),
            Some(403),
            "CreatePermission {address}: {error}"
        );
        let error = client
            .channel_bind(0x4000 + n as u16, *address)
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some(403), "ChannelBind {address}: {error}");
    }
    // Every address of a CreatePermission counts, not only the first.
    let error = client
        .create_permission(&["8.8.8.8:53".parse().unwrap(), peer])
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(403));

    // Nothing reaches the loopback peer, whatever the client sends.
    client
        .send_indication(peer, b"must not arrive")
        .await
        .unwrap();
    client
        .send_channel_data(0x4000, b"must not arrive")
        .await
        .unwrap();
    assert!(matches!(
        client.recv_from_peer(Duration::from_millis(500)).await,
        Err(ProbeError::Timeout(_))
    ));
    assert_eq!(
        relay.metric("parley_turn_relayed_packets_to_peers_total"),
        0
    );
    // Each CreatePermission and ChannelBind, the two-address one, and the Send indication
    // (dropped in front of the server too).
    assert_eq!(
        relay.metric("parley_turn_refused_peers_total"),
        2 * denied.len() as u64 + 2
    );

    // A global address is still allowed.
    client
        .create_permission(&["8.8.8.8:53".parse().unwrap()])
        .await
        .unwrap();
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn allocation_quota_per_user_and_in_total() {
    let mut opts = options(true);
    opts.max_allocations_per_user = 2;
    opts.max_allocations = 3;
    let relay = start(opts).await;
    let mut clients = Vec::new();
    for user in [1, 1] {
        let mut client = relay.client("udp").await;
        let (username, password) = mint(SECRET, user, 600, now_unix());
        client.allocate(&username, &password).await.unwrap();
        clients.push(client);
    }
    let mut third = relay.client("udp").await;
    let (username, password) = mint(SECRET, 1, 600, now_unix());
    let error = third.allocate(&username, &password).await.unwrap_err();
    assert_eq!(error.code(), Some(486), "per-user quota: {error}");

    let mut other_user = relay.client("tcp").await;
    let (username, password) = mint(SECRET, 2, 600, now_unix());
    other_user
        .allocate(&username, &password)
        .await
        .expect("another user still has room");

    let mut fourth = relay.client("udp").await;
    let (username, password) = mint(SECRET, 3, 600, now_unix());
    let error = fourth.allocate(&username, &password).await.unwrap_err();
    assert_eq!(error.code(), Some(486), "total quota: {error}");
    assert_eq!(relay.metric("parley_turn_allocations"), 3);

    // Deleting an allocation frees its slot.
    clients[0].refresh(Duration::ZERO).await.unwrap();
    let mut again = relay.client("udp").await;
    let (username, password) = mint(SECRET, 1, 600, now_unix());
    tokio::time::sleep(Duration::from_millis(200)).await;
    again
        .allocate(&username, &password)
        .await
        .expect("slot freed by refresh 0");
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn closing_a_tcp_connection_releases_its_allocation() {
    let mut opts = options(true);
    opts.max_allocations_per_user = 1;
    let relay = start(opts).await;
    for transport in ["tcp", "tls", "tcp"] {
        let mut client = relay.client(transport).await;
        let (username, password) = mint(SECRET, 5, 600, now_unix());
        let mut result = client.allocate(&username, &password).await;
        // The previous connection's release is asynchronous: allow it a moment.
        for _ in 0..20 {
            if result.as_ref().err().and_then(ProbeError::code) != Some(486) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            client = relay.client(transport).await;
            result = client.allocate(&username, &password).await;
        }
        result.unwrap_or_else(|e| panic!("{transport}: {e}"));
        drop(client);
    }
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn relay_address_is_advertised_for_one_to_one_nat() {
    let mut opts = options(true);
    opts.relay_address = "203.0.113.7".parse().unwrap();
    opts.relay_ports = (41000, 41009);
    let relay = start(opts).await;
    let mut client = relay.client("udp").await;
    let (username, password) = mint(SECRET, 7, 600, now_unix());
    let relayed = client.allocate(&username, &password).await.unwrap();
    assert_eq!(relayed.ip(), "203.0.113.7".parse::<IpAddr>().unwrap());
    assert!((41000..=41009).contains(&relayed.port()));
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn unauthenticated_flood_keeps_the_nonce_table_bounded() {
    let relay = start(options(false)).await;
    let mut nonces = HashSet::new();
    let mut client = relay.client("udp").await;
    for _ in 0..2000 {
        nonces.insert(client.challenge().await.unwrap());
    }
    // Requests carrying made-up nonces and integrity are answered with the same nonce too.
    let (username, password) = mint(SECRET, 7, 600, now_unix());
    for n in 0..500 {
        client.set_nonce(format!("forged-{n}"));
        // The client follows one 438 and then succeeds or fails on quota: either way the
        // server must not mint a nonce per request.
        let _ = client.allocate(&username, &password).await;
        nonces.insert(client.nonce().to_owned());
        let _ = client.refresh(Duration::ZERO).await;
    }
    let mut tcp = relay.client("tcp").await;
    for _ in 0..500 {
        nonces.insert(tcp.challenge().await.unwrap());
    }
    assert!(
        nonces.len() <= 2,
        "the server minted {} nonces",
        nonces.len()
    );
    assert!(relay.relay.nonce_table_len() <= 2);
    assert!(relay.metric("parley_turn_challenges_answered_total") >= 2499);
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn bandwidth_limit_drops_excess() {
    let mut opts = options(true);
    opts.bandwidth_limit_kbps = 80; // 10 kB/s, 64 KiB burst
    let relay = start(opts).await;
    let (peer, _echo) = echo_peer().await;
    let mut client = relay.client("udp").await;
    let (username, password) = mint(SECRET, 7, 600, now_unix());
    client.allocate(&username, &password).await.unwrap();
    client.channel_bind(0x4000, peer).await.unwrap();
    let payload = vec![0u8; 1000];
    for _ in 0..200 {
        client.send_channel_data(0x4000, &payload).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let relayed = relay.metric("parley_turn_relayed_packets_to_peers_total");
    assert!(
        relayed < 100,
        "{relayed} of 200 packets passed a 10 kB/s limit"
    );
    assert!(relayed >= 50, "the burst allowance passed only {relayed}");
    assert!(relay.metric("parley_turn_bandwidth_drops_total") > 0);
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn readiness_lists_every_listener() {
    let relay = start(options(false)).await;
    let listeners = relay.relay.listeners();
    let kinds: Vec<&str> = listeners.iter().map(|l| l.transport.as_str()).collect();
    assert_eq!(kinds, ["udp", "tcp", "tls"]);
    assert!(listeners.iter().all(|l| l.up));
    assert_eq!(listeners[0].address, relay.udp);
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn even_port_requests_end_when_no_even_port_is_free() {
    // `turn` searches for an even port by asking for ports until one is even; with the even
    // ports of a small range taken, it must give up (508) instead of spinning forever.
    let mut opts = options(true);
    opts.relay_ports = (41100, 41103);
    opts.max_allocations_per_user = 0;
    let relay = start(opts).await;
    let (username, password) = mint(SECRET, 7, 600, now_unix());
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut client = relay.client("udp").await;
        let relayed = client
            .allocate_even_port(&username, &password)
            .await
            .unwrap();
        assert_eq!(relayed.port() % 2, 0, "{relayed}");
        held.push(client);
    }
    let mut client = relay.client("udp").await;
    let error = client
        .allocate_even_port(&username, &password)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(508), "{error}");
    // Odd ports still serve ordinary allocations, and the server still answers.
    let mut client = relay.client("udp").await;
    let relayed = client.allocate(&username, &password).await.unwrap();
    assert_eq!(relayed.port() % 2, 1, "{relayed}");
    relay.relay.shutdown().await;
}

/// A peer that records what reaches it and can send to the relay.
async fn quiet_peer() -> (UdpSocket, SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    (socket, address)
}

/// A UDP client with an allocation on `relay` and channel `number` bound to a new quiet peer:
/// (peer, its address, the client, the relayed address).
async fn channel_to_quiet_peer(
    relay: &TestRelay,
    number: u16,
) -> (UdpSocket, SocketAddr, TurnClient, SocketAddr) {
    let (peer, peer_address) = quiet_peer().await;
    let mut client = relay.client("udp").await;
    let (username, password) = mint(SECRET, 7, 600, now_unix());
    let relayed = client.allocate(&username, &password).await.unwrap();
    client.channel_bind(number, peer_address).await.unwrap();
    (peer, peer_address, client, relayed)
}

async fn received(peer: &UdpSocket, within: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 2048];
    tokio::time::timeout(within, peer.recv_from(&mut buf))
        .await
        .ok()
        .map(|r| r.unwrap())
        .map(|(n, from)| (buf[..n].to_vec(), from))
}

#[tokio::test]
async fn a_deleted_allocation_stops_relaying_channel_data_at_once_both_ways() {
    let relay = start(options(true)).await;
    let (peer, peer_address, mut client, relayed) = channel_to_quiet_peer(&relay, 0x4000).await;
    for round in 0..3u8 {
        client
            .send_channel_data(0x4000, &[round; 20])
            .await
            .unwrap();
        let (data, from) = received(&peer, TIMEOUT).await.expect("relayed to the peer");
        assert_eq!((data, from), (vec![round; 20], relayed));
        peer.send_to(&[round; 7], relayed).await.unwrap();
        let (from, data) = client.recv_from_peer(TIMEOUT).await.unwrap();
        assert_eq!((from, data), (peer_address, vec![round; 7]));
    }

    client.refresh(Duration::ZERO).await.unwrap();
    client
        .send_channel_data(0x4000, b"after delete")
        .await
        .unwrap();
    assert_eq!(received(&peer, Duration::from_millis(300)).await, None);
    let _ = peer.send_to(b"after delete", relayed).await;
    assert!(matches!(
        client.recv_from_peer(Duration::from_millis(300)).await,
        Err(ProbeError::Timeout(_))
    ));
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn channel_data_on_an_unbound_channel_is_not_relayed() {
    let relay = start(options(true)).await;
    let (peer, _, mut client, relayed) = channel_to_quiet_peer(&relay, 0x4000).await;
    client.send_channel_data(0x4001, b"unbound").await.unwrap();
    assert_eq!(received(&peer, Duration::from_millis(300)).await, None);
    // A peer with a permission but no channel gets its datagrams to the client as Data
    // indications, from the server.
    let (other, other_address) = quiet_peer().await;
    client.create_permission(&[other_address]).await.unwrap();
    other.send_to(b"no channel", relayed).await.unwrap();
    let (from, data) = client.recv_from_peer(TIMEOUT).await.unwrap();
    assert_eq!(
        (from, data.as_slice()),
        (other_address, b"no channel".as_slice())
    );
    relay.relay.shutdown().await;
}

/// The payload of a burst's `i`th datagram: numbered, and of mixed sizes so that batches are
/// cut into several runs of equal-sized datagrams (some ending with a shorter one).
fn burst_payload(i: usize) -> Vec<u8> {
    let size = match i {
        i if i % 25 == 24 => 300,
        i if i % 10 == 9 => 60,
        _ => 120,
    };
    let mut payload = vec![(i % 251) as u8; size];
    payload[..2].copy_from_slice(&(i as u16).to_be_bytes());
    payload
}

#[tokio::test]
async fn a_burst_of_channel_data_arrives_whole_and_in_order_both_ways() {
    const BURST: usize = 150;
    let relay = start(options(true)).await;
    let (peer, peer_address, mut client, relayed) = channel_to_quiet_peer(&relay, 0x4000).await;
    for i in 0..BURST {
        client
            .send_channel_data(0x4000, &burst_payload(i))
            .await
            .unwrap();
    }
    for i in 0..BURST {
        let (data, from) = received(&peer, TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("datagram {i} of {BURST} did not reach the peer"));
        assert_eq!((data, from), (burst_payload(i), relayed), "datagram {i}");
    }
    for i in 0..BURST {
        peer.send_to(&burst_payload(i), relayed).await.unwrap();
    }
    for i in 0..BURST {
        let (from, data) = client
            .recv_from_peer(TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("datagram {i} of {BURST} did not reach the client: {e}"));
        assert_eq!(
            (from, data),
            (peer_address, burst_payload(i)),
            "datagram {i}"
        );
    }
    assert_eq!(
        relay.metric("parley_turn_relayed_packets_to_peers_total"),
        BURST as u64
    );
    assert_eq!(
        relay.metric("parley_turn_relayed_packets_from_peers_total"),
        BURST as u64
    );
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn two_clients_bursts_interleaved_each_reach_their_own_peer_in_order() {
    // One listener batch then holds both clients' ChannelData: each must go to its own
    // relay socket and peer, in its own order.
    const BURST: usize = 60;
    let relay = start(options(true)).await;
    let (peer_a, _, mut client_a, relayed_a) = channel_to_quiet_peer(&relay, 0x4000).await;
    let (peer_b, _, mut client_b, relayed_b) = channel_to_quiet_peer(&relay, 0x4000).await;
    for i in 0..BURST {
        client_a
            .send_channel_data(0x4000, &burst_payload(i))
            .await
            .unwrap();
        client_b
            .send_channel_data(0x4000, &burst_payload(BURST + i))
            .await
            .unwrap();
    }
    for i in 0..BURST {
        let a = received(&peer_a, TIMEOUT).await.expect("reached peer a");
        assert_eq!(a, (burst_payload(i), relayed_a), "datagram {i} to a");
        let b = received(&peer_b, TIMEOUT).await.expect("reached peer b");
        assert_eq!(
            b,
            (burst_payload(BURST + i), relayed_b),
            "datagram {i} to b"
        );
    }
    relay.relay.shutdown().await;
}
