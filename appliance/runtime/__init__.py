"""The composition root: the one place that builds the appliance from a `Config`.

`core()` gives every command what it needs to touch the cache (egress policy, fetcher,
engine on the configured store), `maintenance()` the verify and expiry runs on it;
`serving()` builds the whole running service on it and tears it down (`service.py`).
Each resource is entered in order and torn down in reverse by one `AsyncExitStack`, so
nothing a command or the service opens is left open, whatever fails.

The running service is an `Appliance`, a record of its parts (`appliance.py`); the HTTP
handler reads it through `web.app.Parts`, the status page and admin API through narrow
views (`views.py`: `status.Source`, `admin.Actions`). Reload builds a new, immutable
`Config` and hands it to each part that derives something from it (`apply`): nothing
edits another part's fields.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from appliance.runtime.appliance import Appliance
    from appliance.runtime.core import (
        Core,
        apt_mirrors,
        core,
        index_catalog,
        maintenance,
        upstream_rule,
    )
    from appliance.runtime.service import Sockets, serving
    from appliance.runtime.sweeps import sweep_cache, sweep_dead_worker

# each name's module, imported on first use: the master of several workers needs only the
# sweeps, and a worker imports the rest anyway
_WHERE = {
    "Appliance": "appliance",
    "Core": "core",
    "apt_mirrors": "core",
    "core": "core",
    "index_catalog": "core",
    "maintenance": "core",
    "upstream_rule": "core",
    "Sockets": "service",
    "serving": "service",
    "sweep_cache": "sweeps",
    "sweep_dead_worker": "sweeps",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)


__all__ = [
    "Appliance",
    "Core",
    "Sockets",
    "apt_mirrors",
    "core",
    "index_catalog",
    "maintenance",
    "serving",
    "sweep_cache",
    "sweep_dead_worker",
    "upstream_rule",
]
