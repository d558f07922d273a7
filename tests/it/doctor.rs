//! `parley doctor` against a running daemon: every listener a browser is told about is checked.

use crate::daemon::{Daemon, doctor, free_port};

#[test]
fn doctor_checks_each_extra_udp_listener_as_a_browser_would_use_it() {
    let extra = free_port();
    let daemon = Daemon::configure(&format!(
        "[turn]\nallowed_peer_ranges = [\"127.0.0.0/8\"]\nudp_listen_extra = [\"127.0.0.1:{extra}\"]\n"
    ))
    .spawn(&[]);
    let (passed, text) = doctor(&daemon.config_path);
    assert!(passed, "doctor failed:\n{text}");
    for prefix in ["stun udp ", "turn udp "] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{prefix}127.0.0.1:{extra} ")))
            .unwrap_or_else(|| {
                panic!("no {prefix}line for the extra listener :{extra} in:\n{text}")
            });
        assert!(line.contains("OK"), "{line}");
    }
    let relayed = text
        .lines()
        .find(|l| l.starts_with(&format!("turn udp 127.0.0.1:{extra} ")))
        .unwrap();
    assert!(relayed.contains("relayed a packet"), "{relayed}");
}
