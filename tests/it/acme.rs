//! `tls.acme` against a real ACME server: Debian's `pebble`, with `pebble-challtestsrv` as its
//! DNS server answering 127.0.0.1 for every name, so `parley.test` resolves to the daemon.
//!
//! Each test starts its own pebble (its directory served with a pair from a test CA that the
//! daemon trusts through `tls.acme_ca_roots`), points pebble's TLS-ALPN-01 or HTTP-01 port at
//! the daemon, and checks what a client sees: a chain that verifies against the root pebble
//! issues from (fetched from its management port) for `parley.test`. Processes are killed and
//! the temporary directory removed on drop, also when a test fails.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::daemon::{Daemon, free_port, parley};
use crate::tls_client::{self, leaf};

const NAME: &str = "parley.test";

/// A pebble and its DNS server, killed on drop.
struct Pebble {
    dir: tempfile::TempDir,
    children: Vec<Child>,
    directory_port: u16,
    management_port: u16,
    /// The test CA that signed pebble's own HTTPS pair (what `tls.acme_ca_roots` trusts).
    ca_pem: PathBuf,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn require(binary: &str) {
    assert!(
        Path::new(binary).exists(),
        "{binary} is missing: `apt-get install pebble` (the ACME tests need Debian's pebble)"
    );
}

impl Pebble {
    /// `tls_port` and `http_port` are where pebble validates TLS-ALPN-01 and HTTP-01;
    /// `validity_secs` 0 keeps pebble's default (five years).
    fn start(tls_port: u16, http_port: u16, validity_secs: u64) -> Pebble {
        require("/usr/bin/pebble");
        require("/usr/bin/pebble-challtestsrv");
        let dir = tempfile::tempdir().expect("tempdir");
        // A CA and a leaf for 127.0.0.1 signed by it: pebble's directory HTTPS.
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Parley test ACME directory CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().expect("key");
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("params")
            .signed_by(&leaf_key, &issuer)
            .expect("leaf");
        let ca_pem = dir.path().join("ca.pem");
        std::fs::write(&ca_pem, ca.pem()).expect("write");
        std::fs::write(dir.path().join("cert.pem"), leaf.pem()).expect("write");
        std::fs::write(dir.path().join("key.pem"), leaf_key.serialize_pem()).expect("write");

        let directory_port = free_port();
        let management_port = free_port();
        let dns_port = free_port();
        let dns_management_port = free_port();
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{directory_port}"),
                "managementListenAddress": format!("127.0.0.1:{management_port}"),
                "certificate": dir.path().join("cert.pem"),
                "privateKey": dir.path().join("key.pem"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": validity_secs,
            }
        });
        std::fs::write(dir.path().join("pebble.json"), config.to_string()).expect("write");

        let logs = dir.path().to_owned();
        let log =
            |name: &str| Stdio::from(std::fs::File::create(logs.join(name)).expect("log file"));
        let mut pebble = Pebble {
            children: Vec::new(),
            directory_port,
            management_port,
            ca_pem,
            dir,
        };
        let dns = Command::new("/usr/bin/pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_management_port}")])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn();
        let dns = match dns {
            Ok(child) => child,
            Err(error) => panic!("pebble-challtestsrv does not start: {error}"),
        };
        pebble.children.push(dns);
        let server = Command::new("/usr/bin/pebble")
            .arg("-config")
            .arg(pebble.dir.path().join("pebble.json"))
            .args([
                "-dnsserver",
                &format!("127.0.0.1:{dns_port}"),
                "-strict=false",
            ])
            .env("PEBBLE_VA_NOSLEEP", "1")
            // Pebble refuses 5 % of nonces by default to exercise client retries; that is its
            // test, not ours, and it would make these flaky.
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .expect("pebble starts");
        pebble.children.push(server);
        pebble.wait_ready();
        pebble
    }

    fn log(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!(
            "pebble:\n{}{}\nchalltestsrv:\n{}{}",
            read("pebble.log"),
            read("pebble.err"),
            read("challtestsrv.log"),
            read("challtestsrv.err")
        )
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for child in &mut self.children {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "pebble or its DNS server exited ({status}):\n{}",
                        self.log()
                    );
                }
            }
            if self.log().contains("ACME directory available")
                && std::net::TcpStream::connect(("127.0.0.1", self.directory_port)).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pebble not ready in 20 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.directory_port)
    }

    /// Certificates pebble has issued so far, from its log.
    fn issued(&self) -> usize {
        self.log().matches("Issued certificate serial").count()
    }

    /// The root pebble issues from (it changes at every start), from its management port.
    async fn issuing_root(&self) -> CertificateDer<'static> {
        let ca = CertificateDer::from_pem_file(&self.ca_pem).expect("test CA");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).expect("add");
        let body = https_get(
            SocketAddr::from(([127, 0, 0, 1], self.management_port)),
            "127.0.0.1",
            "/roots/0",
            roots,
        )
        .await;
        CertificateDer::from_pem_slice(body.as_bytes()).expect("a PEM root from /roots/0")
    }
}

/// A verified TLS connection to `address` for `name`.
async fn connect(
    address: SocketAddr,
    name: &str,
    roots: rustls::RootCertStore,
) -> std::io::Result<TlsStream<TcpStream>> {
    tls_client::connect(address, name, &tls_client::trusting(roots)).await
}

/// One request on an open connection (keep-alive); returns the response body.
async fn request(
    stream: &mut TlsStream<TcpStream>,
    host: &str,
    path: &str,
) -> std::io::Result<String> {
    let text = tls_client::get(stream, host, path).await?;
    if !text.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("not 200: {text}")));
    }
    let (_, body) = text.split_once("\r\n\r\n").expect("a complete response");
    Ok(body.to_owned())
}

async fn https_get(
    address: SocketAddr,
    name: &str,
    path: &str,
    roots: rustls::RootCertStore,
) -> String {
    let mut stream = connect(address, name, roots).await.expect("TLS to pebble");
    request(&mut stream, name, path).await.expect("GET")
}

/// The daemon for `parley.test`, ACME on, trusting pebble's directory. `extra` adds TOML.
fn acme_daemon(pebble: &Pebble, daemon: Daemon, extra: &str) -> Daemon {
    let config = std::fs::read_to_string(&daemon.config_path).expect("config");
    let http_port = daemon.http.port();
    let added = format!(
        "[http]\npublic_url = \"https://{NAME}:{http_port}\"\n{extra}\n[log]\nlevel = \"info\"\n[tls]\nenabled = true\nacme = true\nacme_email = \"admin@example.org\"\nacme_directory = \"{}\"\nacme_ca_roots = \"{}\"\n",
        pebble.directory(),
        pebble.ca_pem.display()
    );
    std::fs::write(&daemon.config_path, merge(&config, &added)).expect("config");
    daemon
}

/// The harness merges repeated sections only when it writes the config: do the same here.
fn merge(base: &str, extra: &str) -> String {
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    let mut current = String::new();
    for line in base.lines().chain(extra.lines()) {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            current = trimmed.to_owned();
            if !sections.iter().any(|(name, _)| *name == current) {
                sections.push((current.clone(), Vec::new()));
            }
        } else if !trimmed.is_empty() {
            let key = trimmed.split('=').next().unwrap_or("").trim().to_owned();
            let lines = &mut sections
                .iter_mut()
                .find(|(name, _)| *name == current)
                .expect("keys follow a section")
                .1;
            lines.retain(|l| l.split('=').next().unwrap_or("").trim() != key);
            lines.push(line.to_owned());
        }
    }
    sections
        .into_iter()
        .map(|(name, lines)| format!("{name}\n{}\n", lines.join("\n")))
        .collect()
}

/// Waits until a verified handshake for `parley.test` against `root` succeeds; returns the leaf.
async fn wait_trusted(
    daemon: &mut Daemon,
    pebble: &Pebble,
    root: &CertificateDer<'static>,
    within: Duration,
) -> Vec<u8> {
    let deadline = Instant::now() + within;
    loop {
        daemon.assert_running();
        if let Ok(stream) = connect(daemon.http, NAME, roots(root)).await {
            return leaf(&stream);
        }
        assert!(
            Instant::now() < deadline,
            "no certificate trusted by pebble's root within {within:?}\nparley:\n{}\n{}",
            daemon.log(),
            pebble.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A daemon (configured with `extra`) that gets its certificate from a pebble validating
/// TLS-ALPN-01 on the daemon's HTTPS port (HTTP-01 goes nowhere), certificates valid
/// `validity_secs` (0: pebble's default). Returns pebble, the root it issues from, the daemon
/// and the leaf it serves once a verified handshake succeeds (within 60 s).
async fn tls_alpn_01_daemon(
    extra: &str,
    validity_secs: u64,
) -> (Pebble, CertificateDer<'static>, Daemon, Vec<u8>) {
    let daemon = Daemon::configure(extra);
    let pebble = Pebble::start(daemon.http.port(), free_port(), validity_secs);
    let root = pebble.issuing_root().await;
    let mut daemon = acme_daemon(&pebble, daemon, "").spawn_without_waiting(&[]);
    let issued = wait_trusted(&mut daemon, &pebble, &root, Duration::from_secs(60)).await;
    (pebble, root, daemon, issued)
}

fn roots(root: &CertificateDer<'static>) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).expect("add root");
    roots
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("exists")
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn tls_alpn_01_gets_a_certificate_served_at_once_and_reused_after_a_restart() {
    let (pebble, root, mut daemon, issued) = tls_alpn_01_daemon("", 0).await;
    assert_eq!(pebble.issued(), 1, "{}", pebble.log());
    let log = daemon.log();
    assert!(
        log.contains("acme: requesting a certificate for parley.test"),
        "{log}"
    );
    assert!(log.contains("challenge TLS-ALPN-01"), "{log}");
    assert!(
        log.contains("acme: certificate for parley.test issued by"),
        "{log}"
    );

    // Stored privately.
    let acme_dir = daemon.data_dir().join("tls/acme");
    assert_eq!(mode(&acme_dir), 0o700);
    for file in ["cert.pem", "key.pem", "account.json"] {
        assert_eq!(mode(&acme_dir.join(file)), 0o600, "{file}");
    }

    // /metrics names the issuer and the name; doctor says how long is left.
    let mut stream = connect(daemon.http, NAME, roots(&root)).await.expect("TLS");
    let metrics = request(&mut stream, NAME, "/metrics")
        .await
        .expect("metrics");
    assert!(
        metrics.contains("parley_tls_certificate_info{issuer=\"CN=Pebble Intermediate CA"),
        "{metrics}"
    );
    assert!(metrics.contains("names=\"parley.test\"} 1"), "{metrics}");
    assert!(
        metrics.contains("parley_tls_certificate_expiry_seconds "),
        "{metrics}"
    );
    let doctor = parley(Some(&daemon.config_path), &["doctor"], None);
    let doctor = String::from_utf8_lossy(&doctor.stdout).to_string();
    assert!(doctor.contains("tls (acme): ok, "), "{doctor}");
    assert!(doctor.contains("days left"), "{doctor}");

    // A restart serves the stored certificate from the first handshake without asking pebble.
    let status = daemon.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(15));
    assert!(status.success(), "{}", daemon.log());
    std::fs::remove_file(daemon.dir.path().join("daemon.log")).expect("rotate the log");
    let mut daemon = daemon.spawn_without_waiting(&[]);
    let again = wait_trusted(&mut daemon, &pebble, &root, Duration::from_secs(30)).await;
    assert_eq!(again, issued, "the stored certificate is served again");
    // Give the ACME task time to decide; it must decide to wait.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon
        .log()
        .contains("acme: the certificate for parley.test is valid until")
    {
        assert!(Instant::now() < deadline, "{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !daemon.log().contains("acme: requesting"),
        "{}",
        daemon.log()
    );
    assert_eq!(pebble.issued(), 1, "no second order: {}", pebble.log());
}

#[tokio::test]
async fn http_01_on_the_redirect_listener_gets_a_certificate_and_redirects_plain_http() {
    let redirect_port = free_port();
    let daemon = Daemon::configure("");
    // Pebble validates HTTP-01 on the redirect listener; TLS-ALPN-01 goes nowhere.
    let pebble = Pebble::start(free_port(), redirect_port, 0);
    let root = pebble.issuing_root().await;
    let mut daemon = acme_daemon(
        &pebble,
        daemon,
        &format!("redirect_listen = \"127.0.0.1:{redirect_port}\""),
    )
    .spawn_without_waiting(&[]);

    wait_trusted(&mut daemon, &pebble, &root, Duration::from_secs(60)).await;
    assert!(
        daemon.log().contains("challenge HTTP-01"),
        "{}",
        daemon.log()
    );
    assert_eq!(pebble.issued(), 1);

    // Anything else on the plain port is sent to the HTTPS URL, path and query kept.
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", redirect_port)).expect("connect");
    use std::io::{Read, Write};
    plain
        .write_all(b"GET /some/page?x=1 HTTP/1.1\r\nhost: parley.test\r\nconnection: close\r\n\r\n")
        .expect("write");
    let mut response = String::new();
    plain.read_to_string(&mut response).expect("read");
    assert!(response.starts_with("HTTP/1.1 308"), "{response}");
    let location = format!(
        "location: https://{NAME}:{}/some/page?x=1",
        daemon.http.port()
    );
    assert!(
        response.to_ascii_lowercase().contains(&location),
        "{response}"
    );
}

#[tokio::test]
async fn a_short_lived_certificate_is_renewed_and_swapped_while_a_connection_stays_open() {
    // 30 s certificates: renewal starts at two thirds of the lifetime, 20 s after issuance.
    let (pebble, root, daemon, first) =
        tls_alpn_01_daemon("[http]\nheader_timeout_secs = 300", 30).await;

    let mut open = connect(daemon.http, NAME, roots(&root)).await.expect("TLS");
    assert_eq!(leaf(&open), first);
    request(&mut open, NAME, "/healthz").await.expect("healthz");

    let deadline = Instant::now() + Duration::from_secs(60);
    let second = loop {
        let now = connect(daemon.http, NAME, roots(&root))
            .await
            .map(|s| leaf(&s));
        match now {
            Ok(leaf) if leaf != first => break leaf,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "not renewed within 60 s:\n{}\n{}",
            daemon.log(),
            pebble.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_ne!(second, first);
    assert!(pebble.issued() >= 2);
    assert!(
        daemon
            .log()
            .contains("the stored certificate is due for renewal"),
        "{}",
        daemon.log()
    );
    // The connection opened before the swap still works, with its own certificate.
    request(&mut open, NAME, "/healthz")
        .await
        .expect("the open connection survived the renewal");
    assert_eq!(leaf(&open), first);
}

/// Waits for `text` in the daemon's log.
async fn wait_log(daemon: &mut Daemon, text: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        daemon.assert_running();
        let log = daemon.log();
        if log.contains(text) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "{text:?} not logged within {within:?}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `/readyz` over TLS without checking the certificate (it is the self-signed one).
async fn readyz_on_self_signed(address: SocketAddr) -> String {
    let mut stream = tls_client::connect(address, NAME, &tls_client::accepting_any())
        .await
        .expect("TLS on the self-signed certificate");
    request(&mut stream, NAME, "/readyz")
        .await
        .expect("/readyz answers 200")
}

#[tokio::test]
async fn failures_keep_the_daemon_serving_and_say_what_to_fix() {
    // The name does not lead to this daemon: pebble validates TLS-ALPN-01 on a dead port.
    let daemon = Daemon::configure("");
    let pebble = Pebble::start(free_port(), free_port(), 0);
    let mut daemon = acme_daemon(&pebble, daemon, "").spawn_without_waiting(&[]);
    let log = wait_log(
        &mut daemon,
        "acme: could not get a certificate",
        Duration::from_secs(60),
    )
    .await;
    assert!(
        log.contains("the ACME server could not validate parley.test"),
        "{log}"
    );
    assert!(
        log.contains("Check that the DNS name parley.test points at this server and that port 443 (http.listen) is reachable"),
        "{log}"
    );
    assert!(
        log.contains("still serving the self-signed certificate; next attempt in 1 min"),
        "{log}"
    );
    assert!(
        readyz_on_self_signed(daemon.http)
            .await
            .contains("\"ready\":true")
    );
    assert_eq!(pebble.issued(), 0);
    let doctor = parley(Some(&daemon.config_path), &["doctor"], None);
    let doctor = String::from_utf8_lossy(&doctor.stdout).to_string();
    assert!(
        doctor.contains("tls (acme): WARNING no certificate issued yet"),
        "{doctor}"
    );
    drop(daemon);

    // No ACME server at all.
    let daemon = Daemon::configure("");
    let dead = format!("https://127.0.0.1:{}/dir", free_port());
    let config = std::fs::read_to_string(&daemon.config_path).expect("config");
    let added = format!(
        "[http]\npublic_url = \"https://{NAME}:{}\"\n[log]\nlevel = \"info\"\n[tls]\nenabled = true\nacme = true\nacme_directory = \"{dead}\"\n",
        daemon.http.port()
    );
    std::fs::write(&daemon.config_path, merge(&config, &added)).expect("config");
    let mut daemon = daemon.spawn_without_waiting(&[]);
    let log = wait_log(
        &mut daemon,
        "acme: could not get a certificate",
        Duration::from_secs(60),
    )
    .await;
    assert!(
        log.contains(&format!("cannot talk to the ACME server at {dead}")),
        "{log}"
    );
    assert!(log.contains("tls.acme_directory"), "{log}");
    assert!(
        readyz_on_self_signed(daemon.http)
            .await
            .contains("\"ready\":true")
    );
}
