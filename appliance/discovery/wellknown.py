"""`GET /.well-known/archive-local`: proof that a host found by name, mDNS or SRV is really an
archive-local appliance, and where its services are.

URLs use the host the client asked for (its Host header), so they are reachable the
way the client reached this document.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from appliance import __version__
from appliance.streams.curated import synced_feeds

if TYPE_CHECKING:
    from appliance.web.app import Service

WELL_KNOWN = "/.well-known/archive-local"
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$")


def base_url(service: Service, host_header: str | None) -> str:
    host = host_header if host_header and _HOST.match(host_header) else None
    if host is None:
        host = f"{service.config.discovery.name}:{service.config.listen.port}"
    return f"http://{host}"


def document(service: Service, host_header: str | None, fingerprint: str | None) -> dict[str, Any]:
    base = base_url(service, host_header)
    store = service.engine.store
    return {
        "service": "archive-local",
        "version": __version__,
        "apt_proxy": f"{base}/",
        "remaps": {name: f"{base}/{name}/" for name in service.router.remap_names},
        "images": {
            "curated": f"{base}/streams/v1/index.sjson",
            "pass_through": {
                feed: f"{base}/images/{feed}/streams/v1/index.sjson"
                for feed in synced_feeds(store)  # type: ignore[arg-type]
            },
            "keyring": f"{base}/keys/archive-local.gpg",
            "key_fingerprint": fingerprint,
        },
        "status": f"{base}/api/status",
    }
