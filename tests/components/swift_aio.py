"""A real OpenStack Swift with its S3 API on 127.0.0.1 for tests: all in one (one device,
one replica), tempauth users, memcached for their tokens, every file under one folder.

Five processes, one each: memcached, the account, container and object servers and the
proxy (with `s3api` before `tempauth`, and `slo` for multipart uploads). Ports PORT (the
proxy, the S3 endpoint) to PORT+4. Started in about a second; stopped with SIGTERM.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.components import stop

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("SWIFT_VENV", ROOT / ".components/swift"))
LAUNCHER = Path(__file__).with_name("swift_server.py")
ACCESS_KEY, SECRET_KEY = "test:tester", "testing"
REGION = "us-east-1"  # s3api's `location`: clients must sign for it

SWIFT_CONF = """\
[swift-hash]
swift_hash_path_prefix = archive-local-tests
swift_hash_path_suffix = archive-local-tests

[storage-policy:0]
name = gold
default = yes
"""

# what every server shares: loopback, one process, this instance's folders
DEFAULT_CONF = """\
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
workers = 0
user = {user}
swift_dir = {etc}
recon_cache_path = {run}
log_level = WARNING
"""

BACKEND_CONF = (
    DEFAULT_CONF
    + """\
devices = {srv}
mount_check = false
fallocate_reserve = 0

[pipeline:main]
pipeline = healthcheck {name}-server

[app:{name}-server]
use = egg:swift#{name}

[filter:healthcheck]
use = egg:swift#healthcheck
"""
)

PROXY_CONF = (
    DEFAULT_CONF
    + """\

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats s3api
    tempauth copy slo dlo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:s3api]
use = egg:swift#s3api
location = {region}

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = testing .admin
user_test_reader = reading

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:{memcached}

[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
"""
)


def installed() -> bool:
    return (VENV / "bin/python").exists() and shutil.which("memcached") is not None


@dataclass
class Swift:
    datadir: Path
    port: int
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return "\n".join(
            f"== {p.name}\n" + p.read_text(errors="replace")[-3000:]
            for p in sorted((self.datadir / "logs").glob("*.log"))
        )

    def start(self, timeout: float = 60.0) -> None:
        """Start every server (again, after `stop`: the data stays)."""
        d, python = self.datadir, str(VENV / "bin/python")
        etc, logs = d / "etc", d / "logs"
        servers = [
            ("memcached", ["memcached", "-l", "127.0.0.1", "-p", str(self.port + 4), "-U", "0"]),
        ]
        for name in ("account", "container", "object"):
            conf = etc / f"{name}-server.conf"
            servers.append(
                (name, [python, str(LAUNCHER), "serve", str(etc), f"{name}-server", str(conf)])
            )
        servers.append(
            (
                "proxy",
                [
                    python,
                    str(LAUNCHER),
                    "serve",
                    str(etc),
                    "proxy-server",
                    str(etc / "proxy-server.conf"),
                ],
            )
        )
        if os.geteuid() == 0:  # memcached will not run as root without being told whom to be
            servers[0][1].extend(["-u", "root"])
        for name, argv in servers:
            log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
            self.processes.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        while not self._answers():
            if any(p.poll() is not None for p in self.processes) or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("swift did not start:\n" + self.log_text())
            time.sleep(0.1)

    def _answers(self) -> bool:
        """tempauth hands out a token: the proxy and memcached both work."""
        request = urllib.request.Request(
            f"{self.endpoint}/auth/v1.0",
            headers={"X-Auth-User": ACCESS_KEY, "X-Auth-Key": SECRET_KEY},
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=2) as r:
                return r.status == 200 and bool(r.headers.get("X-Auth-Token"))
        except OSError:
            return False

    def stop(self) -> None:
        for p in reversed(self.processes):
            stop(p)
        self.processes.clear()

    def client(self):  # type: ignore[no-untyped-def]
        """A boto3 S3 client for this Swift (the tests' own checks)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )


def start(datadir: Path, port: int) -> Swift:
    """Configure an all-in-one Swift in `datadir` and start it on PORT..PORT+4."""
    d = datadir.resolve()
    etc = d / "etc"
    for sub in ("etc", "srv/d1", "run", "logs"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    values = {"user": _user(), "etc": etc, "srv": d / "srv", "run": d / "run", "region": REGION}
    (etc / "swift.conf").write_text(SWIFT_CONF)
    for i, name in enumerate(("account", "container", "object"), 1):
        (etc / f"{name}-server.conf").write_text(
            BACKEND_CONF.format(name=name, port=port + i, **values)
        )
    (etc / "proxy-server.conf").write_text(
        PROXY_CONF.format(port=port, memcached=port + 4, **values)
    )
    out = subprocess.run(
        [
            str(VENV / "bin/python"),
            str(LAUNCHER),
            "rings",
            str(etc),
            "127.0.0.1",
            *(str(port + i) for i in (1, 2, 3)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"swift rings: {out.stdout[-2000:]}{out.stderr[-2000:]}")
    swift = Swift(d, port)
    swift.start()
    return swift


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name
