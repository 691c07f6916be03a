"""The EC2 target and a bucket it may not own: asked, never created behind its owner's back."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hostile import Conn, Hostile, Request, head


async def _forbidden(up: Hostile, req: Request, conn: Conn) -> None:
    """An S3 endpoint whose bucket belongs to someone else: HEAD 403; a PUT (creating it
    anyway) would succeed, so only the request log tells."""
    await conn.send(head("200 OK" if req.method == "PUT" else "403 Forbidden", 0))


def test_a_forbidden_bucket_is_an_error_not_a_bucket_to_create(tmp_path: Path) -> None:
    from appliance.config import Ec2TargetConfig
    from appliance.targets.ec2 import Ec2Cloud
    from appliance.targets.plan import SeedError

    s3 = Hostile().start()
    s3.default = _forbidden
    creds = tmp_path / "eucarc"
    creds.write_text("EC2_ACCESS_KEY=AKIDEXAMPLE\nEC2_SECRET_KEY=secret\n")
    target = Ec2TargetConfig(
        name="t",
        type="ec2",
        feeds=("f",),
        ec2_endpoint=s3.url,
        s3_endpoint=s3.url,
        credentials_file=creds,
        method="ebs",
        bucket="someone-elses",
    )
    try:
        cloud = Ec2Cloud(target, "us-east-1")
        with pytest.raises(SeedError, match=r"someone-elses.*403"):
            cloud._ensure_bucket()
    finally:
        s3.close()
    seen = [f"{r.method} {r.path}" for r in s3.requests]
    assert seen and all(s.startswith("HEAD ") for s in seen), seen
