"""A real OpenStack Glance image API on 127.0.0.1 for tests: sqlite, file store, no keystone.

Glance's own context middleware and policy engine run unchanged; only keystone's
auth_token filter is replaced by `fixed_token_auth`, which accepts one token and
sets the identity headers keystonemiddleware would set. Glance >= 2025 has no
standalone server, so gunicorn serves `glance.wsgi.api:application`.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.components import stop

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("GLANCE_VENV", ROOT / ".components/glance"))
TOKEN = "archive-test-token"
PROJECT = "archivelocal00000000000000000001"

API_CONF = """\
[DEFAULT]
enabled_backends = fs:file
use_stderr = true
debug = false
image_cache_dir = {d}/cache
[glance_store]
default_backend = fs
[fs]
filesystem_store_datadir = {d}/images/
[os_glance_staging_store]
filesystem_store_datadir = {d}/staging/
[os_glance_tasks_store]
filesystem_store_datadir = {d}/tasks/
[database]
connection = sqlite:///{d}/glance.sqlite
[paste_deploy]
config_file = {d}/etc/glance-api-paste.ini
[oslo_concurrency]
lock_path = {d}/locks
[image_format]
require_image_format_match = true
"""

# urlmap composite with /healthcheck as an app; keystone's filter replaced by ours
PASTE = """\
[composite:glance-api]
paste.composite_factory = glance.api:root_app_factory
/: api
/healthcheck: healthcheck

[pipeline:api]
pipeline = versionnegotiation fixedtoken context rootapp

[composite:rootapp]
paste.composite_factory = glance.api:root_app_factory
/: apiversions
/v2: apiv2app

[app:apiversions]
paste.app_factory = glance.api.versions:create_resource

[app:apiv2app]
paste.app_factory = glance.api.v2.router:API.factory

[app:healthcheck]
paste.app_factory = oslo_middleware:Healthcheck.app_factory
backends = disable_by_file
disable_by_file_path = {d}/healthcheck_disable

[filter:versionnegotiation]
paste.filter_factory = glance.api.middleware.version_negotiation:VersionNegotiationFilter.factory

[filter:context]
paste.filter_factory = glance.api.middleware.context:ContextMiddleware.factory

[filter:fixedtoken]
paste.filter_factory = fixed_token_auth:filter_factory
token = {token}
project_id = {project}
"""

FILTER = '''\
"""Test-only stand-in for keystonemiddleware.auth_token: one accepted token."""
import json

IDENTITY = ("HTTP_X_IDENTITY_STATUS", "HTTP_X_ROLES", "HTTP_X_PROJECT_ID",
            "HTTP_X_TENANT_ID", "HTTP_X_USER_ID", "HTTP_X_SERVICE_ROLES")


def filter_factory(global_conf, token, project_id, **_):
    def wrap(app):
        def middleware(environ, start_response):
            for name in IDENTITY:  # a client never chooses its own identity
                environ.pop(name, None)
            if environ.get("HTTP_X_AUTH_TOKEN") != token:
                body = json.dumps({"error": {"code": 401, "message": "bad token"}}).encode()
                start_response("401 Unauthorized", [("Content-Type", "application/json"),
                                                   ("Content-Length", str(len(body)))])
                return [body]
            environ.update(HTTP_X_IDENTITY_STATUS="Confirmed", HTTP_X_ROLES="admin,member,reader",
                           HTTP_X_PROJECT_ID=project_id, HTTP_X_USER_ID="archive-seed")
            return app(environ, start_response)
        return middleware
    return wrap
'''


def installed() -> bool:
    return (VENV / "bin/gunicorn").exists()


@dataclass
class Glance:
    endpoint: str
    token: str
    datadir: Path
    process: subprocess.Popen

    def stop(self) -> None:
        stop(self.process)

    def log_text(self) -> str:
        return (self.datadir / "glance-api.log").read_text(errors="replace")


def start(datadir: Path, port: int, timeout: float = 90.0) -> Glance:
    d = datadir.resolve()
    for sub in ("etc", "images", "staging", "tasks", "locks", "cache"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    (d / "etc/glance-api.conf").write_text(API_CONF.format(d=d))
    (d / "etc/glance-api-paste.ini").write_text(PASTE.format(d=d, token=TOKEN, project=PROJECT))
    (d / "etc/fixed_token_auth.py").write_text(FILTER)
    python = str(VENV / "bin/python")
    subprocess.run(
        [
            python,
            "-m",
            "glance.cmd.manage",
            "--config-file",
            str(d / "etc/glance-api.conf"),
            "db_sync",
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    log = open(d / "glance-api.log", "wb")  # noqa: SIM115 - owned by the server process
    process = subprocess.Popen(
        [
            str(VENV / "bin/gunicorn"),
            "--pythonpath",
            str(d / "etc"),
            "-b",
            f"127.0.0.1:{port}",
            "-w",
            "1",
            "--threads",
            "8",
            "--timeout",
            "600",
            "glance.wsgi.api:application",
        ],
        env={**os.environ, "OS_GLANCE_CONFIG_DIR": str(d / "etc")},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    glance = Glance(f"http://127.0.0.1:{port}", TOKEN, d, process)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{glance.endpoint}/healthcheck", timeout=2):
                return glance
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                glance.stop()
                raise RuntimeError("glance did not start:\n" + glance.log_text()[-3000:]) from None
            time.sleep(0.2)
