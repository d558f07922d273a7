//! `cargo xtask bench [idle|burst|calls|startup|relay|all] [OPTIONS]`: the benchmarks behind
//! docs/benchmarks.md.
//!
//! Builds the release daemon and `parley-loadgen`, then for each scenario starts a fresh daemon
//! (temp data directory, free 127.0.0.1 ports, registration open, the login limit raised so
//! that test accounts can be made) and runs the load generator against it. `startup` measures
//! the time from exec to the systemd `READY=1` notification (every listener bound) and the
//! RSS of an idle daemon. The load generator prints its own tables; a summary closes the run.
//!
//! Figures are only as good as the machine is quiet: the 1-minute load average is printed with
//! each table. Run it alone.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

const SCENARIOS: &[&str] = &["startup", "idle", "burst", "calls", "relay"];

/// Options; each maps to a load generator flag.
struct Options {
    idle_users: String,
    burst_users: String,
    spread: String,
    rate: String,
    duration: String,
    pairs: String,
    hold: String,
}

fn usage() -> String {
    "usage: cargo xtask bench [startup|idle|burst|calls|relay|all ...] [--users N] \
     [--burst-users N] [--spread SECS] [--rate R] [--duration SECS] [--pairs P] [--hold SECS] \
     [paced|paced-tcp|flood ...] [--reps N] [--parley PATH]\n\
     defaults: idle 10000 users held 30 s; burst 2000 users within 3 s; calls 500 setups/s \
     for 20 s on 250 pairs; relay: paced, paced-tcp and flood against coturn, 3 reps; \
     --parley measures another daemon binary than this tree's release build"
        .to_owned()
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let mut selected: Vec<&str> = Vec::new();
    let mut options = Options {
        idle_users: "10000".into(),
        burst_users: "2000".into(),
        spread: "3".into(),
        rate: "500".into(),
        duration: "20".into(),
        pairs: "250".into(),
        hold: "30".into(),
    };
    // Options of the relay benchmark, passed through to it.
    let mut relay_args: Vec<String> = Vec::new();
    // `--parley PATH`: measure that daemon binary instead of this tree's release build.
    let mut parley_override: Option<PathBuf> = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--parley" {
            parley_override = Some(PathBuf::from(iter.next().context("--parley needs a path")?));
            continue;
        }
        if arg == "--reps" {
            relay_args.push(arg.clone());
            relay_args.push(iter.next().context("--reps needs a value")?.clone());
            continue;
        }
        if ["paced", "paced-tcp", "flood"].contains(&arg.as_str()) {
            relay_args.push(arg.clone());
            if !selected.contains(&"relay") {
                selected.push("relay");
            }
            continue;
        }
        let mut value = |name: &str| -> anyhow::Result<String> {
            let value = iter
                .next()
                .with_context(|| format!("{name} needs a value\n{}", usage()))?;
            if value.parse::<f64>().is_err() {
                bail!("{name} takes a number, not {value:?}");
            }
            Ok(value.clone())
        };
        match arg.as_str() {
            "--users" => options.idle_users = value("--users")?,
            "--burst-users" => options.burst_users = value("--burst-users")?,
            "--spread" => options.spread = value("--spread")?,
            "--rate" => options.rate = value("--rate")?,
            "--duration" => options.duration = value("--duration")?,
            "--pairs" => options.pairs = value("--pairs")?,
            "--hold" => options.hold = value("--hold")?,
            "all" => selected.extend(SCENARIOS),
            name if SCENARIOS.contains(&name) => selected.push(
                SCENARIOS
                    .iter()
                    .find(|s| **s == name)
                    .expect("just checked"),
            ),
            other => bail!("unknown argument {other:?}\n{}", usage()),
        }
    }
    if selected.is_empty() {
        selected.extend(SCENARIOS);
    }

    super::run(
        "cargo",
        &[
            "build",
            "--release",
            "--locked",
            "-p",
            "parleyd",
            "-p",
            "parley-loadgen",
        ],
    )?;
    let release = target_dir().join("release");
    let parley = parley_override.unwrap_or_else(|| release.join("parley"));
    let loadgen = release.join("parley-loadgen");

    let mut summary: Vec<(String, String)> = Vec::new();
    let mut failed = Vec::new();
    let mut startup_line = String::new();
    for scenario in selected {
        eprintln!("\n=== bench: {scenario} (load average {})", load_average());
        let result = match scenario {
            "startup" => startup(&parley).map(|line| {
                startup_line = line;
            }),
            "relay" => relay(&parley, &relay_args),
            _ => {
                let args = loadgen_args(scenario, &options);
                with_daemon(&parley, |daemon| {
                    let mut command = Command::new(&loadgen);
                    command
                        .arg("--http")
                        .arg(daemon.http.to_string())
                        .arg("--pid")
                        .arg(daemon.child.id().to_string())
                        .arg("--database")
                        .arg(daemon.data_dir.join("parley.db"))
                        .args(&args);
                    eprintln!("$ {command:?}");
                    let status = command.status().context("cannot run parley-loadgen")?;
                    if !status.success() {
                        bail!("parley-loadgen {scenario} reported errors ({status})");
                    }
                    Ok(())
                })
            }
        };
        match result {
            Ok(()) if scenario == "startup" => {
                summary.push((scenario.into(), std::mem::take(&mut startup_line)));
            }
            Ok(()) => summary.push((scenario.into(), "ok".into())),
            Err(e) => {
                eprintln!("bench {scenario} FAILED: {e:#}");
                summary.push((scenario.into(), format!("FAILED: {e:#}")));
                failed.push(scenario);
            }
        }
    }
    println!("\nbench summary");
    for (scenario, line) in &summary {
        println!("  {scenario:<8} {line}");
    }
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("{} benchmark(s) failed: {}", failed.len(), failed.join(" "))
    }
}

fn loadgen_args(scenario: &str, options: &Options) -> Vec<String> {
    let args: Vec<&str> = match scenario {
        "idle" => vec![
            "idle",
            "--users",
            &options.idle_users,
            "--hold-secs",
            &options.hold,
        ],
        "burst" => vec![
            "burst",
            "--users",
            &options.burst_users,
            "--spread-secs",
            &options.spread,
        ],
        "calls" => vec![
            "calls",
            "--rate",
            &options.rate,
            "--duration-secs",
            &options.duration,
            "--pairs",
            &options.pairs,
        ],
        _ => unreachable!("only load generator scenarios get here"),
    };
    args.into_iter().map(str::to_owned).collect()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| super::root().join("target"))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A loopback port free for both TCP and UDP right now.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    for _ in 0..100 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free loopback port found")
}

struct Daemon {
    child: Child,
    http: std::net::SocketAddr,
    data_dir: PathBuf,
    dir: PathBuf,
    /// exec to READY=1.
    ready_after: Duration,
    notify: UnixDatagram,
}

impl Daemon {
    /// A config in a new temp directory, with free ports.
    fn configure() -> anyhow::Result<(PathBuf, std::net::SocketAddr)> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "parley-bench-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let http = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let turn = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let config = format!(
            // Every simulated user connects from 127.0.0.1: the per-address limits that protect
            // a real server from one attacker would throttle the whole benchmark.
            "[http]\nlisten = \"{http}\"\nmax_unauthenticated_per_address = 0\n\
             [storage]\ndata_dir = \"{}\"\n\
             [auth]\nregistration = \"open\"\nlogin_attempts_per_minute = 1000000\n\
             password_hash_queue = 1000000\n\
             [turn]\nlisten = \"{turn}\"\ntls_listen = \"\"\n[log]\nlevel = \"warn\"\n",
            dir.join("data").display()
        );
        std::fs::write(dir.join("parley.toml"), config)?;
        Ok((dir, http))
    }

    /// Starts `parley serve` on the config in `dir` and waits for READY=1.
    fn start(parley: &Path, dir: &Path, http: std::net::SocketAddr) -> anyhow::Result<Daemon> {
        let socket_path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&socket_path);
        let notify = UnixDatagram::bind(&socket_path)
            .with_context(|| format!("cannot bind {}", socket_path.display()))?;
        notify.set_read_timeout(Some(Duration::from_secs(30)))?;
        let log = std::fs::File::create(dir.join("daemon.log"))?;
        let started = Instant::now();
        let child = Command::new(parley)
            .arg("--config")
            .arg(dir.join("parley.toml"))
            .arg("serve")
            .env_remove("PARLEY_CONFIG")
            .env("NOTIFY_SOCKET", &socket_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", parley.display()))?;
        let mut daemon = Daemon {
            child,
            http,
            data_dir: dir.join("data"),
            dir: dir.to_owned(),
            ready_after: Duration::ZERO,
            notify,
        };
        let mut buffer = [0u8; 4096];
        loop {
            let n = daemon.notify.recv(&mut buffer).with_context(|| {
                format!(
                    "no READY=1 from the daemon within 30 s; see {}",
                    dir.join("daemon.log").display()
                )
            })?;
            let message = String::from_utf8_lossy(&buffer[..n]);
            if message.lines().any(|l| l == "READY=1") {
                daemon.ready_after = started.elapsed();
                return Ok(daemon);
            }
        }
    }

    /// SIGTERM, then wait (up to 20 s) for the exit.
    fn stop(mut self) -> anyhow::Result<()> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!(
                        "the daemon exited with {status}; see {}",
                        self.dir.join("daemon.log").display()
                    );
                }
                let _ = std::fs::remove_dir_all(&self.dir);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("the daemon did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn with_daemon(
    parley: &Path,
    body: impl FnOnce(&Daemon) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let (dir, http) = Daemon::configure()?;
    let daemon = Daemon::start(parley, &dir, http)?;
    let result = body(&daemon);
    let stopped = daemon.stop();
    result.and(stopped)
}

/// Exec to READY=1, first start (creates the database and TURN secret) and restarts; idle RSS.
fn startup(parley: &Path) -> anyhow::Result<String> {
    let (dir, http) = Daemon::configure()?;
    let first = Daemon::start(parley, &dir, http)?;
    let first_ready = first.ready_after;
    // Idle RSS once start-up allocations settle and before any client connects.
    std::thread::sleep(Duration::from_secs(2));
    let idle_rss = rss_kib(first.child.id());
    // Keep the directory: the restarts reuse its database.
    let mut first = first;
    let pid = first.child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let _ = first.child.wait();
    drop(first);
    let mut restarts = Vec::new();
    for _ in 0..5 {
        let daemon = Daemon::start(parley, &dir, http)?;
        restarts.push(daemon.ready_after);
        let mut daemon = daemon;
        let pid = daemon.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let _ = daemon.child.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
    restarts.sort();
    let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
    println!("startup (exec -> READY=1, every listener bound)");
    println!("  first start (creates database)  {} ms", ms(first_ready));
    println!(
        "  restarts (5) median / max       {} / {} ms",
        ms(restarts[restarts.len() / 2]),
        ms(*restarts.last().expect("five restarts"))
    );
    println!(
        "  idle daemon RSS                 {}",
        idle_rss.map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
    );
    println!("  load average (1 min)            {}", load_average());
    Ok(format!(
        "ready {} ms first, {} ms median restart; idle RSS {}",
        ms(first_ready),
        ms(restarts[restarts.len() / 2]),
        idle_rss.map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
    ))
}

/// The relay against coturn (crates/xtask/src/bench_relay.rs; docs/benchmarks.md, "Relay").
fn relay(parley: &Path, args: &[String]) -> anyhow::Result<()> {
    super::bench_relay::run(args, parley)
}
