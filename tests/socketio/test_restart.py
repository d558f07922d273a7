"""Stopping the daemon during live calls: SIGTERM records them with server_shutdown; SIGKILL
leaves them live in the log and the next start closes them with server_restart. Each test has
its own daemon and data directory."""

import signal
import sqlite3

import pytest

from conftest import Daemon


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
            for row in db.execute("SELECT id, state, status, reason, ended_at IS NOT NULL FROM calls")
        }
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()
    return found, integrity


def test_sigterm_ends_live_calls_with_server_shutdown(own_daemon):
    d = own_daemon
    users, devices, active, ringing = live_calls(d)
    a, b, c, e = devices
    d.proc.send_signal(signal.SIGTERM)
    ended = a.wait("call:ended")
    assert (ended["callId"], ended["status"], ended["reason"], ended["endedBy"]) == (
        active["id"], "completed", "server_shutdown", None,
    )
    assert b.wait("call:ended")["reason"] == "server_shutdown"
    ended = e.wait("call:ended")
    assert (ended["status"], ended["reason"]) == ("missed", "server_shutdown")
    assert d.proc.wait(timeout=15) == 0, d.log_text()
    found, integrity = rows(d)
    assert found[active["id"]] == ("ended", "completed", "server_shutdown", 1)
    assert found[ringing["id"]] == ("ended", "missed", "server_shutdown", 1)
    assert integrity == "ok"


def test_sigkill_during_live_calls_is_closed_with_server_restart_on_start(own_daemon):
    d = own_daemon
    users, devices, active, ringing = live_calls(d)
    alice, bob, carol, dave = users
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(timeout=10)
    for device in devices:
        device.disconnect()
    found, integrity = rows(d)
    assert found[active["id"]][0] == "active"
    assert found[ringing["id"]][0] == "ringing"
    assert integrity == "ok"

    d.start()
    found, integrity = rows(d)
    assert found[active["id"]] == ("ended", "completed", "server_restart", 1)
    assert found[ringing["id"]] == ("ended", "missed", "server_restart", 1)
    assert integrity == "ok"
    # The API agrees, and both parties can call again.
    call = alice.http("GET", f"/api/v1/calls/{active['id']}").json()["call"]
    assert (call["state"], call["status"], call["reason"]) == ("ended", "completed", "server_restart")
    entry = dave.http("GET", "/api/v1/calls").json()["items"][0]
    assert (entry["id"], entry["status"], entry["missed"]) == (ringing["id"], "missed", True)
    a, b = alice.device(), bob.device()
    assert a.session["activeCall"] is None
    assert a.initiate(bob.name)["ok"]
    a.disconnect()
    b.disconnect()
