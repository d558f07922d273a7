//! Project automation: `cargo xtask <task>`.
//!
//! - `ci`: THE test command. Installs what the tests need (Debian packages, a Python venv,
//!   npm packages), builds, then runs every suite: cargo tests, the Socket.IO protocol tests,
//!   the browser tests, the packaging tests. Used by `.ci/run` on a fresh clone.
//! - `deb`: builds the release binary and the `.deb`.
//!
//! Plain `std::process::Command`: the tasks are sequences of commands and need no more.

mod bench;
mod bench_relay;
mod deb;
mod fuzz;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

/// Debian packages the suites use, with a command each that proves it is installed.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("chromium", "chromium"),
    ("coturn", "turnutils_uclient"),
    ("lintian", "lintian"),
    ("debootstrap", "debootstrap"),
    ("systemd", "systemd-analyze"),
    ("systemd-container", "systemd-nspawn"),
    ("iproute2", "ip"),
    ("curl", "curl"),
    ("libnss3-tools", "certutil"),
    // Test CAs and certificates for the network matrix.
    ("openssl", "openssl"),
    // The disk-failure tests swap a device-mapper `error` target under a loop-mounted ext4.
    ("dmsetup", "dmsetup"),
    ("e2fsprogs", "mkfs.ext4"),
    // The network tests build their own namespaces and firewalls.
    ("nftables", "nft"),
    // A real ACME server for the certificate tests.
    ("pebble", "pebble"),
    // CPU load for `cargo xtask ci --under-load` (the suite must not flake on a busy machine).
    ("stress-ng", "stress-ng"),
];

/// Python packages for the protocol and packaging tests (installed into `.venv`).
const PIP_PACKAGES: &[&str] = &[
    "pytest==8.4.2",
    "python-socketio[client]==5.14.1",
    "requests==2.32.5",
    "websocket-client==1.8.0",
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(&args[1..]),
        Some("deb") => deb::build(&args[1..]).map(|path| println!("{}", path.display())),
        Some("bench") => bench::run(&args[1..]),
        Some("fuzz") => fuzz::run(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <task>\n\n\
                 tasks:\n  \
                 ci [STAGE...] [--under-load]\n                  \
                 install test dependencies, build, run every test suite\n                  \
                 (stages: deps build cargo fuzz socketio e2e netns packaging);\n                  \
                 --under-load keeps every core busy with stress-ng meanwhile\n  \
                 deb             build target/debian/parley_*.deb\n  \
                 fuzz [TARGET...] [--secs N] [--runs N]\n                  \
                 build the fuzz targets, run each N s (default 20; docs/security.md)\n  \
                 bench [SCENARIO...] [--users N ...]\n                  \
                 release benchmarks (startup idle burst calls relay; see docs/benchmarks.md)"
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("xtask lives in crates/xtask")
        .to_owned()
}

/// Runs a command in the repository root, streaming its output.
fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    run_in(&root(), program, args)
}

fn run_in(dir: &Path, program: &str, args: &[&str]) -> anyhow::Result<()> {
    eprintln!("$ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .current_dir(dir)
        .status()
        .with_context(|| format!("cannot run {program}: is it installed?"))?;
    if !status.success() {
        bail!("{program} {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn have(command: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {command} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

const STAGES: &[&str] = &[
    "deps",
    "build",
    "cargo",
    "fuzz",
    "socketio",
    "e2e",
    "netns",
    "packaging",
];

fn ci(args: &[String]) -> anyhow::Result<()> {
    // `--under-load`: a CPU hog on every core for the whole run, as a busy CI machine has, to
    // prove that no test depends on an idle machine's timing.
    let under_load = args.iter().any(|a| a == "--under-load");
    let only: Vec<String> = args
        .iter()
        .filter(|a| *a != "--under-load")
        .cloned()
        .collect();
    let _load = if under_load {
        Some(CpuHog::start()?)
    } else {
        None
    };
    let selected: Vec<&str> = if only.is_empty() {
        STAGES.to_vec()
    } else {
        for stage in &only {
            if !STAGES.contains(&stage.as_str()) {
                bail!("unknown stage {stage:?}; stages: {}", STAGES.join(" "));
            }
        }
        only.iter().map(String::as_str).collect()
    };
    let mut passed = Vec::new();
    let mut failed = Vec::new();
    for stage in selected {
        let start = Instant::now();
        eprintln!("\n=== ci stage: {stage}");
        let result = match stage {
            "deps" => deps(),
            "build" => build(),
            "cargo" => {
                let workspace = run(
                    "cargo",
                    &["test", "--workspace", "--locked", "--no-fail-fast"],
                );
                // The vendored engineioxide and tungstenite are no workspace members, and their
                // patches (vendor/README.md) change what their unit tests cover: the socket's
                // packet queue, the WebSocket writer, tungstenite's read and write buffers
                // (engineioxide's also cover the vendored tokio-tungstenite's waker proxy).
                let vendored = ["engineioxide", "tungstenite"]
                    .map(|krate| run("cargo", &["test", "-p", krate, "--lib", "--locked"]));
                // socketioxide's unit tests make their sockets with the test helpers of its
                // `__test_harness` feature and engineioxide's, which cargo lets no one turn on
                // for a crate outside the workspace: the feature's cfg is set for the whole
                // build instead, in a target directory of its own so that the workspace's
                // build stays cached. Its patches (extensions, request parts, parser state) are under them.
                let socketioxide = run(
                    "cargo",
                    &[
                        "test",
                        "-p",
                        "socketioxide",
                        "--lib",
                        "--locked",
                        "--target-dir",
                        "target/vendor-tests",
                        "--config",
                        r#"build.rustflags = ["--cfg", 'feature="__test_harness"']"#,
                    ],
                );
                vendored
                    .into_iter()
                    .chain([socketioxide])
                    .fold(workspace, |all, one| all.and(one))
            }
            // Every fuzz target for a few seconds: a parser that now crashes fails CI.
            "fuzz" => fuzz::run(&[]),
            "socketio" => pytest("tests/socketio"),
            "e2e" => e2e(),
            "netns" => netns(),
            "packaging" => pytest("tests/packaging"),
            _ => unreachable!("stages are checked above"),
        };
        let seconds = start.elapsed().as_secs();
        match result {
            Ok(()) => {
                eprintln!("=== ci stage {stage}: ok ({seconds} s)");
                passed.push(stage);
            }
            Err(e) => {
                eprintln!("=== ci stage {stage}: FAILED ({seconds} s): {e:#}");
                failed.push(stage);
                // Without dependencies or a build, every later stage fails for the same reason.
                if stage == "deps" || stage == "build" {
                    break;
                }
            }
        }
    }
    println!("\nci stages passed: {}", passed.join(" "));
    if !failed.is_empty() {
        println!("ci stages FAILED: {}", failed.join(" "));
    }
    println!("stages: {} passed, {} failed", passed.len(), failed.len());
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("{} stage(s) failed", failed.len())
    }
}

/// `stress-ng --cpu 0` (one busy worker per core) until dropped.
struct CpuHog(std::process::Child);

impl CpuHog {
    fn start() -> anyhow::Result<Self> {
        let child = Command::new("stress-ng")
            .args(["--cpu", "0", "--timeout", "3h", "--quiet"])
            .spawn()
            .context("cannot run stress-ng (run `cargo xtask ci deps` first)")?;
        eprintln!(
            "ci: running under load (stress-ng --cpu 0, pid {})",
            child.id()
        );
        Ok(CpuHog(child))
    }
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn deps() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(_, probe)| !have(probe))
        .map(|(package, _)| *package)
        .collect();
    if !missing.is_empty() {
        run("apt-get", &["update", "-q"])?;
        let mut args = vec![
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            // Another apt (unattended upgrades, a second session) may hold the lock briefly.
            "-o",
            "DPkg::Lock::Timeout=300",
        ];
        args.extend(&missing);
        let status = Command::new("apt-get")
            .args(&args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("cannot run apt-get")?;
        if !status.success() {
            bail!("apt-get install {} failed", missing.join(" "));
        }
    }
    let venv = root().join(".venv");
    if !venv.join("bin/python").exists() {
        run("python3", &["-m", "venv", ".venv"])?;
    }
    let pip = venv.join("bin/pip");
    let pip = pip.to_str().expect("the repository path is UTF-8");
    let mut args = vec!["install", "-q", "--disable-pip-version-check"];
    args.extend(PIP_PACKAGES);
    run(pip, &args)?;
    // tests/netns has no packages of its own: it loads playwright-core through
    // tests/e2e/harness.mjs.
    for dir in ["web", "tests/e2e"] {
        if root().join(dir).join("package-lock.json").exists() {
            run_in(&root().join(dir), "npm", &["ci", "--no-audit", "--no-fund"])?;
        }
    }
    fuzz::install_cargo_fuzz()?;
    Ok(())
}

fn build() -> anyhow::Result<()> {
    // The daemon binary the integration suites start (its build script builds the web client).
    run(
        "cargo",
        &["build", "--workspace", "--all-targets", "--locked"],
    )
}

fn pytest(dir: &str) -> anyhow::Result<()> {
    let tests = root().join(dir);
    let has_tests = std::fs::read_dir(&tests)
        .map(|entries| {
            entries.flatten().any(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with("test_") && name.ends_with(".py")
            })
        })
        .unwrap_or(false);
    if !has_tests {
        bail!("{dir} has no test_*.py files");
    }
    let pytest = root().join(".venv/bin/pytest");
    run(
        pytest.to_str().expect("the repository path is UTF-8"),
        &[dir, "-q", "-rfE", "--maxfail=50"],
    )
}

/// The network matrix: browsers in network namespaces the suite builds and deletes itself
/// (needs root, iproute2, nftables; tests/netns/README.md).
fn netns() -> anyhow::Result<()> {
    run_in(
        &root().join("tests/netns"),
        "node",
        &[
            "--test",
            "--test-concurrency=1",
            "--test-timeout=600000",
            ".",
        ],
    )
}

fn e2e() -> anyhow::Result<()> {
    run_in(
        &root().join("tests/e2e"),
        "node",
        &[
            "--test",
            "--test-concurrency=1",
            "--test-timeout=300000",
            ".",
        ],
    )
}
