"""Every row of the spec's call lifecycle table, over WebSocket and long-polling."""

import time

from conftest import error_code


def ring(daemon, clients, transport, callee_devices=1, media="audio"):
    alice, bob = daemon.register("alice"), daemon.register("bob")
    a = clients.device(alice, transport=transport)
    bs = [clients.device(bob, transport=transport) for _ in range(callee_devices)]
    ack = a.initiate(bob.name, media)
    assert ack["ok"] is True, ack
    for b in bs:
        assert b.wait("call:incoming")["call"]["id"] == ack["call"]["id"]
    return alice, bob, a, bs, ack["call"]


def ended_on(device, call_id):
    return device.wait("call:ended", where=lambda d: d["callId"] == call_id)


def test_initiate_rings_every_callee_device(daemon, clients, transport):
    alice, bob, a, bs, call = ring(daemon, clients, transport, callee_devices=2, media="video")
    assert set(a.session) == {"user", "deviceId", "iceServers", "iceTransportPolicy", "ttlSecs", "activeCall"}
    assert a.session["deviceId"] == a.device_id and isinstance(a.session["iceServers"], list)
    assert call["state"] == "ringing"
    assert call["status"] is None and call["reason"] is None
    assert call["caller"] == {"id": alice.id, "username": alice.name, "displayName": alice.name}
    assert call["callee"]["id"] == bob.id
    assert call["media"] == "video"
    assert call["answeredAt"] is None and call["endedAt"] is None
    assert call["durationSecs"] == 0
    assert call["createdAt"].endswith("Z")


def test_initiate_by_username_ignores_case(daemon, clients, transport):
    alice, bob = daemon.register("alice"), daemon.register("bob")
    a = clients.device(alice, transport=transport)
    clients.device(bob, transport=transport)
    ack = a.initiate(bob.name.upper())
    assert ack["ok"] and ack["call"]["callee"]["id"] == bob.id


def test_initiate_by_user_id(daemon, clients, transport):
    alice, bob = daemon.register("alice"), daemon.register("bob")
    a = clients.device(alice, transport=transport)
    clients.device(bob, transport=transport)
    ack = a.initiate(bob.id)
    assert ack["ok"] and ack["call"]["callee"]["username"] == bob.name


def test_accept_first_device_wins_and_others_stop_ringing(daemon, clients, transport):
    alice, bob, a, (b1, b2), call = ring(daemon, clients, transport, callee_devices=2)
    ack = b2.act("accept", call["id"])
    assert ack["ok"] is True, ack
    assert ack["call"]["state"] == "active"
    assert ack["call"]["answeredAt"] is not None
    accepted = a.wait("call:accepted")
    assert accepted["call"]["id"] == call["id"] and accepted["call"]["state"] == "active"
    assert b1.wait("call:answered-elsewhere") == {"callId": call["id"]}
    # The losing device is no longer bound: accepting there now is refused.
    assert error_code(b1.act("accept", call["id"])) == "INVALID_STATE"


def test_decline_with_message_reaches_caller_and_log(daemon, clients, transport):
    alice, bob, a, (b1, b2), call = ring(daemon, clients, transport, callee_devices=2)
    ack = b1.act("decline", call["id"], message="In a meeting, call you at 3")
    assert ack["ok"] and ack["call"]["status"] == "declined" and ack["call"]["reason"] == "declined"
    for device in (a, b1, b2):
        ended = ended_on(device, call["id"])
        assert ended["status"] == "declined"
        assert ended["reason"] == "declined"
        assert ended["endedBy"] == bob.id
        assert ended["durationSecs"] == 0
        assert ended["message"] == "In a meeting, call you at 3"
    items = alice.http("GET", "/api/v1/calls").json()["items"]
    assert items[0]["id"] == call["id"] and items[0]["message"] == "In a meeting, call you at 3"


def test_cancel_by_caller_reaches_every_device(daemon, clients, transport):
    alice, bob, a, (b1, b2), call = ring(daemon, clients, transport, callee_devices=2)
    ack = a.act("cancel", call["id"])
    assert ack["ok"] and ack["call"]["status"] == "cancelled"
    for device in (a, b1, b2):
        ended = ended_on(device, call["id"])
        assert (ended["status"], ended["reason"], ended["endedBy"]) == ("cancelled", "cancelled", alice.id)


def test_end_while_ringing_by_caller_is_a_cancel(daemon, clients, transport):
    alice, bob, a, (b,), call = ring(daemon, clients, transport)
    ack = a.act("end", call["id"])
    assert (ack["call"]["status"], ack["call"]["reason"]) == ("cancelled", "cancelled")
    assert ended_on(b, call["id"])["status"] == "cancelled"


def test_end_while_ringing_by_callee_is_a_decline(daemon, clients, transport):
    alice, bob, a, (b,), call = ring(daemon, clients, transport)
    ack = b.act("end", call["id"])
    assert (ack["call"]["status"], ack["call"]["reason"]) == ("declined", "declined")
    assert ended_on(a, call["id"])["endedBy"] == bob.id


def test_end_while_active_completes_with_duration(daemon, clients, transport):
    alice, bob, a, (b,), call = ring(daemon, clients, transport)
    b.act("accept", call["id"])
    a.wait("call:accepted")
    time.sleep(1.1)
    ack = b.act("end", call["id"])
    assert (ack["call"]["status"], ack["call"]["reason"]) == ("completed", "hangup")
    assert ack["call"]["durationSecs"] >= 1
    for device in (a, b):
        ended = ended_on(device, call["id"])
        assert ended["endedBy"] == bob.id and ended["durationSecs"] >= 1


def test_ring_timeout_ends_as_missed_no_answer(daemon, clients, transport):
    # The daemon runs with calls.ring_timeout_secs = 2.
    alice, bob, a, (b1, b2), call = ring(daemon, clients, transport, callee_devices=2)
    started = time.monotonic()
    for device in (a, b1, b2):
        ended = ended_on(device, call["id"])
        assert (ended["status"], ended["reason"], ended["endedBy"]) == ("missed", "no_answer", None)
    assert 1.5 <= time.monotonic() - started <= 4
    r = bob.http("GET", f"/api/v1/calls/{call['id']}")
    assert r.json()["call"]["status"] == "missed"
    entry = bob.http("GET", "/api/v1/calls").json()["items"][0]
    assert entry["missed"] is True and entry["seen"] is False and entry["direction"] == "incoming"


def test_every_ending_reaches_the_sender_device_too(daemon, clients, transport):
    """The caller's second device is not bound; when it ends the call it still hears call:ended."""
    alice, bob, a, (b,), call = ring(daemon, clients, transport)
    a2 = clients.device(alice, transport=transport)
    ack = a2.act("end", call["id"])
    assert ack["ok"], ack
    assert ended_on(a2, call["id"])["status"] == "cancelled"
    assert ended_on(a, call["id"])["status"] == "cancelled"
    assert ended_on(b, call["id"])["status"] == "cancelled"


def test_device_connecting_while_ringing_joins_the_ring(daemon, clients, transport):
    alice, bob, a, (b1,), call = ring(daemon, clients, transport)
    b2 = clients.device(bob, transport=transport)
    assert b2.session["activeCall"]["id"] == call["id"]
    assert b2.wait("call:incoming")["call"]["id"] == call["id"]
    assert b2.act("accept", call["id"])["ok"]
    assert b1.wait("call:answered-elsewhere")["callId"] == call["id"]


def test_a_new_call_after_the_previous_one_ended(daemon, clients, transport):
    alice, bob, a, (b,), call = ring(daemon, clients, transport)
    a.act("cancel", call["id"])
    ack = b.initiate(alice.name)
    assert ack["ok"], ack
    assert a.wait("call:incoming")["call"]["id"] == ack["call"]["id"]


def test_events_sent_right_after_connecting_are_handled(daemon, transport):
    """Clients flush buffered emits the moment the namespace connects, before `session`:
    those events must be acted upon, not dropped nor refused for an unknown socket."""
    import socketio

    alice, bob = daemon.register("alice"), daemon.register("bob")
    for attempt in range(5):
        sio = socketio.Client(reconnection=False)
        try:
            sio.connect(daemon.url, auth={"token": alice.token, "deviceId": f"quick-{attempt}"},
                        transports=[transport], wait_timeout=5)
            ack = sio.call("call:initiate", {"to": bob.name, "media": "audio"}, timeout=5)
            assert ack["ok"] is False and ack["error"]["code"] == "RECIPIENT_OFFLINE", ack
        finally:
            sio.disconnect()
