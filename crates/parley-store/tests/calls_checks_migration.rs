//! Migration 0006 (the `calls` table's CHECKs written without `IN`, issue 14): a call log written
//! by the earlier schema comes through the rebuild whole (rows, sequence, indexes, the reports
//! that reference its calls), and the rebuilt table refuses what it refused before. That the
//! call-log upsert builds no temporary b-tree any more is tested beside it, in `src/calls.rs`.

use std::str::FromStr;

use parley_store::Store;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

async fn pool_on(path: &std::path::Path) -> SqlitePool {
    let options = SqliteConnectOptions::from_str("sqlite:")
        .unwrap()
        .filename(path)
        .create_if_missing(true)
        .foreign_keys(true);
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap()
}

async fn execute(pool: &SqlitePool, sql: &'static str) {
    sqlx::query(sql).execute(pool).await.unwrap();
}

/// A database brought up to migration 0005 with the rows its daemon wrote: calls in every state,
/// with and without devices, a hidden and a seen one, reports that reference two of them, and
/// a last call that was written and then removed (only possible by hand, but the sequence
/// remembers it).
async fn database_at_0005(path: &std::path::Path) {
    let pool = pool_on(path).await;
    sqlx::migrate!("./migrations")
        .run_to(5, &pool)
        .await
        .expect("migrations up to 0005");
    execute(
        &pool,
        "INSERT INTO users (id, username, display_name, password_hash, created_at)
         VALUES (1, 'alice', 'Alice', '', 1), (2, 'bob', 'Bob', '', 1), (3, 'carol', 'C', '', 1)",
    )
    .await;
    execute(
        &pool,
        "INSERT INTO calls (id, caller_id, callee_id, media, state, status, reason, ended_by,
                            message, created_at, answered_at, ended_at, callee_seen,
                            caller_hidden, callee_hidden, caller_device, callee_device)
         VALUES ('done', 1, 2, 'audio', 'ended', 'completed', 'hangup', 2, 'bye', 1000, 2000,
                 62000, 0, 1, 0, 'dev-a', 'dev-b'),
                ('missed', 3, 1, 'video', 'ended', 'missed', 'timeout', NULL, NULL, 3000, NULL,
                 33000, 1, 0, 0, 'dev-c', NULL),
                ('live', 2, 3, 'video', 'active', NULL, NULL, NULL, NULL, 4000, 5000, NULL, 0,
                 0, 0, 'dev-b', 'dev-c'),
                ('ringing', 1, 3, 'audio', 'ringing', NULL, NULL, NULL, NULL, 6000, NULL, NULL,
                 0, 0, 0, NULL, NULL),
                ('gone', 1, 2, 'audio', 'ended', 'busy', NULL, NULL, NULL, 7000, NULL, 7000, 0,
                 0, 0, NULL, NULL)",
    )
    .await;
    execute(
        &pool,
        "INSERT INTO call_quality (call_id, user_id, reported_at, path, rtt_ms, jitter_ms,
                                   loss_in_pct, loss_out_pct, ice_state)
         VALUES ('done', 1, 5000, 'direct', 20, 1, 0, 0, 'connected'),
                ('live', 3, 6000, NULL, NULL, NULL, NULL, NULL, 'failed')",
    )
    .await;
    execute(&pool, "DELETE FROM calls WHERE id = 'gone'").await;
    pool.close().await;
}

/// Every column of every call, in `seq` order, as text: what must survive the rebuild.
async fn dump_calls(pool: &SqlitePool) -> Vec<String> {
    sqlx::query_as::<_, (String,)>(
        "SELECT concat_ws('|', seq, id, caller_id, callee_id, media, state, status, reason,
                ended_by, message, created_at, answered_at, ended_at, callee_seen, caller_hidden,
                callee_hidden, caller_device, callee_device)
         FROM calls ORDER BY seq",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(row,)| row)
    .collect()
}

async fn schema_of_calls(pool: &SqlitePool) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT type, name FROM sqlite_master WHERE tbl_name = 'calls' ORDER BY type, name",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_call_log_written_before_0006_survives_it_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("parley.db");
    database_at_0005(&path).await;
    let pool = pool_on(&path).await;
    let calls_before = dump_calls(&pool).await;
    let schema_before = schema_of_calls(&pool).await;
    pool.close().await;
    assert_eq!(calls_before.len(), 4);

    let store = Store::open(&path).await.expect("0006 applies");
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
    store.close().await;

    let pool = pool_on(&path).await;
    assert_eq!(dump_calls(&pool).await, calls_before);
    assert_eq!(schema_of_calls(&pool).await, schema_before);
    let violations: Vec<(String, i64, String, i64)> = sqlx::query_as("PRAGMA foreign_key_check")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(violations, vec![]);
    let reports: Vec<(String, i64)> =
        sqlx::query_as("SELECT call_id, user_id FROM call_quality ORDER BY call_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        reports,
        vec![("done".to_owned(), 1), ("live".to_owned(), 3)]
    );
    // A report still needs its call, and a call still needs its users.
    for sql in [
        "INSERT INTO call_quality (call_id, user_id, reported_at, ice_state)
         VALUES ('nope', 1, 1, 'failed')",
        "INSERT INTO calls (id, caller_id, callee_id, media, state, created_at)
         VALUES ('x', 1, 99, 'audio', 'ringing', 1)",
        "DELETE FROM calls WHERE id = 'done'",
    ] {
        assert!(
            sqlx::query(sql).execute(&pool).await.is_err(),
            "{sql} broke a foreign key"
        );
    }
    // The sequence goes on after the removed call's 5, as it did before the rebuild.
    execute(
        &pool,
        "INSERT INTO calls (id, caller_id, callee_id, media, state, created_at)
         VALUES ('next', 1, 2, 'audio', 'ringing', 9000)",
    )
    .await;
    let (seq,): (i64,) = sqlx::query_as("SELECT seq FROM calls WHERE id = 'next'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(seq, 6);
    pool.close().await;
}

#[tokio::test]
async fn the_rebuilt_table_refuses_what_it_refused_before() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("parley.db");
    database_at_0005(&path).await;
    Store::open(&path)
        .await
        .expect("0006 applies")
        .close()
        .await;
    let pool = pool_on(&path).await;
    let insert = |values: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO calls (id, caller_id, callee_id, media, state, status, created_at)
                 VALUES {values}"
            )))
            .execute(&pool)
            .await
        }
    };
    for (why, values) in [
        ("an unknown media", "('a', 1, 2, 'fax', 'ringing', NULL, 1)"),
        ("no media", "('a', 1, 2, NULL, 'ringing', NULL, 1)"),
        (
            "an unknown state",
            "('a', 1, 2, 'audio', 'on hold', NULL, 1)",
        ),
        ("no state", "('a', 1, 2, 'audio', NULL, NULL, 1)"),
        (
            "a state in capitals",
            "('a', 1, 2, 'audio', 'ENDED', NULL, 1)",
        ),
        (
            "an unknown status",
            "('a', 1, 2, 'audio', 'ended', 'lost', 1)",
        ),
        (
            "a second call with one id",
            "('done', 1, 2, 'audio', 'ringing', NULL, 1)",
        ),
    ] {
        assert!(insert(values).await.is_err(), "{why} was stored");
    }
    for (n, (state, status)) in [
        ("ringing", "NULL"),
        ("active", "NULL"),
        ("ended", "'completed'"),
        ("ended", "'declined'"),
        ("ended", "'cancelled'"),
        ("ended", "'missed'"),
        ("ended", "'busy'"),
    ]
    .into_iter()
    .enumerate()
    {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO calls (id, caller_id, callee_id, media, state, status, created_at)
             VALUES ('ok{n}', 1, 2, 'video', '{state}', {status}, 1)"
        )))
        .execute(&pool)
        .await
        .unwrap_or_else(|e| panic!("{state}/{status} refused: {e}"));
    }
    pool.close().await;
}
