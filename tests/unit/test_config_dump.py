"""The configuration printed the way users write it, and defaults said once."""

from __future__ import annotations

from pathlib import Path

import yaml


def test_config_prints_sizes_and_durations_the_way_users_write_them(tmp_path: Path) -> None:
    from appliance import config

    text = """
listen: "[::]:3142"
cache: {dir: /srv/cache, max_size: 50GiB, min_free: 500MB, expire_after: 90m}
images:
  sync_interval: 6h
  feeds: [{name: u, url: "http://x/", keyring: /k.gpg, filters: [arch=amd64]}]
upstream: {min_rate: 0, deadline: 45s}
"""
    parsed = config.parse(yaml.safe_load(text))
    out = config.dump(parsed)
    for written in (
        "max_size: 50GiB",
        "min_free: 500MB",
        "expire_after: 90m",
        "sync_interval: 6h",
        "deadline: 45s",
        "listen: '[::]:3142'",
    ):
        assert written in out, out
    assert "53687091200" not in out
    assert config.parse(yaml.safe_load(out)) == parsed  # what it prints, it reads back


def test_the_embedded_defaults_and_the_dataclasses_agree() -> None:
    """Defaults live in the dataclasses; the embedded YAML only adds what has none there
    (listen, cache.dir/max_size, apt remaps, mirrors, sources): where both say something,
    they agree."""
    from dataclasses import MISSING, fields

    from appliance import config

    data = config.default_data()
    parsed = config.load(None)
    assert config.parse({}) == parsed
    for section, values in data.items():
        if not isinstance(values, dict):
            continue
        value = getattr(parsed, section)
        for f in fields(value):
            if f.name in values and f.default is not MISSING:
                assert getattr(value, f.name) == getattr(type(value), f.name), f.name


def test_seed_targets_and_tls_print_back_as_written() -> None:
    """Glance's credentials were printed flat (`token: /path`, `password: $VAR`) and a
    self-signed `tls` as `cert: null`: the parser refused both, so `archive-local config`
    did not read its own output back."""
    from appliance import config

    text = """
tls: {listen: "127.0.0.1:8443"}
seed:
  targets:
    - {name: a, type: glance, feeds: [f], auth: {endpoint: "http://g:9292", token_file: /t}}
    - {name: b, type: glance, feeds: [f], auth: {endpoint: "http://g:9292", token_env: TOK}}
    - name: c
      type: glance
      feeds: [f]
      auth: {keystone: {auth_url: "http://k:5000/v3", username: u, password_env: PW}}
    - name: d
      type: glance
      feeds: [f]
      auth:
        keystone: {auth_url: "http://k:5000/v3", application_credential_id: i,
                   application_credential_secret_file: /s, region_name: Two}
    - {name: e, type: ec2, feeds: [f], ec2_endpoint: "http://e/", s3_endpoint: "http://e/s3"}
"""
    parsed = config.parse(yaml.safe_load(text))
    out = config.dump(parsed)
    for written in ("token_file: /t", "token_env: TOK", "password_env: PW"):
        assert written in out, out
    assert "application_credential_secret_file: /s" in out and "cert:" not in out, out
    assert config.parse(yaml.safe_load(out)) == parsed
