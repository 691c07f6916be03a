"""apt index files -> what each file they list must be (size and digest). Parsing only.

A Release/InRelease lists the index files of its suite with their sizes and digests;
Packages lists every .deb (`Filename`, `Size`, `SHA256`); Sources lists the files of
every source package (`Directory` + `Checksums-Sha256`). With these the cache checks a
file before it enters the cache, and knows which cached files no index references.

Nothing here verifies signatures: apt's GPG check of InRelease stays the root of trust.
These checks keep the cache consistent with the indexes it serves (no "Hash Sum
mismatch" from a mirror that republished a file under the same name).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import posixpath
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from appliance.apt.paths import by_hash_digest

_COMPRESSED = (".gz", ".xz", ".bz2", ".lzma")
# digest fields, strongest first: (Release/Sources field, Packages field, hashlib name)
_DIGESTS = (
    ("SHA512", "SHA512", "sha512"),
    ("SHA256", "SHA256", "sha256"),
    ("SHA1", "SHA1", "sha1"),
    ("MD5Sum", "MD5sum", "md5"),
)
_SOURCES_FIELDS = {
    "Checksums-Sha512": "sha512",
    "Checksums-Sha256": "sha256",
    "Checksums-Sha1": "sha1",
    "Files": "md5",
}
_HEX = re.compile(r"^[0-9a-fA-F]{32,128}$")
MAX_SIZE_DIGITS = 18


@dataclass(frozen=True)
class Listed:
    """One file an index lists: its path relative to `base`, size and digest."""

    path: str
    size: int
    algorithm: str
    digest: str
    also: tuple[tuple[str, str], ...] = ()  # weaker (algorithm, digest) pairs, Release only


@dataclass(frozen=True)
class IndexFile:
    """What a cache key is, as an index: `kind`, the key `logical` names every rendering
    (Packages.xz, Packages.gz, by-hash copies) by, and the key its paths are relative to."""

    kind: str  # release | packages | sources | by-hash (decided by content)
    logical: str
    base: str  # key prefix the listed paths are relative to
    root: str  # the repository root (before `dists/`), for pool files


def classify(key: str) -> IndexFile | None:
    """The index a cache key holds, or None for any other file (pure, cheap)."""
    segments = tuple(key.split("/"))
    if len(segments) < 2:
        return None
    root = "/".join(segments[: segments.index("dists")]) if "dists" in segments else None
    if by_hash_digest(segments) is not None:
        folder = segments[-4] if len(segments) >= 4 else ""
        if not (folder.startswith("binary-") or folder == "source"):
            return None  # i18n, dep11, Contents...: nothing that lists pool files
        directory = "/".join(segments[:-3])  # Packages/Sources: paths from the root
        return IndexFile("by-hash", directory, root or directory, root or directory)
    name = segments[-1]
    directory = "/".join(segments[:-1])
    stem = name
    for suffix in _COMPRESSED:
        stem = stem.removesuffix(suffix)
    if name in ("InRelease", "Release") and root is not None:
        return IndexFile("release", f"{directory}/Release", directory, root)
    if stem in ("Packages", "Sources"):
        # pool paths are relative to the repository root; a flat repository's to its folder
        return IndexFile(stem.lower(), f"{directory}/{stem}", root or directory, root or directory)
    return None


def open_text(fh: BinaryIO) -> io.TextIOBase:
    """Lines of a possibly compressed index (gzip, xz, bzip2 recognised by content)."""
    head = fh.peek(6)[:6] if hasattr(fh, "peek") else b""
    raw: BinaryIO = fh
    if head.startswith(b"\x1f\x8b"):
        raw = gzip.GzipFile(fileobj=fh)  # type: ignore[assignment]
    elif head.startswith(b"\xfd7zXZ\x00") or head.startswith(b"\x5d\x00\x00"):
        raw = lzma.LZMAFile(fh)  # type: ignore[assignment]  # noqa: SIM115
    elif head.startswith(b"BZh"):
        raw = bz2.BZ2File(fh)  # type: ignore[assignment]
    elif head.startswith(b"\x28\xb5\x2f\xfd"):
        raise ValueError("zstd-compressed index: not read (no zstd support)")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace")  # type: ignore[arg-type]


def _size(text: str) -> int | None:
    return int(text) if text.isdigit() and len(text) <= MAX_SIZE_DIGITS else None


# the fields `package_files` reads: others (descriptions...) are skipped while parsing
FILE_FIELDS = frozenset(
    {"Filename", "Size", "Directory", *(f for _r, f, _a in _DIGESTS), *_SOURCES_FIELDS}
)


def stanzas(lines: Iterable[str], wanted: frozenset[str] | None = None) -> Iterator[dict[str, str]]:
    """deb822 paragraphs; continuation lines are joined with newlines (values kept raw).

    With `wanted`, only those fields are kept (a Packages file is mostly descriptions).
    """
    current: dict[str, str] = {}
    field: str | None = None
    for line in lines:
        if line[:1] in (" ", "\t"):
            if field is not None:
                current[field] += "\n" + line.strip()
            continue
        line = line.rstrip("\n")
        if not line.strip():
            if current:
                yield current
            current, field = {}, None
        elif ":" in line:
            name, _, value = line.partition(":")
            if wanted is None or name in wanted:
                field = name
                current[name] = value.strip()
            else:
                field = None
    if current:
        yield current


def unsign(lines: Iterable[str]) -> Iterator[str]:
    """The signed text of an InRelease (dash-escaping undone); other text unchanged."""
    it = iter(lines)
    first = next(it, None)
    if first is None:
        return
    if not first.startswith("-----BEGIN PGP SIGNED MESSAGE-----"):
        yield first
        yield from it
        return
    for line in it:  # armor headers ("Hash: ...") up to the blank line
        if not line.strip():
            break
    for line in it:
        if line.startswith("-----BEGIN PGP SIGNATURE-----"):
            return
        yield line[2:] if line.startswith("- ") else line


def release_files(lines: Iterable[str]) -> tuple[list[Listed], bool]:
    """(index files a Release lists with the strongest digest given, Acquire-By-Hash)."""
    fields = next(stanzas(unsign(lines)), {})
    sizes: dict[str, int] = {}
    digests: dict[str, list[tuple[str, str]]] = {}
    for field, _pkg_field, algorithm in _DIGESTS:  # strongest first
        for row in fields.get(field, "").split("\n"):
            parts = row.split()
            if len(parts) != 3 or not _HEX.match(parts[0]):
                continue
            size = _size(parts[1])
            path = posixpath.normpath(parts[2])
            if size is None or path.startswith(("/", "..")) or sizes.get(path, size) != size:
                continue
            sizes[path] = size
            digests.setdefault(path, []).append((algorithm, parts[0].lower()))
    listed = [
        Listed(path, sizes[path], found[0][0], found[0][1], tuple(found[1:]))
        for path, found in digests.items()
    ]
    by_hash = fields.get("Acquire-By-Hash", "").lower() == "yes"
    return listed, by_hash


def package_files(paragraphs: Iterable[dict[str, str]]) -> Iterator[Listed]:
    """Files of Packages paragraphs (`Filename`) or Sources paragraphs (`Directory`)."""
    for p in paragraphs:
        if "Filename" in p:
            size = _size(p.get("Size", ""))
            path = posixpath.normpath(p["Filename"])
            for _field, pkg_field, algorithm in _DIGESTS:
                digest = p.get(pkg_field, "")
                if size is not None and _HEX.match(digest) and not path.startswith(("/", "..")):
                    yield Listed(path, size, algorithm, digest.lower())
                    break
        elif "Directory" in p:
            directory = posixpath.normpath(p["Directory"])
            if directory.startswith(("/", "..")):
                continue
            seen: set[str] = set()
            for field, algorithm in _SOURCES_FIELDS.items():  # strongest first
                for row in p.get(field, "").split("\n"):
                    parts = row.split()
                    if len(parts) != 3 or parts[2] in seen or not _HEX.match(parts[0]):
                        continue
                    size = _size(parts[1])
                    name = parts[2]
                    if size is None or "/" in name or name.startswith("."):
                        continue
                    seen.add(name)
                    yield Listed(f"{directory}/{name}", size, algorithm, parts[0].lower())
