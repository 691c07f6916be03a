"""Seeding an EC2-compatible cloud (moto's EC2, S3 and EBS direct APIs): bundle and EBS routes."""

from __future__ import annotations

import datetime
import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import padding as rsa_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import NameOID

from tests.components import ec2_endpoint as moto_server
from tests.conftest import actions, free_port, run_sync, unavailable
from tests.conftest import run_seed as seed
from tests.feed import Feed
from tests.seeding import big_feed, kill_seed_when, publish_version, write_seed_config
from tests.upstream import Upstream

BUCKET = "archive-local-images"


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[moto_server.Moto]:
    if not moto_server.installed():
        msg = "moto venv missing: `make test` builds it (.components/moto)"
        unavailable(msg)
    m = moto_server.start(tmp_path_factory.mktemp("moto"), free_port())
    yield m
    m.stop()


@pytest.fixture
def moto(moto_endpoint: moto_server.Moto) -> moto_server.Moto:
    moto_endpoint.reset()
    return moto_endpoint


def keypair(directory: Path, name: str) -> tuple[Path, Path, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}-cert.pem", directory / f"{name}-pk.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path, key


@pytest.fixture
def eucarc(tmp_path: Path) -> tuple[Path, Any]:
    """A eucarc as Eucalyptus hands it out, plus the cloud's private key (to check bundles)."""
    keys = tmp_path / "euca"
    keys.mkdir()
    keypair(keys, "user")
    _, _, cloud_key = keypair(keys, "cloud")
    rc = keys / "eucarc"
    rc.write_text(
        "EUCA_KEY_DIR=$(cd $(dirname ${BASH_SOURCE:-$0}); pwd -P)\n"
        "export EC2_ACCESS_KEY='AKIDARCHIVELOCAL0001'\n"
        "export EC2_SECRET_KEY='s3cr3t-" + "x" * 30 + "'\n"
        "export EC2_USER_ID='123456789012'\n"
        "export EC2_CERT=${EUCA_KEY_DIR}/user-cert.pem\n"
        "export EC2_PRIVATE_KEY=${EUCA_KEY_DIR}/user-pk.pem\n"
        "export EUCALYPTUS_CERT=${EUCA_KEY_DIR}/cloud-cert.pem\n"
    )
    rc.chmod(0o600)
    return rc, cloud_key


def ec2_target(name: str, moto: moto_server.Moto, creds: Path, **kw: Any) -> dict:
    return {
        "name": name,
        "type": "ec2",
        "ec2_endpoint": moto.endpoint,
        "s3_endpoint": moto.endpoint,
        "regions": ["us-east-1"],
        "bucket": BUCKET,
        "credentials_file": str(creds),
        "method": "bundle",
        "feeds": ["ex"],
        "max_items": 2,
        **kw,
    }


def clients(moto: moto_server.Moto, region: str = "us-east-1") -> tuple[Any, Any, Any]:
    import boto3
    from botocore.config import Config

    s = boto3.session.Session(
        aws_access_key_id="AKIDTEST", aws_secret_access_key="x", region_name=region
    )
    return (
        s.client("ec2", endpoint_url=moto.endpoint),
        s.client("s3", endpoint_url=moto.endpoint, config=Config(s3={"addressing_style": "path"})),
        s.client("ebs", endpoint_url=moto.endpoint),
    )


def amis(ec2: Any) -> list[dict]:
    return ec2.describe_images(Owners=["self"])["Images"]


def tags(image: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in image.get("Tags", [])}


def feed_bytes(feed: Feed, image: dict) -> bytes:
    t = tags(image)
    return next(
        data
        for path, data in feed.files.items()
        if f"release-{t['version_name']}/" in path
        and f"-{t['version']}-" in path
        and path.endswith("amd64.disk1.img")
    )


def unbundle(s3: Any, location: str, cloud_key: Any, user_cert: Path) -> bytes:
    """What the cloud does with a bundle: verify, decrypt, gunzip, untar."""
    bucket, _, key = location.partition("/")
    manifest_bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    root = ET.fromstring(manifest_bytes)
    mc, image = root.find("machine_configuration"), root.find("image")
    cert = x509.load_pem_x509_certificate(user_cert.read_bytes())
    cert.public_key().verify(  # raises if the signature is wrong
        bytes.fromhex(root.findtext("signature")),
        ET.tostring(mc) + ET.tostring(image),
        rsa_padding.PKCS1v15(),
        hashes.SHA1(),
    )
    aes_key = bytes.fromhex(
        cloud_key.decrypt(
            bytes.fromhex(image.findtext("ec2_encrypted_key")), rsa_padding.PKCS1v15()
        ).decode()
    )
    iv = bytes.fromhex(
        cloud_key.decrypt(
            bytes.fromhex(image.findtext("ec2_encrypted_iv")), rsa_padding.PKCS1v15()
        ).decode()
    )
    encrypted = b""
    prefix = key.rsplit("/", 1)[0]
    for part in image.find("parts"):
        data = s3.get_object(Bucket=bucket, Key=f"{prefix}/{part.findtext('filename')}")[
            "Body"
        ].read()
        assert hashlib.sha1(data).hexdigest() == part.findtext("digest")
        encrypted += data
    assert len(encrypted) == int(image.findtext("bundled_size"))
    decryptor = Cipher(algorithms.AES(aes_key), modes.CBC(iv)).decryptor()
    unpadder = padding.PKCS7(128).unpadder()
    compressed = (
        unpadder.update(decryptor.update(encrypted) + decryptor.finalize()) + unpadder.finalize()
    )
    tar_bytes = gzip.decompress(compressed)
    assert hashlib.sha1(tar_bytes).hexdigest() == image.findtext("digest")
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        [member] = tar.getmembers()
        data = tar.extractfile(member).read()
    assert len(data) == int(image.findtext("size"))
    assert root.findtext("machine_configuration/architecture") == "x86_64"
    return data


@pytest.mark.slow
def test_bundle_route_registers_verifiable_bundles_idempotently_and_prunes(
    tmp_path: Path,
    moto: moto_server.Moto,
    eucarc: tuple[Path, Any],
    qcow_feed: Feed,
    qcow_served: Upstream,
) -> None:
    rc, cloud_key = eucarc
    regions = ["us-east-1", "eu-west-1"]  # one bucket, one S3 endpoint, two regions
    cfg = write_seed_config(
        tmp_path, qcow_feed, qcow_served, [ec2_target("euca", moto, rc, regions=regions)]
    )
    assert run_sync(cfg)[0] == 0
    code, [out], err = seed(cfg)
    assert code == 0, err
    assert len(actions(out, "uploaded")) == 8 and actions(out, "cleaned") == []
    for region in regions:
        ec2, s3, _ = clients(moto, region)
        images = amis(ec2)
        assert len(images) == 4
        for image in images:
            t = tags(image)
            assert image["RootDeviceType"] == "instance-store"
            assert image["Architecture"] == "x86_64"
            assert image["ImageLocation"].startswith(f"{BUCKET}/euca/{region}/")
            assert image["Description"] == "archive-local:euca"
            assert t["content_id"] == "auto.sync" and t["item_name"] == "disk1.img"
            assert t["source_content_id"] == "com.example.cloud:released:download"
            data = unbundle(s3, image["ImageLocation"], cloud_key, rc.parent / "user-cert.pem")
            assert data == feed_bytes(qcow_feed, image)
    ec2, s3, _ = clients(moto)
    images = amis(ec2)
    ids = json.loads((tmp_path / "cache/_seed/image-ids/euca.json").read_text())
    assert ids["datatype"] == "image-ids"
    items = [
        i
        for p in ids["products"].values()
        for v in p["versions"].values()
        for i in v["items"].values()
    ]
    assert sorted(i["region"] for i in items) == sorted(regions * 4)
    assert {i["id"] for i in items} == {
        i["ImageId"] for r in regions for i in amis(clients(moto, r)[0])
    }
    assert all(i["root_store"] == "instance-store" and i["virt"] == "hvm" for i in items)
    assert all(i["endpoint"] == moto.endpoint for i in items)

    code, [again], err = seed(cfg)
    assert code == 0, err
    assert actions(again, "uploaded") == [] and len(actions(again, "present")) == 8
    assert actions(again, "cleaned") == []
    assert {i["ImageId"] for i in amis(ec2)} == {i["ImageId"] for i in images}

    publish_version(tmp_path, qcow_feed, "20240401")
    assert run_sync(cfg)[0] == 0
    code, [third], err = seed(cfg)
    assert code == 0, err
    assert sorted(a["version"] for a in actions(third, "removed")) == ["20240101"] * 4
    now = amis(ec2)
    assert sorted(tags(i)["version_name"] for i in now) == ["20240301"] * 2 + ["20240401"] * 2
    now += amis(clients(moto, "eu-west-1")[0])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert not any("20240101" in k for k in keys)  # pruned bundles leave no parts behind
    assert {k.rsplit("/", 1)[0] for k in keys} == {
        i["ImageLocation"].partition("/")[2].rsplit("/", 1)[0] for i in now
    }


@pytest.mark.slow
def test_bundle_killed_mid_upload_leaves_no_orphan(
    tmp_path: Path,
    moto: moto_server.Moto,
    eucarc: tuple[Path, Any],
    qcow_feed: Feed,
    qcow_served: Upstream,
) -> None:
    rc, _ = eucarc
    big = big_feed(tmp_path, qcow_feed, 64 * 1024 * 1024)
    cfg = write_seed_config(tmp_path, big, qcow_served, [ec2_target("euca", moto, rc)])
    assert run_sync(cfg)[0] == 0
    ec2, s3, _ = clients(moto)

    def parts_uploaded() -> bool | None:
        try:
            return s3.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) > 0 or None
        except Exception:  # (no bucket yet)
            return None

    kill_seed_when(cfg, parts_uploaded)
    leftovers = s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    assert leftovers and amis(ec2) == [], "expected parts without an image"

    code, [out], err = seed(cfg)
    assert code == 0, err
    assert any(
        a["name"].startswith(f"s3://{BUCKET}/euca/us-east-1/") for a in actions(out, "cleaned")
    )
    images = amis(ec2)
    assert len(images) == 2
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}
    assert (
        not {
            o["Key"]
            for o in leftovers
            if o["Key"].rsplit("/", 1)[0]
            not in {i["ImageLocation"].partition("/")[2].rsplit("/", 1)[0] for i in images}
        }
        & keys
    )


def test_ebs_route_in_two_regions_and_interrupted_leftovers(
    tmp_path: Path,
    moto: moto_server.Moto,
    eucarc: tuple[Path, Any],
    qcow_feed: Feed,
    qcow_served: Upstream,
) -> None:
    rc, _ = eucarc
    regions = ["us-east-1", "eu-west-1"]
    cfg = write_seed_config(
        tmp_path,
        qcow_feed,
        qcow_served,
        [ec2_target("cloud", moto, rc, method="ebs", regions=regions, max_items=1)],
    )
    assert run_sync(cfg)[0] == 0
    # what a run killed at each step leaves: a snapshot with no image, an image with no tags
    ec2, _, ebs = clients(moto, "eu-west-1")
    stray = ebs.start_snapshot(
        VolumeSize=1,
        Description="archive-local:cloud",
        Tags=[{"Key": "archive_local_target", "Value": "cloud"}],
    )["SnapshotId"]
    half = ec2.register_image(
        Name="half-registered",
        Description="archive-local:cloud",
        RootDeviceName="/dev/sda1",
        BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"SnapshotId": stray}}],
    )["ImageId"]
    foreign = ec2.register_image(
        Name="not-ours",
        RootDeviceName="/dev/sda1",
        BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"SnapshotId": stray}}],
    )["ImageId"]
    code, outcomes, err = seed(cfg)
    assert code == 0, err
    [out] = outcomes
    assert len(actions(out, "uploaded")) == 4  # 2 products x 1 version x 2 regions
    assert half in {a["image_id"] for a in actions(out, "cleaned")}
    for region in regions:
        ec2, _, ebs = clients(moto, region)
        ours = [i for i in amis(ec2) if i.get("Description") == "archive-local:cloud"]
        assert len(ours) == 2
        for image in ours:
            assert image["RootDeviceType"] == "ebs"
            [mapping] = image["BlockDeviceMappings"]
            snap = mapping["Ebs"]["SnapshotId"]
            blocks = ebs.list_snapshot_blocks(SnapshotId=snap)["Blocks"]
            raw = bytearray()
            for b in sorted(blocks, key=lambda b: b["BlockIndex"]):
                got = ebs.get_snapshot_block(
                    SnapshotId=snap, BlockIndex=b["BlockIndex"], BlockToken=b["BlockToken"]
                )["BlockData"].read()
                at = b["BlockIndex"] * 512 * 1024
                raw[len(raw) : at] = bytes(at - len(raw))
                raw[at : at + len(got)] = got
            qcow = tmp_path / "check.qcow2"
            qcow.write_bytes(feed_bytes(qcow_feed, image))
            subprocess.run(
                ["qemu-img", "convert", "-O", "raw", str(qcow), str(tmp_path / "check.raw")],
                check=True,
            )
            expected = (tmp_path / "check.raw").read_bytes()
            assert bytes(raw[: len(expected)]).rstrip(b"\0") == expected.rstrip(b"\0")
    ec2, _, _ = clients(moto, "eu-west-1")
    assert foreign in {i["ImageId"] for i in amis(ec2)}  # never touched
    assert half not in {i["ImageId"] for i in amis(ec2)}
    code, [again], err = seed(cfg)
    assert code == 0 and actions(again, "uploaded") == [], err


def test_bad_credentials_name_the_target_and_others_still_seed(
    tmp_path: Path,
    moto: moto_server.Moto,
    eucarc: tuple[Path, Any],
    qcow_feed: Feed,
    qcow_served: Upstream,
) -> None:
    rc, _ = eucarc
    broken = tmp_path / "broken.rc"
    broken.write_text("export EC2_ACCESS_KEY='AKIDONLY'\n")
    cfg = write_seed_config(
        tmp_path,
        qcow_feed,
        qcow_served,
        [ec2_target("bad", moto, broken), ec2_target("good", moto, rc, bucket="other-bucket")],
    )
    assert run_sync(cfg)[0] == 0
    code, outcomes, _ = seed(cfg)
    assert code == 1
    by = {o["target"]: o for o in outcomes}
    assert by["bad"]["error"].startswith("bad: no EC2 access key / secret key in ")
    assert by["good"]["ok"] and len(actions(by["good"], "uploaded")) == 4
    assert "s3cr3t" not in json.dumps(outcomes)
