//! The TURN-over-TCP/TLS framer that cuts a byte stream into STUN messages and ChannelData
//! frames (RFC 8656 section 12.5, with padding): `parley_turn::fuzzing::stream_framing`. The first
//! byte sets the size of the chunks the rest arrives in, as TCP may split it anywhere.
//!
//! Property checked: no panic (the entry point asserts what its frames must satisfy).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    parley_turn::fuzzing::stream_framing(data);
});
