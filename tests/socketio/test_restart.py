"""Calls survive the server (spec "Restarts", issue 13). An active call outlives SIGTERM and
SIGKILL: the next start restores it with both devices in the reconnect grace, each device that
comes back with its deviceId gets it as `session.activeCall`, signaling relays again, and the one
record's duration spans the restart. A call that was only ringing ends `missed`. Each test has
its own daemon and data directory (reconnect grace 2 s, see conftest)."""

import signal
import sqlite3
import time

import pytest

from conftest import Daemon

GRACE_SECS = 2


@pytest.fixture
def own_daemon():
    d = Daemon()
    yield d
    d.close()


def live_calls(d):
    """One active call (alice-bob) and one ringing call (carol-dave)."""
    alice, bob, carol, dave = (d.register(n) for n in ("alice", "bob", "carol", "dave"))
    a, b, c, e = alice.device(), bob.device(), carol.device(), dave.device()
    active = a.initiate(bob.name)["call"]
    b.wait("call:incoming")
    assert b.act("accept", active["id"])["ok"]
    a.wait("call:accepted")
    ringing = c.initiate(dave.name)["call"]
    e.wait("call:incoming")
    return (alice, bob, carol, dave), (a, b, c, e), active, ringing


def rows(d):
    db = sqlite3.connect(d.data_dir / "parley.db")
    try:
        found = {
            row[0]: row[1:]
            for row in db.execute("SELECT id, state, status, reason, answered_at, ended_at FROM calls")
        }
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()
    return found, integrity


def stop(d, sig):
    """Stops the daemon with `sig`, returning the exit code and how long the exit took."""
    started = time.monotonic()
    d.proc.send_signal(sig)
    code = d.proc.wait(timeout=15)
    took = time.monotonic() - started
    d.log.close()
    return code, took


def resume_both_and_talk(users, devices, active, downtime):
    """After a restart: both devices come back with their deviceIds, get the call, exchange an
    offer and an answer, and alice hangs up. Returns the `call:ended` both saw."""
    alice, bob = users[0], users[1]
    a_old, b_old = devices[0], devices[1]
    a = alice.device(a_old.device_id)
    call = a.session["activeCall"]
    assert call is not None, "the caller's device gets the restored call"
    assert (call["id"], call["state"]) == (active["id"], "active")
    # Bob has not come back yet: alice is told so, then told when he is.
    assert a.wait("call:peer-reconnecting")["callId"] == active["id"]
    b = bob.device(b_old.device_id)
    call = b.session["activeCall"]
    assert (call["id"], call["state"]) == (active["id"], "active")
    assert a.wait("call:peer-resumed")["callId"] == active["id"]
    # Signaling flows again between the two bound devices (the caller restarts ICE).
    assert a.call("signal:offer", {"callId": active["id"], "sdp": "v=0 after restart"})["ok"]
    offer = b.wait("signal:offer")
    assert (offer["sdp"], offer["from"]) == ("v=0 after restart", alice.id)
    assert b.call("signal:answer", {"callId": active["id"], "sdp": "v=0 answer"})["ok"]
    assert a.wait("signal:answer")["sdp"] == "v=0 answer"
    ended = a.act("end", active["id"])
    assert ended["ok"], ended
    seen_by_bob = b.wait("call:ended")
    seen_by_alice = a.wait("call:ended")
    for seen in (seen_by_alice, seen_by_bob):
        assert (seen["callId"], seen["status"], seen["reason"], seen["endedBy"]) == (
            active["id"], "completed", "hangup", alice.id,
        )
        assert seen["durationSecs"] >= downtime, "the duration spans the restart"
    a.disconnect()
    b.disconnect()
    return seen_by_alice


def assert_one_history_entry(user, call_id, status, reason):
    items = user.http("GET", "/api/v1/calls").json()["items"]
    matching = [i for i in items if i["id"] == call_id]
    assert len(matching) == 1, items
    assert (matching[0]["status"], matching[0]["reason"]) == (status, reason)
    return matching[0]


def test_sigterm_keeps_the_active_call_and_both_devices_resume_it(own_daemon):
    d = own_daemon
    users, devices, active, ringing = live_calls(d)
    alice, bob, carol, dave = users
    a, b, c, e = devices
    code, took = stop(d, signal.SIGTERM)
    assert code == 0, d.log_text()
    assert took < 5, f"SIGTERM took {took:.1f} s"
    # The ringing call ends before exit; the answered one is not ended.
    ended = e.wait("call:ended")
    assert (ended["callId"], ended["status"], ended["reason"]) == (ringing["id"], "missed", "server_shutdown")
    a.assert_none("call:ended", within=0.2)
    b.assert_none("call:ended", within=0)
    found, integrity = rows(d)
    assert found[active["id"]][:3] == ("active", None, None)
    assert found[ringing["id"]][:3] == ("ended", "missed", "server_shutdown")
    assert integrity == "ok"
    for device in devices:
        device.disconnect()

    downtime = 2
    time.sleep(downtime)
    d.start()
    assert "restored 1 call(s), closed 0" in d.log_text()
    # Tokens issued before the restart still work.
    for user in users:
        assert user.http("GET", "/api/v1/me").status_code == 200
    ended = resume_both_and_talk(users, devices, active, downtime)

    found, integrity = rows(d)
    assert len(found) == 2, "one record per call"
    state, status, reason, answered_at, ended_at = found[active["id"]]
    assert (state, status, reason) == ("ended", "completed", "hangup")
    assert ended["durationSecs"] == (ended_at - answered_at) // 1000
    assert integrity == "ok"
    assert_one_history_entry(alice, active["id"], "completed", "hangup")
    assert_one_history_entry(bob, active["id"], "completed", "hangup")
    entry = assert_one_history_entry(dave, ringing["id"], "missed", "server_shutdown")
    assert entry["missed"] is True


def test_sigkill_keeps_the_active_call_and_closes_the_ringing_one_at_start(own_daemon):
    d = own_daemon
    users, devices, active, ringing = live_calls(d)
    alice, bob, carol, dave = users
    stop(d, signal.SIGKILL)
    for device in devices:
        device.disconnect()
    found, integrity = rows(d)
    assert found[active["id"]][0] == "active"
    assert found[ringing["id"]][0] == "ringing"
    assert integrity == "ok"

    downtime = 2
    time.sleep(downtime)
    d.start()
    assert "restored 1 call(s), closed 1" in d.log_text()
    found, integrity = rows(d)
    assert found[active["id"]][:3] == ("active", None, None)
    assert found[ringing["id"]][:3] == ("ended", "missed", "server_restart")
    assert integrity == "ok"
    for user in users:
        assert user.http("GET", "/api/v1/me").status_code == 200
    resume_both_and_talk(users, devices, active, downtime)

    found, integrity = rows(d)
    assert len(found) == 2, "one record per call"
    assert found[active["id"]][:3] == ("ended", "completed", "hangup")
    assert integrity == "ok"
    assert_one_history_entry(alice, active["id"], "completed", "hangup")
    assert_one_history_entry(bob, active["id"], "completed", "hangup")
    entry = assert_one_history_entry(dave, ringing["id"], "missed", "server_restart")
    assert entry["missed"] is True
    assert_one_history_entry(carol, ringing["id"], "missed", "server_restart")
    # Both parties of the ended calls can call again.
    a, e = alice.device(), dave.device()
    assert a.session["activeCall"] is None
    assert a.initiate(dave.name)["ok"]
    a.disconnect()
    e.disconnect()


def test_a_device_that_never_returns_ends_the_call_as_connection_lost(own_daemon):
    d = own_daemon
    users, devices, active, ringing = live_calls(d)
    alice, bob = users[0], users[1]
    stop(d, signal.SIGTERM)
    for device in devices:
        device.disconnect()
    d.start()
    started = time.monotonic()
    a = alice.device(devices[0].device_id)
    assert a.session["activeCall"]["id"] == active["id"]
    assert a.wait("call:peer-reconnecting")["callId"] == active["id"]
    # Bob's device never comes back: the call ends at the end of the grace, counted from start.
    ended = a.wait("call:ended", timeout=GRACE_SECS + 5)
    waited = time.monotonic() - started
    assert (ended["callId"], ended["status"], ended["reason"], ended["endedBy"]) == (
        active["id"], "completed", "connection_lost", None,
    )
    assert waited < GRACE_SECS + 2, f"ended {waited:.1f} s after start"
    a.disconnect()
    for user in (alice, bob):
        assert_one_history_entry(user, active["id"], "completed", "connection_lost")
    found, integrity = rows(d)
    assert found[active["id"]][:3] == ("ended", "completed", "connection_lost")
    assert integrity == "ok"


def test_nobody_returning_ends_the_call_once_after_the_grace(own_daemon):
    d = own_daemon
    users, devices, active, ringing = live_calls(d)
    stop(d, signal.SIGKILL)
    for device in devices:
        device.disconnect()
    d.start()
    time.sleep(GRACE_SECS + 1)
    found, integrity = rows(d)
    assert found[active["id"]][:3] == ("ended", "completed", "connection_lost")
    assert integrity == "ok"
    for user in users[:2]:
        assert_one_history_entry(user, active["id"], "completed", "connection_lost")
    # A second restart finds nothing left to restore.
    stop(d, signal.SIGTERM)
    d.start()
    assert d.log_text().count("restored 1 call(s)") == 1
    found, _ = rows(d)
    assert found[active["id"]][:3] == ("ended", "completed", "connection_lost")
