"""Options work where users put them: before or after the subcommand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.configs import write_config
from tests.conftest import free_port


@pytest.mark.parametrize("where", ["before", "after"])
def test_common_options_before_or_after_the_subcommand(tmp_path: Path, where: str) -> None:
    """`archive-local config --config F -v` (as unit files write it) and the classic order."""
    cfg = write_config(
        tmp_path / "c.yaml",
        {
            "listen": "127.0.0.1:4242",
            "cache": {"dir": str(tmp_path / "cache"), "max_size": "1GiB"},
            "apt": {"index_ttl": 60, "remaps": {}},
        },
    )
    opts = ["--config", str(cfg), "-v"]
    argv = [*opts, "config"] if where == "before" else ["config", *opts]
    out = subprocess.run(
        [sys.executable, "-m", "appliance", *argv], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert "127.0.0.1:4242" in out.stdout


def test_sync_accepts_config_after_the_subcommand(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "c.yaml",
        {
            "listen": f"127.0.0.1:{free_port()}",
            "cache": {"dir": str(tmp_path / "cache"), "max_size": "1GiB"},
            "apt": {"index_ttl": 60, "remaps": {}},
            "images": {
                "gnupg_home": str(tmp_path / "gnupg"),
                "feeds": [
                    {
                        "name": "only-in-this-file",
                        "url": f"http://127.0.0.1:{free_port()}/",
                        "keyring": str(tmp_path / "none.gpg"),
                    }
                ],
            },
        },
    )
    out = subprocess.run(
        [sys.executable, "-m", "appliance", "sync", "--config", str(cfg), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "unrecognized arguments" not in out.stderr
    [outcome] = json.loads(out.stdout)  # the feed of this file: its config was read
    assert outcome["feed"] == "only-in-this-file" and not outcome["ok"]
    assert out.returncode == 1, out.stderr
