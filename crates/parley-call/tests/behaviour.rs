//! Behaviour beyond single transitions: initiate checks and their order, HTTP device binding,
//! presence coalescing, logout, wire shapes, rate limits, and a no-panic sweep.

mod harness;

use std::time::{Duration, Instant};

use harness::*;
use parley_call::{
    CallState, ConnId, Event, Origin, Output, PresenceStatus, Reason, Reply, SignalKind,
    SignalPayload, Status, TokenBucket,
};

fn replies(outputs: &[Output]) -> Vec<String> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Reply { result: Err(e), .. } => Some(e.code().to_owned()),
            Output::Reply { result: Ok(_), .. } => Some("ok".to_owned()),
            _ => None,
        })
        .collect()
}

fn persisted(outputs: &[Output]) -> Vec<String> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Persist(record) => Some(render_record(record)),
            _ => None,
        })
        .collect()
}

fn presence(outputs: &[Output]) -> Vec<Vec<(i64, PresenceStatus)>> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Broadcast {
                event: Event::Presence { changes },
            } => Some(changes.iter().map(|c| (c.user_id, c.status)).collect()),
            _ => None,
        })
        .collect()
}

fn connected(conns: &[ConnId]) -> Harness {
    let mut h = Harness::new();
    for conn in conns {
        h.connect(*conn);
    }
    let settle = h.now.after(Duration::from_secs(1));
    h.run_until(settle);
    h
}

#[test]
fn calling_yourself_is_refused_before_busy_checks() {
    let mut h = connected(&[A1, B1]);
    h.initiate(A1, BOB);
    // alice is now busy, yet calling herself reports SELF_CALL: the spec orders it first.
    let out = h.initiate_from(Origin::Socket(A1), ALICE, ALICE);
    assert_eq!(replies(&out), ["SELF_CALL"]);
    assert!(persisted(&out).is_empty());
}

#[test]
fn caller_busy_is_checked_before_recipient_offline() {
    let mut h = connected(&[A1, B1]);
    h.initiate(A1, BOB);
    let out = h.initiate(A1, CAROL);
    assert_eq!(replies(&out), ["CALLER_BUSY"]);
    assert!(
        persisted(&out).is_empty(),
        "a refused caller leaves no record"
    );
}

#[test]
fn offline_attempt_is_logged_as_missed_before_the_refusal() {
    let mut h = connected(&[A1]);
    let out = h.initiate(A1, BOB);
    assert_eq!(persisted(&out), ["ended:missed/offline:server"]);
    assert_eq!(replies(&out), ["RECIPIENT_OFFLINE"]);
    let persist_at = out.iter().position(|o| matches!(o, Output::Persist(_)));
    let reply_at = out.iter().position(|o| matches!(o, Output::Reply { .. }));
    assert!(
        persist_at < reply_at,
        "the log write must come before the ack"
    );
    assert_eq!(h.board.user_status(ALICE), PresenceStatus::Online);
}

#[test]
fn busy_attempt_is_logged_as_busy() {
    let mut h = connected(&[A1, B1, C1]);
    h.initiate(A1, BOB);
    let request = h.request();
    h.board.handle_initiate(
        request,
        Origin::Socket(C1),
        user(CAROL),
        user(BOB),
        parley_call::Media::Audio,
        parley_call::CallId("call-2".into()),
        h.now,
    );
    let out = h.drain();
    assert_eq!(persisted(&out), ["ended:busy/busy:server"]);
    assert_eq!(replies(&out), ["RECIPIENT_BUSY"]);
    assert_eq!(h.board.user_status(CAROL), PresenceStatus::Online);
}

#[test]
fn recipient_offline_is_checked_before_recipient_busy() {
    // bob is in a call whose only device is within its reconnect grace: he has no device.
    let mut h = connected(&[A1, B1, C1]);
    h.initiate(A1, BOB);
    h.accept(B1);
    h.disconnect(B1);
    let request = h.request();
    h.board.handle_initiate(
        request,
        Origin::Socket(C1),
        user(CAROL),
        user(BOB),
        parley_call::Media::Audio,
        parley_call::CallId("call-2".into()),
        h.now,
    );
    assert_eq!(replies(&h.drain()), ["RECIPIENT_OFFLINE"]);
}

#[test]
fn initiate_rings_every_callee_device_and_acks_the_ringing_call() {
    let mut h = connected(&[A1, B1, B2]);
    let out = h.initiate(A1, BOB);
    assert_eq!(
        render(&h, &out),
        "log=ringing reply=ok B1<incoming B2<incoming live=ringing"
    );
    let Some(Output::Reply {
        result: Ok(Reply::Call(call)),
        ..
    }) = out.iter().find(|o| matches!(o, Output::Reply { .. }))
    else {
        panic!("no call in the ack: {out:?}");
    };
    assert_eq!(call.state, CallState::Ringing);
    assert_eq!(call.status, None);
    assert_eq!(call.caller.username, "alice");
}

#[test]
fn http_initiate_binds_the_only_connected_device() {
    let mut h = connected(&[A1, B1]);
    let out = h.initiate_from(
        Origin::Http {
            user: ALICE,
            device_id: None,
        },
        ALICE,
        BOB,
    );
    assert_eq!(replies(&out), ["ok"]);
    h.accept(B1);
    // The device bound by HTTP is alice's socket: it receives the callee's offer.
    let out = h.offer(B1);
    assert_eq!(render(&h, &out), "reply=ok A1<signal:offer live=active");
}

#[test]
fn http_initiate_with_several_devices_requires_a_device_id() {
    let mut h = connected(&[B1, B2, A1]);
    let out = h.initiate_from(
        Origin::Http {
            user: BOB,
            device_id: None,
        },
        BOB,
        ALICE,
    );
    assert_eq!(replies(&out), ["DEVICE_REQUIRED"]);
    let out = h.initiate_from(
        Origin::Http {
            user: BOB,
            device_id: Some("nope".into()),
        },
        BOB,
        ALICE,
    );
    assert_eq!(replies(&out), ["DEVICE_REQUIRED"]);
    let out = h.initiate_from(
        Origin::Http {
            user: BOB,
            device_id: Some(device_of(B2)),
        },
        BOB,
        ALICE,
    );
    assert_eq!(replies(&out), ["ok"]);
}

#[test]
fn http_initiate_without_any_device_requires_one() {
    let mut h = connected(&[B1]);
    let out = h.initiate_from(
        Origin::Http {
            user: ALICE,
            device_id: None,
        },
        ALICE,
        BOB,
    );
    assert_eq!(replies(&out), ["DEVICE_REQUIRED"]);
    assert!(persisted(&out).is_empty());
}

#[test]
fn http_accept_binds_the_named_device() {
    let mut h = connected(&[A1, B1, B2]);
    h.initiate(A1, BOB);
    let request = h.request();
    h.board.handle_accept(
        request,
        Origin::Http {
            user: BOB,
            device_id: Some(device_of(B2)),
        },
        &call_id(),
        h.now,
    );
    let out = h.drain();
    assert_eq!(
        render(&h, &out),
        "log=active reply=ok A1<accepted B1<answered-elsewhere live=active"
    );
}

#[test]
fn http_end_by_a_party_needs_no_device() {
    let mut h = connected(&[A1, B1]);
    h.initiate(A1, BOB);
    h.accept(B1);
    let request = h.request();
    h.board.handle_end(
        request,
        Origin::Http {
            user: BOB,
            device_id: None,
        },
        &call_id(),
        h.now,
    );
    let out = h.drain();
    assert_eq!(
        render(&h, &out),
        "log=ended:completed/hangup:bob reply=ok A1<ended(completed) B1<ended(completed) live=none"
    );
}

#[test]
fn decline_message_reaches_the_caller_and_the_log() {
    let mut h = connected(&[A1, B1]);
    h.initiate(A1, BOB);
    let out = h.decline(B1, Some("In a meeting, call you at 3"));
    let record = out
        .iter()
        .find_map(|o| match o {
            Output::Persist(r) => Some(r.clone()),
            _ => None,
        })
        .expect("decline is persisted");
    assert_eq!(
        record.message.as_deref(),
        Some("In a meeting, call you at 3")
    );
    let ended = out
        .iter()
        .find_map(|o| match o {
            Output::Emit {
                conn: A1,
                event: Event::Ended(e),
            } => Some(e.clone()),
            _ => None,
        })
        .expect("the caller hears the ending");
    assert_eq!(
        ended.message.as_deref(),
        Some("In a meeting, call you at 3")
    );
    assert_eq!(ended.ended_by, Some(BOB));
}

#[test]
fn duration_counts_from_answer_to_end() {
    let mut h = connected(&[A1, B1]);
    h.initiate(A1, BOB);
    h.advance(Duration::from_secs(5));
    h.accept(B1);
    h.advance(Duration::from_millis(42_900));
    let out = h.end(A1);
    let ended = out
        .iter()
        .find_map(|o| match o {
            Output::Emit {
                event: Event::Ended(e),
                ..
            } => Some(e.clone()),
            _ => None,
        })
        .expect("ending emitted");
    assert_eq!(ended.duration_secs, 42);
}

#[test]
fn resume_after_the_grace_finds_the_call_ended() {
    let mut h = connected(&[A1, B1]);
    h.initiate(A1, BOB);
    h.accept(B1);
    h.disconnect(B1);
    let late = h.now.after(Duration::from_secs(16));
    let out = h.run_until(late);
    assert_eq!(persisted(&out), ["ended:completed/connection_lost:server"]);
    let back = h.fresh_conn(BOB);
    let out = h.connect_as(back, BOB, &device_of(B1));
    assert_eq!(render(&h, &out), "reply=session(null) live=none");
}

#[test]
fn resume_within_the_grace_lets_signaling_flow_again() {
    let mut h = connected(&[A1, B1]);
    h.initiate(A1, BOB);
    h.accept(B1);
    h.disconnect(B1);
    h.advance(Duration::from_secs(14));
    let back = h.fresh_conn(BOB);
    h.connect_as(back, BOB, &device_of(B1));
    let out = h.offer(A1);
    assert_eq!(render(&h, &out), "reply=ok N<signal:offer live=active");
    // The grace timer was cancelled: a minute later the call is still up.
    let later = h.now.after(Duration::from_secs(60));
    assert!(persisted(&h.run_until(later)).is_empty());
}

#[test]
fn last_ringing_device_leaving_ends_as_missed() {
    let mut h = connected(&[A1, B1, B2]);
    h.initiate(A1, BOB);
    h.disconnect(B1);
    let out = h.disconnect(B2);
    assert_eq!(
        render(&h, &out),
        "log=ended:missed/connection_lost:server A1<ended(missed) live=none"
    );
}

#[test]
fn signal_from_is_the_sender_and_payload_is_relayed_untouched() {
    let mut h = connected(&[A1, B1]);
    h.initiate(A1, BOB);
    h.accept(B1);
    let candidate = serde_json::json!({"candidate": "candidate:1 1 udp 1 127.0.0.1 5000 typ host", "sdpMid": "0"});
    let request = h.request();
    h.board.handle_signal(
        request,
        B1,
        &call_id(),
        SignalKind::Ice,
        SignalPayload::Candidate {
            candidate: candidate.clone(),
        },
        h.now,
    );
    let out = h.drain();
    let event = out
        .iter()
        .find_map(|o| match o {
            Output::Emit { conn: A1, event } => Some(event.clone()),
            _ => None,
        })
        .expect("relayed to the caller device");
    assert_eq!(event.name(), "signal:ice");
    assert_eq!(
        serde_json::to_value(&event).expect("events serialize"),
        serde_json::json!({"callId": CALL, "from": BOB, "candidate": candidate})
    );
}

#[test]
fn wire_shapes_match_the_protocol() {
    let mut h = connected(&[A1, B1]);
    let out = h.initiate(A1, BOB);
    let incoming = out
        .iter()
        .find_map(|o| match o {
            Output::Emit { event, .. } => Some(event.clone()),
            _ => None,
        })
        .expect("incoming emitted");
    let json = serde_json::to_value(&incoming).expect("events serialize");
    assert_eq!(incoming.name(), "call:incoming");
    let call = &json["call"];
    assert_eq!(call["id"], CALL);
    assert_eq!(
        call["caller"],
        serde_json::json!({"id": ALICE, "username": "alice", "displayName": "ALICE"})
    );
    assert_eq!(call["media"], "video");
    assert_eq!(call["state"], "ringing");
    assert_eq!(call["status"], serde_json::Value::Null);
    assert_eq!(call["reason"], serde_json::Value::Null);
    assert_eq!(call["answeredAt"], serde_json::Value::Null);
    assert_eq!(call["durationSecs"], 0);
    assert_eq!(call["createdAt"], "2026-11-18T11:06:41.000Z");

    let out = h.decline(B1, None);
    let ended = out
        .iter()
        .find_map(|o| match o {
            Output::Emit { event, .. } => Some(event.clone()),
            _ => None,
        })
        .expect("ended emitted");
    assert_eq!(
        serde_json::to_value(&ended).expect("events serialize"),
        serde_json::json!({"callId": CALL, "status": "declined", "reason": "declined", "endedBy": BOB, "durationSecs": 0})
    );
    let media = Event::Signal(parley_call::Signal {
        kind: SignalKind::MediaState,
        call_id: call_id(),
        from: ALICE,
        payload: SignalPayload::Media {
            audio: true,
            video: false,
        },
    });
    assert_eq!(media.name(), "media:state");
    assert_eq!(
        serde_json::to_value(&media).expect("events serialize"),
        serde_json::json!({"callId": CALL, "from": ALICE, "audio": true, "video": false})
    );
}

#[test]
fn enum_strings_round_trip() {
    for status in Status::ALL {
        assert_eq!(status.as_str().parse::<Status>().ok(), Some(*status));
    }
    for reason in Reason::ALL {
        assert_eq!(reason.as_str().parse::<Reason>().ok(), Some(*reason));
    }
    let error = "sideways".parse::<Reason>().expect_err("not a reason");
    assert_eq!(error.code(), "INTERNAL");
}

#[test]
fn presence_is_coalesced_into_one_event_per_window() {
    let mut h = Harness::new();
    for conn in [A1, B1, B2, C1] {
        h.connect(conn);
    }
    h.initiate(A1, BOB);
    // Nothing is sent before the window closes: the whole 250 ms the spec allows, no longer.
    assert!(presence(&h.log).is_empty());
    let before = h.now.after(Duration::from_millis(249));
    assert!(presence(&h.run_until(before)).is_empty());
    let until = h.now.after(Duration::from_millis(1));
    let out = h.run_until(until);
    assert_eq!(
        presence(&out),
        [vec![
            (ALICE, PresenceStatus::Busy),
            (BOB, PresenceStatus::Busy),
            (CAROL, PresenceStatus::Online)
        ]]
    );
}

#[test]
fn presence_skips_a_user_who_came_back_within_the_window() {
    let mut h = connected(&[A1, C1]);
    h.disconnect(A1);
    h.connect(A1);
    let until = h.now.after(Duration::from_millis(250));
    assert!(presence(&h.run_until(until)).is_empty());
    h.disconnect(A1);
    let until = h.now.after(Duration::from_millis(250));
    assert_eq!(
        presence(&h.run_until(until)),
        [vec![(ALICE, PresenceStatus::Offline)]]
    );
}

#[test]
fn presence_reports_leaving_a_call() {
    let mut h = connected(&[A1, B1]);
    h.initiate(A1, BOB);
    h.cancel(A1);
    let until = h.now.after(Duration::from_millis(250));
    // Busy and back to online within one window: nothing to tell.
    assert!(presence(&h.run_until(until)).is_empty());
    h.initiate(A1, BOB);
    let until = h.now.after(Duration::from_millis(250));
    h.run_until(until);
    h.cancel(A1);
    let until = h.now.after(Duration::from_millis(250));
    assert_eq!(
        presence(&h.run_until(until)),
        [vec![
            (ALICE, PresenceStatus::Online),
            (BOB, PresenceStatus::Online)
        ]]
    );
}

#[test]
fn a_sign_in_burst_is_told_in_events_of_at_most_the_limit_each_user_once_in_order() {
    let mut h = Harness::new();
    let limit = parley_call::PRESENCE_CHANGES_PER_EVENT;
    let users: Vec<i64> = (1000..1000 + (2 * limit + 100) as i64).collect();
    for (n, user) in users.iter().enumerate() {
        h.connect_as(ConnId(1_000_000 + n as u64), *user, &format!("device-{n}"));
    }
    let until = h.now.after(Duration::from_millis(250));
    let events = presence(&h.run_until(until));
    let sizes: Vec<usize> = events.iter().map(Vec::len).collect();
    assert_eq!(sizes, [limit, limit, 100]);
    let told = events.concat();
    assert!(
        told.iter()
            .all(|(_, status)| *status == PresenceStatus::Online)
    );
    let told: Vec<i64> = told.iter().map(|(user, _)| *user).collect();
    assert_eq!(told, users);
}

#[test]
fn revoking_a_session_closes_its_sockets_and_cancels_its_ringing_call() {
    let mut h = connected(&[A1, B1]);
    h.initiate(A1, BOB);
    // The harness gives user n the session id n * 100.
    h.board.handle_session_revoked(ALICE * 100, h.now);
    let out = h.drain();
    assert_eq!(
        render(&h, &out),
        "close:A1 log=ended:cancelled/connection_lost:server B1<ended(cancelled) live=none"
    );
    assert_eq!(h.board.connection_count(), 1);
}

#[test]
fn taken_over_socket_disconnecting_later_changes_nothing() {
    let mut h = connected(&[A1, B1]);
    h.initiate(A1, BOB);
    h.accept(B1);
    let newer = h.fresh_conn(BOB);
    h.connect_as(newer, BOB, &device_of(B1));
    let out = h.disconnect(B1);
    assert_eq!(render(&h, &out), "live=active");
    let out = h.offer(A1);
    assert_eq!(render(&h, &out), "reply=ok N<signal:offer live=active");
}

#[test]
fn a_new_call_can_start_after_the_previous_one_ended() {
    let mut h = connected(&[A1, B1]);
    h.initiate(A1, BOB);
    h.end(B1);
    let out = h.initiate(B1, ALICE);
    assert_eq!(replies(&out), ["ok"]);
}

#[test]
fn poll_timeout_names_the_ring_deadline() {
    let mut h = connected(&[A1, B1]);
    let start = h.now.instant;
    h.initiate(A1, BOB);
    let until = h.now.after(Duration::from_millis(300));
    h.run_until(until);
    let (at, timer) = h.board.poll_timeout().expect("a ring deadline is pending");
    assert_eq!(at, start + Duration::from_secs(30));
    assert_eq!(timer, parley_call::Timer::RingTimeout(call_id()));
}

#[test]
fn token_bucket_allows_the_burst_then_the_rate() {
    let start = Instant::now();
    let mut bucket = TokenBucket::new(10, 3, start);
    assert!((0..3).all(|_| bucket.try_take(start)));
    assert!(!bucket.try_take(start));
    assert!(bucket.try_take(start + Duration::from_millis(100)));
    assert!(!bucket.try_take(start + Duration::from_millis(100)));
    // A clock that goes backwards refills nothing and does not panic.
    assert!(!bucket.try_take(start));
}

#[test]
fn no_sequence_of_inputs_panics_or_breaks_invariants() {
    // Every fixture followed by every ordered pair of inputs.
    for fixture in Fixture::ALL {
        for first in Input::ALL {
            for second in Input::ALL {
                let mut h = fixture.build();
                first.apply(&mut h);
                second.apply(&mut h);
                let until = h.now.after(Duration::from_secs(120));
                h.run_until(until);
                // After every timer has run, no ringing call or grace can remain.
                if let Some(call) = h.board.live_call(&call_id(), ALICE) {
                    assert_eq!(
                        call.state,
                        CallState::Active,
                        "{fixture:?} {first:?} {second:?}"
                    );
                }
                // Each call is logged ended at most once.
                let endings = h
                    .log
                    .iter()
                    .filter(|o| matches!(o, Output::Persist(r) if r.state == CallState::Ended))
                    .count();
                assert!(
                    endings <= 1,
                    "{fixture:?} {first:?} {second:?}: ended {endings} times"
                );
            }
        }
    }
}

// ----- a record the shell could not write (issue 10) ----------------------------------------

fn first_record(outputs: &[Output]) -> parley_call::CallRecord {
    outputs
        .iter()
        .find_map(|o| match o {
            Output::Persist(record) => Some(record.clone()),
            _ => None,
        })
        .expect("a record to persist")
}

#[test]
fn a_call_whose_first_record_failed_vanishes_without_a_word() {
    let mut h = connected(&[A1, B1]);
    h.initiate(A1, BOB);
    h.board.handle_write_failed(&call_id(), None, h.now);
    let out = h.drain();
    assert_eq!(render(&h, &out), "live=none");
    assert_eq!(h.board.user_status(ALICE), PresenceStatus::Online);
    assert_eq!(h.board.user_status(BOB), PresenceStatus::Online);
}

#[test]
fn a_refused_accept_ends_the_recorded_ringing_call_as_missed_by_the_server() {
    let mut h = connected(&[A1, B1, B2]);
    let ringing = first_record(&h.initiate(A1, BOB));
    h.advance(Duration::from_secs(3));
    h.accept(B1);
    h.board
        .handle_write_failed(&call_id(), Some(&ringing), h.now);
    let out = h.drain();
    // B2 never heard "answered elsewhere" (withheld with the refused accept): it hears the end.
    assert_eq!(
        render(&h, &out),
        "log=ended:missed/connection_lost:server A1<ended(missed) B1<ended(missed) B2<ended(missed) live=none"
    );
    assert_eq!(first_record(&out).answered_at_ms, None);
}

#[test]
fn a_failed_write_of_an_ended_call_changes_nothing_more() {
    let mut h = connected(&[A1, B1]);
    let ringing = first_record(&h.initiate(A1, BOB));
    h.cancel(A1);
    h.board
        .handle_write_failed(&call_id(), Some(&ringing), h.now);
    let out = h.drain();
    assert_eq!(render(&h, &out), "live=none");
}
