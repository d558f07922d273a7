//! Every Socket.IO event payload decoder (`parleyd::calls::payload`) on arbitrary JSON.
//!
//! socketioxide hands the handlers a `serde_json::Value`; this target parses the fuzz input the
//! same way (serde_json) and feeds the value to every decoder, as if it had arrived as each event
//! in turn. The HTTP call routes use the same decoders (see `http_api` for the whole route).
//!
//! Properties checked: no panic; every refusal is `INVALID_PAYLOAD` or `PAYLOAD_TOO_LARGE` with a
//! message that starts with the field it names; whatever is accepted is within the spec's limits;
//! `event_name` finds the name socketioxide reads from a whole event packet's data.

#![no_main]

use libfuzzer_sys::fuzz_target;
use parleyd::calls::payload::{self, Recipient};
use parleyd::http::error::{ApiError, Code};
use serde_json::Value;

/// A refusal is one of the two payload codes and names a field: `field: what is wrong`.
fn check_refusal(error: &ApiError) {
    assert!(
        matches!(error.code, Code::InvalidPayload | Code::PayloadTooLarge),
        "unexpected code {:?}: {}",
        error.code,
        error.message
    );
    let (field, what) = error
        .message
        .split_once(": ")
        .unwrap_or_else(|| panic!("refusal without a field: {:?}", error.message));
    assert!(!field.is_empty() && !what.is_empty(), "{:?}", error.message);
}

fn check<T>(result: Result<T, ApiError>, accepted: impl FnOnce(T)) {
    match result {
        Ok(value) => accepted(value),
        Err(error) => check_refusal(&error),
    }
}

fn check_device(device: &Option<String>) {
    if let Some(device) = device {
        assert!((1..=128).contains(&device.len()), "deviceId {device:?}");
    }
}

/// An accepted `call:stats` report is within the spec's bounds, and its verdict computes.
fn check_report((id, report): (parley_call::CallId, payload::StatsReport)) {
    // Parley's extension lists: bounded, known entries only, sorted without duplicates.
    for (list, allowed) in [
        (
            &report.local_candidate_types,
            &["host", "srflx", "prflx", "relay"][..],
        ),
        (
            &report.remote_candidate_types,
            &["host", "srflx", "prflx", "relay"][..],
        ),
        (&report.relay_protocols, &["udp", "tcp", "tls"][..]),
    ] {
        if let Some(list) = list {
            let positions: Vec<usize> = list
                .iter()
                .map(|item| {
                    allowed
                        .iter()
                        .position(|a| a == item)
                        .expect("a known entry")
                })
                .collect();
            assert!(positions.windows(2).all(|w| w[0] < w[1]), "{report:?}");
        }
    }
    assert!((1..=128).contains(&id.0.len()), "callId {:?}", id.0);
    match &report.path {
        Some(path) => {
            assert!(["direct", "relay"].contains(&path.as_str()), "{report:?}");
            // With a path, the verdict's figures are always there.
            assert!(
                parley_store::quality::Quality::of(&report).is_some(),
                "{report:?}"
            );
        }
        // Without one, only an ICE state that has no selected pair excuses it.
        None => assert!(
            report
                .ice_state
                .as_deref()
                .is_some_and(|state| payload::NO_PAIR_ICE_STATES.contains(&state)),
            "{report:?}"
        ),
    }
    for value in [report.rtt_ms, report.jitter_ms].into_iter().flatten() {
        assert!((0.0..=payload::MAX_STATS_MS).contains(&value), "{report:?}");
    }
    for value in [report.loss_in_pct, report.loss_out_pct]
        .into_iter()
        .flatten()
        .chain(report.audio_concealed_pct)
    {
        assert!((0.0..=100.0).contains(&value), "{report:?}");
    }
    for value in report
        .bitrate_in_kbps
        .into_iter()
        .chain(report.bitrate_out_kbps)
    {
        assert!(
            (0.0..=payload::MAX_STATS_KBPS).contains(&value),
            "{report:?}"
        );
    }
    for value in [
        report.video_freezes,
        report.video_width,
        report.video_height,
    ]
    .into_iter()
    .flatten()
    {
        assert!(value >= 0, "{report:?}");
    }
    if let Some(network) = &report.network_type {
        assert!(network.chars().count() <= payload::MAX_NETWORK_TYPE_CHARS);
    }
    let _ = parley_store::quality::Quality::of(&report);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        // A URL path segment is the one place a call id arrives as text, not JSON.
        check(payload::path_call_id(text), |id| {
            assert!((1..=128).contains(&id.0.len()));
        });
        // The report decoder that takes the JSON text itself.
        check(payload::call_stats_str(text), check_report);
        // The event name read from the data's first bytes (socket handlers) is the first
        // element that socketioxide matched handlers against, escapes left as written.
        if let Ok(Value::Array(items)) = serde_json::from_str::<Value>(text)
            && let Some(Value::String(first)) = items.first()
        {
            let name = payload::event_name(text).expect("an array that starts with a string");
            if !name.contains('\\') {
                assert_eq!(name, first);
            }
        }
    }
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };

    // call:stats.
    check(payload::call_stats(&value), check_report);

    // call:initiate (and POST /api/v1/calls).
    check(payload::initiate(&value), |initiate| {
        if let Recipient::Name(name) = &initiate.to {
            assert!(!name.is_empty() && name.trim() == name, "to {name:?}");
        }
        check_device(&initiate.device_id);
    });

    // Every other event is an object with a callId, then its own fields.
    let map = match payload::object(&value) {
        Ok(map) => map,
        Err(error) => return check_refusal(&error),
    };
    check(payload::call_id(map), |id| {
        assert!((1..=128).contains(&id.0.len()), "callId {:?}", id.0);
    });
    check(payload::device_id(map), |device| check_device(&device));
    check(payload::decline_message(map), |message| {
        if let Some(message) = message {
            assert!(!message.is_empty() && message.trim() == message);
            assert!(message.chars().count() <= payload::MAX_DECLINE_MESSAGE_CHARS);
        }
    });
    check(payload::sdp(map), |signal| match signal {
        parley_call::SignalPayload::Sdp { sdp } => {
            assert!(sdp.len() <= payload::MAX_SDP_BYTES)
        }
        other => panic!("sdp decoded as {other:?}"),
    });
    check(payload::candidate(map), |signal| match signal {
        parley_call::SignalPayload::Candidate { candidate } => {
            let size = serde_json::to_vec(&candidate)
                .expect("a Value serialises")
                .len();
            assert!(
                size <= payload::MAX_CANDIDATE_BYTES,
                "candidate of {size} bytes"
            );
        }
        other => panic!("candidate decoded as {other:?}"),
    });
    check(payload::media_state(map), |signal| {
        assert!(matches!(signal, parley_call::SignalPayload::Media { .. }));
    });
});
