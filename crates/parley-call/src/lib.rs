//! The call core of Parley, sans I/O: no sockets, no database, no clock.
//!
//! The daemon feeds a [`Switchboard`] socket events, HTTP requests, timer expiries and
//! disconnects through its `handle_*` methods, each stamped with a [`Now`], then drains
//! [`Output`]s with `poll_output` and carries them out in order. `poll_timeout` names the next
//! deadline. Because time only enters through arguments, tests run a 30 s ring timeout in
//! microseconds.

mod devices;
mod output;
mod rate;
mod switchboard;
mod types;

pub use output::{
    Code, Ended, Error, Event, Output, PresenceChange, Reply, SdpText, Signal, SignalKind,
    SignalPayload,
};
pub use rate::TokenBucket;
pub use switchboard::{
    Config, Origin, PRESENCE_CHANGES_PER_EVENT, PRESENCE_WINDOW, Restored, Side, Switchboard, Timer,
};
pub use types::{
    CallId, CallRecord, CallState, CallView, ConnId, DeviceId, Media, Now, PresenceStatus, Reason,
    RequestId, Status, UserId, UserInfo, rfc3339,
};
