//! Migration 0005 (a `call:stats` report may lack a media path): a call log written by the
//! schema before it keeps its reports, and the rebuilt table still refuses what 0002 and 0004
//! refused.

use std::str::FromStr;

use parley_store::Store;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

/// A database brought up to migration 0004, with one call and one report written as the daemon
/// of that version wrote them.
async fn database_at_0004(path: &std::path::Path) {
    let options = SqliteConnectOptions::from_str("sqlite:")
        .unwrap()
        .filename(path)
        .create_if_missing(true)
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap();
    sqlx::migrate!("./migrations")
        .run_to(4, &pool)
        .await
        .expect("migrations up to 0004");
    for (id, name) in [(1, "alice"), (2, "bob")] {
        sqlx::query(
            "INSERT INTO users (id, username, display_name, password_hash, created_at)
             VALUES (?, ?, ?, '', 1)",
        )
        .bind(id)
        .bind(name)
        .bind(name)
        .execute(&pool)
        .await
        .unwrap();
    }
    sqlx::query(
        "INSERT INTO calls (id, caller_id, callee_id, media, state, status, reason, created_at,
                            answered_at, ended_at)
         VALUES ('c1', 1, 2, 'audio', 'ended', 'completed', 'hangup', 1000, 2000, 62000)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO call_quality (call_id, user_id, reported_at, path, local_candidate,
             remote_candidate, relay_protocol, rtt_ms, jitter_ms, loss_in_pct, loss_out_pct,
             bitrate_out_kbps, network_type, ice_state, local_candidate_types,
             remote_candidate_types, relay_protocols)
         VALUES ('c1', 1, 5000, 'relay', 'relay', 'host', 'tls', 420, 12, 0.5, 7, 48, 'wifi',
                 'connected', 'host,relay', '', 'tls')",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
}

#[tokio::test]
async fn a_report_stored_before_0005_survives_it_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("parley.db");
    database_at_0004(&path).await;

    let store = Store::open(&path).await.expect("0005 applies");
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
    let quality = store
        .call_quality("c1", 1)
        .await
        .unwrap()
        .expect("the old report is still there");
    assert_eq!(quality.path, "relay");
    assert_eq!(quality.relay_protocol.as_deref(), Some("tls"));
    assert_eq!(
        (quality.rtt_ms, quality.jitter_ms, quality.loss_pct),
        (420.0, 12.0, 7.0)
    );
    let call = store.admin_call("c1").await.unwrap().expect("the call");
    let old = call.caller_report.expect("the caller's report").report;
    assert_eq!(old.bitrate_out_kbps, Some(48.0));
    assert_eq!(old.network_type.as_deref(), Some("wifi"));
    assert_eq!(old.ice_state.as_deref(), Some("connected"));
    assert_eq!(
        old.local_candidate_types,
        Some(vec!["host".to_owned(), "relay".to_owned()])
    );
    assert_eq!(old.remote_candidate_types, Some(vec![]));
    assert_eq!(old.relay_protocols, Some(vec!["tls".to_owned()]));
    assert_eq!(call.callee_report, None);
    store.close().await;
}

#[tokio::test]
async fn the_rebuilt_table_keeps_its_checks_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("parley.db");
    database_at_0004(&path).await;
    Store::open(&path)
        .await
        .expect("0005 applies")
        .close()
        .await;

    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::from_str("sqlite:")
                .unwrap()
                .filename(&path)
                .foreign_keys(true),
        )
        .await
        .unwrap();
    let insert = |values: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO call_quality (call_id, user_id, reported_at, path, relay_protocol,
                     rtt_ms, jitter_ms, loss_in_pct, loss_out_pct, ice_state) VALUES {values}"
            )))
            .execute(&pool)
            .await
        }
    };
    // What 0002 and 0004 refused is still refused.
    for (why, values) in [
        (
            "an unknown path",
            "('c1', 2, 1, 'pigeon', NULL, 1, 1, 0, 0, NULL)",
        ),
        (
            "an unknown relay protocol",
            "('c1', 2, 1, 'relay', 'quic', 1, 1, 0, 0, NULL)",
        ),
        (
            "an unknown ICE state",
            "('c1', 2, 1, NULL, NULL, NULL, NULL, NULL, NULL, 'melted')",
        ),
        (
            "a second report of the same party",
            "('c1', 1, 9, 'direct', NULL, 1, 1, 0, 0, NULL)",
        ),
        (
            "an unknown call",
            "('nope', 2, 1, 'direct', NULL, 1, 1, 0, 0, NULL)",
        ),
        // New: a path comes with its figures; no path only with a state that has no pair.
        (
            "a path without figures",
            "('c1', 2, 1, 'direct', NULL, NULL, 1, 0, 0, 'connected')",
        ),
        (
            "no path while connected",
            "('c1', 2, 1, NULL, NULL, NULL, NULL, NULL, NULL, 'connected')",
        ),
        (
            "no path and no ICE state",
            "('c1', 2, 1, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
        ),
    ] {
        assert!(insert(values).await.is_err(), "{why} was stored");
    }
    insert("('c1', 2, 1, NULL, NULL, NULL, NULL, NULL, NULL, 'failed')")
        .await
        .expect("a report of a call whose ICE failed before any pair was selected");
    pool.close().await;
}
