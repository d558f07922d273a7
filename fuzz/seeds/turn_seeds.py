#!/usr/bin/env python3
"""Writes the seed inputs of the three turn_* fuzz targets (run from anywhere; idempotent).

Real STUN/TURN messages (RFC 8489, RFC 8656) a browser or turnutils sends, so the fuzzer starts
past the header checks. MESSAGE-INTEGRITY values are dummies: the `request` entry point re-signs
a message with valid credentials when its first transaction-id byte is even (see
crates/parley-turn/src/fuzzing.rs); odd ones keep the dummy and exercise the refusal.
"""
import os
import struct
import zlib

COOKIE = 0x2112A442
HERE = os.path.dirname(os.path.abspath(__file__))


def attr(typ, value):
    pad = (4 - len(value) % 4) % 4
    return struct.pack("!HH", typ, len(value)) + value + b"\0" * pad


def xor_addr(ip, port):
    a = bytes(int(x) for x in ip.split("."))
    xa = bytes(b ^ c for b, c in zip(a, struct.pack("!I", COOKIE)))
    return struct.pack("!BBH", 0, 1, port ^ (COOKIE >> 16)) + xa


def message(typ, attrs, txid, integrity=False, fingerprint=False):
    body = b"".join(attr(t, v) for t, v in attrs)
    if integrity:
        body += attr(0x0008, b"\xaa" * 20)
    if fingerprint:
        head = struct.pack("!HHI", typ, len(body) + 8, COOKIE) + txid
        crc = (zlib.crc32(head + body) ^ 0x5354554E) & 0xFFFFFFFF
        body += attr(0x8028, struct.pack("!I", crc))
    return struct.pack("!HHI", typ, len(body), COOKIE) + txid + body


def txid(first):
    return bytes([first]) + bytes(range(1, 12))


EVEN, ODD = txid(0x02), txid(0x03)
USER = (0x0006, b"4102444800:1")
REALM = (0x0014, b"parley")
NONCE = (0x0015, b"fuzz-nonce")
UDP = (0x0019, b"\x11\0\0\0")
LIFETIME = (0x000D, struct.pack("!I", 600))
PUBLIC_PEER = (0x0012, xor_addr("203.0.113.5", 50000))
LOOPBACK_PEER = (0x0012, xor_addr("127.0.0.1", 50000))
CHANNEL = (0x000C, b"\x40\x00\0\0")

requests = {
    "binding": message(0x0001, [(0x8022, b"parley-fuzz")], ODD, fingerprint=True),
    "binding-bare": message(0x0001, [], EVEN),
    "allocate-unauthenticated": message(0x0003, [UDP], ODD),
    "allocate-signed": message(0x0003, [UDP, LIFETIME, USER, REALM, NONCE], EVEN, True, True),
    "allocate-bad-integrity": message(0x0003, [UDP, USER, REALM, NONCE], ODD, True),
    "allocate-tcp-even-port": message(0x0003, [(0x0019, b"\x06\0\0\0"), (0x0018, b"\x80"), USER, REALM, NONCE], EVEN, True),
    "allocate-ipv6-family": message(0x0003, [UDP, (0x0017, b"\x02\0\0\0"), USER, REALM, NONCE], EVEN, True),
    "refresh-zero-lifetime": message(0x0004, [(0x000D, b"\0\0\0\0"), USER, REALM, NONCE], EVEN, True),
    "create-permission-public": message(0x0008, [PUBLIC_PEER, USER, REALM, NONCE], EVEN, True),
    "create-permission-loopback": message(0x0008, [LOOPBACK_PEER, USER, REALM, NONCE], EVEN, True),
    "channel-bind": message(0x0009, [CHANNEL, PUBLIC_PEER, USER, REALM, NONCE], EVEN, True),
    "send-indication": message(0x0016, [PUBLIC_PEER, (0x0013, b"hello peer")], ODD),
    "unknown-comprehension-required": message(0x0003, [(0x7FFF, b"x"), UDP], ODD),
    "truncated-header": message(0x0003, [UDP], ODD)[:15],
    "length-past-end": struct.pack("!HHI", 0x0003, 400, COOKIE) + ODD + attr(0x0019, b"\x11\0\0\0"),
}

channel_data = {
    "channel-0x4000": struct.pack("!HH", 0x4000, 5) + b"hello",
    "channel-0x7fff-empty": struct.pack("!HH", 0x7FFF, 0),
    "length-past-end": struct.pack("!HH", 0x4001, 1000) + b"short",
    "header-only": b"\x40\x00",
}

# Stream seeds: first byte = chunk size selector, then back-to-back frames; ChannelData over a
# stream is padded to a multiple of 4.
stream = {
    "stun-then-channel-data": b"\x03" + requests["allocate-signed"] + struct.pack("!HH", 0x4000, 3) + b"abc\0",
    "two-bindings-one-byte-chunks": b"\x00" + requests["binding"] + requests["binding-bare"],
    "channel-data-unpadded": b"\x3f" + struct.pack("!HH", 0x4000, 3) + b"abc" + requests["binding"],
    "huge-length": b"\x07" + struct.pack("!HHI", 0x0001, 0xFFFC, COOKIE) + ODD,
    "garbage": b"\x05GET / HTTP/1.1\r\nHost: x\r\n\r\n",
}

for name, seeds in [("turn_request", requests), ("turn_channel_data", channel_data), ("turn_stream_framing", stream)]:
    for seed, data in seeds.items():
        with open(os.path.join(HERE, name, seed + ".bin"), "wb") as f:
            f.write(data)
