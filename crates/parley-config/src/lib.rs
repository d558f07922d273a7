//! Parley's configuration: one documented struct, read from defaults, then one TOML file, then
//! `PARLEY_*` environment variables (`__` between nesting levels).
//!
//! `config/parley.toml` in the repository mirrors [`Config::default`] key for key; a test keeps
//! the two in step. Every field's doc gives its unit and default, and so does that file.
//!
//! Errors name the source (file or environment variable), the key and what is wrong, because the
//! person reading them is an admin with an editor open, not a developer with a debugger.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Value};
use figment::{Figment, Provider};
use serde::{Deserialize, Serialize};

/// The environment variable prefix for overrides, e.g. `PARLEY_CALLS__RING_TIMEOUT_SECS=10`.
pub const ENV_PREFIX: &str = "PARLEY_";
/// Environment variables with the prefix that are not config keys (the CLI reads them).
const ENV_NOT_KEYS: &[&str] = &["CONFIG"];

/// The whole configuration. `Default` is what runs with no file at all: everything on
/// localhost, data under `./data`, registration open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub tls: TlsConfig,
    pub storage: StorageConfig,
    pub auth: AuthConfig,
    pub calls: CallsConfig,
    pub turn: TurnConfig,
    pub webrtc: WebrtcConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address and port of the web UI, HTTP API and Socket.IO. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// The URL people type, e.g. `https://parley.example.org`. Default `""`: derived from
    /// `http.listen` and `tls.enabled`.
    pub public_url: String,
    /// Serve plain HTTP on an address other than loopback. Default `false`, because browsers
    /// refuse camera and microphone on plain-http origins other than localhost.
    pub allow_plain_http: bool,
    /// Seconds a connection gets to send a complete request head (request line and headers),
    /// counted from when the server starts waiting for one: a new connection, or an idle
    /// keep-alive one after a response. Then it is closed, so silent and slowloris connections
    /// cannot pile up. Default 20.
    pub header_timeout_secs: u64,
    /// Seconds a request gets to send its whole body once its head has arrived; a slower body
    /// fails the request and closes the connection. Default 20.
    pub body_timeout_secs: u64,
    /// Realtime (Engine.IO) connections from one client address that have not yet
    /// authenticated; one more is refused with HTTP 429 `RATE_LIMITED`. A client needs one only
    /// for the moment between opening its connection and sending its token. 0 means no limit.
    /// Default 256.
    pub max_unauthenticated_per_address: u32,
    /// Address of a plain-HTTP listener (usually `"0.0.0.0:80"`) that answers ACME HTTP-01
    /// challenges and redirects every other request to the HTTPS `http.public_url` with a 308.
    /// Default `""`: off.
    pub redirect_listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: String::new(),
            allow_plain_http: false,
            header_timeout_secs: 20,
            body_timeout_secs: 20,
            max_unauthenticated_per_address: 256,
            redirect_listen: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Serve HTTPS on `http.listen`. Default `false`.
    pub enabled: bool,
    /// Certificate chain, PEM. Default `""`: none (see `tls.self_signed`).
    pub cert: PathBuf,
    /// Private key, PEM. Default `""`.
    pub key: PathBuf,
    /// With `tls.enabled` and no `tls.cert`, generate a self-signed certificate for the public
    /// host name into `<data_dir>/tls/` at first start. Default `true`.
    pub self_signed: bool,
    /// Get and renew a certificate for the host of `http.public_url` from an ACME server (Let's
    /// Encrypt by default), stored under `<data_dir>/tls/acme/`; the self-signed certificate
    /// serves until the first one is issued. Challenges: TLS-ALPN-01 on `http.listen` (which
    /// must be reachable on port 443 under that name), or HTTP-01 on `http.redirect_listen` when
    /// set (port 80). Ignored when `tls.cert` is set. Default `false`.
    pub acme: bool,
    /// Contact address given to the ACME server for expiry and policy mail. Default `""`: none.
    pub acme_email: String,
    /// Directory URL of the ACME server. Default Let's Encrypt's production directory.
    pub acme_directory: String,
    /// PEM file of extra root certificates to trust for the ACME server's own HTTPS (a company
    /// ACME server, a test one), in addition to the system's roots. Default `""`: none.
    pub acme_ca_roots: PathBuf,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            cert: PathBuf::new(),
            key: PathBuf::new(),
            self_signed: true,
            acme: false,
            acme_email: String::new(),
            acme_directory: "https://acme-v02.api.letsencrypt.org/directory".into(),
            acme_ca_roots: PathBuf::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Where the database, the generated TURN secret and generated certificates live.
    /// Default `./data` (relative to the working directory).
    pub data_dir: PathBuf,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
        }
    }
}

impl StorageConfig {
    /// The SQLite database file.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("parley.db")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    /// Anyone who reaches the server can create an account.
    Open,
    /// Only an admin can, with `parley user add`.
    Closed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `open` or `closed`. Default `open`.
    pub registration: Registration,
    /// How long a login token stays valid, in seconds. Default 2592000 (30 days).
    pub token_ttl_secs: u64,
    /// Failed logins allowed per minute for one username from one client address (an IPv6
    /// client's whole /64); also registrations per minute per address. Default 10.
    pub login_attempts_per_minute: u32,
    /// Failed logins allowed per minute from one client address, whatever the usernames.
    /// Default 30.
    pub login_attempts_per_address_per_minute: u32,
    /// Password hashes (argon2id: ~19 MiB and tens of ms of a core each, for logins and
    /// registrations) computed at the same time. Default 1.
    pub password_hash_concurrency: u32,
    /// Logins and registrations waiting for a password hash beyond those being computed; more
    /// are refused at once with `RATE_LIMITED`. Default 32.
    pub password_hash_queue: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            registration: Registration::Open,
            token_ttl_secs: 30 * 24 * 3600,
            login_attempts_per_minute: 10,
            login_attempts_per_address_per_minute: 30,
            password_hash_concurrency: 1,
            password_hash_queue: 32,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallsConfig {
    /// Seconds a call rings before it ends as missed. Default 30.
    pub ring_timeout_secs: u64,
    /// Seconds an active call waits for a dropped device to come back (after a restart of the
    /// server, for both devices, counted from start-up). Default 15.
    pub reconnect_grace_secs: u64,
    /// Realtime events a socket may send per second, sustained. Default 50.
    pub events_per_second: u32,
    /// Realtime events a socket may send in a burst. Default 200.
    pub events_burst: u32,
    /// Devices (distinct `deviceId`s, i.e. browser tabs and apps) one user may have connected
    /// at once; one more is refused with `connect_error` `RATE_LIMITED`. A device that connects
    /// again with its id takes over its old connection and is not counted twice. 0 means no
    /// limit. Default 10.
    pub max_devices_per_user: u32,
}

impl Default for CallsConfig {
    fn default() -> Self {
        Self {
            ring_timeout_secs: 30,
            reconnect_grace_secs: 15,
            events_per_second: 50,
            events_burst: 200,
            max_devices_per_user: 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TurnConfig {
    /// Run the embedded STUN/TURN relay. Default `true`.
    pub enabled: bool,
    /// Address of the STUN/TURN listeners (UDP and TCP). Default `127.0.0.1:3478`. A wildcard
    /// (`0.0.0.0`, or `[::]` for both IPv6 and IPv4) answers each UDP client from the address
    /// it sent to.
    pub listen: SocketAddr,
    /// More UDP STUN/TURN listeners, e.g. `["0.0.0.0:443"]`: networks that let QUIC out let
    /// UDP 443 through where UDP 3478 is blocked. Browsers are offered them after the
    /// `turn.listen` URLs. Default `[]`.
    pub udp_listen_extra: Vec<SocketAddr>,
    /// Listen on UDP. Default `true`.
    pub udp: bool,
    /// Listen on TCP. Default `true`.
    pub tcp: bool,
    /// Also serve TURN over TLS and TURN over TCP on the HTTP(S) port (`http.listen`), told
    /// apart from HTTPS by their first bytes, so that networks letting only HTTPS out can call;
    /// ICE servers then offer `turns:` on the public HTTPS port (`http.public_url`). Default
    /// `true`.
    pub on_https_port: bool,
    /// Address of a separate TURN-over-TLS listener; used only when a certificate is available
    /// (`turn.tls_cert`, else `tls.cert`, else the generated one). `""` disables it; with
    /// `turn.on_https_port` it is not needed. Default `127.0.0.1:5349`.
    pub tls_listen: String,
    /// Certificate for TURN over TLS, PEM. Default `""`: the HTTPS one.
    pub tls_cert: PathBuf,
    /// Key for TURN over TLS, PEM. Default `""`: the HTTPS one.
    pub tls_key: PathBuf,
    /// Host name or IP put in the ICE server URLs. Default `""`: the IP of `turn.listen`, or the
    /// relay address when `turn.listen` is `0.0.0.0`.
    pub public_host: String,
    /// IP that relayed candidates carry (the public IP behind 1:1 NAT). Default `""`: the IP of
    /// `turn.listen`, or, when that is `0.0.0.0`, the address of the first global (else private)
    /// IPv4 interface, detected at start.
    pub relay_address: String,
    /// IPv6 address of IPv6 relayed candidates, for clients that ask for one (RFC 6156
    /// REQUESTED-ADDRESS-FAMILY) when `turn.relay_address` is IPv4. Default `""`: relayed
    /// addresses only in the family of `turn.relay_address` (IPv6 clients are still served,
    /// relayed over IPv4 to IPv4 peers).
    pub relay_address_v6: String,
    /// UDP port range for relayed allocations, `LOW-HIGH`. Default `49152-65535`.
    pub relay_ports: String,
    /// Shared secret for TURN credentials. Default `""`: generated at first start into
    /// `<data_dir>/turn_secret` (mode 0600). Never put a real secret in a world-readable file.
    pub secret: String,
    /// Secrets still accepted while clients holding credentials from them expire. Default `[]`.
    pub previous_secrets: Vec<String>,
    /// Lifetime of the TURN credentials handed to clients, in seconds. Default 21600 (6 h).
    pub credential_ttl_secs: u64,
    /// Peer address ranges (CIDR) the relay may send to although they are private, loopback or
    /// otherwise refused by default, e.g. `["10.0.0.0/8"]` on a LAN. Default `[]`.
    pub allowed_peer_ranges: Vec<String>,
    /// Allocations in total; 0 means no limit. Default 1000.
    pub max_allocations: u32,
    /// Allocations per user; 0 means no limit. Default 10.
    pub max_allocations_per_user: u32,
    /// Bandwidth cap per allocation in kbit/s; 0 means none. Default 0.
    pub bandwidth_limit_kbps: u32,
    /// TURN over TCP/TLS: seconds a new connection has to finish its TLS handshake and send
    /// its first whole STUN message, and a started frame has to arrive in full; a slow or
    /// silent client is disconnected after that. Default 10.
    pub handshake_timeout_secs: u64,
    /// TURN over TCP/TLS: seconds without any frame from the client before its connection
    /// (and allocation) is closed. Clients refresh permissions every 5 minutes. Default 600.
    pub idle_timeout_secs: u64,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 3478)),
            udp_listen_extra: Vec::new(),
            udp: true,
            tcp: true,
            on_https_port: true,
            tls_listen: "127.0.0.1:5349".into(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            public_host: String::new(),
            relay_address: String::new(),
            relay_address_v6: String::new(),
            relay_ports: "49152-65535".into(),
            secret: String::new(),
            previous_secrets: Vec::new(),
            credential_ttl_secs: 6 * 3600,
            allowed_peer_ranges: Vec::new(),
            max_allocations: 1000,
            max_allocations_per_user: 10,
            bandwidth_limit_kbps: 0,
            handshake_timeout_secs: 10,
            idle_timeout_secs: 600,
        }
    }
}

impl TurnConfig {
    /// `turn.relay_ports` as an inclusive range; validated by [`Config::load`].
    pub fn relay_port_range(&self) -> (u16, u16) {
        parse_port_range(&self.relay_ports).expect("relay_ports is validated when the config loads")
    }

    /// `turn.tls_listen` as an address, `None` when disabled; validated by [`Config::load`].
    pub fn tls_listen_addr(&self) -> Option<SocketAddr> {
        if self.tls_listen.trim().is_empty() {
            return None;
        }
        Some(
            self.tls_listen
                .parse()
                .expect("tls_listen is validated when the config loads"),
        )
    }

    /// The host put in ICE server URLs: `turn.public_host`, else the listener's IP. A wildcard
    /// listener (`0.0.0.0`) is no address a browser can use, so then the relay address stands
    /// in (which the daemon detects at start when `turn.relay_address` is not set).
    pub fn effective_public_host(&self) -> String {
        if !self.public_host.is_empty() {
            self.public_host.clone()
        } else if self.listen.ip().is_unspecified() && !self.relay_address.is_empty() {
            self.relay_address.clone()
        } else {
            self.listen.ip().to_string()
        }
    }

    /// The IP relayed candidates carry: `turn.relay_address`, else the listener's IP. For a
    /// wildcard listener the daemon fills `relay_address` in before anything reads this.
    pub fn effective_relay_address(&self) -> IpAddr {
        if self.relay_address.is_empty() {
            self.listen.ip()
        } else {
            self.relay_address
                .parse()
                .expect("relay_address is validated when the config loads")
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IceTransportPolicy {
    /// Direct connections where possible, the relay otherwise.
    All,
    /// Always through the relay: hides people's IP addresses from each other.
    Relay,
}

impl IceTransportPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            IceTransportPolicy::All => "all",
            IceTransportPolicy::Relay => "relay",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebrtcConfig {
    /// `all` or `relay`. Default `all`.
    pub ice_transport_policy: IceTransportPolicy,
    /// ICE servers handed to clients besides the embedded relay. Default `[]`.
    pub extra_ice_servers: Vec<IceServer>,
}

impl Default for WebrtcConfig {
    fn default() -> Self {
        Self {
            ice_transport_policy: IceTransportPolicy::All,
            extra_ice_servers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug` or `trace`. Default `info`.
    pub level: LogLevel,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: LogLevel::Info,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// A configuration that could not be used. The message names where the bad value came from,
/// the key, and what is wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{path}: config file not found (check --config or PARLEY_CONFIG)")]
    FileNotFound { path: PathBuf },
    #[error("{path}: cannot read the config file: {source}")]
    FileUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// One line per problem, each `source: key: what is wrong`.
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

/// What loading found besides the config: things worth a warning that must not stop start-up.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// `PARLEY_*` variables that name no config key; they are ignored.
    pub unknown_env: Vec<String>,
}

impl Config {
    /// Loads defaults, then `file` when given (it must exist), then `PARLEY_*` environment
    /// variables, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<(Config, LoadReport), ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            // figment silently skips a missing file; an admin who named one wants to hear.
            if let Err(source) = std::fs::read(path) {
                return Err(if source.kind() == std::io::ErrorKind::NotFound {
                    ConfigError::FileNotFound {
                        path: path.to_owned(),
                    }
                } else {
                    ConfigError::FileUnreadable {
                        path: path.to_owned(),
                        source,
                    }
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }

        // Unknown keys in the file are errors (a typo must not silently do nothing), but an
        // unknown environment variable is only a warning: environments carry leftovers.
        let known = known_keys();
        let mut report = LoadReport::default();
        for (name, _) in std::env::vars() {
            if let Some(key) = env_key(&name)
                && !known.contains(&key)
            {
                report.unknown_env.push(name);
            }
        }
        let env = Env::prefixed(ENV_PREFIX)
            .split("__")
            .filter(move |key| known.contains(&key.as_str().to_ascii_lowercase()));
        figment = figment.merge(env);

        let config: Config = figment.extract().map_err(|e| describe(e, file))?;
        config.validate(file)?;
        Ok((config, report))
    }

    /// Checks what serde cannot: addresses that must parse, ranges, and plain HTTP exposure.
    fn validate(&self, file: Option<&Path>) -> Result<(), ConfigError> {
        let source = file
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "config".into());
        let mut problems = Vec::new();
        let mut bad = |key: &str, what: String| problems.push(format!("{source}: {key}: {what}"));

        if !self.tls.enabled && !self.http.listen.ip().is_loopback() && !self.http.allow_plain_http
        {
            bad(
                "http.listen",
                format!(
                    "plain HTTP on {} is not loopback: browsers refuse camera and microphone on \
                     plain-http origins other than localhost; set tls.enabled = true, or \
                     http.allow_plain_http = true if a TLS proxy sits in front",
                    self.http.listen
                ),
            );
        }
        if self.tls.cert.as_os_str().is_empty() != self.tls.key.as_os_str().is_empty() {
            bad(
                "tls.cert",
                "tls.cert and tls.key must be set together".into(),
            );
        }
        if self.tls.acme && self.tls.cert.as_os_str().is_empty() {
            if !self.tls.enabled {
                bad(
                    "tls.acme",
                    "ACME needs HTTPS: set tls.enabled = true as well".into(),
                );
            }
            if acme_host(&self.http.public_url).is_none() {
                bad(
                    "tls.acme",
                    format!(
                        "ACME needs the public DNS name of this server: set http.public_url to \
                         e.g. \"https://parley.example.org\" (found {:?}; an IP address or \
                         localhost cannot get a certificate)",
                        self.http.public_url
                    ),
                );
            }
            if !self.tls.acme_directory.starts_with("https://") {
                bad(
                    "tls.acme_directory",
                    format!(
                        "expected an https:// URL, found {:?}",
                        self.tls.acme_directory
                    ),
                );
            }
        }
        if !self.http.redirect_listen.trim().is_empty()
            && self.http.redirect_listen.parse::<SocketAddr>().is_err()
        {
            bad(
                "http.redirect_listen",
                format!(
                    "expected an address like \"0.0.0.0:80\" (or \"\" to disable), found {:?}",
                    self.http.redirect_listen
                ),
            );
        }
        if self.turn.tls_cert.as_os_str().is_empty() != self.turn.tls_key.as_os_str().is_empty() {
            bad(
                "turn.tls_cert",
                "turn.tls_cert and turn.tls_key must be set together".into(),
            );
        }
        if !self.turn.tls_listen.trim().is_empty()
            && self.turn.tls_listen.parse::<SocketAddr>().is_err()
        {
            bad(
                "turn.tls_listen",
                format!(
                    "expected an address like \"0.0.0.0:5349\" (or \"\" to disable), found {:?}",
                    self.turn.tls_listen
                ),
            );
        }
        if parse_port_range(&self.turn.relay_ports).is_none() {
            bad(
                "turn.relay_ports",
                format!(
                    "expected \"LOW-HIGH\" with 1024 <= LOW <= HIGH <= 65535, found {:?}",
                    self.turn.relay_ports
                ),
            );
        }
        if !self.turn.relay_address.is_empty() && self.turn.relay_address.parse::<IpAddr>().is_err()
        {
            bad(
                "turn.relay_address",
                format!(
                    "expected an IP address, found {:?}",
                    self.turn.relay_address
                ),
            );
        }
        if !self.turn.relay_address_v6.is_empty()
            && !matches!(
                self.turn.relay_address_v6.parse::<IpAddr>(),
                Ok(IpAddr::V6(_))
            )
        {
            bad(
                "turn.relay_address_v6",
                format!(
                    "expected an IPv6 address, found {:?}",
                    self.turn.relay_address_v6
                ),
            );
        }
        if self.calls.ring_timeout_secs == 0 {
            bad("calls.ring_timeout_secs", "must be at least 1".into());
        }
        if self.auth.token_ttl_secs == 0 {
            bad("auth.token_ttl_secs", "must be at least 1".into());
        }
        if self.auth.password_hash_concurrency == 0 {
            bad(
                "auth.password_hash_concurrency",
                "must be at least 1".into(),
            );
        }
        if self.http.header_timeout_secs == 0 || self.http.body_timeout_secs == 0 {
            bad(
                "http.header_timeout_secs",
                "http.header_timeout_secs and http.body_timeout_secs must be at least 1".into(),
            );
        }
        if self.turn.credential_ttl_secs == 0 {
            bad("turn.credential_ttl_secs", "must be at least 1".into());
        }
        if self.turn.handshake_timeout_secs == 0 || self.turn.idle_timeout_secs == 0 {
            bad(
                "turn.handshake_timeout_secs and turn.idle_timeout_secs",
                "must be at least 1".into(),
            );
        }
        if self.calls.events_per_second == 0 || self.calls.events_burst == 0 {
            bad(
                "calls.events_per_second",
                "calls.events_per_second and calls.events_burst must be at least 1".into(),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// The effective config as TOML, secrets replaced by `"<redacted>"`.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        if !shown.turn.secret.is_empty() {
            shown.turn.secret = "<redacted>".into();
        }
        for secret in &mut shown.turn.previous_secrets {
            *secret = "<redacted>".into();
        }
        for server in &mut shown.webrtc.extra_ice_servers {
            if server.credential.is_some() {
                server.credential = Some("<redacted>".into());
            }
        }
        toml::to_string(&shown).expect("the config is plain data and always serialises")
    }

    /// The URL people open, derived from `http.listen` unless `http.public_url` says.
    pub fn public_url(&self) -> String {
        if !self.http.public_url.is_empty() {
            return self.http.public_url.trim_end_matches('/').to_string();
        }
        let scheme = if self.tls.enabled { "https" } else { "http" };
        format!("{scheme}://{}", self.http.listen)
    }
}

/// The DNS name an ACME certificate can be issued for: the host of `url`, unless it is empty,
/// an IP literal or `localhost` (no public CA issues for those).
pub fn acme_host(url: &str) -> Option<String> {
    let after_scheme = url
        .trim()
        .split_once("://")
        .map_or(url.trim(), |(_, rest)| rest);
    let authority = after_scheme.split(['/', '?', '#']).next()?;
    if authority.starts_with('[') {
        return None;
    }
    let host = authority.split(':').next()?.trim_end_matches('.');
    let host = host.to_ascii_lowercase();
    let usable = !host.is_empty()
        && host != "localhost"
        && host.parse::<IpAddr>().is_err()
        && host.contains('.')
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    usable.then_some(host)
}

/// `"LOW-HIGH"` → `(LOW, HIGH)`, ports below 1024 refused.
pub fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let (low, high) = text.trim().split_once('-')?;
    let low: u16 = low.trim().parse().ok()?;
    let high: u16 = high.trim().parse().ok()?;
    (1024 <= low && low <= high).then_some((low, high))
}

/// Every dotted key path a config can have (leaves and tables), from the defaults.
pub fn known_keys() -> BTreeSet<String> {
    fn walk(prefix: &str, dict: &Dict, out: &mut BTreeSet<String>) {
        for (key, value) in dict {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            if let Value::Dict(_, inner) = value {
                walk(&path, inner, out);
            }
            out.insert(path);
        }
    }
    let mut out = BTreeSet::new();
    let defaults = Figment::from(Serialized::defaults(Config::default()));
    let dict = defaults
        .data()
        .expect("the defaults serialise")
        .remove(&figment::Profile::Default)
        .unwrap_or_default();
    walk("", &dict, &mut out);
    out
}

/// `PARLEY_CALLS__RING_TIMEOUT_SECS` → `calls.ring_timeout_secs`; `None` for other variables.
fn env_key(name: &str) -> Option<String> {
    let rest = name.strip_prefix(ENV_PREFIX)?;
    if ENV_NOT_KEYS.contains(&rest) {
        return None;
    }
    Some(rest.to_ascii_lowercase().replace("__", "."))
}

/// Turns figment's error list into lines of `source: key: what is wrong`.
fn describe(error: figment::Error, file: Option<&Path>) -> ConfigError {
    let lines = error
        .into_iter()
        .map(|e| {
            let source = match &e.metadata {
                Some(meta) => match &meta.source {
                    Some(figment::Source::File(path)) => path.display().to_string(),
                    _ if meta.name.contains("environment") => {
                        // figment's own interpolation does not know about `split("__")`.
                        let name: Vec<String> =
                            e.path.iter().map(|p| p.to_ascii_uppercase()).collect();
                        format!("environment variable {ENV_PREFIX}{}", name.join("__"))
                    }
                    _ => file
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "config".into()),
                },
                None => file
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "config".into()),
            };
            let key = e.path.join(".");
            let what = describe_kind(&e.kind);
            if key.is_empty() {
                format!("{source}: {what}")
            } else {
                format!("{source}: {key}: {what}")
            }
        })
        .collect();
    ConfigError::Invalid(lines)
}

fn describe_kind(kind: &figment::error::Kind) -> String {
    use figment::error::Kind;
    match kind {
        Kind::InvalidType(actual, expected) => {
            format!("expected {}, found {}", plain_expected(expected), actual)
        }
        Kind::InvalidValue(actual, expected) => {
            format!("expected {}, found {}", plain_expected(expected), actual)
        }
        Kind::UnknownVariant(found, expected) => format!(
            "unknown value {found:?}, expected one of: {}",
            expected.join(", ")
        ),
        // figment already puts the unknown field at the end of the key path.
        Kind::UnknownField(..) => "unknown key (config/parley.toml lists every key)".to_string(),
        Kind::MissingField(field) => format!("missing key `{field}`"),
        Kind::Message(message) => message.clone(),
        other => other.to_string(),
    }
}

/// serde's expectations read like type names; say them the way an admin would.
fn plain_expected(expected: &str) -> String {
    match expected {
        e if e.starts_with("u8")
            || e.starts_with("u16")
            || e.starts_with("u32")
            || e.starts_with("u64") =>
        {
            "a non-negative integer".into()
        }
        e if e.starts_with("i64") || e.starts_with("i32") => "an integer".into(),
        "a boolean" | "bool" => "true or false".into(),
        "socket address" => "an address like \"127.0.0.1:8080\"".into(),
        other => other.to_string(),
    }
}

impl fmt::Display for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Registration::Open => "open",
            Registration::Closed => "closed",
        })
    }
}
