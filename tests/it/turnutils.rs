//! coturn's test clients, `turnutils_uclient` and its echo peer `turnutils_peer` (Debian
//! package `coturn`), as the relay tests drive them: on loopback (relay.rs, front_door.rs) or
//! inside a network namespace (relay_netns.rs), which is why both take the command that
//! launches them (`Command::new(..)` or `ip netns exec NS ..`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::daemon::free_port;

pub fn coturn_tool(name: &str) -> PathBuf {
    let path = PathBuf::from("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{name} is missing: install Debian's coturn package (apt-get install -y coturn)"
    );
    path
}

/// coturn's echo peer, stopped on drop.
pub struct Peer {
    child: Child,
    pub port: u16,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Peer {
    /// `turnutils_peer` on a free 127.0.0.1 port.
    pub fn on_loopback() -> Peer {
        Peer::start(
            Command::new(coturn_tool("turnutils_peer")),
            "127.0.0.1",
            free_port(),
        )
    }

    /// `launch` (a command whose program is `turnutils_peer`) listening on `address`:`port`.
    pub fn start(mut launch: Command, address: &str, port: u16) -> Peer {
        let child = launch
            .args(["-L", address, "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnutils_peer");
        // It has no readiness signal; uclient's first packets would be lost without the wait.
        std::thread::sleep(Duration::from_millis(300));
        Peer { child, port }
    }
}

/// What a `turnutils_uclient` run reported: its totals, the "Total lost packets" line and the
/// whole output (for the failure messages).
#[derive(Debug)]
pub struct UclientResult {
    pub sent: u64,
    pub received: u64,
    pub lost_line: String,
    pub output: String,
}

/// Runs `turnutils_uclient ARGS` (the server host last) under `timeout LIMIT_SECS`, launched by
/// `timeout` (a command whose program is `timeout`), and parses its totals.
pub fn uclient<I, S>(mut timeout: Command, limit_secs: u32, args: I) -> UclientResult
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let output = timeout
        .arg(limit_secs.to_string())
        .arg(coturn_tool("turnutils_uclient"))
        .args(args)
        .output()
        .expect("run turnutils_uclient");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let mut result = UclientResult {
        sent: 0,
        received: 0,
        lost_line: String::new(),
        output: text.clone(),
    };
    for line in text.lines() {
        if let Some(rest) = line.split("start_mclient: tot_send_msgs=").nth(1) {
            let mut parts = rest.split(", tot_recv_msgs=");
            result.sent = parts.next().unwrap_or("0").trim().parse().unwrap_or(0);
            result.received = parts.next().unwrap_or("0").trim().parse().unwrap_or(0);
        }
        if line.contains("Total lost packets") {
            result.lost_line = line.to_owned();
        }
    }
    result
}

/// uclient sent at least `at_least` messages and got every one back. `context` is appended to
/// the message of the first check (e.g. the daemon's log).
pub fn assert_no_loss(what: &str, result: &UclientResult, at_least: u64, context: &str) {
    assert!(
        result.sent >= at_least,
        "{what}: uclient sent {} messages:\n{}{context}",
        result.sent,
        result.output,
    );
    assert_eq!(
        result.received, result.sent,
        "{what}: {}\n{}",
        result.lost_line, result.output
    );
    assert!(
        result.lost_line.contains("Total lost packets 0 "),
        "{what}: {}",
        result.lost_line
    );
}
