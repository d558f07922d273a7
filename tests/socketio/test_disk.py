"""Durability when the disk under the database fills, fails or loses power (issue 10).

Each test puts the database on a small ext4 image of its own, loop-mounted by the test (these
tests need root, as the suite runs in CI), and unmounts and detaches it afterwards, also on
failure. The daemon's config file and log stay on the ordinary temp directory so that only the
database feels the disk. The kernel here has no device-mapper, so the failures are made with
ext4's own mechanisms:

- a full disk: a filler file written (as root, so the reserved blocks go too) until ENOSPC;
- every I/O failing: the ext4 shutdown ioctl (`EXT4_IOC_SHUTDOWN`, what xfstests' `godown` uses),
  after which every read and write on the filesystem returns EIO;
- a power cut: the same ioctl with `NOLOGFLUSH`, which drops everything not yet on the device
  (dirty pages and the uncommitted journal), then a kill, an unmount and a fresh mount.
"""

import contextlib
import fcntl
import os
import pathlib
import signal
import sqlite3
import statistics
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import PASSWORD, Daemon, error_code

# _IOR('X', 125, __u32) from linux/ext4.h (also XFS_IOC_GOINGDOWN).
EXT4_IOC_SHUTDOWN = 0x8004587D
GOING_FLAGS_LOGFLUSH = 0x1  # flush the journal, then fail every I/O
GOING_FLAGS_NOLOGFLUSH = 0x2  # fail every I/O now: what was not on the device is lost


def run(*argv):
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


class LoopDisk:
    """A fresh ext4 filesystem on a loop device backed by a sparse file."""

    def __init__(self, size_mb):
        self.tmp = tempfile.TemporaryDirectory(prefix="parley-disk-")
        base = pathlib.Path(self.tmp.name)
        self.image = base / "disk.img"
        self.mountpoint = base / "mnt"
        self.mountpoint.mkdir()
        with open(self.image, "wb") as f:
            f.truncate(size_mb * 1024 * 1024)
        self.device = None
        self.mounted = False
        self.filler = self.mountpoint / "filler"

    def attach(self):
        self.device = run("losetup", "--find", "--show", str(self.image))
        run("mkfs.ext4", "-q", "-F", self.device)
        self.mount()

    def mount(self):
        run("mount", "-t", "ext4", self.device, str(self.mountpoint))
        self.mounted = True

    def umount(self):
        if self.mounted:
            for _ in range(50):
                if subprocess.run(["umount", str(self.mountpoint)], capture_output=True).returncode == 0:
                    break
                time.sleep(0.1)
            else:
                subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True)
            self.mounted = False

    def fill(self):
        """Writes until the filesystem refuses: the database can no longer grow."""
        # Unbuffered, so that a refused write is not retried by a flush at close.
        with open(self.filler, "ab", buffering=0) as f:
            for size in (64 * 1024, 1024):
                try:
                    while True:
                        f.write(b"\0" * size)
                except OSError:
                    pass
        os.sync()

    def free(self):
        self.filler.unlink()
        os.sync()

    def shutdown(self, flags):
        fd = os.open(self.mountpoint, os.O_RDONLY)
        try:
            fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, flags.to_bytes(4, "little"))
        finally:
            os.close(fd)

    def close(self):
        self.umount()
        if self.device:
            subprocess.run(["losetup", "-d", self.device], capture_output=True)
            self.device = None
        self.tmp.cleanup()


@pytest.fixture
def disk():
    """A loop-mounted 16 MiB ext4 disk with a daemon whose database lives on it."""
    loop = LoopDisk(16)
    daemon = None
    try:
        loop.attach()
        db_dir = loop.mountpoint / "data"
        daemon = Daemon(db_dir=db_dir, ring_timeout_secs=30)
        yield loop, daemon
    finally:
        if daemon is not None:
            daemon.stop(sig=signal.SIGKILL)
            print(daemon.log_text())  # shown by pytest when the test failed
            daemon.close()
        loop.close()


def rows(path):
    db = sqlite3.connect(path)
    try:
        return {
            row[0]: row[1:]
            for row in db.execute("SELECT id, state, status, reason, answered_at IS NOT NULL FROM calls")
        }
    finally:
        db.close()


def pair(d, clients_list):
    alice, bob = d.register("alice"), d.register("bob")
    a, b = alice.device(), bob.device()
    clients_list += [a, b]
    return alice, bob, a, b


@contextlib.contextmanager
def closing_devices():
    devices = []
    try:
        yield devices
    finally:
        for device in devices:
            with contextlib.suppress(Exception):
                device.disconnect()


def test_full_disk_never_acknowledges_an_unrecorded_call_action(disk):
    """Issue 10, item 6: on a full disk, initiate/accept/end were all acknowledged and none was
    written. Every acknowledged step must be in the log (once space returns at the latest);
    what cannot be written is refused with INTERNAL."""
    loop, d = disk
    with closing_devices() as devices:
        alice, bob, a, b = pair(d, devices)
        rung = a.initiate(bob.name)["call"]
        b.wait("call:incoming")
        os.sync()
        loop.fill()

        acked = {}  # call id -> the state its last acknowledged step implies
        refused = 0
        accept = b.act("accept", rung["id"])
        if accept["ok"]:
            acked[rung["id"]] = "active"
            if a.act("end", rung["id"])["ok"]:
                acked[rung["id"]] = "ended"
        else:
            assert error_code(accept) == "INTERNAL"
            refused += 1
            # The call cannot go on unrecorded: the server ends it for both.
            assert a.wait("call:ended", where=lambda e: e["callId"] == rung["id"])["endedBy"] is None
            b.wait("call:ended", where=lambda e: e["callId"] == rung["id"])
            end = a.act("end", rung["id"])
            assert not end["ok"]
        for _ in range(5):
            started = a.initiate(bob.name)
            if not started["ok"]:
                assert error_code(started) == "INTERNAL", started
                refused += 1
                continue
            call_id = started["call"]["id"]
            acked[call_id] = "ringing"
            b.wait("call:incoming", where=lambda e: e["call"]["id"] == call_id)
            if b.act("accept", call_id)["ok"]:
                acked[call_id] = "active"
            if a.act("end", call_id)["ok"]:
                acked[call_id] = "ended"
            else:
                a.act("end", call_id)
        # Nothing refused reached the callee as an incoming call.
        b.assert_none("call:incoming", within=0.3, where=lambda e: e["call"]["id"] not in acked)

        loop.free()
        # The server keeps serving: a call after space returns works and is recorded.
        after = a.initiate(bob.name)
        assert after["ok"], after
        b.wait("call:incoming", where=lambda e: e["call"]["id"] == after["call"]["id"])
        assert b.act("decline", after["call"]["id"])["ok"]
        acked[after["call"]["id"]] = "ended"

        deadline = time.monotonic() + 10
        while True:
            found = rows(d.db_dir / "parley.db")
            missing = {
                call_id: state
                for call_id, state in acked.items()
                if call_id not in found
                or (state == "ended" and found[call_id][0] != "ended")
                or (state == "active" and not found[call_id][3])
            }
            # The call the server ended because a step could not be written is recorded ended
            # once space returns (retried, not lost).
            unfinished = rung["id"] in found and found[rung["id"]][0] != "ended" and rung["id"] not in acked
            if not missing and not unfinished:
                break
            assert time.monotonic() < deadline, f"acknowledged but not recorded: {missing}; rows {found}"
            time.sleep(0.2)
        assert refused > 0, f"nothing was refused on a full disk: {acked}"


def test_full_disk_login_never_hands_out_an_unstored_token(disk):
    """Issue 10, item 6: a login on a full disk answered 200 with a token whose session was never
    stored (`/me` then said 401): `INSERT ... RETURNING` hid the error."""
    loop, d = disk
    user = d.register("carol")
    os.sync()
    loop.fill()
    outcomes = []
    for _ in range(3):
        r = d.http("POST", "/api/v1/auth/login", json={"username": user.name, "password": PASSWORD})
        if r.status_code == 200:
            me = d.http("GET", "/api/v1/me", token=r.json()["token"])
            assert me.status_code == 200, f"login answered 200 but its token does not work: {me.text}"
            outcomes.append("stored")
        else:
            assert r.status_code == 500 and r.json()["error"]["code"] == "INTERNAL", r.text
            outcomes.append("refused")
    assert "refused" in outcomes, outcomes


def test_full_disk_registration_is_refused_and_never_logged_as_done(disk):
    """Issue 10, item 6: on a full disk a registration logged "registered user X" for an account
    that was never stored (`INSERT ... RETURNING` hid the failed commit)."""
    loop, d = disk
    d.register("warmup")
    os.sync()
    loop.fill()
    names = [f"newcomer{i}" for i in range(3)]
    refused = []
    for name in names:
        r = d.http("POST", "/api/v1/auth/register", json={"username": name, "password": PASSWORD})
        if r.status_code == 201:
            token = r.json()["token"]
            me = d.http("GET", "/api/v1/me", token=token)
            assert me.status_code == 200, f"registered but the token does not work: {me.text}"
        else:
            assert r.status_code == 500 and r.json()["error"]["code"] == "INTERNAL", r.text
            refused.append(name)
    assert refused, "the disk was full, yet every registration was stored"
    log = d.log_text()
    for name in refused:
        assert f"registered user {name} " not in log, f"{name} was refused but logged as registered"


def test_failing_io_refuses_cancel_and_readyz_says_so(disk):
    """Issue 10, items 6 and 9: with every I/O failing, `call:cancel` was acknowledged unwritten
    and `/readyz` still said 200 "database up"."""
    loop, d = disk
    with closing_devices() as devices:
        alice, bob, a, b = pair(d, devices)
        call = a.initiate(bob.name)["call"]
        b.wait("call:incoming")
        assert d.http("GET", "/readyz").status_code == 200
        loop.shutdown(GOING_FLAGS_LOGFLUSH)
        cancel = a.act("cancel", call["id"])
        assert error_code(cancel) == "INTERNAL", cancel
        # `/readyz` probes at most once a second: the answer may lag by that much.
        deadline = time.monotonic() + 10
        while (ready := d.http("GET", "/readyz")).status_code != 503:
            assert time.monotonic() < deadline, f"/readyz still {ready.status_code}: {ready.text}"
            time.sleep(0.3)
        assert ready.json()["database"] != "up", ready.text
        # The daemon itself keeps serving.
        assert d.http("GET", "/healthz").status_code == 200


def test_readyz_follows_a_full_disk(disk):
    """Issue 10, item 9: `/readyz` said 200 with the disk full; it must say 503 while the
    database cannot take a write and 200 again once it can."""
    loop, d = disk
    assert d.http("GET", "/readyz").status_code == 200
    os.sync()
    loop.fill()
    deadline = time.monotonic() + 10
    while (ready := d.http("GET", "/readyz")).status_code != 503:
        assert time.monotonic() < deadline, f"/readyz still {ready.status_code} on a full disk: {ready.text}"
        time.sleep(0.3)
    assert ready.json()["database"] != "up", ready.text
    loop.free()
    deadline = time.monotonic() + 10
    while (ready := d.http("GET", "/readyz")).status_code != 200:
        assert time.monotonic() < deadline, f"/readyz still {ready.status_code} after space returned: {ready.text}"
        time.sleep(0.3)


def test_power_cut_keeps_acknowledged_calls(disk):
    """Issue 10, item 10: completed calls acknowledged just before an unflushed stop were lost
    (WAL with synchronous=NORMAL). An acknowledged record is on the device."""
    loop, d = disk
    with closing_devices() as devices:
        alice, bob, a, b = pair(d, devices)
        os.sync()  # the accounts are on the device; only what follows is at stake
        completed = []
        for _ in range(5):
            call = a.initiate(bob.name)["call"]
            b.wait("call:incoming", where=lambda e: e["call"]["id"] == call["id"])
            assert b.act("accept", call["id"])["ok"]
            assert a.act("end", call["id"])["ok"]
            completed.append(call["id"])
        # Power cut: nothing that is not on the device yet survives.
        loop.shutdown(GOING_FLAGS_NOLOGFLUSH)
    d.stop(sig=signal.SIGKILL)
    loop.umount()
    loop.mount()
    found = rows(d.db_dir / "parley.db")
    lost = [c for c in completed if c not in found or found[c][0] != "ended"]
    assert not lost, f"{len(lost)} of {len(completed)} acknowledged calls lost: {found}"


def test_pending_write_does_not_stall_other_calls(disk):
    """Issue 10, item 7: the single call driver waited on each call-log write, so one slow or
    failing write delayed every other call's signaling. Here another process holds the database's
    write lock for a while: the call started meanwhile is acknowledged only once it is written,
    and an unrelated active call's offers keep flowing."""
    loop, d = disk
    with closing_devices() as devices:
        alice, bob, a, b = pair(d, devices)
        carol, dave = d.register("carol"), d.register("dave")
        c, e = carol.device(), dave.device()
        devices += [c, e]
        other = c.initiate(dave.name)["call"]
        e.wait("call:incoming")
        assert e.act("accept", other["id"])["ok"]
        c.wait("call:accepted")

        hold = 2.5
        locked = threading.Event()
        times = {}

        def hold_lock():
            locker = sqlite3.connect(d.db_dir / "parley.db", timeout=10, isolation_level=None)
            try:
                locker.execute("BEGIN IMMEDIATE")
                locked.set()
                time.sleep(hold)
                times["released"] = time.monotonic()
                locker.execute("COMMIT")
            finally:
                locked.set()
                locker.close()

        def start_call():
            times["ack"] = a.initiate(bob.name)
            times["acked"] = time.monotonic()

        holder = threading.Thread(target=hold_lock)
        holder.start()
        starter = None
        try:
            assert locked.wait(5)
            starter = threading.Thread(target=start_call)
            starter.start()
            time.sleep(0.2)  # the initiate is now waiting on its write
            delays = []
            for i in range(8):
                sent = time.monotonic()
                assert c.call("signal:offer", {"callId": other["id"], "sdp": f"v=0 offer {i}"})["ok"]
                e.wait("signal:offer", where=lambda m, i=i: m["sdp"] == f"v=0 offer {i}")
                delays.append(time.monotonic() - sent)
                time.sleep(0.05)
        finally:
            holder.join(timeout=15)
            if starter is not None:
                starter.join(timeout=15)
        assert times["ack"]["ok"], times
        assert times["acked"] >= times["released"], "the call was acknowledged before it was written"
        # Before the fix every offer waited for the lock (about 2 s); a relay takes milliseconds.
        assert statistics.median(delays) < 0.5 and max(delays) < 1.5, delays
        b.wait("call:incoming", where=lambda m: m["call"]["id"] == times["ack"]["call"]["id"])


def test_failing_writes_do_not_stall_other_calls(disk):
    """Issue 10, item 7: every failed call-log write held the single call driver for about half a
    second of retries, so an unrelated call's offer/answer reached p95 541 ms (max 1.06 s). Here
    two callers keep starting calls that cannot be written (full disk) while an active call,
    set up before, exchanges offers."""
    loop, d = disk
    with closing_devices() as devices:
        users = [d.register(name) for name in ("alice", "bob", "carol", "dave", "erin", "frank")]
        a, b, c, e, f, g = (user.device() for user in users)
        devices += [a, b, c, e, f, g]
        other = c.initiate(users[3].name)["call"]
        e.wait("call:incoming")
        assert e.act("accept", other["id"])["ok"]
        c.wait("call:accepted")
        os.sync()
        loop.fill()

        stop = threading.Event()
        refused = []

        def keep_calling(device, callee):
            while not stop.is_set():
                ack = device.initiate(callee.name)
                if ack["ok"]:
                    device.act("cancel", ack["call"]["id"])
                else:
                    refused.append(ack["error"]["code"])
                time.sleep(0.02)

        callers = [
            threading.Thread(target=keep_calling, args=(a, users[1])),
            threading.Thread(target=keep_calling, args=(f, users[5])),
        ]
        for caller in callers:
            caller.start()
        delays = []
        try:
            time.sleep(0.3)
            for i in range(12):
                sent = time.monotonic()
                assert c.call("signal:offer", {"callId": other["id"], "sdp": f"v=0 offer {i}"})["ok"]
                e.wait("signal:offer", where=lambda m, i=i: m["sdp"] == f"v=0 offer {i}")
                delays.append(time.monotonic() - sent)
                time.sleep(0.1)
        finally:
            stop.set()
            for caller in callers:
                caller.join(timeout=15)
        # Before the fix the median was a few hundred milliseconds; a relay takes milliseconds.
        assert statistics.median(delays) < 0.15, sorted(delays)
        # The calls were refused for what they were (a caller going fast may also meet its
        # rate limit), never acknowledged unwritten.
        assert "INTERNAL" in refused and set(refused) <= {"INTERNAL", "RATE_LIMITED"}, refused
