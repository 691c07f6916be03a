"""Units of one fleet as real appliance processes on a shared object store (a Swift): what
every unit of a test has in common (its upstream, the store's credentials, the fleet key,
the test's directory) said once, so that a fleet test names only what differs per unit."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.components import swift_aio
from tests.conftest import FLEET_KEY, Appliance, StartAppliance
from tests.upstream import Upstream


@dataclass
class Fleet:
    """Starts units of one test's fleet (the `fleet` fixture)."""

    start: StartAppliance
    upstream: Upstream
    tmp_path: Path

    def unit(
        self,
        store: Any,
        bucket: str,
        n: int,
        lease: str = "30s",
        ports: list[int] | None = None,
        fleet_key: bool = True,
        workers: int | str = 1,
        peers: list[str] | None = None,
    ) -> Appliance:
        """Unit `n` of a fleet on `store`'s `bucket`; with `ports` (every unit's), the units
        know each other (`peer_url`, `peers`) and stream a download from the one that
        fetches it. With `fleet_key` the units share a key, as the charm gives them, and
        copy in each other's objects; without it only what a unit can check against
        upstream itself.

        `workers` is 1 unless a test asks for the default (`auto`, as the trust tests do):
        the fleet tests count peer streams, uploads and store hits per unit, and a unit of
        one process is what makes "one upstream GET, one peer stream per answer" exact
        (with two workers a unit's own sibling may be the holder streamed from)."""
        cache = self.cache_dir(n)
        config: dict[str, Any] = {
            "type": "s3",
            "endpoint": store.endpoint,
            "bucket": bucket,
            "region": swift_aio.REGION,
            "credentials_file": str(self._credentials()),
            "prefix": "fleet/",
            "lease": lease,
        }
        if fleet_key:
            key_file = self.tmp_path / "fleet-key"
            key_file.write_bytes(FLEET_KEY)
            key_file.chmod(0o600)
            config["fleet_key_file"] = str(key_file)
        if ports:
            urls = [f"http://127.0.0.1:{p}" for p in ports]
            config |= {"peer_url": urls[n], "peers": urls[:n] + urls[n + 1 :]}
        if peers:
            config["peers"] = [*config.get("peers", []), *peers]
        return self.start(
            {"debian": [f"{self.upstream.url}/debian"]},
            cache_dir=cache,
            extra={
                "cache": {"dir": str(cache), "max_size": "1GiB", "store": config},
                "workers": workers,
            },
            port=ports[n] if ports else None,
        )

    def cache_dir(self, n: int) -> Path:
        """Unit `n`'s cache directory."""
        return self.tmp_path / f"unit-{n}"

    def _credentials(self) -> Path:
        path = self.tmp_path / "store-credentials"
        path.write_text(
            f"[default]\naws_access_key_id = {swift_aio.ACCESS_KEY}\n"
            f"aws_secret_access_key = {swift_aio.SECRET_KEY}\n"
        )
        path.chmod(0o600)
        return path


def healthz(app: Appliance) -> tuple[int, dict]:
    """/healthz of a unit: its status code and document, whatever the code."""
    try:
        with urllib.request.urlopen(f"{app.url}/healthz", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
