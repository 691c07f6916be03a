"""Seed configuration errors, version order and the plan (pure parts of seeding)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from appliance import config as configuration
from appliance.targets.catalog import SeedImage, version_key
from appliance.targets.plan import CloudImage, make_plan


def parse(text: str) -> configuration.Config:
    return configuration.parse(yaml.safe_load(text))


GLANCE = """
seed:
  targets:
    - name: r1
      type: glance
      feeds: [ubuntu]
      auth: {AUTH}
"""


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ("{endpoint: 'http://g:9292', token: abc}", "seed.targets[0].auth.token: secrets are not"),
        ("{endpoint: 'http://g:9292'}", "needs endpoint + token_file"),
        (
            "{keystone: {auth_url: 'http://k:5000/v3', username: u, password: p}}",
            "auth.keystone.password: secrets are not written",
        ),
        ("{keystone: {auth_url: 'http://k:5000/v3', username: u}}", "needs password_file"),
        ("{endpoint: 'ftp://g', token_file: /t}", "auth.endpoint: expected an http(s) URL"),
    ],
)
def test_glance_auth_errors_name_the_key(auth: str, message: str) -> None:
    with pytest.raises(configuration.ConfigError, match=re.escape(message)):
        parse(GLANCE.replace("{AUTH}", auth))


def test_keystone_and_ec2_targets_parse() -> None:
    cfg = parse(
        """
seed:
  after_sync: false
  targets:
    - name: r1
      type: glance
      feeds: [ubuntu]
      auth:
        keystone: {auth_url: 'http://k:5000/v3', username: sync, password_file: /etc/p,
                   project_name: admin, region_name: RegionTwo}
    - name: euca
      type: ec2
      feeds: ubuntu
      ec2_endpoint: http://e:8773/
      s3_endpoint: http://e:8773/services/objectstorage
      regions: [us-east-1, eu-west-1]
      method: ebs
"""
    )
    glance, ec2 = cfg.seed.targets
    assert glance.region == "RegionTwo" and glance.password.file == Path("/etc/p")
    assert "password" not in glance.keystone and glance.keystone["username"] == "sync"
    assert ec2.regions == ("us-east-1", "eu-west-1") and ec2.method == "ebs"
    assert "/etc/p" in configuration.dump(cfg)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("secret_key: x", "secret_key: secrets belong in credentials_file"),
        ("method: snapshot", "method: bundle or ebs"),
        ("bucket: Bad_Bucket", "bucket: not a valid bucket name"),
        ("regions: []", "regions: expected a list"),
    ],
)
def test_ec2_errors(extra: str, message: str) -> None:
    text = f"""
seed:
  targets:
    - name: euca
      type: ec2
      feeds: [ubuntu]
      ec2_endpoint: http://e:8773/
      s3_endpoint: http://e:8773/
      {extra}
"""
    with pytest.raises(configuration.ConfigError, match=message):
        parse(text)


def test_duplicate_target_and_unknown_type() -> None:
    with pytest.raises(configuration.ConfigError, match="type: glance or ec2"):
        parse("seed: {targets: [{name: a, type: swift, feeds: [x]}]}")
    two = "{name: a, type: glance, feeds: [x], auth: {endpoint: 'http://g', token_file: /t}}"
    with pytest.raises(configuration.ConfigError, match="defined twice"):
        parse(f"seed: {{targets: [{two}, {two}]}}")


def test_version_order_is_numeric() -> None:
    versions = ["20240101.9", "20240101.10", "20240101", "20231231.1"]
    assert sorted(versions, key=version_key) == [
        "20231231.1",
        "20240101",
        "20240101.9",
        "20240101.10",
    ]


def image(version: str, sha: str = "aa") -> SeedImage:
    return SeedImage("f", "c", "p", version, "disk1.img", {"sha256": sha}, 1, None, None)  # type: ignore[arg-type]


def cloud(id: str, version: str, sha: str = "aa", own: bool = True, ready: bool = True):
    return CloudImage(id, id, "r", ("p", version, "disk1.img"), ready, own, sha256=sha)


def test_plan_matches_identity_and_checksum_not_names() -> None:
    wanted = [image("2"), image("3", "bb")]
    existing = [
        cloud("keep", "2"),
        cloud("stale-bytes", "3", "old"),
        cloud("old-version", "1"),
        cloud("not-ours", "0", own=False),
        CloudImage("half", "half", "r", None, False, True),
    ]
    plan = make_plan(wanted, existing)
    assert [i.version for i in plan.upload] == ["3"]
    assert [c.id for _, c in plan.present] == ["keep"]
    assert sorted(c.id for c in plan.remove) == ["old-version", "stale-bytes"]
    assert [c.id for c in plan.broken] == ["half"]


def test_logging_metrics_admin_config() -> None:
    cfg = parse("logging: {access_log: off, format: json}\nmetrics: {enabled: false}\n")
    assert cfg.logging.access_log == "off"  # a bare YAML `off` is false: still means off
    assert cfg.logging.access_log_format == "json" and cfg.metrics is False
    assert cfg.admin.allow == ("127.0.0.0/8", "::1/128")
    for text, message in (
        ("logging: {format: xml}", "logging.format: text or json"),
        ("admin: {allow: [not-a-net]}", "admin.allow[0]: not a network"),
        ("metrics: {enabled: 1}", "metrics.enabled: expected true or false"),
    ):
        with pytest.raises(configuration.ConfigError, match=re.escape(message)):
            parse(text)


def test_admin_token_file_rules(tmp_path: Path) -> None:
    from appliance.web.token import AdminUnavailable, load_token

    path = tmp_path / "sub/token"
    token = load_token(path)  # created on first start
    assert len(token) >= 32 and path.stat().st_mode & 0o777 == 0o600
    assert load_token(path) == token
    path.chmod(0o644)
    with pytest.raises(AdminUnavailable, match="chmod 600"):
        load_token(path)
    path.chmod(0o600)
    path.write_text("short\n")
    with pytest.raises(AdminUnavailable, match="at least 16"):
        load_token(path)
