"""The status page (`/` for browsers), its JSON twin (`/api/status`) and the scrape-time
metrics, all read from one `Source` (figures and read-only state, never the parts).

- `sources`: the `Source` and `Jobs` protocols the appliance provides;
- `document`: the `/api/status` document's parts, typed;
- `snapshot`: one process's document; `inventory`: its images, read from disk;
- `scrape`: the metric families read at scrape time (declared in `appliance.families`);
- `page`: the HTML page, from the typed document, through `sections` (one per card),
  `tables` (columns, layout, formatters) and `chart` (the history as SVG).

The names below are what the rest of the appliance uses.
"""

from appliance.web.status.document import StatusDoc
from appliance.web.status.inventory import Inventory
from appliance.web.status.page import render_main, render_page
from appliance.web.status.scrape import scrape
from appliance.web.status.snapshot import BUSIEST, SHARED_OPERATIONS, hit_ratio, snapshot
from appliance.web.status.sources import Jobs, Source

__all__ = [
    "BUSIEST",
    "SHARED_OPERATIONS",
    "Inventory",
    "Jobs",
    "Source",
    "StatusDoc",
    "hit_ratio",
    "render_main",
    "render_page",
    "scrape",
    "snapshot",
]
