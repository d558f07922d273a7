//! `parley-loadgen`: the signaling benchmark client. `cargo xtask bench` runs it against a
//! fresh release daemon; it can also be pointed at any running daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use parley_loadgen::scenario::{self, BurstOptions, CallsOptions, IdleOptions, Target};
use parley_loadgen::users::{self, UserCred};

#[derive(Parser)]
#[command(about = "Drive a parley daemon over real Socket.IO connections and report figures")]
struct Cli {
    /// The daemon's HTTP address (http.listen).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// The daemon's process id, for RSS and CPU readings from /proc.
    #[arg(long)]
    pid: Option<u32>,
    /// The daemon's database (<data_dir>/parley.db): users are seeded straight into it (fast),
    /// and the call log is checked. Without it, users register over HTTP (argon2: slow).
    #[arg(long)]
    database: Option<PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// N users connected and authenticated, presence flowing; RSS per connection, idle CPU.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        users: usize,
        /// Connections opened per second while ramping up.
        #[arg(long, default_value_t = 1000.0)]
        connect_rate: f64,
        /// Seconds to hold still while measuring idle CPU (the heartbeat is every 25 s).
        #[arg(long, default_value_t = 30)]
        hold_secs: u64,
        #[arg(long, default_value_t = 4)]
        observers: usize,
    },
    /// N users connect within a few seconds; connect+session latency.
    Burst {
        #[arg(long, default_value_t = 2_000)]
        users: usize,
        #[arg(long, default_value_t = 3.0)]
        spread_secs: f64,
        #[arg(long, default_value_t = 4)]
        observers: usize,
    },
    /// Pairs of users run whole calls at a target rate; per-step latency.
    Calls {
        /// Call setups per second.
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
        #[arg(long, default_value_t = 20)]
        duration_secs: u64,
        /// Caller/callee pairs. Each caller socket sends 14 events per call and the daemon
        /// allows 50 per second per socket (calls.events_per_second), so rate/pairs must stay
        /// under about 3.5.
        #[arg(long, default_value_t = 250)]
        pairs: usize,
        #[arg(long, default_value_t = 10)]
        ice: usize,
    },
}

async fn make_users(cli: &Cli, count: usize) -> anyhow::Result<Vec<UserCred>> {
    let prefix = users::run_prefix();
    let started = std::time::Instant::now();
    let made = match &cli.database {
        Some(db) => users::seed(db, &prefix, count, 86_400)
            .await
            .with_context(|| format!("seeding {count} users into {}", db.display()))?,
        None => users::register_many(cli.http, &prefix, count)
            .await
            .context("registering users over HTTP")?,
    };
    eprintln!(
        "loadgen: {count} users ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(made)
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("parley-loadgen: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let limit = parley_loadgen::raise_fd_limit();
    let target = Target {
        http: cli.http,
        pid: cli.pid,
        database: cli.database.clone(),
    };
    let errors = match &cli.scenario {
        Scenario::Idle {
            users,
            connect_rate,
            hold_secs,
            observers,
        } => {
            check_fds(limit, *users)?;
            let made = make_users(&cli, *users).await?;
            let options = IdleOptions {
                connect_rate: *connect_rate,
                hold: Duration::from_secs(*hold_secs),
                observers: *observers,
            };
            let report = scenario::idle(&target, made, &options).await;
            println!("{report}");
            report.errors
        }
        Scenario::Burst {
            users,
            spread_secs,
            observers,
        } => {
            check_fds(limit, *users)?;
            let made = make_users(&cli, *users + *observers).await?;
            let options = BurstOptions {
                spread: Duration::from_secs_f64(*spread_secs),
                observers: *observers,
            };
            let report = scenario::burst(&target, made, &options).await;
            println!("{report}");
            report.errors
        }
        Scenario::Calls {
            rate,
            duration_secs,
            pairs,
            ice,
        } => {
            check_fds(limit, pairs * 2)?;
            let made = make_users(&cli, pairs * 2).await?;
            let options = CallsOptions {
                rate: *rate,
                duration: Duration::from_secs(*duration_secs),
                ice_per_side: *ice,
            };
            let report = scenario::calls(&target, made, &options).await;
            println!("{report}");
            report.errors
        }
    };
    if errors > 0 {
        bail!("{errors} error(s): events were lost, misrouted or refused (see above)");
    }
    Ok(())
}

fn check_fds(limit: u64, sockets: usize) -> anyhow::Result<()> {
    if (sockets as u64) + 64 > limit {
        bail!(
            "{sockets} sockets need more open files than the limit {limit}; raise it \
             (ulimit -Hn, or LimitNOFILE under systemd)"
        );
    }
    Ok(())
}
