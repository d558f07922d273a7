//! The systemd notification protocol (`Type=notify`): `READY=1` once every listener is bound,
//! `STOPPING=1` at shutdown, and watchdog pings. Without `NOTIFY_SOCKET` all of it does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        log::warn!("cannot notify systemd ({e}); is NOTIFY_SOCKET right?");
    }
}

/// Tells systemd the daemon serves. Call only after every listener is bound.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd the daemon is shutting down.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
}

/// Pings the watchdog at half its interval, for as long as the runtime runs. The pings come from
/// the async runtime itself, so a wedged runtime stops them and systemd restarts the daemon.
pub fn spawn_watchdog() {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = (interval / 2).max(Duration::from_millis(100));
    log::info!("systemd watchdog every {} ms", period.as_millis());
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        loop {
            ticker.tick().await;
            send(&[NotifyState::Watchdog]);
        }
    });
}
