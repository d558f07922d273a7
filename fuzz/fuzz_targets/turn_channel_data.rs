//! One ChannelData message (RFC 8656 section 12) through the same path:
//! `parley_turn::fuzzing::channel_data` forces the first two bits to 0b01.
//!
//! Property checked: no panic (the entry point asserts what its frames must satisfy).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    parley_turn::fuzzing::channel_data(data);
});
