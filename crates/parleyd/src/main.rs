//! `parley`: the daemon and its admin commands. See ARCHITECTURE.md for the map.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use parley_config::Config;

use parleyd::cli::{Cli, Command};
use parleyd::{calls_admin, doctor, hostaddr, logging, serve, users};

/// The packaged config, used when no `--config` is given and it exists.
const SYSTEM_CONFIG: &str = "/etc/parley/parley.toml";

/// Exit status for a run-time failure (the message says what to fix).
const EXIT_FAILURE: u8 = 1;
/// Exit status for bad usage or an invalid configuration.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::Version = command {
        println!("parley {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }

    // On a server with the package installed, `parley user add` must act on the installed
    // daemon's data, not on ./data of wherever the admin stands.
    let config_path = cli
        .config
        .clone()
        .or_else(|| Some(PathBuf::from(SYSTEM_CONFIG)).filter(|p| p.exists()));
    let (mut config, report) = match Config::load(config_path.as_deref()) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("parley: invalid configuration:\n{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    logging::init(config.log.level);
    for name in &report.unknown_env {
        log::warn!("ignoring environment variable {name}: it names no config key");
    }
    // rustls is built with ring only (aws-lc would add a minute of C compilation for nothing);
    // with one provider compiled in, installing it cannot conflict.
    let _ = rustls::crypto::ring::default_provider().install_default();

    if let Command::CheckConfig = command {
        let source = config_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "embedded defaults".into());
        println!("# parley: configuration OK ({source} + PARLEY_* environment)");
        print!("{}", config.to_redacted_toml());
        return ExitCode::SUCCESS;
    }

    if matches!(command, Command::Serve | Command::Doctor)
        && let Err(e) = hostaddr::resolve_relay_address(&mut config)
    {
        eprintln!("parley: {e:#}");
        return ExitCode::from(EXIT_FAILURE);
    }
    if let Command::User(_) | Command::Calls(_) = command
        && let Err(e) = become_data_owner(&config.storage.data_dir)
    {
        eprintln!("parley: {e:#}");
        return ExitCode::from(EXIT_FAILURE);
    }
    raise_open_files_limit();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // One worker thread, not one per core: a call setup is a chain of small hand-offs (socket
    // reads, the driver task, the database's own thread), and with a worker per core tokio kept
    // waking the other worker to steal work that one thread finishes anyway: on the 2-core
    // reference machine 94 context switches per call setup against 55 with one worker, and
    // less CPU per call setup (docs/benchmarks.md, issue 14). The relay has its own thread, the
    // database its own, password hashes the blocking pool. tokio's own TOKIO_WORKER_THREADS
    // still sets the count for a machine that needs more.
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        builder.worker_threads(1);
    }
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("parley: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(async move {
        match command {
            Command::Serve => {
                let shutdown = tokio_util::sync::CancellationToken::new();
                serve::spawn_signal_handler(shutdown.clone())?;
                serve::run(config, shutdown).await
            }
            Command::User(user_command) => users::run(&config, user_command).await,
            Command::Calls(calls_command) => calls_admin::run(&config, calls_command).await,
            Command::Doctor => {
                // hook: doctor
                let all_ok = doctor::run(&config, &mut std::io::stdout()).await?;
                anyhow::ensure!(all_ok, "the relay check failed: see the FAIL lines above");
                Ok(())
            }
            Command::CheckConfig | Command::Version => {
                unreachable!("handled before the runtime starts")
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            log::logger().flush();
            // Also on stderr for a person at a terminal when the log goes to the journal.
            if std::env::var_os("JOURNAL_STREAM").is_some() {
                let _ = writeln!(std::io::stderr(), "parley: {e:#}");
            }
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Every connection is a file descriptor, and the usual soft limit (1024) would cap the daemon
/// at a few hundred people. The hard limit is what the admin (or `LimitNOFILE=`) granted.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                log::warn!("cannot raise the open files limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => log::warn!("cannot read the open files limit: {e}"),
    }
}

/// `parley user ...` run as root on a data directory owned by the daemon's user: switch to
/// that user first, so that the database files it creates (WAL, shared memory) stay writable
/// by the daemon. Must run before the async runtime starts threads.
fn become_data_owner(data_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;

    use anyhow::Context;
    use nix::unistd::{Gid, Uid, setgid, setgroups, setuid};

    let Ok(metadata) = std::fs::metadata(data_dir) else {
        return Ok(());
    };
    if !Uid::effective().is_root() || metadata.uid() == 0 {
        return Ok(());
    }
    let (uid, gid) = (Uid::from_raw(metadata.uid()), Gid::from_raw(metadata.gid()));
    setgroups(&[gid])
        .and_then(|()| setgid(gid))
        .and_then(|()| setuid(uid))
        .with_context(|| {
            format!(
                "cannot switch to uid {uid}, the owner of {} (storage.data_dir)",
                data_dir.display()
            )
        })
}
