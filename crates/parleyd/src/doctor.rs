//! `parley doctor`: checks the relay the way a browser elsewhere would use it, from the server
//! itself. For every enabled listener it resolves `turn.public_host`, obtains credentials,
//! allocates, and relays a packet to its own relayed address (out through the relay socket
//! and back in), then prints one plain verdict per listener with what to fix.
//!
//! With `turn.on_https_port` (issue 11) the HTTPS port is checked as browsers on an
//! HTTPS-only network would use it: TURN over TLS (with the system's trust anchors, so a
//! self-signed, expired or misnamed certificate is reported in the words a browser would
//! use) and TURN over TCP; STUN over UDP is checked with a plain Binding.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use parley_config::Config;
use parley_turn::probe::{ProbeError, ProbeTransport, TurnClient};

/// How long each step may take before the verdict is "no answer".
const STEP_TIMEOUT: Duration = Duration::from_secs(3);

/// The result of checking one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    /// One line: what worked, or what broke and what to do.
    pub message: String,
}

impl Verdict {
    fn fail(message: impl Into<String>) -> Verdict {
        Verdict {
            ok: false,
            message: message.into(),
        }
    }
}

/// What a listener check needs.
#[derive(Clone)]
pub struct Target {
    /// "udp", "tcp" or "tls".
    pub transport: &'static str,
    pub address: SocketAddr,
    /// Host name for TLS verification and messages.
    pub host: String,
    pub username: String,
    pub password: String,
    /// The address relayed candidates should carry (`turn.relay_address`).
    pub expected_relay_ip: IpAddr,
    pub tls_roots: Option<Arc<rustls::ClientConfig>>,
}

fn explain(target: &Target, step: &str, error: &ProbeError) -> String {
    let where_ = format!("{} {}", target.transport.to_uppercase(), target.address);
    match error {
        ProbeError::Timeout(_) => match (step, target.transport) {
            ("allocate", "udp") => format!(
                "no answer from {where_}: open UDP port {} in the firewall, and check that {} resolves to this server and parley is running",
                target.address.port(),
                target.host
            ),
            ("allocate", _) => format!("{where_} accepted the connection but did not answer: is another service on this port?"),
            _ => format!(
                "allocated, but a packet sent to the relayed address did not come back: check that turn.relay_address ({}) is this server's address as seen from outside and that UDP ports turn.relay_ports are open in the firewall",
                target.expected_relay_ip
            ),
        },
        ProbeError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => format!(
            "nothing listens on {where_}: start parley, or check turn.listen / turn.tls_listen and turn.{}",
            if target.transport == "tls" { "tls_cert" } else { target.transport }
        ),
        ProbeError::Tls(tls) => match certificate_in_plain_words(tls, &target.host) {
            Some(problem) => format!(
                "{problem}: browsers refuse turns: on {where_} with it (Chromium reports ICE error 701), so people on networks that let only HTTPS out cannot call; install a trusted certificate for {} (tls.cert/tls.key, turn.tls_cert/turn.tls_key, or tls.acme)",
                target.host
            ),
            None => format!(
                "TLS handshake with {where_} failed ({tls}): browsers refuse turns: URLs whose certificate is not valid for {}; configure turn.tls_cert/turn.tls_key or tls.cert/tls.key with a certificate for that name",
                target.host
            ),
        },
        ProbeError::Refused { code: 401, .. } => {
            "the relay refused the credentials: doctor read a different secret than the running daemon uses (turn.secret or <data_dir>/turn_secret), or the clocks differ".to_owned()
        }
        ProbeError::Refused { code: 403, .. } => format!(
            "the relay refused its own relayed address {}: that address is in a range turn.allowed_peer_ranges does not open; set turn.relay_address to the public IP, or allow the range on a LAN",
            target.expected_relay_ip
        ),
        ProbeError::Refused { code: 486, .. } => "allocation quota reached: raise turn.max_allocations or wait for allocations to expire".to_owned(),
        ProbeError::Refused { code: 508, .. } => "no free relay port: widen turn.relay_ports".to_owned(),
        other => format!("{where_}: {step}: {other}"),
    }
}

/// What a browser would say about the server's certificate, from a failed handshake.
pub fn certificate_in_plain_words(error: &std::io::Error, host: &str) -> Option<String> {
    use rustls::CertificateError as Cert;
    let rustls::Error::InvalidCertificate(problem) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())?
    else {
        return None;
    };
    Some(match problem {
        Cert::UnknownIssuer | Cert::BadSignature => {
            "the certificate is self-signed or from an authority browsers do not trust".to_owned()
        }
        Cert::Expired | Cert::ExpiredContext { .. } => "the certificate has expired".to_owned(),
        Cert::NotValidYet | Cert::NotValidYetContext { .. } => {
            "the certificate is not valid yet (check the clock)".to_owned()
        }
        Cert::NotValidForName | Cert::NotValidForNameContext { .. } => {
            format!("the certificate is not issued for {host} (the host of http.public_url)")
        }
        other => format!("the certificate is refused ({other:?})"),
    })
}

/// Sends a STUN Binding request and reads the answer: what a browser does for `stun:` URLs
/// (and, on TCP and TLS, the first thing any TURN client sends).
pub async fn check_binding(target: &Target) -> Verdict {
    let transport = match probe_transport(target) {
        Ok(transport) => transport,
        Err(verdict) => return verdict,
    };
    let mut client = match TurnClient::connect(target.address, transport, STEP_TIMEOUT).await {
        Ok(client) => client,
        Err(error) => return Verdict::fail(explain(target, "connect", &error)),
    };
    match client.binding().await {
        Ok(mapped) => Verdict {
            ok: true,
            message: format!("answered a STUN Binding request: this machine is {mapped} to it"),
        },
        Err(error) => Verdict::fail(explain(target, "allocate", &error)),
    }
}

fn probe_transport(target: &Target) -> Result<ProbeTransport, Verdict> {
    match (target.transport, &target.tls_roots) {
        ("udp", _) => Ok(ProbeTransport::Udp),
        ("tcp", _) => Ok(ProbeTransport::Tcp),
        ("tls", Some(config)) => Ok(ProbeTransport::Tls {
            server_name: target.host.clone(),
            config: config.clone(),
        }),
        (other, _) => Err(Verdict::fail(format!("unknown transport {other}"))),
    }
}

/// Allocates on one listener and relays a packet through its own relayed address.
pub async fn check_listener(target: &Target) -> Verdict {
    let transport = match probe_transport(target) {
        Ok(transport) => transport,
        Err(verdict) => return verdict,
    };
    let started = Instant::now();
    let mut client = match TurnClient::connect(target.address, transport, STEP_TIMEOUT).await {
        Ok(client) => client,
        Err(error) => return Verdict::fail(explain(target, "connect", &error)),
    };
    let relayed = match client.allocate(&target.username, &target.password).await {
        Ok(relayed) => relayed,
        Err(error) => return Verdict::fail(explain(target, "allocate", &error)),
    };
    if relayed.ip() != target.expected_relay_ip {
        return Verdict::fail(format!(
            "allocated {relayed}, but relayed candidates should carry {}: restart parley after changing turn.relay_address",
            target.expected_relay_ip
        ));
    }
    if let Err(error) = client.create_permission(&[relayed]).await {
        let _ = client.refresh(Duration::ZERO).await;
        return Verdict::fail(explain(target, "permission", &error));
    }
    let token = format!("parley-doctor-{}", std::process::id());
    let echoed = async {
        client.send_indication(relayed, token.as_bytes()).await?;
        loop {
            let (from, data) = client.recv_from_peer(STEP_TIMEOUT).await?;
            if from == relayed && data == token.as_bytes() {
                return Ok::<_, ProbeError>(());
            }
        }
    }
    .await;
    let _ = client.refresh(Duration::ZERO).await;
    match echoed {
        Ok(()) => Verdict {
            ok: true,
            message: format!(
                "allocated {relayed} and relayed a packet through it in {} ms",
                started.elapsed().as_millis()
            ),
        },
        Err(error) => Verdict::fail(explain(target, "relay", &error)),
    }
}

/// Trust anchors for TURN over TLS: the system's CA bundle, as browsers would use.
fn system_tls_config() -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for path in [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ] {
        if let Ok(iter) = CertificateDer::pem_file_iter(path) {
            for cert in iter.flatten() {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS client configuration")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The effective TURN secret, read the way the daemon reads it (never generated here).
fn read_secret(config: &Config) -> anyhow::Result<String> {
    if !config.turn.secret.is_empty() {
        return Ok(config.turn.secret.clone());
    }
    let path = config.storage.data_dir.join("turn_secret");
    let secret = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the TURN secret from {}: run doctor as the daemon's user, after parley has started once", path.display()))?;
    Ok(secret.trim().to_owned())
}

/// Runs every check and prints the verdicts; returns whether all passed.
pub async fn run(config: &Config, out: &mut dyn Write) -> anyhow::Result<bool> {
    let turn = &config.turn;
    if !turn.enabled {
        writeln!(
            out,
            "turn: disabled (turn.enabled = false); calls between networks that block each other will fail"
        )?;
        return Ok(true);
    }
    for line in crate::tls::doctor(config) {
        writeln!(out, "{line}")?;
    }
    let secret = read_secret(config)?;
    let host = turn.effective_public_host();
    let (username, password) = parley_turn::mint(&secret, 0, 300, now_unix());
    // (label, transport, host, port, binding only)
    let mut listeners: Vec<(&'static str, &'static str, String, u16, bool)> = Vec::new();
    if turn.udp {
        listeners.push(("stun udp ", "udp", host.clone(), turn.listen.port(), true));
        listeners.push(("turn udp ", "udp", host.clone(), turn.listen.port(), false));
    }
    if turn.tcp {
        listeners.push(("turn tcp ", "tcp", host.clone(), turn.listen.port(), false));
    }
    // Each extra UDP listener is offered to browsers as its own `stun:` and `turn:` URLs on the
    // public host (`relay::listener_urls`), so each is checked the way a browser would use it.
    for extra in &turn.udp_listen_extra {
        listeners.push(("stun udp ", "udp", host.clone(), extra.port(), true));
        listeners.push(("turn udp ", "udp", host.clone(), extra.port(), false));
    }
    if turn.on_https_port {
        // The port browsers are told (`http.public_url`), as they would reach it.
        let (https_host, https_port) = crate::relay::public_https_port(config, config.http.listen);
        let https_host = https_host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if config.tls.enabled {
            listeners.push(("turn tls ", "tls", https_host.clone(), https_port, false));
        }
        listeners.push(("turn tcp ", "tcp", https_host, https_port, false));
    } else {
        writeln!(
            out,
            "turn on the HTTPS port: off (turn.on_https_port = false): networks that let only HTTPS out cannot reach the relay"
        )?;
    }
    // TURN over TLS listens only when a certificate is available (see `tls`).
    let tls_certificate = !turn.tls_cert.as_os_str().is_empty()
        || !config.tls.cert.as_os_str().is_empty()
        || (config.tls.enabled && config.tls.self_signed);
    match turn.tls_listen_addr() {
        Some(tls) if tls_certificate => {
            listeners.push(("turn tls ", "tls", host.clone(), tls.port(), false));
        }
        Some(_) => writeln!(
            out,
            "turn tls  off: no certificate (set turn.tls_cert/turn.tls_key or tls.cert/tls.key to offer turns: URLs)"
        )?,
        None if turn.on_https_port => {}
        None => writeln!(out, "turn tls  off (turn.tls_listen = \"\")")?,
    }
    let tls_roots = Some(system_tls_config()?);
    let mut all_ok = true;
    for (label, transport, host, port, binding_only) in listeners {
        let address = match tokio::net::lookup_host((host.as_str(), port))
            .await
            .map(|mut a| a.next())
        {
            Ok(Some(address)) => address,
            _ => {
                writeln!(
                    out,
                    "{label}{host}:{port}  FAIL  {host} does not resolve here: fix turn.public_host (or http.public_url) or DNS"
                )?;
                all_ok = false;
                continue;
            }
        };
        let target = Target {
            transport,
            address,
            host: host.clone(),
            username: username.clone(),
            password: password.clone(),
            expected_relay_ip: turn.effective_relay_address(),
            tls_roots: tls_roots.clone(),
        };
        let verdict = if binding_only {
            check_binding(&target).await
        } else {
            check_listener(&target).await
        };
        let word = if verdict.ok { "OK  " } else { "FAIL" };
        writeln!(out, "{label}{host}:{port}  {word}  {}", verdict.message)?;
        if transport == "tls" && !verdict.ok && tls_listener_missing(&verdict) {
            writeln!(
                out,
                "         (TURN over TLS only listens when a certificate is available: turn.tls_cert/turn.tls_key or tls.cert/tls.key)"
            )?;
        }
        all_ok &= verdict.ok;
    }
    Ok(all_ok)
}

fn tls_listener_missing(verdict: &Verdict) -> bool {
    verdict.message.starts_with("nothing listens")
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use parley_turn::{PeerPolicy, Relay, RelayOptions, RelaySockets};

    async fn relay(allowed: &[&str]) -> (Relay, SocketAddr) {
        let mut options = RelayOptions::new("s".into(), IpAddr::from([127, 0, 0, 1]));
        options.peer_policy = PeerPolicy::from_ranges(allowed).unwrap();
        let sockets = RelaySockets::bind("127.0.0.1:0".parse().unwrap(), true, 1, true).unwrap();
        let address = sockets.udp_addr().unwrap();
        (Relay::start(options, sockets).await.unwrap(), address)
    }

    fn target(transport: &'static str, address: SocketAddr, secret: &str) -> Target {
        let (username, password) = parley_turn::mint(secret, 0, 300, now_unix());
        Target {
            transport,
            address,
            host: "127.0.0.1".into(),
            username,
            password,
            expected_relay_ip: IpAddr::from([127, 0, 0, 1]),
            tls_roots: None,
        }
    }

    #[tokio::test]
    async fn healthy_relay_passes_over_udp_and_tcp() {
        let (relay, address) = relay(&["127.0.0.0/8"]).await;
        for transport in ["udp", "tcp"] {
            let verdict = check_listener(&target(transport, address, "s")).await;
            assert!(verdict.ok, "{transport}: {}", verdict.message);
            assert!(verdict.message.contains("relayed a packet"));
        }
        relay.shutdown().await;
    }

    #[tokio::test]
    async fn wrong_secret_is_explained() {
        let (relay, address) = relay(&["127.0.0.0/8"]).await;
        let verdict = check_listener(&target("udp", address, "other")).await;
        assert!(!verdict.ok);
        assert!(
            verdict.message.contains("different secret"),
            "{}",
            verdict.message
        );
        relay.shutdown().await;
    }

    #[tokio::test]
    async fn relay_address_refused_by_policy_is_explained() {
        let (relay, address) = relay(&[]).await;
        let verdict = check_listener(&target("udp", address, "s")).await;
        assert!(!verdict.ok);
        assert!(
            verdict.message.contains("turn.relay_address"),
            "{}",
            verdict.message
        );
        relay.shutdown().await;
    }

    #[tokio::test]
    async fn wrong_relay_address_is_explained() {
        let (relay, address) = relay(&["127.0.0.0/8"]).await;
        let mut wrong = target("udp", address, "s");
        wrong.expected_relay_ip = "203.0.113.1".parse().unwrap();
        let verdict = check_listener(&wrong).await;
        assert!(!verdict.ok);
        assert!(
            verdict.message.contains("203.0.113.1"),
            "{}",
            verdict.message
        );
        relay.shutdown().await;
    }

    #[tokio::test]
    async fn stun_binding_is_answered_over_udp_and_tcp() {
        let (relay, address) = relay(&["127.0.0.0/8"]).await;
        for transport in ["udp", "tcp"] {
            let verdict = check_binding(&target(transport, address, "s")).await;
            assert!(verdict.ok, "{transport}: {}", verdict.message);
            assert!(
                verdict.message.contains("127.0.0.1:"),
                "{}",
                verdict.message
            );
        }
        relay.shutdown().await;
    }

    fn handshake_error(problem: rustls::CertificateError) -> std::io::Error {
        // How tokio-rustls reports a refused certificate.
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(problem),
        )
    }

    #[test]
    fn certificate_problems_are_said_as_a_browser_would_issue_11() {
        use rustls::CertificateError as Cert;
        let said =
            |problem| certificate_in_plain_words(&handshake_error(problem), "parley.example");
        assert!(said(Cert::UnknownIssuer).unwrap().contains("self-signed"));
        assert!(said(Cert::Expired).unwrap().contains("expired"));
        let wrong_name = said(Cert::NotValidForName).unwrap();
        assert!(
            wrong_name.contains("not issued for parley.example"),
            "{wrong_name}"
        );
        let other = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(certificate_in_plain_words(&other, "h"), None);
    }

    #[test]
    fn a_refused_certificate_names_error_701_and_the_fix() {
        let mut tls = target("tls", "127.0.0.1:443".parse().unwrap(), "s");
        tls.host = "parley.example".into();
        let error = ProbeError::Tls(handshake_error(rustls::CertificateError::UnknownIssuer));
        let message = explain(&tls, "connect", &error);
        assert!(message.contains("701"), "{message}");
        assert!(message.contains("only HTTPS"), "{message}");
        assert!(message.contains("tls.cert"), "{message}");
    }

    #[tokio::test]
    async fn closed_ports_are_explained() {
        // A bound but unused UDP socket drops what it gets, like a firewall; a closed TCP port refuses.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let verdict = check_listener(&target("udp", silent.local_addr().unwrap(), "s")).await;
        assert!(!verdict.ok);
        assert!(verdict.message.contains("firewall"), "{}", verdict.message);

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = closed.local_addr().unwrap();
        drop(closed);
        let verdict = check_listener(&target("tcp", address, "s")).await;
        assert!(!verdict.ok);
        assert!(
            verdict.message.contains("nothing listens"),
            "{}",
            verdict.message
        );
    }
}
