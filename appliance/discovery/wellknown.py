"""`GET /.well-known/archive-local`: proof that a host found by name, mDNS or SRV is really an
archive-local appliance, and where its services are.

URLs use the host the client asked for (its Host header), so they are reachable the
way the client reached this document. What is slow to learn (the signing key's
fingerprint: gpg; the synced feeds: a walk of the store) is read in threads and
remembered by `WellKnown`: a request never runs gpg or walks the store on the event loop.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from appliance import __version__
from appliance.cache.store import Store
from appliance.config import Config
from appliance.streams import layout
from appliance.streams.gpg import SignatureError, Signer

WELL_KNOWN = "/.well-known/archive-local"
FEEDS_TTL = 30.0  # seconds the document's feed list is reused
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$")


def base_url(host_header: str | None, name: str, port: int) -> str:
    host = host_header if host_header and _HOST.match(host_header) else None
    return f"http://{host or f'{name}:{port}'}"


def url_on(scheme: str, host_header: str | None, name: str, port: int) -> str:
    """A listener's base URL on the host the client asked for (whatever port it used)."""
    m = _HOST.match(host_header or "")
    return f"{scheme}://{m.group(1) if m else name}:{port}"


def document(
    base: str,
    remaps: Iterable[str],
    feeds: Iterable[str],
    fingerprint: str | None,
    tls: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The document, from what the appliance serves (no I/O here). `tls`: the HTTPS
    listener's URL and its certificate's sha256 (for LXD's `lxc remote add`)."""
    doc: dict[str, Any] = {
        "service": "archive-local",
        "version": __version__,
        "apt_proxy": f"{base}/",
        "remaps": {name: f"{base}/{name}/" for name in remaps},
        "images": {
            "curated": f"{base}/streams/v1/index.sjson",
            "pass_through": {
                feed: f"{base}/images/{feed}/streams/v1/index.sjson" for feed in feeds
            },
            "keyring": f"{base}/keys/archive-local.gpg",
            "key_fingerprint": fingerprint,
        },
        "status": f"{base}/api/status",
    }
    if tls is not None:
        doc["tls"] = tls
    return doc


class Certificate(NamedTuple):
    """The HTTPS listener's certificate as clients are told of it."""

    sha256: str  # the fingerprint LXD pins
    path: str  # where on the plain port it is served


class WellKnown:
    """The document for each asker, from what was read in threads and remembered."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._fingerprint: str | None = None
        self._key_marker: int | None = -1  # the key folder's mtime at the last look
        self._feeds: tuple[float, list[str]] = (-FEEDS_TTL, [])

    def invalidate(self) -> None:
        """Read again at the next request (a reload: another key or feeds)."""
        self._feeds = (-FEEDS_TTL, [])
        self._key_marker = -1

    async def document(
        self,
        config: Config,
        remaps: Iterable[str],
        host_header: str | None,
        secure: bool = False,
        certificate: Certificate | None = None,
    ) -> dict[str, Any]:
        """`secure`: asked over HTTPS; `certificate`: the HTTPS listener's, when it runs."""
        fingerprint = await self._signing_key(config.images.gnupg_home)
        at, feeds = self._feeds
        if time.monotonic() - at > FEEDS_TTL:
            feeds = await asyncio.to_thread(layout.synced_feeds, self.store)
            self._feeds = (time.monotonic(), feeds)
        name, port = config.discovery.name, config.listen.port
        base = base_url(host_header, name, port)
        tls = None
        if certificate is not None and config.tls is not None:
            https = url_on("https", host_header, name, config.tls.listen.port)
            if secure:  # asked over HTTPS: the plain port's URLs on the same host
                base = url_on("http", host_header, name, port)
            tls = {
                "url": f"{https}/",
                "certificate": f"{base}{certificate.path}",
                "sha256_fingerprint": certificate.sha256,
                "lxd_remote": f"lxc remote add archive-local {https} --protocol simplestreams",
            }
        return document(base, remaps, feeds, fingerprint, tls)

    async def _signing_key(self, home: Path) -> str | None:
        """Read until the key exists (a sync or `keys` makes it): gpg runs only when the
        key folder changed since the last look, not on every request."""
        if not self._fingerprint:
            marker = _key_marker(home)
            if marker != self._key_marker:
                self._key_marker = marker
                self._fingerprint = await asyncio.to_thread(_fingerprint, home)
        return self._fingerprint


def _key_marker(home: Path) -> int | None:
    """When the secret keys of `home` last changed (None: no keys yet)."""
    try:
        return (home / "private-keys-v1.d").stat().st_mtime_ns
    except OSError:
        return None


def _fingerprint(home: Path) -> str | None:
    try:
        return Signer(home).fingerprint
    except (OSError, SignatureError):
        return None
