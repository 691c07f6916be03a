"""What every command that touches the cache is built on: the official mirrors, the
egress policy, the fetcher and the engine on the configured store; and the apt index
table with the maintenance runs over it (`verify`, `expire`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

from appliance.apt import mirrors
from appliance.apt.catalog import IndexCatalog
from appliance.cache.egress import EgressPolicy, configured_hosts
from appliance.cache.engine import CacheEngine
from appliance.cache.fetcher import Fetcher
from appliance.cache.store import Store
from appliance.cache.stores import open_store
from appliance.config import Config
from appliance.jobs.maintenance import Maintenance


@dataclass
class Core:
    """What every command that touches the cache needs."""

    config: Config
    egress: EgressPolicy
    fetcher: Fetcher
    engine: CacheEngine
    mirrors: mirrors.Mirrors

    @property
    def store(self) -> Store:
        return self.engine.store


def apt_mirrors(config: Config) -> mirrors.Mirrors:
    """The official mirrors of the remaps' archives and the machine's own apt hosts."""
    apt = config.apt
    return mirrors.load(apt.remaps, apt.mirrors, apt.sources)


def upstream_rule(
    config: Config, official: mirrors.Mirrors, extra_urls: Iterable[str] = ()
) -> tuple[Callable[[str], bool], Callable[[str], bool]]:
    """Whether the appliance may connect to a host[:port] (configured, or an official
    mirror), and whether a host may resolve to public addresses only (one that only a
    mirror list names: not the operator's choice)."""
    hosts = configured_hosts(config, extra_urls)
    return (
        lambda target: target in hosts or official.accepts_host(target),
        lambda host: host not in hosts and official.listed_only(host),
    )


@contextlib.asynccontextmanager
async def core(
    config: Config,
    *,
    extra_urls: Iterable[str] = (),
    own_port_allowed: bool = False,
    worker: int | None = None,
) -> AsyncIterator[Core]:
    """The engine on the configured store, fetching only from configured hosts (and
    `extra_urls`: an ad hoc feed). `own_port_allowed`: `query` reads this appliance.
    `worker`: this process's index among `workers: N`."""
    own = () if own_port_allowed else (config.listen.port,)
    official = await asyncio.to_thread(apt_mirrors, config)
    allowed, public_only = upstream_rule(config, official, extra_urls)
    egress = EgressPolicy(allowed, own_ports=own, public_only=public_only)
    async with contextlib.AsyncExitStack() as stack:
        fetcher = Fetcher.from_config(config.upstream, egress)
        stack.push_async_callback(fetcher.close)
        engine = CacheEngine(
            open_store(config.cache, worker),
            fetcher,
            max_size=config.cache.max_size,
            ttl=config.apt.index_ttl,
            min_free=config.cache.min_free,
        )
        stack.push_async_callback(engine.close)
        yield Core(config, egress, fetcher, engine, official)


@contextlib.asynccontextmanager
async def index_catalog(base: Core) -> AsyncIterator[IndexCatalog]:
    """The apt index table (what the cached indexes list), the engine learning
    expectations from it; closed on exit. The one place it is built."""
    catalog = IndexCatalog(base.config.cache.dir, base.store)
    base.engine.rules.append(catalog)
    try:
        yield catalog
    finally:
        await asyncio.to_thread(catalog.close)


@contextlib.asynccontextmanager
async def maintenance(config: Config) -> AsyncIterator[Maintenance]:
    """Verify and expiry on a cache directory no service holds (the command line)."""
    async with core(config) as base, index_catalog(base) as catalog:
        yield Maintenance(base.engine, catalog)
