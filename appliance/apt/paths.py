"""apt request paths -> freshness classes and expected digests. Pure functions, no I/O."""

from __future__ import annotations

import re

from appliance.cache.keys import BadPath, encode_path, split_path
from appliance.cache.route import NO_EXPECTATION, Expect, Freshness

_IMMUTABLE_SUFFIXES = (".deb", ".udeb", ".ddeb", ".dsc", ".diff.gz", ".changes", ".buildinfo")
_TARBALL = re.compile(
    r"\.(orig|debian)(-[A-Za-z0-9-]+)?\.tar(\.(gz|bz2|xz|lzma|zst))?$|\.tar\.(gz|bz2|xz|lzma|zst)$"
)
_SHA = re.compile(r"^[0-9a-f]{32,128}$")
# Segments that may follow `/by-hash/` name a hash algorithm apt knows.
_BY_HASH_ALGOS = {"MD5Sum": 32, "SHA1": 40, "SHA256": 64, "SHA512": 128}
_HASHLIB_NAMES = {"MD5Sum": "md5", "SHA1": "sha1", "SHA256": "sha256", "SHA512": "sha512"}


def freshness(segments: tuple[str, ...]) -> Freshness:
    """Pool files and by-hash names never change; everything else is revalidated."""
    if not segments:
        return Freshness.VOLATILE
    name = segments[-1]
    if by_hash_digest(segments) is not None:
        return Freshness.IMMUTABLE
    if "dists" in segments:
        return Freshness.VOLATILE  # InRelease, Packages*, Sources*, Translation*, dep11, cnf...
    if name.endswith(_IMMUTABLE_SUFFIXES) or _TARBALL.search(name):
        return Freshness.IMMUTABLE
    return Freshness.VOLATILE


def by_hash_digest(segments: tuple[str, ...]) -> tuple[str, str] | None:
    """(algorithm, hex digest) for `.../by-hash/SHA256/<hex>` paths, else None."""
    if len(segments) >= 3 and segments[-3] == "by-hash":
        algo, digest = segments[-2], segments[-1]
        if _BY_HASH_ALGOS.get(algo) == len(digest) and _SHA.match(digest):
            return algo, digest
    return None


def expectation(segments: tuple[str, ...]) -> Expect:
    """A by-hash file must have the digest its name says: checked before it is cached."""
    found = by_hash_digest(segments)
    if found is None:
        return NO_EXPECTATION
    algo, digest = found
    return Expect(algorithm=_HASHLIB_NAMES[algo], digest=digest)


__all__ = ["BadPath", "encode_path", "expectation", "freshness", "split_path"]
