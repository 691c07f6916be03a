"""The first hour of a new user, literally: the README's `make run` line, then the real
apt-get with this machine's own apt sources pointed at it.

The official names in those sources resolve, through the test's hosts file in a private
mount and network namespace, to a loopback upstream on port 80 that serves a signed
archive with the same paths, suites and components (signed by the test's key: the
sources' `Signed-By` is the one line changed). What the embedded configuration writes
outside the README's cache directory (its admin token and key under /var/lib) lands in
an overlay that lives in the test's directory, and the README's `/tmp` is the test's."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

from appliance.apt.mirrors import source_entries
from tests.aptclient import AptClient
from tests.aptrepo import build_repo
from tests.conftest import require, unavailable
from tests.e2e.apt.test_stock_sources import _requests, _until
from tests.netns import lone_namespace

REPO = Path(__file__).parents[3]
MACHINE_SOURCES = ["/etc/apt/sources.list", "/etc/apt/sources.list.d"]
UPSTREAM = "127.0.0.2"


def serve_dir(root: Path) -> tuple[str, ...]:
    """A plain static server on port 80 of the upstream's address (it logs each GET)."""
    return (sys.executable, "-m", "http.server", "80", "--bind", UPSTREAM, "--directory", str(root))


def _readme_args() -> str:
    found = re.search(r'`make run ARGS="([^"`]+)"`', (REPO / "README.md").read_text())
    assert found, "the README shows no `make run ARGS=...` example"
    return found.group(1)


def _own_sources(dest: Path, keyring: Path) -> None:
    """This machine's sources files, as they are but for the key they trust."""
    for name in MACHINE_SOURCES:
        path = Path(name)
        files = sorted(path.iterdir()) if path.is_dir() else [path] if path.exists() else []
        for f in files:
            if f.suffix == ".sources":
                text = re.sub(r"(?m)^Signed-By:.*$", f"Signed-By: {keyring}", f.read_text())
                if "Signed-By:" not in text:
                    text = re.sub(r"(?m)^(URIs:.*)$", rf"\1\nSigned-By: {keyring}", text)
            elif f.suffix == ".list" or f.name == "sources.list":
                text = re.sub(
                    r"(?m)^(deb(?:-src)?)\s+(\[[^]]*\]\s+)?",
                    rf"\1 [signed-by={keyring}] ",
                    f.read_text(),
                )
            else:
                continue
            (dest / f"own-{f.name}").with_suffix(f.suffix or ".list").write_text(text)


def test_the_readme_quick_start_serves_this_machines_own_sources(tmp_path: Path) -> None:
    require("make", "make")
    entries = [e for e in source_entries(MACHINE_SOURCES) if e.uri.startswith("http://")]
    if not entries:
        unavailable("this machine has no http apt sources to follow")
    dists: dict[str, dict[str, tuple[str, ...]]] = {}
    for e in entries:
        path = urlsplit(e.uri).path.strip("/")
        for suite in e.suites:
            dists.setdefault(path, {})[suite] = e.components
    repo = build_repo(tmp_path / "upstream", large_size=200_000, dists=dists)
    hosts = tmp_path / "hosts"
    names = sorted({urlsplit(e.uri).hostname or "" for e in entries})
    hosts.write_text(f"127.0.0.1 localhost\n{UPSTREAM} {' '.join(names)}\n")
    args = _readme_args()
    listen = re.search(r"--listen (\S+)", args)
    cache = re.search(r"--cache-dir (\S+)", args)
    assert listen and cache and cache.group(1).startswith("/tmp/"), args
    sandbox = tmp_path / "sandbox"
    (sandbox / "tmp").mkdir(parents=True)
    (sandbox / "overlay").mkdir()
    script = (
        'mount --bind "$1" /etc/hosts'
        ' && mount -t tmpfs tmpfs "$2/overlay" && mkdir "$2/overlay/up" "$2/overlay/work"'
        " && mount -t overlay overlay"
        ' -o "lowerdir=/var/lib,upperdir=$2/overlay/up,workdir=$2/overlay/work" /var/lib'
        ' && cd "$3" && mount --bind "$2/tmp" /tmp'
        # a tree under /tmp (a developer's checkout) is put back where it was
        ' && case "$3" in /tmp/*) mkdir -p "$3" && mount -c --bind /proc/self/cwd "$3";; esac'
        ' && cd "$3" && exec make run ARGS="$4"'
    )
    with lone_namespace("readme") as ns:
        in_ns = ("ip", "netns", "exec", ns)
        private_mounts = ("unshare", "-m", "--propagation", "private")
        script_args = (str(hosts), str(sandbox), str(REPO), args)
        server_log = tmp_path / "upstream.log"
        server = subprocess.Popen(
            [*in_ns, *serve_dir(tmp_path / "upstream")],
            stdout=subprocess.DEVNULL,
            stderr=server_log.open("wb"),
        )
        log = tmp_path / "make-run.log"
        make = subprocess.Popen(
            [*in_ns, *private_mounts, "sh", "-c", script, "sh", *script_args],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MAKEFLAGS")},
        )
        try:
            _until(ns, f"http://{UPSTREAM}/", server, server_log)
            _until(ns, f"http://{listen.group(1)}/healthz", make, log)
            client = AptClient(
                tmp_path / "client",
                entries[0].uri,
                repo.keyring,
                repo.arch,
                proxy=f"http://{listen.group(1)}",
                prefix=in_ns,
            )
            (client.home / "etc/sources.list").write_text("")
            _own_sources(client.home / "etc/sources.list.d", repo.keyring)
            for r in (client.update(), client.download("al-tools")):
                assert r.returncode == 0, r.stdout + r.stderr + log.read_text()[-3000:]
                assert "W:" not in r.stdout + r.stderr, r.stdout + r.stderr
            assert client.archives["al-tools"] == repo.debs["al-tools"].read_bytes()
            fetched = _requests(server_log)
            assert fetched and all(n == 1 for n in fetched.values()), fetched
            assert Counter(p.rsplit("/", 1)[-1] for p in fetched if "/dists/" in p)[
                "InRelease"
            ] == sum(len(e.suites) for e in entries)
            cached = sandbox / cache.group(1).removeprefix("/")
            assert any(p.name.endswith(".deb") for p in cached.rglob("*.deb")), (
                "not in the README's dir"
            )
            assert "Traceback" not in log.read_text()
        finally:
            with_gpg = ["nsenter", "-t", str(make.pid), "-m", "--"]
            subprocess.run(
                [
                    *with_gpg,
                    "gpgconf",
                    "--homedir",
                    "/var/lib/archive-local/gnupg",
                    "--kill",
                    "gpg-agent",
                ],
                capture_output=True,
            )
            with contextlib.suppress(ProcessLookupError):  # (it may have stopped already)
                os.killpg(make.pid, signal.SIGTERM)
            try:
                make.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(make.pid, signal.SIGKILL)
                make.wait(10)
            server.terminate()
            server.wait(10)
            shutil.rmtree(sandbox, ignore_errors=True)
