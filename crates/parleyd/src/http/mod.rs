//! The HTTP side: the router, health and readiness, metrics, and the API's error shape.

pub mod auth;
pub mod demux;
pub mod diagnostics;
pub mod error;
pub mod listener;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::state::AppState;

/// Spec limit on HTTP bodies.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The whole HTTP application (without the Socket.IO layer, which `serve` adds).
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .merge(auth::router())
        .merge(crate::relay::router())
        // hook: calls routes
        .merge(crate::calls::http::router())
        .merge(diagnostics::router())
        .route("/api/v1/{*rest}", axum::routing::any(error::api_not_found))
        .route("/api/{*rest}", axum::routing::any(error::api_not_found));
    Router::new()
        .merge(api)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        // hook: web client
        .fallback(crate::web::serve)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// How often `/readyz` may write to the database to prove it takes writes (each probe is a
/// small fsynced commit); between probes it answers the last probe's finding.
const READY_PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// A probe that waits longer (a lock held by `parley user ...`, a stalling disk) counts as down.
const READY_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// 200 when the database takes a write and every relay listener is up; 503 naming what is down.
/// A read would answer from the page cache on a full or failing disk (issue 10), so the database
/// is probed with a write, rate-limited.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let database = match tokio::time::timeout(
        READY_PROBE_TIMEOUT,
        state.store.writable(READY_PROBE_INTERVAL),
    )
    .await
    {
        Ok(Ok(())) => "up",
        Ok(Err(error)) => {
            log::warn!("readiness: the database does not take writes: {error}");
            "not writable"
        }
        Err(_) => {
            log::warn!("readiness: a database write took over {READY_PROBE_TIMEOUT:?}");
            "not writable"
        }
    };
    let database_up = database == "up";
    let mut listeners = Vec::new();
    let mut all_up = database_up;
    if let Some(relay) = &state.relay {
        for (name, address, up) in relay.readiness().await {
            all_up &= up;
            listeners.push(json!({ "name": name, "address": address.to_string(), "up": up }));
        }
    }
    let status = if all_up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": all_up,
        "database": database,
        "listeners": listeners,
    });
    (status, Json(body))
}

/// Prometheus text format.
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut out = String::new();
    out.push_str(
        "# HELP parley_up 1 while the daemon serves.\n# TYPE parley_up gauge\nparley_up 1\n",
    );
    if let Some(relay) = &state.relay {
        relay.render_metrics(&mut out).await;
    }
    listener::render_metrics(&mut out);
    crate::acme::render_metrics(state.certificate.as_deref(), &mut out);
    // hook: calls metrics
    crate::calls::http::render_metrics(&state, &mut out).await;
    crate::quality_metrics::render_metrics(&state, &mut out).await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}
