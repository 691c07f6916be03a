"""Eucalyptus and other EC2-compatible clouds through boto3.

Two routes, chosen per target:
- `bundle`: the instance-store bundle (see bundle.py) uploaded to the bucket, then
  RegisterImage with ImageLocation, as euca-bundle-image / euca-upload-bundle /
  euca-register do;
- `ebs`: the raw disk written block by block through the EBS direct API
  (StartSnapshot / PutSnapshotBlock / CompleteSnapshot; all-zero blocks skipped),
  then RegisterImage with the snapshot as root device.
Every AMI gets the Description `archive-local:<target>` at registration (our marker,
atomic with the image) and tags carrying the identity properties right after; an
AMI with the marker but no identity tags is an interrupted run's leftover.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.config import ConfigError, Ec2TargetConfig
from appliance.targets.bundle import BundleKeys, bundle
from appliance.targets.catalog import SeedImage
from appliance.targets.plan import CloudImage, SeedError

log = logging.getLogger(__name__)

EC2_ARCH = {"amd64": "x86_64", "arm64": "arm64", "i386": "i386"}
EBS_BLOCK = 512 * 1024
TAG_KEYS = ("content_id", "source_content_id", "product_name", "version_name", "item_name")
_NAME_OK = re.compile(r"[^A-Za-z0-9()./_ -]")


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    keys: BundleKeys | None  # for bundles


_ALIASES = {
    "access_key": ("EC2_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY"),
    "secret_key": ("EC2_SECRET_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_SECRET_KEY"),
}


def _parse_rc(path: Path) -> dict[str, str]:
    """A eucarc-style file: `[export] KEY=VALUE` lines, ${EUCA_KEY_DIR} = its directory."""
    values: dict[str, str] = {"EUCA_KEY_DIR": str(path.resolve().parent)}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, raw = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) or key == "EUCA_KEY_DIR":
            continue  # EUCA_KEY_DIR is computed by shell in real eucarcs: it is the file's dir
        try:
            parts = shlex.split(raw)
        except ValueError:
            continue
        value = parts[0] if parts else ""
        value = re.sub(r"\$\{?EUCA_KEY_DIR\}?", values["EUCA_KEY_DIR"], value)
        values[key] = value
    return values


def read_credentials(target: Ec2TargetConfig) -> Credentials:
    if target.credentials_file is not None:
        try:
            values = _parse_rc(target.credentials_file)
        except OSError as exc:
            raise ConfigError(f"{target.credentials_file}: cannot read ({exc.strerror})") from None
        where = str(target.credentials_file)
    else:
        values, where = dict(os.environ), "the environment"
    found = {
        k: next((values[a] for a in names if values.get(a)), "") for k, names in _ALIASES.items()
    }
    if not found["access_key"] or not found["secret_key"]:
        raise ConfigError(f"no EC2 access key / secret key in {where}")
    keys = None
    if all(values.get(k) for k in ("EC2_CERT", "EC2_PRIVATE_KEY", "EUCALYPTUS_CERT")):
        account = values.get("EC2_USER_ID") or values.get("EC2_ACCOUNT_NUMBER") or ""
        base = Path(values["EUCA_KEY_DIR"])
        keys = BundleKeys(
            base / values["EC2_CERT"],  # relative paths: next to the credentials file
            base / values["EC2_PRIVATE_KEY"],
            base / values["EUCALYPTUS_CERT"],
            account,
        )
        for path in (keys.user_cert, keys.user_key, keys.cloud_cert):
            if not path.is_file():
                raise ConfigError(f"{where}: {path} does not exist")
    return Credentials(found["access_key"], found["secret_key"], keys)


class Ec2Cloud:
    """One region of an EC2-compatible target."""

    def __init__(self, target: Ec2TargetConfig, region: str) -> None:
        import boto3
        from botocore.config import Config

        self.target = target
        self.region = region
        self.endpoint = target.ec2_endpoint
        self.marker = f"archive-local:{target.name}"
        self.creds = read_credentials(target)
        if target.method == "bundle" and self.creds.keys is None:
            raise ConfigError(
                "method bundle needs EC2_CERT, EC2_PRIVATE_KEY and EUCALYPTUS_CERT "
                "in the credentials file"
            )
        session = boto3.session.Session(
            aws_access_key_id=self.creds.access_key,
            aws_secret_access_key=self.creds.secret_key,
            region_name=region,
        )
        retries = Config(retries={"max_attempts": 3, "mode": "standard"})
        self.ec2 = session.client("ec2", endpoint_url=target.ec2_endpoint, config=retries)
        self.s3 = session.client(
            "s3",
            endpoint_url=target.s3_endpoint,
            config=retries.merge(Config(s3={"addressing_style": "path"})),
        )
        self.ebs = session.client(
            "ebs", endpoint_url=target.ebs_endpoint or target.ec2_endpoint, config=retries
        )

    # -- listing -------------------------------------------------------------------------

    def _ours_raw(self) -> list[dict[str, Any]]:
        seen: dict[str, dict[str, Any]] = {}
        for filters in (
            [{"Name": "description", "Values": [self.marker]}],
            [{"Name": "tag:content_id", "Values": [self.target.content_id]}],
        ):
            for image in self.ec2.describe_images(Owners=["self"], Filters=filters)["Images"]:
                seen[image["ImageId"]] = image
        return list(seen.values())

    def list_images(self) -> list[CloudImage]:
        return [self._record(i) for i in self._ours_raw()]

    def _record(self, image: dict[str, Any]) -> CloudImage:
        tags = {t["Key"]: t["Value"] for t in image.get("Tags", [])}
        complete = all(tags.get(k) for k in TAG_KEYS)
        return CloudImage(
            id=image["ImageId"],
            name=image.get("Name", ""),
            region=self.region,
            identity=(tags["product_name"], tags["version_name"], tags["item_name"])
            if complete
            else None,
            ready=image.get("State") == "available",
            own=image.get("Description") == self.marker,
            md5=tags.get("md5"),
            sha256=tags.get("sha256"),
            latest=tags.get("latest") == "true",
            size=int(tags["size"]) if tags.get("size", "").isdigit() else None,
            extra={
                "root_store": image.get("RootDeviceType", ""),
                "virt": image.get("VirtualizationType", ""),
                "_location": image.get("ImageLocation") or "",
                "_snapshots": [
                    m["Ebs"]["SnapshotId"]
                    for m in image.get("BlockDeviceMappings", [])
                    if m.get("Ebs", {}).get("SnapshotId")
                ],
            },
        )

    # -- uploading -----------------------------------------------------------------------

    def _tags(self, image: SeedImage) -> list[dict[str, str]]:
        tags = {
            "content_id": self.target.content_id,
            "source_content_id": image.source_content_id,
            "product_name": image.product,
            "version_name": image.version,
            "item_name": image.item,
            "size": str(image.size),
            "archive_local_target": self.target.name,
        }
        for key in ("sha256", "md5", "os", "version", "arch"):
            if image.props.get(key):
                tags[key] = image.props[key]
        return [{"Key": k, "Value": v[:255]} for k, v in tags.items()]

    def _name(self, image: SeedImage) -> str:
        return _NAME_OK.sub("-", image.image_name(self.target.name_prefix))[:128]

    def upload(self, image: SeedImage, progress: Callable[[int], None]) -> CloudImage:
        arch = EC2_ARCH.get(image.props.get("arch", ""), image.arch)
        if self.target.method == "bundle":
            register = self._upload_bundle(image, progress, arch)
        else:
            register = self._upload_ebs(image, progress, arch)
        try:
            image_id = self.ec2.register_image(
                Name=self._name(image), Description=self.marker, Architecture=arch, **register
            )["ImageId"]
        except Exception:
            self._remove_side_objects(register)
            raise
        try:
            self.ec2.create_tags(Resources=[image_id], Tags=self._tags(image))
            [raw] = self.ec2.describe_images(ImageIds=[image_id])["Images"]
            if raw.get("State") not in ("available", "pending"):
                raise SeedError(f"{image_id} is {raw.get('State')} after registration")
        except BaseException:
            self._deregister_quietly(image_id, register)
            raise
        return self._record(raw)

    def _ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.s3.head_bucket(Bucket=self.target.bucket)
            return
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code not in ("404", "NoSuchBucket", "NotFound"):
                # 403 (another account's bucket, or credentials without the right): say
                # so; creating it would fail with a less useful message, or succeed elsewhere
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                raise SeedError(
                    f"bucket {self.target.bucket}: HEAD answered {status or code} "
                    "(forbidden: another account's bucket, or credentials without access?)"
                ) from None
        extra = {}
        if self.region != "us-east-1":
            extra["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        self.s3.create_bucket(Bucket=self.target.bucket, **extra)

    def _prefix(self, image: SeedImage) -> str:
        digest = (image.sha256 or image.md5 or "")[:12]
        return f"{self._root()}{image.image_name('')}-{digest}"

    def _root(self) -> str:
        """Where this target keeps this region's bundles in the (possibly shared) bucket."""
        return f"{self.target.name}/{self.region}/"

    def _upload_bundle(
        self, image: SeedImage, progress: Callable[[int], None], arch: str
    ) -> dict[str, Any]:
        assert self.creds.keys is not None
        self._ensure_bucket()
        prefix = self._prefix(image)
        base = prefix.rsplit("/", 1)[-1]
        bucket = self.target.bucket

        def put_part(name: str, data: bytes) -> None:
            etag = self.s3.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=data)["ETag"]
            if etag.strip('"') != hashlib.md5(data).hexdigest():
                raise SeedError(f"S3 stored other bytes for {name} (ETag {etag})")

        try:
            with image.local_file() as source:
                result = bundle(
                    source,
                    base,
                    self.creds.keys,
                    put_part,
                    arch,
                    self.target.kernel_id,
                    self.target.ramdisk_id,
                    progress,
                )
            key = f"{prefix}/{base}.manifest.xml"
            self.s3.put_object(Bucket=bucket, Key=key, Body=result.manifest)
        except BaseException:
            self._delete_prefix(prefix)
            raise
        register: dict[str, Any] = {
            "ImageLocation": f"{bucket}/{key}",
            "VirtualizationType": self.target.virtualization_type,
            "RootDeviceName": "/dev/sda1",
        }
        if self.target.kernel_id:
            register["KernelId"] = self.target.kernel_id
        if self.target.ramdisk_id:
            register["RamdiskId"] = self.target.ramdisk_id
        return register

    def _upload_ebs(
        self, image: SeedImage, progress: Callable[[int], None], arch: str
    ) -> dict[str, Any]:
        with image.local_file() as source, image.scratch() as tmp:
            raw = raw_disk(source, tmp)
            size = raw.stat().st_size
            gib = max(1, -(-size // (1 << 30)))
            snap = self.ebs.start_snapshot(
                VolumeSize=gib,
                Description=self.marker,
                Tags=[{"Key": "archive_local_target", "Value": self.target.name}],
            )["SnapshotId"]
            try:
                written = self._put_blocks(snap, raw, progress)
                self.ebs.complete_snapshot(SnapshotId=snap, ChangedBlocksCount=written)
                self._wait_snapshot(snap)
            except BaseException:
                self._delete_snapshot_quietly(snap)
                raise
        return {
            "RootDeviceName": "/dev/sda1",
            "VirtualizationType": "hvm",
            "BlockDeviceMappings": [
                {
                    "DeviceName": "/dev/sda1",
                    "Ebs": {"SnapshotId": snap, "DeleteOnTermination": True},
                }
            ],
        }

    def _put_blocks(self, snap: str, raw: Path, progress: Callable[[int], None]) -> int:
        def put(index: int, data: bytes) -> None:
            data = data.ljust(EBS_BLOCK, b"\0")
            checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
            self.ebs.put_snapshot_block(
                SnapshotId=snap,
                BlockIndex=index,
                BlockData=data,
                DataLength=EBS_BLOCK,
                Checksum=checksum,
                ChecksumAlgorithm="SHA256",
            )

        zero = bytes(EBS_BLOCK)
        written = 0
        with open(raw, "rb") as f, ThreadPoolExecutor(8) as pool:
            pending = []
            index = 0
            while data := f.read(EBS_BLOCK):
                if data != zero[: len(data)]:
                    pending.append(pool.submit(put, index, data))
                    written += 1
                progress(len(data))
                index += 1
                if len(pending) >= 16:  # bounded memory: at most 16 blocks in flight
                    pending.pop(0).result()
            for p in pending:
                p.result()
        return written

    def _wait_snapshot(self, snap: str, timeout: float = 3600) -> None:
        deadline = time.monotonic() + timeout
        while True:
            [s] = self.ec2.describe_snapshots(SnapshotIds=[snap])["Snapshots"]
            if s.get("State") == "completed":
                return
            if s.get("State") == "error" or time.monotonic() > deadline:
                raise SeedError(f"snapshot {snap} is {s.get('State')}")
            time.sleep(2)

    # -- removing ------------------------------------------------------------------------

    def delete(self, image: CloudImage) -> None:
        self.ec2.deregister_image(ImageId=image.id)
        self._remove_side_objects(
            {
                "ImageLocation": image.extra.get("_location"),
                "BlockDeviceMappings": [
                    {"Ebs": {"SnapshotId": s}} for s in image.extra.get("_snapshots", [])
                ],
            }
        )

    def _deregister_quietly(self, image_id: str, register: dict[str, Any]) -> None:
        try:
            self.ec2.deregister_image(ImageId=image_id)
        except Exception as exc:
            log.warning("%s: could not deregister %s: %s", self.target.name, image_id, exc)
        self._remove_side_objects(register)

    def _remove_side_objects(self, register: dict[str, Any]) -> None:
        location = register.get("ImageLocation") or ""
        bucket, _, key = location.partition("/")
        if bucket == self.target.bucket and key.startswith(self._root()):
            self._delete_prefix(key.rsplit("/", 1)[0])
        for m in register.get("BlockDeviceMappings") or []:
            if m.get("Ebs", {}).get("SnapshotId"):
                self._delete_snapshot_quietly(m["Ebs"]["SnapshotId"])

    def _delete_prefix(self, prefix: str) -> None:
        try:
            pages = self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.target.bucket, Prefix=prefix + "/"
            )
            for page in pages:
                objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if objects:
                    self.s3.delete_objects(Bucket=self.target.bucket, Delete={"Objects": objects})
        except Exception as exc:
            log.warning("%s: could not delete %s: %s", self.target.name, prefix, exc)

    def _delete_snapshot_quietly(self, snap: str) -> None:
        try:
            self.ec2.delete_snapshot(SnapshotId=snap)
        except Exception as exc:
            log.warning("%s: could not delete snapshot %s: %s", self.target.name, snap, exc)

    def set_latest(self, image: CloudImage, latest: bool) -> None:
        if latest:
            self.ec2.create_tags(Resources=[image.id], Tags=[{"Key": "latest", "Value": "true"}])
        else:
            self.ec2.delete_tags(Resources=[image.id], Tags=[{"Key": "latest"}])
        image.latest = latest

    def cleanup(self, images: Sequence[CloudImage]) -> list[str]:
        """Bundles and snapshots of ours that no registered image uses (interrupted runs)."""
        raw = self._ours_raw()
        used_locations = {
            i.get("ImageLocation", "").partition("/")[2].rsplit("/", 1)[0] for i in raw
        }
        used_snaps = {
            m["Ebs"]["SnapshotId"]
            for i in raw
            for m in i.get("BlockDeviceMappings", [])
            if m.get("Ebs", {}).get("SnapshotId")
        }
        cleaned = []
        if self.target.method == "bundle":
            prefixes: set[str] = set()
            try:
                pages = self.s3.get_paginator("list_objects_v2").paginate(
                    Bucket=self.target.bucket, Prefix=self._root()
                )
                for page in pages:
                    prefixes |= {o["Key"].rsplit("/", 1)[0] for o in page.get("Contents", [])}
            except Exception as exc:  # no bucket yet: nothing to clean
                log.debug("%s: listing the bucket: %s", self.target.name, exc)
            for prefix in sorted(prefixes - used_locations):
                self._delete_prefix(prefix)
                cleaned.append(f"s3://{self.target.bucket}/{prefix}/")
        snaps = self.ec2.describe_snapshots(
            OwnerIds=["self"],
            Filters=[{"Name": "tag:archive_local_target", "Values": [self.target.name]}],
        )["Snapshots"]
        for s in snaps:
            if s["SnapshotId"] not in used_snaps:
                self._delete_snapshot_quietly(s["SnapshotId"])
                cleaned.append(s["SnapshotId"])
        return cleaned


def raw_disk(path: Path, tmp: Path) -> Path:
    """The image as a raw disk: itself, or a sparse qemu-img conversion of a qcow2."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"QFI\xfb":
        return path
    out = tmp / "disk.raw"
    try:
        subprocess.run(
            ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(path), str(out)],
            check=True,
            capture_output=True,
            timeout=3600,
        )
    except FileNotFoundError:
        raise SeedError("method ebs needs qemu-img (Debian package qemu-utils)") from None
    except subprocess.CalledProcessError as exc:
        raise SeedError(
            f"qemu-img convert failed: {exc.stderr.decode(errors='replace')[:200]}"
        ) from None
    return out
