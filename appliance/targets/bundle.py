"""Eucalyptus / EC2 instance-store bundles, streamed: what euca-bundle-image makes.

tar (one member, the image) -> SHA-1 of the tar stream -> gzip -> AES-128-CBC with a
random key and IV -> 10 MiB parts, each handed to `put_part` as soon as it is full,
so memory stays at one part whatever the image size. The manifest (version
2007-10-10) carries the key and IV encrypted to the cloud's certificate and to the
user's, the parts' SHA-1 digests, and an RSA-SHA1 signature by the user's key over
the `machine_configuration` and `image` elements.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree as ET

from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import padding as rsa_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

PART_SIZE = 10 * 1024 * 1024
GZIP_LEVEL = 1  # disk images are mostly incompressible already; speed matters more


@dataclass(frozen=True)
class BundleKeys:
    """The user's key pair and the cloud's certificate (eucarc: EC2_PRIVATE_KEY, EC2_CERT,
    EUCALYPTUS_CERT) plus the account number that goes into the manifest."""

    user_cert: Path
    user_key: Path
    cloud_cert: Path
    account: str


@dataclass
class BundleResult:
    manifest: bytes
    parts: list[tuple[str, str]] = field(default_factory=list)  # (name, sha1)
    size: int = 0
    bundled_size: int = 0


class _Pipeline:
    """The file-like sink tarfile writes into."""

    def __init__(self, prefix: str, put_part: Callable[[str, bytes], None]) -> None:
        self.prefix = prefix
        self.put_part = put_part
        self.key, self.iv = os.urandom(16), os.urandom(16)
        self.tar_sha1 = hashlib.sha1()
        self.gzip = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
        self.padder = padding.PKCS7(128).padder()
        self.encryptor = Cipher(algorithms.AES(self.key), modes.CBC(self.iv)).encryptor()
        self.buffer = bytearray()
        self.result = BundleResult(b"")

    def write(self, data: bytes) -> int:
        self.tar_sha1.update(data)
        self._encrypted(self.gzip.compress(data))
        return len(data)

    def _encrypted(self, compressed: bytes) -> None:
        if compressed:
            self.buffer += self.encryptor.update(self.padder.update(compressed))
        while len(self.buffer) >= PART_SIZE:
            self._emit(bytes(self.buffer[:PART_SIZE]))
            del self.buffer[:PART_SIZE]

    def finish(self) -> None:
        self._encrypted(self.gzip.flush())
        self.buffer += self.encryptor.update(self.padder.finalize()) + self.encryptor.finalize()
        if self.buffer or not self.result.parts:
            self._emit(bytes(self.buffer))
        self.buffer.clear()

    def _emit(self, data: bytes) -> None:
        name = f"{self.prefix}.part.{len(self.result.parts):02d}"
        self.put_part(name, data)
        self.result.parts.append((name, hashlib.sha1(data).hexdigest()))
        self.result.bundled_size += len(data)


def _encrypt_to(cert_path: Path, secret: bytes) -> str:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    public = cert.public_key()
    return public.encrypt(secret.hex().encode(), rsa_padding.PKCS1v15()).hex()  # type: ignore[union-attr]


def bundle(
    image: Path,
    name: str,
    keys: BundleKeys,
    put_part: Callable[[str, bytes], None],
    architecture: str,
    kernel_id: str | None = None,
    ramdisk_id: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> BundleResult:
    """Stream `image` into encrypted parts named `<name>.part.NN`; return the manifest."""
    sink = _Pipeline(name, put_part)
    size = image.stat().st_size
    with (
        open(image, "rb") as f,
        tarfile.open(
            fileobj=sink, mode="w|", format=tarfile.GNU_FORMAT, copybufsize=1 << 20
        ) as tar,
    ):  # type: ignore[call-overload]
        info = tarfile.TarInfo(name)
        info.size, info.mode = size, 0o644
        tar.addfile(info, _Reader(f, progress))
    sink.finish()
    result = sink.result
    result.size = size
    result.manifest = _manifest(name, keys, sink, result, architecture, kernel_id, ramdisk_id)
    return result


class _Reader:
    def __init__(self, f, progress: Callable[[int], None] | None) -> None:  # type: ignore[no-untyped-def]
        self.f, self.progress = f, progress

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        if data and self.progress:
            self.progress(len(data))
        return data


def _text(parent: ET.Element, tag: str, text: str, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    el.text = text
    return el


def _manifest(
    name: str,
    keys: BundleKeys,
    sink: _Pipeline,
    result: BundleResult,
    architecture: str,
    kernel_id: str | None,
    ramdisk_id: str | None,
) -> bytes:
    root = ET.Element("manifest")
    _text(root, "version", "2007-10-10")
    bundler = ET.SubElement(root, "bundler")
    _text(bundler, "name", "archive-local")
    _text(bundler, "version", "1")
    _text(bundler, "release", "1")
    mc = ET.SubElement(root, "machine_configuration")
    _text(mc, "architecture", architecture)
    bdm = ET.SubElement(mc, "block_device_mapping")
    for virtual, device in (("ami", "sda1"), ("root", "/dev/sda1")):
        m = ET.SubElement(bdm, "mapping")
        _text(m, "virtual", virtual)
        _text(m, "device", device)
    if kernel_id:
        _text(mc, "kernel_id", kernel_id)
    if ramdisk_id:
        _text(mc, "ramdisk_id", ramdisk_id)
    img = ET.SubElement(root, "image")
    _text(img, "name", name)
    _text(img, "user", keys.account)
    _text(img, "type", "machine")
    _text(img, "digest", sink.tar_sha1.hexdigest(), algorithm="SHA1")
    _text(img, "size", str(result.size))
    _text(img, "bundled_size", str(result.bundled_size))
    _text(img, "ec2_encrypted_key", _encrypt_to(keys.cloud_cert, sink.key), algorithm="AES-128-CBC")
    _text(img, "user_encrypted_key", _encrypt_to(keys.user_cert, sink.key), algorithm="AES-128-CBC")
    _text(img, "ec2_encrypted_iv", _encrypt_to(keys.cloud_cert, sink.iv))
    _text(img, "user_encrypted_iv", _encrypt_to(keys.user_cert, sink.iv))
    parts = ET.SubElement(img, "parts", count=str(len(result.parts)))
    for i, (part, sha1) in enumerate(result.parts):
        p = ET.SubElement(parts, "part", index=str(i))
        _text(p, "filename", part)
        _text(p, "digest", sha1, algorithm="SHA1")
    signed = ET.tostring(mc) + ET.tostring(img)
    private = serialization.load_pem_private_key(keys.user_key.read_bytes(), password=None)
    signature = private.sign(signed, rsa_padding.PKCS1v15(), hashes.SHA1())  # type: ignore[union-attr, call-arg]
    _text(root, "signature", signature.hex())
    return b'<?xml version="1.0" ?>\n' + ET.tostring(root)
