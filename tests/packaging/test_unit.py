"""The systemd unit: hardening score, required settings, and that systemd accepts it."""

import re
import subprocess

from conftest import REPO, need, run

UNIT = REPO / "systemd" / "parley.service"


def settings():
    """Key -> list of values, as systemd reads it (later assignments add to earlier ones)."""
    found = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_systemd_analyze_security_rates_exposure_at_most_2_0():
    need("systemd-analyze")
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for parley\.service:\s*([0-9.]+)", output)
    assert match, f"no overall exposure in the output:\n{output}"
    exposure = float(match.group(1))
    print(f"systemd-analyze security exposure: {exposure}")
    assert exposure <= 2.0, output


def test_systemd_analyze_threshold_flag_agrees():
    # The same check with systemd's own exit status, so a parsing mistake above cannot hide it.
    need("systemd-analyze")
    run("systemd-analyze", "security", "--offline=true", "--threshold=20", "--no-pager", UNIT)


def test_unit_has_the_required_service_settings():
    unit = settings()
    assert unit["Type"] == ["notify"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["WatchdogSec"], "a watchdog interval"
    assert unit["User"] == ["parley"] and unit["Group"] == ["parley"]
    assert unit["StateDirectory"] == ["parley"]
    assert unit["ConfigurationDirectory"] == ["parley"]
    assert unit["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert unit["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert int(unit["LimitNOFILE"][0]) >= 65536
    # Reload = SIGHUP = new certificates, with the shell's kill (procps may not be installed).
    assert unit["ExecReload"] == ["/bin/sh -c 'kill -HUP $MAINPID'"]
    assert unit["ExecStart"][0].startswith("/usr/bin/parley ")
    assert "/etc/parley/parley.toml" in unit["ExecStart"][0]
    assert unit["NoNewPrivileges"] == ["yes"]
    assert unit["ProtectSystem"] == ["strict"]


def test_unit_header_says_to_use_systemctl_edit():
    header = UNIT.read_text().split("[Unit]")[0]
    assert "systemctl edit parley" in header


def test_systemd_accepts_the_unit_syntax():
    need("systemd-analyze")
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # The binary is not installed on the build machine, so only that complaint is acceptable.
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and "/usr/bin/parley" not in line
    ]
    assert not problems, "\n".join(problems)
