"""The tests' configuration builder (`tests/configs.py`): the appliance's parser checks
what a test writes, and the file is what `archive-local config` prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance import config
from tests.configs import write_config


def test_an_invalid_configuration_is_refused_naming_the_key(tmp_path: Path) -> None:
    """Refused with the parser's own message, before anything is written; a file written
    before stays as it was."""
    path = tmp_path / "config.yaml"
    with pytest.raises(config.ConfigError, match=r"^cache\.max_size: expected a size"):
        write_config(path, {"cache": {"dir": str(tmp_path), "max_size": "plenty"}})
    assert not path.exists()
    before = write_config(path, {"cache": {"dir": str(tmp_path)}}).read_text()
    with pytest.raises(config.ConfigError, match=r"^apt\.remap: unknown key"):
        write_config(path, {"apt": {"remap": {}}})
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]  # no temp file left


def test_what_it_writes_reads_back_as_the_same_configuration(tmp_path: Path) -> None:
    """Every section a test writes (a seed target's secrets, a self-signed TLS listener, a
    shared store, `workers: auto`): the file loads to the `Config` the dict parses to, and
    is exactly what `archive-local config` prints for it."""
    data = {
        "listen": "127.0.0.1:3199",
        "cache": {
            "dir": str(tmp_path / "cache"),
            "max_size": "1GiB",
            "store": {
                "endpoint": "http://127.0.0.1:8080",
                "bucket": "fleet",
                "credentials_file": str(tmp_path / "creds"),
                "prefix": "units",
                "peers": ["http://127.0.0.1:3200/"],
            },
        },
        "apt": {"index_ttl": 0, "remaps": {"debian": ["http://127.0.0.1:9/debian/"]}},
        "images": {
            "gnupg_home": str(tmp_path / "gnupg"),
            "feeds": [{"name": "ex", "url": "http://127.0.0.1:9", "keyring": "/k.gpg"}],
        },
        "seed": {
            "after_sync": False,
            "targets": [
                {
                    "name": "cloud",
                    "type": "glance",
                    "feeds": ["ex"],
                    "auth": {"endpoint": "http://127.0.0.1:9/", "token_env": "NO_TOKEN"},
                }
            ],
        },
        "logging": {"access_log": "off"},
        "tls": {"listen": "127.0.0.1:8443"},
        "workers": "auto",
    }
    path = write_config(tmp_path / "config.yaml", data)
    loaded = config.load(path)
    assert loaded == config.parse(data) and loaded.workers_auto
    assert path.read_text() == config.dump(config.parse(data))
    assert "\nworkers: auto  # " in path.read_text()  # the word, not this machine's count
