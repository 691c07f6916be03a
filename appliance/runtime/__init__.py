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

from appliance.runtime.appliance import Appliance
from appliance.runtime.core import (
    Core,
    apt_mirrors,
    core,
    index_catalog,
    maintenance,
    sweep_cache,
    sweep_dead_worker,
    upstream_rule,
)
from appliance.runtime.service import Sockets, serving

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
