"""Drives the real daemon (target/debug/parley) with independent clients: python-socketio for
the realtime protocol and requests for HTTP. Every daemon gets a temp data dir, a config file,
and free 127.0.0.1 ports; it is stopped (SIGTERM, then SIGKILL) when the test is done."""

import itertools
import json
import os
import pathlib
import queue
import signal
import socket
import subprocess
import tempfile
import time
import uuid

import engineio.payload
import pytest
import requests
import socketio

# python-engineio refuses a long-polling response that batches more than 16 packets ("Too many
# packets in payload") and drops the connection; the JavaScript client has no such cap, and the
# server batches whatever is queued, so a burst of signaling to a polling client needs more.
engineio.payload.Payload.max_decode_packets = 4096

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARY = ROOT / "target" / "debug" / "parley"
PASSWORD = "correct-horse-battery"
_names = itertools.count(1)


# How the daemon's log shows a listener that could not bind (`EADDRINUSE`'s text from Rust's std).
ADDRESS_IN_USE = "(os error 98)"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """One `parley serve` process."""

    def __init__(self, calls="", extra="", data_dir=None, login_limit=100000, db_dir=None, ring_timeout_secs=2):
        """`db_dir`: where the database lives, when not beside the config and log in `data_dir`
        (the disk tests put it on a small loop-mounted file system)."""
        self.login_limit = login_limit
        self.db_dir = db_dir
        self.ring_timeout_secs = ring_timeout_secs
        if not BINARY.exists():
            raise RuntimeError(f"{BINARY} is missing: run `cargo build -p parleyd` first")
        self._tmp = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="parley-sio-")
            data_dir = self._tmp.name
        self.data_dir = pathlib.Path(data_dir)
        self.calls = calls
        self.extra = extra
        self.proc = None
        self.start()

    def start(self, attempts=3):
        """Starts the daemon on a new free port. `free_port` only says the port was free when it
        looked: if something binds it before the daemon does (an ephemeral client port), the
        daemon exits on `EADDRINUSE` and this tries another port, `attempts` times in all."""
        try:
            self._start()
        except RuntimeError as e:
            if attempts <= 1 or ADDRESS_IN_USE not in str(e):
                raise
            self.log.close()
            self.start(attempts - 1)

    def _start(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = self.data_dir / "parley.toml"
        config.write_text(
            f"""
[http]
listen = "127.0.0.1:{self.port}"
[storage]
data_dir = "{self.db_dir or self.data_dir}"
[turn]
enabled = false
[auth]
# Tests register many users from 127.0.0.1; registrations share the login limiter.
login_attempts_per_minute = {self.login_limit}
[log]
level = "info"
[calls]
ring_timeout_secs = {self.ring_timeout_secs}
reconnect_grace_secs = 2
{self.calls}
{self.extra}
"""
        )
        self.log = open(self.data_dir / "daemon.log", "ab")
        self.proc = subprocess.Popen(
            [str(BINARY), "--config", str(config), "serve"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"parley exited with {self.proc.returncode}: {self.log_text()}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"parley did not become healthy: {self.log_text()}")

    def log_text(self):
        return (self.data_dir / "daemon.log").read_text(errors="replace")[-4000:]

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def close(self):
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    # ---- HTTP helpers -------------------------------------------------------------------

    def http(self, method, path, token=None, **kwargs):
        headers = kwargs.pop("headers", {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return requests.request(method, self.url + path, headers=headers, timeout=10, **kwargs)

    def register(self, prefix="user"):
        name = f"{prefix}{next(_names)}x{uuid.uuid4().hex[:6]}"
        r = self.http("POST", "/api/v1/auth/register", json={"username": name, "password": PASSWORD})
        assert r.status_code == 201, r.text
        body = r.json()
        return User(self, body["user"], body["token"])


class User:
    def __init__(self, daemon, info, token):
        self.daemon = daemon
        self.info = info
        self.id = info["id"]
        self.name = info["username"]
        self.token = token

    def device(self, device_id=None, transport="websocket", connect=True):
        return Device(self, device_id or f"dev-{uuid.uuid4().hex[:8]}", transport, connect)

    def http(self, method, path, **kwargs):
        return self.daemon.http(method, path, token=self.token, **kwargs)


class Device:
    """One socket of a user: every received event is queued for `wait`."""

    def __init__(self, user, device_id, transport, connect=True):
        self.user = user
        self.device_id = device_id
        self.transport = transport
        self.events = queue.Queue()
        self.seen = []
        self.connect_errors = []
        self.sio = socketio.Client(reconnection=False, engineio_logger=bool(os.environ.get("PARLEY_TEST_EIO_LOG")))
        self.sio.on("*", self._on_event)
        self.sio.on("connect_error", lambda data=None: self.connect_errors.append(data))
        self.session = None
        if connect:
            self.connect()

    def _on_event(self, event, *args):
        self.events.put((event, args[0] if args else None))

    def connect(self, auth=None):
        if auth is None:
            auth = {"token": self.user.token, "deviceId": self.device_id}
        self.sio.connect(
            self.user.daemon.url,
            auth=auth,
            transports=[self.transport],
            wait_timeout=5,
        )
        self.session = self.wait("session")
        return self.session

    def wait(self, name, timeout=5, where=None):
        """The next `name` event (matching `where`), keeping other events for later."""
        deadline = time.monotonic() + timeout
        for i, (event, data) in enumerate(self.seen):
            if event == name and (where is None or where(data)):
                del self.seen[i]
                return data
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.user.name}/{self.device_id}: no {name} within {timeout}s; got {self.seen}")
            try:
                event, data = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if event == name and (where is None or where(data)):
                return data
            self.seen.append((event, data))

    def assert_none(self, name, within=0.5, where=None):
        """No `name` event (matching `where`: tests share a daemon, so an assertion about
        broadcasts names the test's own users) arrives within `within` seconds."""
        time.sleep(within)
        while not self.events.empty():
            self.seen.append(self.events.get())
        hits = [d for e, d in self.seen if e == name and (where is None or where(d))]
        assert not hits, f"unexpected {name}: {hits}"

    def call(self, event, data, timeout=10):
        return self.sio.call(event, data, timeout=timeout)

    def emit(self, event, data):
        self.sio.emit(event, data)

    def disconnect(self):
        if self.sio.connected:
            self.sio.disconnect()

    # Shorthands.
    def initiate(self, to, media="audio"):
        return self.call("call:initiate", {"to": to, "media": media})

    def act(self, action, call_id, **extra):
        return self.call(f"call:{action}", {"callId": call_id, **extra})


def error_code(ack):
    assert ack["ok"] is False, ack
    return ack["error"]["code"]


@pytest.fixture(scope="module")
def daemon():
    d = Daemon()
    yield d
    d.close()


@pytest.fixture(params=["websocket", "polling"])
def transport(request):
    return request.param


@pytest.fixture
def clients():
    """Collects devices so every socket is closed after the test."""
    devices = []

    class Clients:
        def device(self, user, **kwargs):
            d = user.device(**kwargs)
            devices.append(d)
            return d

    yield Clients()
    for d in devices:
        try:
            d.disconnect()
        except Exception:
            pass


class PreparedSocket:
    """A raw Socket.IO client whose Engine.IO transport (a WebSocket) is opened ahead of time,
    so that its Socket.IO CONNECT can be sent at a moment the test chooses and reach the server
    within a millisecond, however loaded the machine is: python-socketio's `connect` does the
    Engine.IO handshake and the CONNECT in one step, which can take longer than the presence
    window on a busy CI machine."""

    def __init__(self, user, device_id):
        import websocket  # websocket-client, also python-engineio's WebSocket transport

        self.user = user
        self.device_id = device_id
        url = user.daemon.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        self.ws = websocket.create_connection(url, timeout=5)
        opened = self.ws.recv()
        assert opened.startswith("0{"), opened

    def send_connect(self):
        self.ws.send("40" + json.dumps({"token": self.user.token, "deviceId": self.device_id}))

    def wait_connected(self, timeout=5):
        """Reads frames until the namespace CONNECT reply and the `session` event arrived.
        The events that came before `session` are kept in `before_session` (names)."""
        deadline = time.monotonic() + timeout
        connected = session = False
        self.before_session = []
        while not (connected and session):
            frame = self._recv(deadline)
            if frame.startswith("40"):
                connected = True
            elif frame.startswith('42["session"'):
                session = True
            elif frame.startswith("42"):
                self.before_session.append(json.loads(frame[2:])[0])
            elif frame.startswith("44"):
                raise AssertionError(f"connect refused: {frame}")

    def next_event(self, timeout=5):
        """The next event received, as (name, data)."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self._recv(deadline)
            if frame.startswith("42"):
                name, *data = json.loads(frame[2:])
                return name, data[0] if data else None

    def _recv(self, deadline):
        """The next frame other than a ping (which is answered)."""
        while True:
            self.ws.settimeout(max(0.01, deadline - time.monotonic()))
            frame = self.ws.recv()
            if frame == "2":
                self.ws.send("3")
            else:
                return frame

    def close(self):
        try:
            self.ws.close()
        except Exception:
            pass
