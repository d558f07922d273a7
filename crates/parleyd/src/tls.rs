//! TLS for the web UI/API and for TURN over TLS: certificate loading, the self-signed fallback,
//! and hot reload.
//!
//! Both rustls `ServerConfig`s resolve their certificate through a [`SwappableCert`], so a reload
//! only swaps an `Arc<CertifiedKey>`: listeners are never rebuilt, and connections already open
//! keep the certificate they were established with.
//!
//! With `tls.acme` the resolver also answers TLS-ALPN-01 challenges (RFC 8737): a ClientHello
//! offering only the `acme-tls/1` protocol gets the challenge certificate for its SNI name inside
//! the handshake, so the validation never reaches HTTP or TURN. The certificate the ACME task
//! obtains goes through the same slot ([`AcmeSlot::install`]).
//!
//! The file-watching is polling (metadata every [`POLL_INTERVAL`]) rather than inotify: it needs
//! no extra dependency, works for certificates on any file system, and copes with the
//! rename-into-place and symlink-flip styles that certbot and friends use.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// How often the certificate files are checked for changes. A reload also happens at once on
/// SIGHUP (`systemctl reload parley`), so this only bounds how stale an unannounced renewal is.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// File names of the generated pair inside `<data_dir>/tls/`.
const SELF_SIGNED_DIR: &str = "tls";
const SELF_SIGNED_CERT: &str = "cert.pem";
const SELF_SIGNED_KEY: &str = "key.pem";
/// Where the ACME certificate and its key live, inside `<data_dir>/tls/`.
pub const ACME_DIR: &str = "acme";

/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The TLS state of the daemon: server configs for the listeners, plus what the reloader needs.
pub struct Tls {
    /// For the HTTPS listener (web UI, API, Socket.IO); `None` when `tls.enabled = false`.
    /// ALPN offers only `http/1.1`, the only protocol the HTTP server speaks.
    pub http: Option<Arc<ServerConfig>>,
    /// For the TURN-over-TLS listener; `None` when no certificate is available for it.
    pub turn: Option<Arc<ServerConfig>>,
    /// Set when the HTTP certificate is the generated self-signed one: the operator-facing
    /// warning, already logged once by [`Tls::load`], for `parley doctor` or the startup banner.
    pub self_signed_notice: Option<String>,
    /// With `tls.acme`: where the ACME task installs what it obtains and its challenges.
    pub acme: Option<AcmeSlot>,
    /// The HTTPS listener's certificate slot, for what `/metrics` reports.
    pub http_certificate: Option<Arc<SwappableCert>>,
    watched: Vec<Watched>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("http", &self.http.is_some())
            .field("turn", &self.turn.is_some())
            .field("self_signed", &self.self_signed_notice.is_some())
            .field("acme", &self.acme.is_some())
            .field("watched", &self.watched)
            .finish()
    }
}

/// The subset of the configuration this module reads, so the logic is testable without a full
/// `Config` and the mapping from config keys lives in one place ([`TlsSettings::from_config`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub enabled: bool,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub self_signed: bool,
    pub turn_enabled: bool,
    pub turn_cert: PathBuf,
    pub turn_key: PathBuf,
    pub data_dir: PathBuf,
    /// Names (DNS or IP literals) the self-signed certificate is issued for.
    pub self_signed_names: Vec<String>,
    /// `tls.acme` with no `tls.cert`: the HTTPS certificate comes from the ACME task.
    pub acme: bool,
}

impl TlsSettings {
    pub fn from_config(config: &parley_config::Config) -> TlsSettings {
        let mut names = Vec::new();
        if let Some(host) = host_of_url(&config.http.public_url) {
            names.push(host);
        }
        let turn_host = config.turn.public_host.trim();
        if !turn_host.is_empty() {
            names.push(turn_host.trim_matches(['[', ']']).to_owned());
        }
        // The machine's own name too: with no public name configured it is the best guess at
        // what browsers will be pointed at, and it costs nothing otherwise.
        if let Some(hostname) = machine_hostname() {
            names.push(hostname);
        }
        let listen_ip = config.http.listen.ip();
        if !listen_ip.is_unspecified() {
            names.push(listen_ip.to_string());
        }
        // Always valid for the machine itself, so `curl https://localhost/healthz` and the
        // admin's own browser on the box work after accepting the warning once.
        names.extend([
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ]);
        let mut unique = Vec::new();
        for name in names {
            if !unique.contains(&name) {
                unique.push(name);
            }
        }
        TlsSettings {
            enabled: config.tls.enabled,
            cert: config.tls.cert.clone(),
            key: config.tls.key.clone(),
            self_signed: config.tls.self_signed,
            turn_enabled: config.turn.enabled,
            turn_cert: config.turn.tls_cert.clone(),
            turn_key: config.turn.tls_key.clone(),
            data_dir: PathBuf::from(&config.storage.data_dir),
            self_signed_names: unique,
            acme: config.tls.acme,
        }
    }

    fn self_signed_paths(&self) -> (PathBuf, PathBuf) {
        let dir = self.data_dir.join(SELF_SIGNED_DIR);
        (dir.join(SELF_SIGNED_CERT), dir.join(SELF_SIGNED_KEY))
    }

    /// `<data_dir>/tls/acme/`: the account, the issued chain and its key.
    pub fn acme_dir(&self) -> PathBuf {
        self.data_dir.join(SELF_SIGNED_DIR).join(ACME_DIR)
    }

    fn acme_pair(&self) -> Pair {
        let dir = self.acme_dir();
        Pair {
            cert: dir.join(SELF_SIGNED_CERT),
            key: dir.join(SELF_SIGNED_KEY),
        }
    }
}

/// Where the HTTP and TURN certificates come from, decided before touching any file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    http: Option<Pair>,
    turn: Option<Pair>,
    /// The HTTP pair is the generated one (and must be created if missing).
    http_self_signed: bool,
    /// The HTTP certificate is managed by ACME: the stored ACME pair if it loads, else the
    /// self-signed pair until the first issuance.
    http_acme: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pair {
    cert: PathBuf,
    key: PathBuf,
}

fn is_set(path: &Path) -> bool {
    !path.as_os_str().is_empty()
}

fn plan(settings: &TlsSettings) -> anyhow::Result<Plan> {
    let configured = pair_from("tls.cert", &settings.cert, "tls.key", &settings.key)?;
    let turn_configured = pair_from(
        "turn.tls_cert",
        &settings.turn_cert,
        "turn.tls_key",
        &settings.turn_key,
    )?;
    let (http, http_self_signed) = match (settings.enabled, configured) {
        (false, configured) => {
            // HTTP stays plain, but a configured pair may still serve TURN over TLS below.
            return Ok(Plan {
                http: None,
                turn: turn_for(settings, turn_configured, configured),
                http_self_signed: false,
                http_acme: false,
            });
        }
        (true, Some(pair)) => (pair, false),
        // Something must serve until the first issuance, whatever tls.self_signed says.
        (true, None) if settings.self_signed || settings.acme => {
            let (cert, key) = settings.self_signed_paths();
            (Pair { cert, key }, true)
        }
        (true, None) => bail!(
            "tls.enabled is true but tls.cert and tls.key are empty: set them to the PEM files of \
             your certificate and key, or set tls.self_signed = true to generate a self-signed one"
        ),
    };
    Ok(Plan {
        turn: turn_for(settings, turn_configured, Some(http.clone())),
        http: Some(http),
        http_acme: http_self_signed && settings.acme,
        http_self_signed,
    })
}

fn turn_for(settings: &TlsSettings, turn: Option<Pair>, fallback: Option<Pair>) -> Option<Pair> {
    if !settings.turn_enabled {
        return None;
    }
    turn.or(fallback)
}

fn pair_from(
    cert_key: &str,
    cert: &Path,
    key_key: &str,
    key: &Path,
) -> anyhow::Result<Option<Pair>> {
    match (is_set(cert), is_set(key)) {
        (true, true) => Ok(Some(Pair {
            cert: cert.to_owned(),
            key: key.to_owned(),
        })),
        (false, false) => Ok(None),
        (true, false) => bail!("{cert_key} is set but {key_key} is empty: set both, or neither"),
        (false, true) => bail!("{key_key} is set but {cert_key} is empty: set both, or neither"),
    }
}

impl Tls {
    /// Reads tls.* / turn.tls_* from the config; generates the self-signed pair into
    /// `<data_dir>/tls/` when tls.enabled && tls.self_signed && no cert configured or present.
    pub fn load(config: &parley_config::Config) -> anyhow::Result<Tls> {
        Tls::load_settings(&TlsSettings::from_config(config))
    }

    pub fn load_settings(settings: &TlsSettings) -> anyhow::Result<Tls> {
        let mut plan = plan(settings)?;
        if plan.http_acme {
            adopt_stored_acme_pair(settings, &mut plan);
        } else if settings.acme && settings.enabled {
            log::warn!(
                "tls: tls.acme is ignored because tls.cert is set: remove tls.cert and tls.key \
                 to let Parley get the certificate itself"
            );
        }
        let mut self_signed_notice = None;
        if plan.http_self_signed {
            let (cert, key) = settings.self_signed_paths();
            if !cert.exists() || !key.exists() {
                generate_self_signed(&cert, &key, &settings.self_signed_names)?;
                log::info!(
                    "generated a self-signed certificate for {} at {}",
                    settings.self_signed_names.join(", "),
                    cert.display()
                );
            }
            let notice = if plan.http_acme {
                acme_pending_notice_text(&cert)
            } else {
                self_signed_notice_text(&cert)
            };
            log::warn!("{notice}");
            self_signed_notice = Some(notice);
        }

        let mut watched: Vec<Watched> = Vec::new();
        let mut resolver_for = |pair: &Pair, label: &'static str| -> anyhow::Result<_> {
            // TURN usually shares the HTTP pair: one resolver, one reload.
            if let Some(existing) = watched.iter().find(|w| w.pair() == *pair) {
                return Ok(existing.resolver.clone());
            }
            let certified = load_pair(pair).with_context(|| format!("{label} certificate"))?;
            let resolver = Arc::new(SwappableCert::new(certified));
            watched.push(Watched {
                label,
                fingerprint: fingerprint(pair),
                last_seen_change: None,
                source: Arc::new(RwLock::new(pair.clone())),
                resolver: resolver.clone(),
            });
            Ok(resolver)
        };

        let http = match &plan.http {
            Some(pair) => {
                let resolver = resolver_for(pair, "tls")?;
                let mut config = server_config(resolver)?;
                // axum serves HTTP/1.1 only (no `http2` feature); offering h2 would break clients.
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                if plan.http_acme {
                    // Only a ClientHello offering acme-tls/1 alone gets it: the validation server.
                    config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
                }
                Some(Arc::new(config))
            }
            None => None,
        };
        let turn = match &plan.turn {
            Some(pair) => {
                // No ALPN: RFC 7443's "stun.turn" is optional and browsers do not send it, and
                // an ALPN list here would make rustls reject clients that offer other protocols.
                Some(Arc::new(server_config(resolver_for(pair, "turn tls")?)?))
            }
            None => None,
        };
        let acme = match (&plan.http, plan.http_acme) {
            (Some(pair), true) => watched
                .iter()
                .find(|w| w.pair() == *pair)
                .map(|w| AcmeSlot {
                    resolver: w.resolver.clone(),
                    source: w.source.clone(),
                    pair: settings.acme_pair(),
                }),
            _ => None,
        };
        let http_certificate = plan.http.as_ref().and_then(|pair| {
            watched
                .iter()
                .find(|w| w.pair() == *pair)
                .map(|w| w.resolver.clone())
        });
        Ok(Tls {
            http,
            turn,
            self_signed_notice,
            acme,
            http_certificate,
            watched,
        })
    }

    /// Reloads certificates on SIGHUP and when the files change, until `shutdown` resolves;
    /// a failed reload keeps the old certificate and logs why.
    ///
    /// Must be called inside a tokio runtime. The SIGHUP handler is installed before this
    /// returns, so call it before notifying readiness: until then SIGHUP would kill the process.
    pub fn spawn_reloader(&self, shutdown: impl Future<Output = ()> + Send + 'static) {
        use tokio::signal::unix::{SignalKind, signal};

        // Even with nothing to watch the handler is installed: SIGHUP (`systemctl reload`) must
        // never kill the daemon.
        let mut watched = self.watched.clone();
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(stream) => Some(stream),
            Err(error) => {
                log::error!(
                    "cannot listen for SIGHUP ({error}); certificates reload only on file change"
                );
                None
            }
        };
        tokio::spawn(async move {
            tokio::pin!(shutdown);
            let mut ticker = tokio::time::interval(POLL_INTERVAL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = &mut shutdown => break,
                    Some(()) = async {
                        match hangup.as_mut() {
                            Some(stream) => stream.recv().await,
                            None => std::future::pending().await,
                        }
                    } => {
                        log::info!("SIGHUP: reloading certificates");
                        for entry in &mut watched {
                            entry.reload();
                        }
                    }
                    _ = ticker.tick() => {
                        for entry in &mut watched {
                            entry.poll();
                        }
                    }
                }
            }
        });
    }

    /// Reloads every certificate now; what SIGHUP does. Errors are logged, not returned, and
    /// the old certificate stays in use. Returns how many pairs were reloaded successfully.
    #[cfg(test)]
    fn reload_now(&self) -> usize {
        let mut watched = self.watched.clone();
        watched
            .iter_mut()
            .map(Watched::reload)
            .filter(|reloaded| *reloaded)
            .count()
    }
}

/// With ACME on, serves the stored ACME certificate from the start if it loads (an issued
/// certificate survives restarts), instead of the self-signed one.
fn adopt_stored_acme_pair(settings: &TlsSettings, plan: &mut Plan) {
    match stored_acme_pair(settings, plan) {
        Ok(true) => log::info!(
            "tls: serving the stored ACME certificate {}",
            settings.acme_pair().cert.display()
        ),
        Ok(false) => {}
        Err(error) => log::warn!(
            "tls: ignoring the stored ACME certificate ({error:#}); serving the self-signed one \
             until a new certificate is issued"
        ),
    }
}

/// Points the plan at the stored ACME pair if there is one that loads; `Ok(false)` if none.
fn stored_acme_pair(settings: &TlsSettings, plan: &mut Plan) -> anyhow::Result<bool> {
    let acme = settings.acme_pair();
    if !acme.cert.exists() && !acme.key.exists() {
        return Ok(false);
    }
    load_pair(&acme)?;
    let old = plan.http.replace(acme.clone());
    if plan.turn.is_some() && plan.turn == old {
        plan.turn = Some(acme);
    }
    plan.http_self_signed = false;
    Ok(true)
}

fn acme_pending_notice_text(cert: &Path) -> String {
    format!(
        "tls: serving a self-signed certificate ({cert}) until the ACME server issues one \
         (tls.acme); browsers warn and refuse turns: URLs until then",
        cert = cert.display()
    )
}

fn self_signed_notice_text(cert: &Path) -> String {
    format!(
        "tls: serving a self-signed certificate ({cert}); browsers will show a security warning \
         and TURN-over-TLS clients may refuse it. For a real certificate (for example from Let's \
         Encrypt), set tls.cert and tls.key in /etc/parley/parley.toml to its fullchain and \
         private-key PEM files (readable by the parley user), then run `systemctl reload \
         parley`",
        cert = cert.display()
    )
}

/// A certificate slot that can be swapped while listeners keep running, plus the TLS-ALPN-01
/// challenge certificates being validated (by SNI name; empty unless ACME is at work).
pub struct SwappableCert {
    current: RwLock<Arc<CertifiedKey>>,
    challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl SwappableCert {
    pub fn new(certified: CertifiedKey) -> SwappableCert {
        SwappableCert {
            current: RwLock::new(Arc::new(certified)),
            challenges: RwLock::new(HashMap::new()),
        }
    }

    /// Answers `acme-tls/1` handshakes for `name` with `certified` until removed.
    pub fn set_challenge(&self, name: &str, certified: CertifiedKey) {
        self.challenges
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(name.to_ascii_lowercase(), Arc::new(certified));
    }

    pub fn remove_challenge(&self, name: &str) {
        self.challenges
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&name.to_ascii_lowercase());
    }

    fn challenge(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.challenges
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&name.to_ascii_lowercase())
            .cloned()
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        // A poisoned lock only means a panic elsewhere while swapping an Arc; the value is fine.
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn swap(&self, certified: CertifiedKey) {
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(certified);
    }
}

/// Where the ACME task puts what it obtains: the HTTPS resolver (which TURN over TLS shares when
/// it uses the same certificate) and the watched files, so that SIGHUP and file changes reload
/// the ACME pair from then on.
#[derive(Clone)]
pub struct AcmeSlot {
    resolver: Arc<SwappableCert>,
    source: Arc<RwLock<Pair>>,
    pair: Pair,
}

impl fmt::Debug for AcmeSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeSlot")
            .field("pair", &self.pair)
            .finish_non_exhaustive()
    }
}

impl AcmeSlot {
    /// The resolver of the HTTPS listener: challenges go here, and it tells what is served.
    pub fn resolver(&self) -> &Arc<SwappableCert> {
        &self.resolver
    }

    /// The issued chain (PEM, leaf first) under `<data_dir>/tls/acme/`.
    pub fn cert_path(&self) -> &Path {
        &self.pair.cert
    }

    /// Checks that `key_pem` belongs to `chain_pem`, writes both under `<data_dir>/tls/acme/`
    /// (0600 in a 0700 directory, each renamed into place), and serves them from the next
    /// handshake on, for HTTPS and for TURN over TLS when it shares the certificate. Open
    /// connections keep theirs. On error nothing served changes.
    pub fn install(&self, chain_pem: &str, key_pem: &str) -> anyhow::Result<()> {
        let certified = certified_key_from_pem(chain_pem.as_bytes(), key_pem.as_bytes())
            .context("the ACME server's certificate does not fit our key")?;
        if let Some(dir) = self.pair.cert.parent() {
            create_private_dir(dir)?;
        }
        write_atomically(&self.pair.key, key_pem.as_bytes(), 0o600)?;
        write_atomically(&self.pair.cert, chain_pem.as_bytes(), 0o600)?;
        *self
            .source
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = self.pair.clone();
        self.resolver.swap(certified);
        Ok(())
    }
}

impl fmt::Debug for SwappableCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwappableCert").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme_validation = client_hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|protocol| protocol == ACME_TLS_ALPN));
        if acme_validation {
            // RFC 8737: the validation server offers acme-tls/1 only and expects the challenge
            // certificate; with no challenge pending for that name the handshake fails.
            return client_hello
                .server_name()
                .and_then(|name| self.challenge(name));
        }
        Some(self.current())
    }
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    // main installs ring as the process default; tests and `parley doctor` may not have, and
    // ring is the only provider compiled in anyway.
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

fn server_config(resolver: Arc<SwappableCert>) -> anyhow::Result<ServerConfig> {
    Ok(ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("the ring crypto provider supports no TLS version (a build problem)")?
        .with_no_client_auth()
        .with_cert_resolver(resolver))
}

/// Reads and checks a PEM certificate chain and private key.
fn load_pair(pair: &Pair) -> anyhow::Result<CertifiedKey> {
    let cert_pem = std::fs::read(&pair.cert)
        .with_context(|| format!("cannot read certificate {}", pair.cert.display()))?;
    let key_pem = std::fs::read(&pair.key)
        .with_context(|| format!("cannot read private key {}", pair.key.display()))?;
    certified_key_from_pem(&cert_pem, &key_pem).with_context(|| {
        format!(
            "certificate {} with key {}",
            pair.cert.display(),
            pair.key.display()
        )
    })
}

pub fn certified_key_from_pem(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("the certificate file is not valid PEM")?;
    if chain.is_empty() {
        bail!("the certificate file holds no CERTIFICATE block: it must be PEM, leaf first");
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).context(
        "the key file holds no usable PRIVATE KEY block (PKCS#8, PKCS#1 or SEC1 PEM expected)",
    )?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|error| match error {
        rustls::Error::InconsistentKeys(_) => anyhow::anyhow!(
            "the private key does not belong to the certificate (was only one of the two files \
             replaced?)"
        ),
        other => anyhow::anyhow!("unusable certificate or key: {other}"),
    })
}

/// Writes a new self-signed pair. The key is created 0600 before any byte is written, and both
/// files are renamed into place so a crash never leaves a half-written pair behind.
fn generate_self_signed(cert_path: &Path, key_path: &Path, names: &[String]) -> anyhow::Result<()> {
    let dir = cert_path
        .parent()
        .expect("self-signed paths are always <data_dir>/tls/<file>");
    create_private_dir(dir)?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .with_context(|| format!("cannot make a certificate for {}", names.join(", ")))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0].clone());
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Parley (self-signed)");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    // Long-lived on purpose: nobody renews a self-signed certificate, and browsers warn anyway.
    params.not_after = now + time::Duration::days(3650);
    let signing_key = rcgen::KeyPair::generate().context("cannot generate a key pair")?;
    let cert = params
        .self_signed(&signing_key)
        .context("cannot sign the self-signed certificate")?;
    write_atomically(key_path, signing_key.serialize_pem().as_bytes(), 0o600)?;
    write_atomically(cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(())
}

/// Writes a file only the daemon may read (0600), creating its directory 0700.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    write_atomically(path, contents, 0o600)
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| {
            format!(
                "cannot create {} for certificates (is storage.data_dir writable?)",
                dir.display()
            )
        })
}

fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let temporary = path.with_extension("tmp");
    let result = (|| {
        let _ = std::fs::remove_file(&temporary);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temporary)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// A certificate pair being watched for changes.
#[derive(Clone)]
struct Watched {
    label: &'static str,
    /// The files served; the ACME task points this at its own pair after the first issuance.
    source: Arc<RwLock<Pair>>,
    resolver: Arc<SwappableCert>,
    /// What the files looked like when last loaded (successfully or not).
    fingerprint: Fingerprint,
    /// A changed state seen at the previous poll, waiting to settle.
    last_seen_change: Option<Fingerprint>,
}

impl fmt::Debug for Watched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watched")
            .field("label", &self.label)
            .field("pair", &self.pair())
            .finish_non_exhaustive()
    }
}

/// Metadata of both files (following symlinks, as certbot's `live/` links point into `archive/`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    cert: Option<FileStamp>,
    key: Option<FileStamp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
    device: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: metadata.modified().ok(),
        len: metadata.len(),
        inode: metadata.ino(),
        device: metadata.dev(),
    })
}

fn fingerprint(pair: &Pair) -> Fingerprint {
    Fingerprint {
        cert: stamp(&pair.cert),
        key: stamp(&pair.key),
    }
}

impl Watched {
    fn pair(&self) -> Pair {
        self.source
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Called every poll interval: reloads once the files changed and then stayed unchanged for
    /// one interval, so a renewal that writes the certificate and the key one after the other is
    /// picked up once, complete, instead of failing on the half-replaced pair.
    fn poll(&mut self) {
        let pair = self.pair();
        let now = fingerprint(&pair);
        if now == self.fingerprint {
            self.last_seen_change = None;
            return;
        }
        if self.last_seen_change.as_ref() == Some(&now) {
            log::info!(
                "{} certificate files changed; reloading {}",
                self.label,
                pair.cert.display()
            );
            self.reload();
        } else {
            // First sighting of this state: wait one more interval for the other file to follow.
            self.last_seen_change = Some(now);
        }
    }

    /// Loads the pair and swaps it in; on failure logs why and keeps serving the old one.
    fn reload(&mut self) -> bool {
        let pair = self.pair();
        let now = fingerprint(&pair);
        match load_pair(&pair) {
            Ok(certified) => {
                self.resolver.swap(certified);
                self.fingerprint = now;
                self.last_seen_change = None;
                log::info!(
                    "{} certificate reloaded from {}",
                    self.label,
                    pair.cert.display()
                );
                true
            }
            Err(error) => {
                // Remember the broken state so it is reported once, not every poll; the next
                // change to either file triggers another attempt.
                self.fingerprint = now;
                self.last_seen_change = None;
                log::error!(
                    "{} certificate reload failed, still serving the previous certificate: {error:#}",
                    self.label
                );
                false
            }
        }
    }
}

/// The host part of an `http(s)://host[:port]/...` URL, without brackets around IPv6 literals.
fn host_of_url(url: &str) -> Option<String> {
    let url = url.trim();
    if url.is_empty() {
        return None;
    }
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = after_scheme.split(['/', '?', '#']).next()?;
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = if let Some(bracketed) = authority.strip_prefix('[') {
        bracketed.split_once(']')?.0
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

fn machine_hostname() -> Option<String> {
    // gethostname(2), not /proc/sys/kernel/hostname: the unit's ProcSubset=pid hides /proc/sys.
    let name = nix::unistd::gethostname().ok()?;
    let name = name.to_str()?.trim();
    // A bare IP or an empty/"(none)" hostname makes no useful DNS name.
    (!name.is_empty() && name != "(none)" && name.parse::<IpAddr>().is_err())
        .then(|| name.to_owned())
}

/// Lines for `parley doctor`: where each certificate comes from and whether it loads. Never
/// generates or modifies anything.
pub fn doctor(config: &parley_config::Config) -> Vec<String> {
    doctor_settings(&TlsSettings::from_config(config))
}

pub fn doctor_settings(settings: &TlsSettings) -> Vec<String> {
    let mut plan = match plan(settings) {
        Ok(plan) => plan,
        Err(error) => return vec![format!("tls: ERROR {error:#}")],
    };
    let mut lines = Vec::new();
    if plan.http_acme {
        let stored = stored_acme_pair(settings, &mut plan);
        lines.extend(crate::acme::doctor_lines(
            &settings.acme_pair().cert,
            stored.map_err(|e| format!("{e:#}")),
        ));
    }
    let mut describe = |label: &str, pair: &Option<Pair>| match pair {
        None => lines.push(format!("{label}: off")),
        Some(pair) if !pair.cert.exists() && plan.http_self_signed => lines.push(format!(
            "{label}: a self-signed certificate for {} will be generated at {} on first start",
            settings.self_signed_names.join(", "),
            pair.cert.display()
        )),
        Some(pair) => match load_pair(pair) {
            Ok(certified) => lines.push(format!(
                "{label}: ok, {} ({} certificate(s) in the chain), key {}",
                pair.cert.display(),
                certified.cert.len(),
                pair.key.display()
            )),
            Err(error) => lines.push(format!("{label}: ERROR {error:#}")),
        },
    };
    describe("tls (https)", &plan.http);
    describe("tls (turn)", &plan.turn);
    if plan.http_self_signed {
        let cert = settings.self_signed_paths().0;
        let notice = if plan.http_acme {
            acme_pending_notice_text(&cert)
        } else {
            self_signed_notice_text(&cert)
        };
        lines.push(format!("tls: WARNING {notice}"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{ServerName, UnixTime};
    use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    /// Accepts any certificate but still checks the handshake signature, so a passing
    /// handshake proves the server holds the key of the certificate it presented.
    #[derive(Debug)]
    struct AcceptAnyCert(Arc<CryptoProvider>);

    impl ServerCertVerifier for AcceptAnyCert {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    fn client_config() -> Arc<ClientConfig> {
        let provider = provider();
        let mut config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    type ClientStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

    /// A TLS echo server on 127.0.0.1:0 using `config`; one thread per connection.
    fn echo_server(config: Arc<ServerConfig>) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let address = listener
            .local_addr()
            .expect("bound listener has an address");
        std::thread::spawn(move || {
            for stream in listener.incoming().take(8) {
                let Ok(stream) = stream else { continue };
                let config = config.clone();
                std::thread::spawn(move || {
                    let connection =
                        rustls::ServerConnection::new(config).expect("server connection");
                    let mut tls = rustls::StreamOwned::new(connection, stream);
                    let mut buffer = [0u8; 64];
                    while let Ok(read) = tls.read(&mut buffer) {
                        if read == 0 || tls.write_all(&buffer[..read]).is_err() {
                            break;
                        }
                        let _ = tls.flush();
                    }
                });
            }
        });
        address
    }

    /// Connects, completes the handshake with one echo round trip, and returns the stream.
    fn connect(address: std::net::SocketAddr) -> ClientStream {
        let stream = TcpStream::connect(address).expect("connect to the test server");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("set timeout");
        let connection = rustls::ClientConnection::new(
            client_config(),
            ServerName::try_from("localhost").expect("valid name"),
        )
        .expect("client connection");
        let mut tls = rustls::StreamOwned::new(connection, stream);
        echo(&mut tls, b"hello");
        tls
    }

    fn echo(tls: &mut ClientStream, message: &[u8]) {
        tls.write_all(message).expect("write over TLS");
        let mut reply = vec![0u8; message.len()];
        tls.read_exact(&mut reply).expect("read the echo over TLS");
        assert_eq!(reply, message);
    }

    fn presented(tls: &ClientStream) -> Vec<u8> {
        tls.conn
            .peer_certificates()
            .expect("server sent a certificate")[0]
            .to_vec()
    }

    fn leaf_in(path: &Path) -> Vec<u8> {
        let pem = std::fs::read(path).expect("read the certificate file");
        CertificateDer::from_pem_slice(&pem)
            .expect("a PEM certificate")
            .to_vec()
    }

    fn write_pair(dir: &Path, name: &str, host: &str) -> (PathBuf, PathBuf) {
        let certified = rcgen::generate_simple_self_signed(vec![host.to_owned()])
            .expect("rcgen makes a certificate");
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, certified.cert.pem()).expect("write cert");
        std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
        (cert, key)
    }

    fn settings(data_dir: &Path) -> TlsSettings {
        TlsSettings {
            enabled: true,
            self_signed: true,
            turn_enabled: true,
            data_dir: data_dir.to_owned(),
            self_signed_names: vec!["parley.example.org".to_owned(), "127.0.0.1".to_owned()],
            ..TlsSettings::default()
        }
    }

    /// A handshake offering only `protocols` via ALPN, for `name`; returns the leaf presented.
    fn handshake_with_alpn(
        address: std::net::SocketAddr,
        name: &str,
        protocols: &[&[u8]],
    ) -> Result<Vec<u8>, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth();
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        let mut stream = TcpStream::connect(address).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut connection = rustls::ClientConnection::new(
            Arc::new(config),
            ServerName::try_from(name.to_owned()).expect("name"),
        )
        .expect("client");
        while connection.is_handshaking() {
            connection
                .complete_io(&mut stream)
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        }
        Ok(connection.peer_certificates().expect("a certificate")[0].to_vec())
    }

    #[test]
    fn acme_serves_self_signed_first_answers_alpn_challenges_and_installs_for_https_and_turn() {
        let dir = tempfile::tempdir().expect("tempdir");
        let acme_settings = TlsSettings {
            acme: true,
            self_signed: false,
            ..settings(dir.path())
        };
        let tls = Tls::load_settings(&acme_settings).expect("loads");
        let (self_signed, _) = acme_settings.self_signed_paths();
        assert!(
            self_signed.exists(),
            "self-signed serves until the first issuance"
        );
        assert!(
            tls.self_signed_notice
                .as_deref()
                .unwrap_or("")
                .contains("until the ACME server")
        );
        let slot = tls.acme.clone().expect("an ACME slot");
        let web = echo_server(tls.http.clone().expect("https"));
        let turn = echo_server(tls.turn.clone().expect("turn"));
        assert_eq!(presented(&connect(web)), leaf_in(&self_signed));

        // acme-tls/1 with no challenge pending: no certificate, the handshake fails.
        assert!(handshake_with_alpn(web, "parley.example.org", &[ACME_TLS_ALPN]).is_err());
        let challenge =
            rcgen::generate_simple_self_signed(vec!["parley.example.org".into()]).expect("cert");
        let challenge_der = challenge.cert.der().to_vec();
        slot.resolver().set_challenge(
            "Parley.Example.org",
            certified_key_from_pem(
                challenge.cert.pem().as_bytes(),
                challenge.signing_key.serialize_pem().as_bytes(),
            )
            .expect("certified"),
        );
        assert_eq!(
            handshake_with_alpn(web, "parley.example.org", &[ACME_TLS_ALPN]).expect("answered"),
            challenge_der
        );
        assert_eq!(
            presented(&connect(web)),
            leaf_in(&self_signed),
            "ordinary clients never see the challenge certificate"
        );
        slot.resolver().remove_challenge("parley.example.org");
        assert!(handshake_with_alpn(web, "parley.example.org", &[ACME_TLS_ALPN]).is_err());

        // An issued pair: a key that does not match is refused and nothing changes.
        let issued =
            rcgen::generate_simple_self_signed(vec!["parley.example.org".into()]).expect("cert");
        let other = rcgen::KeyPair::generate().expect("key");
        assert!(
            slot.install(&issued.cert.pem(), &other.serialize_pem())
                .is_err()
        );
        assert_eq!(presented(&connect(web)), leaf_in(&self_signed));
        slot.install(&issued.cert.pem(), &issued.signing_key.serialize_pem())
            .expect("installs");
        let issued_der = issued.cert.der().to_vec();
        assert_eq!(presented(&connect(web)), issued_der, "HTTPS swapped");
        assert_eq!(
            presented(&connect(turn)),
            issued_der,
            "TURN over TLS swapped"
        );
        assert_eq!(leaf_in(slot.cert_path()), issued_der);
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode(slot.cert_path()), 0o600);
        assert_eq!(mode(&acme_settings.acme_dir()), 0o700);
        assert_eq!(tls.reload_now(), 1, "SIGHUP now reloads the ACME pair");
        assert_eq!(presented(&connect(web)), issued_der);

        // A restart serves the stored pair from the start.
        let again = Tls::load_settings(&acme_settings).expect("loads");
        assert!(again.self_signed_notice.is_none());
        let web = echo_server(again.http.clone().expect("https"));
        assert_eq!(presented(&connect(web)), issued_der);
        let lines = doctor_settings(&acme_settings);
        assert!(lines[0].starts_with("tls (acme): ok, "), "{lines:?}");
    }

    #[test]
    fn disabled_tls_serves_plain_http_and_no_turn_tls_without_a_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = Tls::load_settings(&TlsSettings {
            enabled: false,
            ..settings(dir.path())
        })
        .expect("plain config loads");
        assert!(tls.http.is_none());
        assert!(tls.turn.is_none());
        assert!(tls.self_signed_notice.is_none());
        assert!(!dir.path().join("tls").exists(), "nothing generated");
    }

    #[test]
    fn disabled_http_tls_still_serves_turn_tls_from_the_tls_pair() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = write_pair(dir.path(), "a", "turn.example.org");
        let tls = Tls::load_settings(&TlsSettings {
            enabled: false,
            cert,
            key,
            ..settings(dir.path())
        })
        .expect("loads");
        assert!(tls.http.is_none());
        assert!(tls.turn.is_some());
    }

    #[test]
    fn enabled_without_certificate_or_self_signed_names_the_settings_to_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let error = Tls::load_settings(&TlsSettings {
            self_signed: false,
            ..settings(dir.path())
        })
        .expect_err("no certificate at all must fail");
        let message = format!("{error:#}");
        assert!(message.contains("tls.cert"), "{message}");
        assert!(message.contains("tls.self_signed"), "{message}");
    }

    #[test]
    fn a_cert_without_a_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let error = Tls::load_settings(&TlsSettings {
            cert: dir.path().join("x.crt"),
            ..settings(dir.path())
        })
        .expect_err("cert without key must fail");
        assert_eq!(
            format!("{error:#}"),
            "tls.cert is set but tls.key is empty: set both, or neither"
        );
        let error = Tls::load_settings(&TlsSettings {
            turn_key: dir.path().join("x.key"),
            ..settings(dir.path())
        })
        .expect_err("turn key without cert must fail");
        assert!(format!("{error:#}").starts_with("turn.tls_key is set but turn.tls_cert"));
    }

    #[test]
    fn self_signed_pair_is_generated_once_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = Tls::load_settings(&settings(dir.path())).expect("self-signed loads");
        let cert = dir.path().join("tls/cert.pem");
        let key = dir.path().join("tls/key.pem");
        let mode = |path: &Path| {
            std::fs::metadata(path)
                .expect("file exists")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&dir.path().join("tls")), 0o700);
        let notice = tls.self_signed_notice.as_deref().expect("notice is set");
        assert!(notice.contains("browsers will show a security warning"));
        assert!(notice.contains("tls.cert and tls.key"));
        let first = leaf_in(&cert);

        let again = Tls::load_settings(&settings(dir.path())).expect("reloads");
        assert_eq!(
            leaf_in(&cert),
            first,
            "an existing pair is never regenerated"
        );

        // The served certificate is the file's, and TURN shares it.
        let address = echo_server(again.http.clone().expect("https on"));
        assert_eq!(presented(&connect(address)), first);
        let address = echo_server(again.turn.clone().expect("turn tls on"));
        assert_eq!(presented(&connect(address)), first);
        assert_eq!(again.watched.len(), 1, "one shared pair, watched once");
    }

    #[test]
    fn self_signed_certificate_names_the_configured_hosts() {
        let dir = tempfile::tempdir().expect("tempdir");
        Tls::load_settings(&settings(dir.path())).expect("self-signed loads");
        let der = leaf_in(&dir.path().join("tls/cert.pem"));
        // DER holds dNSName SANs as raw ASCII and iPAddress SANs as raw octets.
        let contains = |needle: &[u8]| der.windows(needle.len()).any(|w| w == needle);
        assert!(contains(b"parley.example.org"));
        assert!(contains(&[0x87, 4, 127, 0, 0, 1]), "IP SAN 127.0.0.1");
    }

    #[test]
    fn http_advertises_only_http1_and_turn_no_alpn() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = Tls::load_settings(&settings(dir.path())).expect("loads");
        assert_eq!(
            tls.http.expect("https").alpn_protocols,
            vec![b"http/1.1".to_vec()]
        );
        assert!(tls.turn.expect("turn").alpn_protocols.is_empty());
    }

    #[test]
    fn separate_turn_pair_is_served_on_turn_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = write_pair(dir.path(), "web", "web.example.org");
        let (turn_cert, turn_key) = write_pair(dir.path(), "turn", "turn.example.org");
        let tls = Tls::load_settings(&TlsSettings {
            cert: cert.clone(),
            key,
            turn_cert: turn_cert.clone(),
            turn_key,
            ..settings(dir.path())
        })
        .expect("loads");
        assert!(tls.self_signed_notice.is_none());
        assert!(
            !dir.path().join("tls").exists(),
            "no self-signed when a pair is set"
        );
        let web = echo_server(tls.http.clone().expect("https"));
        let turn = echo_server(tls.turn.clone().expect("turn"));
        assert_eq!(presented(&connect(web)), leaf_in(&cert));
        assert_eq!(presented(&connect(turn)), leaf_in(&turn_cert));
    }

    #[test]
    fn turn_disabled_means_no_turn_tls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = Tls::load_settings(&TlsSettings {
            turn_enabled: false,
            ..settings(dir.path())
        })
        .expect("loads");
        assert!(tls.http.is_some());
        assert!(tls.turn.is_none());
    }

    #[test]
    fn mismatched_key_is_refused_with_a_hint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, _) = write_pair(dir.path(), "a", "a.example.org");
        let (_, other_key) = write_pair(dir.path(), "b", "b.example.org");
        let error = Tls::load_settings(&TlsSettings {
            cert,
            key: other_key,
            ..settings(dir.path())
        })
        .expect_err("mismatched pair must fail");
        let message = format!("{error:#}");
        assert!(
            message.contains("does not belong to the certificate"),
            "{message}"
        );
        assert!(message.contains("a.crt"), "names the file: {message}");
    }

    #[test]
    fn garbage_files_are_refused_not_panicked_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("c.pem");
        let key = dir.path().join("k.pem");
        std::fs::write(&cert, b"not a certificate").expect("write");
        std::fs::write(&key, b"-----BEGIN PRIVATE KEY-----\n!!!\n").expect("write");
        let error = Tls::load_settings(&TlsSettings {
            cert,
            key,
            ..settings(dir.path())
        })
        .expect_err("garbage must fail");
        assert!(format!("{error:#}").contains("no CERTIFICATE block"));
        let missing = Tls::load_settings(&TlsSettings {
            cert: dir.path().join("missing.pem"),
            key: dir.path().join("missing.key"),
            ..settings(dir.path())
        })
        .expect_err("missing must fail");
        assert!(format!("{missing:#}").contains("cannot read certificate"));
    }

    #[test]
    fn reload_swaps_the_certificate_for_new_handshakes_and_keeps_open_connections() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = write_pair(dir.path(), "live", "old.example.org");
        let old = leaf_in(&cert);
        let tls = Tls::load_settings(&TlsSettings {
            cert: cert.clone(),
            key: key.clone(),
            ..settings(dir.path())
        })
        .expect("loads");
        let web = echo_server(tls.http.clone().expect("https"));
        let turn = echo_server(tls.turn.clone().expect("turn"));
        let mut open = connect(web);
        assert_eq!(presented(&open), old);

        let (new_cert, new_key) = write_pair(dir.path(), "next", "new.example.org");
        std::fs::rename(&new_cert, &cert).expect("rename cert into place");
        std::fs::rename(&new_key, &key).expect("rename key into place");
        let new = leaf_in(&cert);
        assert_ne!(old, new);
        assert_eq!(tls.reload_now(), 1);

        assert_eq!(presented(&connect(web)), new);
        assert_eq!(presented(&connect(turn)), new, "turn shares the reload");
        echo(&mut open, b"still here");
        assert_eq!(
            presented(&open),
            old,
            "an open connection keeps its session"
        );
    }

    #[test]
    fn failed_reload_keeps_serving_the_previous_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = write_pair(dir.path(), "live", "old.example.org");
        let old = leaf_in(&cert);
        let tls = Tls::load_settings(&TlsSettings {
            cert: cert.clone(),
            key,
            ..settings(dir.path())
        })
        .expect("loads");
        let web = echo_server(tls.http.clone().expect("https"));
        // Only the certificate replaced: the key no longer matches.
        let (next_cert, _) = write_pair(dir.path(), "next", "new.example.org");
        std::fs::rename(&next_cert, &cert).expect("rename");
        assert_eq!(tls.reload_now(), 0);
        assert_eq!(presented(&connect(web)), old);
    }

    #[test]
    fn file_change_reloads_after_the_files_settle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = write_pair(dir.path(), "live", "old.example.org");
        let tls = Tls::load_settings(&TlsSettings {
            cert: cert.clone(),
            key: key.clone(),
            ..settings(dir.path())
        })
        .expect("loads");
        let mut watched = tls.watched[0].clone();
        let served = || watched_leaf(&tls);
        let old = served();

        watched.poll();
        assert_eq!(served(), old, "no change, no reload");

        // The certificate is renewed first; the key follows a moment later.
        let (next_cert, next_key) = write_pair(dir.path(), "next", "new.example.org");
        std::fs::rename(&next_cert, &cert).expect("rename cert");
        watched.poll();
        assert_eq!(
            served(),
            old,
            "a first sighting waits for the change to settle"
        );
        std::fs::rename(&next_key, &key).expect("rename key");
        watched.poll();
        assert_eq!(served(), old, "the key changed too: wait again");
        watched.poll();
        assert_eq!(served(), leaf_in(&cert), "settled: reloaded");
        let new = served();
        watched.poll();
        assert_eq!(served(), new);
    }

    fn watched_leaf(tls: &Tls) -> Vec<u8> {
        tls.watched[0].resolver.current().cert[0].to_vec()
    }

    #[tokio::test]
    async fn sighup_reloads_through_the_spawned_reloader_until_shutdown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = write_pair(dir.path(), "live", "old.example.org");
        let tls = Tls::load_settings(&TlsSettings {
            cert: cert.clone(),
            key: key.clone(),
            ..settings(dir.path())
        })
        .expect("loads");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tls.spawn_reloader(async move {
            let _ = stopped.await;
        });
        let old = watched_leaf(&tls);
        let (next_cert, next_key) = write_pair(dir.path(), "next", "new.example.org");
        std::fs::rename(&next_cert, &cert).expect("rename cert");
        std::fs::rename(&next_key, &key).expect("rename key");
        // Our own process: the handler installed by spawn_reloader keeps it alive.
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).expect("raise SIGHUP");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while watched_leaf(&tls) == old {
            assert!(
                tokio::time::Instant::now() < deadline,
                "SIGHUP reloaded within 1 s (faster than the {POLL_INTERVAL:?} poll)"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(watched_leaf(&tls), leaf_in(&cert));
        stop.send(()).expect("reloader still running");
    }

    #[test]
    fn host_of_url_extracts_the_host() {
        assert_eq!(host_of_url(""), None);
        assert_eq!(
            host_of_url("https://Call.Example.org/"),
            Some("call.example.org".into())
        );
        assert_eq!(
            host_of_url("https://call.example.org:8443/x?y"),
            Some("call.example.org".into())
        );
        assert_eq!(
            host_of_url("https://[2001:db8::1]:443"),
            Some("2001:db8::1".into())
        );
        assert_eq!(
            host_of_url("call.example.org"),
            Some("call.example.org".into())
        );
        assert_eq!(host_of_url("https://"), None);
        assert_eq!(host_of_url("https://[::1"), None);
    }

    #[test]
    fn doctor_describes_the_self_signed_plan_without_creating_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lines = doctor_settings(&settings(dir.path()));
        assert!(lines[0].contains("will be generated"), "{lines:?}");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("browsers will show a security warning"))
        );
        assert!(!dir.path().join("tls").exists());
        Tls::load_settings(&settings(dir.path())).expect("generates");
        let lines = doctor_settings(&settings(dir.path()));
        assert!(lines[0].starts_with("tls (https): ok"), "{lines:?}");
        let broken = doctor_settings(&TlsSettings {
            cert: dir.path().join("nope.pem"),
            key: dir.path().join("nope.key"),
            ..settings(dir.path())
        });
        assert!(
            broken[0].contains("ERROR cannot read certificate"),
            "{broken:?}"
        );
    }
}
