"""Request paths -> safe segments and freshness classes. Pure functions, no I/O."""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from appliance.cache.policy import Freshness


class BadPath(ValueError):
    """A path that is malformed or tries to escape; answered with 400."""


_IMMUTABLE_SUFFIXES = (".deb", ".udeb", ".ddeb", ".dsc", ".diff.gz", ".changes", ".buildinfo")
_TARBALL = re.compile(
    r"\.(orig|debian)(-[A-Za-z0-9-]+)?\.tar(\.(gz|bz2|xz|lzma|zst))?$|\.tar\.(gz|bz2|xz|lzma|zst)$"
)
_SHA = re.compile(r"^[0-9a-f]{32,128}$")
# Segments that may follow `/by-hash/` name a hash algorithm apt knows.
_BY_HASH_ALGOS = {"MD5Sum": 32, "SHA1": 40, "SHA256": 64, "SHA512": 128}


def split_path(raw: str) -> tuple[str, ...]:
    """Split a raw (still percent-encoded) path into decoded, safe segments.

    Refuses `.`/`..`, encoded slashes or traversal, NUL and control characters,
    backslashes, and hidden names (which the store keeps for its own files).
    """
    if "?" in raw or "#" in raw:
        raw = raw.split("?", 1)[0].split("#", 1)[0]
    if not raw.startswith("/"):
        raise BadPath("path must start with '/'")
    segments = []
    for piece in raw[1:].split("/"):
        if piece == "":
            continue  # tolerate '//' like other mirrors do
        try:
            seg = unquote(piece, errors="strict")
        except UnicodeDecodeError:
            raise BadPath("path is not valid UTF-8") from None
        if seg in (".", "..") or seg.startswith("."):
            raise BadPath(f"path segment {piece!r} is not allowed")
        if "/" in seg or "\\" in seg or any(ord(c) < 0x20 or ord(c) == 0x7F for c in seg):
            raise BadPath(f"path segment {piece!r} contains a forbidden character")
        segments.append(seg)
    return tuple(segments)


def encode_path(segments: tuple[str, ...]) -> str:
    """Segments back to an encoded path for the upstream request ('%' -> '%25')."""
    return "/".join(quote(s, safe="~+:@!$&'()*,;=") for s in segments)


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


def expected_sha256(segments: tuple[str, ...]) -> str | None:
    """The digest a by-hash/SHA256 file must have: checked before it is cached."""
    found = by_hash_digest(segments)
    return found[1] if found and found[0] == "SHA256" else None
