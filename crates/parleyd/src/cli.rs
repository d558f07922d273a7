//! The command line: one definition per flag and subcommand, with the help an admin reads.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Parley: self-hosted audio and video calls for a small organisation.
///
/// One daemon serves the web client, the API and signaling, and relays media through its
/// embedded STUN/TURN server. With no subcommand it runs the daemon (`parley serve`).
///
/// Exit status: 0 success, 1 failure while starting or running (the message says what to
/// fix), 2 bad usage or an invalid configuration.
#[derive(Debug, Parser)]
#[command(name = "parley", version, disable_version_flag = false)]
pub struct Cli {
    /// The TOML config file. Without it, /etc/parley/parley.toml when that exists, else the
    /// embedded defaults (localhost only, data in ./data). Every key can also be set as
    /// PARLEY_<SECTION>__<KEY>.
    #[arg(
        long,
        short = 'c',
        env = "PARLEY_CONFIG",
        global = true,
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (the default).
    Serve,
    /// Check the config and print the effective settings (secrets redacted), or the errors.
    CheckConfig,
    /// Manage accounts (works while the daemon runs).
    #[command(subcommand)]
    User(UserCommand),
    /// The call log for the admin: each party's connection path and quality, and for a call
    /// that failed, why (works while the daemon runs).
    #[command(subcommand)]
    Calls(CallsCommand),
    /// Check the relay from this server as a browser would: credentials, allocation over each
    /// listener, a packet relayed to itself. Prints a verdict per listener and what to fix.
    Doctor,
    /// Print the version.
    Version,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an account. The password is read from standard input with --password-stdin;
    /// otherwise a random one is generated and printed once.
    Add {
        username: String,
        /// The name people see; defaults to the username.
        #[arg(long)]
        display_name: Option<String>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List accounts.
    List,
    /// Set a new password (ends the user's sessions). Same password options as `add`.
    Passwd {
        username: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Disable an account: it cannot log in and its sessions end. `--enable` undoes it.
    Disable {
        username: String,
        /// Enable the account again instead.
        #[arg(long)]
        enable: bool,
    },
    /// Remove an account. Its calls stay in the other people's history.
    Remove { username: String },
}

#[derive(Debug, Subcommand)]
pub enum CallsCommand {
    /// List calls, newest first, with both parties' path and quality verdict.
    List {
        /// Only calls started within this age: a number and a unit, s, m, h, d or w (`90m`,
        /// `1d`).
        #[arg(long, value_name = "AGE", value_parser = crate::calls_admin::parse_age)]
        since: Option<std::time::Duration>,
        /// Only calls that went wrong: a poor verdict on either side, ICE failed, or the
        /// connection lost.
        #[arg(long)]
        poor: bool,
        /// Only calls of this user (as caller or callee).
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// At most this many calls.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Everything known about one call: both parties' reports and, when it failed, why.
    Show {
        /// The call id, or its first characters as `parley calls list` prints them.
        id: String,
    },
}
