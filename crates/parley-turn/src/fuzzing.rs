//! Entry points for the fuzz targets in `fuzz/`: each feeds arbitrary bytes through one of
//! the relay's input paths, without sockets, and must never panic. Their signatures are
//! stable; what runs underneath follows the relay's code.
//!
//! - [`request`]: one datagram through the decision path in front of the `turn` server (the
//!   gate), with a fixed secret, realm, peer policy and quotas. So that the paths behind the
//!   credential check are reachable, a STUN message that carries MESSAGE-INTEGRITY and whose
//!   transaction id starts with an even byte is re-signed first with valid credentials and a
//!   nonce the gate knows; every other attribute is kept as fuzzed.
//! - [`channel_data`]: one ChannelData message through the same path.
//! - [`stream_framing`]: bytes through the TCP/TLS stream framer, in chunks whose sizes come
//!   from the first byte.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use stun::attributes::*;
use stun::integrity::MessageIntegrity;
use stun::message::*;

use crate::credentials::{Secrets, long_term_key, password_for};
use crate::guard::{Shared, decide};
use crate::metrics::Metrics;
use crate::policy::PeerPolicy;
use crate::quota::Quotas;
use crate::stream::FrameBuffer;

const SECRET: &str = "fuzz-secret";
const REALM: &str = "parley";
const NONCE: &str = "fuzz-nonce";
/// Expires in 2100: valid whenever the fuzzer runs.
const USERNAME: &str = "4102444800:1";
const CLIENT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 40000);
const LISTENER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 3478);

fn fresh_shared() -> Shared {
    let shared = Shared::new(
        REALM.to_owned(),
        Secrets::new(SECRET.to_owned(), Vec::new()),
        PeerPolicy::default(),
        Quotas::new(10, 2),
        1000,
        Arc::new(Metrics::default()),
    );
    shared.lock().nonces.handle_issued(NONCE, Instant::now());
    shared
}

/// `data` with valid credentials if it asks for them (see the module documentation).
fn maybe_resign(data: &[u8]) -> Vec<u8> {
    let mut msg = Message {
        raw: data.to_vec(),
        ..Default::default()
    };
    if msg.decode().is_err()
        || !msg.contains(ATTR_MESSAGE_INTEGRITY)
        || msg.transaction_id.0[0] % 2 == 1
    {
        return data.to_vec();
    }
    let mut signed = Message::new();
    signed.set_type(msg.typ);
    signed.transaction_id = msg.transaction_id;
    signed.write_header();
    for attr in &msg.attributes.0 {
        if attr.typ == ATTR_MESSAGE_INTEGRITY || attr.typ == ATTR_FINGERPRINT {
            break;
        }
        if attr.typ != ATTR_USERNAME && attr.typ != ATTR_REALM && attr.typ != ATTR_NONCE {
            signed.add(attr.typ, &attr.value);
        }
    }
    signed.add(ATTR_USERNAME, USERNAME.as_bytes());
    signed.add(ATTR_REALM, REALM.as_bytes());
    signed.add(ATTR_NONCE, NONCE.as_bytes());
    let key = long_term_key(USERNAME, REALM, &password_for(SECRET, USERNAME));
    if MessageIntegrity(key).add_to(&mut signed).is_err() {
        return data.to_vec();
    }
    signed.raw
}

/// One datagram through the relay's request decisions.
pub fn request(data: &[u8]) {
    let shared = fresh_shared();
    let datagram = maybe_resign(data);
    let _ = decide(&shared, LISTENER, &datagram, CLIENT);
}

/// One ChannelData message (the first two bits are forced to 0b01) through the same path.
pub fn channel_data(data: &[u8]) {
    let shared = fresh_shared();
    let mut datagram = data.to_vec();
    if let Some(first) = datagram.first_mut() {
        *first = (*first & 0x3F) | 0x40;
    }
    let _ = decide(&shared, LISTENER, &datagram, CLIENT);
    // The fast data path's reading of it: a payload inside the datagram, or nothing.
    if let Some((number, payload)) = crate::fastpath::channel_data(&datagram) {
        assert!((0x4000..=0x7FFF).contains(&number));
        assert!(payload.start == 4 && payload.end <= datagram.len());
    }
}

/// Bytes through the stream framer, in chunks of `1 + data[0] % 64` bytes.
pub fn stream_framing(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let chunk = 1 + usize::from(first % 64);
    let mut buffer = FrameBuffer::default();
    for piece in rest.chunks(chunk) {
        buffer.push(piece);
        loop {
            match buffer.next_frame() {
                Ok(Some(frame)) => assert!(frame.len() >= 4),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use stun::agent::TransactionId;

    use super::*;
    use crate::guard::Decision;

    /// A CreatePermission for a loopback peer with a bogus MESSAGE-INTEGRITY: re-signed, it
    /// passes the credential check and meets the peer policy (403); unsigned, 401.
    #[test]
    fn re_signing_reaches_the_rules_behind_the_credentials() {
        let build = |first_tid_byte: u8| {
            let mut msg = Message::new();
            msg.set_type(MessageType::new(METHOD_CREATE_PERMISSION, CLASS_REQUEST));
            msg.transaction_id = TransactionId([first_tid_byte; 12]);
            msg.write_header();
            let peer = turn::proto::peeraddr::PeerAddress {
                ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                port: 9,
            };
            stun::message::Setter::add_to(&peer, &mut msg).unwrap();
            msg.add(ATTR_USERNAME, b"junk");
            msg.add(ATTR_NONCE, NONCE.as_bytes());
            MessageIntegrity(vec![0; 16]).add_to(&mut msg).unwrap();
            msg.raw
        };
        let code_of = |data: Vec<u8>| {
            let shared = fresh_shared();
            let Decision::Answer(raw) = decide(&shared, LISTENER, &maybe_resign(&data), CLIENT)
            else {
                panic!("expected an answer")
            };
            let mut msg = Message {
                raw,
                ..Default::default()
            };
            msg.decode().unwrap();
            let mut code = stun::error_code::ErrorCodeAttribute::default();
            stun::message::Getter::get_from(&mut code, &msg).unwrap();
            code.code.0
        };
        assert_eq!(code_of(build(2)), 403);
        assert_eq!(code_of(build(3)), 401);
    }

    /// Pseudo-random STUN-shaped inputs (a valid header, random attributes) through every
    /// entry point: a cheap stand-in for the fuzzers in every `cargo test`.
    #[test]
    fn entry_points_survive_random_stun_shaped_input() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let methods = [0x0001u16, 0x0003, 0x0004, 0x0008, 0x0009, 0x0016, 0x0017];
        for _ in 0..5_000 {
            let random = next();
            let mut data = vec![0u8; 20];
            let method = methods[(random % methods.len() as u64) as usize];
            let class_bits = [0x0000, 0x0010, 0x0100, 0x0110][((random >> 8) % 4) as usize];
            data[..2].copy_from_slice(&(method | class_bits).to_be_bytes());
            data[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
            data[8..20].copy_from_slice(&next().to_be_bytes().repeat(2)[..12]);
            for _ in 0..(random >> 16) % 6 {
                let typ = [0x0012u16, 0x000C, 0x0008, 0x0006, 0x0015, 0x0013, 0x7777]
                    [(next() % 7) as usize];
                let length = (next() % 24) as usize;
                data.extend_from_slice(&typ.to_be_bytes());
                data.extend_from_slice(&(length as u16).to_be_bytes());
                data.extend((0..length.div_ceil(4) * 4).map(|_| next() as u8));
            }
            let length = (data.len() - 20) as u16;
            data[2..4].copy_from_slice(&length.to_be_bytes());
            request(&data);
            channel_data(&data);
            stream_framing(&data);
        }
    }

    #[test]
    fn entry_points_survive_odd_input() {
        for input in [
            &b""[..],
            &[0],
            &[0x40, 0, 0xff, 0xff],
            &[0; 20],
            &[0xff; 64],
        ] {
            request(input);
            channel_data(input);
            stream_framing(input);
        }
    }
}
