//! The load generator's smoke run: each scenario for a few seconds with a handful of users
//! against the real daemon, asserting that every expected event arrived with the right payload
//! (the scenarios count anything lost, late past 10 s, misrouted or malformed as an error).
//! Timing is not asserted: that is `cargo xtask bench`'s job, on a quiet machine.

use std::time::Duration;

use parley_loadgen::scenario::{self, BurstOptions, CallsOptions, IdleOptions, Target};
use parley_loadgen::sio::Client;
use parley_loadgen::users;

use crate::daemon::Daemon;

/// Registration needs to outrun the per-address login limit for the accounts these tests make.
const CONFIG: &str = "[auth]\nlogin_attempts_per_minute = 100000\n[log]\nlevel = \"info\"\n";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn target(daemon: &Daemon) -> Target {
    Target {
        http: daemon.http,
        pid: Some(daemon.pid().as_raw() as u32),
        database: Some(daemon.data_dir().join("parley.db")),
    }
}

#[test]
fn loadgen_idle_users_connect_and_see_each_other_online() {
    let daemon = Daemon::start(CONFIG);
    let target = target(&daemon);
    let report = runtime().block_on(async {
        let db = daemon.data_dir().join("parley.db");
        let made = users::seed(&db, &users::run_prefix(), 40, 3600)
            .await
            .expect("seed users into the daemon's database");
        let options = IdleOptions {
            connect_rate: 200.0,
            hold: Duration::from_secs(1),
            observers: 3,
        };
        scenario::idle(&target, made, &options).await
    });
    assert_eq!(report.errors, 0, "{report}\n{}", daemon.log());
    assert_eq!(report.connected, 40, "{report}");
    assert_eq!(
        report.connect_latency.count, 37,
        "one sample per non-observer: {report}"
    );
    assert!(report.presence_complete_after.is_some(), "{report}");
    // 3 observers each saw the 37 later users come online, in one or more coalesced events.
    assert!(report.presence_updates >= 3, "{report}");
    assert!(report.rss_connected_kib.is_some_and(|k| k > 0), "{report}");
    assert!(report.idle_cpu_percent.is_some(), "{report}");
}

#[test]
fn loadgen_burst_every_session_arrives() {
    let daemon = Daemon::start(CONFIG);
    let target = target(&daemon);
    let report = runtime().block_on(async {
        let db = daemon.data_dir().join("parley.db");
        let made = users::seed(&db, &users::run_prefix(), 62, 3600)
            .await
            .expect("seed users into the daemon's database");
        let options = BurstOptions {
            spread: Duration::from_millis(500),
            observers: 2,
        };
        scenario::burst(&target, made, &options).await
    });
    assert_eq!(report.errors, 0, "{report}\n{}", daemon.log());
    assert_eq!(report.users, 60, "{report}");
    assert_eq!(report.connected, 60, "{report}");
    assert_eq!(report.latency.count, 60, "{report}");
    assert!(report.presence_complete_after.is_some(), "{report}");
}

#[test]
fn loadgen_calls_every_step_arrives_and_is_logged() {
    let daemon = Daemon::start(CONFIG);
    let target = target(&daemon);
    let report = runtime().block_on(async {
        // The real registration path (argon2 and all) for these few.
        let made = users::register_many(daemon.http, &users::run_prefix(), 8)
            .await
            .expect("register users over HTTP");
        let options = CallsOptions {
            rate: 8.0,
            duration: Duration::from_secs(3),
            ice_per_side: 10,
        };
        scenario::calls(&target, made, &options).await
    });
    assert_eq!(report.errors, 0, "{report}\n{}", daemon.log());
    assert_eq!(report.pairs, 4, "{report}");
    assert!(report.attempted >= 20, "{report}");
    assert_eq!(report.completed, report.attempted, "{report}");
    for (step, summary) in &report.steps {
        let per_call = match *step {
            "ice -> ice" => 20,
            "media:state -> media:state" => 2,
            _ => 1,
        };
        assert_eq!(
            summary.count as u64,
            report.completed * per_call,
            "{step}: {report}"
        );
    }
    assert_eq!(report.log_rows, Some(report.completed), "{report}");
    assert_eq!(report.log_rows_matching, Some(report.completed), "{report}");
}

#[test]
fn loadgen_client_reports_a_refused_token() {
    let daemon = Daemon::start(CONFIG);
    let outcome = runtime().block_on(Client::connect(
        daemon.http,
        "not-a-token",
        "loadgen-refused",
        false,
    ));
    match outcome {
        Err(parley_loadgen::Error::Refused(data)) => {
            assert!(data.contains("UNAUTHORIZED"), "{data}");
        }
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("a bad token was accepted"),
    }
}
