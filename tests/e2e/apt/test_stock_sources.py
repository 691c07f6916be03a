"""Stock sources through the default configuration, with the real apt-get: the official
names a stock image writes are accepted in proxy form, two names of one archive share one
cache entry, and a refusal says why on the line apt prints.

The official names resolve, through a hosts file of the test's in a private mount and
network namespace, to loopback upstreams on port 80 (`python -m http.server`, which logs
every request it answers): nothing leaves the namespace."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.aptclient import AptClient
from tests.aptrepo import AptRepo
from tests.configs import write_config
from tests.conftest import StartAppliance, http_get, stop_gpg_agent
from tests.netns import lone_namespace, with_hosts
from tests.upstream import Upstream

REPO = Path(__file__).parents[3]
PACKAGES = ("al-large", "al-tools")
NAMES = {"ftp.fr.debian.org": "127.0.0.2", "ftp.de.debian.org": "127.0.0.3"}
REQUEST = re.compile(r'"GET (\S+) HTTP/1\.[01]" (\d{3})')


def _requests(log: Path) -> Counter[str]:
    """Paths a `python -m http.server` answered, from its log (but the test's probe)."""
    found = REQUEST.finditer(log.read_text(errors="replace"))
    return Counter(m.group(1) for m in found if m.group(1) != "/")


def _until(ns: str, url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = subprocess.run(
            ["ip", "netns", "exec", ns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url],
            capture_output=True,
            text=True,
        )
        if r.stdout in ("200", "404", "406"):
            return
        assert proc.poll() is None, log.read_text()
        time.sleep(0.1)
    raise AssertionError(f"{url} never answered: {log.read_text()[-2000:]}")


@pytest.fixture
def stock_net(tmp_path: Path, apt_repo: AptRepo) -> Iterator[tuple[str, Path, dict[str, Path]]]:
    """A namespace where the official Debian names reach loopback upstreams serving the
    test's signed repository as /debian: (namespace, hosts file, upstream logs by name)."""
    hosts = tmp_path / "hosts"
    hosts.write_text(
        "127.0.0.1 localhost\n" + "".join(f"{ip} {name}\n" for name, ip in NAMES.items())
    )
    procs: list[subprocess.Popen[bytes]] = []
    with lone_namespace("stock") as ns:
        logs = {}
        try:
            for name, ip in NAMES.items():
                logs[name] = tmp_path / f"{name}.log"
                cmd = [sys.executable, "-m", "http.server", "80", "--bind", ip]
                cmd += ["--directory", str(apt_repo.root.parent)]
                procs.append(
                    subprocess.Popen(
                        ["ip", "netns", "exec", ns, *cmd],
                        stdout=subprocess.DEVNULL,
                        stderr=logs[name].open("wb"),
                    )
                )
                _until(ns, f"http://{ip}/", procs[-1], logs[name])
            yield ns, hosts, logs
        finally:
            for p in procs:
                p.terminate()
                p.wait(10)


def _serve(ns: str, hosts: Path, tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """The appliance on the embedded defaults (`workers: auto`), but for where it listens
    and keeps its files, and mDNS."""
    config = write_config(
        tmp_path / "config.yaml",
        {
            "listen": "127.0.0.1:3142",
            "cache": {"dir": str(tmp_path / "cache")},
            "discovery": {"mdns": False},
            "admin": {"token_file": str(tmp_path / "admin-token")},
            "images": {"gnupg_home": str(tmp_path / "gnupg")},
        },
    )
    log = tmp_path / "appliance.log"
    serve = (sys.executable, "-m", "appliance", "serve", "--config", str(config))
    proc = subprocess.Popen(
        [*with_hosts(ns, str(hosts)), *serve],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    _until(ns, "http://127.0.0.1:3142/healthz", proc, log)
    return proc, log


def test_two_official_names_for_one_archive_share_one_entry(
    tmp_path: Path, apt_repo: AptRepo, stock_net: tuple[str, Path, dict[str, Path]]
) -> None:
    ns, hosts, logs = stock_net
    app, log = _serve(ns, hosts, tmp_path)
    try:
        prefix = ("ip", "netns", "exec", ns)
        archives = []
        for n, name in enumerate(NAMES):
            client = AptClient(
                tmp_path / f"client-{n}",
                f"http://{name}/debian",
                apt_repo.keyring,
                apt_repo.arch,
                proxy="http://127.0.0.1:3142",
                prefix=prefix,
            )
            for r in (client.update(), client.download(*PACKAGES)):
                assert r.returncode == 0, r.stdout + r.stderr + log.read_text()[-3000:]
            archives.append(client.archives)
        expected = {name: p.read_bytes() for name, p in apt_repo.debs.items()}
        assert archives[0] == archives[1] == expected
        first, second = (_requests(logs[name]) for name in NAMES)
        debs = [p for p in first if p.endswith(".deb")]
        assert len(debs) == 3 and all(first[p] == 1 for p in first), first  # one GET per file
        assert second == Counter(), second  # the second name: every file from the cache
        assert "Traceback" not in log.read_text()
    finally:
        app.terminate()
        app.wait(30)
        stop_gpg_agent(tmp_path / "gnupg")


def test_apt_shows_why_a_source_is_refused(
    tmp_path: Path, apt_repo: AptRepo, upstream: Upstream, start_appliance: StartAppliance
) -> None:
    """apt prints the status line and nothing else: the reason phrase says what to do,
    and `GET /` lists what is accepted."""
    app = start_appliance({"debian": [f"{upstream.url}/debian"]})
    client = AptClient(
        tmp_path / "client",
        "http://deb.example.org/debian",
        apt_repo.keyring,
        apt_repo.arch,
        proxy=f"http://127.0.0.1:{app.port}",
    )
    r = client.update()
    out = r.stdout + r.stderr
    assert "403  Not a configured upstream: deb.example.org (add it with --remap or apt.allow)" in (
        out
    ), out
    # what is accepted, for curl (apt-cacher-ng's 406 usage page) and for a browser
    code, body = http_get(app.url + "/")
    assert code == 406 and f"/debian/: {upstream.url}/debian" in body.decode(), body
    req = urllib.request.Request(app.url + "/", headers={"Accept": "text/html"})
    with urllib.request.urlopen(req, timeout=10) as page:
        html = page.read().decode()
    assert f'<ul id="accepted"><li>/debian/: {upstream.url}/debian</li>' in html, html
