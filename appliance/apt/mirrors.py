"""The official mirrors of each archive, from the lists the distributions ship.

A stock image names whatever mirror its maker chose (the distribution's CDN,
`ftp.fr.debian.org`, `security.ubuntu.com`, `fr.archive.ubuntu.com`, a university's
mirror): each is accepted in
proxy form and shares the cache entries of the remap whose archive it mirrors, as
apt-cacher-ng does with its mirror lists. The lists are not kept here (a hand-written list
rots): `apt.mirrors` names, per remap, the files the distributions ship as data
(python-apt's `templates/*.mirrors`, apt-cacher-ng's `deb_mirrors.gz`, `ubuntu_mirrors`)
and patterns for the official domains (`http://*.archive.ubuntu.com/ubuntu/`). A listed
file that is not on this machine is skipped.

`apt.sources` names the appliance machine's own apt sources: their http upstreams are
accepted too; one whose path ends in a remap's archive name (`.../debian`) shares that
remap's entries.

A list mixes archives (Ubuntu's lists hold `ubuntu-ports` mirrors beside `ubuntu` ones), and
an `InRelease` of one is not the other's: an entry goes to the remap whose archive name
(the last segment of its upstream's path) its URL names, the longest name first, else to
the remap whose list it is in.
"""

from __future__ import annotations

import fnmatch
import gzip
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from appliance.cache.keys import BadPath, UpstreamBase, hostport, split_path

log = logging.getLogger(__name__)

MAX_LIST_BYTES = 16 << 20  # a mirror list is a few hundred lines; anything larger is not one


@dataclass(frozen=True)
class Mirror:
    """One official mirror of a remap's archive: requests under `hostport/base/` share
    the remap's entries."""

    hostport: str
    base: tuple[str, ...]
    remap: str


@dataclass(frozen=True)
class Pattern:
    """`http://*.debian.org/debian/`: every host the glob matches, under `base`."""

    host: str  # a glob, lower-case
    base: tuple[str, ...]
    remap: str

    def matches(self, target: str) -> bool:
        return fnmatch.fnmatchcase(target, self.host)


@dataclass
class Mirrors:
    """Who mirrors which remap's archive, and the machine's own apt hosts."""

    by_host: dict[str, list[Mirror]] = field(default_factory=dict)
    patterns: list[Pattern] = field(default_factory=list)
    machine_hosts: set[str] = field(default_factory=set)
    sources: dict[str, list[str]] = field(default_factory=dict)  # remap -> "where: N hosts"

    def match(self, target: str, segments: tuple[str, ...]) -> tuple[str, int] | None:
        """(remap, length of the mirror's base) for a proxy-form request, or None."""
        best: tuple[str, int] | None = None
        for m in self.by_host.get(target, ()):
            if segments[: len(m.base)] == m.base and (best is None or len(m.base) > best[1]):
                best = (m.remap, len(m.base))
        if best is not None:
            return best
        for p in self.patterns:
            if segments[: len(p.base)] == p.base and p.matches(target):
                return p.remap, len(p.base)
        return None

    def accepts_host(self, target: str) -> bool:
        """An upstream the appliance may connect to (the egress rule, host-wide)."""
        return (
            target in self.by_host
            or target in self.machine_hosts
            or any(p.matches(target) for p in self.patterns)
        )

    def listed_only(self, host: str) -> bool:
        """Known from a mirror list alone (no official pattern, not the machine's own
        sources): such a host is trusted less (see `runtime.upstream_rule`)."""
        return (
            host in self.by_host
            and host not in self.machine_hosts
            and not any(p.matches(host) for p in self.patterns)
        )

    def hosts(self) -> int:
        return len(self.by_host)


def archive_names(remaps: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    """remap -> the archive it serves, as mirrors name it: the last segment of its first
    upstream's path (`ubuntu-ports`), else the remap's name."""
    out = {}
    for name, urls in remaps.items():
        base = UpstreamBase.parse(urls[0]).base if urls else ()
        out[name] = (base[-1] if base else name).lower()
    return out


def _owner(
    target: str, base: tuple[str, ...], listed_under: str, archives: Mapping[str, str]
) -> str | None:
    """The remap whose archive the mirror serves, among the list's own and its kin
    (`ubuntu-ports` for `ubuntu`, `debian-security` for `debian`): the one a path segment
    or host label names exactly (the longest name first), else the list's own; None for
    an entry that may be a ports archive no ports remap takes (`ports.x.net/`, a list
    under a configuration without `ubuntu-ports`): one archive's `InRelease` is never
    served for another's."""
    own = archives[listed_under]
    kin = sorted(
        (n for n in archives if archives[n].startswith(own)), key=lambda n: -len(archives[n])
    )
    words = {s.lower() for s in base} | set(target.split(":", 1)[0].split("."))
    text = "/".join((target, *base)).lower()
    for name in kin:
        if archives[name] in words:
            return name if "ports" in archives[name] or "ports" not in text else None
    return None if "ports" in text else listed_under


def parse_mirror_url(url: str) -> tuple[str, tuple[str, ...]] | None:
    """(hostport, base) of an http(s) mirror URL; None for other schemes or bad ones."""
    try:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return None
        return hostport(parts.hostname, parts.port, parts.scheme), split_path(parts.path or "/")
    except (ValueError, BadPath):
        return None


def read_list(path: Path) -> list[str]:
    """The URLs of a mirror list (one per line, `#` comments, gzip when `.gz`)."""
    with path.open("rb") as raw:
        data = raw.read(MAX_LIST_BYTES + 1)
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    if len(data) > MAX_LIST_BYTES:
        raise ValueError(f"larger than {MAX_LIST_BYTES} bytes: not a mirror list")
    lines = (line.strip() for line in data.decode("utf-8", "replace").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@dataclass(frozen=True)
class SourceEntry:
    """One enabled entry of an apt sources file."""

    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]


def source_uris(paths: Iterable[str]) -> Iterator[str]:
    """The URIs of apt's sources files (see `source_entries`)."""
    return (entry.uri for entry in source_entries(paths))


def source_entries(paths: Iterable[str]) -> Iterator[SourceEntry]:
    """The enabled entries of apt's sources files: one-line `.list`
    (`deb [opts] URI suite comp...`) and deb822 `.sources` (`URIs:`, `Suites:`,
    `Components:`); a directory means its files."""
    for name in paths:
        path = Path(name)
        try:
            files = sorted(path.iterdir()) if path.is_dir() else [path]
        except OSError:
            continue
        for f in files:
            try:
                if f.suffix == ".list" or f.name == "sources.list":
                    yield from _one_line_entries(f.read_text(errors="replace"))
                elif f.suffix == ".sources":
                    yield from _deb822_entries(f.read_text(errors="replace"))
            except OSError:
                continue


def _one_line_entries(text: str) -> Iterator[SourceEntry]:
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] not in ("deb", "deb-src"):
            continue
        words = words[1:]
        if words and words[0].startswith("["):  # [arch=amd64 signed-by=...]
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2:
            yield SourceEntry(words[0], (words[1],), tuple(words[2:]))


def _deb822_entries(text: str) -> Iterator[SourceEntry]:
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        last = ""
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and last:
                fields[last] += " " + line.strip()
            elif ":" in line:
                last, value = line.split(":", 1)
                last = last.strip().lower()
                fields[last] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        suites = tuple(fields.get("suites", "").split())
        components = tuple(fields.get("components", "").split())
        for uri in fields.get("uris", "").split():
            yield SourceEntry(uri, suites, components)


def load(
    remaps: Mapping[str, tuple[str, ...]],
    lists: Mapping[str, tuple[str, ...]],
    sources: Iterable[str] = (),
) -> Mirrors:
    """The configured lists read once (at start and reload): `file:PATH` entries are
    mirror lists, other entries URLs, a `*` in their host a pattern."""
    mirrors = Mirrors()
    archives = archive_names(remaps)
    for listed_under, specs in lists.items():
        if listed_under not in remaps:
            continue  # a list for a remap this configuration does not have
        for spec in specs:
            if spec.startswith("file:"):
                path = Path(spec.removeprefix("file:"))
                try:
                    urls = read_list(path)
                except FileNotFoundError:
                    log.debug("mirror list %s: not on this machine", path)
                    continue
                except (OSError, ValueError, EOFError) as exc:
                    log.warning("mirror list %s: skipped (%s)", path, exc)
                    continue
                added = _add(mirrors, urls, listed_under, archives)
                mirrors.sources.setdefault(listed_under, []).append(f"{path}: {added} mirrors")
            elif "*" in spec.split("://", 1)[-1].split("/", 1)[0]:
                parts = urlsplit(spec)
                host = (parts.netloc or "").lower()
                mirrors.patterns.append(Pattern(host, split_path(parts.path or "/"), listed_under))
                mirrors.sources.setdefault(listed_under, []).append(spec)
            elif _add(mirrors, [spec], listed_under, archives):
                mirrors.sources.setdefault(listed_under, []).append(spec)
    for uri in source_uris(sources):
        found = parse_mirror_url(uri)
        if found is None:
            continue
        target, base = found
        mirrors.machine_hosts.add(target)
        archive = [n for n, a in archives.items() if base and base[-1].lower() == a]
        if archive and mirrors.match(target, base) is None:  # this machine's mirror of it
            _add(mirrors, [uri], archive[0], archives)
    return mirrors


def _add(
    mirrors: Mirrors, urls: Iterable[str], listed_under: str, archives: Mapping[str, str]
) -> int:
    added = 0
    for url in urls:
        found = parse_mirror_url(url)
        if found is None:
            continue  # ftp://, mirror://, a line that is not a URL
        target, base = found
        remap = _owner(target, base, listed_under, archives)
        if remap is None:
            continue
        mirror = Mirror(target, base, remap)
        known = mirrors.by_host.setdefault(target, [])
        if all(m.base != base for m in known):
            known.append(mirror)
            added += 1
    return added
