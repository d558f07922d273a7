//! The call log against a real SQLite file.

use parley_store::Store;
use parley_store::calls::{CallWrite, HideOutcome, HistoryFilter, HistoryQuery};

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    alice: i64,
    bob: i64,
    carol: i64,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("parley.db"))
        .await
        .expect("open store");
    let mut ids = Vec::new();
    for name in ["alice", "bob", "carol"] {
        ids.push(
            store
                .create_user(name, None, "password-123")
                .await
                .expect("create user")
                .id,
        );
    }
    Fixture {
        _dir: dir,
        store,
        alice: ids[0],
        bob: ids[1],
        carol: ids[2],
    }
}

fn ended<'a>(
    id: &'a str,
    caller: i64,
    callee: i64,
    status: &'a str,
    reason: &'a str,
    at: i64,
) -> CallWrite<'a> {
    CallWrite {
        id,
        caller_id: caller,
        callee_id: callee,
        media: "audio",
        state: "ended",
        status: Some(status),
        reason: Some(reason),
        ended_by: None,
        message: None,
        created_at: at,
        answered_at: None,
        ended_at: Some(at),
        caller_device: None,
        callee_device: None,
    }
}

fn all() -> HistoryQuery {
    HistoryQuery {
        limit: 50,
        before: None,
        media: None,
        filter: None,
    }
}

#[tokio::test]
async fn a_call_is_inserted_then_updated_in_place() {
    let f = fixture().await;
    let mut call = CallWrite {
        id: "c1",
        caller_id: f.alice,
        callee_id: f.bob,
        media: "video",
        state: "ringing",
        status: None,
        reason: None,
        ended_by: None,
        message: None,
        created_at: 1_000,
        answered_at: None,
        ended_at: None,
        caller_device: Some("a-phone"),
        callee_device: None,
    };
    f.store.save_call(&call).await.unwrap();
    call.state = "ended";
    call.status = Some("declined");
    call.reason = Some("declined");
    call.ended_by = Some(f.bob);
    call.message = Some("busy now");
    call.ended_at = Some(3_000);
    f.store.save_call(&call).await.unwrap();
    let row = f.store.call_by_id("c1").await.unwrap().expect("stored");
    assert_eq!(row.state, "ended");
    assert_eq!(row.status.as_deref(), Some("declined"));
    assert_eq!(row.message.as_deref(), Some("busy now"));
    assert_eq!(row.ended_by, Some(f.bob));
    assert_eq!(row.caller.username, "alice");
    assert_eq!(row.callee.username, "bob");
    assert_eq!(row.created_at, 1_000);
    assert_eq!(row.caller_device.as_deref(), Some("a-phone"));
    assert!(f.store.call_by_id("nope").await.unwrap().is_none());
}

#[tokio::test]
async fn live_calls_are_returned_as_stored_for_the_switchboard_to_decide() {
    let f = fixture().await;
    let mut ringing = ended("ringing", f.alice, f.bob, "x", "x", 1);
    ringing.state = "ringing";
    ringing.status = None;
    ringing.reason = None;
    ringing.ended_at = None;
    ringing.caller_device = Some("a-laptop");
    f.store.save_call(&ringing).await.unwrap();
    let mut active = ringing.clone();
    active.id = "active";
    active.state = "active";
    active.answered_at = Some(2);
    active.callee_device = Some("b-phone");
    f.store.save_call(&active).await.unwrap();
    f.store
        .save_call(&ended("done", f.alice, f.bob, "completed", "hangup", 3))
        .await
        .unwrap();

    let live = f.store.live_calls().await.unwrap();
    assert_eq!(
        live.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["ringing", "active"],
        "ended calls are not live; the order is the order they started"
    );
    assert_eq!(live[0].state, "ringing");
    assert_eq!(live[0].caller_device.as_deref(), Some("a-laptop"));
    assert_eq!(live[0].callee_device, None);
    assert_eq!(
        (live[1].state.as_str(), live[1].answered_at),
        ("active", Some(2))
    );
    assert_eq!(
        (
            live[1].caller_device.as_deref(),
            live[1].callee_device.as_deref()
        ),
        (Some("a-laptop"), Some("b-phone"))
    );
    // Reading changes nothing: the store has no closing rule of its own.
    assert_eq!(f.store.live_calls().await.unwrap(), live);
}

#[tokio::test]
async fn history_pages_newest_first_with_a_cursor() {
    let f = fixture().await;
    for n in 0..5 {
        let id = format!("c{n}");
        f.store
            .save_call(&ended(&id, f.alice, f.bob, "completed", "hangup", n))
            .await
            .unwrap();
    }
    let query = HistoryQuery { limit: 2, ..all() };
    let (page, next) = f.store.call_history(f.alice, &query).await.unwrap();
    assert_eq!(
        page.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["c4", "c3"]
    );
    let query = HistoryQuery {
        before: next,
        ..query
    };
    let (page, next) = f.store.call_history(f.alice, &query).await.unwrap();
    assert_eq!(
        page.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["c2", "c1"]
    );
    let query = HistoryQuery {
        before: next,
        ..query
    };
    let (page, next) = f.store.call_history(f.alice, &query).await.unwrap();
    assert_eq!(
        page.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["c0"]
    );
    assert_eq!(next, None);
    // Exactly a full last page also ends with no cursor.
    let query = HistoryQuery { limit: 5, ..all() };
    assert_eq!(f.store.call_history(f.alice, &query).await.unwrap().1, None);
}

#[tokio::test]
async fn history_filters_by_direction_missed_and_media_and_skips_live_calls() {
    let f = fixture().await;
    f.store
        .save_call(&ended("out", f.alice, f.bob, "completed", "hangup", 1))
        .await
        .unwrap();
    f.store
        .save_call(&ended("in", f.bob, f.alice, "declined", "declined", 2))
        .await
        .unwrap();
    f.store
        .save_call(&ended("missed", f.bob, f.alice, "missed", "no_answer", 3))
        .await
        .unwrap();
    let mut busy = ended("busy", f.carol, f.alice, "busy", "busy", 4);
    busy.media = "video";
    f.store.save_call(&busy).await.unwrap();
    // bob's call to carol is not alice's business.
    f.store
        .save_call(&ended("other", f.bob, f.carol, "completed", "hangup", 5))
        .await
        .unwrap();
    let mut live = ended("live", f.alice, f.carol, "x", "x", 6);
    live.state = "ringing";
    live.status = None;
    live.reason = None;
    f.store.save_call(&live).await.unwrap();

    let ids = |rows: Vec<parley_store::calls::CallRow>| {
        rows.into_iter().map(|c| c.id).collect::<Vec<_>>()
    };
    let (rows, _) = f.store.call_history(f.alice, &all()).await.unwrap();
    assert_eq!(ids(rows), ["busy", "missed", "in", "out"]);
    let missed = HistoryQuery {
        filter: Some(HistoryFilter::Missed),
        ..all()
    };
    assert_eq!(
        ids(f.store.call_history(f.alice, &missed).await.unwrap().0),
        ["busy", "missed"]
    );
    let incoming = HistoryQuery {
        filter: Some(HistoryFilter::Incoming),
        ..all()
    };
    assert_eq!(
        ids(f.store.call_history(f.alice, &incoming).await.unwrap().0),
        ["busy", "missed", "in"]
    );
    let outgoing = HistoryQuery {
        filter: Some(HistoryFilter::Outgoing),
        ..all()
    };
    assert_eq!(
        ids(f.store.call_history(f.alice, &outgoing).await.unwrap().0),
        ["out"]
    );
    let video = HistoryQuery {
        media: Some("video".into()),
        ..all()
    };
    assert_eq!(
        ids(f.store.call_history(f.alice, &video).await.unwrap().0),
        ["busy"]
    );
    // bob made "missed" (outgoing for him): it is not a missed call of his.
    let (rows, _) = f.store.call_history(f.bob, &missed).await.unwrap();
    assert!(rows.is_empty());
}

#[tokio::test]
async fn missed_count_drops_to_zero_once_marked_seen() {
    let f = fixture().await;
    f.store
        .save_call(&ended("m1", f.bob, f.alice, "missed", "no_answer", 1))
        .await
        .unwrap();
    f.store
        .save_call(&ended("m2", f.carol, f.alice, "busy", "busy", 2))
        .await
        .unwrap();
    f.store
        .save_call(&ended("c", f.bob, f.alice, "completed", "hangup", 3))
        .await
        .unwrap();
    assert_eq!(f.store.unseen_missed_count(f.alice).await.unwrap(), 2);
    assert_eq!(f.store.unseen_missed_count(f.bob).await.unwrap(), 0);
    f.store.mark_missed_seen(f.alice).await.unwrap();
    assert_eq!(f.store.unseen_missed_count(f.alice).await.unwrap(), 0);
    let row = f.store.call_by_id("m1").await.unwrap().unwrap();
    assert!(row.callee_seen);
    // A later miss is unseen again.
    f.store
        .save_call(&ended("m3", f.bob, f.alice, "missed", "offline", 4))
        .await
        .unwrap();
    assert_eq!(f.store.unseen_missed_count(f.alice).await.unwrap(), 1);
}

#[tokio::test]
async fn hiding_a_call_leaves_the_other_party_history_untouched() {
    let f = fixture().await;
    f.store
        .save_call(&ended("c1", f.alice, f.bob, "missed", "no_answer", 1))
        .await
        .unwrap();
    assert_eq!(
        f.store.hide_call(f.bob, "c1").await.unwrap(),
        HideOutcome::Hidden
    );
    assert!(
        f.store
            .call_history(f.bob, &all())
            .await
            .unwrap()
            .0
            .is_empty()
    );
    assert_eq!(f.store.unseen_missed_count(f.bob).await.unwrap(), 0);
    assert_eq!(
        f.store.call_history(f.alice, &all()).await.unwrap().0.len(),
        1
    );
    assert_eq!(
        f.store.hide_call(f.carol, "c1").await.unwrap(),
        HideOutcome::NotFound
    );
    assert_eq!(
        f.store.hide_call(f.alice, "missing").await.unwrap(),
        HideOutcome::NotFound
    );
    let mut live = ended("live", f.alice, f.bob, "x", "x", 2);
    live.state = "active";
    live.status = None;
    f.store.save_call(&live).await.unwrap();
    assert_eq!(
        f.store.hide_call(f.alice, "live").await.unwrap(),
        HideOutcome::Live
    );
}

#[tokio::test]
async fn a_batch_is_written_whole_or_not_at_all() {
    let f = fixture().await;
    let first = ended("b1", f.alice, f.bob, "completed", "hangup", 1);
    let mut later = ended("b1", f.alice, f.bob, "completed", "hangup", 2);
    later.message = Some("second snapshot wins");
    f.store
        .save_calls(&[
            first,
            later,
            ended("b2", f.bob, f.carol, "missed", "no_answer", 3),
        ])
        .await
        .unwrap();
    let row = f.store.call_by_id("b1").await.unwrap().expect("stored");
    assert_eq!(row.message.as_deref(), Some("second snapshot wins"));
    assert!(f.store.call_by_id("b2").await.unwrap().is_some());

    // An unknown caller breaks the foreign key: the good record in the batch is not written.
    let refused = f
        .store
        .save_calls(&[
            ended("b3", f.alice, f.bob, "completed", "hangup", 4),
            ended("b4", 9_999, f.bob, "completed", "hangup", 5),
        ])
        .await;
    assert!(refused.is_err());
    assert!(f.store.call_by_id("b3").await.unwrap().is_none());
    // And the failure left no lock behind: the next write goes through at once.
    f.store
        .save_call(&ended("b5", f.alice, f.bob, "completed", "hangup", 6))
        .await
        .unwrap();
}
