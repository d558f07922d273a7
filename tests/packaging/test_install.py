"""Installs the .deb for real into a debootstrapped Debian root and runs what it installed.

The steps run in order and share one root (pytest runs a module's tests in file order):
install -> first start over HTTPS -> first admin -> upgrade keeps data and a call in progress
-> remove -> purge.

The daemon runs the way the installed unit says (ExecStart, User, EnvironmentFile, UMask) in
a private network namespace, so the packaged `listen = "0.0.0.0:443"` binds without touching
the host. Inside it `net.ipv4.ip_unprivileged_port_start = 0` stands in for the unit's
AmbientCapabilities=CAP_NET_BIND_SERVICE (systemd itself is not running in a chroot).
"""

import json
import os
import shlex
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import need, run

CONF = "/etc/parley/parley.toml"
STATE = "/var/lib/parley"
PASSWORD = "correct horse battery staple"


class Netns:
    def __init__(self):
        self.name = f"parley-pkg-{os.getpid()}"

    def __enter__(self):
        need("ip")
        run("ip", "netns", "add", self.name)
        run("ip", "-n", self.name, "link", "set", "lo", "up")
        run("ip", "netns", "exec", self.name, "sysctl", "-qw",
            "net.ipv4.ip_unprivileged_port_start=0")
        return self

    def __exit__(self, *exc):
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)

    def run(self, *args, **kwargs):
        return run("ip", "netns", "exec", self.name, *args, **kwargs)


def unit_settings(root):
    for directory in ("usr/lib/systemd/system", "lib/systemd/system"):
        path = root.file(directory) / "parley.service"
        if path.exists():
            found = {}
            for line in path.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith(("#", ";", "[")):
                    key, _, value = line.partition("=")
                    found.setdefault(key.strip(), []).append(value.strip())
            return found
    raise AssertionError("parley.service is not installed in the root")


def environment_file(root, unit):
    env = {}
    for entry in unit.get("EnvironmentFile", []):
        path = root.file(entry.lstrip("-"))
        if not path.exists():
            assert entry.startswith("-"), f"required EnvironmentFile {entry} is missing"
            continue
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                env[key] = value
    return env


class Daemon:
    """The installed ExecStart, as the installed User, with the unit's environment and umask."""

    def __init__(self, root, netns, log_path):
        self.root, self.netns, self.log_path = root, netns, log_path
        unit = unit_settings(root)
        self.user = unit["User"][0]
        umask = int(unit.get("UMask", ["0022"])[0], 8)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **environment_file(root, unit)}
        command = shlex.split(unit["ExecStart"][0])
        self.log = open(log_path, "ab")
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", netns.name, "chroot", f"--userspec={self.user}:{self.user}",
             str(root.path), *command],
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
            preexec_fn=lambda: os.umask(umask),
        )

    def output(self):
        return Path(self.log_path).read_text(errors="replace")

    def wait_healthy(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (
                f"parley exited with {self.process.returncode}:\n{self.output()}")
            status = self.netns.run(
                "curl", "-sk", "--max-time", "2", "-o", "/dev/null", "-w", "%{http_code}",
                "https://127.0.0.1:443/healthz", check=False).stdout
            if status == "200":
                return
            time.sleep(0.3)
        raise AssertionError(f"no HTTPS /healthz within {timeout} s:\n{self.output()}")

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"parley ignored SIGTERM for 20 s:\n{self.output()}")
        self.log.close()
        return self.process.returncode


@pytest.fixture(scope="module")
def netns():
    need("curl")
    with Netns() as namespace:
        yield namespace


@pytest.fixture(scope="module")
def state():
    return {}


def apt_install(root, deb_path):
    target = root.file("/tmp") / deb_path.name
    target.write_bytes(Path(deb_path).read_bytes())
    # --no-install-recommends: the package alone, without fetching ca-certificates from a mirror.
    result = root.run("apt-get", "install", "-y", "--no-install-recommends", "-o", "Dpkg::Use-Pty=0",
                      f"/tmp/{deb_path.name}", timeout=300)
    target.unlink()
    return result.stdout + result.stderr


def owner(root, path):
    status = root.run("stat", "-c", "%U:%G %a", path).stdout.split()
    return status[0], status[1]


def test_1_install_creates_user_config_and_enables_the_unit(debian_root, deb, state):
    output = apt_install(debian_root, deb)
    state["install_output"] = output
    assert "user add" in output, f"postinst prints the next step:\n{output}"
    assert "https://" in output, f"postinst prints the URL:\n{output}"
    passwd = debian_root.run("getent", "passwd", "parley").stdout
    assert passwd.split(":")[6].strip() == "/usr/sbin/nologin"
    assert int(passwd.split(":")[2]) < 1000, "a system user"
    # Conffile: mode 0640, root:parley, kept across upgrades through dpkg-statoverride.
    assert owner(debian_root, CONF) == ("root:parley", "640")
    assert owner(debian_root, STATE) == ("parley:parley", "750")
    assert debian_root.file("/usr/bin/parley").exists()
    wants = debian_root.file("/etc/systemd/system/multi-user.target.wants/parley.service")
    assert wants.is_symlink(), "the unit is enabled"
    # The TURN address detected at installation goes to the environment file, not the conffile.
    defaults = debian_root.file("/etc/default/parley").read_text()
    assert "PARLEY_TURN__RELAY_ADDRESS" in defaults


def test_2_first_start_serves_https_with_a_generated_certificate(debian_root, netns, state,
                                                                  tmp_path_factory):
    log = tmp_path_factory.mktemp("daemon") / "first.log"
    daemon = Daemon(debian_root, netns, log)
    try:
        daemon.wait_healthy()
        cert = debian_root.file(f"{STATE}/tls/cert.pem")
        assert cert.exists(), "self-signed certificate kept in the state directory"
        # The generated certificate verifies for "localhost" when trusted explicitly: proof that
        # the daemon serves the file it generated, with the names it should.
        netns.run("curl", "-sS", "--max-time", "5", "--cacert", str(cert),
                  "--resolve", "localhost:443:127.0.0.1", "https://localhost:443/healthz")
        served = netns.run(sys.executable, "-c",
                           "import ssl;print(ssl.get_server_certificate(('127.0.0.1',443)))"
                           ).stdout
        assert ssl.PEM_cert_to_DER_cert(served) == ssl.PEM_cert_to_DER_cert(cert.read_text())
        assert owner(debian_root, f"{STATE}/tls/key.pem") == ("parley:parley", "600")
        # The TURN secret is generated into the state directory, private, never into the conffile.
        secret = debian_root.file(f"{STATE}/turn_secret")
        assert secret.exists(), f"no turn_secret after first start:\n{daemon.output()}"
        assert owner(debian_root, f"{STATE}/turn_secret") == ("parley:parley", "600")
        assert secret.read_text().strip() not in debian_root.file(CONF).read_text()
        output = daemon.output()
        assert "self-signed" in output and "browsers will" in output, output
        # Plain HTTP is refused on this port: the listener speaks only TLS.
        plain = netns.run("curl", "-s", "--max-time", "3", "http://127.0.0.1:443/healthz",
                          check=False)
        assert plain.returncode != 0 or "200" not in plain.stdout
    finally:
        assert daemon.stop() == 0, daemon.output()


def test_3_first_account_is_created_with_the_documented_command(debian_root, state):
    # Exactly the command postinst and the README tell the admin to run, as root.
    assert "parley user add NAME" in state["install_output"]
    proc = subprocess.run(
        ["chroot", str(debian_root.path), "parley", "user", "add", "alice",
         "--password-stdin"],
        input=PASSWORD + "\n", capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Created by the parley user, so the service can write the database and its journal files.
    for name in debian_root.file(STATE).iterdir():
        if name.name.startswith("parley.db"):
            assert owner(debian_root, f"{STATE}/{name.name}")[0] == "parley:parley", name
    listed = debian_root.run("parleyctl", "user", "list").stdout
    assert "alice" in listed, listed


def login(netns):
    body = json.dumps({"username": "alice", "password": PASSWORD})
    result = netns.run("curl", "-sk", "--max-time", "5", "-H", "content-type: application/json",
                       "-d", body, "https://127.0.0.1:443/api/v1/auth/login")
    return json.loads(result.stdout)


# Runs in the network namespace: alice and bob connect a device each (python-socketio), alice
# calls bob through the HTTP API and bob accepts it there. Prints the call, its state and
# alice's token. The sockets close when it exits: the call waits for them in its grace.
ACTIVE_CALL = r"""
import json, sys
import requests, socketio, urllib3
urllib3.disable_warnings()
base = "https://127.0.0.1:443"
def login(name):
    reply = requests.post(base + "/api/v1/auth/login", json={"username": name, "password": sys.argv[1]},
                          verify=False, timeout=10)
    assert reply.status_code == 200, reply.text
    return reply.json()["token"]
def api(method, path, token, body=None):
    reply = requests.request(method, base + path, json=body, verify=False, timeout=10,
                             headers={"Authorization": "Bearer " + token})
    assert reply.ok, (path, reply.status_code, reply.text)
    return reply.json()
alice, bob = login("alice"), login("bob")
for token, device in ((alice, "alice-laptop"), (bob, "bob-phone")):
    client = socketio.Client(reconnection=False, ssl_verify=False)
    client.connect(base, auth={"token": token, "deviceId": device}, transports=["websocket"],
                   wait_timeout=10)
call = api("POST", "/api/v1/calls", alice, {"to": "bob", "media": "audio", "deviceId": "alice-laptop"})
call_id = call["call"]["id"]
api("POST", "/api/v1/calls/" + call_id + "/accept", bob, {"deviceId": "bob-phone"})
state = api("GET", "/api/v1/calls/" + call_id, alice)["call"]["state"]
print(json.dumps({"id": call_id, "state": state, "token": alice}))
"""


def test_4_upgrade_keeps_config_edits_database_and_calls(debian_root, deb_upgrade, netns,
                                                         tmp_path_factory):
    # A call in progress on version N, as the upgrade finds it.
    proc = subprocess.run(
        ["chroot", str(debian_root.path), "parley", "user", "add", "bob", "--password-stdin"],
        input=PASSWORD + "\n", capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = tmp_path_factory.mktemp("daemon") / "before-upgrade.log"
    daemon = Daemon(debian_root, netns, log)
    try:
        daemon.wait_healthy()
        call = json.loads(netns.run(sys.executable, "-c", ACTIVE_CALL, PASSWORD,
                                    timeout=60).stdout.strip().splitlines()[-1])
        assert call["state"] == "active", call
    finally:
        # What the package's upgrade does to the running service (systemctl stop: SIGTERM).
        assert daemon.stop() == 0, daemon.output()

    conf = debian_root.file(CONF)
    conf.write_text(conf.read_text() + "\n# local edit kept across upgrades\n")
    output = apt_install(debian_root, deb_upgrade)
    assert "Setting up parley" in output, output
    assert "# local edit kept across upgrades" in conf.read_text()
    assert owner(debian_root, CONF) == ("root:parley", "640")
    log = tmp_path_factory.mktemp("daemon") / "upgraded.log"
    daemon = Daemon(debian_root, netns, log)
    try:
        daemon.wait_healthy()
        # Within the reconnect grace (15 s from start-up by default) the call is still there,
        # active, and the token issued before the upgrade still works.
        reply = netns.run("curl", "-sk", "--max-time", "5", "-H",
                          f"Authorization: Bearer {call['token']}",
                          f"https://127.0.0.1:443/api/v1/calls/{call['id']}").stdout
        assert json.loads(reply)["call"]["state"] == "active", reply
        assert "restored 1 call(s)" in daemon.output(), daemon.output()
        reply = login(netns)
        assert reply.get("user", {}).get("username") == "alice", reply
    finally:
        assert daemon.stop() == 0, daemon.output()


def test_5_remove_keeps_config_data_and_user(debian_root):
    debian_root.run("apt-get", "remove", "-y", "-o", "Dpkg::Use-Pty=0", "parley")
    assert not debian_root.file("/usr/bin/parley").exists()
    assert debian_root.file(CONF).exists()
    assert debian_root.file(f"{STATE}/parley.db").exists()
    assert debian_root.run("getent", "passwd", "parley", check=False).returncode == 0
    status = debian_root.run("dpkg-query", "-W", "-f=${Status}", "parley").stdout
    assert status == "deinstall ok config-files"


def test_6_purge_removes_config_data_and_user(debian_root):
    debian_root.run("apt-get", "purge", "-y", "-o", "Dpkg::Use-Pty=0", "parley")
    for path in ("/etc/parley", STATE, "/etc/default/parley",
                 "/etc/systemd/system/multi-user.target.wants/parley.service"):
        assert not debian_root.file(path).exists() and not debian_root.file(path).is_symlink(), \
            f"{path} left after purge"
    assert debian_root.run("getent", "passwd", "parley", check=False).returncode == 2
    assert debian_root.run("getent", "group", "parley", check=False).returncode == 2
    # dpkg-statoverride --list exits 1 when there is no override at all.
    overrides = debian_root.run("dpkg-statoverride", "--list", check=False).stdout
    assert "parley" not in overrides
    assert debian_root.run("dpkg-query", "-W", "parley", check=False).returncode != 0
