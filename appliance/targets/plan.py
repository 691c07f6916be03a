"""What to change in one cloud region: a pure diff of wanted images against present ones.

Identity is (product, version, item) plus the checksum, never the name. Images a
target did not create (`own` false: another tool's, or adopted from
sstream-mirror-glance with the same properties) count as present but are never
deleted or re-marked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from appliance.targets.catalog import SeedImage


class SeedError(RuntimeError):
    """A cloud did not do what was asked; the message is safe to show (no secrets)."""


@dataclass
class CloudImage:
    """An image as the cloud reports it."""

    id: str
    name: str
    region: str
    identity: tuple[str, str, str] | None  # None: our marker but incomplete (interrupted)
    ready: bool  # Glance `active`, EC2 `available`
    own: bool  # created by this target: ours to prune
    md5: str | None = None
    sha256: str | None = None
    latest: bool = False
    size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # image-ids fields (virt, root_store)

    def same_bytes(self, image: SeedImage) -> bool:
        if self.sha256 and image.sha256:
            return self.sha256 == image.sha256
        if self.md5 and image.md5:
            return self.md5 == image.md5
        return False


class Cloud(Protocol):
    """One region of one target. Blocking calls; the seeder runs them in threads."""

    region: str
    endpoint: str

    def list_images(self) -> list[CloudImage]: ...
    def upload(self, image: SeedImage, progress: Any) -> CloudImage: ...
    def delete(self, image: CloudImage) -> None: ...
    def set_latest(self, image: CloudImage, latest: bool) -> None: ...
    def cleanup(self, images: Sequence[CloudImage]) -> list[str]: ...


@dataclass
class Plan:
    upload: list[SeedImage] = field(default_factory=list)
    present: list[tuple[SeedImage, CloudImage]] = field(default_factory=list)
    broken: list[CloudImage] = field(default_factory=list)  # interrupted uploads: delete first
    remove: list[CloudImage] = field(default_factory=list)  # beyond max_items or replaced


def make_plan(wanted: Sequence[SeedImage], existing: Sequence[CloudImage]) -> Plan:
    plan = Plan()
    ready = [c for c in existing if c.ready and c.identity is not None]
    plan.broken = [c for c in existing if c.own and c not in ready]
    matched: set[str] = set()
    for image in wanted:
        found = next(
            (c for c in ready if c.identity == image.identity and c.same_bytes(image)), None
        )
        if found is None:
            plan.upload.append(image)
        else:
            plan.present.append((image, found))
            matched.add(found.id)
    plan.remove = [c for c in ready if c.own and c.id not in matched]
    return plan
