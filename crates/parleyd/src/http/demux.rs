//! The front door's first-bytes classifier (issue 11): which protocol a connection to the HTTPS
//! port speaks, from the bytes it has sent so far, without I/O.
//!
//! One port carries HTTPS, TURN over TLS and plain TURN over TCP, because the networks that let
//! only HTTPS out block every other port. The three are told apart by their first bytes, before
//! the TLS handshake and again after it:
//! - a TLS record of type handshake (a ClientHello) begins `0x16 0x03`;
//! - a STUN message has its two top bits 0 and the magic cookie `0x2112A442` at bytes 4..8
//!   (RFC 8489 section 5); a TURN client always starts with one (Binding or Allocate);
//! - an HTTP/1 request begins with a method token and a space.
//!
//! Anything else is garbage and the connection is closed. No answer ever needs more than
//! [`MAX_PREFIX`] bytes, so a client cannot hold the decision open by trickling bytes beyond
//! that; the caller's deadline covers a client that sends fewer.

/// What a connection speaks, as far as its first bytes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// A TLS ClientHello: hand the connection to the TLS acceptor.
    Tls,
    /// A STUN message: TURN over TCP (or over TLS, after the handshake).
    Stun,
    /// An HTTP/1 request line.
    Http,
    /// Too few bytes to decide; read more (within the deadline).
    NeedMore,
    /// None of the above: close the connection.
    Garbage,
}

/// The most bytes [`classify`] looks at: `OPTIONS ` and `CONNECT ` (8), and the STUN header up to
/// the end of the magic cookie (8).
pub const MAX_PREFIX: usize = 8;

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];

/// The methods hyper serves, each with the space that ends the token. A generic token rule
/// would let any word followed by a space through to hyper; these are the only ones a browser
/// or a health checker sends.
const METHODS: &[&[u8]] = &[
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// Classifies the bytes a connection has sent so far. Feeding a longer prefix of the same
/// stream never turns a decision (anything but [`Detected::NeedMore`]) into another one.
pub fn classify(bytes: &[u8]) -> Detected {
    let Some(&first) = bytes.first() else {
        return Detected::NeedMore;
    };
    if first == 0x16 {
        match bytes.get(1) {
            None => return Detected::NeedMore,
            Some(0x03) => return Detected::Tls,
            // 0x16 also has its top bits 0: let the STUN rule decide.
            Some(_) => {}
        }
    }
    if first >> 6 == 0 {
        return classify_stun(bytes);
    }
    classify_http(bytes)
}

fn classify_stun(bytes: &[u8]) -> Detected {
    let cookie = bytes.get(4..).unwrap_or_default();
    let seen = cookie.len().min(MAGIC_COOKIE.len());
    if cookie[..seen] != MAGIC_COOKIE[..seen] {
        return Detected::Garbage;
    }
    if seen < MAGIC_COOKIE.len() {
        Detected::NeedMore
    } else {
        Detected::Stun
    }
}

fn classify_http(bytes: &[u8]) -> Detected {
    let mut could_still_be = false;
    for method in METHODS {
        let seen = bytes.len().min(method.len());
        if bytes[..seen] == method[..seen] {
            if seen == method.len() {
                return Detected::Http;
            }
            could_still_be = true;
        }
    }
    if could_still_be {
        Detected::NeedMore
    } else {
        Detected::Garbage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03];
    /// A Binding request with no attributes.
    const BINDING: &[u8] = &[
        0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ];
    /// An Allocate request (0x0003) with 8 bytes of attributes.
    const ALLOCATE: &[u8] = &[0x00, 0x03, 0x00, 0x08, 0x21, 0x12, 0xA4, 0x42, 9, 9];

    /// Every prefix of `stream` shorter than `decided_at` needs more, and every longer one
    /// (one-byte reads, then any split) gives `expected`.
    fn check(stream: &[u8], decided_at: usize, expected: Detected) {
        for len in 0..=stream.len() {
            let got = classify(&stream[..len]);
            if len < decided_at {
                assert_eq!(got, Detected::NeedMore, "{stream:02x?} after {len} bytes");
            } else {
                assert_eq!(got, expected, "{stream:02x?} after {len} bytes");
            }
        }
    }

    #[test]
    fn nothing_yet_needs_more() {
        assert_eq!(classify(&[]), Detected::NeedMore);
    }

    #[test]
    fn a_client_hello_is_tls_after_two_bytes() {
        check(CLIENT_HELLO, 2, Detected::Tls);
        // TLS 1.0 record version in the hello, as some clients still send.
        check(&[0x16, 0x03, 0x00], 2, Detected::Tls);
    }

    #[test]
    fn stun_is_recognised_by_its_cookie_after_eight_bytes() {
        check(BINDING, 8, Detected::Stun);
        check(ALLOCATE, 8, Detected::Stun);
    }

    #[test]
    fn a_wrong_cookie_is_garbage_at_its_first_wrong_byte() {
        let mut wrong = BINDING.to_vec();
        wrong[6] = 0x00;
        check(&wrong, 7, Detected::Garbage);
        check(&[0x00, 0x01, 0x00, 0x00, 0x00], 5, Detected::Garbage);
    }

    #[test]
    fn stun_needs_its_two_top_bits_zero() {
        // ChannelData (0b01) and anything with the top bit set cannot open a TURN connection.
        check(
            &[0x40, 0x00, 0x00, 0x04, 0x21, 0x12, 0xA4, 0x42],
            1,
            Detected::Garbage,
        );
        check(
            &[0x80, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42],
            1,
            Detected::Garbage,
        );
    }

    #[test]
    fn a_0x16_without_a_tls_version_is_judged_as_stun() {
        check(
            &[0x16, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42],
            8,
            Detected::Stun,
        );
        check(&[0x16, 0x01, 0x00, 0x00, 0x00], 5, Detected::Garbage);
    }

    #[test]
    fn http_methods_are_recognised_at_the_space() {
        check(b"GET / HTTP/1.1\r\n", 4, Detected::Http);
        check(b"HEAD /healthz HTTP/1.1\r\n", 5, Detected::Http);
        check(b"POST /api/v1/login HTTP/1.1\r\n", 5, Detected::Http);
        check(b"PUT /x HTTP/1.1\r\n", 4, Detected::Http);
        check(b"DELETE /x HTTP/1.1\r\n", 7, Detected::Http);
        check(b"OPTIONS * HTTP/1.1\r\n", 8, Detected::Http);
        check(b"PATCH /x HTTP/1.1\r\n", 6, Detected::Http);
        check(b"CONNECT h:443 HTTP/1.1\r\n", 8, Detected::Http);
        check(b"TRACE / HTTP/1.1\r\n", 6, Detected::Http);
    }

    #[test]
    fn shared_method_prefixes_wait_for_the_word_to_end() {
        // "P" could be POST, PUT or PATCH; "PO" only POST.
        assert_eq!(classify(b"P"), Detected::NeedMore);
        assert_eq!(classify(b"PA"), Detected::NeedMore);
        assert_eq!(classify(b"PX"), Detected::Garbage);
    }

    #[test]
    fn other_words_and_bytes_are_garbage() {
        check(b"get / HTTP/1.1\r\n", 1, Detected::Garbage);
        check(b"GETX / HTTP/1.1\r\n", 4, Detected::Garbage);
        check(b"GE T", 3, Detected::Garbage);
        check(b"SSH-2.0-OpenSSH_9.2\r\n", 1, Detected::Garbage);
        check(b"PRI * HTTP/2.0\r\n", 2, Detected::Garbage);
        check(&[0xff, 0xfe, 0x00], 1, Detected::Garbage);
        // Top bits 0, like STUN, until the cookie's first byte is wrong.
        check(b"\r\n\r\nGET /", 5, Detected::Garbage);
    }

    #[test]
    fn no_decision_needs_more_than_max_prefix_bytes() {
        // Sweep every 2-byte start and pad: the 8-byte prefix always decides.
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let mut bytes = [a, b, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
                assert_ne!(classify(&bytes), Detected::NeedMore, "{bytes:02x?}");
                bytes[4..].copy_from_slice(b"ABCD");
                assert_ne!(classify(&bytes), Detected::NeedMore, "{bytes:02x?}");
            }
        }
        for method in METHODS {
            assert!(method.len() <= MAX_PREFIX);
        }
    }

    #[test]
    fn a_decision_never_changes_as_more_bytes_arrive() {
        for stream in [
            CLIENT_HELLO,
            BINDING,
            ALLOCATE,
            b"GET / HTTP/1.1\r\n",
            b"xyz",
        ] {
            let mut decided = None;
            for len in 0..=stream.len() {
                match (classify(&stream[..len]), decided) {
                    (Detected::NeedMore, None) => {}
                    (Detected::NeedMore, Some(before)) => panic!("{before:?} became NeedMore"),
                    (now, None) => decided = Some(now),
                    (now, Some(before)) => assert_eq!(now, before),
                }
            }
        }
    }
}
