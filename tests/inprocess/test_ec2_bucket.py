"""The EC2 target and a bucket it may not own: asked, never created behind its owner's back."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


class _Forbidden(BaseHTTPRequestHandler):
    """An S3 endpoint whose bucket belongs to someone else: HEAD 403, and a record of
    whether the seeder then tried to create it anyway."""

    seen: list[str] = []

    def do_HEAD(self) -> None:
        self.seen.append(f"HEAD {self.path}")
        self.send_response(403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_PUT(self) -> None:
        self.seen.append(f"PUT {self.path}")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_forbidden_bucket_is_an_error_not_a_bucket_to_create(tmp_path: Path) -> None:
    from appliance.config import Ec2TargetConfig
    from appliance.targets.ec2 import Ec2Cloud
    from appliance.targets.plan import SeedError

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Forbidden)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    creds = tmp_path / "eucarc"
    creds.write_text("EC2_ACCESS_KEY=AKIDEXAMPLE\nEC2_SECRET_KEY=secret\n")
    url = f"http://127.0.0.1:{server.server_address[1]}"
    target = Ec2TargetConfig(
        name="t",
        type="ec2",
        feeds=("f",),
        ec2_endpoint=url,
        s3_endpoint=url,
        credentials_file=creds,
        method="ebs",
        bucket="someone-elses",
    )
    try:
        cloud = Ec2Cloud(target, "us-east-1")
        with pytest.raises(SeedError, match=r"someone-elses.*403"):
            cloud._ensure_bucket()
    finally:
        server.shutdown()
        server.server_close()
    assert _Forbidden.seen and all(s.startswith("HEAD") for s in _Forbidden.seen)
