//! Certificate reload of the real daemon: replace the files, send SIGHUP (or just wait), and a
//! new TLS handshake presents the new certificate while an already open connection keeps
//! working. A broken replacement keeps the old certificate and the daemon alive.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::daemon::Daemon;
use crate::tls_client::{self, leaf};

/// Shorter than the daemon's 2 s file poll plus its settle interval, so a reload seen within
/// this time was triggered by SIGHUP, not by the file watcher.
const SIGHUP_DEADLINE: Duration = Duration::from_millis(1500);

struct Pair {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

fn new_pair(name: &str) -> Pair {
    let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()])
        .expect("rcgen makes a certificate");
    Pair {
        cert_pem: certified.cert.pem(),
        key_pem: certified.signing_key.serialize_pem(),
        der: certified.cert.der().to_vec(),
    }
}

/// Writes both files the way certificate tools do: a new file renamed over the old one.
fn install(pair: &Pair, cert: &Path, key: &Path) {
    for (contents, path) in [(&pair.cert_pem, cert), (&pair.key_pem, key)] {
        let temporary = path.with_extension("new");
        std::fs::write(&temporary, contents).expect("write the new file");
        std::fs::rename(&temporary, path).expect("rename it into place");
    }
}

/// The shared harness's daemon, configured for HTTPS with certificate files the test replaces.
struct TlsDaemon {
    daemon: Daemon,
    cert: PathBuf,
    key: PathBuf,
    _certificates: tempfile::TempDir,
}

impl TlsDaemon {
    async fn start(first: &Pair) -> TlsDaemon {
        let certificates = tempfile::tempdir().expect("tempdir");
        let cert = certificates.path().join("cert.pem");
        let key = certificates.path().join("key.pem");
        install(first, &cert, &key);
        let daemon = Daemon::configure(&format!(
            "[tls]\nenabled = true\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ))
        .spawn_without_waiting(&[]);
        let mut started = TlsDaemon {
            daemon,
            cert,
            key,
            _certificates: certificates,
        };
        started.wait_ready().await;
        started
    }

    fn address(&self) -> SocketAddr {
        self.daemon.http
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.assert_alive();
            if let Ok(mut stream) = connect(self.address()).await
                && get_healthz(&mut stream).await.is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "parley not serving HTTPS within 30 s:\n{}",
                self.daemon.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn sighup(&self) {
        nix::sys::signal::kill(self.daemon.pid(), nix::sys::signal::Signal::SIGHUP)
            .expect("send SIGHUP");
    }

    fn assert_alive(&mut self) {
        let child = self.daemon.child.as_mut().expect("started");
        if let Some(status) = child.try_wait().expect("poll the child") {
            panic!("parley exited ({status}):\n{}", self.daemon.log());
        }
    }

    /// Waits for a fresh handshake to present `expected`, returning how long it took.
    async fn wait_for_certificate(&self, expected: &[u8], within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let stream = connect(self.address()).await.expect("TLS handshake");
            if leaf(&stream) == expected {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "new handshakes still present the old certificate after {within:?}:\n{}",
                self.daemon.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn connect(address: SocketAddr) -> std::io::Result<TlsStream<TcpStream>> {
    tls_client::connect(address, "localhost", &tls_client::accepting_any()).await
}

/// One keep-alive `GET /healthz` on an open connection; returns the status code.
async fn get_healthz(stream: &mut TlsStream<TcpStream>) -> std::io::Result<u16> {
    let text = tls_client::get(stream, "localhost", "/healthz").await?;
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {text}")))
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_open_connections_stay() {
    let first = new_pair("first.example.org");
    let second = new_pair("second.example.org");
    let mut daemon = TlsDaemon::start(&first).await;

    let mut open = connect(daemon.address()).await.expect("TLS handshake");
    assert_eq!(leaf(&open), first.der);
    assert_eq!(get_healthz(&mut open).await.expect("healthz"), 200);

    install(&second, &daemon.cert, &daemon.key);
    daemon.sighup();
    let took = daemon
        .wait_for_certificate(&second.der, SIGHUP_DEADLINE)
        .await;
    eprintln!("certificate reloaded {took:?} after SIGHUP");
    daemon.assert_alive();

    // The connection opened before the reload is still up and still served.
    assert_eq!(
        get_healthz(&mut open)
            .await
            .expect("the open connection survived the reload"),
        200
    );
    assert_eq!(leaf(&open), first.der, "it keeps its own session");
}

#[tokio::test]
async fn changed_files_are_picked_up_without_a_signal() {
    let first = new_pair("first.example.org");
    let second = new_pair("second.example.org");
    let daemon = TlsDaemon::start(&first).await;
    install(&second, &daemon.cert, &daemon.key);
    // Two polls of 2 s (one to see the change, one to see it settled), plus slack.
    let took = daemon
        .wait_for_certificate(&second.der, Duration::from_secs(10))
        .await;
    eprintln!("certificate reloaded {took:?} after the files changed");
}

#[tokio::test]
async fn a_broken_replacement_keeps_the_old_certificate() {
    let first = new_pair("first.example.org");
    let second = new_pair("second.example.org");
    let mut daemon = TlsDaemon::start(&first).await;
    // Only the certificate replaced: its key is still the old one.
    let temporary = daemon.cert.with_extension("new");
    std::fs::write(&temporary, &second.cert_pem).expect("write");
    std::fs::rename(&temporary, &daemon.cert).expect("rename");
    daemon.sighup();
    tokio::time::sleep(Duration::from_millis(500)).await;
    daemon.assert_alive();
    let stream = connect(daemon.address()).await.expect("TLS still works");
    assert_eq!(leaf(&stream), first.der);

    // Completing the pair is then picked up by the next SIGHUP.
    install(&second, &daemon.cert, &daemon.key);
    daemon.sighup();
    daemon
        .wait_for_certificate(&second.der, SIGHUP_DEADLINE)
        .await;
}
