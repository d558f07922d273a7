//! The relay's network reach, in network namespaces this file creates (needs root and
//! `ip netns`, which CI has; without them these tests fail, they never skip): UDP answers leave
//! from the address the client used, extra UDP listeners (UDP 443), and IPv6 clients relayed
//! to IPv4 peers. The client side is coturn's `turnutils_uclient` with `turnutils_peer`
//! (Debian package `coturn`), run inside the namespaces with `ip netns exec`.
//!
//! Topology (one per test, names unique per run, deleted on drop also when a test fails):
//!
//! ```text
//!   cli (10.201.1.2)  ──veth──  srv (10.201.1.1, and 10.201.9.1 on the same link)
//!   cli6 (fd20:201:6::2) ──veth── srv (fd20:201:6::1, and fd20:201:9::1)
//! ```
//!
//! The client reaches the server at its second address (10.201.9.1 or fd20:201:9::1), which is
//! not the source address of the route back (10.201.1.1 / fd20:201:6::1): a wildcard listener
//! that lets the kernel choose the source answers from an address the client never talked to.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::daemon::parley_binary;
use crate::turnutils::{Peer, UclientResult, assert_no_loss, coturn_tool, uclient};

const SECRET: &str = "it-netns-secret";

/// The server's first and second IPv4 address, the client's, and the second one's subnet.
const SRV_V4: &str = "10.201.1.1";
const SRV_V4_SECOND: &str = "10.201.9.1";
const CLI_V4: &str = "10.201.1.2";
const SRV_V6: &str = "fd20:201:6::1";
const SRV_V6_SECOND: &str = "fd20:201:9::1";
const CLI_V6: &str = "fd20:201:6::2";

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (these tests need iproute2)"))
}

/// Runs `ip ARGS`, panicking with its error: every step of building a topology must work.
fn ip(args: &[&str]) {
    let output = run("ip", args);
    assert!(
        output.status.success(),
        "ip {} failed (these tests need root and `ip netns`): {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The namespaces of one test; deleted on drop, which also runs when the test panics.
struct Topology {
    srv: String,
    cli: String,
    cli6: String,
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Never panics (this also runs while a failed test unwinds): errors are ignored.
        for ns in [&self.srv, &self.cli, &self.cli6] {
            // Kills what this test started inside (daemon, peer, probes), then deletes the
            // namespace and with it its veth end.
            let pids = Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for pid in pids.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

static TOPOLOGIES: AtomicU32 = AtomicU32::new(0);

impl Topology {
    /// Builds srv, cli (IPv4 only) and cli6 (IPv6 only) as drawn at the top of this file.
    fn build() -> Topology {
        let id = format!(
            "{}{}",
            std::process::id() % 100_000,
            TOPOLOGIES.fetch_add(1, Ordering::Relaxed)
        );
        let topology = Topology {
            srv: format!("pl{id}srv"),
            cli: format!("pl{id}cli"),
            cli6: format!("pl{id}cli6"),
        };
        for ns in [&topology.srv, &topology.cli, &topology.cli6] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let (srv, cli, cli6) = (&topology.srv, &topology.cli, &topology.cli6);
        // Interface names: at most 15 bytes, unique only inside their namespace.
        ip(&[
            "link", "add", "s4", "netns", srv, "type", "veth", "peer", "c4", "netns", cli,
        ]);
        ip(&[
            "link", "add", "s6", "netns", srv, "type", "veth", "peer", "c6", "netns", cli6,
        ]);
        // IPv4: the second address is a /32 on the same link, so the route back to the client
        // (10.201.1.0/24) keeps 10.201.1.1 as its source.
        ip(&[
            "-n",
            srv,
            "addr",
            "add",
            &format!("{SRV_V4}/24"),
            "dev",
            "s4",
        ]);
        ip(&[
            "-n",
            srv,
            "addr",
            "add",
            &format!("{SRV_V4_SECOND}/32"),
            "dev",
            "s4",
        ]);
        ip(&[
            "-n",
            cli,
            "addr",
            "add",
            &format!("{CLI_V4}/24"),
            "dev",
            "c4",
        ]);
        // IPv6 only towards cli6 (no DAD: the addresses are usable at once).
        ip(&[
            "-n",
            srv,
            "addr",
            "add",
            &format!("{SRV_V6}/64"),
            "dev",
            "s6",
            "nodad",
        ]);
        ip(&[
            "-n",
            srv,
            "addr",
            "add",
            &format!("{SRV_V6_SECOND}/128"),
            "dev",
            "s6",
            "nodad",
        ]);
        ip(&[
            "-n",
            cli6,
            "addr",
            "add",
            &format!("{CLI_V6}/64"),
            "dev",
            "c6",
            "nodad",
        ]);
        for (ns, dev) in [(srv, "s4"), (srv, "s6"), (cli, "c4"), (cli6, "c6")] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        ip(&["-n", cli, "route", "add", "10.201.9.0/24", "via", SRV_V4]);
        ip(&["-n", cli6, "route", "add", "fd20:201:9::/64", "via", SRV_V6]);
        // cli6 has no IPv4 at all, cli no IPv6 beyond loopback and link-local.
        topology
    }

    fn command(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns]).arg(program);
        command
    }
}

/// A `parley serve` inside the server namespace; killed on drop.
struct Daemon {
    child: Child,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Starts the daemon in `topology.srv` with `[turn]` lines `turn_lines` and waits until
    /// `/readyz` answers 200 (asked from inside the namespace).
    fn start(topology: &Topology, turn_lines: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("parley.toml");
        std::fs::write(
            &config,
            format!(
                "[http]\nlisten = \"127.0.0.1:8080\"\n[storage]\ndata_dir = \"{data}\"\n\
                 [turn]\nsecret = \"{SECRET}\"\ntls_listen = \"\"\nrelay_ports = \"50000-50199\"\nmax_allocations_per_user = 50\n\
                 allowed_peer_ranges = [\"10.201.0.0/16\", \"fd20:201::/32\"]\n{turn_lines}\n",
                data = dir.path().join("data").display(),
            ),
        )
        .unwrap();
        let log = dir.path().join("parley.log");
        let child = topology
            .command(&topology.srv, parley_binary())
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start parley in the server namespace");
        let mut daemon = Daemon {
            child,
            _dir: dir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = daemon.child.try_wait().unwrap() {
                panic!("parley exited during start-up: {status}\n{}", daemon.log());
            }
            let ready = topology
                .command(&topology.srv, "curl")
                .args(["-sf", "-o", "/dev/null", "http://127.0.0.1:8080/readyz"])
                .status()
                .expect("run curl");
            if ready.success() {
                return daemon;
            }
            assert!(
                Instant::now() < deadline,
                "parley not ready within 30 s:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `turnutils_peer` (an echo server) in `ns` on `address`:3480; killed on drop.
fn start_peer(topology: &Topology, ns: &str, address: &str) -> Peer {
    Peer::start(
        topology.command(ns, coturn_tool("turnutils_peer")),
        address,
        3480,
    )
}

impl Topology {
    /// Runs `turnutils_uclient` in `ns` against `server`:`port`, relaying through a channel to
    /// the echo peer at `peer`:3480; `extra` adds options (e.g. `-x` for an IPv6 relayed
    /// address).
    fn uclient(
        &self,
        ns: &str,
        server: &str,
        port: u16,
        peer: &str,
        extra: &[&str],
    ) -> UclientResult {
        let port = port.to_string();
        let mut args = vec!["-W", SECRET, "-e", peer, "-r", "3480", "-p", &port];
        // 5 allocations with a channel each, 100 messages of 120 bytes every 5 ms per client.
        args.extend(["-n", "100", "-m", "5", "-l", "120", "-z", "5", "-c"]);
        args.extend(extra);
        args.push(server);
        uclient(self.command(ns, "timeout"), 60, args)
    }
}

fn assert_relayed(what: &str, result: &UclientResult, daemon: &Daemon) {
    let log = format!("\n--- parley log ---\n{}", daemon.log());
    assert_no_loss(what, result, 500, &log);
}

/// A UDP echo that lets the kernel choose the source (plain `recvfrom`/`sendto` on a wildcard
/// socket, what the relay did before IP_PKTINFO) answers a connected client at `server`?
/// This is the control: it shows the topology really is one where that answer is lost.
fn naive_echo_answers(topology: &Topology, client_ns: &str, server: &str, family: &str) -> bool {
    let wildcard = if family == "AF_INET6" {
        "::"
    } else {
        "0.0.0.0"
    };
    let mut echo = topology
        .command(&topology.srv, "/usr/bin/python3")
        .arg("-c")
        .arg(format!(
            "import socket\ns=socket.socket(socket.{family},socket.SOCK_DGRAM)\n\
             s.bind(('{wildcard}',3490))\nprint('bound',flush=True)\n\
             d,a=s.recvfrom(100)\ns.sendto(d,a)\n"
        ))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the naive echo");
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(echo.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "bound");
    }
    let client = topology
        .command(client_ns, "/usr/bin/python3")
        .arg("-c")
        .arg(format!(
            "import socket\ns=socket.socket(socket.{family},socket.SOCK_DGRAM)\n\
             s.connect(('{server}',3490))\ns.settimeout(1.0)\ns.send(b'ping')\n\
             try:\n  s.recv(100); print('answered')\nexcept OSError: print('silent')\n"
        ))
        .output()
        .expect("run the naive client");
    let _ = echo.kill();
    let _ = echo.wait();
    let said = String::from_utf8_lossy(&client.stdout).trim().to_owned();
    assert!(
        said == "answered" || said == "silent",
        "naive client: {said} {}",
        String::from_utf8_lossy(&client.stderr)
    );
    said == "answered"
}

#[test]
fn uclient_relays_through_wildcard_listeners_reached_at_the_second_address() {
    let topology = Topology::build();
    assert!(
        !naive_echo_answers(&topology, &topology.cli, SRV_V4_SECOND, "AF_INET"),
        "control: a kernel-chosen source must not reach the client in this topology"
    );
    let daemon = Daemon::start(
        &topology,
        &format!(
            "listen = \"0.0.0.0:3478\"\nudp_listen_extra = [\"0.0.0.0:443\"]\n\
             relay_address = \"{SRV_V4_SECOND}\"\n"
        ),
    );
    let _peer = start_peer(&topology, &topology.cli, CLI_V4);
    let result = topology.uclient(&topology.cli, SRV_V4_SECOND, 3478, CLI_V4, &[]);
    assert_relayed("UDP 3478 at the second IPv4 address", &result, &daemon);
    let result = topology.uclient(&topology.cli, SRV_V4_SECOND, 443, CLI_V4, &[]);
    assert_relayed(
        "UDP 443 (udp_listen_extra) at the second IPv4 address",
        &result,
        &daemon,
    );
}

#[test]
fn an_ipv6_only_client_relays_to_an_ipv4_peer_through_a_dual_stack_listener() {
    let topology = Topology::build();
    assert!(
        !naive_echo_answers(&topology, &topology.cli6, SRV_V6_SECOND, "AF_INET6"),
        "control: a kernel-chosen source must not reach the client in this topology"
    );
    // One listener on [::] for both families; relayed addresses are IPv4 only.
    let daemon = Daemon::start(
        &topology,
        &format!("listen = \"[::]:3478\"\nrelay_address = \"{SRV_V4_SECOND}\"\n"),
    );
    let _peer = start_peer(&topology, &topology.cli, CLI_V4);
    // cli6 has no IPv4 address: it talks to the relay over IPv6, the relay to the peer over
    // IPv4 (no REQUESTED-ADDRESS-FAMILY means an IPv4 relayed address, RFC 6156).
    let result = topology.uclient(&topology.cli6, SRV_V6_SECOND, 3478, CLI_V4, &[]);
    assert_relayed("IPv6 client to IPv4 peer", &result, &daemon);
    // The same listener still serves IPv4 clients.
    let result = topology.uclient(&topology.cli, SRV_V4_SECOND, 3478, CLI_V4, &[]);
    assert_relayed("IPv4 client on the dual-stack listener", &result, &daemon);
    // No IPv6 relayed address configured: asking for one gets 440, as RFC 6156 says (uclient
    // asks for the family of its peer, here an IPv6 one; `turn` alone would answer 508).
    let result = topology.uclient(&topology.cli6, SRV_V6_SECOND, 3478, CLI_V6, &["-x"]);
    assert!(
        result.output.contains("error 440"),
        "expected 440 Address Family not Supported:\n{}",
        result.output
    );
    // And TURN over TCP on the same [::]:3478, from both families.
    let result = topology.uclient(&topology.cli6, SRV_V6_SECOND, 3478, CLI_V4, &["-t"]);
    assert_relayed("IPv6 client over TCP to IPv4 peer", &result, &daemon);
    let result = topology.uclient(&topology.cli, SRV_V4_SECOND, 3478, CLI_V4, &["-t"]);
    assert_relayed(
        "IPv4 client over TCP on the dual-stack listener",
        &result,
        &daemon,
    );
}

#[test]
fn an_ipv6_relayed_address_is_allocated_when_the_client_asks_for_one() {
    let topology = Topology::build();
    let daemon = Daemon::start(
        &topology,
        &format!(
            "listen = \"[::]:3478\"\nrelay_address = \"{SRV_V4_SECOND}\"\n\
             relay_address_v6 = \"{SRV_V6_SECOND}\"\n"
        ),
    );
    let _peer = start_peer(&topology, &topology.cli6, CLI_V6);
    // REQUESTED-ADDRESS-FAMILY IPv6 (uclient sends it for an IPv6 peer, and with -x).
    let result = topology.uclient(&topology.cli6, SRV_V6_SECOND, 3478, CLI_V6, &["-x"]);
    assert_relayed("IPv6 relayed address to an IPv6 peer", &result, &daemon);
    assert!(
        daemon
            .log()
            .contains(&format!("relayed addresses {SRV_V6_SECOND}")),
        "{}",
        daemon.log()
    );
}
