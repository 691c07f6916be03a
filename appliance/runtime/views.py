"""The narrow views of the running appliance: what the status page reads
(`web.status.Source`) and what the admin API may do (`web.admin.Actions`). Each holds
the `Appliance` record and reads its parts at each call: a reload replaces some whole."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from appliance import config as configuration
from appliance.apt.routing import Router
from appliance.cache.engine import Figures
from appliance.cache.keys import UpstreamBase
from appliance.cache.store import Store
from appliance.metrics import Metrics
from appliance.runtime.core import apt_mirrors, upstream_rule
from appliance.web import holdings, status
from appliance.web.admin import ReloadError
from appliance.web.tls import TlsError

if TYPE_CHECKING:
    from appliance.runtime.appliance import Appliance

log = logging.getLogger(__name__)


class StatusView:
    """`status.Source`: figures and read-only state, never the parts themselves."""

    def __init__(self, app: Appliance) -> None:
        self._app = app

    @property
    def metrics(self) -> Metrics:
        return self._app.metrics

    @property
    def jobs(self) -> status.Jobs:
        return self._app.scheduler

    @property
    def store(self) -> Store:
        return self._app.store

    def cache_figures(self) -> Figures:
        return self._app.engine.figures()

    def client_figures(self, n: int) -> list[dict[str, Any]]:
        return self._app.clients.figures(n)

    def recent_events(self) -> list[dict[str, Any]]:
        return self._app.events.recent()

    async def cached(self) -> dict[str, Any]:
        """What the cache holds per remap, suite and feed (`holdings`): looked at again
        when the size cap's count, the apt index table or the mirrored images moved."""
        app = self._app
        lru, catalog = app.engine.lru, app.catalog  # lru: siblings' files included
        remaps = app.config.apt.remaps
        prefixes = holdings.remap_prefixes(
            {n: UpstreamBase.parse(urls[0]).key() for n, urls in remaps.items()}
        )
        table = catalog.path.with_name(catalog.path.name + "-wal")
        try:
            written = table.stat().st_mtime_ns  # another worker's parse moves it too
        except OSError:
            written = None
        last_run = app.scheduler.last_run
        generation = (len(lru), lru.total, last_run, catalog.parsed, written, tuple(prefixes))
        store, listing = app.store, catalog.listed_by
        return await app.holdings.get(
            generation, lambda: holdings.compute(store, listing, prefixes)
        )

    def usage(self) -> dict[str, Any]:
        """What a client is told to configure; `web.use` writes the lines for the host
        the asker used."""
        config, router = self._app.config, self._app.router
        return {
            "port": config.listen.port,
            "name": config.discovery.name,
            "tls_port": config.tls.listen.port if config.tls is not None else None,
            "remaps": {name: list(config.apt.remaps[name]) for name in router.remap_names},
            "feeds": [feed.name for feed in config.images.feeds],
            "accepted": router.accepted(),
        }

    def integrity(self) -> dict[str, Any]:
        app = self._app
        return {
            "connections_refused": app.server.refused,
            "apt_indexes": app.catalog.stats(),
            "last_verify": app.maintenance.last_verify,
            "last_expiry": app.maintenance.last_expiry,
        }


class AdminView:
    """`admin.Actions`: the jobs, removals, maintenance runs, drain and reload."""

    def __init__(self, app: Appliance) -> None:
        self._app = app

    def sync(self) -> bool:
        return self._app.scheduler.trigger()

    def seed(self) -> bool | None:
        if not self._app.config.seed.targets:
            return None
        return self._app.scheduler.trigger_seed()

    async def purge_remap(self, name: str) -> int | None:
        mirrors = self._app.config.apt.remaps.get(name)
        if not mirrors:
            return None
        engine = self._app.engine
        return sum([await engine.purge(UpstreamBase.parse(u).key()) for u in mirrors])

    async def purge(self, path: str) -> int:
        route = self._app.router.route(path)
        engine = self._app.engine
        if await engine.lookup(route.key) is None:
            return 0
        await engine.remove(route.key)
        return 1

    def maintenance_busy(self) -> bool:
        return self._app.maintenance.busy()

    async def expire(self, dry_run: bool) -> dict[str, Any]:
        grace = self._app.config.cache.expire_after
        return await self._app.maintenance.expire(grace, dry_run)

    async def verify(self, fix: bool) -> dict[str, Any]:
        return await self._app.maintenance.verify(fix)

    def drain(self, on: bool) -> dict[str, Any]:
        return self._app.health.drain(on)

    async def reload(self) -> dict[str, Any]:
        """Re-read the configuration file and hand it to every part that uses it; what
        cannot change while running is reported. ReloadError: nothing changed."""
        app = self._app
        if app.config_path is None:
            raise ReloadError("running on the embedded default configuration", conflict=True)
        try:
            new = await asyncio.to_thread(configuration.load, app.config_path)
        except configuration.ConfigError as exc:
            raise ReloadError(f"{exc} (nothing changed)") from None
        restart = configuration.restart_needed(app.config, new)
        official = await asyncio.to_thread(apt_mirrors, new)
        app.config = new
        app.router = Router(new.apt.remaps, new.apt.allow, official)
        app.egress.allow(*upstream_rule(new, official))
        app.engine.apply(new)
        app.server.cap = new.limits.connections_per_client
        app.scheduler.apply(new)
        app.admin.configure(new.admin)
        app.inventory.invalidate()
        app.discovery.invalidate()
        done: dict[str, Any] = {"reloaded": str(app.config_path), "restart_needed_for": restart}
        if app.tls is not None and new.tls is not None:
            try:  # an operator's renewed certificate: new handshakes get it
                await asyncio.to_thread(app.tls.load, new)
            except TlsError as exc:
                log.warning("reload: %s (the certificate in use stays)", exc)
                done["tls_error"] = str(exc)
        log.info("configuration reloaded from %s", app.config_path)
        return done
