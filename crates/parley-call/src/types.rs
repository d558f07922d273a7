//! Plain data shared by the switchboard, its outputs and the daemon shell.

use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// A user's database id.
pub type UserId = i64;

/// An opaque call id chosen by the shell (the core never invents ids, so tests stay deterministic).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CallId(pub String);

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One connected socket, numbered by the shell. A device is the (user, deviceId) pair; a
/// connection is the socket that currently speaks for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Ties a `Reply` output to the command that asked for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestId(pub u64);

/// The moment an input happens. The shell reads both clocks once per input; the core never does.
/// `instant` drives timers, `unix_ms` is what gets written into call records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    pub instant: Instant,
    pub unix_ms: i64,
}

impl Now {
    /// The same clock `d` later (used by tests and by the shell when it fires a timer late).
    pub fn after(self, d: std::time::Duration) -> Now {
        Now {
            instant: self.instant + d,
            unix_ms: self.unix_ms + d.as_millis() as i64,
        }
    }
}

/// A client's `deviceId`, as the connection's holders share it: the socket's own record, its
/// place among its user's devices, the switchboard's connection and device index and a live
/// call's binding each hold this one allocation for the connection's life, where each held a
/// copy of the string before (four allocations per idle connection, issue 14).
pub type DeviceId = std::sync::Arc<str>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserInfo {
    pub id: UserId,
    pub username: String,
    pub display_name: String,
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = crate::Error;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                match text {
                    $($text => Ok($name::$variant),)+
                    _ => Err(crate::Error::UnknownValue {
                        kind: stringify!($name),
                        value: text.to_owned(),
                    }),
                }
            }
        }
    };
}

string_enum!(
    /// What the call carries; decides nothing in the core but is part of every record.
    Media { Audio => "audio", Video => "video" }
);
string_enum!(
    CallState { Ringing => "ringing", Active => "active", Ended => "ended" }
);
string_enum!(
    /// How an ended call turned out (spec: `status`).
    Status {
        Completed => "completed",
        Declined => "declined",
        Cancelled => "cancelled",
        Missed => "missed",
        Busy => "busy",
    }
);
string_enum!(
    /// Why a call ended (spec: `reason`).
    Reason {
        Hangup => "hangup",
        Declined => "declined",
        Cancelled => "cancelled",
        NoAnswer => "no_answer",
        Offline => "offline",
        Busy => "busy",
        ConnectionLost => "connection_lost",
        ServerShutdown => "server_shutdown",
        ServerRestart => "server_restart",
    }
);
string_enum!(
    /// A user's status in the directory and in `presence:update`.
    PresenceStatus { Online => "online", Busy => "busy", Offline => "offline" }
);

/// Everything the call log keeps about one call; a `Persist` output carries a full snapshot so
/// the store can upsert without knowing the state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRecord {
    pub id: CallId,
    pub caller: UserInfo,
    pub callee: UserInfo,
    pub media: Media,
    pub state: CallState,
    pub status: Option<Status>,
    pub reason: Option<Reason>,
    /// The user whose action ended the call; `None` when the server ended it.
    pub ended_by: Option<UserId>,
    /// The callee's decline message, at most 140 characters (checked by the shell).
    pub message: Option<String>,
    pub created_at_ms: i64,
    pub answered_at_ms: Option<i64>,
    pub ended_at_ms: Option<i64>,
    /// The `deviceId` the call is bound to on the caller's side (the device that started it).
    /// Kept in the log so that a restart can restore the call to the same devices.
    pub caller_device: Option<String>,
    /// The callee's device that accepted the call; `None` until then.
    pub callee_device: Option<String>,
}

impl CallRecord {
    /// Whole seconds from answer to end; 0 for a call that was never answered or is still live.
    pub fn duration_secs(&self) -> i64 {
        match (self.answered_at_ms, self.ended_at_ms) {
            (Some(answered), Some(ended)) if ended > answered => (ended - answered) / 1000,
            _ => 0,
        }
    }

    pub fn is_party(&self, user: UserId) -> bool {
        self.caller.id == user || self.callee.id == user
    }

    /// The `Call` object of the protocol.
    pub fn view(&self) -> CallView {
        CallView {
            id: self.id.clone(),
            caller: self.caller.clone(),
            callee: self.callee.clone(),
            media: self.media,
            state: self.state,
            status: self.status,
            reason: self.reason,
            created_at: rfc3339(self.created_at_ms),
            answered_at: self.answered_at_ms.map(rfc3339),
            ended_at: self.ended_at_ms.map(rfc3339),
            duration_secs: self.duration_secs(),
        }
    }
}

/// The protocol's `Call` object, ready to serialize.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallView {
    pub id: CallId,
    pub caller: UserInfo,
    pub callee: UserInfo,
    pub media: Media,
    pub state: CallState,
    pub status: Option<Status>,
    pub reason: Option<Reason>,
    pub created_at: String,
    pub answered_at: Option<String>,
    pub ended_at: Option<String>,
    pub duration_secs: i64,
}

/// Unix milliseconds as RFC 3339 UTC with millisecond precision, e.g. `2026-11-21T11:05:28.123Z`.
pub fn rfc3339(unix_ms: i64) -> String {
    let nanos = i128::from(unix_ms) * 1_000_000;
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|moment| moment.format(&format).ok())
        // Only years outside -9999..=9999 fail, which no clock produces; keep a readable value.
        .unwrap_or_else(|| format!("@{unix_ms}ms"))
}
