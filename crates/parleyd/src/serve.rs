//! `parley serve`: prepare storage, bind every listener, tell systemd we are ready, serve until
//! SIGTERM or SIGINT, then shut down in order within a bound.
//!
//! Everything that can fail because of the machine (data directory, database, ports,
//! certificates) fails here, before readiness, with a message naming the thing to fix.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use parley_config::Config;
use parley_store::Store;
use rand::RngCore;
use tokio_util::sync::CancellationToken;

use crate::http::auth::LoginLimiter;
use crate::state::AppState;
use crate::{http, notify, relay, tls};

/// How long in-flight HTTP requests and sockets get to finish after the shutdown signal.
const HTTP_DRAIN: Duration = Duration::from_secs(5);

/// Runs the daemon until `shutdown` is cancelled (the signal handler does that in production).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let started = Instant::now();
    let config = Arc::new(config);
    let data_dir = &config.storage.data_dir;
    prepare_data_dir(data_dir)?;
    let store = Store::open(&config.storage.database_path()).await?;
    let turn_secret = Arc::new(turn_secret(&config)?);
    let (calls, mut calls_driver) = crate::calls::driver(&config, store.clone());
    // hook: calls restart (restore the calls the previous process left live, before any
    // listener opens; the reconnect grace counts from here)
    crate::calls::restore_calls(&store, &mut calls_driver).await?;

    let tls = tls::Tls::load(&config)?;
    let http_listener = bind_http(config.http.listen)?;
    let http_address = http_listener.local_addr()?;
    let https_port = relay::HttpsPort {
        bound: http_address,
        tls: tls.http.is_some(),
        self_signed: tls.self_signed_notice.is_some(),
    };
    let relay = relay::start(&config, &turn_secret, tls.turn.clone(), https_port)
        .await
        .with_context(|| {
            format!(
                "cannot start the TURN relay on {} (turn.listen)",
                config.turn.listen
            )
        })?;

    let state = AppState {
        config: config.clone(),
        store: store.clone(),
        turn_secret,
        relay: relay.clone(),
        login_limiter: Arc::new(LoginLimiter::new(&config.auth)),
        calls: calls.clone(),
        certificate: tls.http_certificate.clone(),
    };
    // The SIGHUP handler goes in before readiness: until then SIGHUP would kill the process.
    tls.spawn_reloader(shutdown.clone().cancelled_owned());
    let app = http::router(state.clone());
    // hook: socket.io layer and calls driver
    let (socket_layer, socket_io) = crate::calls::socket_layer(state.clone());
    let app = app
        .layer(socket_layer)
        .layer(axum::middleware::map_request(own_request_bytes));
    let calls_task = calls_driver.spawn(socket_io);

    let timeouts = http::listener::Timeouts {
        header: Duration::from_secs(config.http.header_timeout_secs),
        body: Duration::from_secs(config.http.body_timeout_secs),
    };
    let http_listener = tokio::net::TcpListener::from_std(http_listener)?;
    let http_task = tokio::spawn(http::listener::serve(
        http_listener,
        app,
        tls.http.clone(),
        timeouts,
        relay.as_ref().and_then(|relay| relay.front_door()),
        shutdown.clone(),
        HTTP_DRAIN,
    ));
    // tls.acme: port 80 (HTTP-01, redirects) is bound before readiness; the renewal task starts
    // once HTTPS serves, as TLS-ALPN-01 is answered there.
    let acme_tokens = Arc::new(crate::acme::Http01Tokens::default());
    crate::acme::start_redirect(&config, acme_tokens.clone(), shutdown.clone())?;
    if let (Some(settings), Some(slot)) = (
        crate::acme::AcmeSettings::from_config(&config),
        tls.acme.clone(),
    ) {
        crate::acme::spawn(settings, slot, acme_tokens, shutdown.clone());
    }
    let url = public_url(&config, http_address);
    notify::ready(&format!("serving on {url}"));
    notify::spawn_watchdog();
    log::info!(
        "parley {} ready in {} ms: open {url}",
        env!("CARGO_PKG_VERSION"),
        started.elapsed().as_millis()
    );

    shutdown.cancelled().await;
    log::info!("shutting down");
    notify::stopping();
    // hook: calls shutdown (end ringing calls with server_shutdown and record them; active
    // calls stay active in the log for the next start)
    calls.shutdown().await;
    let _ = calls_task.await;
    if let Some(relay) = &relay {
        relay.shutdown().await;
    }
    match tokio::time::timeout(HTTP_DRAIN + Duration::from_secs(1), http_task).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::warn!("HTTP server task failed: {e}"),
        Err(_) => log::warn!("HTTP connections still open after {HTTP_DRAIN:?}; closing them"),
    }
    store.close().await;
    log::info!("stopped");
    Ok(())
}

/// Cancels `token` on SIGTERM or SIGINT. A second signal exits at once.
pub fn spawn_signal_handler(token: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => log::info!("SIGTERM received"),
            _ = int.recv() => log::info!("SIGINT received"),
        }
        token.cancel();
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        log::warn!("second signal: exiting without finishing shutdown");
        std::process::exit(130);
    });
    Ok(())
}

fn public_url(config: &Config, bound: SocketAddr) -> String {
    if !config.http.public_url.is_empty() {
        return config.public_url();
    }
    let scheme = if config.tls.enabled { "https" } else { "http" };
    format!("{scheme}://{bound}")
}

/// Creates the data directory and proves we can write into it, so that a permissions problem
/// is reported here, by name, and not later as an obscure SQLite error.
pub fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create the data directory {} (storage.data_dir); create it and make it \
             writable by the user running parley",
            dir.display()
        )
    })?;
    let probe = dir.join(".parley-write-test");
    let result = std::fs::write(&probe, b"ok").and_then(|()| std::fs::remove_file(&probe));
    result.with_context(|| {
        format!(
            "the data directory {} (storage.data_dir) is not writable; make it writable by the \
             user running parley",
            dir.display()
        )
    })
}

/// `turn.secret`, or the secret kept in `<data_dir>/turn_secret`, generated at first start.
/// It never goes into the config file, so package upgrades never ask about it.
pub fn turn_secret(config: &Config) -> anyhow::Result<String> {
    if !config.turn.secret.is_empty() {
        return Ok(config.turn.secret.clone());
    }
    let path = config.storage.data_dir.join("turn_secret");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
        Ok(_) => bail!(
            "{} is empty; delete it to have a new TURN secret generated, or set turn.secret",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot read the TURN secret {}", path.display()));
        }
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create the TURN secret file {}", path.display()))?;
    file.write_all(secret.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write the TURN secret file {}", path.display()))?;
    log::info!("generated a TURN secret in {}", path.display());
    Ok(secret)
}

/// Binds the HTTP port, explaining the usual failures.
pub fn bind_http(address: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(address).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                "address already in use: stop the other program using it, or change http.listen"
            }
            std::io::ErrorKind::PermissionDenied => {
                "permission denied: ports below 1024 need CAP_NET_BIND_SERVICE (the packaged \
                 systemd unit grants it), or change http.listen"
            }
            std::io::ErrorKind::AddrNotAvailable => {
                "this machine has no such address: change http.listen"
            }
            _ => "change http.listen",
        };
        anyhow::anyhow!("cannot listen on {address} (http.listen): {e}; {hint}")
    })?;
    // Signaling is many small frames; with Nagle's algorithm each waits for the peer's delayed
    // ACK (up to 40 ms: measured 43 ms p50 offer relay without this, 0.14 ms with it). Linux
    // copies the option to every accepted socket, TLS ones included.
    socket2::SockRef::from(&listener).set_tcp_nodelay(true)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// hyper parses header values and the URI as slices of the connection's 16 KiB read buffer,
/// and engineioxide keeps a socket's request parts for the socket's whole life: that pins the
/// buffer, 160 MB at 10,000 connections (heaptrack). Copying the few bytes into their own
/// allocations lets it go. Delete when engineioxide stops keeping the parts.
async fn own_request_bytes(mut request: axum::extract::Request) -> axum::extract::Request {
    let headers = std::mem::take(request.headers_mut());
    let mut owned = axum::http::HeaderMap::with_capacity(headers.len());
    for (name, value) in headers.iter() {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(name.as_str().as_bytes()),
            axum::http::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            owned.append(name, value);
        }
    }
    *request.headers_mut() = owned;
    if let Ok(uri) = request.uri().to_string().parse::<axum::http::Uri>() {
        // axum's Router keeps its own copy of the URI (OriginalUri) before any layer runs.
        if let Some(original) = request
            .extensions_mut()
            .get_mut::<axum::extract::OriginalUri>()
            && let Ok(copy) = original.0.to_string().parse()
        {
            original.0 = copy;
        }
        *request.uri_mut() = uri;
    }
    request
}
