"""The console script: configuration errors are clear, `config` shows what is in effect."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args], capture_output=True, text=True, timeout=30
    )


def test_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("cache: {max_size: plenty}\n")
    r = run("--config", str(cfg), "serve")
    assert r.returncode == 2
    assert "cache.max_size: expected a size" in r.stderr


def test_bad_remap_flag(tmp_path: Path) -> None:
    r = run("serve", "--remap", "debian=gopher://x", "--cache-dir", str(tmp_path))
    assert r.returncode == 2 and "apt.remaps.debian[0]" in r.stderr


def test_config_prints_effective_settings() -> None:
    r = run("config")
    assert r.returncode == 0
    assert "listen: 0.0.0.0:3142" in r.stdout and "debian-security:" in r.stdout


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = tmp_path / "config.yaml"
        cfg.write_text(f"admin: {{token_file: {tmp_path / 'token'}}}\n")
        r = run(
            "--config",
            str(cfg),
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--cache-dir",
            str(tmp_path / "cache"),
        )
    assert r.returncode == 1 and "cannot listen on" in r.stderr
