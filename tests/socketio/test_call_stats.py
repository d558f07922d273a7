"""`call:stats` (spec: "Call quality"): who may report, the window, validation, and `quality`
on `Call` and `HistoryEntry` for the requesting user's side only."""


import pytest

from conftest import Daemon, error_code


def report(call_id, **overrides):
    body = {
        "callId": call_id, "path": "relay", "localCandidate": "relay",
        "remoteCandidate": "srflx", "relayProtocol": "udp", "rttMs": 42, "jitterMs": 4.5,
        "lossInPct": 0.5, "lossOutPct": 0.2, "bitrateInKbps": 48, "bitrateOutKbps": 50,
        "audioConcealedPct": 0.1, "videoFreezes": 0, "videoWidth": None, "videoHeight": None,
        "networkType": "wifi", "fromTheFuture": {"ignored": True},
    }
    body.update(overrides)
    return body


@pytest.fixture(scope="module")
def daemon():
    d = Daemon()
    yield d
    d.close()


def active_call(daemon, clients):
    alice, bob = daemon.register("qa"), daemon.register("qb")
    caller = clients.device(alice)
    callee = clients.device(bob)
    call = caller.initiate(bob.id)["call"]
    callee.wait("call:incoming")
    assert callee.act("accept", call["id"])["ok"]
    caller.wait("call:accepted")
    return alice, bob, caller, callee, call["id"]


def quality_of(user, call_id):
    r = user.http("GET", f"/api/v1/calls/{call_id}")
    assert r.status_code == 200, r.text
    return r.json()["call"]["quality"]


def history_quality(user, call_id):
    items = user.http("GET", "/api/v1/calls").json()["items"]
    return next(item for item in items if item["id"] == call_id)["quality"]


def test_a_report_is_stored_and_returned_for_that_party_only(daemon, clients):
    alice, bob, caller, callee, call_id = active_call(daemon, clients)
    assert quality_of(alice, call_id) is None
    assert caller.call("call:stats", report(call_id)) == {"ok": True}
    assert quality_of(alice, call_id) == {
        "path": "relay", "relayProtocol": "udp", "rttMs": 42.0, "lossPct": 0.5,
        "jitterMs": 4.5, "verdict": "good",
    }
    assert quality_of(bob, call_id) is None, "the other party's side is its own"
    # The callee's own report, a poor one; the latest report replaces the earlier.
    assert callee.call("call:stats", report(call_id, path="direct", relayProtocol=None,
                                           rttMs=900, lossInPct=7))["ok"]
    assert quality_of(bob, call_id)["verdict"] == "poor"
    assert quality_of(bob, call_id)["path"] == "direct"
    assert caller.act("end", call_id)["ok"]
    assert history_quality(alice, call_id)["verdict"] == "good"
    assert history_quality(bob, call_id) == {
        "path": "direct", "relayProtocol": None, "rttMs": 900.0, "lossPct": 7.0,
        "jitterMs": 4.5, "verdict": "poor",
    }


def test_more_than_one_report_in_5_s_is_rate_limited(daemon, clients):
    _, _, caller, callee, call_id = active_call(daemon, clients)
    assert caller.call("call:stats", report(call_id))["ok"]
    assert error_code(caller.call("call:stats", report(call_id))) == "RATE_LIMITED"
    assert callee.call("call:stats", report(call_id))["ok"], "per party"


def test_a_final_report_within_60_s_after_the_end_still_lands_once(daemon, clients):
    alice, _, caller, _, call_id = active_call(daemon, clients)
    assert caller.call("call:stats", report(call_id, rttMs=10))["ok"]
    assert caller.act("end", call_id)["ok"]
    # Right after a report during the call: the final one is not held to the 5 s interval.
    assert caller.call("call:stats", report(call_id, rttMs=450))["ok"]
    assert quality_of(alice, call_id)["verdict"] == "fair"
    assert error_code(caller.call("call:stats", report(call_id))) == "RATE_LIMITED"


def test_strangers_and_unbound_devices_get_call_not_found(daemon, clients):
    alice, bob, caller, callee, call_id = active_call(daemon, clients)
    stranger = clients.device(daemon.register("qs"))
    assert error_code(stranger.call("call:stats", report(call_id))) == "CALL_NOT_FOUND"
    other_tab = clients.device(alice)
    reply = other_tab.call("call:stats", report(call_id))
    assert error_code(reply) == "CALL_NOT_FOUND"
    # The same answer as for a call that does not exist: nothing leaks.
    nothing = stranger.call("call:stats", report("f" * 32))
    assert nothing["error"] == {**reply["error"]}
    assert caller.act("end", call_id)["ok"]
    assert error_code(stranger.call("call:stats", report(call_id))) == "CALL_NOT_FOUND"
    assert error_code(other_tab.call("call:stats", report(call_id))) == "CALL_NOT_FOUND"
    assert quality_of(alice, call_id) is None and quality_of(bob, call_id) is None


@pytest.mark.parametrize("field,value,message", [
    ("rttMs", "fast", "rttMs: expected a number"),
    ("rttMs", 60001, "rttMs: expected a number from 0 to 60000"),
    ("lossInPct", 101, "lossInPct: expected a number from 0 to 100"),
    ("path", "pigeon", "path: expected one of direct, relay"),
    ("videoFreezes", -1, "videoFreezes: expected a number from 0 to 1000000"),
    ("networkType", 3, "networkType: expected a string"),
])
def test_malformed_reports_are_invalid_payload_naming_the_field(daemon, clients, field, value,
                                                                 message):
    alice, _, caller, _, call_id = active_call(daemon, clients)
    reply = caller.call("call:stats", report(call_id, **{field: value}))
    assert error_code(reply) == "INVALID_PAYLOAD"
    assert reply["error"]["message"] == message
    assert quality_of(alice, call_id) is None
    # A refused report does not use up the 5 s window.
    assert caller.call("call:stats", report(call_id))["ok"]
    assert caller.act("end", call_id)["ok"]


def test_an_oversized_report_is_payload_too_large(daemon, clients):
    alice, _, caller, _, call_id = active_call(daemon, clients)
    reply = caller.call("call:stats", report(call_id, padding="p" * 8000))
    assert error_code(reply) == "PAYLOAD_TOO_LARGE"
    assert quality_of(alice, call_id) is None
    assert caller.act("end", call_id)["ok"]


def test_a_report_while_ringing_is_invalid_state(daemon, clients):
    alice, bob = daemon.register("qr"), daemon.register("qr")
    caller = clients.device(alice)
    clients.device(bob)
    call_id = caller.initiate(bob.id)["call"]["id"]
    assert error_code(caller.call("call:stats", report(call_id))) == "INVALID_STATE"
    assert caller.act("cancel", call_id)["ok"]
