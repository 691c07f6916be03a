"""The seed job: seed the targets, record what each holds as image-ids, republish the
curated feed. Under its own lock, so a sync may run meanwhile (a file it prunes stays
readable while a seed has it open)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from appliance.cache.engine import CacheEngine
from appliance.config import Config, TargetConfig
from appliance.jobs.lock import SEED, exclusive
from appliance.streams.curated import publish_curated
from appliance.streams.gpg import SignatureError, Signer
from appliance.streams.model import timestamp
from appliance.targets import imageids
from appliance.targets.seeder import Report, Seeder, TargetOutcome

log = logging.getLogger(__name__)


async def seed_targets(
    config: Config,
    engine: CacheEngine,
    targets: Sequence[TargetConfig] | None = None,
    report: Report | None = None,
    dry_run: bool = False,
    wait: bool = True,
) -> list[TargetOutcome]:
    targets = config.seed.targets if targets is None else targets
    async with exclusive(config.cache.dir, SEED, wait=wait):
        outcomes = await Seeder(engine.store, report).seed(targets, dry_run=dry_run)
        if dry_run:
            return outcomes
        now = timestamp()
        changed = False
        for o in outcomes:
            if o.complete:  # a target that could not be listed keeps its last image-ids
                await imageids.store_image_ids(
                    engine, o.target, imageids.build(o.target, o.images, now)
                )
                changed = True
        if changed:
            try:
                await publish_curated(engine, await Signer.open(config.images.gnupg_home))
            except (OSError, SignatureError) as exc:
                log.warning("image-ids not published: %s", exc)
                for o in outcomes:
                    o.ok = False
                    o.error = o.error or f"image-ids not published: {exc}"
    for o in outcomes:
        level = logging.INFO if o.ok else logging.WARNING
        log.log(level, "seed %s: %s%s", o.target, o.summary(), "" if o.ok else f" ({o.error})")
    return outcomes
