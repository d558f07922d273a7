//! Accounts over HTTP: register, login, logout, me; and the [`AuthUser`] extractor that every
//! authenticated route uses.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Json, Router};
use parley_config::{AuthConfig, Registration};
use parley_store::User;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::{ApiError, ApiJson, Code};
use crate::state::AppState;

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: i64,
    pub session_id: i64,
    pub user: User,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(ApiError::unauthorized)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(ApiError::unauthorized)?;
        match state.store.session_user(token.trim()).await? {
            Some((session, user)) => Ok(AuthUser {
                id: user.id,
                session_id: session.id,
                user,
            }),
            None => Err(ApiError::unauthorized()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    username: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RegisterBody {
    username: String,
    password: String,
    #[serde(default)]
    display_name: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenReply {
    token: String,
    expires_at: String,
    user: User,
}

#[derive(Serialize)]
struct MeReply {
    user: User,
}

/// A sliding-window budget of attempts per key. In memory on purpose: losing it at restart
/// only resets the throttle.
#[derive(Debug)]
pub struct AttemptLimiter {
    limit: usize,
    window: Duration,
    attempts: Mutex<HashMap<String, Vec<Instant>>>,
}

/// Keys a limiter keeps at most (a few MiB). When it is full, idle keys are forgotten; if that
/// makes no room, the map is being sprayed and new keys are refused (their attempts count as
/// limited) rather than stored.
const MAX_KEYS: usize = 20_000;

impl AttemptLimiter {
    pub fn new(per_minute: u32) -> AttemptLimiter {
        AttemptLimiter {
            limit: per_minute.max(1) as usize,
            window: Duration::from_secs(60),
            attempts: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one attempt for `key` at `now`, unless `key` has used up its budget within the
    /// window: then counts nothing and returns `false`. Checking and counting are one step, so
    /// that attempts in flight at the same time cannot all pass the check (issue 10: 100
    /// simultaneous logins all passed a limit of 10 that was counted only after each hash).
    pub fn try_take(&self, key: &str, now: Instant) -> bool {
        let mut map = self
            .attempts
            .lock()
            .expect("no panics while holding the limiter lock");
        if map.len() >= MAX_KEYS && !map.contains_key(key) {
            let window = self.window;
            map.retain(|_, times| {
                times
                    .last()
                    .is_some_and(|t| now.duration_since(*t) < window)
            });
            if map.len() >= MAX_KEYS {
                return false;
            }
        }
        let times = map.entry(key.to_owned()).or_default();
        times.retain(|t| now.duration_since(*t) < self.window);
        if times.len() >= self.limit {
            return false;
        }
        times.push(now);
        true
    }

    /// Returns the attempt [`AttemptLimiter::try_take`] counted last for `key`: the attempt
    /// turned out not to count (a successful login, or one shed before any work).
    pub fn give_back(&self, key: &str) {
        let mut map = self
            .attempts
            .lock()
            .expect("no panics while holding the limiter lock");
        if let Some(times) = map.get_mut(key) {
            times.pop();
            if times.is_empty() {
                map.remove(key);
            }
        }
    }
}

/// At most `concurrency` password hashes at a time and `queue` more waiting; the rest are
/// refused at once. Each argon2id hash takes ~19 MiB and tens of ms of a core: unbounded, a
/// login flood from nowhere took 1.9 GiB and every core (issue 10).
#[derive(Debug)]
pub struct HashGate {
    /// Permits for hashing and waiting to hash, taken without waiting.
    admitted: Arc<Semaphore>,
    /// Permits for hashing.
    hashing: Arc<Semaphore>,
}

/// A place in the [`HashGate`]'s queue.
pub struct HashTicket {
    admitted: OwnedSemaphorePermit,
    hashing: Arc<Semaphore>,
}

impl HashGate {
    pub fn new(concurrency: u32, queue: u32) -> HashGate {
        let concurrency = concurrency.max(1) as usize;
        HashGate {
            admitted: Arc::new(Semaphore::new(concurrency + queue as usize)),
            hashing: Arc::new(Semaphore::new(concurrency)),
        }
    }

    /// A place in the queue, or `None` when the queue is full.
    pub fn enter(&self) -> Option<HashTicket> {
        Some(HashTicket {
            admitted: self.admitted.clone().try_acquire_owned().ok()?,
            hashing: self.hashing.clone(),
        })
    }
}

impl HashTicket {
    /// Runs `work` (which hashes) once a hashing permit is free, on its own task: if the client
    /// goes away, the hash still finishes before the permit is returned, so the bound holds.
    pub async fn run<T: Send + 'static>(
        self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, ApiError> {
        let HashTicket { admitted, hashing } = self;
        tokio::spawn(async move {
            let hashing = hashing
                .acquire_owned()
                .await
                .expect("the hashing semaphore is never closed");
            let result = work.await;
            drop((hashing, admitted));
            result
        })
        .await
        .map_err(ApiError::internal)
    }
}

/// Login and registration throttling (issue 10). Failed logins are budgeted per (username,
/// client address), so wrong passwords from one place cannot lock the user out everywhere,
/// and per client address whatever the username, so one address cannot try every account.
/// Registrations have a budget per address. Password hashing is bounded by a [`HashGate`].
#[derive(Debug)]
pub struct LoginLimiter {
    per_user_and_address: AttemptLimiter,
    per_address: AttemptLimiter,
    registrations: AttemptLimiter,
    hashing: HashGate,
}

impl LoginLimiter {
    pub fn new(auth: &AuthConfig) -> LoginLimiter {
        LoginLimiter {
            per_user_and_address: AttemptLimiter::new(auth.login_attempts_per_minute),
            per_address: AttemptLimiter::new(auth.login_attempts_per_address_per_minute),
            registrations: AttemptLimiter::new(auth.login_attempts_per_minute),
            hashing: HashGate::new(auth.password_hash_concurrency, auth.password_hash_queue),
        }
    }
}

/// The throttling key of a client address: IPv6 clients get a whole /64 each (one host can
/// use every address in it), IPv4-mapped ones their IPv4 address.
pub(crate) fn address_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

fn server_busy() -> ApiError {
    ApiError::new(
        Code::RateLimited,
        "the server is busy checking other passwords; try again in a few seconds",
    )
}

async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<ApiJson<LoginBody>, ApiError>,
) -> Result<Json<TokenReply>, ApiError> {
    let ApiJson(body) = body?;
    let now = Instant::now();
    let address = address_key(peer.ip());
    // Usernames are at most 32 characters; a longer one cannot exist, and is cut so that a key
    // cannot be a 64 KiB string (the map holds up to MAX_KEYS of them).
    let username: String = body.username.chars().take(33).collect();
    let user_key = format!("{}@{address}", username.to_lowercase());
    let limiter = &state.login_limiter;
    // Counted before the hash, given back when the login succeeds or is shed.
    if !limiter.per_user_and_address.try_take(&user_key, now) {
        return Err(ApiError::new(
            Code::RateLimited,
            "too many failed logins for this user from this address; wait a minute and try again",
        ));
    }
    if !limiter.per_address.try_take(&address, now) {
        limiter.per_user_and_address.give_back(&user_key);
        return Err(ApiError::new(
            Code::RateLimited,
            "too many failed logins from this address; wait a minute and try again",
        ));
    }
    let give_back = || {
        limiter.per_user_and_address.give_back(&user_key);
        limiter.per_address.give_back(&address);
    };
    let Some(ticket) = limiter.hashing.enter() else {
        give_back();
        return Err(server_busy());
    };
    let store = state.store.clone();
    let verified = ticket
        .run(async move { store.verify_login(&body.username, &body.password).await })
        .await
        .and_then(|result| result.map_err(ApiError::from));
    match verified {
        Ok(Some(user)) => {
            give_back();
            Ok(Json(new_session(&state, user).await?))
        }
        Ok(None) => Err(ApiError::new(
            Code::Unauthorized,
            "wrong username or password",
        )),
        Err(e) => {
            give_back();
            Err(e)
        }
    }
}

async fn new_session(state: &AppState, user: User) -> Result<TokenReply, ApiError> {
    let session = state
        .store
        .create_session(user.id, state.config.auth.token_ttl_secs)
        .await?;
    Ok(TokenReply {
        token: session.token,
        expires_at: parley_store::rfc3339(session.session.expires_at),
        user,
    })
}

async fn register(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<ApiJson<RegisterBody>, ApiError>,
) -> Result<(StatusCode, Json<TokenReply>), ApiError> {
    if state.config.auth.registration == Registration::Closed {
        return Err(ApiError::new(
            Code::Forbidden,
            "registration is closed; ask an administrator for an account",
        ));
    }
    let ApiJson(body) = body?;
    // Account creation costs an argon2 hash: throttled per address, and through the hash gate.
    if !state
        .login_limiter
        .registrations
        .try_take(&address_key(peer.ip()), Instant::now())
    {
        return Err(ApiError::new(
            Code::RateLimited,
            "too many registrations from this address; wait a minute and try again",
        ));
    }
    let ticket = state
        .login_limiter
        .hashing
        .enter()
        .ok_or_else(server_busy)?;
    let store = state.store.clone();
    let user = ticket
        .run(async move {
            store
                .create_user(&body.username, body.display_name.as_deref(), &body.password)
                .await
        })
        .await??;
    let (username, id) = (user.username.clone(), user.id);
    let reply = new_session(&state, user).await?;
    // Only now is everything the client will rely on stored.
    log::info!("registered user {username} (id {id})");
    Ok((StatusCode::CREATED, Json(reply)))
}

async fn logout(State(state): State<AppState>, user: AuthUser) -> Result<StatusCode, ApiError> {
    state.store.revoke_session(user.session_id).await?;
    // hook: logout disconnects the sockets that authenticated with this session.
    state.calls.disconnect_session(user.session_id).await;
    Ok(StatusCode::NO_CONTENT)
}

async fn me(user: AuthUser) -> Json<MeReply> {
    Json(MeReply { user: user.user })
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/register", post(register))
        .route("/api/v1/auth/logout", post(logout))
        .route("/api/v1/me", get(me))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_allows_the_budget_then_refuses_until_the_window_passes() {
        let limiter = AttemptLimiter::new(3);
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.try_take("k", start));
        }
        assert!(!limiter.try_take("k", start));
        assert!(limiter.try_take("other", start));
        assert!(limiter.try_take("k", start + Duration::from_secs(61)));
    }

    #[test]
    fn given_back_attempts_do_not_count() {
        let limiter = AttemptLimiter::new(2);
        let now = Instant::now();
        for _ in 0..10 {
            assert!(limiter.try_take("k", now));
            limiter.give_back("k");
        }
        assert!(limiter.try_take("k", now) && limiter.try_take("k", now));
        assert!(!limiter.try_take("k", now));
    }

    #[test]
    fn a_spray_of_keys_is_refused_past_the_cap_instead_of_stored() {
        let limiter = AttemptLimiter::new(10);
        let now = Instant::now();
        for i in 0..MAX_KEYS {
            assert!(limiter.try_take(&format!("k{i}"), now));
        }
        assert!(!limiter.try_take("one-more", now));
        assert!(limiter.try_take("k0", now), "known keys keep their budget");
        let later = now + Duration::from_secs(61);
        assert!(
            limiter.try_take("one-more", later),
            "idle keys are forgotten"
        );
    }

    #[test]
    fn ipv6_clients_are_throttled_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        assert_eq!(
            address_key("::ffff:192.0.2.7".parse().unwrap()),
            "192.0.2.7"
        );
    }

    #[tokio::test]
    async fn the_hash_gate_runs_at_most_its_concurrency_and_sheds_past_its_queue() {
        let gate = HashGate::new(2, 3);
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tickets: Vec<HashTicket> = (0..5).map(|_| gate.enter().expect("room")).collect();
        assert!(gate.enter().is_none(), "2 hashing + 3 waiting is full");
        let runs = tickets.into_iter().map(|ticket| {
            let (running, most) = (running.clone(), most.clone());
            tokio::spawn(ticket.run(async move {
                let now = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }))
        });
        for run in runs.collect::<Vec<_>>() {
            run.await.expect("joined").expect("ran");
        }
        assert_eq!(most.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert!(gate.enter().is_some(), "places are returned");
    }
}
