"""The real apt-get with an isolated configuration under a temp directory."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


class AptClient:
    def __init__(
        self,
        home: Path,
        source_url: str,
        keyring: Path,
        arch: str,
        proxy: str | None = None,
        prefix: tuple[str, ...] = (),
    ) -> None:
        self.home = home
        self.prefix = prefix  # e.g. ("ip", "netns", "exec", NS): run apt in another namespace
        for d in (
            "etc/apt.conf.d",
            "etc/preferences.d",
            "etc/sources.list.d",
            "state/lists/partial",
            "cache/archives/partial",
            "log",
        ):
            (home / d).mkdir(parents=True, exist_ok=True)
        (home / "state/status").write_text("")
        (home / "etc/sources.list").write_text(
            f"deb [signed-by={keyring}] {source_url} test main\n"
        )
        conf = [
            f'Dir::Etc "{home}/etc/";',
            f'Dir::State "{home}/state/";',
            f'Dir::State::status "{home}/state/status";',
            f'Dir::Cache "{home}/cache/";',
            f'Dir::Log "{home}/log/";',
            f'APT::Architecture "{arch}";',
            'APT::Sandbox::User "root";',
            'Acquire::Retries "0";',
            'Acquire::http::Timeout "20";',
            'Acquire::Languages "none";',
            f'Acquire::http::Proxy "{proxy}";' if proxy else 'Acquire::http::Proxy "DIRECT";',
        ]
        self.config = home / "apt.conf"
        self.config.write_text("\n".join(conf) + "\n")

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env["APT_CONFIG"] = str(self.config)
        env["DEBIAN_FRONTEND"] = "noninteractive"
        return subprocess.run(
            [*self.prefix, "apt-get", "-q", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def update(self) -> subprocess.CompletedProcess[str]:
        return self.run("update")

    def download(self, *packages: str) -> subprocess.CompletedProcess[str]:
        return self.run("install", "--download-only", "-y", *packages)

    @property
    def archives(self) -> dict[str, bytes]:
        """Package name -> .deb bytes downloaded so far."""
        return {
            p.name.split("_")[0]: p.read_bytes()
            for p in (self.home / "cache/archives").glob("*.deb")
        }
