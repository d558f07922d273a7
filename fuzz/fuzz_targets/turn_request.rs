//! One datagram, STUN/TURN or anything, through the relay's request checks in front of the
//! `turn` server (credentials, nonce, peer policy, quotas): `parley_turn::fuzzing::request`.
//! A message with MESSAGE-INTEGRITY and an even first transaction-id byte is re-signed there
//! with valid credentials, so the checks behind authentication are reached too.
//!
//! Property checked: no panic (the entry point asserts what its frames must satisfy).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    parley_turn::fuzzing::request(data);
});
