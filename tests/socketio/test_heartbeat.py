"""The Engine.IO heartbeat on an idle WebSocket, with raw frames: the daemon pings every
`pingInterval` and closes a connection whose pong does not come within `pingTimeout` (both
10 s, `crates/parleyd/src/calls/socket.rs`). Since issue 14 the heartbeat of a WebSocket
session runs in engineioxide's writer task instead of a task of its own (vendor/README.md);
these tests hold it to what a client sees."""

import json
import threading
import time

import websocket

PING_INTERVAL = 10.0
PING_TIMEOUT = 10.0
# The machine running the suite is shared and often busy: timers fire late, never early.
EARLY = 1.0
LATE = 3.0


def ws_url(daemon):
    return daemon.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"


class Watched:
    """A raw Engine.IO WebSocket, signed in, that records when each ping arrives and when the
    connection closes, answering the first `pongs` pings (all of them when None)."""

    def __init__(self, daemon, user, pongs=None):
        self.pongs = pongs
        self.pings = []
        self.closed_at = None
        self.connect_answer = None
        self.ws = websocket.create_connection(ws_url(daemon), timeout=5)
        self.opened_at = time.monotonic()
        self.open_packet = json.loads(self.ws.recv()[1:])
        self.ws.send("40" + json.dumps({"token": user.token}))

    def watch(self, seconds):
        """Reads frames for `seconds` after the connection opened, or until it closes."""
        deadline = self.opened_at + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.ws.settimeout(left)
            try:
                frame = self.ws.recv()
            except websocket.WebSocketTimeoutException:
                return
            except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
                frame = ""
            now = time.monotonic() - self.opened_at
            if frame == "":
                self.closed_at = now
                return
            if frame == "2":
                self.pings.append(now)
                if self.pongs is None or len(self.pings) <= self.pongs:
                    self.ws.send("3")
            elif frame.startswith("40") or frame.startswith("44"):
                self.connect_answer = frame

    def close(self):
        try:
            self.ws.close()
        except Exception:
            pass


def test_the_open_packet_announces_the_ping_interval_and_timeout(daemon):
    ws = websocket.create_connection(ws_url(daemon), timeout=5)
    try:
        opened = ws.recv()
        assert opened.startswith("0{"), opened
        packet = json.loads(opened[1:])
        assert packet["pingInterval"] == PING_INTERVAL * 1000, packet
        assert packet["pingTimeout"] == PING_TIMEOUT * 1000, packet
    finally:
        ws.close()


def test_pings_arrive_every_ping_interval_and_a_client_that_stops_answering_is_closed(daemon):
    """Two idle signed-in connections side by side for about 24 s: one answers every ping and
    stays; the other answers the first ping only and is closed `pingTimeout` after the second
    ping, that is `pingInterval + pingTimeout` after the first."""
    answering = Watched(daemon, daemon.register("beat"))
    silent = Watched(daemon, daemon.register("mute"), pongs=1)
    span = PING_INTERVAL * 2 + LATE + 1
    threads = [threading.Thread(target=w.watch, args=(span,)) for w in (answering, silent)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        for watched in (answering, silent):
            assert watched.connect_answer is not None and watched.connect_answer.startswith(
                "40"
            ), watched.connect_answer

        # The first ping comes at once, then one every ping_interval, while pongs come back.
        assert answering.closed_at is None, answering.closed_at
        assert len(answering.pings) == 3, answering.pings
        assert answering.pings[0] < LATE, answering.pings
        for earlier, later in zip(answering.pings, answering.pings[1:]):
            assert PING_INTERVAL - EARLY <= later - earlier <= PING_INTERVAL + LATE, answering.pings
        # Still served: an event gets its acknowledgement.
        answering.ws.settimeout(5)
        answering.ws.send('421["call:end",{"callId":"nope"}]')
        while True:
            frame = answering.ws.recv()
            if frame.startswith("431["):
                assert json.loads(frame[3:])[0]["error"]["code"] == "CALL_NOT_FOUND", frame
                break

        # The silent one got its second ping (unanswered) and nothing after it but the close.
        assert len(silent.pings) == 2, silent.pings
        assert silent.closed_at is not None, "the connection without pongs stayed open"
        unanswered = silent.pings[1]
        assert PING_TIMEOUT - EARLY <= silent.closed_at - unanswered <= PING_TIMEOUT + LATE, (
            silent.pings,
            silent.closed_at,
        )
        assert (
            PING_INTERVAL + PING_TIMEOUT - EARLY
            <= silent.closed_at
            <= PING_INTERVAL + PING_TIMEOUT + 2 * LATE
        ), (silent.pings, silent.closed_at)
    finally:
        answering.close()
        silent.close()
