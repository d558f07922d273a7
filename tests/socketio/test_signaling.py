"""Signaling relay: only between the two call devices, `from` set by the server, size limits."""

import pytest

from conftest import error_code


def active_call(daemon, clients, transport):
    alice, bob = daemon.register("alice"), daemon.register("bob")
    a = clients.device(alice, transport=transport)
    b1 = clients.device(bob, transport=transport)
    b2 = clients.device(bob, transport=transport)
    call = a.initiate(bob.name, "video")["call"]
    b1.wait("call:incoming")
    assert b1.act("accept", call["id"])["ok"]
    a.wait("call:accepted")
    return alice, bob, a, b1, b2, call


def test_offer_answer_ice_and_media_state_are_relayed_with_server_from(daemon, clients, transport):
    alice, bob, a, b1, b2, call = active_call(daemon, clients, transport)
    cid = call["id"]

    ack = a.call("signal:offer", {"callId": cid, "sdp": "v=0 offer", "from": 999})
    assert ack == {"ok": True}
    assert b1.wait("signal:offer") == {"callId": cid, "sdp": "v=0 offer", "from": alice.id}

    assert b1.call("signal:answer", {"callId": cid, "sdp": "v=0 answer", "from": 999})["ok"]
    assert a.wait("signal:answer") == {"callId": cid, "sdp": "v=0 answer", "from": bob.id}

    candidate = {"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host", "sdpMid": "0", "sdpMLineIndex": 0}
    assert a.call("signal:ice", {"callId": cid, "candidate": candidate})["ok"]
    assert b1.wait("signal:ice") == {"callId": cid, "candidate": candidate, "from": alice.id}
    assert b1.call("signal:ice", {"callId": cid, "candidate": None})["ok"]
    assert a.wait("signal:ice") == {"callId": cid, "candidate": None, "from": bob.id}

    assert b1.call("media:state", {"callId": cid, "audio": True, "video": False})["ok"]
    assert a.wait("media:state") == {"callId": cid, "from": bob.id, "audio": True, "video": False}

    # Renegotiation: offers may come again at any time, from either side.
    assert b1.call("signal:offer", {"callId": cid, "sdp": "v=0 again"})["ok"]
    assert a.wait("signal:offer")["sdp"] == "v=0 again"

    # The callee's other device hears none of it.
    for name in ("signal:offer", "signal:answer", "signal:ice", "media:state"):
        b2.assert_none(name, within=0.05)


@pytest.mark.parametrize(
    "event, payload, field",
    [
        ("signal:offer", {}, "sdp"),
        ("signal:offer", {"sdp": 5}, "sdp"),
        ("signal:answer", {"sdp": None}, "sdp"),
        ("signal:ice", {}, "candidate"),
        ("signal:ice", {"candidate": "text"}, "candidate"),
        ("media:state", {"audio": True}, "video"),
        ("media:state", {"audio": "yes", "video": True}, "audio"),
    ],
)
def test_malformed_signaling_names_the_field(daemon, clients, event, payload, field):
    alice, bob, a, b1, b2, call = active_call(daemon, clients, "websocket")
    ack = a.call(event, {"callId": call["id"], **payload})
    assert error_code(ack) == "INVALID_PAYLOAD"
    assert ack["error"]["message"].startswith(field), ack


def test_oversized_sdp_and_candidate_are_payload_too_large(daemon, clients, transport):
    alice, bob, a, b1, b2, call = active_call(daemon, clients, transport)
    cid = call["id"]
    ack = a.call("signal:offer", {"callId": cid, "sdp": "a" * (64 * 1024 + 1)})
    assert error_code(ack) == "PAYLOAD_TOO_LARGE"
    big = {"candidate": "candidate:" + "x" * 2100, "sdpMid": "0"}
    assert error_code(a.call("signal:ice", {"callId": cid, "candidate": big})) == "PAYLOAD_TOO_LARGE"
    # Exactly at the limit is fine.
    sdp = "v=0\r\n" + "a" * (64 * 1024 - 5)
    assert len(sdp) == 64 * 1024
    assert a.call("signal:offer", {"callId": cid, "sdp": sdp})["ok"]
    assert b1.wait("signal:offer")["sdp"] == sdp
    # The call is undisturbed.
    assert b1.call("media:state", {"callId": cid, "audio": False, "video": False})["ok"]
    a.wait("media:state")


def test_a_huge_websocket_message_closes_only_that_socket(daemon, clients):
    alice, bob, a, b1, b2, call = active_call(daemon, clients, "websocket")
    mallory = daemon.register("mallory")
    m = clients.device(mallory)
    # Over the 128 KiB message limit: the server drops this connection rather than buffer it.
    m.emit("signal:offer", {"callId": call["id"], "sdp": "a" * (1024 * 1024)})
    import time

    deadline = time.monotonic() + 5
    while m.sio.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not m.sio.connected
    # Everyone else carries on.
    assert a.call("signal:offer", {"callId": call["id"], "sdp": "v=0"})["ok"]
    assert b1.wait("signal:offer")["from"] == alice.id
    assert daemon.http("GET", "/healthz").status_code == 200


def test_a_burst_of_signaling_arrives_in_the_order_sent(daemon, clients, transport):
    """Offer then many candidates, sent without waiting: the peer must see them in order
    (a candidate before its offer cannot be applied by a browser)."""
    alice, bob, a, b1, b2, call = active_call(daemon, clients, transport)
    cid = call["id"]
    a.emit("signal:offer", {"callId": cid, "sdp": "v=0 first"})
    for n in range(60):
        a.emit("signal:ice", {"callId": cid, "candidate": {"candidate": f"candidate:{n}", "sdpMid": "0"}})
    a.emit("signal:offer", {"callId": cid, "sdp": "v=0 last"})
    received = []
    assert b1.wait("signal:offer")["sdp"] == "v=0 first"
    for _ in range(60):
        received.append(b1.wait("signal:ice")["candidate"]["candidate"])
    assert received == [f"candidate:{n}" for n in range(60)]
    assert b1.wait("signal:offer")["sdp"] == "v=0 last"
    # Order across event names too: the last offer came after every candidate.
    names = [e for e, _ in b1.seen]
    assert "signal:ice" not in names
