//! The HTTP API's request bodies, paths and queries, through the real router.
//!
//! One in-process daemon (the router of `parleyd::http::router`, a real SQLite file, the call
//! driver task, no relay) serves every input with `tower::ServiceExt::oneshot`, so bodies go
//! through axum's extractors and the handlers' own checks exactly as over the socket.
//!
//! Input: byte 0 picks the route (modulo 10), byte 1 holds flags, the rest is the body; for
//! routes with a call id or a query, the text up to the first newline is the path segment or
//! query string (percent-encoded here, so every input makes a valid URI and axum decodes it
//! back).
//!
//! Properties checked: no panic; no 5xx (a 5xx on client input is a bug of ours); every `/api/`
//! error answer has the protocol's shape `{"error": {"code", "message"}}`.

#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, header};
use libfuzzer_sys::fuzz_target;
use parley_config::Config;
use parley_store::Store;
use parleyd::http::auth::LoginLimiter;
use parleyd::state::AppState;
use serde_json::Value;
use tower::ServiceExt;

struct Daemon {
    runtime: tokio::runtime::Runtime,
    app: Router,
    /// A session of the user `alice` (the user `bob` exists too, offline).
    token: String,
}

static DAEMON: LazyLock<Daemon> = LazyLock::new(|| {
    let dir = parley_fuzz::scratch_dir("http");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let (app, token) = runtime.block_on(async {
        let mut config = Config::default();
        config.storage.data_dir = dir;
        config.turn.enabled = false;
        let store = Store::open(&config.storage.database_path())
            .await
            .expect("the database opens");
        // Passwords nobody can guess, so the fuzzer's logins stay cheap failures.
        let secret = format!(
            "{:032x}",
            std::process::id() as u128 * 0x9e37_79b9_7f4a_7c15
        );
        let alice = store
            .create_user("alice", None, &secret)
            .await
            .expect("alice");
        store.create_user("bob", None, &secret).await.expect("bob");
        let session = store
            .create_session(alice.id, 86_400)
            .await
            .expect("a session");
        let (calls, driver) = parleyd::calls::driver(&config, store.clone());
        let state = AppState {
            login_limiter: Arc::new(LoginLimiter::new(&config.auth)),
            config: Arc::new(config),
            store,
            turn_secret: Arc::new(secret),
            relay: None,
            certificate: None,
            calls,
        };
        // The driver broadcasts through the Socket.IO layer's `SocketIo`, as in `serve`; the
        // layer itself is not mounted (this target fuzzes the HTTP API).
        let (_socket_layer, socket_io) = parleyd::calls::socket_layer(state.clone());
        driver.spawn(socket_io);
        (parleyd::http::router(state), session.token)
    });
    Daemon {
        runtime,
        app,
        token,
    }
});

/// Percent-encodes everything but unreserved characters and the few that `keep` names.
fn encode(bytes: &[u8], keep: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn split_line(rest: &[u8]) -> (&[u8], &[u8]) {
    match rest.iter().position(|&b| b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[]),
    }
}

fuzz_target!(|data: &[u8]| {
    let [route, flags, rest @ ..] = data else {
        return;
    };
    let daemon = &*DAEMON;
    let (method, uri, body): (Method, String, &[u8]) = match route % 10 {
        0 => (Method::POST, "/api/v1/auth/login".into(), rest),
        1 => (Method::POST, "/api/v1/auth/register".into(), rest),
        2 => (Method::POST, "/api/v1/calls".into(), rest),
        3 | 4 => {
            let (id, body) = split_line(rest);
            let action = if route % 10 == 3 { "accept" } else { "decline" };
            let uri = format!("/api/v1/calls/{}/{action}", encode(id, b""));
            (Method::POST, uri, body)
        }
        5 => {
            let (query, body) = split_line(rest);
            let uri = format!("/api/v1/calls?{}", encode(query, b"=&%+"));
            (Method::GET, uri, body)
        }
        6 => {
            let (id, body) = split_line(rest);
            (
                Method::GET,
                format!("/api/v1/calls/{}", encode(id, b"")),
                body,
            )
        }
        8 => (Method::POST, "/api/v1/diagnostics".into(), rest),
        9 => (
            Method::GET,
            "/api/v1/connection-test/ice-servers".into(),
            rest,
        ),
        _ => {
            let (id, body) = split_line(rest);
            (
                Method::DELETE,
                format!("/api/v1/calls/{}", encode(id, b"")),
                body,
            )
        }
    };
    let mut request = Request::builder().method(method).uri(&uri);
    match flags & 0b11 {
        0 | 1 => request = request.header(header::CONTENT_TYPE, "application/json"),
        2 => request = request.header(header::CONTENT_TYPE, "text/plain"),
        _ => {}
    }
    match (flags >> 2) & 0b11 {
        0 | 1 => {
            request = request.header(header::AUTHORIZATION, format!("Bearer {}", daemon.token))
        }
        2 => request = request.header(header::AUTHORIZATION, "Bearer not-a-token"),
        _ => {}
    }
    let mut request = request
        .body(Body::from(body.to_vec()))
        .expect("every input makes a valid request");
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40_000))));

    let (status, answer) = daemon.runtime.block_on(async {
        let response = daemon
            .app
            .clone()
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        let answer = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("the answer is readable");
        (status, answer)
    });
    let text = String::from_utf8_lossy(&answer);
    assert!(!status.is_server_error(), "{uri} answered {status}: {text}");
    if status.is_client_error() {
        let shaped = serde_json::from_slice::<Value>(&answer)
            .is_ok_and(|v| v["error"]["code"].is_string() && v["error"]["message"].is_string());
        assert!(
            shaped,
            "{uri} answered {status} without the error shape: {text}"
        );
    }
});
