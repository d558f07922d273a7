//! The store against real SQLite files in a temp directory.

use parley_store::{Store, StoreError};

async fn fresh() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("parley.db")).await.unwrap();
    (dir, store)
}

/// Two handles on one file, as the daemon and `parley user ...` (another process) have.
async fn daemon_and_cli() -> (tempfile::TempDir, Store, Store) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("parley.db");
    let daemon = Store::open(&path).await.unwrap();
    let cli = Store::open(&path).await.unwrap();
    (dir, daemon, cli)
}

#[tokio::test]
async fn migrations_create_the_schema_on_an_empty_database() {
    let (_dir, store) = fresh().await;
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
    assert!(store.list_users().await.unwrap().is_empty());
}

#[tokio::test]
async fn reopening_an_existing_database_keeps_data_and_reruns_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("parley.db");
    {
        let store = Store::open(&path).await.unwrap();
        store
            .create_user("alice", Some("Alice A"), "password-1")
            .await
            .unwrap();
        store.close().await;
    }
    let store = Store::open(&path).await.unwrap();
    let users = store.list_users().await.unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].display_name, "Alice A");
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_reported_as_corrupt_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("parley.db");
    std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
    let error = Store::open(&path).await.unwrap_err();
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("backup"), "{message}");
}

#[tokio::test]
async fn an_unwritable_location_is_reported_with_its_path() {
    let path = std::path::Path::new("/proc/parley-cannot-be-here/parley.db");
    let error = Store::open(path).await.unwrap_err();
    assert!(matches!(error, StoreError::CannotOpen { .. }), "{error:?}");
    assert!(error.to_string().contains("/proc/parley-cannot-be-here"));
}

#[tokio::test]
async fn usernames_are_unique_without_regard_to_case() {
    let (_dir, store) = fresh().await;
    store
        .create_user("Alice", None, "password-1")
        .await
        .unwrap();
    let error = store
        .create_user("alice", None, "password-2")
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::UsernameTaken(_)));
    let found = store.user_by_username("ALICE").await.unwrap().unwrap();
    assert_eq!(found.username, "Alice");
    assert_eq!(
        found.display_name, "Alice",
        "display name defaults to the username"
    );
}

#[tokio::test]
async fn bad_usernames_and_passwords_are_refused_naming_the_field() {
    let (_dir, store) = fresh().await;
    for (username, password, field) in [
        ("", "password-1", "username"),
        ("has space", "password-1", "username"),
        ("x".repeat(33).as_str(), "password-1", "username"),
        ("bob", "short", "password"),
    ] {
        match store.create_user(username, None, password).await {
            Err(StoreError::Invalid { field: got, .. }) => assert_eq!(got, field),
            other => panic!("{username:?}/{password:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn login_needs_the_right_password_and_an_enabled_account() {
    let (_dir, store) = fresh().await;
    store
        .create_user("bob", None, "correct horse")
        .await
        .unwrap();
    assert!(
        store
            .verify_login("bob", "correct horse")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .verify_login("BOB", "correct horse")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .verify_login("bob", "wrong horse")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .verify_login("nobody", "correct horse")
            .await
            .unwrap()
            .is_none()
    );
    store.set_disabled("bob", true).await.unwrap();
    assert!(
        store
            .verify_login("bob", "correct horse")
            .await
            .unwrap()
            .is_none()
    );
    store.set_disabled("bob", false).await.unwrap();
    store.set_password("bob", "battery staple").await.unwrap();
    assert!(
        store
            .verify_login("bob", "correct horse")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .verify_login("bob", "battery staple")
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn sessions_resolve_until_revoked() {
    let (_dir, store) = fresh().await;
    let user = store
        .create_user("carol", None, "password-1")
        .await
        .unwrap();
    let new = store.create_session(user.id, 3600).await.unwrap();
    let (session, found) = store.session_user(&new.token).await.unwrap().unwrap();
    assert_eq!(found.id, user.id);
    assert_eq!(session.id, new.session.id);
    assert!(store.session_user("not-a-token").await.unwrap().is_none());
    store.revoke_session(session.id).await.unwrap();
    assert!(store.session_user(&new.token).await.unwrap().is_none());
}

#[tokio::test]
async fn expired_sessions_do_not_resolve() {
    let (_dir, store) = fresh().await;
    let user = store.create_user("dave", None, "password-1").await.unwrap();
    let new = store.create_session(user.id, 1).await.unwrap();
    assert!(store.session_user(&new.token).await.unwrap().is_some());
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert!(store.session_user(&new.token).await.unwrap().is_none());
}

#[tokio::test]
async fn password_change_disable_and_remove_end_sessions() {
    let (_dir, store) = fresh().await;
    let user = store.create_user("erin", None, "password-1").await.unwrap();
    let a = store.create_session(user.id, 3600).await.unwrap();
    store.set_password("erin", "password-2").await.unwrap();
    assert!(store.session_user(&a.token).await.unwrap().is_none());
    let b = store.create_session(user.id, 3600).await.unwrap();
    store.set_disabled("erin", true).await.unwrap();
    assert!(store.session_user(&b.token).await.unwrap().is_none());
    store.set_disabled("erin", false).await.unwrap();
    let c = store.create_session(user.id, 3600).await.unwrap();
    store.remove_user("erin").await.unwrap();
    assert!(store.session_user(&c.token).await.unwrap().is_none());
    assert!(store.user_by_username("erin").await.unwrap().is_none());
    store
        .create_user("erin", None, "password-3")
        .await
        .expect("the name is free again");
}

#[tokio::test]
async fn a_second_handle_sees_writes_of_the_first() {
    // `parley user add` runs in another process while the daemon holds the file open.
    let (_dir, daemon, cli) = daemon_and_cli().await;
    cli.create_user("frank", None, "password-1").await.unwrap();
    assert!(daemon.user_by_username("frank").await.unwrap().is_some());
}

/// `call:initiate`'s one query: the callee by id or by name (any case), `None` for no such
/// user, and the caller's session refused whatever the callee once it no longer stands
/// (issue 14: it used to be two queries).
#[tokio::test]
async fn the_callee_lookup_also_answers_whether_the_callers_session_stands() {
    use parley_store::{SessionUnusable, UserKey};
    let (_dir, store) = fresh().await;
    let caller = store.create_user("gina", None, "password-1").await.unwrap();
    let callee = store
        .create_user("Hank", Some("Hank H"), "password-1")
        .await
        .unwrap();
    let session = store.create_session(caller.id, 3600).await.unwrap().session;

    let by_id = store
        .callee_for_session(session.id, UserKey::Id(callee.id))
        .await
        .unwrap();
    assert_eq!(by_id, Ok(Some(callee.clone())));
    let by_name = store
        .callee_for_session(session.id, UserKey::Name("hANK"))
        .await
        .unwrap();
    assert_eq!(by_name, Ok(Some(callee.clone())));
    for nobody in [UserKey::Name("ivan"), UserKey::Id(callee.id + 100)] {
        let found = store.callee_for_session(session.id, nobody).await.unwrap();
        assert_eq!(found, Ok(None), "{nobody:?}");
    }
    // A disabled callee is still found (the daemon answers USER_NOT_FOUND for it); a removed
    // one is not.
    store.set_disabled("Hank", true).await.unwrap();
    let disabled = store
        .callee_for_session(session.id, UserKey::Id(callee.id))
        .await
        .unwrap();
    assert!(disabled.unwrap().unwrap().disabled);
    store.remove_user("Hank").await.unwrap();
    let removed = store
        .callee_for_session(session.id, UserKey::Id(callee.id))
        .await
        .unwrap();
    assert_eq!(removed, Ok(None));

    let other = store.create_user("ivan", None, "password-1").await.unwrap();
    store.revoke_session(session.id).await.unwrap();
    for key in [
        UserKey::Id(other.id),
        UserKey::Name("ivan"),
        UserKey::Name("nobody"),
    ] {
        let found = store.callee_for_session(session.id, key).await.unwrap();
        assert_eq!(found, Err(SessionUnusable), "{key:?}");
    }
    let fresh_session = store.create_session(caller.id, 3600).await.unwrap().session;
    store.set_disabled("gina", true).await.unwrap();
    let found = store
        .callee_for_session(fresh_session.id, UserKey::Id(other.id))
        .await
        .unwrap();
    assert_eq!(found, Err(SessionUnusable), "the caller was disabled");
}

/// The store's one connection is not a pool's: nothing pings it after each use (issue 14). What
/// that ping was for must still hold: a query or transaction whose future is dropped midway (an
/// HTTP client that went away) leaves the connection usable and the write lock free for another
/// process (`parley user ...`). Dropped after 0, 1, 2, ... polls until one completes.
#[tokio::test]
async fn a_query_dropped_midway_leaves_the_database_usable_and_unlocked() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let (_dir, daemon, cli) = daemon_and_cli().await;
    let keeper = cli.create_user("keeper", None, "password-1").await.unwrap();
    let mut completed = false;
    for polls in 0..100 {
        let name = format!("gone{polls}");
        daemon.create_user(&name, None, "password-1").await.unwrap();
        {
            // remove_user is the store's one explicit transaction: an update, a delete, a commit.
            let mut removal = std::pin::pin!(daemon.remove_user(&name));
            let mut cx = Context::from_waker(Waker::noop());
            for _ in 0..polls {
                if let Poll::Ready(result) = removal.as_mut().poll(&mut cx) {
                    result.unwrap();
                    completed = true;
                    break;
                }
                // The connection's thread works meanwhile: each drop point is a little later.
                std::thread::sleep(std::time::Duration::from_micros(300));
            }
        }
        let write = cli.create_session(keeper.id, 3600);
        tokio::time::timeout(std::time::Duration::from_secs(2), write)
            .await
            .unwrap_or_else(|_| panic!("dropped after {polls} polls: the write lock is still held"))
            .unwrap();
        daemon.ping().await.expect("the connection still answers");
        let gone = daemon.user_by_username(&name).await.unwrap().is_none();
        assert!(gone || !completed, "a removal that completed was undone");
        if completed {
            return;
        }
    }
    panic!("remove_user never completed in 100 polls");
}

#[tokio::test]
async fn a_closed_store_refuses_queries_and_leaves_no_write_ahead_log() {
    let (dir, store) = fresh().await;
    store.create_user("gina", None, "password-1").await.unwrap();
    store.close().await;
    let refused = store.user_by_username("gina").await;
    assert!(
        matches!(refused, Err(StoreError::Database(sqlx::Error::PoolClosed))),
        "{refused:?}"
    );
    store.close().await; // a second close is harmless
    let wal = dir.path().join("parley.db-wal");
    assert!(
        !wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0,
        "the log was checkpointed into the file"
    );
    let reopened = Store::open(&dir.path().join("parley.db")).await.unwrap();
    assert!(reopened.user_by_username("gina").await.unwrap().is_some());
}
