"""The .deb itself: lintian, contents, modes, conffiles, dependencies, packaged config."""

import re
import tomllib

from conftest import need, package_field, run


def contents(deb):
    """Path -> (mode string, owner/group) from `dpkg-deb --contents`."""
    listing = {}
    for line in run("dpkg-deb", "--contents", deb).stdout.splitlines():
        mode, owner, _size, _date, _time, path = line.split(None, 5)
        path = path.split(" -> ")[0]
        listing[path.lstrip(".").rstrip("/") or "/"] = (mode, owner)
    return listing


def control_file(deb, name, tmp_path):
    run("dpkg-deb", "--control", deb, tmp_path / "control")
    path = tmp_path / "control" / name
    return path.read_text() if path.exists() else ""


def test_lintian_reports_no_errors(deb):
    need("lintian")
    result = run("lintian", "--no-tag-display-limit", deb, check=False, timeout=900)
    print(result.stdout)
    errors = [line for line in result.stdout.splitlines() if line.startswith("E:")]
    assert not errors, result.stdout
    # lintian exits 0 or 1 (tags found), 2 means it could not run at all.
    assert result.returncode in (0, 1), result.stderr


def test_package_installs_the_expected_files(deb):
    listing = contents(deb)
    expected = {
        "/usr/bin/parley": "-rwxr-xr-x",
        "/usr/bin/parleyctl": "-rwxr-xr-x",
        "/usr/share/man/man1/parleyctl.1.gz": "-rw-r--r--",
        "/etc/parley/parley.toml": "-rw-r-----",
        "/usr/share/doc/parley/README.md": "-rw-r--r--",
        "/usr/share/doc/parley/copyright": "-rw-r--r--",
        "/usr/share/doc/parley/changelog.Debian.gz": "-rw-r--r--",
        "/usr/share/doc/parley/parley.toml.example": "-rw-r--r--",
        "/usr/share/man/man1/parley.1.gz": "-rw-r--r--",
    }
    for path, mode in expected.items():
        assert path in listing, f"{path} missing from the package: {sorted(listing)}"
        assert listing[path][0] == mode, f"{path}: {listing[path][0]}, expected {mode}"
    units = [p for p in listing if p.endswith("/systemd/system/parley.service")]
    assert len(units) == 1, units
    # No state, secrets or certificates shipped: those are made at first start.
    assert not any(p.startswith("/var/lib/parley/") for p in listing)
    assert not any(p.endswith((".pem", ".key", "turn_secret", ".db")) for p in listing)


def test_conffiles_list_exactly_the_config(deb, tmp_path):
    conffiles = control_file(deb, "conffiles", tmp_path).split()
    assert conffiles == ["/etc/parley/parley.toml"]


def test_depends_only_on_libc(deb):
    depends = package_field(deb, "Depends")
    packages = [re.split(r"[\s(]", alternative.strip())[0] for alternative in depends.split(",")]
    assert packages == ["libc6"], depends
    assert package_field(deb, "Package") == "parley"


def test_recommends_the_ca_bundle_that_acme_and_doctor_trust(deb):
    # ACME to a public CA and `parley doctor`'s TLS check read /etc/ssl/certs.
    assert package_field(deb, "Recommends") == "ca-certificates"


def test_maintainer_scripts_create_user_and_manage_the_unit(deb, tmp_path):
    postinst = control_file(deb, "postinst", tmp_path)
    assert "useradd --system" in postinst
    assert "deb-systemd-helper" in postinst and "parley.service" in postinst, "enable"
    assert "deb-systemd-invoke" in postinst, "start / restart after upgrade"
    assert "parley user add NAME" in postinst, "prints the next step"
    prerm = control_file(deb, "prerm", tmp_path)
    assert "deb-systemd-invoke stop" in prerm, prerm
    postrm = control_file(deb, "postrm", tmp_path)
    assert "userdel parley" in postrm and "purge" in postrm


def test_packaged_config_has_production_defaults(deb, tmp_path):
    run("dpkg-deb", "--extract", deb, tmp_path / "x")
    config = tomllib.loads((tmp_path / "x/etc/parley/parley.toml").read_text())
    assert config["http"]["listen"].startswith("0.0.0.0:")
    assert config["tls"]["enabled"] is True
    assert config["tls"].get("self_signed", True) is True
    assert config["auth"]["registration"] == "closed"
    assert config["storage"]["data_dir"] == "/var/lib/parley"
    assert config["turn"]["listen"].startswith("0.0.0.0:")
    # The TURN secret is generated at first start, never shipped in the conffile.
    assert "secret" not in config["turn"]


def test_binary_help_documents_the_commands(deb, tmp_path):
    run("dpkg-deb", "--extract", deb, tmp_path / "x")
    help_text = run(tmp_path / "x/usr/bin/parley", "--help").stdout
    for command in ("serve", "user", "check-config"):
        assert command in help_text, help_text
    manual = run("zcat", tmp_path / "x/usr/share/man/man1/parley.1.gz").stdout
    for section in (".SH NAME", ".SH SYNOPSIS", ".SH COMMANDS", ".SH FILES", "user add"):
        assert section in manual
