"""Fixtures for the packaging tests: the built .deb, and a Debian root to install it into.

The tests need, as root: cargo-deb (installed by `cargo xtask deb`), dpkg-deb, lintian,
debootstrap, systemd-analyze, ip (iproute2), curl, mount/chroot. A missing tool fails the
test with its name; nothing is skipped.

Environment:
  PARLEY_DEB        use this .deb instead of building one with `cargo xtask deb`
  PARLEY_DEB_CACHE  where the debootstrap root is cached (default /var/tmp/parley-debootstrap)
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("PARLEY_DEB_CACHE", "/var/tmp/parley-debootstrap"))


def need(tool):
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    assert path, f"{tool} is not installed: the packaging tests need it (apt-get install it)"
    return path


def run(*args, check=True, timeout=600, **kwargs):
    """Runs a command, returning CompletedProcess with text output; failures show the output."""
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kwargs
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, args))} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def build_deb(out_dir, version=None):
    """Builds the package with `cargo xtask deb`, the documented build command."""
    args = ["cargo", "xtask", "deb", "--output", out_dir]
    if version:
        # The binary is already built by the first call; only the version differs.
        args += ["--no-build", "--deb-version", version]
    result = run(*args, cwd=REPO, timeout=1800)
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path.exists() and path.suffix == ".deb", result.stdout
    return path


@pytest.fixture(scope="session")
def deb(tmp_path_factory):
    if os.environ.get("PARLEY_DEB"):
        given = Path(os.environ["PARLEY_DEB"])
        assert given.exists(), f"PARLEY_DEB={given} does not exist"
        # A copy: building the upgrade package makes cargo-deb clear target/debian.
        path = tmp_path_factory.mktemp("deb") / given.name
        shutil.copyfile(given, path)
        return path
    need("dpkg-deb")
    return build_deb(tmp_path_factory.mktemp("deb"))


@pytest.fixture(scope="session")
def deb_upgrade(deb, tmp_path_factory):
    """The same build, packaged with a higher version, to exercise the upgrade path."""
    version = package_field(deb, "Version")
    return build_deb(tmp_path_factory.mktemp("deb-upgrade"), version=version + "+upgradetest1")


def package_field(deb_path, field):
    return run("dpkg-deb", "--field", deb_path, field).stdout.strip()


def host_suite_and_mirror():
    """The host's Debian suite and the mirror apt already uses (never a host name in code)."""
    release = Path("/etc/os-release").read_text()
    suite = re.search(r"^VERSION_CODENAME=(\S+)", release, re.M).group(1)
    texts = []
    for source in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        if source.is_file() and source.suffix in (".list", ".sources", ""):
            texts.append(source.read_text())
    for text in texts:
        # deb822: a stanza with "URIs:" and our suite in "Suites:".
        for stanza in text.split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:(.*)$", stanza, re.M)
            if uris and suites and suite in suites.group(1).split():
                return suite, uris.group(1)
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == suite:
                return suite, parts[1] if not parts[1].startswith("[") else parts[2]
    raise AssertionError(f"no apt source for {suite} in /etc/apt: cannot debootstrap")


def cached_root():
    """A minbase root for the host's suite, made once (3-6 min) and reused from CACHE."""
    suite, mirror = host_suite_and_mirror()
    root = CACHE / suite
    if (root / "usr/bin/apt-get").exists() and (root / ".parley-complete").exists():
        return root
    need("debootstrap")
    partial = CACHE / f"{suite}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    run("debootstrap", "--variant=minbase", suite, partial, mirror, timeout=1500)
    (partial / ".parley-complete").write_text(f"{suite} {mirror}\n")
    shutil.rmtree(root, ignore_errors=True)
    partial.rename(root)
    return root


class Chroot:
    """A throw-away copy of the cached root with /proc and /sys mounted.

    The host's /dev is deliberately not bind-mounted: debootstrap created the device nodes the
    root needs, and a leftover bind mount would let the clean-up delete the host's /dev.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.mounts = []

    def mount(self):
        for kind, source, target in [
            ("proc", "proc", "proc"),
            ("sysfs", "sysfs", "sys"),
        ]:
            where = self.path / target
            where.mkdir(parents=True, exist_ok=True)
            run("mount", "-t", kind, source, where)
            self.mounts.append(where)

    def unmount(self):
        for where in reversed(self.mounts):
            if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(where)], capture_output=True)
        self.mounts.clear()

    def mounted_below(self):
        prefix = str(self.path.resolve()) + "/"
        with open("/proc/self/mounts") as mounts:
            return [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]

    def run(self, *args, check=True, timeout=600, env=None):
        base_env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "DEBIAN_FRONTEND": "noninteractive",
            "LC_ALL": "C.UTF-8",
        }
        base_env.update(env or {})
        return run("chroot", self.path, *args, check=check, timeout=timeout, env=base_env)

    def file(self, path):
        return self.path / str(path).lstrip("/")


@pytest.fixture(scope="module")
def debian_root(tmp_path_factory):
    need("chroot")
    source = cached_root()
    work = tmp_path_factory.mktemp("root") / "root"
    # cp -a keeps owners, modes and device nodes; the cache itself is never modified.
    run("cp", "-a", source, work, timeout=600)
    root = Chroot(work)
    root.mount()
    try:
        yield root
    finally:
        root.unmount()
        left = root.mounted_below()
        # Never delete through a mount point: leave the copy behind rather than risk the host.
        assert not left, f"still mounted after the test, not deleting {work}: {left}"
        shutil.rmtree(work, ignore_errors=True)
