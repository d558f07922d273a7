"""Disconnects, resume by deviceId within and after reconnect_grace (2 s here), take-over,
presence updates. Run over both transports."""

import time

from conftest import PreparedSocket, error_code


def setup_active(daemon, clients, transport):
    alice, bob = daemon.register("alice"), daemon.register("bob")
    a = clients.device(alice, transport=transport)
    b = clients.device(bob, transport=transport)
    call = a.initiate(bob.name, "video")["call"]
    b.wait("call:incoming")
    assert b.act("accept", call["id"])["ok"]
    a.wait("call:accepted")
    return alice, bob, a, b, call


def test_resume_within_grace_rebinds_the_device(daemon, clients, transport):
    alice, bob, a, b, call = setup_active(daemon, clients, transport)
    b.disconnect()
    assert a.wait("call:peer-reconnecting") == {"callId": call["id"]}
    back = clients.device(bob, device_id=b.device_id, transport=transport)
    assert back.session["activeCall"]["id"] == call["id"]
    assert back.session["activeCall"]["state"] == "active"
    assert back.session["deviceId"] == b.device_id
    assert a.wait("call:peer-resumed") == {"callId": call["id"]}
    # Signaling flows to the resumed socket (the caller restarts ICE with a new offer).
    assert a.call("signal:offer", {"callId": call["id"], "sdp": "v=0 restart"})["ok"]
    assert back.wait("signal:offer")["sdp"] == "v=0 restart"
    # The grace timer was cancelled: the call outlives it.
    a.assert_none("call:ended", within=2.5)
    assert alice.http("GET", f"/api/v1/calls/{call['id']}").json()["call"]["state"] == "active"


def test_caller_resume_within_grace(daemon, clients, transport):
    alice, bob, a, b, call = setup_active(daemon, clients, transport)
    a.disconnect()
    b.wait("call:peer-reconnecting")
    back = clients.device(alice, device_id=a.device_id, transport=transport)
    assert back.session["activeCall"]["id"] == call["id"]
    b.wait("call:peer-resumed")
    assert b.call("signal:answer", {"callId": call["id"], "sdp": "v=0"})["ok"]
    assert back.wait("signal:answer")["from"] == bob.id


def test_no_resume_within_grace_ends_with_connection_lost(daemon, clients, transport):
    alice, bob, a, b, call = setup_active(daemon, clients, transport)
    b.disconnect()
    a.wait("call:peer-reconnecting")
    ended = a.wait("call:ended", timeout=6)
    assert (ended["status"], ended["reason"], ended["endedBy"]) == ("completed", "connection_lost", None)
    back = clients.device(bob, device_id=b.device_id, transport=transport)
    assert back.session["activeCall"] is None
    entry = bob.http("GET", "/api/v1/calls").json()["items"][0]
    assert (entry["status"], entry["reason"]) == ("completed", "connection_lost")


def test_another_device_of_the_user_does_not_resume(daemon, clients, transport):
    alice, bob, a, b, call = setup_active(daemon, clients, transport)
    b.disconnect()
    a.wait("call:peer-reconnecting")
    other = clients.device(bob, transport=transport)
    assert other.session["activeCall"]["id"] == call["id"]
    a.assert_none("call:peer-resumed", within=0.3)
    assert error_code(other.call("signal:offer", {"callId": call["id"], "sdp": "v=0"})) == "FORBIDDEN"
    assert a.wait("call:ended", timeout=6)["reason"] == "connection_lost"


def test_caller_disconnecting_while_ringing_cancels(daemon, clients, transport):
    alice, bob = daemon.register("alice"), daemon.register("bob")
    a = clients.device(alice, transport=transport)
    b = clients.device(bob, transport=transport)
    call = a.initiate(bob.name)["call"]
    b.wait("call:incoming")
    a.disconnect()
    ended = b.wait("call:ended")
    assert (ended["status"], ended["reason"], ended["endedBy"]) == ("cancelled", "connection_lost", None)


def test_last_ringing_device_leaving_ends_as_missed(daemon, clients, transport):
    alice, bob = daemon.register("alice"), daemon.register("bob")
    a = clients.device(alice, transport=transport)
    b1 = clients.device(bob, transport=transport)
    b2 = clients.device(bob, transport=transport)
    call = a.initiate(bob.name)["call"]
    b1.wait("call:incoming")
    b2.wait("call:incoming")
    b1.disconnect()
    a.assert_none("call:ended", within=0.3)
    b2.disconnect()
    ended = a.wait("call:ended")
    assert (ended["status"], ended["reason"]) == ("missed", "connection_lost")
    entry = bob.http("GET", "/api/v1/calls").json()["items"][0]
    assert entry["id"] == call["id"] and entry["missed"] is True


def test_same_device_id_takes_over_the_older_socket_and_its_call(daemon, clients, transport):
    alice, bob, a, b, call = setup_active(daemon, clients, transport)
    newer = clients.device(bob, device_id=b.device_id, transport=transport)
    assert newer.session["activeCall"]["id"] == call["id"]
    deadline = time.monotonic() + 5
    while b.sio.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not b.sio.connected, "the older socket must be closed"
    a.assert_none("call:ended", within=0.3)
    assert a.call("signal:offer", {"callId": call["id"], "sdp": "v=0"})["ok"]
    assert newer.wait("signal:offer")["from"] == alice.id


def test_presence_follows_connects_calls_and_disconnects(daemon, clients, transport):
    watcher = daemon.register("watcher")
    w = clients.device(watcher, transport=transport)
    alice, bob = daemon.register("alice"), daemon.register("bob")

    def status_of(user_id, status):
        return w.wait(
            "presence:update",
            where=lambda d: {"userId": user_id, "status": status} in d["changes"],
        )

    a = clients.device(alice, transport=transport)
    status_of(alice.id, "online")
    b = clients.device(bob, transport=transport)
    status_of(bob.id, "online")
    users = {u["id"]: u["status"] for u in watcher.http("GET", "/api/v1/users").json()["users"]}
    assert users[alice.id] == "online" and users[bob.id] == "online"

    call = a.initiate(bob.name)["call"]
    update = status_of(alice.id, "busy")
    # Both parties change in the same window and arrive coalesced in one event.
    assert {"userId": bob.id, "status": "busy"} in update["changes"]
    users = {u["id"]: u["status"] for u in watcher.http("GET", "/api/v1/users").json()["users"]}
    assert users[alice.id] == "busy" and users[bob.id] == "busy"

    a.act("cancel", call["id"])
    status_of(alice.id, "online")
    b.disconnect()
    status_of(bob.id, "offline")
    users = {u["id"]: u["status"] for u in watcher.http("GET", "/api/v1/users").json()["users"]}
    assert users[bob.id] == "offline"


def about(users):
    """A presence:update predicate: the event carries a change of one of `users` (the daemon is
    shared by the module's tests, whose users come and go in the same events)."""
    ids = {u.id for u in users}
    return lambda update: any(c["userId"] in ids for c in update["changes"])


def test_presence_is_coalesced_to_one_event_per_user_change_window(daemon, clients):
    watcher = daemon.register("watcher")
    w = clients.device(watcher)
    users = [daemon.register("burst") for _ in range(8)]
    sockets = [PreparedSocket(u, f"dev-{i}") for i, u in enumerate(users)]
    try:
        # Eight connects sent back to back: they reach the server within one presence window.
        for s in sockets:
            s.send_connect()
        for s in sockets:
            s.wait_connected()
        wanted = {u.id for u in users}
        seen = set()
        events = 0
        deadline = time.monotonic() + 10
        while not wanted <= seen and time.monotonic() < deadline:
            update = w.wait("presence:update", timeout=10, where=about(users))
            events += 1
            seen |= {c["userId"] for c in update["changes"] if c["status"] == "online"}
        assert wanted <= seen
        # Without coalescing this would be eight events; the window may split the burst once.
        assert events <= 2, events
    finally:
        for s in sockets:
            s.close()


def test_reconnecting_within_the_window_sends_no_offline_flap(daemon, clients):
    watcher = daemon.register("watcher")
    w = clients.device(watcher)
    alice = daemon.register("alice")
    a = clients.device(alice)
    w.wait("presence:update", where=lambda d: {"userId": alice.id, "status": "online"} in d["changes"])
    back = PreparedSocket(alice, a.device_id)
    try:
        # The new socket's CONNECT follows the old socket's close at once: both land inside
        # one presence window, so the watcher must hear nothing of alice at all.
        a.disconnect()
        back.send_connect()
        back.wait_connected()
        w.assert_none("presence:update", within=1.0, where=about([alice]))
    finally:
        back.close()


def test_a_socket_hears_presence_only_after_its_session(daemon, clients):
    """`session` is a socket's first event, also while presence flows to the sockets connected
    before it: sockets connect in waves, each wave's online changes broadcast while the next
    waves' handshakes are under way. And once its `session` is out, a socket hears the others."""
    users = [daemon.register("wave") for _ in range(48)]
    sockets = [PreparedSocket(u, f"dev-{i}") for i, u in enumerate(users)]
    try:
        for i, s in enumerate(sockets):
            s.send_connect()
            if i % 6 == 5:
                time.sleep(0.05)
        for i, s in enumerate(sockets):
            s.wait_connected(timeout=10)
            assert s.before_session == [], f"socket {i} heard {s.before_session} before its session"
        # The first socket hears the last user come online (in whichever update carries it).
        last = users[-1].id
        deadline = time.monotonic() + 10
        while True:
            try:
                name, data = sockets[0].next_event(timeout=max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                raise AssertionError("the first socket never heard the last user come online") from None
            if name == "presence:update" and {"userId": last, "status": "online"} in data["changes"]:
                break
    finally:
        for s in sockets:
            s.close()
