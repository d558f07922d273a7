//! `parley`: the daemon and its admin commands. See ARCHITECTURE.md for the map.

mod calls;
mod cli;
mod doctor;
mod http;
mod logging;
mod notify;
mod relay;
mod serve;
mod state;
mod tls;
mod users;
mod web;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use parley_config::Config;

use crate::cli::{Cli, Command};

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

    let (config, report) = match Config::load(cli.config.as_deref()) {
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
        let source = cli
            .config
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "embedded defaults".into());
        println!("# parley: configuration OK ({source} + PARLEY_* environment)");
        print!("{}", config.to_redacted_toml());
        return ExitCode::SUCCESS;
    }

    raise_open_files_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
