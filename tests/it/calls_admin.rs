//! `parley calls list` and `parley calls show` against a real SQLite call log: the database is
//! written the way the daemon writes it (the store's own functions; the call rows by SQL with
//! the columns every version has), then the binary reads it.

use parley_store::Store;
use parley_store::quality::StatsReport;

use crate::daemon::{Daemon, parley};

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn report(path: &str, relay_protocol: Option<&str>, loss_pct: f64) -> StatsReport {
    StatsReport {
        path: Some(path.into()),
        local_candidate: Some(if path == "relay" { "relay" } else { "host" }.into()),
        remote_candidate: Some("host".into()),
        relay_protocol: relay_protocol.map(str::to_owned),
        rtt_ms: Some(48.0),
        jitter_ms: Some(4.0),
        loss_in_pct: Some(loss_pct),
        loss_out_pct: Some(0.0),
        bitrate_in_kbps: Some(64.0),
        bitrate_out_kbps: Some(60.0),
        audio_concealed_pct: Some(0.5),
        video_freezes: None,
        video_width: None,
        video_height: None,
        network_type: Some("wifi".into()),
        ice_state: Some("connected".into()),
        local_candidate_types: Some(vec!["host".into(), "srflx".into(), "relay".into()]),
        remote_candidate_types: Some(vec!["host".into()]),
        relay_protocols: Some(vec!["udp".into()]),
    }
}

/// A call row as the daemon's writer leaves an ended call.
async fn ended_call(
    db: &sqlx::SqlitePool,
    id: &str,
    (caller, callee): (i64, i64),
    started: i64,
    answered: bool,
    (status, reason): (&str, &str),
) {
    sqlx::query(
        "INSERT INTO calls (id, caller_id, callee_id, media, state, status, reason, created_at,
                            answered_at, ended_at)
         VALUES (?, ?, ?, 'audio', 'ended', ?, ?, ?, ?, ?)",
    )
    .bind(id)
    .bind(caller)
    .bind(callee)
    .bind(status)
    .bind(reason)
    .bind(started)
    .bind(answered.then_some(started + 1_500))
    .bind(started + 61_500)
    .execute(db)
    .await
    .expect("insert a call row");
}

#[tokio::test(flavor = "current_thread")]
async fn calls_list_and_show_read_paths_quality_and_say_why_a_call_failed() {
    // No TURN over TLS (the harness's tls_listen = "" and no HTTPS for the shared port): the
    // diagnosis must say so.
    let daemon = Daemon::configure("");
    let config = Some(daemon.config_path.as_path());

    let missing = parley(config, &["calls", "list"], None);
    assert_eq!(missing.status.code(), Some(1), "{}", stderr(&missing));
    assert!(
        stderr(&missing).contains("no call log at"),
        "{}",
        stderr(&missing)
    );

    let data = daemon.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let store = Store::open(&data.join("parley.db")).await.expect("open");
    let alice = store
        .create_user("alice", None, "password-123")
        .await
        .unwrap();
    let bob = store
        .create_user("bob", None, "password-123")
        .await
        .unwrap();
    let carol = store
        .create_user("carol", None, "password-123")
        .await
        .unwrap();
    let now = parley_store::unix_millis_now();
    let db = sqlx::SqlitePool::connect(&format!("sqlite://{}", data.join("parley.db").display()))
        .await
        .expect("open the database beside the store");

    // One two days old, then a good direct call, a relayed one that failed for bob, one poor
    // over TLS, one that lost its connection, and one nobody answered.
    let good = "aaaa00000000000000000000000000a1";
    let failed = "bbbb00000000000000000000000000b2";
    let poor = "cccc00000000000000000000000000c3";
    let lost = "dddd00000000000000000000000000d4";
    let missed = "eeee00000000000000000000000000e5";
    let old = "aaaa10000000000000000000000000f6";
    // Rows are inserted in the order calls start, as the daemon does.
    ended_call(
        &db,
        old,
        (alice.id, carol.id),
        now - 2 * 86_400_000,
        true,
        ("completed", "hangup"),
    )
    .await;
    ended_call(
        &db,
        good,
        (alice.id, bob.id),
        now - 600_000,
        true,
        ("completed", "hangup"),
    )
    .await;
    ended_call(
        &db,
        failed,
        (alice.id, bob.id),
        now - 500_000,
        true,
        ("completed", "hangup"),
    )
    .await;
    ended_call(
        &db,
        poor,
        (carol.id, alice.id),
        now - 400_000,
        true,
        ("completed", "hangup"),
    )
    .await;
    ended_call(
        &db,
        lost,
        (carol.id, bob.id),
        now - 300_000,
        true,
        ("completed", "connection_lost"),
    )
    .await;
    ended_call(
        &db,
        missed,
        (bob.id, carol.id),
        now - 200_000,
        false,
        ("missed", "no_answer"),
    )
    .await;

    let save = |call: &'static str, user: i64, report: StatsReport| {
        let store = store.clone();
        async move {
            store
                .save_call_stats(call, user, now, &report)
                .await
                .expect("save a report")
        }
    };
    save(good, alice.id, report("direct", None, 0.0)).await;
    save(good, bob.id, report("direct", None, 0.2)).await;
    save(failed, alice.id, report("relay", Some("udp"), 0.0)).await;
    let mut blocked = report("direct", None, 0.0);
    blocked.ice_state = Some("failed".into());
    blocked.local_candidate_types = Some(vec!["host".into()]);
    blocked.relay_protocols = Some(vec![]);
    save(failed, bob.id, blocked).await;
    save(poor, alice.id, report("relay", Some("tls"), 9.0)).await;
    db.close().await;
    store.close().await;

    let list = parley(config, &["calls", "list"], None);
    assert!(list.status.success(), "{}", stderr(&list));
    let text = stdout(&list);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("ID"), "{text}");
    assert_eq!(
        lines.len(),
        7,
        "a header and six calls, newest first:\n{text}"
    );
    for (line, id) in lines[1..]
        .iter()
        .zip([missed, lost, poor, failed, good, old])
    {
        assert!(
            line.starts_with(&id[..12]),
            "{id} expected in order:\n{text}"
        );
    }
    let row = |id: &str| {
        *lines
            .iter()
            .find(|line| line.starts_with(&id[..12]))
            .unwrap_or_else(|| panic!("{id} listed:\n{text}"))
    };
    assert!(row(good).contains("alice -> bob"), "{text}");
    assert!(row(good).contains("direct good"), "{text}");
    assert!(row(good).contains("1m00s"), "{text}");
    assert!(row(failed).contains("relay/udp good"), "{text}");
    assert!(row(failed).ends_with("direct good ice:failed"), "{text}");
    assert!(row(poor).contains("relay/tls poor"), "{text}");
    assert!(row(lost).contains("completed (connection_lost)"), "{text}");
    assert!(row(missed).contains("missed (no_answer)"), "{text}");

    let recent = stdout(&parley(config, &["calls", "list", "--since", "1d"], None));
    assert_eq!(
        recent.lines().count(),
        6,
        "the two-day-old call is left out:\n{recent}"
    );
    assert!(!recent.contains(&old[..12]), "{recent}");

    let wrong = stdout(&parley(config, &["calls", "list", "--poor"], None));
    let listed: Vec<&str> = wrong.lines().skip(1).map(|l| &l[..12]).collect();
    assert_eq!(
        listed,
        vec![&lost[..12], &poor[..12], &failed[..12]],
        "--poor: poor verdict, ICE failed, connection lost:\n{wrong}"
    );

    let carols = stdout(&parley(
        config,
        &["calls", "list", "--user", "carol", "--poor"],
        None,
    ));
    let listed: Vec<&str> = carols.lines().skip(1).map(|l| &l[..12]).collect();
    assert_eq!(listed, vec![&lost[..12], &poor[..12]], "{carols}");
    let nobody = parley(config, &["calls", "list", "--user", "dave"], None);
    assert_eq!(nobody.status.code(), Some(1));
    assert!(
        stderr(&nobody).contains("no user named \"dave\""),
        "{}",
        stderr(&nobody)
    );
    let limited = stdout(&parley(config, &["calls", "list", "--limit", "2"], None));
    assert_eq!(limited.lines().count(), 3, "{limited}");
    let bad_age = parley(config, &["calls", "list", "--since", "1y"], None);
    assert_eq!(bad_age.status.code(), Some(2), "bad usage");

    // `show` by the 12-character prefix `list` prints.
    let shown = parley(config, &["calls", "show", &failed[..12]], None);
    assert!(shown.status.success(), "{}", stderr(&shown));
    let text = stdout(&shown);
    assert!(text.starts_with(&format!("call {failed}\n")), "{text}");
    assert!(text.contains("caller: alice"), "{text}");
    assert!(
        text.contains("path: relayed over UDP (local relay, remote host)"),
        "{text}"
    );
    assert!(text.contains("callee: bob"), "{text}");
    assert!(
        text.contains("ICE state: failed; gathered: host; remote sent: host; relay over: none"),
        "{text}"
    );
    assert!(
        text.contains(
            "ICE failed: callee's (bob) client had no relay candidate; its network blocks UDP, \
             TURN over TCP did not get through and TURN/TLS is not configured (tls.enabled with \
             turn.on_https_port, or turn.tls_listen)"
        ),
        "{text}"
    );

    let shown = stdout(&parley(config, &["calls", "show", poor], None));
    assert!(
        shown.contains("alice): poor connection, relayed over TLS: 9% loss"),
        "{shown}"
    );
    assert!(
        shown.contains("the caller's (carol) client sent no quality report"),
        "{shown}"
    );
    let shown = stdout(&parley(config, &["calls", "show", good], None));
    assert!(shown.contains("diagnosis: nothing went wrong"), "{shown}");
    let shown = stdout(&parley(config, &["calls", "show", lost], None));
    assert!(
        shown.contains("did not come back within the reconnect grace"),
        "{shown}"
    );

    let unknown = parley(config, &["calls", "show", "0123abcd"], None);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("no call with id"),
        "{}",
        stderr(&unknown)
    );
    let ambiguous = parley(config, &["calls", "show", "aaaa"], None);
    assert_eq!(ambiguous.status.code(), Some(1));
    assert!(
        stderr(&ambiguous).contains("is the start of more than one call id"),
        "{}",
        stderr(&ambiguous)
    );

    // The daemon on the same log: every call above ended minutes ago, so their reports have
    // settled and count in /metrics (five answered calls set up in 1.5 s; five reports).
    let daemon = daemon.spawn(&[]);
    let (status, body) = daemon.request("GET", "/metrics", None, None);
    assert_eq!(status, 200);
    let text = body.as_str().expect("metrics are text").to_owned();
    for line in [
        "parley_call_setup_seconds_bucket{le=\"1\"} 0",
        "parley_call_setup_seconds_bucket{le=\"2\"} 5",
        "parley_call_setup_seconds_count 5",
        "parley_call_rtt_seconds_bucket{le=\"0.025\"} 0",
        "parley_call_rtt_seconds_bucket{le=\"0.05\"} 5",
        "parley_call_loss_ratio_bucket{le=\"0.05\"} 4",
        "parley_call_loss_ratio_bucket{le=\"0.1\"} 5",
        "parley_call_reports_total{path=\"direct\",relay_protocol=\"none\"} 3",
        "parley_call_reports_total{path=\"relay\",relay_protocol=\"udp\"} 1",
        "parley_call_reports_total{path=\"relay\",relay_protocol=\"tls\"} 1",
        "parley_call_reports_total{path=\"relay\",relay_protocol=\"tcp\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
}
