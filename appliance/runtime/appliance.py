"""The running service as a record of its parts, each built once by `assemble`.

`runtime.serving` assembles it and owns its lifetime; the HTTP handler
(`web.app.Handler`) reads it through `web.app.Parts`; the status page and metrics read
`source` (a `StatusView`), the admin API calls `actions` (an `AdminView`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from appliance.apt.catalog import IndexCatalog
from appliance.apt.routing import Router
from appliance.cache.egress import EgressPolicy
from appliance.cache.engine import CacheEngine
from appliance.cache.statedir import StateDir
from appliance.cache.store import Store
from appliance.config import Config
from appliance.discovery.wellknown import WellKnown
from appliance.jobs.maintenance import Maintenance
from appliance.jobs.scheduler import Scheduler
from appliance.metrics import Metrics
from appliance.runtime.core import Core
from appliance.runtime.health import Health
from appliance.runtime.history import History
from appliance.runtime.views import AdminView, StatusView
from appliance.streams.serve import ImageRoutes
from appliance.web import holdings, status
from appliance.web.accesslog import AccessLog, Tally, logger_class
from appliance.web.admin import Admin
from appliance.web.app import SERVER_LIMITS, Handler
from appliance.web.clients import Clients
from appliance.web.events import Events
from appliance.web.hotpath import HotPath
from appliance.web.peers import PeerStreams
from appliance.web.server import Server
from appliance.web.tls import Certificates
from appliance.web.workers import Workers


@dataclass(eq=False)
class Appliance:
    """The running service's parts. `config` and `router` are replaced whole by a
    reload (`AdminView.reload`); the rest live as long as the service."""

    core: Core  # the engine on the store, its fetcher and egress policy
    config_path: Path | None  # what a reload reads (None: the embedded default)
    config: Config
    router: Router
    catalog: IndexCatalog  # what the cached apt indexes list
    metrics: Metrics
    access_log: AccessLog
    events: Events  # the status page's recent warnings, errors and refusals
    clients: Clients  # who uses the cache, over the last 24 hours
    admin: Admin
    images: ImageRoutes
    scheduler: Scheduler  # syncs and seeds (started on the primary only)
    maintenance: Maintenance  # verify and expiry runs, and their last results
    inventory: status.Inventory
    holdings: holdings.Holdings  # what is cached, and this process's hits
    discovery: WellKnown  # the well-known document's remembered inputs
    health: Health  # /healthz and draining
    history: History  # the charts' history file
    tls: Certificates | None  # the HTTPS listener's, when `tls` is set
    workers: Workers | None  # the sibling processes of `workers: N`, else None
    peer_streams: PeerStreams | None  # how this process reaches the others' downloads
    source: StatusView = field(init=False)
    actions: AdminView = field(init=False)
    server: Server = field(init=False)  # the listening side: the handler, the caps

    def __post_init__(self) -> None:
        self.source = StatusView(self)
        self.actions = AdminView(self)
        tally = Tally(self.metrics, self.access_log, self.events, self.clients)
        self.server = Server(
            Handler(self).handle,
            connections_per_client=self.config.limits.connections_per_client,
            hot=HotPath(self, tally),
            access_log=logging.getLogger("appliance.access"),
            access_log_class=logger_class(tally),
            **SERVER_LIMITS,
        )
        self.core.fetcher.monitor = self.metrics.upstream
        if self.config.metrics:
            self.metrics.add_source(lambda: status.scrape(self.source))

    @property
    def engine(self) -> CacheEngine:
        return self.core.engine

    @property
    def egress(self) -> EgressPolicy:
        return self.core.egress

    @property
    def store(self) -> Store:
        return self.core.store


def assemble(
    base: Core,
    catalog: IndexCatalog,
    config_path: Path | None,
    worker: int | None,
    tls: Certificates | None,
) -> Appliance:
    """Every part, from the configuration `base` was built with. `worker`: this
    process's index among `workers: N` (its siblings' sockets, its history file). The
    engine is not told of the siblings and peers yet: `serving` does, once it started."""
    config, engine = base.config, base.engine
    metrics = Metrics(enabled=config.metrics)
    state = StateDir(config.cache.dir)
    siblings = None
    if worker is not None:
        siblings = Workers(worker, [state.worker_socket(i) for i in range(config.workers)])
    streams = None
    if siblings is not None or config.cache.store is not None:
        # the configured peers are read at each use: a reload replaces `app.config`
        streams = PeerStreams(siblings, lambda: _peers(app.config), config.upstream.read_timeout)
    app = Appliance(
        core=base,
        config_path=config_path,
        config=config,
        router=Router(config.apt.remaps, config.apt.allow, base.mirrors),
        catalog=catalog,
        metrics=metrics,
        access_log=AccessLog(config.logging.access_log, config.logging.access_log_format),
        events=Events(),
        clients=Clients(),
        admin=Admin(config.admin),
        images=ImageRoutes(engine),
        scheduler=Scheduler(config, engine, base.fetcher),
        maintenance=Maintenance(engine, catalog),
        inventory=status.Inventory(),
        holdings=holdings.Holdings(),
        discovery=WellKnown(base.store),
        health=Health(engine),
        history=History(metrics, state.history(worker)),
        tls=tls,
        workers=siblings,
        peer_streams=streams,
    )
    return app


def _peers(config: Config) -> tuple[str, ...]:
    return config.cache.store.peers if config.cache.store is not None else ()
