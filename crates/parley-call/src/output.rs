//! What the switchboard asks the shell to do: the outputs, the events clients receive, and the
//! crate's error type.

use serde::Serialize;

use crate::types::{
    CallId, CallRecord, CallView, ConnId, PresenceStatus, Reason, RequestId, Status, UserId,
};

/// One thing for the shell to carry out, in the order given. The shell must finish a `Persist`
/// before it sends any later `Reply`, so an acknowledged action is always in the call log.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Send `event` to one socket.
    Emit { conn: ConnId, event: Event },
    /// Send `event` to every connected socket (presence).
    Broadcast { event: Event },
    /// Answer the command with this request id.
    Reply {
        request: RequestId,
        result: Result<Reply, Error>,
    },
    /// Write this snapshot of a call to the log (insert or update by id).
    Persist(CallRecord),
    /// Close this socket: a newer socket took over its device, or its session was revoked.
    Disconnect { conn: ConnId },
}

/// A successful answer to a command.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// The call after the action (initiate, accept, decline, cancel, end).
    Call(CallView),
    /// A connection was registered; `active_call` is the user's live call for the `session` event.
    Connected { active_call: Option<CallView> },
    /// A signaling message was relayed (or dropped because the peer is reconnecting).
    Relayed,
}

/// Events for clients. Serializes to the event's payload; `name()` is the Socket.IO event name.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged, rename_all_fields = "camelCase")]
pub enum Event {
    Incoming { call: CallView },
    Accepted { call: CallView },
    AnsweredElsewhere { call_id: CallId },
    Ended(Ended),
    PeerReconnecting { call_id: CallId },
    PeerResumed { call_id: CallId },
    Signal(Signal),
    Presence { changes: Vec<PresenceChange> },
}

impl Event {
    pub fn name(&self) -> &'static str {
        match self {
            Event::Incoming { .. } => "call:incoming",
            Event::Accepted { .. } => "call:accepted",
            Event::AnsweredElsewhere { .. } => "call:answered-elsewhere",
            Event::Ended(_) => "call:ended",
            Event::PeerReconnecting { .. } => "call:peer-reconnecting",
            Event::PeerResumed { .. } => "call:peer-resumed",
            Event::Signal(signal) => signal.kind.event_name(),
            Event::Presence { .. } => "presence:update",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ended {
    pub call_id: CallId,
    pub status: Status,
    pub reason: Reason,
    pub ended_by: Option<UserId>,
    pub duration_secs: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignalKind {
    Offer,
    Answer,
    Ice,
    MediaState,
}

impl SignalKind {
    pub const ALL: &'static [SignalKind] = &[
        SignalKind::Offer,
        SignalKind::Answer,
        SignalKind::Ice,
        SignalKind::MediaState,
    ];

    pub fn event_name(self) -> &'static str {
        match self {
            SignalKind::Offer => "signal:offer",
            SignalKind::Answer => "signal:answer",
            SignalKind::Ice => "signal:ice",
            SignalKind::MediaState => "media:state",
        }
    }
}

/// A relayed signaling message. `from` is filled in by the switchboard from the sender's
/// connection, never copied from the client.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Signal {
    #[serde(skip)]
    pub kind: SignalKind,
    pub call_id: CallId,
    pub from: UserId,
    #[serde(flatten)]
    pub payload: SignalPayload,
}

/// The part of a signaling message the server does not interpret. The shell has already checked
/// types and sizes.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum SignalPayload {
    Sdp {
        sdp: SdpText,
    },
    /// An `RTCIceCandidateInit` object, or JSON `null` for end of candidates.
    Candidate {
        candidate: serde_json::Value,
    },
    Media {
        audio: bool,
        video: bool,
    },
}

/// An SDP kept as the JSON string it arrived as (quotes and escapes included), so relaying it
/// copies the bytes instead of unescaping 4 KB into a `String` and escaping it again for the
/// relayed event: that was 13 % of the instructions of a call setup (docs/benchmarks.md, issue
/// 14). The relayed text is byte for byte what serialising the unescaped SDP would write, because
/// [`SdpText::from_json`] takes only strings whose escapes serde_json writes the same way.
#[derive(Clone, Debug)]
pub struct SdpText {
    json: Box<serde_json::value::RawValue>,
    /// The SDP's length in bytes once unescaped (the spec's 64 KiB limit is on this).
    len: usize,
}

impl SdpText {
    /// The SDP `text`, as the JSON string serde_json writes for it.
    pub fn from_text(text: &str) -> SdpText {
        let json =
            serde_json::value::to_raw_value(text).expect("a string always serialises to JSON");
        SdpText {
            json,
            len: text.len(),
        }
    }

    /// `json` as it came, if it is a JSON string whose only escapes are the ones serde_json
    /// writes itself (`\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`). `None` for anything else
    /// (not a string, `\u` or `\/` escapes): the caller then unescapes and uses
    /// [`SdpText::from_text`], which writes the text the way it always did.
    pub fn from_json(json: &serde_json::value::RawValue) -> Option<SdpText> {
        // Valid JSON (a `RawValue` is): a string has no raw quote or control character inside,
        // so only its escapes need a look. `find` is a memchr, not a loop over every byte.
        let inner = json.get().strip_prefix('"')?.strip_suffix('"')?;
        let mut escapes = 0;
        let mut rest = inner;
        while let Some(at) = rest.find('\\') {
            match rest.as_bytes().get(at + 1) {
                Some(b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't') => escapes += 1,
                _ => return None,
            }
            // Both bytes are ASCII, so `at + 2` is a character boundary.
            rest = &rest[at + 2..];
        }
        Some(SdpText {
            json: json.to_owned(),
            len: inner.len() - escapes,
        })
    }

    /// The SDP's length in bytes (unescaped).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The JSON string, quotes included.
    pub fn as_json(&self) -> &str {
        self.json.get()
    }
}

impl PartialEq for SdpText {
    fn eq(&self, other: &SdpText) -> bool {
        self.as_json() == other.as_json()
    }
}

impl Serialize for SdpText {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.json.serialize(serializer)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceChange {
    pub user_id: UserId,
    pub status: PresenceStatus,
}

/// The protocol's error codes (spec: "Replies and errors"): the one definition that the
/// switchboard's refusals, the Socket.IO replies and the HTTP error bodies all use, so a new
/// code cannot drift between them. The HTTP status is a plain number because this crate knows
/// nothing of HTTP libraries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Code {
    Unauthorized,
    Forbidden,
    UserNotFound,
    CallNotFound,
    InvalidPayload,
    SelfCall,
    UsernameTaken,
    RecipientOffline,
    RecipientBusy,
    CallerBusy,
    InvalidState,
    DeviceRequired,
    PayloadTooLarge,
    RateLimited,
    NotFound,
    Internal,
}

impl Code {
    /// Every code, in the spec's table order.
    pub const ALL: &'static [Code] = &[
        Code::Unauthorized,
        Code::Forbidden,
        Code::UserNotFound,
        Code::CallNotFound,
        Code::InvalidPayload,
        Code::SelfCall,
        Code::UsernameTaken,
        Code::RecipientOffline,
        Code::RecipientBusy,
        Code::CallerBusy,
        Code::InvalidState,
        Code::DeviceRequired,
        Code::PayloadTooLarge,
        Code::RateLimited,
        Code::NotFound,
        Code::Internal,
    ];

    /// The code as it appears on the wire, e.g. `"INVALID_PAYLOAD"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Unauthorized => "UNAUTHORIZED",
            Code::Forbidden => "FORBIDDEN",
            Code::UserNotFound => "USER_NOT_FOUND",
            Code::CallNotFound => "CALL_NOT_FOUND",
            Code::InvalidPayload => "INVALID_PAYLOAD",
            Code::SelfCall => "SELF_CALL",
            Code::UsernameTaken => "USERNAME_TAKEN",
            Code::RecipientOffline => "RECIPIENT_OFFLINE",
            Code::RecipientBusy => "RECIPIENT_BUSY",
            Code::CallerBusy => "CALLER_BUSY",
            Code::InvalidState => "INVALID_STATE",
            Code::DeviceRequired => "DEVICE_REQUIRED",
            Code::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Code::RateLimited => "RATE_LIMITED",
            Code::NotFound => "NOT_FOUND",
            Code::Internal => "INTERNAL",
        }
    }

    /// The HTTP status the spec gives the code.
    pub fn http_status(self) -> u16 {
        match self {
            Code::Unauthorized => 401,
            Code::Forbidden => 403,
            Code::UserNotFound | Code::CallNotFound | Code::NotFound => 404,
            Code::InvalidPayload | Code::SelfCall => 400,
            Code::UsernameTaken
            | Code::RecipientOffline
            | Code::RecipientBusy
            | Code::CallerBusy
            | Code::InvalidState
            | Code::DeviceRequired => 409,
            Code::PayloadTooLarge => 413,
            Code::RateLimited => 429,
            Code::Internal => 500,
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the switchboard refused a command, or a value it could not parse. Each refusal maps to one
/// protocol error code (`error_code()`); the message is what the client sees.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("call not found")]
    CallNotFound,
    #[error("you cannot call yourself")]
    SelfCall,
    #[error("you are already in a call; end it before starting another")]
    CallerBusy,
    #[error("the recipient has no connected device; the attempt was logged as missed")]
    RecipientOffline,
    #[error("the recipient is in another call; the attempt was logged")]
    RecipientBusy,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    InvalidState(&'static str),
    #[error("{0}")]
    DeviceRequired(&'static str),
    #[error("unknown {kind} value {value:?}; the call log may come from a newer version")]
    UnknownValue { kind: &'static str, value: String },
    /// The call log could not record the change (the shell refuses it: never acknowledged
    /// unrecorded). The client sees `INTERNAL`; the server log has the database error.
    #[error("the server could not record this change; try again later")]
    NotRecorded,
}

impl Error {
    /// The protocol error code.
    pub fn error_code(&self) -> Code {
        match self {
            Error::CallNotFound => Code::CallNotFound,
            Error::SelfCall => Code::SelfCall,
            Error::CallerBusy => Code::CallerBusy,
            Error::RecipientOffline => Code::RecipientOffline,
            Error::RecipientBusy => Code::RecipientBusy,
            Error::Forbidden(_) => Code::Forbidden,
            Error::InvalidState(_) => Code::InvalidState,
            Error::DeviceRequired(_) => Code::DeviceRequired,
            Error::UnknownValue { .. } | Error::NotRecorded => Code::Internal,
        }
    }

    /// The protocol error code as on the wire.
    pub fn code(&self) -> &'static str {
        self.error_code().as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::{CallId, Code, SdpText, Signal, SignalKind, SignalPayload};

    #[test]
    fn every_code_serialises_as_its_wire_name() {
        for code in Code::ALL {
            let json = serde_json::to_value(code).expect("a unit variant serialises");
            assert_eq!(json, code.as_str());
            assert_eq!(code.to_string(), code.as_str());
        }
        assert_eq!(Code::ALL.len(), 16, "the spec's table has 16 codes");
    }

    #[test]
    fn statuses_follow_the_spec_table() {
        assert_eq!(Code::InvalidPayload.http_status(), 400);
        assert_eq!(Code::PayloadTooLarge.http_status(), 413);
        assert_eq!(Code::RateLimited.http_status(), 429);
        assert_eq!(Code::CallNotFound.http_status(), 404);
        assert_eq!(Code::DeviceRequired.http_status(), 409);
        assert_eq!(Code::Internal.http_status(), 500);
    }

    fn raw(json: &str) -> Box<serde_json::value::RawValue> {
        serde_json::value::RawValue::from_string(json.to_owned()).expect("valid JSON")
    }

    /// What the relayed event carries must be what serialising the unescaped SDP writes, for
    /// every SDP the fast path takes (issue 14: the bytes are copied, not re-escaped).
    #[test]
    fn an_sdp_taken_as_json_is_relayed_as_serde_json_writes_it() {
        for text in [
            "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\n",
            "quote \" backslash \\ tab \t bell-free \u{8}\u{c} é ☎",
            "",
        ] {
            let written = serde_json::to_string(text).unwrap();
            let taken = SdpText::from_json(&raw(&written)).expect("serde_json's own escapes");
            assert_eq!(taken.as_json(), written);
            assert_eq!(taken.len(), text.len());
            assert_eq!(taken, SdpText::from_text(text));
            assert_eq!(serde_json::to_string(&taken).unwrap(), written);
        }
    }

    #[test]
    fn an_sdp_with_escapes_serde_json_would_write_otherwise_is_not_taken_as_json() {
        for json in [
            r#""a\/b""#,
            r#""\u0041""#,
            r#""\ud83d\ude00""#,
            "17",
            "null",
            r#"{"a":1}"#,
        ] {
            assert_eq!(SdpText::from_json(&raw(json)), None, "{json}");
        }
    }

    #[test]
    fn a_signal_with_an_sdp_serialises_its_text_unchanged() {
        let signal = Signal {
            kind: SignalKind::Offer,
            call_id: CallId("c1".into()),
            from: 7,
            payload: SignalPayload::Sdp {
                sdp: SdpText::from_json(&raw(r#""v=0\r\n""#)).unwrap(),
            },
        };
        assert_eq!(
            serde_json::to_string(&signal).unwrap(),
            r#"{"callId":"c1","from":7,"sdp":"v=0\r\n"}"#
        );
    }
}
