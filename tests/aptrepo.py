"""Build a real signed Debian repository: dpkg-deb packages, apt-ftparchive indexes,
by-hash copies, InRelease and Release.gpg from a throwaway GPG key."""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.gpgkey import ThrowawayKey

SUITE = "test"


@dataclass
class AptRepo:
    root: Path  # served as /debian by the upstream
    keyring: Path
    arch: str
    debs: dict[str, Path]  # package name -> .deb in the pool

    @property
    def inrelease(self) -> Path:
        return self.root / "dists" / SUITE / "InRelease"


def _run(*cmd: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(cmd, check=True, capture_output=True, **kw)  # type: ignore[call-overload]


def build_deb(work: Path, name: str, version: str, payload: bytes, depends: str = "") -> Path:
    tree = work / f"{name}-tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "usr/share" / name).mkdir(parents=True)
    (tree / "usr/share" / name / "payload").write_bytes(payload)
    control = (
        f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
        f"Maintainer: test <test@localhost>\nDescription: test package {name}\n"
    )
    if depends:
        control += f"Depends: {depends}\n"
    (tree / "DEBIAN/control").write_text(control)
    out = work / f"{name}_{version}_all.deb"
    _run("dpkg-deb", "-Znone", "--root-owner-group", "-b", str(tree), str(out))
    shutil.rmtree(tree)
    return out


def build_repo(
    base: Path,
    large_size: int = 3 * 1024 * 1024,
    dists: dict[str, dict[str, tuple[str, ...]]] | None = None,
) -> AptRepo:
    """The repository as /debian (suite `test`, component main), or as `dists` says:
    archive path -> suite -> components, all signed by one key; the packages are in the
    first archive's `main`, the other indexes are empty."""
    dists = dists or {"debian": {SUITE: ("main",)}}
    arch = _run("dpkg", "--print-architecture").stdout.decode().strip()
    first = next(iter(dists))
    root = base / first
    work = base / "work"
    work.mkdir(parents=True)
    debs: dict[str, Path] = {}
    specs = [
        ("al-hello", "1.0", os.urandom(3000), ""),
        ("al-large", "2:1.0-1", os.urandom(large_size), "al-hello"),  # epoch: '%3a' in names
        ("al-tools", "0.5", os.urandom(20000), "al-hello (>= 1.0)"),
    ]
    for name, version, payload, depends in specs:
        deb = build_deb(work, name, version, payload, depends)
        pool = root / "pool/main/a" / name
        pool.mkdir(parents=True)
        target = pool / deb.name.replace("_2:", "_")  # pool names carry no epoch
        shutil.move(deb, target)
        debs[name] = target
    key = ThrowawayKey(base)
    try:
        for archive, suites in dists.items():
            for suite, components in suites.items():
                _dist(base / archive, suite, components, arch, key, archive == first)
    finally:
        key.close()
    shutil.rmtree(work)
    return AptRepo(root, key.keyring, arch, debs)


def _dist(
    root: Path,
    suite: str,
    components: tuple[str, ...],
    arch: str,
    key: ThrowawayKey,
    with_packages: bool,
) -> None:
    dist = root / "dists" / suite
    hashopts = ["-o", "APT::FTPArchive::SHA1=false", "-o", "APT::FTPArchive::SHA512=false"]
    for component in components:
        binary = dist / component / f"binary-{arch}"
        binary.mkdir(parents=True)
        packages = b""
        if with_packages and component == "main":
            packages = _run("apt-ftparchive", *hashopts, "packages", "pool", cwd=root).stdout
        (binary / "Packages").write_bytes(packages)
        (binary / "Packages.gz").write_bytes(gzip.compress(packages, mtime=0))
        (binary / "Packages.xz").write_bytes(lzma.compress(packages))
        byhash = binary / "by-hash" / "SHA256"
        byhash.mkdir(parents=True)
        for f in ("Packages", "Packages.gz", "Packages.xz"):
            data = (binary / f).read_bytes()
            (byhash / hashlib.sha256(data).hexdigest()).write_bytes(data)
    release = _run(
        "apt-ftparchive",
        *hashopts,
        "-o",
        f"APT::FTPArchive::Release::Suite={suite}",
        "-o",
        f"APT::FTPArchive::Release::Codename={suite}",
        "-o",
        f"APT::FTPArchive::Release::Architectures={arch}",
        "-o",
        f"APT::FTPArchive::Release::Components={' '.join(components)}",
        "-o",
        "APT::FTPArchive::Release::Acquire-By-Hash=yes",
        "release",
        str(dist.relative_to(root)),
        cwd=root,
    ).stdout
    (dist / "Release").write_bytes(release)
    key.clearsign(dist / "Release", dist / "InRelease")
    key.detach_sign(dist / "Release", dist / "Release.gpg")
