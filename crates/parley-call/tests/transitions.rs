//! One test per (call state, input) pair. Each line reads: in this state, this input gives
//! this reply, this log record, these events, and leaves the call in this state. See
//! `harness::render` for the notation.

mod harness;

use std::time::Duration;

use harness::{A1, ALICE, B1, CAROL, Fixture, Harness, Input, check, render};
use parley_call::{CallId, CallState, Output, PresenceStatus};

mod ringing {
    use super::*;

    #[test]
    fn callee_accepting_a_ringing_call_activates_it_and_stops_other_devices() {
        check(
            Fixture::Ringing,
            Input::AcceptByCallee,
            "log=active reply=ok A1<accepted B2<answered-elsewhere live=active",
        );
    }

    #[test]
    fn first_callee_device_to_accept_wins() {
        check(
            Fixture::Ringing,
            Input::AcceptByCalleeOtherDevice,
            "log=active reply=ok A1<accepted B1<answered-elsewhere live=active",
        );
    }

    #[test]
    fn caller_cannot_accept_its_own_call() {
        check(
            Fixture::Ringing,
            Input::AcceptByCaller,
            "reply=FORBIDDEN live=ringing",
        );
    }

    #[test]
    fn stranger_accepting_is_told_the_call_does_not_exist() {
        check(
            Fixture::Ringing,
            Input::AcceptByStranger,
            "reply=CALL_NOT_FOUND live=ringing",
        );
    }

    #[test]
    fn callee_declining_ends_it_on_every_involved_device() {
        check(
            Fixture::Ringing,
            Input::DeclineByCallee,
            "log=ended:declined/declined:bob reply=ok A1<ended(declined) B1<ended(declined) B2<ended(declined) live=none",
        );
    }

    #[test]
    fn caller_cannot_decline() {
        check(
            Fixture::Ringing,
            Input::DeclineByCaller,
            "reply=FORBIDDEN live=ringing",
        );
    }

    #[test]
    fn caller_cancelling_ends_it_on_every_involved_device() {
        check(
            Fixture::Ringing,
            Input::CancelByCaller,
            "log=ended:cancelled/cancelled:alice reply=ok A1<ended(cancelled) B1<ended(cancelled) B2<ended(cancelled) live=none",
        );
    }

    #[test]
    fn callee_cannot_cancel() {
        check(
            Fixture::Ringing,
            Input::CancelByCallee,
            "reply=FORBIDDEN live=ringing",
        );
    }

    #[test]
    fn caller_ending_a_ringing_call_cancels_it() {
        check(
            Fixture::Ringing,
            Input::EndByCaller,
            "log=ended:cancelled/cancelled:alice reply=ok A1<ended(cancelled) B1<ended(cancelled) B2<ended(cancelled) live=none",
        );
    }

    #[test]
    fn callee_ending_a_ringing_call_declines_it() {
        check(
            Fixture::Ringing,
            Input::EndByCallee,
            "log=ended:declined/declined:bob reply=ok A1<ended(declined) B1<ended(declined) B2<ended(declined) live=none",
        );
    }

    #[test]
    fn stranger_ending_is_told_the_call_does_not_exist() {
        check(
            Fixture::Ringing,
            Input::EndByStranger,
            "reply=CALL_NOT_FOUND live=ringing",
        );
    }

    #[test]
    fn caller_cannot_signal_before_accept() {
        check(
            Fixture::Ringing,
            Input::OfferFromCaller,
            "reply=INVALID_STATE live=ringing",
        );
    }

    #[test]
    fn callee_cannot_signal_before_accept() {
        check(
            Fixture::Ringing,
            Input::OfferFromCallee,
            "reply=INVALID_STATE live=ringing",
        );
    }

    #[test]
    fn other_callee_device_cannot_signal_before_accept() {
        check(
            Fixture::Ringing,
            Input::OfferFromCalleeOtherDevice,
            "reply=INVALID_STATE live=ringing",
        );
    }

    #[test]
    fn stranger_signaling_is_told_the_call_does_not_exist() {
        check(
            Fixture::Ringing,
            Input::OfferFromStranger,
            "reply=CALL_NOT_FOUND live=ringing",
        );
    }

    #[test]
    fn ring_timeout_logs_missed_call() {
        check(
            Fixture::Ringing,
            Input::RingTimeout,
            "log=ended:missed/no_answer:server A1<ended(missed) B1<ended(missed) B2<ended(missed) live=none",
        );
    }

    #[test]
    fn fifteen_seconds_of_ringing_change_nothing() {
        check(Fixture::Ringing, Input::GraceTimeout, "live=ringing");
    }

    #[test]
    fn caller_disconnecting_cancels_with_connection_lost() {
        check(
            Fixture::Ringing,
            Input::CallerDisconnects,
            "log=ended:cancelled/connection_lost:server B1<ended(cancelled) B2<ended(cancelled) live=none",
        );
    }

    #[test]
    fn one_ringing_device_leaving_keeps_the_others_ringing() {
        check(Fixture::Ringing, Input::CalleeDisconnects, "live=ringing");
    }

    #[test]
    fn other_ringing_device_leaving_keeps_the_call_ringing() {
        check(
            Fixture::Ringing,
            Input::CalleeOtherDeviceDisconnects,
            "live=ringing",
        );
    }

    #[test]
    fn caller_socket_taken_over_keeps_the_call_ringing() {
        check(
            Fixture::Ringing,
            Input::CallerReconnects,
            "close:A1 reply=session(ringing) live=ringing",
        );
    }

    #[test]
    fn callee_socket_taken_over_rings_on_the_new_socket() {
        check(
            Fixture::Ringing,
            Input::CalleeReconnects,
            "close:B1 reply=session(ringing) N<incoming live=ringing",
        );
    }

    #[test]
    fn callee_device_connecting_while_ringing_rings_too() {
        check(
            Fixture::Ringing,
            Input::CalleeNewDevice,
            "reply=session(ringing) N<incoming live=ringing",
        );
    }

    #[test]
    fn shutdown_ends_a_ringing_call_as_missed() {
        check(
            Fixture::Ringing,
            Input::Shutdown,
            "log=ended:missed/server_shutdown:server A1<ended(missed) B1<ended(missed) B2<ended(missed) live=none",
        );
    }
}

mod active {
    use super::*;

    #[test]
    fn accepting_an_answered_call_is_invalid() {
        check(
            Fixture::Active,
            Input::AcceptByCallee,
            "reply=INVALID_STATE live=active",
        );
    }

    #[test]
    fn accepting_on_another_device_after_answer_is_invalid() {
        check(
            Fixture::Active,
            Input::AcceptByCalleeOtherDevice,
            "reply=INVALID_STATE live=active",
        );
    }

    #[test]
    fn caller_accepting_is_forbidden() {
        check(
            Fixture::Active,
            Input::AcceptByCaller,
            "reply=FORBIDDEN live=active",
        );
    }

    #[test]
    fn stranger_accepting_is_told_the_call_does_not_exist() {
        check(
            Fixture::Active,
            Input::AcceptByStranger,
            "reply=CALL_NOT_FOUND live=active",
        );
    }

    #[test]
    fn declining_an_answered_call_is_invalid() {
        check(
            Fixture::Active,
            Input::DeclineByCallee,
            "reply=INVALID_STATE live=active",
        );
    }

    #[test]
    fn caller_declining_is_forbidden() {
        check(
            Fixture::Active,
            Input::DeclineByCaller,
            "reply=FORBIDDEN live=active",
        );
    }

    #[test]
    fn cancelling_an_answered_call_is_invalid() {
        check(
            Fixture::Active,
            Input::CancelByCaller,
            "reply=INVALID_STATE live=active",
        );
    }

    #[test]
    fn callee_cancelling_is_forbidden() {
        check(
            Fixture::Active,
            Input::CancelByCallee,
            "reply=FORBIDDEN live=active",
        );
    }

    #[test]
    fn caller_hanging_up_completes_the_call() {
        check(
            Fixture::Active,
            Input::EndByCaller,
            "log=ended:completed/hangup:alice reply=ok A1<ended(completed) B1<ended(completed) live=none",
        );
    }

    #[test]
    fn callee_hanging_up_completes_the_call() {
        check(
            Fixture::Active,
            Input::EndByCallee,
            "log=ended:completed/hangup:bob reply=ok A1<ended(completed) B1<ended(completed) live=none",
        );
    }

    #[test]
    fn stranger_ending_is_told_the_call_does_not_exist() {
        check(
            Fixture::Active,
            Input::EndByStranger,
            "reply=CALL_NOT_FOUND live=active",
        );
    }

    #[test]
    fn caller_offer_reaches_the_callee_device() {
        check(
            Fixture::Active,
            Input::OfferFromCaller,
            "reply=ok B1<signal:offer live=active",
        );
    }

    #[test]
    fn callee_offer_reaches_the_caller_device() {
        check(
            Fixture::Active,
            Input::OfferFromCallee,
            "reply=ok A1<signal:offer live=active",
        );
    }

    #[test]
    fn unbound_callee_device_cannot_signal() {
        check(
            Fixture::Active,
            Input::OfferFromCalleeOtherDevice,
            "reply=FORBIDDEN live=active",
        );
    }

    #[test]
    fn stranger_signaling_is_told_the_call_does_not_exist() {
        check(
            Fixture::Active,
            Input::OfferFromStranger,
            "reply=CALL_NOT_FOUND live=active",
        );
    }

    #[test]
    fn ring_timeout_no_longer_applies() {
        check(Fixture::Active, Input::RingTimeout, "live=active");
    }

    #[test]
    fn no_grace_runs_while_both_devices_are_here() {
        check(Fixture::Active, Input::GraceTimeout, "live=active");
    }

    #[test]
    fn caller_device_lost_starts_the_grace() {
        check(
            Fixture::Active,
            Input::CallerDisconnects,
            "B1<peer-reconnecting live=active",
        );
    }

    #[test]
    fn callee_device_lost_starts_the_grace() {
        check(
            Fixture::Active,
            Input::CalleeDisconnects,
            "A1<peer-reconnecting live=active",
        );
    }

    #[test]
    fn unbound_device_leaving_changes_nothing() {
        check(
            Fixture::Active,
            Input::CalleeOtherDeviceDisconnects,
            "live=active",
        );
    }

    #[test]
    fn caller_socket_taken_over_keeps_the_call_and_tells_the_peer() {
        check(
            Fixture::Active,
            Input::CallerReconnects,
            "close:A1 reply=session(active) B1<peer-resumed live=active",
        );
    }

    #[test]
    fn callee_socket_taken_over_keeps_the_call_and_tells_the_peer() {
        check(
            Fixture::Active,
            Input::CalleeReconnects,
            "close:B1 reply=session(active) A1<peer-resumed live=active",
        );
    }

    #[test]
    fn new_callee_device_sees_the_active_call_without_joining() {
        check(
            Fixture::Active,
            Input::CalleeNewDevice,
            "reply=session(active) live=active",
        );
    }

    #[test]
    fn shutdown_leaves_an_answered_call_active_for_the_next_start() {
        check(Fixture::Active, Input::Shutdown, "live=active");
    }
}

mod active_caller_away {
    use super::*;

    #[test]
    fn accepting_is_invalid() {
        check(
            Fixture::ActiveCallerAway,
            Input::AcceptByCallee,
            "reply=INVALID_STATE live=active",
        );
    }

    #[test]
    fn accepting_on_another_device_is_invalid() {
        check(
            Fixture::ActiveCallerAway,
            Input::AcceptByCalleeOtherDevice,
            "reply=INVALID_STATE live=active",
        );
    }

    #[test]
    fn gone_socket_cannot_act() {
        check(
            Fixture::ActiveCallerAway,
            Input::AcceptByCaller,
            "reply=DEVICE_REQUIRED live=active",
        );
    }

    #[test]
    fn stranger_accepting_is_told_the_call_does_not_exist() {
        check(
            Fixture::ActiveCallerAway,
            Input::AcceptByStranger,
            "reply=CALL_NOT_FOUND live=active",
        );
    }

    #[test]
    fn declining_is_invalid() {
        check(
            Fixture::ActiveCallerAway,
            Input::DeclineByCallee,
            "reply=INVALID_STATE live=active",
        );
    }

    #[test]
    fn gone_socket_cannot_decline() {
        check(
            Fixture::ActiveCallerAway,
            Input::DeclineByCaller,
            "reply=DEVICE_REQUIRED live=active",
        );
    }

    #[test]
    fn gone_socket_cannot_cancel() {
        check(
            Fixture::ActiveCallerAway,
            Input::CancelByCaller,
            "reply=DEVICE_REQUIRED live=active",
        );
    }

    #[test]
    fn callee_cancelling_is_forbidden() {
        check(
            Fixture::ActiveCallerAway,
            Input::CancelByCallee,
            "reply=FORBIDDEN live=active",
        );
    }

    #[test]
    fn gone_socket_cannot_end() {
        check(
            Fixture::ActiveCallerAway,
            Input::EndByCaller,
            "reply=DEVICE_REQUIRED live=active",
        );
    }

    #[test]
    fn callee_can_hang_up_while_caller_is_away() {
        check(
            Fixture::ActiveCallerAway,
            Input::EndByCallee,
            "log=ended:completed/hangup:bob reply=ok B1<ended(completed) live=none",
        );
    }

    #[test]
    fn stranger_ending_is_told_the_call_does_not_exist() {
        check(
            Fixture::ActiveCallerAway,
            Input::EndByStranger,
            "reply=CALL_NOT_FOUND live=active",
        );
    }

    #[test]
    fn gone_socket_cannot_signal() {
        check(
            Fixture::ActiveCallerAway,
            Input::OfferFromCaller,
            "reply=DEVICE_REQUIRED live=active",
        );
    }

    #[test]
    fn offer_to_an_away_peer_is_dropped() {
        check(
            Fixture::ActiveCallerAway,
            Input::OfferFromCallee,
            "reply=ok live=active",
        );
    }

    #[test]
    fn unbound_callee_device_cannot_signal() {
        check(
            Fixture::ActiveCallerAway,
            Input::OfferFromCalleeOtherDevice,
            "reply=FORBIDDEN live=active",
        );
    }

    #[test]
    fn stranger_signaling_is_told_the_call_does_not_exist() {
        check(
            Fixture::ActiveCallerAway,
            Input::OfferFromStranger,
            "reply=CALL_NOT_FOUND live=active",
        );
    }

    #[test]
    fn grace_expiry_ends_the_call_first() {
        check(
            Fixture::ActiveCallerAway,
            Input::RingTimeout,
            "log=ended:completed/connection_lost:server B1<ended(completed) live=none",
        );
    }

    #[test]
    fn grace_expiry_ends_with_connection_lost() {
        check(
            Fixture::ActiveCallerAway,
            Input::GraceTimeout,
            "log=ended:completed/connection_lost:server B1<ended(completed) live=none",
        );
    }

    #[test]
    fn second_disconnect_of_the_same_socket_is_ignored() {
        check(
            Fixture::ActiveCallerAway,
            Input::CallerDisconnects,
            "live=active",
        );
    }

    #[test]
    fn both_devices_away_keeps_the_call_in_grace() {
        check(
            Fixture::ActiveCallerAway,
            Input::CalleeDisconnects,
            "live=active",
        );
    }

    #[test]
    fn unbound_device_leaving_changes_nothing() {
        check(
            Fixture::ActiveCallerAway,
            Input::CalleeOtherDeviceDisconnects,
            "live=active",
        );
    }

    #[test]
    fn caller_resuming_within_grace_rebinds_and_tells_the_peer() {
        check(
            Fixture::ActiveCallerAway,
            Input::CallerReconnects,
            "reply=session(active) B1<peer-resumed live=active",
        );
    }

    #[test]
    fn callee_socket_taken_over_keeps_the_call() {
        check(
            Fixture::ActiveCallerAway,
            Input::CalleeReconnects,
            "close:B1 reply=session(active) live=active",
        );
    }

    #[test]
    fn new_callee_device_sees_the_active_call() {
        check(
            Fixture::ActiveCallerAway,
            Input::CalleeNewDevice,
            "reply=session(active) live=active",
        );
    }

    #[test]
    fn shutdown_leaves_the_call_active_for_the_next_start() {
        check(Fixture::ActiveCallerAway, Input::Shutdown, "live=active");
    }
}

mod active_callee_away {
    use super::*;

    #[test]
    fn gone_socket_cannot_accept() {
        check(
            Fixture::ActiveCalleeAway,
            Input::AcceptByCallee,
            "reply=DEVICE_REQUIRED live=active",
        );
    }

    #[test]
    fn accepting_on_another_device_is_invalid() {
        check(
            Fixture::ActiveCalleeAway,
            Input::AcceptByCalleeOtherDevice,
            "reply=INVALID_STATE live=active",
        );
    }

    #[test]
    fn caller_accepting_is_forbidden() {
        check(
            Fixture::ActiveCalleeAway,
            Input::AcceptByCaller,
            "reply=FORBIDDEN live=active",
        );
    }

    #[test]
    fn stranger_accepting_is_told_the_call_does_not_exist() {
        check(
            Fixture::ActiveCalleeAway,
            Input::AcceptByStranger,
            "reply=CALL_NOT_FOUND live=active",
        );
    }

    #[test]
    fn gone_socket_cannot_decline() {
        check(
            Fixture::ActiveCalleeAway,
            Input::DeclineByCallee,
            "reply=DEVICE_REQUIRED live=active",
        );
    }

    #[test]
    fn caller_declining_is_forbidden() {
        check(
            Fixture::ActiveCalleeAway,
            Input::DeclineByCaller,
            "reply=FORBIDDEN live=active",
        );
    }

    #[test]
    fn cancelling_is_invalid() {
        check(
            Fixture::ActiveCalleeAway,
            Input::CancelByCaller,
            "reply=INVALID_STATE live=active",
        );
    }

    #[test]
    fn gone_socket_cannot_cancel() {
        check(
            Fixture::ActiveCalleeAway,
            Input::CancelByCallee,
            "reply=DEVICE_REQUIRED live=active",
        );
    }

    #[test]
    fn caller_can_hang_up_while_callee_is_away() {
        check(
            Fixture::ActiveCalleeAway,
            Input::EndByCaller,
            "log=ended:completed/hangup:alice reply=ok A1<ended(completed) live=none",
        );
    }

    #[test]
    fn gone_socket_cannot_end() {
        check(
            Fixture::ActiveCalleeAway,
            Input::EndByCallee,
            "reply=DEVICE_REQUIRED live=active",
        );
    }

    #[test]
    fn stranger_ending_is_told_the_call_does_not_exist() {
        check(
            Fixture::ActiveCalleeAway,
            Input::EndByStranger,
            "reply=CALL_NOT_FOUND live=active",
        );
    }

    #[test]
    fn offer_to_an_away_peer_is_dropped() {
        check(
            Fixture::ActiveCalleeAway,
            Input::OfferFromCaller,
            "reply=ok live=active",
        );
    }

    #[test]
    fn gone_socket_cannot_signal() {
        check(
            Fixture::ActiveCalleeAway,
            Input::OfferFromCallee,
            "reply=DEVICE_REQUIRED live=active",
        );
    }

    #[test]
    fn unbound_callee_device_cannot_signal() {
        check(
            Fixture::ActiveCalleeAway,
            Input::OfferFromCalleeOtherDevice,
            "reply=FORBIDDEN live=active",
        );
    }

    #[test]
    fn stranger_signaling_is_told_the_call_does_not_exist() {
        check(
            Fixture::ActiveCalleeAway,
            Input::OfferFromStranger,
            "reply=CALL_NOT_FOUND live=active",
        );
    }

    #[test]
    fn grace_expiry_ends_the_call_first() {
        check(
            Fixture::ActiveCalleeAway,
            Input::RingTimeout,
            "log=ended:completed/connection_lost:server A1<ended(completed) live=none",
        );
    }

    #[test]
    fn grace_expiry_ends_with_connection_lost() {
        check(
            Fixture::ActiveCalleeAway,
            Input::GraceTimeout,
            "log=ended:completed/connection_lost:server A1<ended(completed) live=none",
        );
    }

    #[test]
    fn both_devices_away_keeps_the_call_in_grace() {
        check(
            Fixture::ActiveCalleeAway,
            Input::CallerDisconnects,
            "live=active",
        );
    }

    #[test]
    fn second_disconnect_of_the_same_socket_is_ignored() {
        check(
            Fixture::ActiveCalleeAway,
            Input::CalleeDisconnects,
            "live=active",
        );
    }

    #[test]
    fn unbound_device_leaving_changes_nothing() {
        check(
            Fixture::ActiveCalleeAway,
            Input::CalleeOtherDeviceDisconnects,
            "live=active",
        );
    }

    #[test]
    fn caller_socket_taken_over_keeps_the_call() {
        check(
            Fixture::ActiveCalleeAway,
            Input::CallerReconnects,
            "close:A1 reply=session(active) live=active",
        );
    }

    #[test]
    fn callee_resuming_within_grace_rebinds_and_tells_the_peer() {
        check(
            Fixture::ActiveCalleeAway,
            Input::CalleeReconnects,
            "reply=session(active) A1<peer-resumed live=active",
        );
    }

    #[test]
    fn a_different_device_does_not_resume_the_call() {
        check(
            Fixture::ActiveCalleeAway,
            Input::CalleeNewDevice,
            "reply=session(active) live=active",
        );
    }

    #[test]
    fn shutdown_leaves_the_call_active_for_the_next_start() {
        check(Fixture::ActiveCalleeAway, Input::Shutdown, "live=active");
    }
}

mod ended {
    use super::*;

    #[test]
    fn accepting_an_ended_call_finds_no_live_call() {
        check(
            Fixture::Ended,
            Input::AcceptByCallee,
            "reply=CALL_NOT_FOUND live=none",
        );
    }

    #[test]
    fn accepting_on_another_device_finds_no_live_call() {
        check(
            Fixture::Ended,
            Input::AcceptByCalleeOtherDevice,
            "reply=CALL_NOT_FOUND live=none",
        );
    }

    #[test]
    fn caller_accepting_finds_no_live_call() {
        check(
            Fixture::Ended,
            Input::AcceptByCaller,
            "reply=CALL_NOT_FOUND live=none",
        );
    }

    #[test]
    fn stranger_accepting_finds_no_live_call() {
        check(
            Fixture::Ended,
            Input::AcceptByStranger,
            "reply=CALL_NOT_FOUND live=none",
        );
    }

    #[test]
    fn declining_finds_no_live_call() {
        check(
            Fixture::Ended,
            Input::DeclineByCallee,
            "reply=CALL_NOT_FOUND live=none",
        );
    }

    #[test]
    fn caller_declining_finds_no_live_call() {
        check(
            Fixture::Ended,
            Input::DeclineByCaller,
            "reply=CALL_NOT_FOUND live=none",
        );
    }

    #[test]
    fn cancelling_twice_finds_no_live_call() {
        check(
            Fixture::Ended,
            Input::CancelByCaller,
            "reply=CALL_NOT_FOUND live=none",
        );
    }

    #[test]
    fn callee_cancelling_finds_no_live_call() {
        check(
            Fixture::Ended,
            Input::CancelByCallee,
            "reply=CALL_NOT_FOUND live=none",
        );
    }

    #[test]
    fn ending_finds_no_live_call() {
        check(
            Fixture::Ended,
            Input::EndByCaller,
            "reply=CALL_NOT_FOUND live=none",
        );
    }

    #[test]
    fn callee_ending_finds_no_live_call() {
        check(
            Fixture::Ended,
            Input::EndByCallee,
            "reply=CALL_NOT_FOUND live=none",
        );
    }

    #[test]
    fn stranger_ending_finds_no_live_call() {
        check(
            Fixture::Ended,
            Input::EndByStranger,
            "reply=CALL_NOT_FOUND live=none",
        );
    }

    #[test]
    fn signaling_finds_no_live_call() {
        check(
            Fixture::Ended,
            Input::OfferFromCaller,
            "reply=CALL_NOT_FOUND live=none",
        );
    }

    #[test]
    fn callee_signaling_finds_no_live_call() {
        check(
            Fixture::Ended,
            Input::OfferFromCallee,
            "reply=CALL_NOT_FOUND live=none",
        );
    }

    #[test]
    fn other_device_signaling_finds_no_live_call() {
        check(
            Fixture::Ended,
            Input::OfferFromCalleeOtherDevice,
            "reply=CALL_NOT_FOUND live=none",
        );
    }

    #[test]
    fn stranger_signaling_finds_no_live_call() {
        check(
            Fixture::Ended,
            Input::OfferFromStranger,
            "reply=CALL_NOT_FOUND live=none",
        );
    }

    #[test]
    fn ring_timeout_does_not_fire_after_the_end() {
        check(Fixture::Ended, Input::RingTimeout, "live=none");
    }

    #[test]
    fn no_grace_after_the_end() {
        check(Fixture::Ended, Input::GraceTimeout, "live=none");
    }

    #[test]
    fn caller_leaving_changes_nothing() {
        check(Fixture::Ended, Input::CallerDisconnects, "live=none");
    }

    #[test]
    fn callee_leaving_changes_nothing() {
        check(Fixture::Ended, Input::CalleeDisconnects, "live=none");
    }

    #[test]
    fn other_device_leaving_changes_nothing() {
        check(
            Fixture::Ended,
            Input::CalleeOtherDeviceDisconnects,
            "live=none",
        );
    }

    #[test]
    fn caller_reconnecting_has_no_active_call() {
        check(
            Fixture::Ended,
            Input::CallerReconnects,
            "close:A1 reply=session(null) live=none",
        );
    }

    #[test]
    fn callee_reconnecting_has_no_active_call() {
        check(
            Fixture::Ended,
            Input::CalleeReconnects,
            "close:B1 reply=session(null) live=none",
        );
    }

    #[test]
    fn new_callee_device_is_not_rung() {
        check(
            Fixture::Ended,
            Input::CalleeNewDevice,
            "reply=session(null) live=none",
        );
    }

    #[test]
    fn shutdown_has_nothing_to_end() {
        check(Fixture::Ended, Input::Shutdown, "live=none");
    }
}

/// A call that was active when the server stopped, restored at the next start with both
/// devices in the reconnect grace (spec "Restarts"). The fixture's B1 and A1 are the devices
/// bound before the restart; B2 is bob's other device, C1 carol.
mod restored {
    use super::*;

    #[test]
    fn caller_coming_back_gets_the_call_and_hears_the_callee_is_still_away() {
        check(
            Fixture::Restored,
            Input::CallerReconnects,
            "reply=session(active) N<peer-reconnecting live=active",
        );
    }

    #[test]
    fn callee_coming_back_gets_the_call_and_hears_the_caller_is_still_away() {
        check(
            Fixture::Restored,
            Input::CalleeReconnects,
            "reply=session(active) N<peer-reconnecting live=active",
        );
    }

    #[test]
    fn another_device_of_a_party_sees_the_call_but_does_not_take_it_over() {
        check(
            Fixture::Restored,
            Input::CalleeNewDevice,
            "reply=session(active) live=active",
        );
    }

    #[test]
    fn nobody_coming_back_within_the_grace_ends_it_as_connection_lost_once() {
        check(
            Fixture::Restored,
            Input::GraceTimeout,
            "log=ended:completed/connection_lost:server live=none",
        );
    }

    #[test]
    fn a_party_can_end_it_from_a_device_not_bound_to_it() {
        check(
            Fixture::Restored,
            Input::EndByCallee,
            "reply=DEVICE_REQUIRED live=active",
        );
    }

    #[test]
    fn stranger_cannot_touch_it() {
        check(
            Fixture::Restored,
            Input::EndByStranger,
            "reply=CALL_NOT_FOUND live=active",
        );
    }

    #[test]
    fn shutdown_again_keeps_it_active() {
        check(Fixture::Restored, Input::Shutdown, "live=active");
    }

    #[test]
    fn the_second_party_coming_back_resumes_it_for_both() {
        check(
            Fixture::RestoredCallerBack,
            Input::CalleeReconnects,
            "reply=session(active) A1<peer-resumed live=active",
        );
    }

    #[test]
    fn the_returned_caller_may_signal_while_the_callee_is_away() {
        check(
            Fixture::RestoredCallerBack,
            Input::OfferFromCaller,
            "reply=ok live=active",
        );
    }

    #[test]
    fn the_callee_not_coming_back_ends_it_for_the_caller() {
        check(
            Fixture::RestoredCallerBack,
            Input::GraceTimeout,
            "log=ended:completed/connection_lost:server A1<ended(completed) live=none",
        );
    }

    #[test]
    fn the_returned_caller_can_hang_up() {
        check(
            Fixture::RestoredCallerBack,
            Input::EndByCaller,
            "log=ended:completed/hangup:alice reply=ok A1<ended(completed) live=none",
        );
    }

    #[test]
    fn the_returned_caller_dropping_again_waits_for_it_again() {
        check(
            Fixture::RestoredCallerBack,
            Input::CallerDisconnects,
            "live=active",
        );
    }

    #[test]
    fn resumed_by_one_side_then_the_other_relays_again_and_ends_once_spanning_the_restart() {
        let before = Fixture::Active.build();
        let answered = before.last_record().expect("recorded").answered_at_ms;
        let (mut h, restored) = before.restart_after(Duration::from_secs(60));
        assert_eq!(
            render(&h, &restored),
            "live=active",
            "restoring writes nothing"
        );
        assert_eq!(
            {
                let out = h.connect(A1);
                render(&h, &out)
            },
            "reply=session(active) A1<peer-reconnecting live=active"
        );
        h.advance(Duration::from_secs(3));
        assert_eq!(
            {
                let out = h.connect(B1);
                render(&h, &out)
            },
            "reply=session(active) A1<peer-resumed live=active"
        );
        assert_eq!(
            {
                let out = h.offer(A1);
                render(&h, &out)
            },
            "reply=ok B1<signal:offer live=active"
        );
        // The grace timers are gone: nothing ends the call by itself any more.
        let later = h.now.after(Duration::from_secs(120));
        assert_eq!(
            {
                let out = h.run_until(later);
                render(&h, &out)
            },
            "live=active"
        );
        let out = h.end(B1);
        assert_eq!(
            render(&h, &out),
            "log=ended:completed/hangup:bob reply=ok A1<ended(completed) B1<ended(completed) live=none"
        );
        let ended = h.last_record().expect("the ending is recorded");
        assert_eq!(ended.answered_at_ms, answered, "one call, answered once");
        // Answered 2 s before the stop, 60 s down, 3 s to reconnect, 120 s after.
        assert_eq!(ended.duration_secs(), 2 + 60 + 3 + 120);
        let endings = h
            .log
            .iter()
            .filter(|o| matches!(o, Output::Persist(r) if r.state == CallState::Ended))
            .count();
        assert_eq!(endings, 1);
    }

    #[test]
    fn a_call_ringing_at_a_crash_ends_missed_with_server_restart() {
        // A crash leaves the ringing record (a graceful stop would have ended it).
        let before = Fixture::Ringing.build();
        let (h, out) = before.restart_after(Duration::from_secs(5));
        assert_eq!(
            render(&h, &out),
            "log=ended:missed/server_restart:server live=none"
        );
        assert_eq!(h.board.live_call_count(), 0);
    }

    #[test]
    fn an_active_record_without_its_devices_cannot_be_resumed_and_is_completed() {
        let before = Fixture::Active.build();
        let mut record = before.last_record().expect("recorded");
        record.callee_device = None;
        let mut h = Harness::new();
        let summary = h.board.restore(vec![record], h.now);
        assert_eq!((summary.restored, summary.closed), (0, 1));
        assert_eq!(
            {
                let out = h.drain();
                render(&h, &out)
            },
            "log=ended:completed/server_restart:server live=none"
        );
    }

    #[test]
    fn the_restore_counts_what_it_restored_and_closed() {
        let active = Fixture::Active.build().last_record().expect("recorded");
        let mut ringing = Fixture::Ringing.build().last_record().expect("recorded");
        ringing.id = CallId("call-2".into());
        ringing.caller = harness::user(CAROL);
        ringing.callee = harness::user(99);
        let mut h = Harness::new();
        let summary = h.board.restore(vec![active, ringing], h.now);
        assert_eq!((summary.restored, summary.closed), (1, 1));
        assert_eq!(h.board.user_status(ALICE), PresenceStatus::Busy);
        assert_eq!(h.board.user_status(CAROL), PresenceStatus::Offline);
    }
}
