//! Payload checks shared by socket events and HTTP bodies. Payloads are read as JSON values and
//! checked field by field, so every refusal names its field (`callId: expected a string`) the
//! same way on both transports.

use parley_call::{CallId, Media, SdpText, SignalPayload};
pub use parley_store::quality::StatsReport;
use serde_json::{Map, Value};

use crate::http::error::{ApiError, Code};

/// Spec limits.
pub const MAX_SDP_BYTES: usize = 64 * 1024;
pub const MAX_CANDIDATE_BYTES: usize = 2 * 1024;
pub const MAX_DECLINE_MESSAGE_CHARS: usize = 140;
/// Call ids are ours (32 hex digits); anything much longer is not one.
const MAX_CALL_ID_BYTES: usize = 128;
const MAX_DEVICE_ID_BYTES: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    Id(i64),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initiate {
    pub to: Recipient,
    pub media: Media,
    pub device_id: Option<String>,
}

fn invalid(field: &str, what: impl std::fmt::Display) -> ApiError {
    ApiError::new(Code::InvalidPayload, format!("{field}: {what}"))
}

/// The event name of a Socket.IO event's data (`["name", ...]`), read from its first bytes only.
/// socketioxide reads the whole data (a JSON array whose first element is a string) before it
/// picks a handler by this name, so a handler only has to find the name again; socketioxide's
/// `Event` extractor scanned the whole packet, 4 KB SDPs included, a second time for it (issue
/// 14). A name with an escape (`"\u00e9"`) comes back as written, as the vendored parser gives
/// it to the fallback handler: no handler's name has one. `None` when the data does not start
/// like an event.
pub fn event_name(data: &str) -> Option<&str> {
    const JSON_WHITESPACE: [char; 4] = [' ', '\t', '\n', '\r'];
    let rest = data.trim_start_matches(JSON_WHITESPACE).strip_prefix('[')?;
    let rest = rest.trim_start_matches(JSON_WHITESPACE).strip_prefix('"')?;
    let mut escaped = false;
    for (offset, byte) in rest.bytes().enumerate() {
        match (escaped, byte) {
            (true, _) => escaped = false,
            (false, b'\\') => escaped = true,
            (false, b'"') => return Some(&rest[..offset]),
            (false, _) => {}
        }
    }
    None
}

/// The payload as an object. Socket.IO clients send the object as the single argument.
pub fn object(value: &Value) -> Result<&Map<String, Value>, ApiError> {
    match value {
        Value::Object(map) => Ok(map),
        Value::Array(items) if items.len() == 1 => object(&items[0]),
        _ => Err(invalid("payload", "expected a JSON object")),
    }
}

fn string_field<'a>(map: &'a Map<String, Value>, field: &str) -> Result<&'a str, ApiError> {
    match map.get(field) {
        Some(Value::String(text)) => Ok(text),
        None | Some(Value::Null) => Err(invalid(field, "missing field")),
        Some(_) => Err(invalid(field, "expected a string")),
    }
}

fn optional_string<'a>(
    map: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(invalid(field, "expected a string")),
    }
}

fn bool_field(map: &Map<String, Value>, field: &str) -> Result<bool, ApiError> {
    match map.get(field) {
        Some(Value::Bool(flag)) => Ok(*flag),
        None | Some(Value::Null) => Err(invalid(field, "missing field")),
        Some(_) => Err(invalid(field, "expected a boolean")),
    }
}

pub fn call_id(map: &Map<String, Value>) -> Result<CallId, ApiError> {
    let id = string_field(map, "callId")?;
    if id.is_empty() || id.len() > MAX_CALL_ID_BYTES {
        return Err(invalid("callId", "not a call id"));
    }
    Ok(CallId(id.to_owned()))
}

/// A call id taken from a URL path.
pub fn path_call_id(id: &str) -> Result<CallId, ApiError> {
    if id.is_empty() || id.len() > MAX_CALL_ID_BYTES {
        return Err(invalid("id", "not a call id"));
    }
    Ok(CallId(id.to_owned()))
}

pub fn device_id(map: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    let device = optional_string(map, "deviceId")?;
    match device {
        Some(d) if d.is_empty() || d.len() > MAX_DEVICE_ID_BYTES => {
            Err(invalid("deviceId", "must be 1 to 128 bytes"))
        }
        other => Ok(other.map(str::to_owned)),
    }
}

pub fn initiate(value: &Value) -> Result<Initiate, ApiError> {
    let map = object(value)?;
    let to = match map.get("to") {
        Some(Value::String(name)) if !name.trim().is_empty() => {
            Recipient::Name(name.trim().to_owned())
        }
        Some(Value::String(_)) => return Err(invalid("to", "empty username")),
        Some(Value::Number(number)) => match number.as_i64() {
            Some(id) => Recipient::Id(id),
            None => return Err(invalid("to", "expected an integer user id or a username")),
        },
        None | Some(Value::Null) => return Err(invalid("to", "missing field")),
        Some(_) => return Err(invalid("to", "expected a user id or a username")),
    };
    let media = match string_field(map, "media")? {
        "audio" => Media::Audio,
        "video" => Media::Video,
        _ => return Err(invalid("media", "expected \"audio\" or \"video\"")),
    };
    Ok(Initiate {
        to,
        media,
        device_id: device_id(map)?,
    })
}

/// `call:decline`'s optional message, at most 140 characters.
pub fn decline_message(map: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    let Some(message) = optional_string(map, "message")? else {
        return Ok(None);
    };
    if message.chars().count() > MAX_DECLINE_MESSAGE_CHARS {
        return Err(invalid("message", "at most 140 characters"));
    }
    let trimmed = message.trim();
    Ok((!trimmed.is_empty()).then(|| trimmed.to_owned()))
}

fn too_large(field: &str, limit: &str) -> ApiError {
    ApiError::new(
        Code::PayloadTooLarge,
        format!("{field}: over the {limit} limit"),
    )
}

pub fn sdp(map: &Map<String, Value>) -> Result<SignalPayload, ApiError> {
    let sdp = string_field(map, "sdp")?;
    if sdp.len() > MAX_SDP_BYTES {
        return Err(too_large("sdp", "64 KiB"));
    }
    Ok(SignalPayload::Sdp {
        sdp: SdpText::from_text(sdp),
    })
}

/// `signal:offer` / `signal:answer` read straight from the event's data
/// (`["signal:offer", { "callId": ..., "sdp": ... }, ...]`), the SDP kept as the JSON text it came
/// in (issue 14: unescaping it into a `serde_json::Value` and escaping it again for the relayed
/// event was 13 % of a call setup's instructions). Only the plain case is taken: an object with
/// exactly `callId` and `sdp`, a usable call id, an SDP within the limit whose escapes serde_json
/// writes the same way. `None` for anything else, which then goes through `object`, `call_id` and
/// [`sdp`] as before, so every refusal and every relayed byte stays what it was.
pub fn sdp_event(data: &str) -> Option<(CallId, SignalPayload)> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Fields<'a> {
        #[serde(rename = "callId")]
        call_id: String,
        #[serde(borrow)]
        sdp: &'a serde_json::value::RawValue,
    }

    /// The event's first argument; the name before it and any later arguments are skipped,
    /// as socketioxide's `TryData` does.
    struct FirstArgument<'a>(Fields<'a>);

    impl<'de> serde::Deserialize<'de> for FirstArgument<'de> {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Arguments;
            impl<'de> serde::de::Visitor<'de> for Arguments {
                type Value = FirstArgument<'de>;

                fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    formatter.write_str("an event with an argument")
                }

                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> Result<Self::Value, A::Error> {
                    use serde::de::{Error, IgnoredAny};
                    seq.next_element::<IgnoredAny>()?
                        .ok_or_else(|| A::Error::custom("no event name"))?;
                    let fields = seq
                        .next_element::<Fields<'de>>()?
                        .ok_or_else(|| A::Error::custom("no argument"))?;
                    while seq.next_element::<IgnoredAny>()?.is_some() {}
                    Ok(FirstArgument(fields))
                }
            }
            deserializer.deserialize_seq(Arguments)
        }
    }

    let FirstArgument(fields) = serde_json::from_str(data).ok()?;
    if fields.call_id.is_empty() || fields.call_id.len() > MAX_CALL_ID_BYTES {
        return None;
    }
    let sdp = SdpText::from_json(fields.sdp)?;
    if sdp.len() > MAX_SDP_BYTES {
        return None;
    }
    Some((CallId(fields.call_id), SignalPayload::Sdp { sdp }))
}

pub fn candidate(map: &Map<String, Value>) -> Result<SignalPayload, ApiError> {
    match map.get("candidate") {
        // `null` is "end of candidates"; a missing field is a client bug.
        None => Err(invalid(
            "candidate",
            "missing field (send null for end of candidates)",
        )),
        Some(Value::Null) => Ok(SignalPayload::Candidate {
            candidate: Value::Null,
        }),
        Some(value @ Value::Object(fields)) => {
            let size = serde_json::to_vec(value)
                .map(|v| v.len())
                .unwrap_or(usize::MAX);
            if size > MAX_CANDIDATE_BYTES {
                return Err(too_large("candidate", "2 KiB"));
            }
            match fields.get("candidate") {
                Some(Value::String(_)) | None => {}
                Some(_) => return Err(invalid("candidate.candidate", "expected a string")),
            }
            Ok(SignalPayload::Candidate {
                candidate: value.clone(),
            })
        }
        Some(_) => Err(invalid(
            "candidate",
            "expected an RTCIceCandidateInit object or null",
        )),
    }
}

pub fn media_state(map: &Map<String, Value>) -> Result<SignalPayload, ApiError> {
    Ok(SignalPayload::Media {
        audio: bool_field(map, "audio")?,
        video: bool_field(map, "video")?,
    })
}

/// The largest `call:stats` payload: a full report is about 500 bytes; this leaves room for
/// fields of newer clients (ignored) without letting a report be a way to make us parse more.
pub const MAX_STATS_BYTES: usize = 4 * 1024;
/// `rttMs` and `jitterMs` bound (one minute: anything longer is not a live call).
pub const MAX_STATS_MS: f64 = 60_000.0;
/// Bitrates above 10 Gbit/s are not a browser's.
pub const MAX_STATS_KBPS: f64 = 10_000_000.0;
/// Video dimensions and freeze counts.
pub const MAX_VIDEO_DIMENSION: f64 = 16_384.0;
pub const MAX_VIDEO_FREEZES: f64 = 1_000_000.0;
pub const MAX_NETWORK_TYPE_CHARS: usize = 32;

/// The `call:stats` report (spec: "Call quality"), checked field by field: a wrong type or an
/// out-of-range value is `INVALID_PAYLOAD` naming the field, a payload over
/// [`MAX_STATS_BYTES`] is `PAYLOAD_TOO_LARGE`, unknown fields are ignored. `callId`, `path`,
/// `rttMs`, `jitterMs`, `lossInPct` and `lossOutPct` are required (the quality verdict needs
/// them); every other field may be absent or `null`. One exception (a Parley extension,
/// docs/api.md): a client whose ICE never selected a candidate pair (`iceState` one of
/// [`NO_PAIR_ICE_STATES`]) has no path and no figures, and may leave out all five.
pub fn call_stats(value: &Value) -> Result<(CallId, StatsReport), ApiError> {
    let size = serde_json::to_vec(value)
        .map(|bytes| bytes.len())
        .unwrap_or(usize::MAX);
    if size > MAX_STATS_BYTES {
        return Err(too_large("payload", "4 KiB"));
    }
    let map = object(value)?;
    let call_id = call_id(map)?;
    let path = one_of(map, "path", &["direct", "relay"])?;
    let ice_state = one_of(map, "iceState", ICE_STATES)?;
    // Without a selected candidate pair there is no path and nothing to measure, but the ICE
    // state and candidate lists still say why the call failed (docs/api.md). Only a state in
    // which no pair can be selected excuses the missing path: a connected client has one.
    let has_pair = path.is_some();
    if !has_pair
        && !ice_state
            .as_deref()
            .is_some_and(|state| NO_PAIR_ICE_STATES.contains(&state))
    {
        return Err(invalid(
            "path",
            format!(
                "missing field (it may be left out only with iceState {})",
                NO_PAIR_ICE_STATES.join(", ")
            ),
        ));
    }
    let figure = |field: &str, max: f64| {
        if has_pair {
            required(map, field, max).map(Some)
        } else {
            bounded(map, field, max)
        }
    };
    let report = StatsReport {
        path,
        local_candidate: one_of(map, "localCandidate", CANDIDATE_TYPES)?,
        remote_candidate: one_of(map, "remoteCandidate", CANDIDATE_TYPES)?,
        relay_protocol: one_of(map, "relayProtocol", &["udp", "tcp", "tls"])?,
        rtt_ms: figure("rttMs", MAX_STATS_MS)?,
        jitter_ms: figure("jitterMs", MAX_STATS_MS)?,
        loss_in_pct: figure("lossInPct", 100.0)?,
        loss_out_pct: figure("lossOutPct", 100.0)?,
        bitrate_in_kbps: bounded(map, "bitrateInKbps", MAX_STATS_KBPS)?,
        bitrate_out_kbps: bounded(map, "bitrateOutKbps", MAX_STATS_KBPS)?,
        audio_concealed_pct: bounded(map, "audioConcealedPct", 100.0)?,
        video_freezes: whole(map, "videoFreezes", MAX_VIDEO_FREEZES)?,
        video_width: whole(map, "videoWidth", MAX_VIDEO_DIMENSION)?,
        video_height: whole(map, "videoHeight", MAX_VIDEO_DIMENSION)?,
        network_type: match optional_string(map, "networkType")? {
            Some(text) if text.chars().count() > MAX_NETWORK_TYPE_CHARS => {
                return Err(invalid("networkType", "at most 32 characters"));
            }
            other => other.map(str::to_owned),
        },
        ice_state,
        local_candidate_types: list_of(map, "localCandidateTypes", CANDIDATE_TYPES)?,
        remote_candidate_types: list_of(map, "remoteCandidateTypes", CANDIDATE_TYPES)?,
        relay_protocols: list_of(map, "relayProtocols", RELAY_PROTOCOLS)?,
    };
    Ok((call_id, report))
}

/// [`call_stats`] from the text of a JSON document (for tools and fuzzing).
pub fn call_stats_str(text: &str) -> Result<(CallId, StatsReport), ApiError> {
    if text.len() > MAX_STATS_BYTES * 2 {
        return Err(too_large("payload", "4 KiB"));
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| invalid("payload", format_args!("malformed JSON: {e}")))?;
    call_stats(&value)
}

const CANDIDATE_TYPES: &[&str] = &["host", "srflx", "prflx", "relay"];
const RELAY_PROTOCOLS: &[&str] = &["udp", "tcp", "tls"];
/// `RTCIceConnectionState`.
const ICE_STATES: &[&str] = &[
    "new",
    "checking",
    "connected",
    "completed",
    "disconnected",
    "failed",
    "closed",
];
/// The ICE states in which a peer connection has no selected candidate pair, so that a report
/// may leave out `path` and the figures.
pub const NO_PAIR_ICE_STATES: &[&str] = &["new", "checking", "failed", "disconnected", "closed"];

/// An optional array of at most `allowed.len()` entries, each one of `allowed` (a Parley
/// extension field: `localCandidateTypes`, `remoteCandidateTypes`, `relayProtocols`). Returned
/// sorted in `allowed`'s order without duplicates, so that equal sets are stored equal.
fn list_of(
    map: &Map<String, Value>,
    field: &str,
    allowed: &[&str],
) -> Result<Option<Vec<String>>, ApiError> {
    let items = match map.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(invalid(field, "expected an array")),
    };
    if items.len() > allowed.len() {
        return Err(invalid(field, format!("at most {} entries", allowed.len())));
    }
    let mut seen = vec![false; allowed.len()];
    for item in items {
        match item
            .as_str()
            .and_then(|text| allowed.iter().position(|a| *a == text))
        {
            Some(index) => seen[index] = true,
            None => {
                return Err(invalid(
                    field,
                    format!("expected entries among {}", allowed.join(", ")),
                ));
            }
        }
    }
    Ok(Some(
        allowed
            .iter()
            .zip(seen)
            .filter(|(_, seen)| *seen)
            .map(|(name, _)| (*name).to_owned())
            .collect(),
    ))
}

/// An optional string field that must be one of `allowed`.
fn one_of(
    map: &Map<String, Value>,
    field: &str,
    allowed: &[&str],
) -> Result<Option<String>, ApiError> {
    match optional_string(map, field)? {
        None => Ok(None),
        Some(text) if allowed.contains(&text) => Ok(Some(text.to_owned())),
        Some(_) => Err(invalid(
            field,
            format!("expected one of {}", allowed.join(", ")),
        )),
    }
}

/// An optional number in `0..=max`.
fn bounded(map: &Map<String, Value>, field: &str, max: f64) -> Result<Option<f64>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(number)) => match number.as_f64() {
            Some(n) if n.is_finite() && (0.0..=max).contains(&n) => Ok(Some(n)),
            _ => Err(invalid(field, format!("expected a number from 0 to {max}"))),
        },
        Some(_) => Err(invalid(field, "expected a number")),
    }
}

fn required(map: &Map<String, Value>, field: &str, max: f64) -> Result<f64, ApiError> {
    bounded(map, field, max)?.ok_or_else(|| invalid(field, "missing field"))
}

/// An optional whole number in `0..=max` (`3.0` counts; `3.5` does not).
fn whole(map: &Map<String, Value>, field: &str, max: f64) -> Result<Option<i64>, ApiError> {
    match bounded(map, field, max)? {
        Some(n) if n.fract() == 0.0 => Ok(Some(n as i64)),
        Some(_) => Err(invalid(field, "expected a whole number")),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(result: Result<impl std::fmt::Debug, ApiError>) -> String {
        let error = result.expect_err("should be refused");
        format!("{} {}", error.code.as_str(), error.message)
    }

    /// What the generic path makes of an event's data: its first argument as a `Value`, then
    /// `object`, `call_id` and `sdp`.
    fn sdp_event_the_long_way(data: &str) -> Result<(CallId, SignalPayload), ApiError> {
        let arguments: Vec<Value> =
            serde_json::from_str(data).map_err(|e| invalid("payload", e))?;
        let first = arguments
            .get(1)
            .ok_or_else(|| invalid("payload", "first element not found"))?;
        let map = object(first)?;
        Ok((call_id(map)?, sdp(map)?))
    }

    #[test]
    fn a_plain_offer_keeps_its_sdp_as_sent() {
        let data = r#"["signal:offer",{"callId":"c1","sdp":"v=0\r\ns=-\r\n"}]"#;
        let (id, payload) = sdp_event(data).expect("the plain case");
        assert_eq!(id, CallId("c1".into()));
        let SignalPayload::Sdp { sdp: text } = &payload else {
            panic!("{payload:?}");
        };
        assert_eq!(text.as_json(), r#""v=0\r\ns=-\r\n""#);
        assert_eq!(text.len(), "v=0\r\ns=-\r\n".len());
        assert_eq!(sdp_event_the_long_way(data).expect("valid"), (id, payload));
    }

    /// The shortcut takes only what the generic path accepts, with the same result, and leaves
    /// everything else (refusals included) to it.
    #[test]
    fn an_sdp_event_the_shortcut_takes_is_what_the_generic_path_makes_of_it() {
        let long_sdp = format!(r#""{}""#, "a".repeat(MAX_SDP_BYTES));
        let too_long_sdp = format!(r#""{}""#, "a".repeat(MAX_SDP_BYTES + 1));
        let escaped_at_limit = format!(r#""{}""#, r"\n".repeat(MAX_SDP_BYTES));
        let cases: Vec<(String, bool)> = vec![
            (
                r#"["signal:answer",{"sdp":"v=0","callId":"c"}]"#.into(),
                true,
            ),
            (
                r#" [ "signal:offer" , { "callId" : "c" , "sdp" : "x" } , 1, {"y":2} ] "#.into(),
                true,
            ),
            (
                format!(r#"["signal:offer",{{"callId":"c","sdp":{long_sdp}}}]"#),
                true,
            ),
            (
                format!(r#"["signal:offer",{{"callId":"c","sdp":{escaped_at_limit}}}]"#),
                true,
            ),
            (r#"["signal:offer",{"callId":"c","sdp":""}]"#.into(), true),
            // Left to the generic path.
            (
                format!(r#"["signal:offer",{{"callId":"c","sdp":{too_long_sdp}}}]"#),
                false,
            ),
            (
                r#"["signal:offer",{"callId":"c","sdp":"a\/b"}]"#.into(),
                false,
            ),
            (
                r#"["signal:offer",{"callId":"c","sdp":"\u0041"}]"#.into(),
                false,
            ),
            (
                r#"["signal:offer",{"callId":"c","sdp":"\ud800"}]"#.into(),
                false,
            ),
            (r#"["signal:offer",{"callId":"c","sdp":7}]"#.into(), false),
            (
                r#"["signal:offer",{"callId":"c","sdp":null}]"#.into(),
                false,
            ),
            (r#"["signal:offer",{"callId":"c"}]"#.into(), false),
            (r#"["signal:offer",{"callId":"","sdp":"x"}]"#.into(), false),
            (r#"["signal:offer",{"callId":7,"sdp":"x"}]"#.into(), false),
            (
                r#"["signal:offer",{"callId":"c","sdp":"x","extra":1e400}]"#.into(),
                false,
            ),
            (
                r#"["signal:offer",{"callId":"c","sdp":"x","sdp":"y"}]"#.into(),
                false,
            ),
            (
                r#"["signal:offer",[{"callId":"c","sdp":"x"}]]"#.into(),
                false,
            ),
            (r#"["signal:offer"]"#.into(), false),
            (r#"["signal:offer","c"]"#.into(), false),
        ];
        for (data, taken) in cases {
            match sdp_event(&data) {
                Some(shortcut) => {
                    assert!(taken, "{data} should be left to the generic path");
                    let long_way = sdp_event_the_long_way(&data).expect("accepted the long way");
                    assert_eq!(shortcut, long_way, "{data}");
                    let (SignalPayload::Sdp { sdp: a }, SignalPayload::Sdp { sdp: b }) =
                        (&shortcut.1, &long_way.1)
                    else {
                        panic!("{data}");
                    };
                    assert_eq!(a.len(), b.len(), "{data}");
                }
                None => assert!(!taken, "{data} should take the shortcut"),
            }
        }
    }

    #[test]
    fn event_name_is_the_first_string_of_the_array() {
        for (data, name) in [
            (r#"["call:accept",{"callId":"c"}]"#, Some("call:accept")),
            (r#"["signal:offer"]"#, Some("signal:offer")),
            (" \r\n[\t \"call:end\" , {}]", Some("call:end")),
            // Escapes stay as written (and match no handler).
            (r#"["a\"b",1]"#, Some(r#"a\"b"#)),
            (r#"["\u00e9",1]"#, Some(r#"\u00e9"#)),
            (r#"["",1]"#, Some("")),
            // Not an event: no name.
            (r#"{"callId":"c"}"#, None),
            (r#"[1,"call:end"]"#, None),
            (r#"["call:end"#, None),
            (r#"["call:end\"#, None),
            ("", None),
            ("[", None),
        ] {
            assert_eq!(event_name(data), name, "{data:?}");
        }
    }

    #[test]
    fn initiate_names_the_bad_field() {
        assert_eq!(
            message(initiate(&json!({"media": "audio"}))),
            "INVALID_PAYLOAD to: missing field"
        );
        assert_eq!(
            message(initiate(&json!({"to": true, "media": "audio"}))),
            "INVALID_PAYLOAD to: expected a user id or a username"
        );
        assert_eq!(
            message(initiate(&json!({"to": "bob", "media": "fax"}))),
            "INVALID_PAYLOAD media: expected \"audio\" or \"video\""
        );
        assert_eq!(
            message(initiate(&json!({"to": "bob", "media": 3}))),
            "INVALID_PAYLOAD media: expected a string"
        );
        assert_eq!(
            message(initiate(&json!("bob"))),
            "INVALID_PAYLOAD payload: expected a JSON object"
        );
        let ok = initiate(&json!([{"to": 7, "media": "video"}])).expect("valid");
        assert_eq!(ok.to, Recipient::Id(7));
    }

    #[test]
    fn limits_are_payload_too_large() {
        let big = "a".repeat(MAX_SDP_BYTES + 1);
        let map = json!({"sdp": big});
        assert!(message(sdp(map.as_object().unwrap())).starts_with("PAYLOAD_TOO_LARGE sdp"));
        let cand = json!({"candidate": {"candidate": "c".repeat(3000)}});
        assert!(
            message(candidate(cand.as_object().unwrap()))
                .starts_with("PAYLOAD_TOO_LARGE candidate")
        );
        let long = json!({"message": "x".repeat(141)});
        assert_eq!(
            message(decline_message(long.as_object().unwrap())),
            "INVALID_PAYLOAD message: at most 140 characters"
        );
        let fine = json!({"message": "é".repeat(140)});
        assert!(decline_message(fine.as_object().unwrap()).is_ok());
    }

    #[test]
    fn end_of_candidates_is_null() {
        let map = json!({"candidate": null});
        assert_eq!(
            candidate(map.as_object().unwrap()).unwrap(),
            SignalPayload::Candidate {
                candidate: Value::Null
            }
        );
        let map = json!({});
        assert!(
            message(candidate(map.as_object().unwrap())).starts_with("INVALID_PAYLOAD candidate")
        );
        let map = json!({"candidate": 5});
        assert!(
            message(candidate(map.as_object().unwrap())).starts_with("INVALID_PAYLOAD candidate")
        );
    }

    fn full_report() -> Value {
        serde_json::json!({
            "callId": "c1", "path": "relay", "localCandidate": "relay", "remoteCandidate": "srflx",
            "relayProtocol": "udp", "rttMs": 42.5, "jitterMs": 3, "lossInPct": 0.5,
            "lossOutPct": 1, "bitrateInKbps": 64, "bitrateOutKbps": 60,
            "audioConcealedPct": 0.1, "videoFreezes": 0, "videoWidth": 1280, "videoHeight": 720,
            "networkType": "wifi", "someFutureField": {"ignored": true},
            "iceState": "connected", "localCandidateTypes": ["relay", "host", "relay"],
            "remoteCandidateTypes": [], "relayProtocols": ["tls", "udp"]
        })
    }

    #[test]
    fn call_stats_reads_a_full_report_and_ignores_unknown_fields() {
        let (id, report) = call_stats(&full_report()).expect("valid");
        assert_eq!(id, CallId("c1".into()));
        assert_eq!(report.path.as_deref(), Some("relay"));
        assert_eq!(report.relay_protocol.as_deref(), Some("udp"));
        assert_eq!(
            (report.rtt_ms, report.loss_out_pct),
            (Some(42.5), Some(1.0))
        );
        assert_eq!(
            (report.video_width, report.video_height),
            (Some(1280), Some(720))
        );
        assert_eq!(report.ice_state.as_deref(), Some("connected"));
        assert_eq!(
            report.local_candidate_types,
            Some(vec!["host".to_owned(), "relay".to_owned()]),
            "sorted, without duplicates"
        );
        assert_eq!(report.remote_candidate_types, Some(vec![]));
        assert_eq!(
            report.relay_protocols,
            Some(vec!["udp".to_owned(), "tls".to_owned()])
        );
        let minimal = json!({"callId": "c1", "path": "direct", "rttMs": 1, "jitterMs": 0,
            "lossInPct": 0, "lossOutPct": 0, "relayProtocol": null, "networkType": null});
        let (_, report) = call_stats(&minimal).expect("optional fields may be null or absent");
        assert_eq!((report.relay_protocol, report.video_freezes), (None, None));
        assert_eq!(
            (report.ice_state, report.local_candidate_types),
            (None, None),
            "the extension fields are optional"
        );
        let text = serde_json::to_string(&full_report()).unwrap();
        assert!(call_stats_str(&text).is_ok());
        assert!(
            message(call_stats_str("{")).starts_with("INVALID_PAYLOAD payload: malformed JSON")
        );
    }

    #[test]
    fn call_stats_names_the_bad_field() {
        let cases: &[(&str, Value, &str)] = &[
            (
                "path",
                json!("carrier-pigeon"),
                "INVALID_PAYLOAD path: expected one of direct, relay",
            ),
            (
                "path",
                Value::Null,
                "INVALID_PAYLOAD path: missing field (it may be left out only with iceState new, \
                 checking, failed, disconnected, closed)",
            ),
            (
                "rttMs",
                json!("fast"),
                "INVALID_PAYLOAD rttMs: expected a number",
            ),
            (
                "rttMs",
                json!(60_001),
                "INVALID_PAYLOAD rttMs: expected a number from 0 to 60000",
            ),
            (
                "jitterMs",
                json!(-1),
                "INVALID_PAYLOAD jitterMs: expected a number from 0 to 60000",
            ),
            (
                "lossInPct",
                json!(100.5),
                "INVALID_PAYLOAD lossInPct: expected a number from 0 to 100",
            ),
            (
                "lossOutPct",
                Value::Null,
                "INVALID_PAYLOAD lossOutPct: missing field",
            ),
            (
                "audioConcealedPct",
                json!(101),
                "INVALID_PAYLOAD audioConcealedPct: expected a number from 0 to 100",
            ),
            (
                "videoFreezes",
                json!(1.5),
                "INVALID_PAYLOAD videoFreezes: expected a whole number",
            ),
            (
                "videoWidth",
                json!(true),
                "INVALID_PAYLOAD videoWidth: expected a number",
            ),
            (
                "localCandidate",
                json!("moon"),
                "INVALID_PAYLOAD localCandidate: expected one of host, srflx, prflx, relay",
            ),
            (
                "relayProtocol",
                json!("quic"),
                "INVALID_PAYLOAD relayProtocol: expected one of udp, tcp, tls",
            ),
            (
                "networkType",
                json!(5),
                "INVALID_PAYLOAD networkType: expected a string",
            ),
            (
                "networkType",
                json!("x".repeat(33)),
                "INVALID_PAYLOAD networkType: at most 32 characters",
            ),
            (
                "callId",
                json!(7),
                "INVALID_PAYLOAD callId: expected a string",
            ),
            (
                "iceState",
                json!("melted"),
                "INVALID_PAYLOAD iceState: expected one of new, checking, connected, completed, \
                 disconnected, failed, closed",
            ),
            (
                "localCandidateTypes",
                json!("host"),
                "INVALID_PAYLOAD localCandidateTypes: expected an array",
            ),
            (
                "remoteCandidateTypes",
                json!(["host", "moon"]),
                "INVALID_PAYLOAD remoteCandidateTypes: expected entries among host, srflx, prflx, \
                 relay",
            ),
            (
                "localCandidateTypes",
                json!(["host", "host", "host", "host", "host"]),
                "INVALID_PAYLOAD localCandidateTypes: at most 4 entries",
            ),
            (
                "relayProtocols",
                json!(["udp", "tcp", "tls", "udp"]),
                "INVALID_PAYLOAD relayProtocols: at most 3 entries",
            ),
            (
                "relayProtocols",
                json!([7]),
                "INVALID_PAYLOAD relayProtocols: expected entries among udp, tcp, tls",
            ),
        ];
        for (field, bad, expected) in cases {
            let mut report = full_report();
            report[*field] = bad.clone();
            assert_eq!(&message(call_stats(&report)), expected, "{field} = {bad}");
        }
        assert_eq!(
            message(call_stats(&json!([1, 2]))),
            "INVALID_PAYLOAD payload: expected a JSON object"
        );
    }

    /// What a browser whose ICE failed before any candidate pair was selected can say.
    fn never_connected(ice_state: &str) -> Value {
        json!({"callId": "c1", "iceState": ice_state, "localCandidateTypes": ["host"],
            "remoteCandidateTypes": ["host", "srflx"], "relayProtocols": []})
    }

    #[test]
    fn a_report_without_a_pair_needs_no_path_nor_figures() {
        for state in NO_PAIR_ICE_STATES {
            let (_, report) = call_stats(&never_connected(state)).expect(state);
            assert_eq!(report.path, None, "{state}");
            assert_eq!(report.ice_state.as_deref(), Some(*state));
        }
        let (_, report) = call_stats(&never_connected("failed")).unwrap();
        assert_eq!(
            (
                report.rtt_ms,
                report.jitter_ms,
                report.loss_in_pct,
                report.loss_out_pct
            ),
            (None, None, None, None)
        );
        assert_eq!(report.local_candidate_types, Some(vec!["host".to_owned()]));
        assert_eq!(report.relay_protocols, Some(vec![]));
        let mut nulls = never_connected("failed");
        for field in ["path", "rttMs", "jitterMs", "lossInPct", "lossOutPct"] {
            nulls[field] = Value::Null;
        }
        assert!(call_stats(&nulls).is_ok(), "null is as good as absent");
        let mut out_of_range = never_connected("checking");
        out_of_range["rttMs"] = json!(-1);
        assert_eq!(
            message(call_stats(&out_of_range)),
            "INVALID_PAYLOAD rttMs: expected a number from 0 to 60000",
            "a figure that is given is still checked"
        );
    }

    #[test]
    fn a_report_without_a_path_is_refused_naming_path_unless_ice_had_no_pair() {
        for state in ["connected", "completed"] {
            assert!(
                message(call_stats(&never_connected(state)))
                    .starts_with("INVALID_PAYLOAD path: missing field"),
                "{state}"
            );
        }
        let mut no_state = never_connected("failed");
        no_state.as_object_mut().unwrap().remove("iceState");
        assert!(message(call_stats(&no_state)).starts_with("INVALID_PAYLOAD path: missing field"));
        let mut with_path = never_connected("failed");
        with_path["path"] = json!("relay");
        assert_eq!(
            message(call_stats(&with_path)),
            "INVALID_PAYLOAD rttMs: missing field",
            "with a path, the figures stay required whatever the ICE state"
        );
    }

    #[test]
    fn an_oversized_report_is_payload_too_large() {
        let mut report = full_report();
        report["padding"] = json!("p".repeat(MAX_STATS_BYTES));
        assert_eq!(
            message(call_stats(&report)),
            "PAYLOAD_TOO_LARGE payload: over the 4 KiB limit"
        );
    }
}
