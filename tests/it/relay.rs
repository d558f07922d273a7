//! The embedded relay of the real daemon, driven by clients that are not ours (coturn's
//! `turnutils_uclient` with `turnutils_peer`, Debian package `coturn`) and by parley-turn's
//! probe client for the refusal cases. Every daemon here runs on free 127.0.0.1 ports.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parley_turn::probe::{ProbeTransport, TurnClient};

use crate::daemon::{doctor, free_port, parley_binary, parse_response, relay_ports, request_head};
use crate::turnutils::{Peer, assert_no_loss, uclient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const SECRET: &str = "it-relay-secret";

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Daemon {
    child: Child,
    http: SocketAddr,
    turn: SocketAddr,
    tls: Option<SocketAddr>,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `parley serve`; `turn_extra` is appended to the `[turn]` section.
async fn start_daemon(turn_extra: &str, with_tls: bool) -> Daemon {
    let dir = tempfile::tempdir().expect("tempdir");
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let turn: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // A private slice of 100 relay ports (uclient's EVEN-PORT pairs need room).
    let (relay_low, relay_high) = relay_ports(100);
    let mut tls_lines = String::from("tls_listen = \"\"\n");
    let mut tls = None;
    if with_tls {
        let certified = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
        ])
        .unwrap();
        let cert = dir.path().join("turn-cert.pem");
        let key = dir.path().join("turn-key.pem");
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
        let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        tls_lines = format!(
            "tls_listen = \"{address}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        );
        tls = Some(address);
    }
    let config = dir.path().join("parley.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"{http}\"\n[storage]\ndata_dir = \"{data}\"\n\
             [turn]\nlisten = \"{turn}\"\nsecret = \"{SECRET}\"\nrelay_ports = \"{relay_low}-{relay_high}\"\n{tls_lines}{turn_extra}\n",
            data = dir.path().join("data").display(),
        ),
    )
    .unwrap();
    let child = Command::new(parley_binary())
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .spawn()
        .expect("start parley");
    let mut daemon = Daemon {
        child,
        http,
        turn,
        tls,
        config,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            panic!("parley exited during start-up: {status}");
        }
        if let Ok((200, _)) = daemon.request("GET", "/readyz", None, None).await {
            return daemon;
        }
        assert!(Instant::now() < deadline, "parley not ready within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Daemon {
    /// One HTTP/1.1 request; returns the status and the body.
    async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> std::io::Result<(u16, String)> {
        let mut stream = TcpStream::connect(self.http).await?;
        let body = body.unwrap_or("");
        let head = request_head(method, path, body, token);
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok(parse_response(&response))
    }

    async fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let (status, body) = self
            .request(method, path, body, token)
            .await
            .expect("HTTP request");
        (
            status,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Registers a fresh user; returns (token, user id).
    async fn register(&self, name: &str) -> (String, i64) {
        let body = format!("{{\"username\":\"{name}\",\"password\":\"correct horse battery\"}}");
        let (status, reply) = self
            .json("POST", "/api/v1/auth/register", Some(&body), None)
            .await;
        assert_eq!(status, 201, "register {name}: {reply}");
        (
            reply["token"].as_str().unwrap().to_owned(),
            reply["user"]["id"].as_i64().unwrap(),
        )
    }

    async fn metric(&self, name: &str) -> u64 {
        let (status, text) = self.request("GET", "/metrics", None, None).await.unwrap();
        assert_eq!(status, 200);
        text.lines()
            .find_map(|line| {
                line.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .unwrap_or_else(|| panic!("metric {name} missing from /metrics"))
            .parse()
            .unwrap()
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .unwrap()
            .trim()
            .trim_end_matches(" kB")
            .trim()
            .parse()
            .unwrap()
    }

    async fn probe(&self, transport: ProbeTransport) -> TurnClient {
        let address = match transport {
            ProbeTransport::Tls { .. } => self.tls.expect("TLS configured"),
            _ => self.turn,
        };
        TurnClient::connect(address, transport, Duration::from_secs(3))
            .await
            .expect("reach the relay")
    }
}

fn uclient_args(daemon: &Daemon, peer: &Peer, transport: &str, auth: &[String]) -> Vec<String> {
    let port = match transport {
        "tls" => daemon.tls.expect("TLS configured").port(),
        _ => daemon.turn.port(),
    };
    let mut args: Vec<String> = match transport {
        "udp" => vec![],
        "tcp" => vec!["-t".into()],
        "tls" => vec!["-t".into(), "-S".into()],
        other => panic!("unknown transport {other}"),
    };
    // 5 allocations with a channel each, 200 messages of 120 bytes every 5 ms per client.
    for arg in [
        "-c",
        "-e",
        "127.0.0.1",
        "-r",
        &peer.port.to_string(),
        "-p",
        &port.to_string(),
        "-n",
        "200",
        "-m",
        "5",
        "-l",
        "120",
        "-z",
        "5",
    ] {
        args.push(arg.to_owned());
    }
    args.extend(auth.iter().cloned());
    args.push("127.0.0.1".to_owned());
    args
}

#[tokio::test]
async fn uclient_relays_over_udp_tcp_and_tls_without_loss() {
    let daemon = start_daemon(
        "allowed_peer_ranges = [\"127.0.0.0/8\"]\nmax_allocations_per_user = 50\n",
        true,
    )
    .await;
    let peer = Peer::on_loopback();
    for transport in ["udp", "tcp", "tls"] {
        // -W: REST-API shared secret, uclient sends the bare expiry as the username.
        let result = uclient(
            Command::new("timeout"),
            120,
            uclient_args(&daemon, &peer, transport, &["-W".into(), SECRET.into()]),
        );
        assert_no_loss(transport, &result, 1000, "");
    }
    assert!(
        daemon
            .metric("parley_turn_relayed_packets_to_peers_total")
            .await
            >= 3000
    );
    assert!(
        daemon
            .metric("parley_turn_relayed_packets_from_peers_total")
            .await
            >= 3000
    );
}

#[tokio::test]
async fn credentials_from_the_api_work_in_uclient_and_expire() {
    let daemon = start_daemon("allowed_peer_ranges = [\"127.0.0.0/8\"]\n", false).await;
    let (token, user_id) = daemon.register("relayuser").await;
    let (status, _) = daemon.json("GET", "/api/v1/ice-servers", None, None).await;
    assert_eq!(status, 401, "ICE servers need a login");
    let (status, reply) = daemon
        .json("GET", "/api/v1/ice-servers", None, Some(&token))
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["ttlSecs"], 21600);
    assert_eq!(reply["iceTransportPolicy"], "all");
    let port = daemon.turn.port();
    let servers = reply["iceServers"].as_array().unwrap();
    let urls: Vec<&str> = servers
        .iter()
        .flat_map(|s| s["urls"].as_array().unwrap())
        .map(|u| u.as_str().unwrap())
        .collect();
    for expected in [
        format!("stun:127.0.0.1:{port}"),
        format!("turn:127.0.0.1:{port}?transport=udp"),
        format!("turn:127.0.0.1:{port}?transport=tcp"),
    ] {
        assert!(
            urls.contains(&expected.as_str()),
            "{expected} missing from {urls:?}"
        );
    }
    assert!(
        !urls.iter().any(|u| u.starts_with("turns:")),
        "no TLS listener without a certificate: {urls:?}"
    );
    let turn = servers
        .iter()
        .find(|s| s.get("username").is_some())
        .expect("a TURN entry with credentials");
    let username = turn["username"].as_str().unwrap();
    let credential = turn["credential"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, user_id.to_string());
    let expiry: u64 = expiry.parse().unwrap();
    assert!(expiry.abs_diff(now_unix() + 21600) <= 5, "expiry {expiry}");

    // coturn's client accepts them as plain long-term credentials.
    let peer = Peer::on_loopback();
    let result = uclient(
        Command::new("timeout"),
        120,
        uclient_args(
            &daemon,
            &peer,
            "udp",
            &["-u".into(), username.into(), "-w".into(), credential.into()],
        ),
    );
    assert!(
        result.sent >= 1000 && result.received == result.sent,
        "{}\n{}",
        result.lost_line,
        result.output
    );

    // An expired credential of the same form is refused with 401.
    let expired = format!("{}:{user_id}", now_unix() - 1);
    let expired_password = parley_turn::credentials::password_for(SECRET, &expired);
    let mut client = daemon.probe(ProbeTransport::Udp).await;
    let error = client
        .allocate(&expired, &expired_password)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(401), "{error}");
    // So is a forged one.
    let mut client = daemon.probe(ProbeTransport::Tcp).await;
    let error = client
        .allocate(username, "Zm9yZ2VkIGNyZWRlbnRpYWw=")
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(401), "{error}");
    assert!(daemon.metric("parley_turn_auth_failures_total").await >= 2);
}

#[tokio::test]
async fn default_policy_refuses_internal_peers() {
    let daemon = start_daemon("", false).await;
    let (username, password) = parley_turn::mint(SECRET, 1, 600, now_unix());
    let mut client = daemon.probe(ProbeTransport::Udp).await;
    client.allocate(&username, &password).await.unwrap();
    for peer in [
        "127.0.0.1:9",
        "[::ffff:127.0.0.1]:9",
        "0.0.0.0:9",
        "10.0.0.1:9",
        "192.168.0.1:9",
        "172.16.0.1:9",
        "100.64.0.1:9",
        "169.254.169.254:80",
        "224.0.0.1:9",
        "255.255.255.255:9",
    ] {
        let peer: SocketAddr = peer.parse().unwrap();
        let error = client.create_permission(&[peer]).await.unwrap_err();
        assert_eq!(error.code(), Some(403), "CreatePermission {peer}: {error}");
        let error = client.channel_bind(0x4000, peer).await.unwrap_err();
        assert_eq!(error.code(), Some(403), "ChannelBind {peer}: {error}");
    }

    // coturn's client, pointed at a loopback peer, gets nothing through.
    let peer = Peer::on_loopback();
    let result = uclient(
        Command::new("timeout"),
        120,
        uclient_args(&daemon, &peer, "udp", &["-W".into(), SECRET.into()]),
    );
    assert_eq!(result.received, 0, "{}", result.output);
    assert_eq!(
        daemon
            .metric("parley_turn_relayed_packets_to_peers_total")
            .await,
        0
    );
    assert!(daemon.metric("parley_turn_refused_peers_total").await >= 20);
}

#[tokio::test]
async fn allocation_quota_is_enforced_per_user() {
    let daemon = start_daemon("max_allocations_per_user = 2\n", false).await;
    let (username, password) = parley_turn::mint(SECRET, 9, 600, now_unix());
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut client = daemon.probe(ProbeTransport::Udp).await;
        client.allocate(&username, &password).await.unwrap();
        held.push(client);
    }
    let mut client = daemon.probe(ProbeTransport::Tcp).await;
    let error = client.allocate(&username, &password).await.unwrap_err();
    assert_eq!(error.code(), Some(486), "{error}");
    assert_eq!(daemon.metric("parley_turn_allocations").await, 2);
}

#[tokio::test]
async fn unauthenticated_flood_leaves_memory_bounded() {
    let daemon = start_daemon("", false).await;
    // Warm up: the first requests allocate buffers that are not growth.
    let mut client = daemon.probe(ProbeTransport::Udp).await;
    let first_nonce = client.challenge().await.unwrap();
    let before = daemon.rss_kib();

    // 100 000 Allocate requests without credentials from 10 sockets, as fast as they go.
    let template = {
        let mut msg = stun::message::Message::new();
        msg.build(&[
            Box::new(stun::agent::TransactionId::new()),
            Box::new(stun::message::MessageType::new(
                stun::message::METHOD_ALLOCATE,
                stun::message::CLASS_REQUEST,
            )),
        ])
        .unwrap();
        msg.raw
    };
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let target = daemon.turn;
        let template = template.clone();
        tasks.push(tokio::spawn(async move {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let mut nonces = HashSet::new();
            let mut buf = vec![0u8; 1500];
            for n in 0..10_000u32 {
                let mut packet = template.clone();
                packet[8..12].copy_from_slice(&n.to_be_bytes()); // a distinct transaction id
                socket.send_to(&packet, target).await.unwrap();
                // Read whatever answers are waiting, without pacing the flood.
                while let Ok(Ok((len, _))) =
                    tokio::time::timeout(Duration::ZERO, socket.recv_from(&mut buf)).await
                {
                    if let Some(nonce) = nonce_of(&buf[..len]) {
                        nonces.insert(nonce);
                    }
                }
            }
            while let Ok(Ok((len, _))) =
                tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buf)).await
            {
                if let Some(nonce) = nonce_of(&buf[..len]) {
                    nonces.insert(nonce);
                }
            }
            nonces
        }));
    }
    let mut nonces = HashSet::new();
    for task in tasks {
        nonces.extend(task.await.unwrap());
    }
    let after = daemon.rss_kib();
    assert!(!nonces.is_empty(), "the daemon answered none of the flood");
    nonces.insert(first_nonce);
    assert!(
        nonces.len() <= 2,
        "the daemon minted {} nonces under the flood",
        nonces.len()
    );
    assert!(daemon.metric("parley_turn_challenges_answered_total").await >= 10_000);
    // Unbounded, 100 000 nonces cost the turn crate about 12 MB.
    assert!(
        after.saturating_sub(before) < 4096,
        "RSS grew from {before} KiB to {after} KiB"
    );
}

fn nonce_of(packet: &[u8]) -> Option<String> {
    let mut msg = stun::message::Message {
        raw: packet.to_vec(),
        ..Default::default()
    };
    msg.decode().ok()?;
    stun::textattrs::TextAttribute::get_from_as(&msg, stun::attributes::ATTR_NONCE)
        .ok()
        .map(|n| n.text)
}

#[tokio::test]
async fn readiness_and_metrics_report_the_relay() {
    let daemon = start_daemon("", true).await;
    let (status, body) = daemon.request("GET", "/readyz", None, None).await.unwrap();
    assert_eq!(status, 200, "{body}");
    for listener in ["turn-udp", "turn-tcp", "turn-tls"] {
        assert!(
            body.contains(listener),
            "/readyz does not mention {listener}: {body}"
        );
    }
    let (status, metrics) = daemon.request("GET", "/metrics", None, None).await.unwrap();
    assert_eq!(status, 200);
    for name in [
        "parley_turn_allocations ",
        "parley_turn_auth_failures_total ",
        "parley_turn_refused_peers_total ",
        "parley_turn_relayed_bytes_to_peers_total ",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}");
    }
}

#[tokio::test]
async fn doctor_checks_every_listener_of_a_running_daemon() {
    let daemon = start_daemon("allowed_peer_ranges = [\"127.0.0.0/8\"]\n", false).await;
    let (passed, text) = doctor(&daemon.config);
    assert!(passed, "doctor failed:\n{text}");
    for transport in ["udp", "tcp"] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("turn {transport}")))
            .unwrap_or_else(|| panic!("no {transport} line:\n{text}"));
        assert!(
            line.contains("OK") && line.contains("relayed a packet"),
            "{line}"
        );
    }
    drop(daemon);

    // The default policy refuses the loopback relay address: doctor says what to change.
    let daemon = start_daemon("", false).await;
    let (passed, text) = doctor(&daemon.config);
    assert!(!passed, "doctor passed a relay that cannot relay:\n{text}");
    assert!(
        text.contains("FAIL") && text.contains("turn.relay_address"),
        "{text}"
    );
}
