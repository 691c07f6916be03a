"""Unsigned apt indexes for a hostile upstream: Packages, by-hash copies and a Release.

The appliance does not verify signatures (apt does), so the fault tests can build a
repository's indexes in memory and change them at will. `repo()` returns the files
served under `/debian/` for a set of pool files.
"""

from __future__ import annotations

import hashlib
import lzma


def packages(pool: dict[str, bytes]) -> bytes:
    """A Packages index of `pool` (path under the repository root -> .deb bytes)."""
    stanzas = []
    for path, data in sorted(pool.items()):
        name = path.rsplit("/", 1)[-1].split("_")[0]
        stanzas.append(
            f"Package: {name}\nVersion: 1\nArchitecture: all\n"
            f"Description: a package\n a long description\n .\n more of it\n"
            f"Filename: {path}\nSize: {len(data)}\n"
            f"MD5sum: {hashlib.md5(data).hexdigest()}\n"
            f"SHA256: {hashlib.sha256(data).hexdigest()}\n"
        )
    return "\n".join(stanzas).encode()


def release(files: dict[str, bytes]) -> bytes:
    """A Release listing `files` (paths relative to `dists/test/`), by-hash enabled."""
    lines = ["Origin: test", "Suite: test", "Acquire-By-Hash: yes", "MD5Sum:"]
    lines += [f" {hashlib.md5(d).hexdigest()} {len(d)} {p}" for p, d in sorted(files.items())]
    lines.append("SHA256:")
    lines += [f" {hashlib.sha256(d).hexdigest()} {len(d)} {p}" for p, d in sorted(files.items())]
    return ("\n".join(lines) + "\n").encode()


def repo(pool: dict[str, bytes], arch: str = "amd64") -> dict[str, bytes]:
    """Every file of a repository holding `pool`, keyed by path under `/debian/`."""
    text = packages(pool)
    indexes = {
        f"main/binary-{arch}/Packages": text,
        f"main/binary-{arch}/Packages.xz": lzma.compress(text),
    }
    out = {f"dists/test/{p}": d for p, d in indexes.items()}
    for p, d in indexes.items():
        folder = p.rsplit("/", 1)[0]
        out[f"dists/test/{folder}/by-hash/SHA256/{hashlib.sha256(d).hexdigest()}"] = d
    out["dists/test/InRelease"] = release(indexes)
    out.update(pool)
    return {f"/debian/{p}": d for p, d in out.items()}


def by_hash_path(files: dict[str, bytes], arch: str = "amd64") -> str:
    """The by-hash path of the Packages.xz in `files` (what apt fetches)."""
    xz = files[f"/debian/dists/test/main/binary-{arch}/Packages.xz"]
    return f"/debian/dists/test/main/binary-{arch}/by-hash/SHA256/{hashlib.sha256(xz).hexdigest()}"
