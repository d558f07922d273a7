//! Payload checks shared by socket events and HTTP bodies. Payloads are read as JSON values and
//! checked field by field, so every refusal names its field (`callId: expected a string`) the
//! same way on both transports.

use parley_call::{CallId, Media, SignalPayload};
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

fn invalid(field: &str, what: &str) -> ApiError {
    ApiError::new(Code::InvalidPayload, format!("{field}: {what}"))
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
        sdp: sdp.to_owned(),
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(result: Result<impl std::fmt::Debug, ApiError>) -> String {
        let error = result.expect_err("should be refused");
        format!("{} {}", error.code.as_str(), error.message)
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
}
