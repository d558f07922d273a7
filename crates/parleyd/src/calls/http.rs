//! The HTTP call routes and the user directory. Handlers check input, ask the driver or the call
//! log, and map the answer; they decide nothing themselves.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use parley_call::{CallRecord, CallView, Origin, Reply, UserInfo};
use parley_store::calls::{CallRow, HideOutcome, HistoryFilter, HistoryQuery};
use serde::Serialize;
use serde_json::{Value, json};

use super::{Action, payload, run_action, run_initiate, user_info};
use crate::http::auth::AuthUser;
use crate::http::error::{ApiError, ApiPath, ApiQuery, Code};
use crate::state::AppState;

const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 200;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/users", get(list_users))
        .route("/api/v1/calls", post(initiate).get(history))
        .route("/api/v1/calls/missed/count", get(missed_count))
        .route("/api/v1/calls/missed/seen", post(mark_missed_seen))
        .route("/api/v1/calls/{id}", get(get_call).delete(delete_call))
        .route("/api/v1/calls/{id}/accept", post(accept))
        .route("/api/v1/calls/{id}/decline", post(decline))
        .route("/api/v1/calls/{id}/cancel", post(cancel))
        .route("/api/v1/calls/{id}/end", post(end))
        .route("/api/v1/openapi.json", get(super::openapi::document))
}

/// The body as a JSON value; an empty body is `{}` (decline/cancel/end need none).
fn body_json(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(Code::PayloadTooLarge, "body: over the 64 KiB limit")
        } else {
            ApiError::new(
                Code::InvalidPayload,
                format!("body: {}", rejection.body_text()),
            )
        }
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(Code::InvalidPayload, format!("body: malformed JSON: {e}")))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DirectoryUser {
    #[serde(flatten)]
    user: UserInfo,
    status: parley_call::PresenceStatus,
}

async fn list_users(State(state): State<AppState>, _me: AuthUser) -> Result<Json<Value>, ApiError> {
    let users: Vec<UserInfo> = state
        .store
        .list_users()
        .await?
        .iter()
        .filter(|u| !u.disabled)
        .map(user_info)
        .collect();
    let ids: Vec<i64> = users.iter().map(|u| u.id).collect();
    let statuses = state
        .calls
        .query(move |board| {
            ids.iter()
                .map(|id| board.user_status(*id))
                .collect::<Vec<_>>()
        })
        .await?;
    let users: Vec<DirectoryUser> = users
        .into_iter()
        .zip(statuses)
        .map(|(user, status)| DirectoryUser { user, status })
        .collect();
    Ok(Json(json!({ "users": users })))
}

fn call_body(reply: Reply) -> Json<Value> {
    match reply {
        Reply::Call(call) => Json(json!({ "call": call })),
        other => Json(json!({ "ok": format!("{other:?}") })),
    }
}

async fn initiate(
    State(state): State<AppState>,
    me: AuthUser,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request = payload::initiate(&body_json(body)?)?;
    if !state.calls.http_initiation_allowed(me.id) {
        return Err(ApiError::new(
            Code::RateLimited,
            "too many call attempts; slow down",
        ));
    }
    let origin = Origin::Http {
        user: me.id,
        device_id: request.device_id.clone(),
    };
    let reply = run_initiate(
        &state.calls,
        &state.store,
        user_info(&me.user),
        origin,
        request,
    )
    .await?;
    Ok((StatusCode::CREATED, call_body(reply)).into_response())
}

async fn accept(
    State(state): State<AppState>,
    me: AuthUser,
    ApiPath(id): ApiPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let call_id = payload::path_call_id(&id)?;
    let body = body_json(body)?;
    let device_id = payload::device_id(payload::object(&body)?)?;
    let origin = Origin::Http {
        user: me.id,
        device_id,
    };
    run_action(
        &state.calls,
        &state.store,
        me.id,
        origin,
        call_id,
        Action::Accept,
    )
    .await
    .map(call_body)
}

async fn decline(
    State(state): State<AppState>,
    me: AuthUser,
    ApiPath(id): ApiPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let call_id = payload::path_call_id(&id)?;
    let body = body_json(body)?;
    let message = payload::decline_message(payload::object(&body)?)?;
    let origin = Origin::Http {
        user: me.id,
        device_id: None,
    };
    run_action(
        &state.calls,
        &state.store,
        me.id,
        origin,
        call_id,
        Action::Decline { message },
    )
    .await
    .map(call_body)
}

/// Cancel and end take no fields, but their body is still read: an oversized one is refused
/// with 413 before anything else (issue 10: 10 MB got 404 `CALL_NOT_FOUND`), and one that is
/// not a JSON object is invalid.
async fn simple_action(
    state: AppState,
    me: AuthUser,
    id: String,
    body: Result<Bytes, BytesRejection>,
    action: Action,
) -> Result<Json<Value>, ApiError> {
    let body = body_json(body)?;
    payload::object(&body)?;
    let call_id = payload::path_call_id(&id)?;
    let origin = Origin::Http {
        user: me.id,
        device_id: None,
    };
    run_action(&state.calls, &state.store, me.id, origin, call_id, action)
        .await
        .map(call_body)
}

async fn cancel(
    State(state): State<AppState>,
    me: AuthUser,
    ApiPath(id): ApiPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    simple_action(state, me, id, body, Action::Cancel).await
}

async fn end(
    State(state): State<AppState>,
    me: AuthUser,
    ApiPath(id): ApiPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    simple_action(state, me, id, body, Action::End).await
}

/// A stored row as the protocol's `Call`.
pub(crate) fn record_from_row(row: &CallRow) -> Result<CallRecord, ApiError> {
    let party = |p: &parley_store::calls::CallParty| UserInfo {
        id: p.id,
        username: p.username.clone(),
        display_name: p.display_name.clone(),
    };
    let internal = |e: parley_call::Error| ApiError::internal(format!("call {}: {e}", row.id));
    Ok(CallRecord {
        id: parley_call::CallId(row.id.clone()),
        caller: party(&row.caller),
        callee: party(&row.callee),
        media: row.media.parse().map_err(internal)?,
        state: row.state.parse().map_err(internal)?,
        status: row
            .status
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(internal)?,
        reason: row
            .reason
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(internal)?,
        ended_by: row.ended_by,
        message: row.message.clone(),
        created_at_ms: row.created_at,
        answered_at_ms: row.answered_at,
        ended_at_ms: row.ended_at,
        caller_device: row.caller_device.clone(),
        callee_device: row.callee_device.clone(),
    })
}

async fn get_call(
    State(state): State<AppState>,
    me: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let call_id = payload::path_call_id(&id)?;
    let user = me.id;
    let lookup = call_id.clone();
    let live: Option<CallView> = state
        .calls
        .query(move |board| board.live_call(&lookup, user))
        .await?;
    if let Some(call) = live {
        let call = super::with_quality(&state.store, user, json!(call)).await?;
        return Ok(Json(json!({ "call": call })));
    }
    match state.store.call_by_id(&call_id.0).await? {
        Some(row) if row.caller.id == user || row.callee.id == user => {
            let call = json!(record_from_row(&row)?.view());
            let call = super::with_quality(&state.store, user, call).await?;
            Ok(Json(json!({ "call": call })))
        }
        _ => Err(ApiError::new(Code::CallNotFound, "call not found")),
    }
}

async fn delete_call(
    State(state): State<AppState>,
    me: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let call_id = payload::path_call_id(&id)?;
    match state.store.hide_call(me.id, &call_id.0).await? {
        HideOutcome::Hidden => Ok(StatusCode::NO_CONTENT),
        HideOutcome::NotFound => Err(ApiError::new(Code::CallNotFound, "call not found")),
        HideOutcome::Live => Err(ApiError::new(
            Code::InvalidState,
            "the call is still live; end it before deleting it from your history",
        )),
    }
}

fn history_query(params: &HashMap<String, String>) -> Result<HistoryQuery, ApiError> {
    let invalid =
        |field: &str, what: &str| ApiError::new(Code::InvalidPayload, format!("{field}: {what}"));
    let limit = match params.get("limit") {
        None => DEFAULT_PAGE,
        Some(text) => match text.parse::<u32>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => return Err(invalid("limit", "expected an integer from 1 to 200")),
        },
    };
    let before = match params.get("before").map(String::as_str) {
        None | Some("") => None,
        Some(text) => Some(
            text.parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| invalid("before", "not a cursor from nextCursor"))?,
        ),
    };
    let media = match params.get("media").map(String::as_str) {
        None | Some("") => None,
        Some(m @ ("audio" | "video")) => Some(m.to_owned()),
        Some(_) => return Err(invalid("media", "expected audio or video")),
    };
    let filter = match params.get("filter").map(String::as_str) {
        None | Some("") => None,
        Some("missed") => Some(HistoryFilter::Missed),
        Some("incoming") => Some(HistoryFilter::Incoming),
        Some("outgoing") => Some(HistoryFilter::Outgoing),
        Some(_) => return Err(invalid("filter", "expected missed, incoming or outgoing")),
    };
    Ok(HistoryQuery {
        limit,
        before,
        media,
        filter,
    })
}

fn history_entry(row: &CallRow, user: i64) -> Result<Value, ApiError> {
    let record = record_from_row(row)?;
    let outgoing = record.caller.id == user;
    let peer = if outgoing {
        &record.callee
    } else {
        &record.caller
    };
    let missed = !outgoing
        && matches!(
            record.status,
            Some(parley_call::Status::Missed | parley_call::Status::Busy)
        );
    let view = record.view();
    Ok(json!({
        "id": view.id,
        "peer": peer,
        "direction": if outgoing { "outgoing" } else { "incoming" },
        "media": view.media,
        "status": view.status,
        "reason": view.reason,
        "missed": missed,
        "seen": !missed || row.callee_seen,
        "message": record.message,
        "createdAt": view.created_at,
        "answeredAt": view.answered_at,
        "endedAt": view.ended_at,
        "durationSecs": view.duration_secs,
    }))
}

async fn history(
    State(state): State<AppState>,
    me: AuthUser,
    ApiQuery(params): ApiQuery<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let query = history_query(&params)?;
    let (rows, next) = state.store.call_history(me.id, &query).await?;
    let mut items = rows
        .iter()
        .map(|row| history_entry(row, me.id))
        .collect::<Result<Vec<_>, _>>()?;
    super::add_quality(&state.store, me.id, &mut items).await?;
    Ok(Json(
        json!({ "items": items, "nextCursor": next.map(|n| n.to_string()) }),
    ))
}

async fn missed_count(
    State(state): State<AppState>,
    me: AuthUser,
) -> Result<Json<Value>, ApiError> {
    let unseen = state.store.unseen_missed_count(me.id).await?;
    Ok(Json(json!({ "unseen": unseen })))
}

async fn mark_missed_seen(
    State(state): State<AppState>,
    me: AuthUser,
) -> Result<StatusCode, ApiError> {
    state.store.mark_missed_seen(me.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `parley_calls_live` and `parley_sockets_connected` for `/metrics`.
pub async fn render_metrics(state: &AppState, out: &mut String) {
    if let Ok((calls, sockets)) = state
        .calls
        .query(|board| (board.live_call_count(), board.connection_count()))
        .await
    {
        out.push_str(&format!(
            "# HELP parley_calls_live Calls ringing or active.\n# TYPE parley_calls_live gauge\nparley_calls_live {calls}\n\
             # HELP parley_sockets_connected Authenticated realtime connections.\n# TYPE parley_sockets_connected gauge\nparley_sockets_connected {sockets}\n"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parley_store::calls::CallParty;

    fn row(status: Option<&str>) -> CallRow {
        let party = |id: i64, name: &str| CallParty {
            id,
            username: name.into(),
            display_name: name.into(),
        };
        CallRow {
            seq: 7,
            id: "c1".into(),
            caller: party(1, "alice"),
            callee: party(2, "bob"),
            media: "audio".into(),
            state: "ended".into(),
            status: status.map(str::to_owned),
            reason: Some("no_answer".into()),
            ended_by: None,
            message: None,
            created_at: 1_000,
            answered_at: None,
            ended_at: Some(31_000),
            callee_seen: false,
            caller_device: None,
            callee_device: None,
        }
    }

    #[test]
    fn a_missed_call_is_missed_and_unseen_for_the_callee_only() {
        let incoming = history_entry(&row(Some("missed")), 2).expect("valid row");
        assert_eq!(incoming["direction"], "incoming");
        assert_eq!(incoming["peer"]["username"], "alice");
        assert_eq!(
            (incoming["missed"].as_bool(), incoming["seen"].as_bool()),
            (Some(true), Some(false))
        );
        let outgoing = history_entry(&row(Some("missed")), 1).expect("valid row");
        assert_eq!(outgoing["direction"], "outgoing");
        assert_eq!(outgoing["peer"]["username"], "bob");
        assert_eq!(
            (outgoing["missed"].as_bool(), outgoing["seen"].as_bool()),
            (Some(false), Some(true))
        );
    }

    #[test]
    fn an_unreadable_log_row_is_internal_not_a_client_error() {
        let error = history_entry(&row(Some("exploded")), 2).expect_err("unknown status");
        assert_eq!(error.code, Code::Internal);
    }

    #[test]
    fn history_query_defaults_and_refusals_name_the_parameter() {
        let query = history_query(&HashMap::new()).expect("defaults are valid");
        assert_eq!((query.limit, query.before, query.filter), (50, None, None));
        for (key, value) in [
            ("limit", "0"),
            ("limit", "201"),
            ("before", "-3"),
            ("media", "fax"),
            ("filter", "x"),
        ] {
            let params = HashMap::from([(key.to_owned(), value.to_owned())]);
            let error = history_query(&params).expect_err("refused");
            assert_eq!(error.code, Code::InvalidPayload);
            assert!(error.message.starts_with(key), "{}", error.message);
        }
    }
}
