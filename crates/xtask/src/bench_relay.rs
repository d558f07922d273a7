//! `cargo xtask bench relay [SCENARIO...] [--reps N]`: the embedded relay against coturn, side
//! by side, driven by coturn's own load client.
//!
//! Both servers run on loopback with the same shared secret, loopback peers allowed and the same
//! size of relay port range; coturn's `turnutils_peer` echoes every datagram, and
//! `turnutils_uclient` (`-c`: one allocation and one channel per client) sends and counts. Every
//! scenario runs on each server back to back, and the order alternates between reps, so that
//! both see the same machine. What is measured per run:
//!
//! - `echoed`: messages that came back to uclient. Each crossed the relay twice (client → peer,
//!   peer → client), so **relayed = 2 × echoed**; a message lost on either leg is not counted.
//! - `pps`: relayed packets per second in the steady part of the run, between the moments 10% and
//!   90% of the echoes had arrived (uclient prints its counters every second; its staggered
//!   1–6 s start and the stragglers are left out).
//! - `per_cpu_s`: relayed packets per CPU-second of the server (utime + stime of the whole
//!   process from `/proc/PID/stat`, over the run). This is the figure that ranks relays on a
//!   shared 2-core machine, where uclient and the peer take CPU too.
//! - `loss`, `rtt`, `jitter`: uclient's own (1 ms resolution).
//! - `busy` and `bg`: cores busy on the whole machine during the run (`/proc/stat`), and the part
//!   of it that was neither the server, the client nor the peer. A run with `bg` well above 0
//!   had company: its figures say less.
//!
//! The summary prints, per scenario, the medians and parley/coturn ratios.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A load shape for uclient.
#[derive(Clone, Copy, Debug)]
struct Scenario {
    name: &'static str,
    clients: u32,
    messages: u32,
    bytes: u32,
    /// Milliseconds between a client's messages; 0 = as fast as uclient's timer loop allows.
    interval_ms: u32,
    tcp: bool,
}

const SCENARIOS: &[Scenario] = &[
    // An audio call's packets (Opus-sized, 50 per second) for 50 parties.
    Scenario {
        name: "paced",
        clients: 50,
        messages: 1000,
        bytes: 120,
        interval_ms: 20,
        tcp: false,
    },
    // The same over TURN/TCP (networks that block UDP), 10 parties.
    Scenario {
        name: "paced-tcp",
        clients: 10,
        messages: 1000,
        bytes: 120,
        interval_ms: 20,
        tcp: true,
    },
    // Overload: 10 clients sending as fast as they can. This ranks relays.
    Scenario {
        name: "flood",
        clients: 10,
        messages: 50_000,
        bytes: 120,
        interval_ms: 0,
        tcp: false,
    },
];

const SECRET: &str = "relay-bench-secret";

pub fn run(args: &[String], parley: &Path) -> anyhow::Result<()> {
    let mut reps = 3usize;
    let mut chosen: Vec<Scenario> = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--reps" => {
                reps = iter
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n > 0)
                    .context("--reps takes a positive number")?;
            }
            name => match SCENARIOS.iter().find(|s| s.name == name) {
                Some(s) => chosen.push(*s),
                None => bail!(
                    "unknown relay scenario {name:?}; known: {}",
                    SCENARIOS
                        .iter()
                        .map(|s| s.name)
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            },
        }
    }
    if chosen.is_empty() {
        chosen.extend(SCENARIOS);
    }
    for tool in ["turnserver", "turnutils_uclient", "turnutils_peer"] {
        if !crate::have(tool) {
            crate::run(
                "sh",
                &[
                    "-c",
                    "DEBIAN_FRONTEND=noninteractive apt-get install -y -q coturn >/dev/null",
                ],
            )
            .context("the relay benchmark needs coturn (turnserver, turnutils_uclient)")?;
            break;
        }
    }

    let work = std::env::temp_dir().join(format!("parley-relay-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let result = (|| {
        let coturn = Server::coturn(&work)?;
        let ours = Server::parley(&work, parley)?;
        let mut results: Vec<(String, &'static str, RunResult)> = Vec::new();
        for rep in 0..reps {
            for scenario in &chosen {
                // Alternate who goes first, so that neither always runs on a warmer (or busier)
                // machine.
                let order: [&Server; 2] = if rep % 2 == 0 {
                    [&ours, &coturn]
                } else {
                    [&coturn, &ours]
                };
                for server in order {
                    let r = run_one(&work, server, scenario)
                        .with_context(|| format!("{} on {}", scenario.name, server.label))?;
                    println!(
                        "rep {} {:<9} {:<6} {}",
                        rep + 1,
                        scenario.name,
                        server.label,
                        r.line()
                    );
                    results.push((scenario.name.to_owned(), server.label, r));
                }
            }
        }
        summarize(&chosen, &results);
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// A relay under test, started here and killed on drop.
struct Server {
    label: &'static str,
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn coturn(work: &Path) -> anyhow::Result<Server> {
        let port = crate::bench::free_port()?;
        let conf = work.join("coturn.conf");
        std::fs::write(
            &conf,
            format!(
                "listening-ip=127.0.0.1\nlistening-port={port}\nrelay-ip=127.0.0.1\n\
                 min-port=58000\nmax-port=58999\nuse-auth-secret\nstatic-auth-secret={SECRET}\n\
                 realm=parley-bench\nno-tls\nno-dtls\nno-cli\nallow-loopback-peers\n\
                 no-multicast-peers\nlog-file=stdout\nsimple-log\npidfile={}\n",
                work.join("coturn.pid").display()
            ),
        )?;
        let child = Command::new("turnserver")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start turnserver")?;
        let server = Server {
            label: "coturn",
            child,
            port,
        };
        server.wait_listening()?;
        Ok(server)
    }

    fn parley(work: &Path, binary: &Path) -> anyhow::Result<Server> {
        let port = crate::bench::free_port()?;
        let http = crate::bench::free_port()?;
        let dir = work.join("parley");
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("parley.toml");
        // The same relay port range size as coturn's; the per-user quota is off because uclient
        // sends bare-expiry usernames, so every client counts as the same user.
        std::fs::write(
            &conf,
            format!(
                "[http]\nlisten = \"127.0.0.1:{http}\"\n[storage]\ndata_dir = \"{}\"\n\
                 [turn]\nlisten = \"127.0.0.1:{port}\"\ntls_listen = \"\"\nsecret = \"{SECRET}\"\n\
                 relay_ports = \"57000-57999\"\nallowed_peer_ranges = [\"127.0.0.0/8\"]\n\
                 max_allocations_per_user = 0\n[log]\nlevel = \"warn\"\n",
                dir.join("data").display()
            ),
        )?;
        let child = Command::new(binary)
            .arg("--config")
            .arg(&conf)
            .arg("serve")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let server = Server {
            label: "parley",
            child,
            port,
        };
        server.wait_listening()?;
        Ok(server)
    }

    /// Waits until the server answers a STUN Binding request on its UDP port.
    fn wait_listening(&self) -> anyhow::Result<()> {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
        request.extend_from_slice(b"relaybench12");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let _ = socket.send_to(&request, ("127.0.0.1", self.port));
            let mut buf = [0u8; 512];
            if let Ok((n, _)) = socket.recv_from(&mut buf)
                && n >= 20
                && buf[0..2] == [0x01, 0x01]
            {
                return Ok(());
            }
        }
        bail!("{} did not answer STUN on UDP {}", self.label, self.port)
    }

    fn cpu_ticks(&self) -> anyhow::Result<u64> {
        process_cpu_ticks(self.child.id())
    }
}

/// utime + stime of a process (every thread, also the ones that ended), in clock ticks.
fn process_cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').context("odd /proc stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after "pid (comm)".
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

/// Busy jiffies of the whole machine (all cores together).
fn machine_ticks() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat.lines().next().context("empty /proc/stat")?;
    let v: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v.get(7).copied().unwrap_or(0);
    Ok(busy)
}

const TICKS_PER_SEC: f64 = 100.0;

#[derive(Clone, Debug, Default, PartialEq)]
struct RunResult {
    sent: u64,
    echoed: u64,
    loss_pct: f64,
    rtt_ms: f64,
    jitter_ms: f64,
    pps: f64,
    server_cpu_s: f64,
    per_cpu_s: f64,
    busy_cores: f64,
    bg_cores: f64,
}

impl RunResult {
    fn line(&self) -> String {
        format!(
            "sent={} echoed={} loss={:.2}% rtt={:.2}ms jitter={:.2}ms pps={:.0} cpu={:.2}s \
             per_cpu_s={:.0} busy={:.2} bg={:.2}",
            self.sent,
            self.echoed,
            self.loss_pct,
            self.rtt_ms,
            self.jitter_ms,
            self.pps,
            self.server_cpu_s,
            self.per_cpu_s,
            self.busy_cores,
            self.bg_cores
        )
    }
}

fn run_one(work: &Path, server: &Server, scenario: &Scenario) -> anyhow::Result<RunResult> {
    let peer_port = crate::bench::free_port()?;
    let mut peer = Command::new("turnutils_peer")
        .args(["-L", "127.0.0.1", "-p", &peer_port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start turnutils_peer")?;
    std::thread::sleep(Duration::from_millis(200));
    let log: PathBuf = work.join("uclient.log");
    let mut flags = vec![
        "-c".to_owned(),
        "-m".into(),
        scenario.clients.to_string(),
        "-n".into(),
        scenario.messages.to_string(),
        "-l".into(),
        scenario.bytes.to_string(),
        "-z".into(),
        scenario.interval_ms.to_string(),
        "-e".into(),
        "127.0.0.1".into(),
        "-r".into(),
        peer_port.to_string(),
        "-p".into(),
        server.port.to_string(),
        "-W".into(),
        SECRET.into(),
    ];
    if scenario.tcp {
        flags.push("-t".into());
    }
    flags.push("127.0.0.1".into());
    // `times` after uclient exits prints the CPU of the shell's waited children: uclient's.
    let script = format!(
        "timeout 300 turnutils_uclient {} >{} 2>&1; status=$?; times; exit $status",
        flags.join(" "),
        log.display()
    );
    let server_before = server.cpu_ticks()?;
    let peer_before = process_cpu_ticks(peer.id())?;
    let busy_before = machine_ticks()?;
    let started = Instant::now();
    let output = Command::new("bash").args(["-c", &script]).output()?;
    let wall = started.elapsed().as_secs_f64();
    let busy_after = machine_ticks()?;
    let server_ticks = server.cpu_ticks()? - server_before;
    let peer_ticks = process_cpu_ticks(peer.id())? - peer_before;
    let _ = peer.kill();
    let _ = peer.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    if !output.status.success() {
        bail!(
            "turnutils_uclient failed ({}): {}",
            output.status,
            text.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
        );
    }
    let client_cpu_s = parse_times(&String::from_utf8_lossy(&output.stdout));
    let mut result = parse_uclient(&text).context("uclient printed no totals")?;
    result.server_cpu_s = server_ticks as f64 / TICKS_PER_SEC;
    result.per_cpu_s = if result.server_cpu_s > 0.0 {
        2.0 * result.echoed as f64 / result.server_cpu_s
    } else {
        0.0
    };
    result.busy_cores = (busy_after - busy_before) as f64 / (wall * TICKS_PER_SEC);
    let ours = result.server_cpu_s + peer_ticks as f64 / TICKS_PER_SEC + client_cpu_s;
    result.bg_cores = (result.busy_cores - ours / wall).max(0.0);
    Ok(result)
}

/// The children's user and system time from bash's `times` (its second line).
fn parse_times(text: &str) -> f64 {
    let seconds = |s: &str| -> f64 {
        // "1m2.345s"
        let s = s.trim_end_matches('s');
        let (m, rest) = s.split_once('m').unwrap_or(("0", s));
        m.parse::<f64>().unwrap_or(0.0) * 60.0 + rest.parse::<f64>().unwrap_or(0.0)
    };
    text.lines()
        .nth(1)
        .map(|line| line.split_whitespace().map(seconds).sum())
        .unwrap_or(0.0)
}

/// uclient's totals and its once-a-second progress lines → the run's figures.
fn parse_uclient(text: &str) -> Option<RunResult> {
    let number_after = |line: &str, key: &str| -> Option<f64> {
        let at = line.find(key)? + key.len();
        let digits: String = line[at..]
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        digits.parse().ok()
    };
    let mut result = RunResult::default();
    let mut totals = false;
    // (second, cumulative echoes) from the per-second progress lines.
    let mut progress: Vec<(f64, f64)> = Vec::new();
    for line in text.lines() {
        let second: Option<f64> = line.split(':').next().and_then(|s| s.trim().parse().ok());
        if line.contains("start_mclient: msz=") {
            if let (Some(t), Some(r)) = (second, number_after(line, "tot_recv_msgs=")) {
                progress.push((t, r));
            }
        } else if line.contains("start_mclient: tot_send_msgs=") {
            result.sent = number_after(line, "tot_send_msgs=")? as u64;
            result.echoed = number_after(line, "tot_recv_msgs=")? as u64;
            totals = true;
            if let Some(t) = second {
                progress.push((t, result.echoed as f64));
            }
        } else if line.contains("Total lost packets") {
            result.loss_pct = line
                .split('(')
                .nth(1)
                .and_then(|s| s.split('%').next())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0.0);
        } else if line.contains("Average round trip delay") {
            result.rtt_ms = number_after(line, "delay").unwrap_or(0.0);
        } else if line.contains("Average jitter") {
            result.jitter_ms = number_after(line, "jitter").unwrap_or(0.0);
        }
    }
    if !totals {
        return None;
    }
    result.pps = 2.0 * steady_rate(&progress, result.echoed as f64);
    Some(result)
}

/// Echoes per second between the moments 10% and 90% of `total` had arrived. The progress lines
/// have a 1 s resolution, so a short run falls back to the whole span that saw traffic.
fn steady_rate(progress: &[(f64, f64)], total: f64) -> f64 {
    if total <= 0.0 || progress.is_empty() {
        return 0.0;
    }
    let first = |fraction: f64| progress.iter().find(|(_, r)| *r >= fraction * total);
    let (Some(&(t10, r10)), Some(&(t90, r90))) = (first(0.1), first(0.9)) else {
        return 0.0;
    };
    if t90 - t10 >= 2.0 {
        return (r90 - r10) / (t90 - t10);
    }
    // The span from the last second with no echo yet to the first with all of them.
    let start = progress
        .iter()
        .rev()
        .find(|(_, r)| *r <= 0.0)
        .map_or(progress[0].0, |p| p.0);
    let end = progress
        .iter()
        .find(|(_, r)| *r >= total)
        .map_or(t90, |p| p.0);
    if end > start {
        total / (end - start)
    } else {
        0.0
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn summarize(chosen: &[Scenario], results: &[(String, &'static str, RunResult)]) {
    println!(
        "\nmedians per scenario (ratios are parley / coturn; higher is better except loss, rtt)"
    );
    println!(
        "{:<9} {:<6} {:>10} {:>11} {:>7} {:>7} {:>6} {:>6}",
        "scenario", "server", "pps", "per_cpu_s", "loss%", "rtt ms", "busy", "bg"
    );
    for scenario in chosen {
        let pick = |label: &str, f: fn(&RunResult) -> f64| {
            median(
                results
                    .iter()
                    .filter(|(s, l, _)| s == scenario.name && *l == label)
                    .map(|(_, _, r)| f(r))
                    .collect(),
            )
        };
        for label in ["parley", "coturn"] {
            println!(
                "{:<9} {:<6} {:>10.0} {:>11.0} {:>7.2} {:>7.2} {:>6.2} {:>6.2}",
                scenario.name,
                label,
                pick(label, |r| r.pps),
                pick(label, |r| r.per_cpu_s),
                pick(label, |r| r.loss_pct),
                pick(label, |r| r.rtt_ms),
                pick(label, |r| r.busy_cores),
                pick(label, |r| r.bg_cores),
            );
        }
        let ratio = |f: fn(&RunResult) -> f64| {
            let c = pick("coturn", f);
            if c > 0.0 { pick("parley", f) / c } else { 0.0 }
        };
        println!(
            "{:<9} ratio  pps {:.2}x, per CPU-second {:.2}x, loss {:.2}% vs {:.2}%",
            scenario.name,
            ratio(|r| r.pps),
            ratio(|r| r.per_cpu_s),
            pick("parley", |r| r.loss_pct),
            pick("coturn", |r| r.loss_pct),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tail of a real uclient run (2 clients x 200 messages), as it prints it.
    const UCLIENT: &str = "\
0: : Total connect time is 0
1: : start_mclient: msz=2, tot_send_msgs=0, tot_recv_msgs=0, tot_send_bytes ~ 0, tot_recv_bytes ~ 0
3: : start_mclient: msz=2, tot_send_msgs=124, tot_recv_msgs=123, tot_send_bytes ~ 14880, tot_recv_bytes ~ 14760
4: : start_mclient: msz=2, tot_send_msgs=200, tot_recv_msgs=200, tot_send_bytes ~ 24000, tot_recv_bytes ~ 24000
7: : start_mclient: msz=2, tot_send_msgs=369, tot_recv_msgs=368, tot_send_bytes ~ 44280, tot_recv_bytes ~ 44160
7: : start_mclient: tot_send_msgs=400, tot_recv_msgs=398
7: : start_mclient: tot_send_bytes ~ 48000, tot_recv_bytes ~ 48000
7: : Total transmit time is 7
7: : Total lost packets 2 (0.500000%), total send dropped 0 (0.000000%)
7: : Average round trip delay 0.050000 ms; min = 0 ms, max = 4 ms
7: : Average jitter 1.530000 ms; min = 0 ms, max = 6 ms
";

    #[test]
    fn uclient_totals_are_read_from_its_summary_lines() {
        let r = parse_uclient(UCLIENT).expect("totals");
        assert_eq!((r.sent, r.echoed), (400, 398));
        assert_eq!(r.loss_pct, 0.5);
        assert_eq!(r.rtt_ms, 0.05);
        assert_eq!(r.jitter_ms, 1.53);
    }

    #[test]
    fn the_steady_rate_is_taken_between_the_10_and_90_percent_marks() {
        // 10% (39.8) reached at 3 s with 123, 90% (358.2) at 7 s with 368: 245 echoes in 4 s,
        // each relayed twice.
        let r = parse_uclient(UCLIENT).expect("totals");
        assert_eq!(r.pps, 2.0 * 245.0 / 4.0);
    }

    #[test]
    fn a_run_too_short_for_the_marks_uses_the_span_that_saw_traffic() {
        let progress = [(1.0, 0.0), (2.0, 1000.0)];
        assert_eq!(steady_rate(&progress, 1000.0), 1000.0);
    }

    #[test]
    fn a_run_without_totals_is_an_error_not_a_zero() {
        assert!(parse_uclient("0: : Total connect time is 0\n").is_none());
    }

    #[test]
    fn bash_times_gives_the_childrens_cpu() {
        let times = "0m0.001s 0m0.002s\n0m1.500s 1m0.250s\n";
        assert_eq!(parse_times(times), 61.75);
    }
}
