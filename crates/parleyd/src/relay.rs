//! Wiring of the embedded TURN/STUN relay (crate `parley-turn`): config → `RelayOptions`,
//! binding before readiness, `GET /api/v1/ice-servers`, the ICE servers of the socket
//! `session` event, `/readyz` lines and `/metrics` text.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::Json;
use axum::extract::State;
use axum::routing::get;
use parley_config::Config;
use parley_turn::{
    FrontDoor, ListenerStatus, PeerPolicy, Relay, RelayOptions, RelaySockets, Secrets, Transport,
};
use serde::Serialize;

use crate::http::auth::AuthUser;
use crate::state::AppState;

/// The realm of the long-term credentials; clients learn it from the server.
const REALM: &str = "parley";

/// One entry of `iceServers` (the browser's `RTCIceServer`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Body of `GET /api/v1/ice-servers`; the socket `session` event carries the same fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IceServersReply {
    pub ice_servers: Vec<IceServer>,
    pub ice_transport_policy: &'static str,
    pub ttl_secs: u64,
}

/// The running relay and what clients need to reach it.
pub struct RelayService {
    relay: tokio::sync::Mutex<Option<Relay>>,
    listeners: Vec<ListenerStatus>,
    /// The listeners' URLs under `turn.public_host`, with the bound ports.
    stun_urls: Vec<String>,
    turn_urls: Vec<String>,
    /// TURN connections the HTTP listener accepts go here (`turn.on_https_port`).
    front_door: Option<FrontDoor>,
}

impl std::fmt::Debug for RelayService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayService")
            .field("listeners", &self.listeners)
            .finish()
    }
}

fn host_for_url(host: &str) -> String {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => host.to_owned(),
    }
}

/// The STUN and TURN URLs under `public_host`, in the order browsers should prefer them: STUN
/// and TURN on UDP, TURN over TCP on the relay's port, TURN over TLS on the HTTPS port
/// (`https_port`: the public host and port the web site is reached at, issue 11), then a
/// separate TURN-over-TLS listener. UDP carries media best; TCP on 3478 passes most
/// firewalls that block UDP; TLS on 443 passes those that let only HTTPS out.
pub fn listener_urls(
    public_host: &str,
    listeners: &[ListenerStatus],
    https_port: Option<(&str, u16)>,
) -> (Vec<String>, Vec<String>) {
    let host = host_for_url(public_host);
    let mut stun = Vec::new();
    let mut turn = Vec::new();
    let of = |transport| listeners.iter().filter(move |l| l.transport == transport);
    for listener in of(Transport::Udp) {
        let port = listener.address.port();
        stun.push(format!("stun:{host}:{port}"));
        turn.push(format!("turn:{host}:{port}?transport=udp"));
    }
    for listener in of(Transport::Tcp) {
        let port = listener.address.port();
        turn.push(format!("turn:{host}:{port}?transport=tcp"));
    }
    if let Some((https_host, port)) = https_port {
        let https_host = host_for_url(https_host);
        turn.push(format!("turns:{https_host}:{port}?transport=tcp"));
    }
    for listener in of(Transport::Tls) {
        let port = listener.address.port();
        turn.push(format!("turns:{host}:{port}?transport=tcp"));
    }
    (stun, turn)
}

/// The daemon's HTTP(S) port as the relay's front door (`turn.on_https_port`, issue 11).
#[derive(Debug, Clone, Copy)]
pub struct HttpsPort {
    /// Where `http.listen` is bound.
    pub bound: SocketAddr,
    /// Whether it speaks TLS (`tls.enabled`): only then are `turns:` URLs offered for it.
    pub tls: bool,
    /// Whether its certificate is the generated self-signed one, which browsers refuse for
    /// `turns:` without asking (there is no page to click through).
    pub self_signed: bool,
}

/// The host and port browsers reach the HTTPS port at: those of `http.public_url` (443 when
/// it names none), else `turn.public_host` (or the relay's address) and the bound port.
pub fn public_https_port(config: &Config, bound: SocketAddr) -> (String, u16) {
    if let Ok(uri) = config.http.public_url.trim().parse::<axum::http::Uri>()
        && let Some(host) = uri.host()
        && !host.is_empty()
    {
        let default_port = if uri.scheme_str() == Some("http") {
            80
        } else {
            443
        };
        return (host.to_owned(), uri.port_u16().unwrap_or(default_port));
    }
    (config.turn.effective_public_host(), bound.port())
}

/// What an admin reads when browsers will refuse `turns:` on the HTTPS port.
pub const SELF_SIGNED_TURNS: &str = "the HTTPS certificate is self-signed: browsers refuse turns: (TURN over TLS) with it without asking (Chromium reports ICE error 701), so people on networks that let only HTTPS out cannot call until a trusted certificate is installed (tls.cert/tls.key or tls.acme)";

/// Maps the `[turn]` section to the relay's options.
pub fn relay_options(config: &Config, secret: &str) -> anyhow::Result<RelayOptions> {
    let turn = &config.turn;
    let relay_address = turn.effective_relay_address();
    let mut options = RelayOptions::new(secret.to_owned(), relay_address);
    options.realm = REALM.to_owned();
    options.secrets = Secrets::new(secret.to_owned(), turn.previous_secrets.clone());
    options.peer_policy =
        PeerPolicy::from_ranges(&turn.allowed_peer_ranges).context("turn.allowed_peer_ranges")?;
    // Relay sockets bind where the listener binds; `relay_address` is only what candidates
    // carry (behind 1:1 NAT the public address is not a local one). A wildcard listener
    // binds relays on the wildcard of the relay address's family.
    options.relay_bind = if turn.listen.ip().is_unspecified() {
        match relay_address {
            IpAddr::V4(_) => IpAddr::from([0, 0, 0, 0]),
            IpAddr::V6(_) => IpAddr::from([0u16; 8]),
        }
    } else {
        turn.listen.ip()
    };
    options.relay_ports = parley_turn::parse_port_range(&turn.relay_ports)?;
    options.relay_address_v6 = turn.relay_address_v6.parse().ok();
    options.max_allocations = turn.max_allocations as usize;
    options.max_allocations_per_user = turn.max_allocations_per_user as usize;
    options.bandwidth_limit_kbps = u64::from(turn.bandwidth_limit_kbps);
    options.max_stream_connections = (turn.max_allocations as usize).saturating_mul(2).max(64);
    options.stream_timeouts = parley_turn::StreamTimeouts {
        handshake: std::time::Duration::from_secs(turn.handshake_timeout_secs),
        idle: std::time::Duration::from_secs(turn.idle_timeout_secs),
    };
    Ok(options)
}

/// Binds every relay listener and starts the relay; `None` when `turn.enabled = false`.
/// Called by `serve` before it reports readiness. `tls` is the TURN-over-TLS certificate
/// configuration, when one is available.
pub async fn start(
    config: &Config,
    secret: &str,
    tls: Option<Arc<rustls::ServerConfig>>,
    https_port: HttpsPort,
) -> anyhow::Result<Option<Arc<RelayService>>> {
    let turn = &config.turn;
    if !turn.enabled {
        return Ok(None);
    }
    let options = relay_options(config, secret)?;
    // One UDP socket: the relay runs on one thread (see `parley_turn::Relay`), where more
    // sockets on the port would only add tasks.
    let mut sockets = RelaySockets::bind(turn.listen, turn.udp, 1, turn.tcp)?;
    // Listed after the main UDP listener, so their URLs follow the 3478 ones.
    for address in &turn.udp_listen_extra {
        sockets.bind_udp_extra(*address)?;
    }
    if let (Some(address), Some(tls)) = (turn.tls_listen_addr(), tls) {
        sockets.bind_tls(address, tls)?;
    }
    if turn.on_https_port {
        sockets.add_front_door(https_port.bound);
    }
    let relay = Relay::start(options, sockets).await?;
    let listeners = relay.listeners();
    let shared_port =
        (turn.on_https_port && https_port.tls).then(|| public_https_port(config, https_port.bound));
    let (stun_urls, turn_urls) = listener_urls(
        &turn.effective_public_host(),
        &listeners,
        shared_port
            .as_ref()
            .map(|(host, port)| (host.as_str(), *port)),
    );
    for listener in &listeners {
        log::info!(
            "turn: {} listener on {}",
            listener.transport.as_str(),
            listener.address
        );
    }
    if turn.on_https_port {
        let transports = if https_port.tls { "TLS and TCP" } else { "TCP" };
        log::info!(
            "turn: {transports} also on the HTTP port {} (turn.on_https_port)",
            https_port.bound
        );
        if https_port.tls && https_port.self_signed {
            log::warn!("turn: {SELF_SIGNED_TURNS}");
        }
    }
    let front_door = relay.front_door();
    let relay = tokio::sync::Mutex::new(Some(relay));
    Ok(Some(Arc::new(RelayService {
        relay,
        listeners,
        stun_urls,
        turn_urls,
        front_door,
    })))
}

impl RelayService {
    /// The relay's entry for TURN connections on the HTTP port, if `turn.on_https_port`.
    pub fn front_door(&self) -> Option<FrontDoor> {
        self.front_door.clone()
    }

    /// Each listener as `("turn-udp", address, up)`; a stopped relay reports all down.
    pub async fn readiness(&self) -> Vec<(String, SocketAddr, bool)> {
        let relay = self.relay.lock().await;
        let live = relay.as_ref().map(Relay::listeners).unwrap_or_default();
        self.listeners
            .iter()
            .map(|l| {
                let up = live.iter().any(|s| s.transport == l.transport && s.up);
                (format!("turn-{}", l.transport.as_str()), l.address, up)
            })
            .collect()
    }

    /// Appends the relay's Prometheus metrics.
    pub async fn render_metrics(&self, out: &mut String) {
        if let Some(relay) = self.relay.lock().await.as_ref() {
            relay.render_metrics(out);
        }
    }

    /// Stops the listeners and closes every allocation.
    pub async fn shutdown(&self) {
        let relay = self.relay.lock().await.take();
        if let Some(relay) = relay {
            relay.shutdown().await;
        }
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// ICE servers for `user_id`: the embedded relay's listeners with fresh credentials, then the
/// configured extra servers.
pub fn ice_servers_for(
    config: &Config,
    secret: &str,
    relay: Option<&RelayService>,
    user_id: i64,
    now_unix: u64,
) -> IceServersReply {
    let ttl_secs = config.turn.credential_ttl_secs;
    let mut ice_servers = Vec::new();
    if let Some(relay) = relay {
        if !relay.stun_urls.is_empty() {
            ice_servers.push(IceServer {
                urls: relay.stun_urls.clone(),
                username: None,
                credential: None,
            });
        }
        if !relay.turn_urls.is_empty() {
            let (username, credential) = parley_turn::mint(secret, user_id, ttl_secs, now_unix);
            ice_servers.push(IceServer {
                urls: relay.turn_urls.clone(),
                username: Some(username),
                credential: Some(credential),
            });
        }
    }
    for extra in &config.webrtc.extra_ice_servers {
        ice_servers.push(IceServer {
            urls: extra.urls.clone(),
            username: extra.username.clone(),
            credential: extra.credential.clone(),
        });
    }
    IceServersReply {
        ice_servers,
        ice_transport_policy: config.webrtc.ice_transport_policy.as_str(),
        ttl_secs,
    }
}

/// ICE servers for the socket `session` event and the HTTP route.
pub fn ice_servers(state: &AppState, user_id: i64) -> IceServersReply {
    ice_servers_for(
        &state.config,
        &state.turn_secret,
        state.relay.as_deref(),
        user_id,
        now_unix(),
    )
}

async fn get_ice_servers(State(state): State<AppState>, user: AuthUser) -> Json<IceServersReply> {
    Json(ice_servers(&state, user.id))
}

/// `GET /api/v1/ice-servers`.
pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/api/v1/ice-servers", get(get_ice_servers))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(transport: Transport, port: u16) -> ListenerStatus {
        ListenerStatus {
            transport,
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            up: true,
        }
    }

    #[test]
    fn urls_come_in_order_of_preference_udp_tcp_then_tls_on_the_https_port_issue_11() {
        let listeners = [
            listener(Transport::Tls, 5349),
            listener(Transport::Tcp, 3478),
            listener(Transport::Udp, 3478),
        ];
        let (stun, turn) = listener_urls(
            "turn.example.org",
            &listeners,
            Some(("parley.example.org", 443)),
        );
        assert_eq!(stun, ["stun:turn.example.org:3478"]);
        assert_eq!(
            turn,
            [
                "turn:turn.example.org:3478?transport=udp",
                "turn:turn.example.org:3478?transport=tcp",
                "turns:parley.example.org:443?transport=tcp",
                "turns:turn.example.org:5349?transport=tcp",
            ]
        );
    }

    #[test]
    fn without_the_https_port_tls_comes_from_its_own_listener() {
        let listeners = [
            listener(Transport::Udp, 3478),
            listener(Transport::Tcp, 3478),
            listener(Transport::Tls, 5349),
        ];
        let (_, turn) = listener_urls("h", &listeners, None);
        assert_eq!(
            turn,
            [
                "turn:h:3478?transport=udp",
                "turn:h:3478?transport=tcp",
                "turns:h:5349?transport=tcp",
            ]
        );
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        let (stun, turn) = listener_urls(
            "2001:db8::1",
            &[listener(Transport::Udp, 3478)],
            Some(("[2001:db8::2]", 443)),
        );
        assert_eq!(stun, ["stun:[2001:db8::1]:3478"]);
        assert_eq!(
            turn,
            [
                "turn:[2001:db8::1]:3478?transport=udp",
                "turns:[2001:db8::2]:443?transport=tcp",
            ]
        );
        let (_, turn) = listener_urls("h", &[], Some(("2001:db8::3", 8443)));
        assert_eq!(turn, ["turns:[2001:db8::3]:8443?transport=tcp"]);
    }

    #[test]
    fn tcp_only_relay_has_no_stun_url() {
        let (stun, turn) = listener_urls("h", &[listener(Transport::Tcp, 3478)], None);
        assert!(stun.is_empty());
        assert_eq!(turn, ["turn:h:3478?transport=tcp"]);
    }

    #[test]
    fn the_https_port_is_the_public_urls_host_and_port() {
        let bound = SocketAddr::from(([0, 0, 0, 0], 8443));
        let mut config = Config::default();
        config.http.public_url = "https://parley.example.org".into();
        assert_eq!(
            public_https_port(&config, bound),
            ("parley.example.org".to_owned(), 443)
        );
        config.http.public_url = "https://parley.example.org:8443/".into();
        assert_eq!(
            public_https_port(&config, bound),
            ("parley.example.org".to_owned(), 8443)
        );
        config.http.public_url = "https://[2001:db8::5]/".into();
        assert_eq!(
            public_https_port(&config, bound),
            ("[2001:db8::5]".to_owned(), 443)
        );
        // No public URL: the relay's public host and the port actually bound.
        config.http.public_url = String::new();
        config.turn.public_host = "turn.example.org".into();
        assert_eq!(
            public_https_port(&config, bound),
            ("turn.example.org".to_owned(), 8443)
        );
    }

    #[test]
    fn one_username_and_credential_cover_every_turn_url_in_order() {
        let relay = RelayService {
            relay: tokio::sync::Mutex::new(None),
            listeners: Vec::new(),
            stun_urls: vec!["stun:h:3478".into()],
            turn_urls: vec![
                "turn:h:3478?transport=udp".into(),
                "turn:h:3478?transport=tcp".into(),
                "turns:h:443?transport=tcp".into(),
            ],
            front_door: None,
        };
        let reply = ice_servers_for(&Config::default(), "secret", Some(&relay), 7, 1_000);
        let urls: Vec<&str> = reply
            .ice_servers
            .iter()
            .flat_map(|server| server.urls.iter().map(String::as_str))
            .collect();
        assert_eq!(
            urls,
            [
                "stun:h:3478",
                "turn:h:3478?transport=udp",
                "turn:h:3478?transport=tcp",
                "turns:h:443?transport=tcp",
            ]
        );
        let with_credentials: Vec<_> = reply
            .ice_servers
            .iter()
            .filter(|server| server.username.is_some())
            .collect();
        assert_eq!(with_credentials.len(), 1, "one username for all TURN URLs");
        assert_eq!(with_credentials[0].urls.len(), 3);
    }

    #[test]
    fn options_follow_the_config() {
        let mut config = Config::default();
        config.turn.listen = "0.0.0.0:3478".parse().unwrap();
        config.turn.relay_address = "203.0.113.9".into();
        config.turn.relay_ports = "50000-50100".into();
        config.turn.allowed_peer_ranges = vec!["10.0.0.0/8".into()];
        config.turn.previous_secrets = vec!["old".into()];
        let options = relay_options(&config, "new").unwrap();
        assert_eq!(options.relay_bind, IpAddr::from([0, 0, 0, 0]));
        assert_eq!(
            options.relay_address,
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(options.relay_ports, (50000, 50100));
        assert!(options.peer_policy.allows("10.1.2.3".parse().unwrap()));
        assert!(!options.peer_policy.allows("127.0.0.1".parse().unwrap()));
        assert_eq!(options.secrets.current(), "new");
    }

    #[test]
    fn bad_peer_range_names_the_setting() {
        let mut config = Config::default();
        config.turn.allowed_peer_ranges = vec!["10.0.0.0/99".into()];
        let error = format!("{:#}", relay_options(&config, "s").unwrap_err());
        assert!(error.contains("turn.allowed_peer_ranges"), "{error}");
    }

    #[test]
    fn credentials_follow_the_ttl_and_extra_servers_follow() {
        let mut config = Config::default();
        config.turn.credential_ttl_secs = 600;
        config.webrtc.extra_ice_servers = vec![parley_config::IceServer {
            urls: vec!["stun:stun.example.org".into()],
            username: None,
            credential: None,
        }];
        let relay = RelayService {
            relay: tokio::sync::Mutex::new(None),
            listeners: vec![listener(Transport::Udp, 3478)],
            stun_urls: vec!["stun:h:3478".into()],
            turn_urls: vec!["turn:h:3478?transport=udp".into()],
            front_door: None,
        };
        let reply = ice_servers_for(&config, "secret", Some(&relay), 42, 1_000);
        assert_eq!(reply.ttl_secs, 600);
        assert_eq!(reply.ice_servers.len(), 3);
        let turn = &reply.ice_servers[1];
        assert_eq!(turn.username.as_deref(), Some("1600:42"));
        assert_eq!(
            turn.credential.as_deref(),
            Some(parley_turn::credentials::password_for("secret", "1600:42").as_str())
        );
        assert_eq!(reply.ice_servers[2].urls, ["stun:stun.example.org"]);
        let json = serde_json::to_value(&reply).unwrap();
        assert_eq!(json["iceTransportPolicy"], "all");
        assert!(
            json["iceServers"][0].get("username").is_none(),
            "STUN entries carry no credentials"
        );
    }

    #[test]
    fn disabled_relay_leaves_only_extra_servers() {
        let reply = ice_servers_for(&Config::default(), "s", None, 1, 0);
        assert!(reply.ice_servers.is_empty());
    }
}
