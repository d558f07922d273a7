//! Accounts over HTTP: register, login, logout, me; and the [`AuthUser`] extractor that every
//! authenticated route uses.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Json, Router};
use parley_config::Registration;
use parley_store::User;
use serde::{Deserialize, Serialize};

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

/// A sliding-window counter of failed attempts per key (a username or a client address).
/// In memory on purpose: losing it at restart only resets the throttle.
#[derive(Debug)]
pub struct AttemptLimiter {
    limit: usize,
    window: Duration,
    attempts: Mutex<HashMap<String, Vec<Instant>>>,
}

impl AttemptLimiter {
    pub fn new(per_minute: u32) -> AttemptLimiter {
        AttemptLimiter {
            limit: per_minute.max(1) as usize,
            window: Duration::from_secs(60),
            attempts: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `key` has used up its attempts within the window at `now`.
    pub fn is_limited(&self, key: &str, now: Instant) -> bool {
        let mut map = self
            .attempts
            .lock()
            .expect("no panics while holding the limiter lock");
        match map.get_mut(key) {
            Some(times) => {
                times.retain(|t| now.duration_since(*t) < self.window);
                times.len() >= self.limit
            }
            None => false,
        }
    }

    /// Counts one attempt for `key` at `now`.
    pub fn record(&self, key: &str, now: Instant) {
        let mut map = self
            .attempts
            .lock()
            .expect("no panics while holding the limiter lock");
        // Forget idle keys now and then, so a spray of usernames cannot grow the map forever.
        if map.len() > 10_000 {
            let window = self.window;
            map.retain(|_, times| {
                times
                    .last()
                    .is_some_and(|t| now.duration_since(*t) < window)
            });
        }
        map.entry(key.to_owned()).or_default().push(now);
    }
}

async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<ApiJson<LoginBody>, ApiError>,
) -> Result<Json<TokenReply>, ApiError> {
    let ApiJson(body) = body?;
    let now = Instant::now();
    let user_key = format!("user:{}", body.username.to_lowercase());
    let ip_key = format!("ip:{}", peer.ip());
    let limiter = &state.login_limiter;
    if limiter.is_limited(&user_key, now) || limiter.is_limited(&ip_key, now) {
        return Err(ApiError::new(
            Code::RateLimited,
            "too many failed logins; wait a minute and try again",
        ));
    }
    let Some(user) = state
        .store
        .verify_login(&body.username, &body.password)
        .await?
    else {
        limiter.record(&user_key, now);
        limiter.record(&ip_key, now);
        return Err(ApiError::new(
            Code::Unauthorized,
            "wrong username or password",
        ));
    };
    Ok(Json(new_session(&state, user).await?))
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
    // Account creation costs an argon2 hash: throttle it per address like failed logins.
    let now = Instant::now();
    let ip_key = format!("register:{}", peer.ip());
    if state.login_limiter.is_limited(&ip_key, now) {
        return Err(ApiError::new(
            Code::RateLimited,
            "too many registrations from this address; wait a minute and try again",
        ));
    }
    state.login_limiter.record(&ip_key, now);
    let user = state
        .store
        .create_user(&body.username, body.display_name.as_deref(), &body.password)
        .await?;
    log::info!("registered user {} (id {})", user.username, user.id);
    Ok((StatusCode::CREATED, Json(new_session(&state, user).await?)))
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
            assert!(!limiter.is_limited("k", start));
            limiter.record("k", start);
        }
        assert!(limiter.is_limited("k", start));
        assert!(!limiter.is_limited("other", start));
        assert!(!limiter.is_limited("k", start + Duration::from_secs(61)));
    }
}
