"""Seed every configured target: plan, upload, mark, prune, then publish image-ids.

Targets run one after another and each failure stays inside its target: wrong
credentials for one cloud never stop the others. Error messages pass through
`redact` so that no secret reaches a log or the status page.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from appliance.cache.store import Store
from appliance.config import ConfigError, Ec2TargetConfig, GlanceTargetConfig, TargetConfig
from appliance.targets.catalog import CatalogError, SeedImage, newest_versions, wanted
from appliance.targets.plan import Cloud, CloudImage, Plan, make_plan

log = logging.getLogger(__name__)


class ActionKind(StrEnum):
    """What a seed did in one region (the dry run's two say what it would do)."""

    UPLOADED = "uploaded"
    PRESENT = "present"
    REMOVED = "removed"
    CLEANED = "cleaned"
    FAILED = "failed"
    WOULD_UPLOAD = "would-upload"
    WOULD_REMOVE = "would-remove"


@dataclass
class Action:
    target: str
    region: str
    action: ActionKind
    name: str
    product: str = ""
    version: str = ""
    item: str = ""
    image_id: str = ""
    size: int = 0
    error: str | None = None


@dataclass
class TargetOutcome:
    target: str
    type: str
    ok: bool = True
    error: str | None = None
    actions: list[Action] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)  # image-ids items
    bytes_uploaded: int = 0
    seconds: float = 0.0
    finished: float = 0.0
    complete: bool = False  # every region was listed: `images` is the whole truth

    def count(self, action: ActionKind) -> int:
        return sum(1 for a in self.actions if a.action == action)

    def summary(self, dry_run: bool = False) -> str:
        """The count of each kind of action the run takes ("would upload 2, ..." for a
        dry run), as the log and `archive-local seed` say it."""
        kinds = [k for k in ActionKind if k.startswith("would-") == dry_run]
        return ", ".join(f"{k.replace('-', ' ')} {self.count(k)}" for k in kinds)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RegionPlanned:
    target: str
    region: str
    plan: Plan


@dataclass(frozen=True)
class UploadStarted:
    target: str
    region: str
    name: str
    size: int


@dataclass(frozen=True)
class BytesSent:
    """Bytes of the current upload sent (from the uploading thread)."""

    count: int


@dataclass(frozen=True)
class ActionDone:
    action: Action


@dataclass(frozen=True)
class TargetDone:
    outcome: TargetOutcome


SeedEvent = RegionPlanned | UploadStarted | BytesSent | ActionDone | TargetDone
Report = Callable[[SeedEvent], None]


def secrets_of(target: TargetConfig) -> list[str]:
    """Every secret value a target uses, to scrub them from messages."""
    found = []
    for secret in (getattr(target, "token", None), getattr(target, "password", None)):
        try:
            if secret is not None:
                found.append(secret.read())
        except ConfigError:
            pass
    if isinstance(target, Ec2TargetConfig):
        from appliance.targets.ec2 import read_credentials

        try:
            creds = read_credentials(target)
            found += [creds.secret_key, creds.access_key]
        except (ConfigError, OSError):
            pass
    return [s for s in found if s]


def redact(message: str, secrets: Sequence[str]) -> str:
    for s in secrets:
        message = message.replace(s, "***")
    return message


def clouds_for(target: TargetConfig) -> list[Cloud]:
    if isinstance(target, GlanceTargetConfig):
        from appliance.targets.glance import GlanceCloud

        return [GlanceCloud(target)]
    if isinstance(target, Ec2TargetConfig):
        from appliance.targets.ec2 import Ec2Cloud

        return [Ec2Cloud(target, region) for region in target.regions]
    raise ConfigError(f"{target.name}: unknown target type {target.type}")


def describe(exc: BaseException) -> str:
    """A short, human message for the exceptions client libraries raise."""
    name = type(exc).__name__
    text = str(exc).strip() or name
    if name in ("HTTPUnauthorized", "Unauthorized") or "401" in text[:40]:
        return f"authentication failed ({text.splitlines()[0][:200]})"
    return text.splitlines()[0][:300] if text else name


class Seeder:
    def __init__(
        self,
        store: Store,
        report: Report | None = None,
        cloud_factory: Callable[[TargetConfig], list[Cloud]] = clouds_for,
    ) -> None:
        self.store = store
        self.report: Report = report or (lambda _event: None)
        self.cloud_factory = cloud_factory

    async def seed(
        self, targets: Sequence[TargetConfig], dry_run: bool = False
    ) -> list[TargetOutcome]:
        outcomes = []
        for target in targets:
            outcomes.append(await self.seed_target(target, dry_run))
        return outcomes

    async def seed_target(self, target: TargetConfig, dry_run: bool = False) -> TargetOutcome:
        started = time.monotonic()
        outcome = TargetOutcome(target.name, target.type)
        secrets = await asyncio.to_thread(secrets_of, target)
        try:
            images = await asyncio.to_thread(wanted, self.store, target)
            clouds = await asyncio.to_thread(self.cloud_factory, target)
            for cloud in clouds:
                await self._seed_region(target, cloud, images, outcome, dry_run, secrets)
            outcome.complete = not dry_run
        except (CatalogError, ConfigError) as exc:
            outcome.ok, outcome.error = False, f"{target.name}: {exc}"
        except Exception as exc:  # client libraries raise many kinds; keep other targets going
            outcome.ok = False
            outcome.error = f"{target.name}: {redact(describe(exc), secrets)}"
        failed = outcome.count(ActionKind.FAILED)
        if outcome.ok and failed:
            outcome.ok, outcome.error = False, f"{target.name}: {failed} image(s) failed"
        outcome.seconds = time.monotonic() - started
        outcome.finished = time.time()
        if outcome.error:
            log.warning("seed %s: %s", target.name, outcome.error)
        self.report(TargetDone(outcome))
        return outcome

    async def _seed_region(
        self,
        target: TargetConfig,
        cloud: Cloud,
        images: list[SeedImage],
        outcome: TargetOutcome,
        dry_run: bool,
        secrets: Sequence[str] = (),
    ) -> None:
        existing = await asyncio.to_thread(cloud.list_images)
        plan = make_plan(images, existing)
        self.report(RegionPlanned(target.name, cloud.region, plan))

        def act(
            kind: ActionKind, name: str, image: SeedImage | CloudImage | None = None, **kw: Any
        ) -> Action:
            if kw.get("error"):
                kw["error"] = redact(kw["error"], secrets)
            a = Action(target.name, cloud.region, kind, name, **kw)
            if isinstance(image, SeedImage):
                a.product, a.version, a.item, a.size = (*image.identity, image.size)
            elif image is not None:
                a.image_id, a.size = image.id, image.size or 0
                if image.identity:
                    a.product, a.version, a.item = image.identity
            outcome.actions.append(a)
            self.report(ActionDone(a))
            return a

        if dry_run:
            for image in plan.upload:
                act(ActionKind.WOULD_UPLOAD, image.image_name(target.name_prefix), image)
            for c in plan.broken + plan.remove:
                act(ActionKind.WOULD_REMOVE, c.name, c)
            return
        for c in plan.broken:
            await asyncio.to_thread(cloud.delete, c)
            act(ActionKind.CLEANED, c.name, c)
        for name in await asyncio.to_thread(cloud.cleanup, [r for _, r in plan.present]):
            act(ActionKind.CLEANED, name)  # side objects (bundle parts, snapshots) of killed runs
        present: list[tuple[SeedImage, CloudImage]] = list(plan.present)
        for image in plan.upload:
            name = image.image_name(target.name_prefix)
            self.report(UploadStarted(target.name, cloud.region, name, image.size))
            try:
                record = await asyncio.to_thread(
                    cloud.upload, image, lambda n: self.report(BytesSent(n))
                )
            except Exception as exc:
                act(ActionKind.FAILED, name, image, error=describe(exc))
                continue
            outcome.bytes_uploaded += image.size
            present.append((image, record))
            act(ActionKind.UPLOADED, name, image, image_id=record.id)
        for image, record in plan.present:
            act(ActionKind.PRESENT, record.name, image, image_id=record.id)
        if target.set_latest:
            newest = newest_versions([i for i, _ in present])
            for image, record in present:
                flag = (image.product, image.version) in newest
                if record.own and record.latest != flag:
                    await asyncio.to_thread(cloud.set_latest, record, flag)
        # prune last: a product never goes without an image while its new version uploads
        held = {i.identity for i, _ in present}
        wanted_ids = {i.identity for i in images}
        for c in plan.remove:
            if c.identity in wanted_ids and c.identity not in held:
                continue  # its replacement failed: keep the old bytes until the next run
            await asyncio.to_thread(cloud.delete, c)
            act(ActionKind.REMOVED, c.name, c)
        outcome.images += [image_ids_item(cloud, image, record) for image, record in present]


def image_ids_item(cloud: Cloud, image: SeedImage, record: CloudImage) -> dict[str, Any]:
    """One `image-ids` item, as sstream-mirror-glance writes them (plus Juju's fields)."""
    item = {
        "product_name": image.product,
        "version_name": image.version,
        "item_name": image.item,
        "id": record.id,
        "name": record.name,
        "region": cloud.region,
        "endpoint": cloud.endpoint,
        "size": image.size,
        "ftype": image.props.get("ftype", ""),
        **{k: v for k, v in record.extra.items() if not k.startswith("_") and v},
    }
    for key in ("md5", "sha256", "arch", "os", "release", "version", "release_title"):
        if key in image.props:
            item[key] = image.props[key]
    return item
