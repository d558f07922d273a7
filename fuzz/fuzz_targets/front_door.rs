//! The front door's first-bytes classifier (`parleyd::http::demux::classify`): the bytes a
//! stranger sends first to the HTTPS port decide whether the connection goes to TLS, to the
//! TURN relay or to HTTP, or is closed. TCP may split those bytes anywhere, so every prefix of
//! the input is classified, as if it had arrived one byte at a time.
//!
//! Properties checked: no panic; once a prefix decides (anything but `NeedMore`), every longer
//! prefix gives the same answer; no prefix of `MAX_PREFIX` bytes or more still needs more (so a
//! client cannot hold the decision open past a bounded read).

#![no_main]

use libfuzzer_sys::fuzz_target;
use parleyd::http::demux::{Detected, MAX_PREFIX, classify};

fuzz_target!(|data: &[u8]| {
    let mut decided = None;
    for len in 0..=data.len() {
        let now = classify(&data[..len]);
        match (now, decided) {
            (Detected::NeedMore, None) => {
                assert!(len < MAX_PREFIX, "still undecided after {len} bytes");
            }
            (Detected::NeedMore, Some(before)) => panic!("{before:?} became NeedMore"),
            (now, None) => decided = Some(now),
            (now, Some(before)) => assert_eq!(now, before, "the answer changed at {len} bytes"),
        }
    }
});
