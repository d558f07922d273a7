//! `tls.acme`: gets and renews the HTTPS certificate from an ACME server (RFC 8555) by itself.
//!
//! When to ask is decided by the pure [`schedule::Schedule`]; this module is its shell: it reads
//! the clock and the stored certificate, talks to the server through `instant-acme`, answers the
//! challenge, and hands the result to [`crate::tls::AcmeSlot::install`], which stores it under
//! `<data_dir>/tls/acme/` and serves it from the next handshake on (HTTPS and TURN over TLS).
//!
//! Challenges: TLS-ALPN-01 (RFC 8737) is answered inside the TLS handshake of the HTTPS listener
//! by its certificate resolver; with `http.redirect_listen` set, HTTP-01 is answered there
//! instead (port 80 is the one most often open), and that listener redirects everything else to
//! HTTPS. Any failure is logged in words that say what to fix and retried with backoff; the
//! daemon keeps serving the certificate it has (self-signed until the first issuance).

pub mod schedule;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow, bail};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use parley_config::Config;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::tls::AcmeSlot;
use schedule::{Decision, Held, Schedule};

/// The account file inside `<data_dir>/tls/acme/`.
const ACCOUNT_FILE: &str = "account.json";
/// How long one order may take from the first request to the issued chain.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest sleep between two looks at the schedule, so a wall-clock jump (suspend, NTP) is
/// noticed within the hour.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// What the ACME task needs from the configuration.
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    /// The DNS name to get a certificate for: the host of `http.public_url`.
    pub host: String,
    pub email: String,
    pub directory: String,
    pub ca_roots: PathBuf,
    /// Answer HTTP-01 (on `http.redirect_listen`) rather than TLS-ALPN-01.
    pub http01: bool,
    /// `<data_dir>/tls/acme/`.
    pub dir: PathBuf,
}

impl AcmeSettings {
    /// `None` unless `tls.acme` is on and applies (no `tls.cert`).
    pub fn from_config(config: &Config) -> Option<AcmeSettings> {
        if !config.tls.acme || !config.tls.enabled || !config.tls.cert.as_os_str().is_empty() {
            return None;
        }
        Some(AcmeSettings {
            host: parley_config::acme_host(&config.http.public_url)?,
            email: config.tls.acme_email.trim().to_owned(),
            directory: config.tls.acme_directory.trim().to_owned(),
            ca_roots: config.tls.acme_ca_roots.clone(),
            http01: !config.http.redirect_listen.trim().is_empty(),
            dir: crate::tls::TlsSettings::from_config(config).acme_dir(),
        })
    }
}

/// HTTP-01 answers in flight: token → key authorization.
#[derive(Debug, Default)]
pub struct Http01Tokens(RwLock<HashMap<String, String>>);

impl Http01Tokens {
    fn insert(&self, token: &str, key_authorization: &str) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.to_owned(), key_authorization.to_owned());
    }

    fn remove(&self, token: &str) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
    }

    fn get(&self, token: &str) -> Option<String> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
    }
}

/// Starts the renewal task; it ends when `shutdown` is cancelled.
pub fn spawn(
    settings: AcmeSettings,
    slot: AcmeSlot,
    tokens: Arc<Http01Tokens>,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = run(settings, slot, tokens) => {}
        }
    });
}

async fn run(settings: AcmeSettings, slot: AcmeSlot, tokens: Arc<Http01Tokens>) {
    let mut schedule = Schedule::new();
    let mut announced_wait = None;
    loop {
        let held = read_held(slot.cert_path());
        let now = SystemTime::now();
        match schedule.decide(now, &settings.host, held.as_ref()) {
            Decision::WaitUntil(when) => {
                if announced_wait != Some(when) && schedule.failures() == 0 {
                    if let Some(held) = &held {
                        log::info!(
                            "acme: the certificate for {} is valid until {}; renewal from {}",
                            settings.host,
                            utc(held.not_after),
                            utc(when)
                        );
                    }
                    announced_wait = Some(when);
                }
                let wait = when.duration_since(now).unwrap_or_default().min(MAX_SLEEP);
                tokio::time::sleep(wait).await;
            }
            Decision::Request(reason) => {
                let challenge = if settings.http01 {
                    "HTTP-01 on http.redirect_listen"
                } else {
                    "TLS-ALPN-01 on http.listen"
                };
                log::info!(
                    "acme: requesting a certificate for {} from {} ({}; challenge {challenge})",
                    settings.host,
                    settings.directory,
                    reason.describe()
                );
                let attempt = tokio::time::timeout(
                    ORDER_TIMEOUT,
                    obtain(&settings, slot.resolver(), &tokens),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(anyhow!(
                        "the ACME server did not finish the order within {} s",
                        ORDER_TIMEOUT.as_secs()
                    ))
                });
                match attempt.and_then(|(chain, key)| {
                    slot.install(&chain, &key)?;
                    Ok(chain)
                }) {
                    Ok(chain) => {
                        schedule.issued();
                        let facts = first_certificate(chain.as_bytes()).and_then(|d| facts(&d));
                        match facts {
                            Some(facts) => log::info!(
                                "acme: certificate for {} issued by {}, valid until {}; serving it \
                                 now on HTTPS and TURN over TLS ({})",
                                facts.names.join(", "),
                                facts.issuer,
                                utc(facts.not_after),
                                slot.cert_path().display()
                            ),
                            None => log::info!(
                                "acme: certificate for {} issued; serving it now",
                                settings.host
                            ),
                        }
                    }
                    Err(error) => {
                        let wait = schedule.failed(SystemTime::now());
                        let still = if held.is_some() {
                            "still serving the previous ACME certificate"
                        } else {
                            "still serving the self-signed certificate"
                        };
                        log::error!(
                            "acme: could not get a certificate for {}: {error:#}. {still}; next \
                             attempt in {} min",
                            settings.host,
                            wait.as_secs().div_ceil(60)
                        );
                    }
                }
            }
        }
    }
}

/// The stored ACME certificate's facts, if there is a readable one.
fn read_held(cert: &Path) -> Option<Held> {
    let pem = std::fs::read(cert).ok()?;
    let facts = facts(&first_certificate(&pem)?)?;
    Some(Held {
        not_before: facts.not_before,
        not_after: facts.not_after,
        names: facts.names,
    })
}

fn first_certificate(pem: &[u8]) -> Option<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem).next()?.ok()
}

/// One order, from account to issued chain: `(chain PEM, key PEM)`.
async fn obtain(
    settings: &AcmeSettings,
    resolver: &crate::tls::SwappableCert,
    tokens: &Http01Tokens,
) -> anyhow::Result<(String, String)> {
    let account = account(settings).await?;
    let identifiers = [Identifier::Dns(settings.host.clone())];
    let mut order = match account.new_order(&NewOrder::new(&identifiers)).await {
        Ok(order) => order,
        Err(instant_acme::Error::Api(problem)) if refuses_account(&problem) => {
            // A revoked or deleted account never comes back: set it aside, so that the next
            // attempt registers a new one instead of failing the same way forever.
            let path = settings.dir.join(ACCOUNT_FILE);
            let _ = std::fs::rename(&path, path.with_extension("json.refused"));
            bail!(
                "the ACME server refused the account ({problem}); it was set aside as {} and a \
                 new one is registered at the next attempt",
                path.with_extension("json.refused").display()
            );
        }
        Err(error) => return Err(explain(error, settings)).context("new order"),
    };

    let kind = if settings.http01 {
        ChallengeType::Http01
    } else {
        ChallengeType::TlsAlpn01
    };
    let mut answered_tokens = Vec::new();
    let mut answered_alpn = false;
    let result = async {
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization.map_err(|e| explain(e, settings))?;
            match authorization.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => bail!("the ACME server reports the authorization as {other:?}"),
            }
            let mut challenge = authorization.challenge(kind.clone()).ok_or_else(|| {
                anyhow!(
                    "the ACME server offers no {kind:?} challenge for {}",
                    settings.host
                )
            })?;
            let key_authorization = challenge.key_authorization();
            if settings.http01 {
                tokens.insert(&challenge.token, key_authorization.as_str());
                answered_tokens.push(challenge.token.clone());
            } else {
                resolver.set_challenge(
                    &settings.host,
                    alpn_challenge_certificate(
                        &settings.host,
                        key_authorization.digest().as_ref(),
                    )?,
                );
                answered_alpn = true;
            }
            challenge
                .set_ready()
                .await
                .map_err(|e| explain(e, settings))?;
        }
        let status = match order
            .poll_ready(&RetryPolicy::new().timeout(Duration::from_secs(90)))
            .await
        {
            Ok(status) => status,
            // A failed validation may come back as the order's error rather than its status.
            Err(instant_acme::Error::Api(problem)) if is_validation_problem(&problem) => {
                bail!("{}", validation_advice(settings, &problem.to_string()))
            }
            Err(error) => return Err(explain(error, settings)),
        };
        if status != OrderStatus::Ready {
            bail!("{}", validation_failure(&mut order, settings).await);
        }
        Ok(())
    }
    .await;
    for token in &answered_tokens {
        tokens.remove(token);
    }
    if answered_alpn {
        resolver.remove_challenge(&settings.host);
    }
    result?;

    let key = rcgen::KeyPair::generate().context("cannot generate the certificate's key")?;
    let csr = rcgen::CertificateParams::new(vec![settings.host.clone()])
        .and_then(|params| params.serialize_request(&key))
        .context("cannot make the certificate request")?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(|e| explain(e, settings))
        .context("finalize")?;
    let chain = order
        .poll_certificate(&RetryPolicy::new().timeout(Duration::from_secs(60)))
        .await
        .map_err(|e| explain(e, settings))
        .context("download the certificate")?;
    Ok((chain, key.serialize_pem()))
}

/// Why validation failed, from the challenge's error, in words that say what to fix.
async fn validation_failure(order: &mut instant_acme::Order, settings: &AcmeSettings) -> String {
    let mut details = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(authorization)) = authorizations.next().await {
        for challenge in &authorization.challenges {
            if let Some(problem) = &challenge.error {
                details.push(problem.to_string());
            }
        }
    }
    let detail = if details.is_empty() {
        "no detail given".to_owned()
    } else {
        details.join("; ")
    };
    validation_advice(settings, &detail)
}

fn validation_advice(settings: &AcmeSettings, detail: &str) -> String {
    let where_ = if settings.http01 {
        "port 80 (http.redirect_listen)"
    } else {
        "port 443 (http.listen)"
    };
    format!(
        "the ACME server could not validate {host}: {detail}. Check that the DNS name {host} \
         points at this server and that {where_} is reachable from the internet",
        host = settings.host,
    )
}

fn problem_kind(problem: &instant_acme::Problem) -> &str {
    let kind = problem.r#type.as_deref().unwrap_or("");
    kind.rsplit(':').next().unwrap_or(kind)
}

/// RFC 8555 section 6.7 (and RFC 8657's caa): the server could not check that we control the name.
fn is_validation_problem(problem: &instant_acme::Problem) -> bool {
    matches!(
        problem_kind(problem),
        "connection" | "dns" | "tls" | "incorrectResponse" | "unauthorized" | "caa"
    )
}

fn refuses_account(problem: &instant_acme::Problem) -> bool {
    matches!(
        problem_kind(problem),
        "accountDoesNotExist" | "unauthorized"
    )
}

/// instant-acme's error with the server's problem type turned into advice.
fn explain(error: instant_acme::Error, settings: &AcmeSettings) -> anyhow::Error {
    match &error {
        instant_acme::Error::Api(problem) => {
            let kind = problem.r#type.as_deref().unwrap_or("");
            let advice = if kind.ends_with(":rateLimited") {
                "the ACME server's rate limit was hit; Parley retries later by itself"
            } else if kind.ends_with(":accountDoesNotExist") {
                "the ACME server does not know the stored account; remove \
                 <data_dir>/tls/acme/account.json to register a new one"
            } else if kind.ends_with(":rejectedIdentifier") || kind.ends_with(":malformed") {
                "the ACME server will not issue for this name: check http.public_url"
            } else if kind.ends_with(":invalidContact") {
                "the ACME server refuses the contact address: check tls.acme_email"
            } else {
                "the ACME server refused the request"
            };
            anyhow!("{advice} ({problem})")
        }
        instant_acme::Error::Http(_)
        | instant_acme::Error::Hyper(_)
        | instant_acme::Error::Other(_) => {
            anyhow!(
                "cannot talk to the ACME server at {} ({error}): check the network, \
                 tls.acme_directory, and for a private ACME server tls.acme_ca_roots",
                settings.directory
            )
        }
        _ => anyhow!(error),
    }
}

/// The stored account: its credentials and the directory they belong to.
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// Restores the account from `<data_dir>/tls/acme/account.json`, or registers a new one (and
/// stores it, 0600) when there is none or it belongs to another directory.
async fn account(settings: &AcmeSettings) -> anyhow::Result<Account> {
    let path = settings.dir.join(ACCOUNT_FILE);
    if let Ok(text) = std::fs::read(&path)
        && let Ok(stored) = serde_json::from_slice::<StoredAccount>(&text)
        && stored.directory == settings.directory
    {
        return Account::builder_with_http(http_client(settings)?)
            .from_credentials(stored.credentials)
            .await
            .map_err(|e| explain(e, settings));
    }
    let contact = (!settings.email.is_empty()).then(|| format!("mailto:{}", settings.email));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = Account::builder_with_http(http_client(settings)?)
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            settings.directory.clone(),
            None,
        )
        .await
        .map_err(|e| explain(e, settings))
        .context("register an ACME account")?;
    let stored = serde_json::to_vec_pretty(&StoredAccount {
        directory: settings.directory.clone(),
        credentials,
    })
    .context("cannot serialise the ACME account")?;
    crate::tls::write_private(&path, &stored)?;
    log::info!(
        "acme: registered an account with {} (stored in {})",
        settings.directory,
        path.display()
    );
    Ok(account)
}

/// HTTPS to the ACME server, trusting the system's roots plus `tls.acme_ca_roots`.
fn http_client(settings: &AcmeSettings) -> anyhow::Result<Box<dyn instant_acme::HttpClient>> {
    let extra = if settings.ca_roots.as_os_str().is_empty() {
        Vec::new()
    } else {
        let roots = CertificateDer::pem_file_iter(&settings.ca_roots)
            .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
            .with_context(|| {
                format!(
                    "cannot read tls.acme_ca_roots {} (a PEM file of CA certificates)",
                    settings.ca_roots.display()
                )
            })?;
        if roots.is_empty() {
            bail!(
                "tls.acme_ca_roots {} holds no CERTIFICATE block",
                settings.ca_roots.display()
            );
        }
        roots
    };
    let provider = crate::tls::provider();
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
            .context(
                "cannot load the system's root certificates (/etc/ssl/certs; on Debian: apt-get install ca-certificates)",
            )?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("the ring crypto provider supports no TLS version (a build problem)")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .build();
    let client: hyper_util::client::legacy::Client<_, instant_acme::BodyWrapper<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    Ok(Box::new(client))
}

/// The self-signed certificate of RFC 8737: the name, and the SHA-256 of the key authorization
/// in the critical acmeIdentifier extension.
fn alpn_challenge_certificate(host: &str, digest: &[u8]) -> anyhow::Result<CertifiedKey> {
    let mut params = rcgen::CertificateParams::new(vec![host.to_owned()])
        .context("cannot make the TLS-ALPN-01 certificate")?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().context("cannot generate a key")?;
    let cert = params
        .self_signed(&key)
        .context("cannot sign the TLS-ALPN-01 certificate")?;
    let key = PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| anyhow!("unusable generated key: {e}"))?;
    // Not `CertifiedKey::from_der`: its consistency check parses the certificate with webpki,
    // which refuses the critical acmeIdentifier extension it does not know.
    let signing_key = crate::tls::provider()
        .key_provider
        .load_private_key(key)
        .context("unusable generated key")?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing_key))
}

/// What `parley doctor` and `/metrics` say about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// The issuer's distinguished name, e.g. `C=US, O=Let's Encrypt, CN=R11`.
    pub issuer: String,
    /// DNS names and IP addresses of the subjectAltName extension.
    pub names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Facts {
    pub fn days_left(&self, now: SystemTime) -> i64 {
        match self.not_after.duration_since(now) {
            Ok(left) => (left.as_secs() / 86_400) as i64,
            Err(past) => -(past.duration().as_secs().div_ceil(86_400) as i64),
        }
    }
}

pub fn facts(der: &[u8]) -> Option<Facts> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.push(dns.to_ascii_lowercase()),
                GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => names.push(
                        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*bytes).ok()?).to_string(),
                    ),
                    16 => names.push(
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*bytes).ok()?).to_string(),
                    ),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    let at = |t: i64| {
        if t >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(t as u64)
        } else {
            SystemTime::UNIX_EPOCH - Duration::from_secs(t.unsigned_abs())
        }
    };
    Some(Facts {
        issuer: cert.issuer().to_string(),
        names,
        not_before: at(cert.validity().not_before.timestamp()),
        not_after: at(cert.validity().not_after.timestamp()),
    })
}

fn utc(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{secs} (Unix time)"))
}

/// `parley doctor` lines for ACME: what is stored and when it renews, or why nothing is.
/// `stored` is whether the stored pair loads (`Err` says why not).
pub fn doctor_lines(cert: &Path, stored: Result<bool, String>) -> Vec<String> {
    match stored {
        Ok(true) => {
            let Some(facts) = std::fs::read(cert)
                .ok()
                .and_then(|pem| first_certificate(&pem))
                .and_then(|der| facts(&der))
            else {
                return vec![format!("tls (acme): ERROR cannot parse {}", cert.display())];
            };
            let now = SystemTime::now();
            let days = facts.days_left(now);
            let held = Held {
                not_before: facts.not_before,
                not_after: facts.not_after,
                names: facts.names.clone(),
            };
            let state = if days < 0 {
                "ERROR expired".to_owned()
            } else if now >= held.renew_at() {
                format!("WARNING renewal due ({days} days left): see `journalctl -u parley`")
            } else {
                format!(
                    "ok, {days} days left, renewal from {}",
                    utc(held.renew_at())
                )
            };
            vec![format!(
                "tls (acme): {state}; certificate for {} issued by {} ({})",
                facts.names.join(", "),
                facts.issuer,
                cert.display()
            )]
        }
        Ok(false) => vec![format!(
            "tls (acme): WARNING no certificate issued yet (it will be stored at {}); the daemon \
             asks the ACME server at start and logs why an attempt failed",
            cert.display()
        )],
        Err(error) => vec![format!(
            "tls (acme): WARNING the stored certificate is unusable ({error}); a new one is \
             requested at start"
        )],
    }
}

/// `/metrics` lines for the certificate served on HTTPS.
pub fn render_metrics(served: Option<&crate::tls::SwappableCert>, out: &mut String) {
    use std::fmt::Write;
    let Some(facts) = served.and_then(|s| s.current().cert.first().and_then(|c| facts(c))) else {
        return;
    };
    let expiry = facts
        .not_after
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let label = |text: &str| {
        text.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', " ")
    };
    let _ = write!(
        out,
        "# HELP parley_tls_certificate_expiry_seconds When the HTTPS certificate expires (Unix time).\n\
         # TYPE parley_tls_certificate_expiry_seconds gauge\n\
         parley_tls_certificate_expiry_seconds {expiry}\n\
         # HELP parley_tls_certificate_info The HTTPS certificate being served.\n\
         # TYPE parley_tls_certificate_info gauge\n\
         parley_tls_certificate_info{{issuer=\"{}\",names=\"{}\"}} 1\n",
        label(&facts.issuer),
        label(&facts.names.join(",")),
    );
}

/// Binds `http.redirect_listen` (before readiness, so a taken port 80 fails the start) and
/// serves it: HTTP-01 answers, and a 308 to HTTPS for everything else.
pub fn start_redirect(
    config: &Config,
    tokens: Arc<Http01Tokens>,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<SocketAddr>> {
    let listen = config.http.redirect_listen.trim();
    if listen.is_empty() {
        return Ok(None);
    }
    let address: SocketAddr = listen
        .parse()
        .with_context(|| format!("http.redirect_listen {listen:?} is not an address"))?;
    let listener = std::net::TcpListener::bind(address).with_context(|| {
        format!(
            "cannot listen on {address} (http.redirect_listen): is another web server using it?"
        )
    })?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let public = config.public_url();
    let base = public
        .starts_with("https://")
        .then(|| public.trim_end_matches('/').to_owned());
    tokio::spawn(redirect::serve(listener, base, tokens, shutdown));
    log::info!("redirecting plain HTTP on {bound} to HTTPS (http.redirect_listen)");
    Ok(Some(bound))
}

mod redirect;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alpn_challenge_certificate_names_the_host_and_carries_the_digest() {
        let digest = [7u8; 32];
        let certified = alpn_challenge_certificate("call.example.org", &digest).expect("made");
        let der = certified.cert[0].to_vec();
        let facts = facts(&der).expect("parses");
        assert_eq!(facts.names, ["call.example.org"]);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parses");
        let extension = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(extension.critical, "RFC 8737 requires it critical");
        // An OCTET STRING of the 32-byte digest.
        assert_eq!(&extension.value[2..], &digest);
    }

    #[test]
    fn facts_report_issuer_names_and_days_left() {
        let mut params =
            rcgen::CertificateParams::new(vec!["a.example.org".into(), "127.0.0.1".into()])
                .expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Test CA");
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(10) + time::Duration::hours(1);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let facts = facts(cert.der()).expect("parses");
        assert_eq!(facts.names, ["a.example.org", "127.0.0.1"]);
        assert_eq!(facts.issuer, "CN=Test CA");
        assert_eq!(facts.days_left(SystemTime::now()), 10);
        let mut out = String::new();
        let served = crate::tls::SwappableCert::new(
            CertifiedKey::from_der(
                vec![cert.der().clone()],
                PrivateKeyDer::try_from(key.serialize_der()).expect("key"),
                &crate::tls::provider(),
            )
            .expect("certified"),
        );
        render_metrics(Some(&served), &mut out);
        assert!(
            out.contains("parley_tls_certificate_info{issuer=\"CN=Test CA\",names=\"a.example.org,127.0.0.1\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("parley_tls_certificate_expiry_seconds 1"),
            "{out}"
        );
    }

    #[test]
    fn doctor_says_what_is_missing_or_how_long_is_left() {
        let lines = doctor_lines(Path::new("/nowhere/cert.pem"), Ok(false));
        assert!(lines[0].contains("no certificate issued yet"), "{lines:?}");
        let lines = doctor_lines(Path::new("/nowhere/cert.pem"), Err("broken".into()));
        assert!(lines[0].contains("unusable (broken)"), "{lines:?}");
    }
}
