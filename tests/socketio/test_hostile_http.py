"""Hostile HTTP input (issue 10): login floods, slow and silent connections, lockout by wrong
passwords, oversized bodies on body-less routes, and display names that impersonate.

Clients that must come from different addresses bind their sockets to distinct 127.x.y.z source
addresses (all of 127.0.0.0/8 is loopback), so no proxy header is needed."""

import http.client
import json
import os
import socket
import statistics
import threading
import time

import pytest

from conftest import PASSWORD, Daemon

MIB = 1024 * 1024


def daemon_with(env, **kwargs):
    """A daemon started with extra `PARLEY_*` settings (the conftest config has no room for keys
    in sections it already writes; the daemon reads the environment over the file)."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        return Daemon(**kwargs)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def make_daemon():
    started = []

    def make(env=None, **kwargs):
        d = daemon_with(env or {}, **kwargs)
        started.append(d)
        return d

    yield make
    for d in started:
        d.close()


def post_from(daemon, source, path, body, timeout=60):
    """POST `body` as JSON from the source address `source`; (status, parsed body or text)."""
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=timeout, source_address=(source, 0))
    try:
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        text = response.read().decode(errors="replace")
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text
    finally:
        conn.close()


def login_from(daemon, source, username, password):
    return post_from(daemon, source, "/api/v1/auth/login", {"username": username, "password": password})


def concurrently(calls):
    """Runs every zero-argument callable in its own thread, all released at once; their results
    (or the exception each raised) in order."""
    barrier = threading.Barrier(len(calls))
    results = [None] * len(calls)

    def run(i, call):
        try:
            barrier.wait(timeout=30)
            results[i] = call()
        except Exception as e:  # the assertion below reports it
            results[i] = e

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a request never finished"
    return results


def proc_kib(daemon, field):
    """A `/proc/PID/status` field of the daemon (VmRSS, VmHWM), in bytes."""
    with open(f"/proc/{daemon.proc.pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{daemon.proc.pid}/status")


def code_of(body):
    return body["error"]["code"] if isinstance(body, dict) and "error" in body else body


# ---- logins: count before hashing, bound the hashing, give the memory back ---------------------


def test_login_flood_from_one_address_hashes_no_more_than_the_limit_issue_10(make_daemon):
    d = make_daemon(login_limit=10)
    results = concurrently(
        [lambda: login_from(d, "127.0.0.1", "nobody-here", "wrong-password") for _ in range(100)]
    )
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors[:3]
    statuses = [status for status, _ in results]
    # Every attempt is counted before its hash starts: at most 10 reach the password check.
    assert statuses.count(401) <= 10, f"{statuses.count(401)} logins were checked, the limit is 10"
    assert statuses.count(401) + statuses.count(429) == 100, statuses
    assert all(code_of(body) == "RATE_LIMITED" for status, body in results if status == 429)


def test_login_spray_from_many_addresses_keeps_memory_bounded_and_gives_it_back_issue_10(make_daemon):
    d = make_daemon(login_limit=10)
    # The first unknown-user login makes the daemon's dummy hash; let it settle before measuring.
    assert login_from(d, "127.0.0.1", "nobody-here", "wrong-password")[0] == 401
    time.sleep(1)
    baseline = proc_kib(d, "VmRSS")
    sources = [f"127.0.{10 + i // 200}.{1 + i % 200}" for i in range(100)]
    results = concurrently([lambda s=s: login_from(d, s, "nobody-here", "wrong-password") for s in sources])
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors[:3]
    peak = proc_kib(d, "VmHWM")
    statuses = [status for status, _ in results]
    assert set(statuses) <= {401, 429}, statuses
    # One argon2 hash needs 19 MiB; bounded concurrent hashes keep the peak to a few of them
    # (unbounded, 100 hashes took 1.9 GiB).
    assert peak - baseline < 150 * MIB, f"peak RSS {peak / MIB:.0f} MiB, baseline {baseline / MIB:.0f} MiB"
    # More than the hashing queue holds: the rest are shed, not queued without end.
    assert statuses.count(429) > 0, "no login was shed"
    assert all(code_of(body) == "RATE_LIMITED" for status, body in results if status == 429)
    # ... and the memory goes back once the flood is over (not kept in malloc arenas).
    deadline = time.monotonic() + 10
    while proc_kib(d, "VmRSS") - baseline >= 16 * MIB and time.monotonic() < deadline:
        time.sleep(0.2)
    after = proc_kib(d, "VmRSS")
    assert after - baseline < 16 * MIB, f"RSS {after / MIB:.0f} MiB after the flood, {baseline / MIB:.0f} MiB before"
    assert d.http("GET", "/healthz").status_code == 200


# ---- lockout ------------------------------------------------------------------------------------


def test_wrong_password_flood_does_not_lock_the_user_out_from_another_address_issue_10(make_daemon):
    d = make_daemon(login_limit=10)
    victim = d.register("victim").name
    attacker = "127.0.20.1"
    statuses = [login_from(d, attacker, victim, "not-the-password")[0] for _ in range(12)]
    assert statuses[:10] == [401] * 10 and statuses[10:] == [429] * 2, statuses
    # The attacker's address stays throttled for this user...
    assert login_from(d, attacker, victim, PASSWORD)[0] == 429
    # ... but the user, elsewhere, logs in.
    status, body = login_from(d, "127.0.20.2", victim, PASSWORD)
    assert status == 200, body
    assert body["user"]["username"] == victim


def test_one_address_guessing_many_usernames_is_throttled_issue_10(make_daemon):
    d = make_daemon(login_limit=10)
    source = "127.0.21.1"
    statuses = [login_from(d, source, f"guess{i}", "not-the-password")[0] for i in range(40)]
    # Per (user, address) alone would let one address try 10 passwords on every username.
    assert 429 in statuses, statuses
    assert login_from(d, "127.0.21.2", "guess0", "not-the-password")[0] == 401


# ---- slow and silent connections --------------------------------------------------------------


def test_silent_slow_and_half_sent_connections_are_closed_and_healthz_keeps_answering_issue_10(make_daemon):
    timeout = 2
    d = make_daemon({"PARLEY_HTTP__HEADER_TIMEOUT_SECS": str(timeout), "PARLEY_HTTP__BODY_TIMEOUT_SECS": str(timeout)})
    sockets = []
    try:
        def connect():
            s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
            sockets.append(s)
            return s

        silent = [connect() for _ in range(30)]
        slow_headers = [connect() for _ in range(10)]
        for s in slow_headers:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        half_body = [connect() for _ in range(10)]
        for s in half_body:
            s.sendall(
                b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n{\"user"
            )
        idle_after_request = [connect() for _ in range(5)]
        for s in idle_after_request:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b"200 OK" in s.recv(4096)
        started = time.monotonic()
        # Keep the slow ones trickling: one header byte every 0.5 s never finishes the head.
        open_sockets = set(silent + slow_headers + half_body + idle_after_request)
        for s in open_sockets:
            s.setblocking(False)
        deadline = started + timeout + 10
        while open_sockets and time.monotonic() < deadline:
            assert d.http("GET", "/healthz").status_code == 200
            for s in list(open_sockets):
                try:
                    if s in slow_headers:
                        s.send(b"X")
                    while s.recv(4096):
                        pass
                    open_sockets.discard(s)  # b"": closed by the daemon
                except BlockingIOError:
                    pass
                except OSError:
                    open_sockets.discard(s)  # reset by the daemon
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        assert not open_sockets, f"{len(open_sockets)} of 55 connections still open after {elapsed:.1f} s"
        assert d.http("GET", "/healthz").status_code == 200
    finally:
        for s in sockets:
            s.close()


# ---- oversized bodies --------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["end", "cancel"])
def test_ten_megabyte_body_on_end_or_cancel_is_payload_too_large_issue_10(daemon, action):
    user = daemon.register()
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as s:
        s.sendall(
            f"POST /api/v1/calls/{'0' * 32}/{action} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {user.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {10 * MIB}\r\n\r\n".encode()
        )
        # The first 64 KiB + 1 of the 10 MB: enough to be over the limit. Sending the rest would
        # only race the daemon's answer (it stops reading at the limit and closes).
        s.sendall(b"{" + b" " * (64 * 1024))
        response = http.client.HTTPResponse(s)
        response.begin()
        body = json.loads(response.read())
    assert response.status == 413, body
    assert body["error"]["code"] == "PAYLOAD_TOO_LARGE"


# ---- display names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "display_name",
    [
        "\u202eevil",  # right-to-left override
        "admin\u2066x\u2069",  # isolates
        "a\u200fb",  # right-to-left mark
        "zero\u200bwidth",  # zero-width space
        "soft\u00adhyphen",
        "line\u2028break",
        "tab\tname",
    ],
)
def test_display_name_with_bidi_or_format_characters_is_refused_issue_10(daemon, display_name):
    r = daemon.http(
        "POST",
        "/api/v1/auth/register",
        json={"username": f"bidi{time.monotonic_ns() % 10**9}", "password": PASSWORD, "displayName": display_name},
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "INVALID_PAYLOAD"
    assert "displayName" in r.json()["error"]["message"]


def test_ordinary_display_names_are_kept_and_the_directory_shows_usernames_beside_copies(daemon):
    names = []
    for display_name in ["Zoë Ångström", "Ñandú", "محمد علی", "王小明", "Alice 👩\u200d💻"]:
        username = f"plain{time.monotonic_ns() % 10**9}"
        r = daemon.http(
            "POST",
            "/api/v1/auth/register",
            json={"username": username, "password": PASSWORD, "displayName": display_name},
        )
        assert r.status_code == 201, r.text
        assert r.json()["user"]["displayName"] == display_name
        names.append(username)
    # Two accounts may share a display name; the directory tells them apart by username.
    first = daemon.register("twin")
    second = daemon.register("twin")
    for user in (first, second):
        r = daemon.http(
            "POST",
            "/api/v1/auth/register",
            json={"username": user.name + "b", "password": PASSWORD, "displayName": "Same Name"},
        )
        assert r.status_code == 201, r.text
    listed = first.http("GET", "/api/v1/users").json()["users"]
    same = [u for u in listed if u["displayName"] == "Same Name"]
    assert len(same) >= 2 and len({u["username"] for u in same}) == len(same)


def test_login_flood_leaves_the_cpu_to_everyone_else_issue_10(make_daemon):
    d = make_daemon(login_limit=10)
    user = d.register("busy")
    sources = [f"127.0.{30 + i // 200}.{1 + i % 200}" for i in range(200)]
    done = threading.Event()
    latencies = []

    def probe():
        while not done.is_set():
            started = time.monotonic()
            assert user.http("GET", "/api/v1/me").status_code == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.05)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        results = concurrently([lambda s=s: login_from(d, s, "nobody-here", "wrong-password") for s in sources])
    finally:
        done.set()
        prober.join(timeout=30)
    assert not [r for r in results if isinstance(r, Exception)]
    # Unbounded, 200 hashes at once took both cores for seconds (slowest request 9.6 s);
    # bounded, one core stays free. The bounds leave room for a machine that is busy anyway
    # (seen: 1.07 s slowest beside stress-ng on both cores and two fuzzers).
    assert latencies, "the prober never completed a request"
    slowest, typical = max(latencies), statistics.median(latencies)
    assert slowest < 3.0, f"slowest authenticated request {slowest:.2f} s"
    assert typical < 0.5, f"median authenticated request {typical:.2f} s"


@pytest.mark.parametrize(
    "method,path",
    [
        ("POST", "/api/v1/calls/%FF%FE/decline"),
        ("POST", "/api/v1/calls/%FF%FE/accept"),
        ("GET", "/api/v1/calls/%FF%FE"),
        ("DELETE", "/api/v1/calls/%C0"),
        ("GET", "/api/v1/calls?before=%FF"),
    ],
)
def test_fuzz_finding_path_utf8_is_answered_in_the_protocols_error_shape(daemon, method, path):
    """Found by the `http_api` fuzz target (docs/security.md, `path-utf8`): a call id or query
    that is not UTF-8 after percent-decoding got axum's text/plain 400, which clients cannot read."""
    user = daemon.register("utf8")
    r = user.http(method, path, json={} if method == "POST" else None)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    assert r.json()["error"]["code"] == "INVALID_PAYLOAD", r.text
