"""Shared fixtures: real components started per test or per session.

A missing component fails the test under CI=true; elsewhere it skips with the
package to install.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.error import HTTPError

import pytest

from tests.aptrepo import AptRepo, build_repo
from tests.configs import write_config
from tests.feed import Feed, build_feed, qcow2_image
from tests.systemd_ns import SystemdNamespace
from tests.upstream import Upstream

if TYPE_CHECKING:
    from tests.fleet import Fleet

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(msg: str) -> NoReturn:
    """A real component is missing: a failure under CI=true, a skip elsewhere."""
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


def require(command: str, package: str) -> None:
    if shutil.which(command) is None:
        unavailable(f"{command} not found: apt-get install {package} (make test installs it)")


# the layers, marked by folder: `make check` runs the first two (a venv is all they need)
COMPONENTS = {"swift"}  # fixtures that start a component `make test` builds (.components)
LAYERS = (("tests/unit/", "unit"), ("charm/tests/unit/", "unit"), ("tests/inprocess/", "inprocess"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each test gets its layer's marker from where it lives: unit (pure code),
    inprocess (the service's parts on an event loop, loopback only), e2e (the rest: the
    service as a process, real components, Debian packages)."""
    root = Path(config.rootpath)
    for item in items:
        where = item.path.relative_to(root).as_posix() if item.path.is_relative_to(root) else ""
        layer = next((m for prefix, m in LAYERS if where.startswith(prefix)), "e2e")
        if COMPONENTS & set(getattr(item, "fixturenames", ())):
            layer = "e2e"  # a real component (Swift) to start: not the venv alone
        item.add_marker(layer)
    # the longest first (stable otherwise): pytest-xdist hands tests out in this order, and
    # a long one started last would keep one process busy while the other waits
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


MACHINE_STATE = (Path("/var/lib/archive-local"), Path("/var/cache/archive-local"))


def _agents_under(base: Path) -> list[str]:
    """gpg-agents (alive, not zombies) whose home is under `base`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"gpg-agent") and str(base).encode() in b" ".join(argv):
            found.append(b" ".join(argv).decode(errors="replace"))
    return found


@pytest.fixture(scope="session", autouse=True)
def touches_only_its_own_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The suite writes only under its temp dirs and stops what it starts: it may not
    create the machine's /var/lib or /var/cache folders, nor leave gpg-agents behind."""
    before = {p: p.exists() for p in MACHINE_STATE}
    yield
    created = [str(p) for p, existed in before.items() if not existed and p.exists()]
    assert created == [], f"the tests created {created} on this machine"
    base = tmp_path_factory.getbasetemp()
    deadline = time.monotonic() + 5  # agents exit shortly after `gpgconf --kill`
    while (left := _agents_under(base)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == [], f"gpg-agents left running: {left}"


# curl printing only the answer's status code: for asking from inside a network or
# systemd namespace, where the test's own Python client cannot go
CURL_STATUS = ("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Appliance:
    port: int
    cache_dir: Path
    log: Path
    proc: subprocess.Popen[bytes]
    config: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def token(self) -> str:
        """The admin API token (the service creates it on first start)."""
        return (self.cache_dir.parent / f"admin-token-{self.port}").read_text().strip()

    def admin(
        self, action: str, body: dict | None = None, token: str | None = None
    ) -> tuple[int, bytes]:
        req = urllib.request.Request(
            f"{self.url}/api/admin/{action}",
            method="POST",
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {token or self.token}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read()
        except HTTPError as exc:
            return exc.code, exc.read()

    def status(self) -> dict:
        return json.loads(http_get(f"{self.url}/api/status")[1])

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`archive-local --config <this appliance's config> ARGS...`."""
        return subprocess.run(
            [sys.executable, "-m", "appliance", "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def wait_indexes(self, files: int, timeout: float = 20) -> dict:
        """Until the apt index table lists at least `files` files and nothing is parsing."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.status()["integrity"]["apt_indexes"]
            if stats["files"] >= files and stats["parsing"] == 0:
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"apt indexes not learnt: {stats}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


StartAppliance = Callable[..., Appliance]


@pytest.fixture
def start_appliance(tmp_path: Path) -> Iterator[StartAppliance]:
    """Start `archive-local serve` as a real process with a config written from kwargs."""
    started: list[Appliance] = []
    homes: list[Path] = []

    def start(
        remaps: dict[str, list[str]],
        *,
        index_ttl: float = 300,
        max_size: Any = "1GiB",
        allow: list[str] | None = None,
        cache_dir: Path | None = None,
        images: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
    ) -> Appliance:
        port = port or free_port()
        cache_dir = cache_dir or tmp_path / f"cache-{len(started)}"
        config = {
            "listen": f"{host}:{port}",
            "cache": {"dir": str(cache_dir), "max_size": max_size},
            "apt": {"index_ttl": index_ttl, "remaps": remaps, "allow": allow or []},
            "admin": {"token_file": str(cache_dir.parent / f"admin-token-{port}")},
            "discovery": {"mdns": False},  # tests that want mDNS run it in a namespace
            "workers": 1,  # one process to look at; tests of several say so
        }
        # the appliance's own key stays under the test's directory too
        config["images"] = {"gnupg_home": str(cache_dir.parent / f"gnupg-{port}"), **(images or {})}
        homes.append(Path(config["images"]["gnupg_home"]))
        config.update(extra or {})
        cfg = write_config(tmp_path / f"config-{len(started)}.yaml", config)
        log = tmp_path / f"appliance-{len(started)}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "appliance", "--config", str(cfg), "serve"],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        app = Appliance(port, cache_dir, log, proc, cfg)
        started.append(app)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"appliance exited: {app.log_text()}")
            try:
                socket.create_connection((host, port), 0.2).close()
                return app
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"appliance did not start: {app.log_text()}")

    yield start
    for app in started:
        app.stop()
    for home in homes:
        stop_gpg_agent(home)


@pytest.fixture
def upstream_root(tmp_path: Path) -> Path:
    root = tmp_path / "upstream"
    root.mkdir()
    return root


def upstream_file(root: Path, path: str, size: int) -> bytes:
    """A file of `size` random bytes that the upstream serving `root` has at `path`."""
    data = os.urandom(size)
    (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (root / path.lstrip("/")).write_bytes(data)
    return data


@pytest.fixture
def upstream(upstream_root: Path) -> Iterator[Upstream]:
    server = Upstream(upstream_root).start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def apt_repo_template(tmp_path_factory: pytest.TempPathFactory) -> AptRepo:
    for cmd, pkg in (
        ("apt-get", "apt"),
        ("apt-ftparchive", "apt-utils"),
        ("dpkg-deb", "dpkg"),
        ("gpg", "gnupg"),
    ):
        require(cmd, pkg)
    return build_repo(tmp_path_factory.mktemp("aptrepo"))


@pytest.fixture
def apt_repo(apt_repo_template: AptRepo, upstream_root: Path) -> AptRepo:
    """The signed repository, copied under this test's upstream root as /debian."""
    shutil.copytree(apt_repo_template.root, upstream_root / "debian")
    return AptRepo(
        upstream_root / "debian",
        apt_repo_template.keyring,
        apt_repo_template.arch,
        {
            n: upstream_root / "debian" / p.relative_to(apt_repo_template.root)
            for n, p in apt_repo_template.debs.items()
        },
    )


# --- image feeds ---------------------------------------------------------------------

ITEM_SIZE = 2 * 1024 * 1024  # disk images of a few MB, like small cloud images
FILTERS = ["arch=amd64", "release~^(jammy|noble)$", "ftype=disk1.img"]


@contextlib.contextmanager
def signed_feed(tmp_path: Path, **build: Any) -> Iterator[Feed]:
    """A feed built under `tmp_path` (`build`: build_feed's options), its signing key
    closed afterwards so that no gpg-agent outlives the test."""
    require("gpg", "gnupg")
    f = build_feed(tmp_path, **build)
    try:
        yield f
    finally:
        f.key.close()


@contextlib.contextmanager
def serving(feed: Feed) -> Iterator[Upstream]:
    """An upstream serving `feed`'s tree, closed afterwards."""
    server = Upstream(feed.root).start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def feed(tmp_path: Path) -> Iterator[Feed]:
    with signed_feed(tmp_path, item_size=ITEM_SIZE) as f:
        yield f


@pytest.fixture
def served(feed: Feed) -> Iterator[Upstream]:
    with serving(feed) as server:
        yield server


def write_feed_config(tmp_path: Path, feed: Feed, url: str, max_items: int = 2) -> Path:
    """`tmp_path/config.yaml` mirroring `feed` from `url` as feed `ex` (FILTERS); the cache,
    the appliance's key and the admin token all under `tmp_path`."""
    return write_config(
        tmp_path / "config.yaml",
        {
            "cache": {"dir": str(tmp_path / "cache")},
            "admin": {"token_file": str(tmp_path / "admin-token")},
            "images": {
                "gnupg_home": str(tmp_path / "appliance-gnupg"),
                "feeds": [
                    {
                        "name": "ex",
                        "url": url.rstrip("/") + "/",
                        "keyring": str(feed.key.keyring),
                        "filters": FILTERS,
                        "max_items": max_items,
                    }
                ],
            },
        },
    )


def stop_gpg_agent(home: Path) -> None:
    """Stop the gpg-agent gpg starts for a home the test gave the appliance."""
    if home.is_dir():
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)


@pytest.fixture
def feed_config(tmp_path: Path, feed: Feed, served: Upstream) -> Iterator[Path]:
    yield write_feed_config(tmp_path, feed, served.url)
    stop_gpg_agent(tmp_path / "appliance-gnupg")


SEED_SERIALS = ("20240101", "20240301")


@pytest.fixture
def qcow_feed(tmp_path: Path) -> Iterator[Feed]:
    """A feed whose disk images are real qcow2 files (what Glance checks for), 2 versions."""
    require("qemu-img", "qemu-utils")
    with signed_feed(
        tmp_path, item_size=ITEM_SIZE, serials=SEED_SERIALS, make_image=qcow2_image
    ) as f:
        yield f


@pytest.fixture
def qcow_served(qcow_feed: Feed) -> Iterator[Upstream]:
    with serving(qcow_feed) as server:
        yield server


def _run_json(
    config: Path, verb: str, args: tuple[str, ...], timeout: int, silent: list | None = None
) -> tuple[int, list[dict], str]:
    """`archive-local <verb> --json` as a separate process: its exit code, what it printed
    (`silent` when it printed nothing, if the verb may), stderr. Anything else fails."""
    r = subprocess.run(
        [sys.executable, "-m", "appliance", "--config", str(config), verb, "--json", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if silent is not None and not r.stdout.strip():
        return r.returncode, silent, r.stderr
    try:
        out = json.loads(r.stdout)
    except ValueError:
        pytest.fail(f"not JSON: {r.stdout!r} {r.stderr}")
    return r.returncode, out, r.stderr


def run_sync(config: Path, *args: str) -> tuple[int, list[dict], str]:
    """`archive-local sync --json`: exit code, the per-feed outcomes, stderr."""
    return _run_json(config, "sync", args, timeout=120, silent=[])


def run_seed(config: Path, *args: str) -> tuple[int, list[dict], str]:
    """`archive-local seed --json`: exit code, the per-target outcomes, stderr."""
    return _run_json(config, "seed", args, timeout=300)


def actions(outcome: dict, kind: str) -> list[dict]:
    """The actions of one kind (uploaded, removed, ...) in a seed outcome."""
    return [a for a in outcome["actions"] if a["action"] == kind]


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[SystemdNamespace]:
    """A real systemd as PID 1 of private namespaces, stopped at the end (root only)."""
    if os.geteuid() != 0:
        unavailable("systemd in namespaces needs root")
    for cmd, pkg in (("unshare", "util-linux"), ("nsenter", "util-linux"), ("curl", "curl")):
        require(cmd, pkg)
    if not Path("/lib/systemd/systemd").exists():
        unavailable("systemd not installed: apt-get install systemd")
    ns = SystemdNamespace(tmp_path / "ns")
    ns.start()
    yield ns
    ns.stop()


@pytest.fixture(scope="session")
def swift(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real OpenStack Swift with its S3 API on 127.0.0.1 (tests/components/swift_aio.py),
    one for the session; tests keep apart by bucket or prefix."""
    from tests.components import swift_aio

    if not swift_aio.installed():
        unavailable("swift missing: `make test` builds .components/swift and installs memcached")
    server = swift_aio.start(tmp_path_factory.mktemp("swift"), free_port_block(5))
    yield server
    server.stop()


@pytest.fixture
def fleet(start_appliance: StartAppliance, upstream: Upstream, tmp_path: Path) -> Fleet:
    """Units of one fleet on this test's upstream, started on the store a test names."""
    from tests.fleet import Fleet  # (tests.fleet builds on this module)

    return Fleet(start_appliance, upstream, tmp_path)


def free_port_block(n: int) -> int:
    """A port P with P..P+n-1 all free on 127.0.0.1 (Swift's five servers)."""
    for _ in range(50):
        base = free_port()
        if base + n > 65535:
            continue
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                # as the servers bind: a port a closed connection left in TIME_WAIT is free
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", p))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no block of free ports")


FLEET_KEY = b"the-fleet-secret-of-the-tests"  # what the charm shares between units


def object_store(
    swift: Any, local: Path, bucket: str = "cache", prefix: str = "", fleet_key: bool = True
) -> Any:
    """An `ObjectStore` on `swift` with `local` as its disk, as open_store would build it
    (with the fleet's key the charm gives every unit, unless `fleet_key` is False)."""
    from appliance.cache.fleetkey import FleetKey
    from appliance.cache.objectstore import Bucket, Credentials, ObjectStore, s3_client
    from appliance.cache.store import FilesystemStore
    from tests.components import swift_aio

    creds = Credentials(swift_aio.ACCESS_KEY, swift_aio.SECRET_KEY)
    store = ObjectStore(
        FilesystemStore(local),
        Bucket(s3_client(swift.endpoint, swift_aio.REGION, creds), bucket, prefix),
        fleet_key=FleetKey(FLEET_KEY) if fleet_key else None,
    )
    store.connect()
    deadline = time.monotonic() + 15
    while "ServiceUnavailable" in (store.remote_problem() or ""):  # a Swift just started
        assert time.monotonic() < deadline, store.remote_problem()  # (its 503 "slow down")
        time.sleep(0.5)
        store.connect()
    assert store.remote_problem() is None, store.remote_problem()
    return store
