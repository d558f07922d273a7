//! Support for the web client's connection test ("Test my connection", issue 16), which is
//! reachable before sign-in:
//!
//! - `GET /api/v1/connection-test/ice-servers`: the reply of `/api/v1/ice-servers`, without
//!   sign-in, with TURN credentials valid for [`TEST_TTL_SECS`] only, at most
//!   [`ICE_SERVERS_PER_MINUTE`] per client address. docs/security.md says why this is no open
//!   relay.
//! - `POST /api/v1/diagnostics`: the test's result, checked field by field, written as one
//!   structured log line for the admin (`journalctl -u parley | grep 'diagnostics:'`), at most
//!   [`REPORTS_PER_MINUTE`] per client address.
//!
//! Authentication is optional on both: a valid token ties the request to its user; a missing,
//! expired or revoked one makes it anonymous (the screen works before sign-in and after a
//! session ended).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::auth::{AttemptLimiter, AuthUser, address_key};
use super::error::{ApiError, Code};
use crate::relay::{IceServersReply, ice_servers_for};
use crate::state::AppState;

/// Lifetime of the connection test's TURN credentials: the test takes about 10 s; two minutes
/// leave room for a slow network and no more.
pub const TEST_TTL_SECS: u64 = 120;
/// ICE server requests per client address and minute (a test needs one; a few retries).
pub const ICE_SERVERS_PER_MINUTE: u32 = 6;
/// Diagnostics reports per client address and minute (one click each).
pub const REPORTS_PER_MINUTE: u32 = 3;
/// The largest diagnostics body.
pub const MAX_REPORT_BYTES: usize = 8 * 1024;
pub const MAX_SUMMARY_CHARS: usize = 500;
pub const MAX_USER_AGENT_CHARS: usize = 300;
/// A transport's error text (the browser's words, e.g. "timeout" or an ICE error).
pub const MAX_ERROR_CHARS: usize = 200;
/// A round trip longer than a minute is no working path.
pub const MAX_RTT_MS: f64 = 60_000.0;

/// The per-address budgets, shared by the routes of one router.
#[derive(Debug)]
struct Limits {
    ice_servers: AttemptLimiter,
    reports: AttemptLimiter,
}

/// The two routes, with their own budgets.
pub fn router() -> Router<AppState> {
    let limits = Arc::new(Limits {
        ice_servers: AttemptLimiter::new(ICE_SERVERS_PER_MINUTE),
        reports: AttemptLimiter::new(REPORTS_PER_MINUTE),
    });
    Router::new()
        .route("/api/v1/connection-test/ice-servers", get(test_ice_servers))
        .route("/api/v1/diagnostics", post(diagnostics))
        .layer(Extension(limits))
}

/// The signed-in user when the request carries a valid token; `None` otherwise.
pub struct MaybeUser(pub Option<AuthUser>);

impl FromRequestParts<AppState> for MaybeUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if !parts.headers.contains_key(header::AUTHORIZATION) {
            return Ok(MaybeUser(None));
        }
        match AuthUser::from_request_parts(parts, state).await {
            Ok(user) => Ok(MaybeUser(Some(user))),
            Err(error) if error.code == Code::Unauthorized => Ok(MaybeUser(None)),
            // The database failing is not "anonymous".
            Err(error) => Err(error),
        }
    }
}

/// The TURN username of an anonymous connection test: `conntest-` and the client's
/// throttling key (its IPv4 address or IPv6 /64) with separators made plain, so the relay's
/// per-user quota counts each address as one user.
pub fn anonymous_turn_user(address_key: &str) -> String {
    let plain: String = address_key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("conntest-{plain}")
}

fn rate_limited(what: &str) -> ApiError {
    ApiError::new(
        Code::RateLimited,
        format!("too many {what} from this address; wait a minute and try again"),
    )
}

async fn test_ice_servers(
    State(state): State<AppState>,
    Extension(limits): Extension<Arc<Limits>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    MaybeUser(user): MaybeUser,
) -> Result<Json<IceServersReply>, ApiError> {
    let address = address_key(peer.ip());
    if !limits.ice_servers.try_take(&address, Instant::now()) {
        return Err(rate_limited("connection tests"));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut config = (*state.config).clone();
    config.turn.credential_ttl_secs = TEST_TTL_SECS;
    let secret = state.turn_secret.as_str();
    Ok(Json(match user {
        Some(user) => ice_servers_for(&config, secret, state.relay.as_deref(), user.id, now),
        None => {
            // Minted for user 0 first, then the embedded relay's entry (the one carrying that
            // exact credential) gets the anonymous username instead; extra servers keep theirs.
            let mut reply = ice_servers_for(&config, secret, state.relay.as_deref(), 0, now);
            let (placeholder, _) = parley_turn::mint(secret, 0, TEST_TTL_SECS, now);
            let username = format!(
                "{}:{}",
                now.saturating_add(TEST_TTL_SECS),
                anonymous_turn_user(&address)
            );
            // Extra servers with static credentials (`webrtc.extra_ice_servers`) are for
            // signed-in people only: a stranger gets credential-less ones and our relay's.
            reply.ice_servers.retain(|server| {
                server.credential.is_none()
                    || server.username.as_deref() == Some(placeholder.as_str())
            });
            for server in &mut reply.ice_servers {
                if server.username.as_deref() == Some(placeholder.as_str()) {
                    server.credential =
                        Some(parley_turn::credentials::password_for(secret, &username));
                    server.username = Some(username.clone());
                }
            }
            reply
        }
    }))
}

/// One transport's outcome in a connection test.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TransportResult {
    pub ok: bool,
    pub rtt_ms: Option<f64>,
    pub error: Option<String>,
}

/// A checked `POST /api/v1/diagnostics` body.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiagnosticsReport {
    pub kind: String,
    pub summary: String,
    /// `udp`, `tcp`, `tls`, each present only when tested.
    pub results: std::collections::BTreeMap<String, TransportResult>,
    pub media: MediaResult,
    pub user_agent: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MediaResult {
    pub microphone: bool,
    pub camera: bool,
}

fn invalid(field: &str, what: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(field, what)
}

/// Only `allowed` keys: the body is written to the log, so nothing unchecked goes with it.
fn only_fields(map: &Map<String, Value>, prefix: &str, allowed: &[&str]) -> Result<(), ApiError> {
    match map.keys().find(|key| !allowed.contains(&key.as_str())) {
        Some(key) => Err(invalid(&format!("{prefix}{key}"), "unknown field")),
        None => Ok(()),
    }
}

fn object_at<'a>(
    value: Option<&'a Value>,
    field: &str,
) -> Result<&'a Map<String, Value>, ApiError> {
    match value {
        Some(Value::Object(map)) => Ok(map),
        None | Some(Value::Null) => Err(invalid(field, "missing field")),
        Some(_) => Err(invalid(field, "expected an object")),
    }
}

fn bool_at(value: Option<&Value>, field: &str) -> Result<bool, ApiError> {
    match value {
        Some(Value::Bool(b)) => Ok(*b),
        None | Some(Value::Null) => Err(invalid(field, "missing field")),
        Some(_) => Err(invalid(field, "expected true or false")),
    }
}

fn text_at(value: Option<&Value>, field: &str, max_chars: usize) -> Result<String, ApiError> {
    match value {
        Some(Value::String(text)) if text.chars().count() <= max_chars => Ok(text.clone()),
        Some(Value::String(_)) => Err(invalid(field, format!("at most {max_chars} characters"))),
        None | Some(Value::Null) => Err(invalid(field, "missing field")),
        Some(_) => Err(invalid(field, "expected a string")),
    }
}

/// Checks a diagnostics body field by field: a wrong or unknown field is `INVALID_PAYLOAD`
/// naming it (`results.udp.rttMs: expected a number from 0 to 60000`).
pub fn decode_report(value: &Value) -> Result<DiagnosticsReport, ApiError> {
    let Value::Object(map) = value else {
        return Err(invalid("body", "expected a JSON object"));
    };
    only_fields(
        map,
        "",
        &["kind", "summary", "results", "media", "userAgent"],
    )?;
    let kind = text_at(map.get("kind"), "kind", 32)?;
    if kind != "connection-test" {
        return Err(invalid("kind", "expected \"connection-test\""));
    }
    let summary = text_at(map.get("summary"), "summary", MAX_SUMMARY_CHARS)?;
    let results_map = object_at(map.get("results"), "results")?;
    only_fields(results_map, "results.", &["udp", "tcp", "tls"])?;
    let mut results = std::collections::BTreeMap::new();
    for (transport, value) in results_map {
        let prefix = format!("results.{transport}");
        let entry = object_at(Some(value), &prefix)?;
        only_fields(entry, &format!("{prefix}."), &["ok", "rttMs", "error"])?;
        let rtt_field = format!("{prefix}.rttMs");
        let rtt_ms = match entry.get("rttMs") {
            None => return Err(invalid(&rtt_field, "missing field (null when unknown)")),
            Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_f64() {
                Some(ms) if ms.is_finite() && (0.0..=MAX_RTT_MS).contains(&ms) => Some(ms),
                _ => {
                    return Err(invalid(
                        &rtt_field,
                        format!("expected a number from 0 to {MAX_RTT_MS}"),
                    ));
                }
            },
            Some(_) => return Err(invalid(&rtt_field, "expected a number or null")),
        };
        let error_field = format!("{prefix}.error");
        let error = match entry.get("error") {
            None => return Err(invalid(&error_field, "missing field (null when none)")),
            Some(Value::Null) => None,
            other => Some(text_at(other, &error_field, MAX_ERROR_CHARS)?),
        };
        results.insert(
            transport.clone(),
            TransportResult {
                ok: bool_at(entry.get("ok"), &format!("{prefix}.ok"))?,
                rtt_ms,
                error,
            },
        );
    }
    let media_map = object_at(map.get("media"), "media")?;
    only_fields(media_map, "media.", &["microphone", "camera"])?;
    let media = MediaResult {
        microphone: bool_at(media_map.get("microphone"), "media.microphone")?,
        camera: bool_at(media_map.get("camera"), "media.camera")?,
    };
    let user_agent = text_at(map.get("userAgent"), "userAgent", MAX_USER_AGENT_CHARS)?;
    Ok(DiagnosticsReport {
        kind,
        summary,
        results,
        media,
        user_agent,
    })
}

/// [`decode_report`] from the raw body, with the size and JSON checks first (for the route and
/// for fuzzing).
pub fn decode_body(body: &[u8]) -> Result<DiagnosticsReport, ApiError> {
    if body.len() > MAX_REPORT_BYTES {
        return Err(ApiError::new(
            Code::PayloadTooLarge,
            "body: over the 8 KiB limit",
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| invalid("body", format_args!("malformed JSON: {e}")))?;
    decode_report(&value)
}

/// The one log line of a report: `diagnostics: ` and a JSON object, so that a newline or a
/// quote in the summary cannot forge another line, and `jq` reads it.
pub fn log_line(report: &DiagnosticsReport, user: Option<&str>, address: &str) -> String {
    let record = json!({
        "kind": report.kind,
        "user": user,
        "address": address,
        "results": report.results,
        "media": report.media,
        "summary": report.summary,
        "userAgent": report.user_agent,
    });
    format!("diagnostics: {record}")
}

async fn diagnostics(
    Extension(limits): Extension<Arc<Limits>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    MaybeUser(user): MaybeUser,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(Code::PayloadTooLarge, "body: over the 8 KiB limit")
        } else {
            invalid("body", rejection.body_text())
        }
    })?;
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !json_body {
        return Err(invalid("body", "expected Content-Type: application/json"));
    }
    // Checked before it counts: a refused body costs a parse of at most 8 KiB and writes
    // nothing, so only reports that reach the log use the budget.
    let report = decode_body(&body)?;
    let address = address_key(peer.ip());
    if !limits.reports.try_take(&address, Instant::now()) {
        return Err(rate_limited("diagnostics reports"));
    }
    let username = user.as_ref().map(|u| u.user.username.as_str());
    log::info!(target: "parley::diagnostics", "{}", log_line(&report, username, &peer.ip().to_string()));
    Ok((StatusCode::ACCEPTED, Json(json!({ "received": true }))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> Value {
        json!({
            "kind": "connection-test",
            "summary": "Calls will work. Your network blocks UDP, so calls will use the relay over TLS.",
            "results": {
                "udp": {"ok": false, "rttMs": null, "error": "timeout"},
                "tcp": {"ok": true, "rttMs": 41.5, "error": null},
                "tls": {"ok": true, "rttMs": 48, "error": null}
            },
            "media": {"microphone": true, "camera": false},
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/131"
        })
    }

    fn message(result: Result<DiagnosticsReport, ApiError>) -> String {
        let error = result.expect_err("refused");
        format!("{} {}", error.code.as_str(), error.message)
    }

    #[test]
    fn a_full_report_is_read_and_logged_as_one_json_line() {
        let report = decode_report(&body()).expect("valid");
        assert_eq!(report.results.len(), 3);
        assert_eq!(
            report.results["tcp"],
            TransportResult {
                ok: true,
                rtt_ms: Some(41.5),
                error: None
            }
        );
        assert!(!report.results["udp"].ok);
        let mut evil = report.clone();
        evil.summary = "ok\ndiagnostics: forged".into();
        let line = log_line(&evil, Some("alice"), "192.0.2.7");
        assert_eq!(line.lines().count(), 1, "{line}");
        let record: Value =
            serde_json::from_str(line.strip_prefix("diagnostics: ").unwrap()).unwrap();
        assert_eq!(record["user"], "alice");
        assert_eq!(record["address"], "192.0.2.7");
        assert_eq!(record["results"]["tls"]["rttMs"], 48.0);
        assert_eq!(record["media"]["camera"], false);
        assert_eq!(record["summary"], "ok\ndiagnostics: forged");
        let anonymous = log_line(&report, None, "::1");
        assert!(anonymous.contains("\"user\":null"), "{anonymous}");
    }

    #[test]
    fn a_bad_field_is_named() {
        let cases: &[(&str, Value, &str)] = &[
            (
                "/kind",
                json!("speed-test"),
                "kind: expected \"connection-test\"",
            ),
            (
                "/summary",
                json!("s".repeat(501)),
                "summary: at most 500 characters",
            ),
            ("/summary", json!(5), "summary: expected a string"),
            (
                "/userAgent",
                json!("u".repeat(301)),
                "userAgent: at most 300 characters",
            ),
            (
                "/results/udp/ok",
                json!("yes"),
                "results.udp.ok: expected true or false",
            ),
            (
                "/results/tcp/rttMs",
                json!(-1),
                "results.tcp.rttMs: expected a number from 0 to 60000",
            ),
            (
                "/results/tcp/rttMs",
                json!("fast"),
                "results.tcp.rttMs: expected a number or null",
            ),
            (
                "/results/tls/error",
                json!(7),
                "results.tls.error: expected a string",
            ),
            ("/results/quic", json!({}), "results.quic: unknown field"),
            (
                "/results/udp/extra",
                json!(1),
                "results.udp.extra: unknown field",
            ),
            ("/media/camera", Value::Null, "media.camera: missing field"),
            ("/media", json!([]), "media: expected an object"),
            ("/extra", json!(1), "extra: unknown field"),
        ];
        for (pointer, bad, expected) in cases {
            let mut value = body();
            let (parent, key) = pointer.rsplit_once('/').unwrap();
            let target = if parent.is_empty() {
                &mut value
            } else {
                value.pointer_mut(parent).unwrap()
            };
            target[key] = bad.clone();
            assert_eq!(
                message(decode_report(&value)),
                format!("INVALID_PAYLOAD {expected}"),
                "{pointer}"
            );
        }
        let mut value = body();
        value["results"]["udp"]
            .as_object_mut()
            .unwrap()
            .remove("rttMs");
        assert!(message(decode_report(&value)).starts_with("INVALID_PAYLOAD results.udp.rttMs"));
        assert_eq!(
            message(decode_report(&json!([]))),
            "INVALID_PAYLOAD body: expected a JSON object"
        );
    }

    #[test]
    fn the_body_is_bounded_and_must_be_json() {
        let mut value = body();
        value["summary"] = json!("s".repeat(400));
        let text = serde_json::to_vec(&value).unwrap();
        assert!(decode_body(&text).is_ok());
        let mut big = body();
        big["userAgent"] = json!(" ".repeat(MAX_REPORT_BYTES));
        assert!(
            message(decode_body(&serde_json::to_vec(&big).unwrap()))
                .starts_with("PAYLOAD_TOO_LARGE")
        );
        assert!(message(decode_body(b"{")).starts_with("INVALID_PAYLOAD body: malformed JSON"));
    }

    #[test]
    fn anonymous_turn_users_are_one_per_address_and_plain() {
        assert_eq!(anonymous_turn_user("192.0.2.7"), "conntest-192.0.2.7");
        assert_eq!(
            anonymous_turn_user("2001:db8:0:1::/64"),
            "conntest-2001-db8-0-1---64"
        );
    }
}
