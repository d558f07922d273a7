"""The installed unit under a real systemd: boot the Debian root with systemd-nspawn.

This proves what a chroot cannot: that systemd accepts the hardened unit and the daemon works
inside it (system-call filter, ProtectSystem, ProcSubset, no capabilities but
CAP_NET_BIND_SERVICE on port 443), that Type=notify reaches "active" and the watchdog is fed,
that `systemctl reload` (SIGHUP) keeps it running, and that `apt remove` stops it.

The container has its own network namespace with only `lo` (--private-network) and stops by
itself: a oneshot check unit runs after parley.service, writes its findings, and powers off.
Needs systemd-container (systemd-nspawn) on the host, and systemd + curl in the root, which
are installed into a cached copy from the mirror apt uses.
"""

import shutil
import subprocess

import pytest

from conftest import CACHE, cached_root, need, run

CHECK_UNIT = """\
[Unit]
Description=parley packaging check
After=parley.service
Wants=parley.service

[Service]
Type=oneshot
ExecStart=/bin/sh /root/parley-check.sh
ExecStartPost=/bin/systemctl poweroff

[Install]
WantedBy=multi-user.target
"""

# Runs inside the booted container; everything it finds goes to /root/result.
CHECK_SCRIPT = r"""
exec >/root/result 2>&1
for i in $(seq 1 100); do
    [ "$(systemctl is-active parley)" = active ] && break
    sleep 0.2
done
echo "active: $(systemctl is-active parley)"
systemctl show parley -p User -p NRestarts -p WatchdogUSec -p Type -p NotifyAccess
echo "healthz: $(curl -sk --max-time 5 -o /dev/null -w '%{http_code}' https://127.0.0.1/healthz)"
before=$(sha256sum /var/lib/parley/tls/cert.pem | cut -c1-64)
echo "served-matches-file: $(curl -s --max-time 5 --cacert /var/lib/parley/tls/cert.pem \
    --resolve localhost:443:127.0.0.1 -o /dev/null -w '%{http_code}' https://localhost/healthz)"
systemctl reload parley && echo "reload: ok" || echo "reload: failed"
sleep 1
echo "active-after-reload: $(systemctl is-active parley)"
echo "healthz-after-reload: $(curl -sk --max-time 5 -o /dev/null -w '%{http_code}' https://127.0.0.1/healthz)"
echo "cert-unchanged: $([ "$before" = "$(sha256sum /var/lib/parley/tls/cert.pem | cut -c1-64)" ] && echo yes)"
echo "turn-secret: $(stat -c '%U %a' /var/lib/parley/turn_secret)"
echo "hostname: $(hostname)"
echo "--- journal"
journalctl -u parley --no-pager -o cat
echo "--- remove"
DEBIAN_FRONTEND=noninteractive apt-get remove -y -q -o Dpkg::Use-Pty=0 parley >/dev/null 2>&1 \
    && echo "removed: yes"
echo "active-after-remove: $(systemctl is-active parley)"
echo "database-kept: $([ -e /var/lib/parley/parley.db ] && echo yes)"
"""


def systemd_root():
    """The debootstrap root plus systemd and curl, cached next to it."""
    base = cached_root()
    root = CACHE / f"{base.name}-systemd"
    if (root / ".parley-complete").exists():
        return root
    partial = CACHE / f"{base.name}-systemd.partial"
    shutil.rmtree(partial, ignore_errors=True)
    run("cp", "-a", base, partial, timeout=600)
    (partial / ".parley-complete").unlink()
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"}
    run("mount", "-t", "proc", "proc", partial / "proc")
    try:
        run("chroot", partial, "apt-get", "update", "-q", env=env, timeout=600)
        run("chroot", partial, "apt-get", "install", "-y", "-q", "--no-install-recommends",
            "-o", "Dpkg::Use-Pty=0", "systemd", "systemd-sysv", "curl", "ca-certificates",
            env=env, timeout=900)
        run("chroot", partial, "apt-get", "clean", env=env)
    finally:
        run("umount", partial / "proc", check=False)
    (partial / ".parley-complete").write_text("systemd curl\n")
    shutil.rmtree(root, ignore_errors=True)
    partial.rename(root)
    return root


@pytest.fixture(scope="module")
def booted(deb, tmp_path_factory):
    need("systemd-nspawn")
    source = systemd_root()
    work = tmp_path_factory.mktemp("nspawn") / "root"
    run("cp", "-a", source, work, timeout=600)
    try:
        shutil.copyfile(deb, work / "tmp" / deb.name)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"}
        run("chroot", work, "apt-get", "install", "-y", "-o", "Dpkg::Use-Pty=0",
            f"/tmp/{deb.name}", env=env, timeout=300)
        (work / "etc/systemd/system/parley-check.service").write_text(CHECK_UNIT)
        (work / "root/parley-check.sh").write_text(CHECK_SCRIPT)
        wants = work / "etc/systemd/system/multi-user.target.wants"
        (wants / "parley-check.service").symlink_to("/etc/systemd/system/parley-check.service")
        boot = run(
            "systemd-nspawn", "--quiet", "-D", work, "--register=no", "--keep-unit",
            "--private-network", "--boot", "--console=pipe",
            check=False, timeout=240, stdin=subprocess.DEVNULL,
        )
        result = work / "root/result"
        assert result.exists(), (
            f"the check unit never ran (nspawn exited {boot.returncode}):\n"
            f"{boot.stdout}\n{boot.stderr}")
        yield result.read_text()
    finally:
        prefix = str(work.resolve()) + "/"
        with open("/proc/self/mounts") as mounts:
            left = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
        # Never delete through a mount point: leave the copy behind rather than risk the host.
        assert not left, f"still mounted, not deleting {work}: {left}"
        shutil.rmtree(work, ignore_errors=True)


def field(text, name):
    for line in text.splitlines():
        if line.startswith(f"{name}:") or line.startswith(f"{name}="):
            return line.split(":" if line.startswith(f"{name}:") else "=", 1)[1].strip()
    raise AssertionError(f"{name} not in the result:\n{text}")


def test_unit_starts_as_notify_service_and_serves_https(booted):
    assert field(booted, "active") == "active", booted
    assert field(booted, "Type") == "notify"
    assert field(booted, "User") == "parley"
    assert field(booted, "NRestarts") == "0", booted
    assert field(booted, "WatchdogUSec") not in ("0", "infinity"), booted
    assert field(booted, "healthz") == "200", booted
    # The generated certificate, trusted explicitly, verifies for localhost: it is what is
    # served, and it names the machine.
    assert field(booted, "served-matches-file") == "200", booted
    assert field(booted, "turn-secret") == "parley 600", booted
    assert "browsers will show a security warning" in booted
    # The machine's name is among the certificate's names although ProcSubset=pid hides
    # /proc/sys/kernel/hostname from the service.
    generated = [line for line in booted.splitlines()
                 if line.startswith("generated a self-signed certificate for ")]
    assert generated, booted
    names = generated[0].removeprefix("generated a self-signed certificate for ").split(" at ")[0]
    assert field(booted, "hostname") in names.split(", "), generated[0]


def test_systemctl_reload_keeps_the_service_running(booted):
    assert field(booted, "reload") == "ok", booted
    assert field(booted, "active-after-reload") == "active", booted
    assert field(booted, "healthz-after-reload") == "200", booted
    assert field(booted, "cert-unchanged") == "yes", booted
    assert "SIGHUP: reloading certificates" in booted, booted


def test_apt_remove_stops_the_service_and_keeps_the_data(booted):
    assert field(booted, "removed") == "yes", booted
    assert field(booted, "active-after-remove") in ("inactive", "unknown"), booted
    assert field(booted, "database-kept") == "yes", booted
