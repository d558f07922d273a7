"""Issue 16, the server and admin side: Parley's `call:stats` extension fields (stored, checked,
shown by `parley calls show`), the call quality metrics, and the connection test's two routes
(`GET /api/v1/connection-test/ice-servers`, `POST /api/v1/diagnostics`)."""

import hashlib
import hmac
import json
import os
import re
import socket
import struct
import subprocess
import time

import pytest

from conftest import BINARY, Daemon, error_code, free_port


EXTRA_SERVERS = """
[webrtc]
extra_ice_servers = [{ urls = ["stun:stun.example.org:3478"] },
                     { urls = ["turn:turn.example.org:3478"], username = "static", credential = "shared-with-members" }]
"""


def turn_daemon():
    """A daemon with the embedded relay on (conftest's template turns it off), on UDP and TCP
    of a free loopback port, without TURN over TLS (its fixed default port would collide)."""
    env = {
        "PARLEY_TURN__ENABLED": "true",
        "PARLEY_TURN__LISTEN": f"127.0.0.1:{free_port()}",
        "PARLEY_TURN__TLS_LISTEN": "",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        return Daemon(extra=EXTRA_SERVERS)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def relay_daemon():
    """Its own daemon per test: the routes' budgets are per address, and every test here
    comes from 127.0.0.1."""
    d = turn_daemon()
    yield d
    d.close()


@pytest.fixture(scope="module")
def daemon():
    d = Daemon()
    yield d
    d.close()


# ---- GET /api/v1/connection-test/ice-servers ------------------------------------------------

def turn_entry(reply):
    return next(s for s in reply["iceServers"] if "username" in s)


def test_ice_servers_without_sign_in_have_120_s_credentials_named_for_the_address(relay_daemon):
    started = int(time.time())
    r = relay_daemon.http("GET", "/api/v1/connection-test/ice-servers")
    assert r.status_code == 200, r.text
    reply = r.json()
    assert set(reply) == {"iceServers", "iceTransportPolicy", "ttlSecs"}
    assert reply["ttlSecs"] == 120
    entry = turn_entry(reply)
    expiry, user = entry["username"].split(":", 1)
    assert user == "conntest-127.0.0.1"
    assert started + 120 <= int(expiry) <= int(time.time()) + 120
    assert entry["credential"]
    # The configured extra servers: the credential-less one, not the one with a static secret.
    urls = [s["urls"] for s in reply["iceServers"]]
    assert ["stun:stun.example.org:3478"] in urls
    assert not any("static" == s.get("username") for s in reply["iceServers"]), reply

    # Same shape and servers as the signed-in route, only the credentials differ.
    alice = relay_daemon.register("ct")
    signed_in = alice.http("GET", "/api/v1/ice-servers").json()
    assert [s["urls"] for s in signed_in["iceServers"]] == (
        [s["urls"] for s in reply["iceServers"]] + [["turn:turn.example.org:3478"]]
    ), "signed in, the extra server with static credentials comes last"
    assert signed_in["iceTransportPolicy"] == reply["iceTransportPolicy"]
    assert signed_in["ttlSecs"] > 120

    # With a valid token: the user's id, still 120 s; a dead token is treated as none.
    mine = alice.http("GET", "/api/v1/connection-test/ice-servers").json()
    assert mine["ttlSecs"] == 120
    assert any(s.get("username") == "static" for s in mine["iceServers"])
    assert turn_entry(mine)["username"].endswith(f":{alice.id}")
    stale = relay_daemon.http("GET", "/api/v1/connection-test/ice-servers", token="not-a-token")
    assert stale.status_code == 200
    assert turn_entry(stale.json())["username"].endswith(":conntest-127.0.0.1")


def test_ice_servers_are_limited_to_6_a_minute_per_address(relay_daemon):
    codes = [relay_daemon.http("GET", "/api/v1/connection-test/ice-servers").status_code
             for _ in range(7)]
    assert codes == [200] * 6 + [429]
    r = relay_daemon.http("GET", "/api/v1/connection-test/ice-servers")
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "RATE_LIMITED"


# A minimal TURN client (RFC 5766 Allocate with long-term credentials), enough to show that the
# relay's own credential check accepts the anonymous username and refuses a forged password.
MAGIC = 0x2112A442


def stun_message(kind, attributes, key=None):
    tid = os.urandom(12)
    body = b""
    for attr_type, value in attributes:
        body += struct.pack("!HH", attr_type, len(value)) + value + b"\0" * (-len(value) % 4)
    if key is not None:
        # MESSAGE-INTEGRITY covers the header with the length including itself (24 bytes).
        header = struct.pack("!HHI", kind, len(body) + 24, MAGIC) + tid
        mac = hmac.new(key, header + body, hashlib.sha1).digest()
        body += struct.pack("!HH", 0x0008, 20) + mac
    return struct.pack("!HHI", kind, len(body), MAGIC) + tid + body


def stun_attributes(data):
    kind, length = struct.unpack("!HH", data[:4])
    attrs, offset = {}, 20
    while offset < 20 + length:
        attr_type, attr_len = struct.unpack("!HH", data[offset:offset + 4])
        attrs[attr_type] = data[offset + 4:offset + 4 + attr_len]
        offset += 4 + attr_len + (-attr_len % 4)
    return kind, attrs


def allocate(turn_url, username, password):
    """The class of the Allocate answer: 0x0103 success, or the error code (401, 441...)."""
    match = re.match(r"turn:([\d.]+):(\d+)\?transport=udp", turn_url)
    address = (match.group(1), int(match.group(2)))
    udp_transport = (0x0019, bytes([17, 0, 0, 0]))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.sendto(stun_message(0x0003, [udp_transport]), address)
        kind, attrs = stun_attributes(sock.recv(2048))
        assert kind == 0x0113, hex(kind)
        realm, nonce = attrs[0x0014], attrs[0x0015]
        key = hashlib.md5(username.encode() + b":" + realm + b":" + password.encode()).digest()
        request = stun_message(
            0x0003,
            [udp_transport, (0x0006, username.encode()), (0x0014, realm), (0x0015, nonce)],
            key,
        )
        sock.sendto(request, address)
        kind, attrs = stun_attributes(sock.recv(2048))
        if kind == 0x0103:
            return "success"
        error = attrs[0x0009]
        return error[2] * 100 + error[3]


def test_the_relay_accepts_the_anonymous_credentials_and_refuses_forged_ones(relay_daemon):
    entry = turn_entry(relay_daemon.http("GET", "/api/v1/connection-test/ice-servers").json())
    udp_url = next(u for u in entry["urls"] if u.endswith("transport=udp"))
    assert allocate(udp_url, entry["username"], entry["credential"]) == "success"
    assert allocate(udp_url, entry["username"], "forged-password") == 401
    expiry, user = entry["username"].split(":", 1)
    # A longer lifetime under the same password: the HMAC no longer matches.
    assert allocate(udp_url, f"{int(expiry) + 86400}:{user}", entry["credential"]) == 401


# ---- POST /api/v1/diagnostics -------------------------------------------------------------

def diagnostics_body(**overrides):
    body = {
        "kind": "connection-test",
        "summary": "Calls will work. Your network blocks UDP, so calls will use the relay over TCP.",
        "results": {
            "udp": {"ok": False, "rttMs": None, "error": "no answer within 5 s"},
            "tcp": {"ok": True, "rttMs": 12.5, "error": None},
            "tls": {"ok": True, "rttMs": 15, "error": None},
        },
        "media": {"microphone": True, "camera": False},
        "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/131 test_quality_admin",
    }
    body.update(overrides)
    return body


def diagnostics_lines(daemon):
    text = (daemon.data_dir / "daemon.log").read_text(errors="replace")
    return [json.loads(line[line.index("diagnostics: {") + len("diagnostics: "):])
            for line in text.splitlines() if "diagnostics: {" in line]


def wait_for_lines(daemon, count):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = diagnostics_lines(daemon)
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"expected {count} diagnostics lines: {daemon.log_text()}")


def test_a_report_is_logged_as_one_line_with_user_and_address(relay_daemon):
    r = relay_daemon.http("POST", "/api/v1/diagnostics",
                          json=diagnostics_body(summary="line one\ndiagnostics: forged"))
    assert r.status_code == 202, r.text
    assert r.json() == {"received": True}
    alice = relay_daemon.register("dg")
    r = alice.http("POST", "/api/v1/diagnostics", json=diagnostics_body())
    assert r.status_code == 202, r.text
    anonymous, signed_in = wait_for_lines(relay_daemon, 2)
    assert anonymous["user"] is None
    assert anonymous["address"] == "127.0.0.1"
    assert anonymous["summary"] == "line one\ndiagnostics: forged", "kept inside the one line"
    assert anonymous["results"]["udp"] == {"ok": False, "rttMs": None, "error": "no answer within 5 s"}
    assert anonymous["media"] == {"microphone": True, "camera": False}
    assert signed_in["user"] == alice.name
    assert signed_in["results"]["tls"]["rttMs"] == 15


@pytest.mark.parametrize("change, field", [
    ({"kind": "speed-test"}, "kind"),
    ({"summary": "s" * 501}, "summary"),
    ({"userAgent": "u" * 301}, "userAgent"),
    ({"results": {"udp": {"ok": "yes", "rttMs": None, "error": None}}}, "results.udp.ok"),
    ({"results": {"tcp": {"ok": True, "rttMs": -4, "error": None}}}, "results.tcp.rttMs"),
    ({"results": {"tls": {"ok": True, "rttMs": 3, "error": 7}}}, "results.tls.error"),
    ({"results": {"quic": {"ok": True, "rttMs": 3, "error": None}}}, "results.quic"),
    ({"media": {"microphone": True}}, "media.camera"),
    ({"extra": 1}, "extra"),
])
def test_a_malformed_report_is_invalid_payload_naming_the_field(daemon, change, field):
    r = daemon.http("POST", "/api/v1/diagnostics", json=diagnostics_body(**change))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "INVALID_PAYLOAD"
    assert error["message"].startswith(f"{field}: "), error


def test_an_oversized_report_or_one_that_is_not_json_is_refused(daemon):
    big = json.dumps(diagnostics_body(userAgent="u" * 300, summary="s" * 500, padding="p" * 8192))
    r = daemon.http("POST", "/api/v1/diagnostics", data=big,
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    r = daemon.http("POST", "/api/v1/diagnostics", data="{", headers={"Content-Type": "application/json"})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "INVALID_PAYLOAD")
    r = daemon.http("POST", "/api/v1/diagnostics", data=json.dumps(diagnostics_body()),
                    headers={"Content-Type": "text/plain"})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "INVALID_PAYLOAD")


def test_reports_are_limited_to_3_a_minute_per_address_and_refused_ones_do_not_count(relay_daemon):
    for _ in range(5):
        bad = relay_daemon.http("POST", "/api/v1/diagnostics", json=diagnostics_body(kind="x"))
        assert bad.status_code == 400
    codes = [relay_daemon.http("POST", "/api/v1/diagnostics", json=diagnostics_body()).status_code
             for _ in range(4)]
    assert codes == [202, 202, 202, 429]
    assert len(wait_for_lines(relay_daemon, 3)) == 3


# ---- call:stats extension fields, `parley calls show`, metrics ------------------------------

def active_call(daemon, clients):
    alice, bob = daemon.register("xa"), daemon.register("xb")
    caller, callee = clients.device(alice), clients.device(bob)
    call = caller.initiate(bob.id)["call"]
    callee.wait("call:incoming")
    assert callee.act("accept", call["id"])["ok"]
    caller.wait("call:accepted")
    return alice, bob, caller, callee, call["id"]


def stats(call_id, **overrides):
    body = {
        "callId": call_id, "path": "relay", "localCandidate": "relay", "remoteCandidate": "host",
        "relayProtocol": "udp", "rttMs": 30, "jitterMs": 2, "lossInPct": 0, "lossOutPct": 0,
        "iceState": "connected", "localCandidateTypes": ["host", "srflx", "relay"],
        "remoteCandidateTypes": ["host"], "relayProtocols": ["udp"],
    }
    body.update(overrides)
    return body


@pytest.mark.parametrize("field, value", [
    ("iceState", "melted"),
    ("iceState", 3),
    ("localCandidateTypes", "host"),
    ("localCandidateTypes", ["host", "moon"]),
    ("remoteCandidateTypes", ["host"] * 5),
    ("relayProtocols", ["udp", "tcp", "tls", "udp"]),
    ("relayProtocols", ["quic"]),
])
def test_bad_extension_fields_are_invalid_payload_naming_the_field(daemon, clients, field, value):
    _, _, caller, _, call_id = active_call(daemon, clients)
    reply = caller.call("call:stats", stats(call_id, **{field: value}))
    assert error_code(reply) == "INVALID_PAYLOAD"
    assert reply["error"]["message"].startswith(f"{field}: "), reply


def calls_cli(daemon, *args):
    return subprocess.run(
        [str(BINARY), "--config", str(daemon.data_dir / "parley.toml"), "calls", *args],
        capture_output=True, text=True, timeout=30,
        env={k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")},
    )


def metric(daemon, line_start):
    text = daemon.http("GET", "/metrics").text
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{line_start} not in /metrics:\n{text}")


def test_extension_fields_are_stored_and_calls_show_explains_the_failure(daemon, clients):
    setups_before = metric(daemon, "parley_call_setup_seconds_count")
    rtts_before = metric(daemon, "parley_call_rtt_seconds_count")
    alice, bob, caller, callee, call_id = active_call(daemon, clients)
    assert metric(daemon, "parley_call_setup_seconds_count") == setups_before + 1
    assert caller.call("call:stats", stats(call_id))["ok"]
    # The callee's final report: ICE failed, only a host candidate gathered, no relay.
    assert callee.act("end", call_id)["ok"]
    assert callee.call("call:stats", stats(
        call_id, path="direct", localCandidate=None, remoteCandidate=None, relayProtocol=None,
        iceState="failed", localCandidateTypes=["host"], remoteCandidateTypes=["host", "relay"],
        relayProtocols=[]))["ok"]

    listed = calls_cli(daemon, "list", "--poor", "--user", bob.name)
    assert listed.returncode == 0, listed.stderr
    rows = listed.stdout.splitlines()[1:]
    assert len(rows) == 1 and rows[0].startswith(call_id[:12]), listed.stdout
    assert rows[0].endswith("direct good ice:failed"), listed.stdout

    shown = calls_cli(daemon, "show", call_id)
    assert shown.returncode == 0, shown.stderr
    assert "ICE state: failed; gathered: host; remote sent: host, relay; relay over: none" in shown.stdout
    assert "gathered: host, srflx, relay" in shown.stdout, "the caller's report"
    # conftest's daemon runs without the relay.
    assert (f"ICE failed: callee's ({bob.name}) client had no relay candidate; the embedded "
            "relay is disabled") in shown.stdout, shown.stdout

    # Reports count in the metrics only once the call settled (60 s after its end), so a
    # final report cannot move a sample that was already counted.
    assert metric(daemon, "parley_call_rtt_seconds_count") == rtts_before
    text = daemon.http("GET", "/metrics").text
    for family in ("parley_call_setup_seconds", "parley_call_rtt_seconds",
                   "parley_call_loss_ratio", "parley_call_reports_total"):
        assert f"# TYPE {family} " in text, family


def never_connected(call_id, **overrides):
    """What a browser whose ICE failed before any candidate pair was selected sends: no path,
    no figures, only what ICE saw."""
    body = {
        "callId": call_id, "iceState": "failed", "localCandidateTypes": ["host"],
        "remoteCandidateTypes": ["host", "srflx", "relay"], "relayProtocols": [],
    }
    body.update(overrides)
    return body


def test_a_report_without_a_pair_is_stored_without_quality_and_calls_show_diagnoses_it(
        daemon, clients):
    rtts_before = metric(daemon, "parley_call_rtt_seconds_count")
    alice, bob, caller, callee, call_id = active_call(daemon, clients)
    assert caller.call("call:stats", stats(call_id))["ok"]
    reply = callee.call("call:stats", never_connected(call_id, iceState="checking"))
    assert reply["ok"], reply

    # No path, no figures: no verdict for bob's side; alice's side is unaffected.
    for user, expected_null in ((bob, True), (alice, False)):
        r = user.http("GET", f"/api/v1/calls/{call_id}")
        assert r.status_code == 200, r.text
        quality = r.json()["call"]["quality"]
        assert (quality is None) == expected_null, (user.name, quality)
    assert callee.act("end", call_id)["ok"]
    # The final report: ICE failed. Null is as good as absent for the pair's fields.
    reply = callee.call("call:stats", never_connected(
        call_id, path=None, rttMs=None, jitterMs=None, lossInPct=None, lossOutPct=None))
    assert reply["ok"], reply
    items = bob.http("GET", "/api/v1/calls").json()["items"]
    assert next(item for item in items if item["id"] == call_id)["quality"] is None

    listed = calls_cli(daemon, "list", "--poor", "--user", bob.name)
    assert listed.returncode == 0, listed.stderr
    rows = listed.stdout.splitlines()[1:]
    assert len(rows) == 1 and rows[0].startswith(call_id[:12]), listed.stdout
    assert rows[0].endswith("no-pair - ice:failed"), listed.stdout

    shown = calls_cli(daemon, "show", call_id)
    assert shown.returncode == 0, shown.stderr
    assert "  path: no media path (local ?, remote ?)" in shown.stdout, shown.stdout
    assert "  quality: not measured (no candidate pair was selected)" in shown.stdout
    assert ("ICE state: failed; gathered: host; remote sent: host, srflx, relay; relay over: none"
            in shown.stdout), shown.stdout
    # conftest's daemon runs without the relay.
    assert (f"  - ICE failed: callee's ({bob.name}) client had no relay candidate; the embedded "
            "relay is disabled") in shown.stdout, shown.stdout
    # A report without figures never reaches the RTT histogram (nor, once settled, would it).
    assert metric(daemon, "parley_call_rtt_seconds_count") == rtts_before


@pytest.mark.parametrize("ice_state", ["connected", "completed", None])
def test_a_report_without_a_path_while_ice_has_a_pair_is_invalid_payload_naming_path(
        daemon, clients, ice_state):
    _, _, caller, _, call_id = active_call(daemon, clients)
    body = never_connected(call_id, iceState=ice_state)
    reply = caller.call("call:stats", body)
    assert error_code(reply) == "INVALID_PAYLOAD", reply
    assert reply["error"]["message"].startswith("path: missing field"), reply
    # With a path, the figures stay required whatever the ICE state.
    reply = caller.call("call:stats", never_connected(call_id, path="direct"))
    assert error_code(reply) == "INVALID_PAYLOAD", reply
    assert reply["error"]["message"].startswith("rttMs: "), reply
