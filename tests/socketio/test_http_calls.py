"""The HTTP call API: the whole lifecycle over HTTP, history with pagination and filters,
missed counts, per-user delete, the directory, and the OpenAPI document."""

from conftest import error_code


def test_a_whole_call_over_http_with_sockets_as_devices(daemon, clients):
    alice, bob = daemon.register("alice"), daemon.register("bob")
    a = clients.device(alice)
    b1 = clients.device(bob)
    b2 = clients.device(bob)
    r = alice.http("POST", "/api/v1/calls", json={"to": bob.name, "media": "video"})
    assert r.status_code == 201, r.text
    call = r.json()["call"]
    assert call["state"] == "ringing" and call["media"] == "video"
    b1.wait("call:incoming")
    b2.wait("call:incoming")

    # bob has two devices: accepting over HTTP must say which one.
    r = bob.http("POST", f"/api/v1/calls/{call['id']}/accept")
    assert r.status_code == 409 and r.json()["error"]["code"] == "DEVICE_REQUIRED"
    r = bob.http("POST", f"/api/v1/calls/{call['id']}/accept", json={"deviceId": b2.device_id})
    assert r.status_code == 200, r.text
    assert r.json()["call"]["state"] == "active"
    a.wait("call:accepted")
    b1.wait("call:answered-elsewhere")

    # The device bound over HTTP is the one signaling reaches.
    assert a.call("signal:offer", {"callId": call["id"], "sdp": "v=0"})["ok"]
    assert b2.wait("signal:offer")["from"] == alice.id

    r = alice.http("GET", f"/api/v1/calls/{call['id']}")
    assert r.status_code == 200 and r.json()["call"]["state"] == "active"

    r = bob.http("POST", f"/api/v1/calls/{call['id']}/end")
    assert r.status_code == 200
    ended_call = r.json()["call"]
    assert (ended_call["state"], ended_call["status"], ended_call["reason"]) == ("ended", "completed", "hangup")
    assert a.wait("call:ended")["endedBy"] == bob.id
    r = alice.http("GET", f"/api/v1/calls/{call['id']}")
    assert r.json()["call"]["state"] == "ended" and r.json()["call"]["endedAt"] is not None


def test_http_decline_with_message_and_cancel(daemon, clients):
    alice, bob = daemon.register("alice"), daemon.register("bob")
    a = clients.device(alice)
    clients.device(bob)
    call = alice.http("POST", "/api/v1/calls", json={"to": bob.id, "media": "audio"}).json()["call"]
    r = bob.http("POST", f"/api/v1/calls/{call['id']}/decline", json={"message": "x" * 141})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("message")
    r = bob.http("POST", f"/api/v1/calls/{call['id']}/decline", json={"message": "later"})
    assert r.status_code == 200 and r.json()["call"]["status"] == "declined"
    assert a.wait("call:ended")["message"] == "later"

    call = alice.http("POST", "/api/v1/calls", json={"to": bob.id, "media": "audio"}).json()["call"]
    r = alice.http("POST", f"/api/v1/calls/{call['id']}/cancel")
    assert r.status_code == 200 and r.json()["call"]["status"] == "cancelled"
    r = alice.http("POST", f"/api/v1/calls/{call['id']}/cancel")
    assert r.status_code == 409 and r.json()["error"]["code"] == "INVALID_STATE"


def test_history_is_paginated_newest_first_with_a_cursor(daemon, clients):
    alice, bob = daemon.register("alice"), daemon.register("bob")
    a = clients.device(alice)
    clients.device(bob)
    ids = []
    for _ in range(5):
        call = a.initiate(bob.name)["call"]
        a.act("cancel", call["id"])
        ids.append(call["id"])
    # A live call is not history.
    live = a.initiate(bob.name)["call"]
    pages = []
    cursor = None
    while True:
        path = "/api/v1/calls?limit=2" + (f"&before={cursor}" if cursor else "")
        body = alice.http("GET", path).json()
        pages.append([item["id"] for item in body["items"]])
        cursor = body["nextCursor"]
        if cursor is None:
            break
    assert pages == [ids[4:2:-1], ids[2:0:-1], ids[0:1]]
    assert live["id"] not in sum(pages, [])
    entry = alice.http("GET", "/api/v1/calls?limit=1").json()["items"][0]
    assert set(entry) == {
        "id", "peer", "direction", "media", "status", "reason", "missed", "seen", "message",
        "createdAt", "answeredAt", "endedAt", "durationSecs", "quality",
    }
    assert entry["peer"] == {"id": bob.id, "username": bob.name, "displayName": bob.name}


def test_history_filters(daemon, clients):
    alice, bob = daemon.register("alice"), daemon.register("bob")
    a = clients.device(alice)
    b = clients.device(bob)
    out_audio = a.initiate(bob.name, "audio")["call"]
    a.act("cancel", out_audio["id"])
    in_video = b.initiate(alice.name, "video")["call"]
    a.wait("call:incoming")
    a.act("decline", in_video["id"])
    missed = b.initiate(alice.name, "audio")["call"]
    a.wait("call:ended", timeout=6, where=lambda d: d["callId"] == missed["id"])

    def ids(query):
        r = alice.http("GET", "/api/v1/calls" + query)
        assert r.status_code == 200, r.text
        return [item["id"] for item in r.json()["items"]]

    assert ids("") == [missed["id"], in_video["id"], out_audio["id"]]
    assert ids("?filter=outgoing") == [out_audio["id"]]
    assert ids("?filter=incoming") == [missed["id"], in_video["id"]]
    assert ids("?filter=missed") == [missed["id"]]
    assert ids("?media=video") == [in_video["id"]]
    assert ids("?media=audio&filter=incoming") == [missed["id"]]
    for bad in ("?limit=0", "?limit=abc", "?limit=100000", "?before=xyz", "?media=fax", "?filter=all"):
        r = alice.http("GET", "/api/v1/calls" + bad)
        assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_PAYLOAD", bad
        field = bad[1:].split("=")[0]
        assert r.json()["error"]["message"].startswith(field), r.text


def test_missed_count_and_mark_seen(daemon, clients):
    alice, bob = daemon.register("alice"), daemon.register("bob")
    # One missed while offline.
    a = clients.device(alice)
    assert error_code(a.initiate(bob.name)) == "RECIPIENT_OFFLINE"
    # One missed by ring timeout.
    b = clients.device(bob)
    call = a.initiate(bob.name)["call"]
    b.wait("call:ended", timeout=6, where=lambda d: d["callId"] == call["id"])
    assert bob.http("GET", "/api/v1/calls/missed/count").json() == {"unseen": 2}
    assert alice.http("GET", "/api/v1/calls/missed/count").json() == {"unseen": 0}
    items = bob.http("GET", "/api/v1/calls?filter=missed").json()["items"]
    assert [(i["reason"], i["seen"]) for i in items] == [("no_answer", False), ("offline", False)]
    assert bob.http("POST", "/api/v1/calls/missed/seen").status_code == 204
    assert bob.http("GET", "/api/v1/calls/missed/count").json() == {"unseen": 0}
    items = bob.http("GET", "/api/v1/calls?filter=missed").json()["items"]
    assert all(i["seen"] and i["missed"] for i in items)


def test_delete_hides_only_for_the_requester(daemon, clients):
    alice, bob = daemon.register("alice"), daemon.register("bob")
    a = clients.device(alice)
    clients.device(bob)
    call = a.initiate(bob.name)["call"]
    a.act("cancel", call["id"])
    assert bob.http("DELETE", f"/api/v1/calls/{call['id']}").status_code == 204
    assert bob.http("GET", "/api/v1/calls").json()["items"] == []
    assert [i["id"] for i in alice.http("GET", "/api/v1/calls").json()["items"]] == [call["id"]]
    # Deleting again is harmless; the row is still there for the other party.
    assert bob.http("DELETE", f"/api/v1/calls/{call['id']}").status_code == 204


def test_directory_lists_users_with_status(daemon, clients):
    alice, bob = daemon.register("alice"), daemon.register("bob")
    clients.device(alice)
    users = alice.http("GET", "/api/v1/users").json()["users"]
    by_id = {u["id"]: u for u in users}
    assert by_id[alice.id] == {"id": alice.id, "username": alice.name, "displayName": alice.name, "status": "online"}
    assert by_id[bob.id]["status"] == "offline"
    assert daemon.http("GET", "/api/v1/users").status_code == 401


def test_http_body_over_64_kib_is_payload_too_large(daemon):
    user = daemon.register()
    r = user.http(
        "POST",
        "/api/v1/calls",
        data='{"to": "x", "media": "audio", "pad": "' + "a" * (65 * 1024) + '"}',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


def test_openapi_document_is_served(daemon):
    r = daemon.http("GET", "/api/v1/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    for path in ("/api/v1/calls", "/api/v1/calls/{id}/accept", "/api/v1/users", "/api/v1/calls/missed/count"):
        assert path in doc["paths"], path


def test_metrics_count_live_calls_and_sockets(daemon, clients):
    alice, bob = daemon.register("alice"), daemon.register("bob")
    a = clients.device(alice)
    clients.device(bob)
    a.initiate(bob.name)
    text = daemon.http("GET", "/metrics").text
    live = [line for line in text.splitlines() if line.startswith("parley_calls_live ")]
    assert live and int(live[0].split()[1]) >= 1
    assert any(line.startswith("parley_sockets_connected ") for line in text.splitlines())
