"""OpenStack Glance through python-glanceclient, with sstream-mirror-glance's properties.

Properties go in at `create`, so an interrupted upload leaves an image that the
next run recognises as ours and deletes. Bytes stream from the cache file straight
into the upload; Glance's reported size and checksum are checked afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

from appliance.config import GlanceTargetConfig
from appliance.targets.catalog import SeedImage
from appliance.targets.plan import CloudImage, SeedError

log = logging.getLogger(__name__)

OWNER_PROPERTY = "archive_local_target"  # marks images this target created
IDENTITY = ("product_name", "version_name", "item_name", "source_content_id")


class CountingReader:
    """A file wrapper that reports progress (and hashes when the feed gave no md5)."""

    def __init__(self, f: BinaryIO, progress: Callable[[int], None], md5: bool) -> None:
        self.f = f
        self.progress = progress
        self.md5 = hashlib.md5() if md5 else None
        self.sent = 0

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        if data:
            self.sent += len(data)
            if self.md5 is not None:
                self.md5.update(data)
            self.progress(len(data))
        return data


def glance_client(target: GlanceTargetConfig) -> Any:
    """A v2 client: fixed token + endpoint, or a keystone v3 session (password or app cred)."""
    from glanceclient import Client
    from keystoneauth1 import session as ks_session

    if target.token is not None:
        endpoint = target.endpoint or ""
        if not re.search(r"/v\d+(\.\d+)?/?$", endpoint):
            endpoint = endpoint.rstrip("/") + "/v2"  # the API version goes in the URL
        return Client(endpoint=endpoint, token=target.token.read())
    from keystoneauth1.identity import v3

    ks = dict(target.keystone)
    secret = target.password.read() if target.password else ""
    if "application_credential_id" in ks or "application_credential_name" in ks:
        auth = v3.ApplicationCredential(
            auth_url=ks["auth_url"],
            application_credential_id=ks.get("application_credential_id"),
            application_credential_name=ks.get("application_credential_name"),
            application_credential_secret=secret,
            username=ks.get("username"),
            user_domain_name=ks.get("user_domain_name"),
        )
    else:
        auth = v3.Password(
            auth_url=ks["auth_url"],
            username=ks.get("username"),
            user_id=ks.get("user_id"),
            password=secret,
            project_name=ks.get("project_name"),
            project_id=ks.get("project_id"),
            user_domain_name=ks.get("user_domain_name", "Default"),
            project_domain_name=ks.get("project_domain_name", "Default"),
        )
    session = ks_session.Session(auth=auth)
    return Client(
        "2",
        session=session,
        endpoint=target.endpoint,
        region_name=target.region,
        interface=target.interface,
    )


class GlanceCloud:
    """One Glance region of one target."""

    def __init__(self, target: GlanceTargetConfig, client: Any | None = None) -> None:
        self.target = target
        self.client = client if client is not None else glance_client(target)
        self.region = target.region
        self.endpoint = (
            target.cloud_endpoint or target.keystone.get("auth_url") or target.endpoint or ""
        )

    def properties(self, image: SeedImage, latest: bool = False) -> dict[str, str]:
        props = {
            **self.target.properties,
            "content_id": self.target.content_id,
            "source_content_id": image.source_content_id,
            "product_name": image.product,
            "version_name": image.version,
            "item_name": image.item,
            "architecture": image.arch,
            "simplestreams_metadata": image.metadata_json(),
            OWNER_PROPERTY: self.target.name,
        }
        if "os" in image.props:
            props["os_distro"] = image.props["os"]
        if "version" in image.props:
            props["os_version"] = image.props["version"]
        if latest:
            props["latest"] = "true"
        return props

    def list_images(self) -> list[CloudImage]:
        found = []
        for img in self.client.images.list(filters={"content_id": self.target.content_id}):
            found.append(self._record(img))
        return found

    def _record(self, img: Any) -> CloudImage:
        get = img.get if hasattr(img, "get") else lambda k, d=None: getattr(img, k, d)
        own = get(OWNER_PROPERTY) == self.target.name
        complete = all(get(k) for k in IDENTITY)
        identity = (get("product_name"), get("version_name"), get("item_name"))
        meta: dict[str, Any] = {}
        with contextlib.suppress(ValueError):
            meta = json.loads(get("simplestreams_metadata") or "{}")
        return CloudImage(
            id=get("id"),
            name=get("name") or "",
            region=self.region,
            identity=identity if complete else None,
            ready=get("status") == "active",
            own=own,
            md5=get("checksum"),
            sha256=meta.get("sha256"),
            latest=get("latest") == "true",
            size=get("size"),
            extra={"ftype": meta.get("ftype")} if meta.get("ftype") else {},
        )

    def upload(self, image: SeedImage, progress: Callable[[int], None]) -> CloudImage:
        disk_format = self.target.disk_format or image.disk_format
        created = self.client.images.create(
            name=image.image_name(self.target.name_prefix),
            disk_format=disk_format,
            container_format="bare",
            visibility=self.target.visibility,
            **self.properties(image),
        )
        try:
            with image.open() as f:
                reader = CountingReader(f, progress, md5=not image.md5)
                self.client.images.upload(created["id"], reader, image_size=image.size)
            got = self.client.images.get(created["id"])
            expected_md5 = image.md5 or (reader.md5.hexdigest() if reader.md5 else None)
            if got.get("status") != "active":
                raise SeedError(f"image {created['id']} is {got.get('status')} after upload")
            if got.get("size") != image.size or reader.sent != image.size:
                raise SeedError(
                    f"size mismatch: sent {reader.sent}, Glance has {got.get('size')}, "
                    f"feed says {image.size}"
                )
            if expected_md5 and got.get("checksum") != expected_md5:
                raise SeedError(
                    f"checksum mismatch: Glance has {got.get('checksum')}, expected {expected_md5}"
                )
        except BaseException:
            self._delete_quietly(created["id"])
            raise
        return self._record(got)

    def _delete_quietly(self, image_id: str) -> None:
        try:
            self.client.images.delete(image_id)
        except Exception as exc:  # the next run deletes it (our marker is on it)
            log.warning("%s: could not delete failed image %s: %s", self.target.name, image_id, exc)

    def delete(self, image: CloudImage) -> None:
        self.client.images.delete(image.id)

    def set_latest(self, image: CloudImage, latest: bool) -> None:
        if latest:
            self.client.images.update(image.id, latest="true")
        else:
            self.client.images.update(image.id, remove_props=["latest"])
        image.latest = latest

    def cleanup(self, images: Sequence[CloudImage]) -> list[str]:
        return []  # Glance keeps no side objects; broken images are in the plan
