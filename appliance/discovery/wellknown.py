"""`GET /.well-known/archive-local`: proof that a host found by name, mDNS or SRV is really an
archive-local appliance, and where its services are.

URLs use the host the client asked for (its Host header), so they are reachable the
way the client reached this document.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from appliance import __version__

WELL_KNOWN = "/.well-known/archive-local"
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
