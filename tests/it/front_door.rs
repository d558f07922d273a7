//! Issue 11, "one front door": the HTTPS port also serves TURN over TLS and TURN over TCP, told
//! apart by the first bytes, while HTTPS keeps answering; plain HTTP on it is redirected to
//! https; garbage, silent and half-open connections are closed within the header timeout and
//! counted. Driven by coturn's `turnutils_uclient` (Debian package `coturn`), a TLS client
//! trusting the test's own certificate, and raw sockets; every daemon on free 127.0.0.1 ports.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::daemon::{Daemon, doctor, parse_response, relay_ports, request_head};
use crate::turnutils::{Peer, assert_no_loss, uclient};

const SECRET: &str = "it-front-door-secret";
/// `http.header_timeout_secs` of these daemons: the budget of a connection's first bytes.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// A daemon serving HTTPS with a certificate for 127.0.0.1 that `connector` trusts, the relay
/// on its own UDP/TCP port and, by default, on the HTTPS port.
struct HttpsDaemon {
    daemon: Daemon,
    connector: TlsConnector,
    _certificates: tempfile::TempDir,
}

impl HttpsDaemon {
    async fn start(turn_extra: &str) -> HttpsDaemon {
        let certified = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
        ])
        .expect("rcgen makes a certificate");
        let certificates = tempfile::tempdir().expect("tempdir");
        let cert = certificates.path().join("cert.pem");
        let key = certificates.path().join("key.pem");
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
        // A private slice of relay ports (uclient's EVEN-PORT pairs need room).
        let (relay_low, relay_high) = relay_ports(100);
        let daemon = Daemon::configure(&format!(
            "[http]\nheader_timeout_secs = {}\n\
             [tls]\nenabled = true\ncert = \"{}\"\nkey = \"{}\"\n\
             [turn]\nsecret = \"{SECRET}\"\nrelay_ports = \"{relay_low}-{relay_high}\"\n\
             allowed_peer_ranges = [\"127.0.0.0/8\"]\nmax_allocations_per_user = 50\n{turn_extra}",
            HEADER_TIMEOUT.as_secs(),
            cert.display(),
            key.display(),
        ));
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(certified.cert.der().to_vec()))
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut door = HttpsDaemon {
            daemon: daemon.spawn_without_waiting(&[]),
            connector: TlsConnector::from(Arc::new(client)),
            _certificates: certificates,
        };
        door.wait_ready().await;
        door
    }

    fn https(&self) -> SocketAddr {
        self.daemon.http
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.daemon.assert_running();
            if let Ok((200, _)) = self.request("GET", "/readyz", None, None).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "parley not ready within 30 s:\n{}",
                self.daemon.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn tls(&self) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.https()).await?;
        let name = ServerName::try_from("127.0.0.1").unwrap();
        self.connector.connect(name, tcp).await
    }

    /// One HTTPS request on a new connection; the status and the body.
    async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> std::io::Result<(u16, String)> {
        let mut stream = self.tls().await?;
        let body = body.unwrap_or("");
        let head = request_head(method, path, body, token);
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        let mut response = Vec::new();
        // The daemon may close without TLS close_notify after `connection: close`.
        let _ = stream.read_to_end(&mut response).await;
        Ok(parse_response(&response))
    }

    async fn metrics(&self) -> String {
        let (status, text) = self.request("GET", "/metrics", None, None).await.unwrap();
        assert_eq!(status, 200);
        text
    }

    /// The value of one sample line of /metrics, e.g. `name{label="x"}`.
    async fn metric(&self, sample: &str) -> u64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{sample} missing from /metrics:\n{text}"))
            .trim()
            .parse()
            .unwrap()
    }
}

/// Waits until the daemon closes `stream` (end of stream or reset); how long that took from
/// `since`. Panics if it is still open after `limit`.
async fn closed_within<S: AsyncRead + Unpin>(
    stream: &mut S,
    since: Instant,
    limit: Duration,
    what: &str,
) -> Duration {
    let mut buffer = [0u8; 256];
    loop {
        let left = limit.saturating_sub(since.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Err(_) => panic!("{what}: still open after {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return since.elapsed(),
            Ok(Ok(_)) => {} // a redirect or alert before the close: keep reading
        }
    }
}

#[tokio::test]
async fn uclient_relays_over_tls_and_tcp_on_the_https_port_while_https_answers_issue_11() {
    let door = Arc::new(HttpsDaemon::start("").await);
    let peer = Peer::on_loopback();
    let https_port = door.https().port();

    // HTTPS requests to the same port, one after another, for as long as uclient runs.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let https = tokio::spawn({
        let (door, stop, answered) = (door.clone(), stop.clone(), answered.clone());
        async move {
            let mut slowest = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let (status, body) = door.request("GET", "/healthz", None, None).await.unwrap();
                assert_eq!((status, body.as_str()), (200, "ok\n"));
                slowest = slowest.max(started.elapsed());
                answered.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            slowest
        }
    });

    for tls in [true, false] {
        let name = if tls {
            "TURN over TLS"
        } else {
            "TURN over TCP"
        };
        // 5 allocations with a channel each, 200 messages of 120 bytes every 5 ms per client,
        // REST-API credentials from the shared secret.
        let mut args = vec!["-t"];
        if tls {
            args.push("-S");
        }
        let (peer_port, https_port) = (peer.port.to_string(), https_port.to_string());
        args.extend(["-c", "-e", "127.0.0.1", "-r", &peer_port, "-p", &https_port]);
        args.extend(["-n", "200", "-m", "5", "-l", "120", "-z", "5", "-W", SECRET]);
        args.push("127.0.0.1");
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        let result =
            tokio::task::spawn_blocking(move || uclient(Command::new("timeout"), 120, args))
                .await
                .unwrap();
        assert_no_loss(name, &result, 1000, "");
    }
    stop.store(true, Ordering::Relaxed);
    let slowest = https.await.unwrap();
    let answered = answered.load(Ordering::Relaxed);
    assert!(answered >= 10, "only {answered} HTTPS requests answered");
    assert!(
        slowest < Duration::from_secs(2),
        "an HTTPS request took {slowest:?} while TURN ran on the port"
    );

    let sample = "parley_http_port_connections_total{protocol=";
    assert!(door.metric(&format!("{sample}\"turn_tls\"}}")).await >= 5);
    assert!(door.metric(&format!("{sample}\"turn_tcp\"}}")).await >= 5);
    assert!(door.metric(&format!("{sample}\"https\"}}")).await >= answered);
    assert!(
        door.metric("parley_turn_relayed_packets_to_peers_total")
            .await
            >= 2000
    );
}

#[tokio::test]
async fn garbage_silent_and_half_open_connections_are_closed_and_counted_issue_11() {
    let door = HttpsDaemon::start("").await;
    let address = door.https();
    let limit = HEADER_TIMEOUT + Duration::from_secs(3);
    let closed = |reason: &str| format!("parley_http_port_closed_total{{reason=\"{reason}\"}}");
    let before_garbage = door.metric(&closed("garbage")).await;
    let before_silent = door.metric(&closed("silent")).await;
    let before_half_open = door.metric(&closed("half_open")).await;

    let garbage = async {
        let mut stream = TcpStream::connect(address).await.unwrap();
        let start = Instant::now();
        stream.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await.unwrap();
        let took = closed_within(&mut stream, start, limit, "garbage").await;
        assert!(
            took < Duration::from_secs(1),
            "garbage closed only after {took:?}"
        );
    };
    let garbage_inside_tls = async {
        let mut stream = door.tls().await.unwrap();
        let start = Instant::now();
        stream.write_all(&[0xff; 32]).await.unwrap();
        stream.flush().await.unwrap();
        let took = closed_within(&mut stream, start, limit, "garbage inside TLS").await;
        assert!(took < Duration::from_secs(1), "closed only after {took:?}");
    };
    let silent = async {
        let mut stream = TcpStream::connect(address).await.unwrap();
        let start = Instant::now();
        let took = closed_within(&mut stream, start, limit, "silent").await;
        assert!(
            took >= HEADER_TIMEOUT - Duration::from_millis(300),
            "closed after {took:?}"
        );
    };
    let silent_after_handshake = async {
        let mut stream = door.tls().await.unwrap();
        let start = Instant::now();
        let took = closed_within(&mut stream, start, limit, "silent inside TLS").await;
        assert!(
            took >= HEADER_TIMEOUT - Duration::from_millis(300),
            "closed after {took:?}"
        );
    };
    let half_sent = async {
        // The first byte of a ClientHello, then nothing: undecided until the deadline.
        let mut stream = TcpStream::connect(address).await.unwrap();
        let start = Instant::now();
        stream.write_all(&[0x16]).await.unwrap();
        let took = closed_within(&mut stream, start, limit, "one byte of TLS").await;
        assert!(
            took >= HEADER_TIMEOUT - Duration::from_millis(300),
            "closed after {took:?}"
        );
    };
    let half_open = async {
        // The client closes its sending side at once and waits for the daemon to close.
        let mut stream = TcpStream::connect(address).await.unwrap();
        let start = Instant::now();
        stream.shutdown().await.unwrap();
        let took = closed_within(&mut stream, start, limit, "half-open").await;
        assert!(
            took < Duration::from_secs(1),
            "half-open closed only after {took:?}"
        );
    };
    let https_meanwhile = async {
        for _ in 0..10 {
            let (status, _) = door.request("GET", "/healthz", None, None).await.unwrap();
            assert_eq!(status, 200, "HTTPS stops answering while others hang");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::join!(
        garbage,
        garbage_inside_tls,
        silent,
        silent_after_handshake,
        half_sent,
        half_open,
        https_meanwhile
    );

    assert_eq!(door.metric(&closed("garbage")).await, before_garbage + 2);
    assert_eq!(door.metric(&closed("silent")).await, before_silent + 3);
    assert_eq!(
        door.metric(&closed("half_open")).await,
        before_half_open + 1
    );
}

#[tokio::test]
async fn plain_http_on_the_tls_port_is_redirected_to_https_issue_11() {
    let door = HttpsDaemon::start("").await;
    let address = door.https();
    let mut stream = TcpStream::connect(address).await.unwrap();
    let start = Instant::now();
    stream
        .write_all(
            format!(
                "GET /calls?with=bob HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
                address.port()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .expect("an answer, not a hang")
        .unwrap();
    assert!(start.elapsed() < Duration::from_secs(1));
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 308"), "{text}");
    let location = format!("https://127.0.0.1:{}/calls?with=bob", address.port());
    assert!(
        text.to_ascii_lowercase()
            .contains(&format!("location: {location}\r\n")),
        "{text}"
    );
    let sample = "parley_http_port_connections_total{protocol=\"http_redirected_to_https\"}";
    assert_eq!(door.metric(sample).await, 1);
}

#[tokio::test]
async fn ice_servers_offer_turns_on_the_https_port_after_udp_and_tcp_issue_11() {
    let door = HttpsDaemon::start("").await;
    let body = r#"{"username":"frontdoor","password":"correct horse battery"}"#;
    let (status, reply) = door
        .request("POST", "/api/v1/auth/register", Some(body), None)
        .await
        .unwrap();
    assert_eq!(status, 201, "{reply}");
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    let token = reply["token"].as_str().unwrap();
    let (status, reply) = door
        .request("GET", "/api/v1/ice-servers", None, Some(token))
        .await
        .unwrap();
    assert_eq!(status, 200, "{reply}");
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    let servers = reply["iceServers"].as_array().unwrap();
    let urls: Vec<&str> = servers
        .iter()
        .flat_map(|server| server["urls"].as_array().unwrap())
        .map(|url| url.as_str().unwrap())
        .collect();
    let turn = door.daemon.turn.port();
    let https = door.https().port();
    assert_eq!(
        urls,
        [
            format!("stun:127.0.0.1:{turn}"),
            format!("turn:127.0.0.1:{turn}?transport=udp"),
            format!("turn:127.0.0.1:{turn}?transport=tcp"),
            format!("turns:127.0.0.1:{https}?transport=tcp"),
        ]
    );
    let with_credentials: Vec<_> = servers
        .iter()
        .filter(|server| server.get("username").is_some())
        .collect();
    assert_eq!(with_credentials.len(), 1, "one username for every TURN URL");
    assert_eq!(with_credentials[0]["urls"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn without_on_https_port_stun_on_the_https_port_is_closed_as_garbage() {
    let door = HttpsDaemon::start("on_https_port = false\n").await;
    let mut binding = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    binding.extend_from_slice(&[7; 12]);
    let mut stream = TcpStream::connect(door.https()).await.unwrap();
    stream.write_all(&binding).await.unwrap();
    closed_within(&mut stream, Instant::now(), Duration::from_secs(1), "STUN").await;
    assert_eq!(
        door.metric("parley_http_port_closed_total{reason=\"garbage\"}")
            .await,
        1
    );
}

#[tokio::test]
async fn doctor_checks_the_https_port_and_says_browsers_refuse_an_untrusted_certificate_issue_11() {
    let door = HttpsDaemon::start("").await;
    let (passed, text) = doctor(&door.daemon.config_path);
    let https = format!("127.0.0.1:{}", door.https().port());
    let turn = format!("127.0.0.1:{}", door.daemon.turn.port());
    let line = |prefix: &str| {
        text.lines()
            .find(|line| line.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?} in:\n{text}"))
            .to_owned()
    };
    assert!(line(&format!("stun udp {turn}")).contains("OK"), "{text}");
    assert!(line(&format!("turn tcp {https}")).contains("OK"), "{text}");
    // The test's certificate is trusted by no system CA: what a browser would see.
    let tls = line(&format!("turn tls {https}"));
    assert!(tls.contains("FAIL"), "{tls}");
    assert!(tls.contains("self-signed"), "{tls}");
    assert!(tls.contains("701"), "{tls}");
    assert!(!passed, "doctor fails while a path is broken");
}

#[tokio::test]
async fn a_generated_self_signed_certificate_is_logged_as_refused_for_turns_issue_11() {
    let mut daemon =
        Daemon::configure("[tls]\nenabled = true\nself_signed = true\n").spawn_without_waiting(&[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = daemon.log();
        if log
            .lines()
            .any(|line| line.contains("WARN") && line.contains("ICE error 701"))
        {
            break;
        }
        if let Some(status) = daemon.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
            panic!("parley exited ({status}):\n{log}");
        }
        assert!(
            Instant::now() < deadline,
            "no start-up warning that browsers refuse turns: with the generated certificate:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
