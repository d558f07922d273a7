"""Every error code of the spec, the order of the initiate checks, and call:error without an ack."""

import socketio
import pytest

from conftest import Device, error_code


def pair(daemon, clients, transport="websocket"):
    alice, bob = daemon.register("alice"), daemon.register("bob")
    return alice, bob, clients.device(alice, transport=transport), clients.device(bob, transport=transport)


def active_call(daemon, clients, transport="websocket"):
    alice, bob, a, b = pair(daemon, clients, transport)
    call = a.initiate(bob.name)["call"]
    b.wait("call:incoming")
    assert b.act("accept", call["id"])["ok"]
    a.wait("call:accepted")
    return alice, bob, a, b, call


# ---- handshake -------------------------------------------------------------------------------


@pytest.mark.parametrize("auth", [{}, {"token": ""}, {"token": "not-a-token"}, {"token": 42}, {"deviceId": "x"}])
def test_connect_without_a_valid_token_fails_with_unauthorized(daemon, transport, auth):
    user = daemon.register()
    device = user.device(connect=False, transport=transport)
    with pytest.raises(socketio.exceptions.ConnectionError):
        device.connect(auth=auth)
    assert device.connect_errors, "no connect_error received"
    # The spec: `connect_error` data `{ code: "UNAUTHORIZED" }` (socket.io-client's `err.data`).
    assert device.connect_errors[0]["data"] == {"code": "UNAUTHORIZED"}
    assert device.connect_errors[0]["message"] == "UNAUTHORIZED"


def test_logged_out_token_cannot_connect_and_its_sockets_are_closed(daemon, clients):
    user = daemon.register()
    first = clients.device(user)
    assert user.http("POST", "/api/v1/auth/logout").status_code == 204
    deadline = __import__("time").monotonic() + 5
    while first.sio.connected and __import__("time").monotonic() < deadline:
        __import__("time").sleep(0.05)
    assert not first.sio.connected, "logout must disconnect the session's sockets"
    late = user.device(connect=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        late.connect()


# ---- initiate checks, in the spec's order ------------------------------------------------------


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"media": "audio"}, "to"),
        ({"to": True, "media": "audio"}, "to"),
        ({"to": "bob"}, "media"),
        ({"to": "bob", "media": "fax"}, "media"),
        ({"to": "bob", "media": 1}, "media"),
        ("not an object", "payload"),
    ],
)
def test_initiate_payload_errors_name_the_field(daemon, clients, payload, field):
    user = daemon.register()
    device = clients.device(user)
    ack = device.call("call:initiate", payload)
    assert error_code(ack) == "INVALID_PAYLOAD"
    assert ack["error"]["message"].startswith(field), ack


def test_invalid_payload_comes_before_user_not_found(daemon, clients):
    device = clients.device(daemon.register())
    ack = device.call("call:initiate", {"to": "nobody-here", "media": "fax"})
    assert error_code(ack) == "INVALID_PAYLOAD"


def test_unknown_callee_is_user_not_found(daemon, clients):
    device = clients.device(daemon.register())
    assert error_code(device.initiate("nobody-here")) == "USER_NOT_FOUND"
    assert error_code(device.initiate(987654321)) == "USER_NOT_FOUND"


def test_calling_yourself_is_self_call_even_when_busy(daemon, clients):
    alice, bob, a, b = pair(daemon, clients)
    assert error_code(a.initiate(alice.name)) == "SELF_CALL"
    a.initiate(bob.name)
    # USER_NOT_FOUND, SELF_CALL, then CALLER_BUSY: self-call wins over busy.
    assert error_code(a.initiate(alice.name)) == "SELF_CALL"
    assert error_code(a.initiate("nobody-here")) == "USER_NOT_FOUND"


def test_caller_in_a_call_is_caller_busy_before_recipient_checks(daemon, clients):
    alice, bob, a, b = pair(daemon, clients)
    offline = daemon.register("offline")
    a.initiate(bob.name)
    assert error_code(a.initiate(offline.name)) == "CALLER_BUSY"
    # Not recorded: the callee never sees a CALLER_BUSY attempt.
    assert offline.http("GET", "/api/v1/calls").json()["items"] == []


def test_offline_recipient_is_refused_and_logged_as_missed(daemon, clients):
    alice = daemon.register("alice")
    bob = daemon.register("bob")
    a = clients.device(alice)
    ack = a.initiate(bob.name)
    assert error_code(ack) == "RECIPIENT_OFFLINE"
    items = bob.http("GET", "/api/v1/calls").json()["items"]
    assert len(items) == 1
    entry = items[0]
    assert (entry["status"], entry["reason"], entry["missed"], entry["seen"]) == ("missed", "offline", True, False)
    assert entry["direction"] == "incoming" and entry["peer"]["id"] == alice.id
    assert bob.http("GET", "/api/v1/calls/missed/count").json() == {"unseen": 1}
    out = alice.http("GET", "/api/v1/calls").json()["items"][0]
    assert (out["direction"], out["missed"], out["seen"]) == ("outgoing", False, True)


def test_busy_recipient_is_refused_and_logged_as_busy(daemon, clients):
    alice, bob, a, b = pair(daemon, clients)
    carol = daemon.register("carol")
    c = clients.device(carol)
    a.initiate(bob.name)
    assert error_code(c.initiate(bob.name)) == "RECIPIENT_BUSY"
    entry = bob.http("GET", "/api/v1/calls").json()["items"][0]
    assert (entry["status"], entry["reason"], entry["missed"]) == ("busy", "busy", True)
    assert entry["peer"]["id"] == carol.id
    # Also busy while the callee's call is active.
    call_id = b.wait("call:incoming")["call"]["id"]
    b.act("accept", call_id)
    assert error_code(c.initiate(alice.name)) == "RECIPIENT_BUSY"


# ---- role and state checks -------------------------------------------------------------------


def test_caller_accepting_its_own_call_is_forbidden(daemon, clients):
    alice, bob, a, b = pair(daemon, clients)
    call = a.initiate(bob.name)["call"]
    assert error_code(a.act("accept", call["id"])) == "FORBIDDEN"
    assert error_code(a.act("decline", call["id"])) == "FORBIDDEN"


def test_callee_cancelling_is_forbidden(daemon, clients):
    alice, bob, a, b = pair(daemon, clients)
    call = a.initiate(bob.name)["call"]
    assert error_code(b.act("cancel", call["id"])) == "FORBIDDEN"


def test_signaling_from_an_unbound_device_is_forbidden(daemon, clients):
    alice, bob, a, b, call = active_call(daemon, clients)
    b2 = clients.device(bob)
    ack = b2.call("signal:offer", {"callId": call["id"], "sdp": "v=0"})
    assert error_code(ack) == "FORBIDDEN"
    a.assert_none("signal:offer")


def test_accepting_an_ended_call_is_invalid_state(daemon, clients):
    alice, bob, a, b = pair(daemon, clients)
    call = a.initiate(bob.name)["call"]
    a.act("cancel", call["id"])
    assert error_code(b.act("accept", call["id"])) == "INVALID_STATE"
    assert error_code(a.act("end", call["id"])) == "INVALID_STATE"


def test_signaling_before_accept_is_invalid_state(daemon, clients):
    alice, bob, a, b = pair(daemon, clients)
    call = a.initiate(bob.name)["call"]
    assert error_code(a.call("signal:offer", {"callId": call["id"], "sdp": "v=0"})) == "INVALID_STATE"


def test_answered_call_cannot_be_cancelled_or_declined(daemon, clients):
    alice, bob, a, b, call = active_call(daemon, clients)
    assert error_code(a.act("cancel", call["id"])) == "INVALID_STATE"
    assert error_code(b.act("decline", call["id"])) == "INVALID_STATE"
    assert error_code(b.act("accept", call["id"])) == "INVALID_STATE"


def test_strangers_cannot_see_act_on_or_signal_into_a_call(daemon, clients):
    alice, bob, a, b, call = active_call(daemon, clients)
    mallory = daemon.register("mallory")
    m = clients.device(mallory)
    for action in ("accept", "decline", "cancel", "end"):
        assert error_code(m.act(action, call["id"])) == "CALL_NOT_FOUND"
    for event, extra in [
        ("signal:offer", {"sdp": "v=0"}),
        ("signal:answer", {"sdp": "v=0"}),
        ("signal:ice", {"candidate": None}),
        ("media:state", {"audio": True, "video": True}),
    ]:
        assert error_code(m.call(event, {"callId": call["id"], **extra})) == "CALL_NOT_FOUND"
    r = mallory.http("GET", f"/api/v1/calls/{call['id']}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "CALL_NOT_FOUND"
    r = mallory.http("POST", f"/api/v1/calls/{call['id']}/end")
    assert r.status_code == 404 and r.json()["error"]["code"] == "CALL_NOT_FOUND"
    r = mallory.http("DELETE", f"/api/v1/calls/{call['id']}")
    assert r.status_code == 404
    # The call is undisturbed.
    a.assert_none("call:ended", within=0.2)
    b.call("signal:offer", {"callId": call["id"], "sdp": "v=0"})
    assert a.wait("signal:offer")["from"] == bob.id
    # After the call ends a stranger still learns nothing.
    a.act("end", call["id"])
    assert error_code(m.act("accept", call["id"])) == "CALL_NOT_FOUND"


def test_unknown_call_id_is_call_not_found(daemon, clients):
    device = clients.device(daemon.register())
    assert error_code(device.act("accept", "f" * 32)) == "CALL_NOT_FOUND"
    assert error_code(device.act("accept", "")) == "INVALID_PAYLOAD"
    assert error_code(device.call("call:end", {"callId": 5})) == "INVALID_PAYLOAD"


def test_failure_without_an_ack_arrives_as_call_error(daemon, clients):
    device = clients.device(daemon.register())
    device.emit("call:initiate", {"to": "nobody-here", "media": "audio"})
    error = device.wait("call:error")
    assert error["event"] == "call:initiate"
    assert error["code"] == "USER_NOT_FOUND"
    assert error["message"]
    device.emit("call:accept", {"nope": 1})
    error = device.wait("call:error")
    assert (error["event"], error["code"]) == ("call:accept", "INVALID_PAYLOAD")
    assert error["message"].startswith("callId")


def test_success_without_an_ack_sends_no_call_error(daemon, clients):
    alice, bob, a, b = pair(daemon, clients)
    a.emit("call:initiate", {"to": bob.name, "media": "audio"})
    b.wait("call:incoming")
    a.assert_none("call:error")


def test_unknown_event_is_answered_not_ignored(daemon, clients):
    device = clients.device(daemon.register())
    ack = device.call("call:teleport", {"callId": "x"})
    assert error_code(ack) == "INVALID_PAYLOAD"


# ---- HTTP error shapes -----------------------------------------------------------------------


def test_http_errors_use_the_spec_shape_and_status(daemon):
    user = daemon.register()
    r = daemon.http("GET", "/api/v1/calls")
    assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED"
    r = user.http("GET", "/api/v1/no-such-thing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"
    r = user.http("POST", "/api/v1/calls", data="{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_PAYLOAD"
    r = user.http("POST", "/api/v1/calls", json={"to": user.name})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("media")
    r = user.http("POST", "/api/v1/calls", json={"to": user.name, "media": "audio"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "SELF_CALL"
    r = user.http("POST", "/api/v1/calls", json={"to": "nobody-here", "media": "audio"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "USER_NOT_FOUND"
    r = user.http("GET", "/api/v1/calls/" + "0" * 32)
    assert r.status_code == 404 and r.json()["error"]["code"] == "CALL_NOT_FOUND"


def test_http_conflicts_use_409(daemon, clients):
    alice, bob, a, b = pair(daemon, clients)
    offline = daemon.register("offline")
    r = alice.http("POST", "/api/v1/calls", json={"to": offline.name, "media": "audio"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "RECIPIENT_OFFLINE"
    call = a.initiate(bob.name)["call"]
    r = alice.http("POST", "/api/v1/calls", json={"to": bob.name, "media": "audio"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "CALLER_BUSY"
    r = bob.http("POST", f"/api/v1/calls/{call['id']}/cancel")
    assert r.status_code == 403 and r.json()["error"]["code"] == "FORBIDDEN"
    r = alice.http("DELETE", f"/api/v1/calls/{call['id']}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "INVALID_STATE"


def test_http_device_required(daemon, clients):
    alice, bob = daemon.register("alice"), daemon.register("bob")
    clients.device(bob)
    # No connected device at all.
    r = alice.http("POST", "/api/v1/calls", json={"to": bob.name, "media": "audio"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "DEVICE_REQUIRED"
    clients.device(alice)
    clients.device(alice)
    # Several devices and no deviceId.
    r = alice.http("POST", "/api/v1/calls", json={"to": bob.name, "media": "audio"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "DEVICE_REQUIRED"
    # A deviceId that is not connected.
    r = alice.http("POST", "/api/v1/calls", json={"to": bob.name, "media": "audio", "deviceId": "ghost"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "DEVICE_REQUIRED"


def test_registering_a_taken_username_in_any_case_is_username_taken(daemon):
    user = daemon.register()
    r = daemon.http("POST", "/api/v1/auth/register", json={"username": user.name.upper(), "password": "another-password"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "USERNAME_TAKEN"
