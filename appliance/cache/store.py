"""The cache store: committed files and their metadata, keyed by upstream URL.

`Store` is everything the appliance does with stored bytes: reading, writing (a temp file,
then `commit`), the fetch locks, partial downloads kept for a resume, and housekeeping;
nothing outside `cache/` sees where or how the bytes are kept. Two backends implement it,
chosen in `stores.open_store`: `FilesystemStore` here, a directory tree on the unit's disk,
and `ObjectStore` (`objectstore.py`), a bucket several units share, with a
`FilesystemStore` in front as each unit's read cache. In the tree, keys look like
`host[:port]/path/to/file` and map to `<root>/host[:port]/path/to/file`, with
the metadata in a hidden sidecar `.file.meta` beside it. Request paths never
contain segments starting with '.', so sidecars and temp files (`.file.part-*`)
cannot be addressed by clients.

All methods block (disk I/O): the engine calls them from an executor.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from appliance.cache import statedir
from appliance.cache.refusals import Refusals
from appliance.cache.stripes import StripeLocks

log = logging.getLogger(__name__)

_PART = ".part-"
_META = ".meta"
_RESUME = ".resume"  # a broken transfer's bytes, kept for a Range request
RESUME_MAX_AGE = 7 * 86400
SCRATCH = ".scratch"  # staging work of other subsystems (see `scratch()`)
# lock files: one download per key among processes on one cache (relative to the root)
LEASES = statedir.StateDir(Path()).leases
_STAGING = ".seed-"  # where versions before the scratch area staged raw disks


class InvalidKey(ValueError):
    """A key that does not name a file inside the store."""


class BadMeta(ValueError):
    """Metadata that is not what this store writes: refused, never served from."""


URL_LIMIT = 8192
HEADER_LIMIT = 1024  # an ETag, a date, a media type: far shorter in practice
EXTRA_LIMIT = 4096
_HEX_LENGTHS = {"md5": 32, "sha1": 40, "sha256": 64, "sha384": 96, "sha512": 128}


def header_value(value: object, limit: int = HEADER_LIMIT) -> str | None:
    """`value` if it can be sent as a header value as it is (printable ASCII, bounded),
    else None: what labels a file never breaks the response that serves it."""
    if not isinstance(value, str) or not value or len(value) > limit:
        return None
    if not value.isascii() or not value.isprintable():
        return None
    return value


def _text(value: object, name: str, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit or not value.isprintable():
        raise BadMeta(f"metadata {name} is not a short line of text")
    return value


def _time(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise BadMeta(f"metadata {name} is not a time")
    if not 0 <= value < 2**40:
        raise BadMeta(f"metadata {name} is not a time")
    return float(value)


def _hex(value: object, name: str, length: int = 64) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != length or value.strip("0123456789abcdef"):
        raise BadMeta(f"metadata {name} is not a lowercase hex digest")
    return value


def _digests(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > len(_HEX_LENGTHS):
        raise BadMeta("metadata digests is not a mapping of digests")
    out = {}
    for name, digest in value.items():
        if name not in _HEX_LENGTHS:
            raise BadMeta(f"metadata digests: unknown algorithm {name!r:.40}")
        out[name] = _hex(digest, f"digests.{name}", _HEX_LENGTHS[name])
    return out or None  # type: ignore[return-value]


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise BadMeta(f"metadata {name} is not true or false")
    return value


@dataclass
class Meta:
    """What the cache knows about one committed file."""

    url: str
    size: int
    fetched: float  # when the bytes were downloaded (epoch seconds)
    checked: float  # when upstream last confirmed them (download or 304)
    etag: str | None = None
    last_modified: str | None = None
    content_type: str | None = None
    sha256: str | None = None
    digests: dict[str, str] | None = None  # other digests checked at download (md5, sha512)
    keep: bool = False  # mirrored or published: never evicted, removed only explicitly
    # immutable under its name (pool files, by-hash, images): the same bytes for every unit,
    # so a store shared by several units holds it; volatile indexes stay with each unit
    shared: bool = False
    # fields a newer (or older) version wrote that this one does not know: kept as they are
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Meta:
        """The one way metadata enters from outside this process (a sidecar on disk, an
        object's metadata in a shared store): every field checked for type, characters
        and size, `BadMeta` otherwise. What only labels the bytes for clients (ETag,
        Last-Modified, Content-Type) is dropped when unusable; what checks them (size,
        digests) or decides their fate (keep, shared) makes the whole record refused.
        Fields a newer (or older) version wrote are kept as they are, so a metadata
        change between versions never makes entries look invalid and get swept."""
        if not isinstance(data, dict):
            raise BadMeta("metadata is not an object")
        known = {f.name for f in fields(cls)} - {"extra"}
        extra = {k: v for k, v in data.items() if k not in known}
        if len(json.dumps(extra)) > EXTRA_LIMIT:
            raise BadMeta("metadata has too many unknown fields")
        size = data.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 2**53:
            raise BadMeta("metadata size is not a size")
        return cls(
            url=_text(data.get("url"), "url", URL_LIMIT),
            size=size,
            fetched=_time(data.get("fetched"), "fetched"),
            checked=_time(data.get("checked"), "checked"),
            etag=header_value(data.get("etag")),
            last_modified=header_value(data.get("last_modified")),
            content_type=header_value(data.get("content_type")),
            sha256=_hex(data.get("sha256"), "sha256"),
            digests=_digests(data.get("digests")),
            keep=_flag(data.get("keep", False), "keep"),
            shared=_flag(data.get("shared", False), "shared"),
            extra=extra,
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Meta:
        """`from_dict` of a JSON document; `BadMeta` for anything that is not one a unit
        wrote (too deeply nested for the parser included)."""
        try:
            return cls.from_dict(json.loads(raw))
        except BadMeta:
            raise
        except (ValueError, TypeError, RecursionError, MemoryError) as exc:
            raise BadMeta(f"metadata is not a unit's JSON ({type(exc).__name__})") from None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        return {**out.pop("extra"), **out}


@dataclass
class Entry:
    key: str
    path: Path
    meta: Meta


def _sha256() -> dict[str, Any]:
    return {"sha256": hashlib.sha256()}


@dataclass
class TempFile:
    """A download in progress; only `Store.commit` turns it into an entry.

    Bytes go in through `write`, which counts and hashes them (sha256 always, and
    the algorithms asked for), so `commit` can check the entry's size and digest
    against what was actually written. The descriptor is closed exactly once
    (`close()` is idempotent): a number closed twice may by then belong to another
    download's file.
    """

    key: str
    path: Path
    fd: int
    digests: dict[str, Any] = field(default_factory=_sha256)  # name -> hashlib object
    size: int = 0

    def write(self, data: bytes) -> None:
        """Append `data` (blocking)."""
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        for digest in self.digests.values():
            digest.update(data)
        self.size += len(data)

    def hexdigests(self) -> dict[str, str]:
        return {name: d.hexdigest() for name, d in self.digests.items()}

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


class Mismatch(ValueError):
    """`commit` was asked to record a size or digest the written bytes do not have."""


class Unstorable(OSError):
    """The store cannot take this key now (disk full, or a file/directory clash).

    The engine then passes the upstream answer through to the client without storing it.
    """

    def __init__(self, key: str, reason: str, why: str) -> None:
        super().__init__(f"cannot store {key}: {why}")
        self.reason = reason  # a metric label: disk-full, conflict, store-error


_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}
_CONFLICT = {errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG}


def unstorable(key: str, exc: OSError) -> Unstorable:
    """Classify a failure to create or commit an entry."""
    if isinstance(exc, Unstorable):
        return exc
    if exc.errno in _FULL:
        reason = "disk-full"
    elif exc.errno in _CONFLICT:
        reason = "conflict"
    else:
        reason = "store-error"
    return Unstorable(key, reason, exc.strerror or str(exc))


class Store(Protocol):
    """Everything the appliance does with stored bytes. Keys are `check_key`-valid paths;
    nothing outside `cache/` sees where or how the bytes are kept. All methods block."""

    refusals: Refusals  # what crossing the unit's boundary was refused

    # reading
    def lookup(self, key: str) -> Entry | None: ...  # this disk's copy only
    def held(self, key: str) -> Entry | None: ...  # the same (kept for callers' clarity)
    # a shared store's object, copied in only if tied to upstream (`expect`, a record)
    def adopt(self, key: str, expect: Any) -> Entry | None: ...
    def open_read(self, entry: Entry) -> BinaryIO: ...
    def read_bytes(self, entry: Entry) -> bytes: ...
    def local_file(self, entry: Entry) -> AbstractContextManager[Path]: ...
    def keys_under(self, prefix: str) -> Iterator[str]: ...
    def entries(self) -> Iterator[Entry]: ...
    # (key, size, when written or confirmed) of each entry on this disk, unchecked: cheap
    def listing(self) -> Iterator[tuple[str, int, float]]: ...
    # writing: a temp file is the only way in, `commit` the only way to become an entry
    def create_temp(self, key: str) -> TempFile: ...
    def open_temp(self, temp: TempFile) -> BinaryIO: ...
    def commit(self, temp: TempFile, meta: Meta) -> Entry: ...
    def share(self, entry: Entry) -> bool: ...  # for the other units too; True: in the store
    def elsewhere(self, key: str) -> bool: ...  # known to be in a shared store; never blocks
    def discard(self, temp: TempFile) -> None: ...
    def update_meta(self, entry: Entry) -> None: ...
    def remove(self, key: str) -> None: ...  # gone (for every unit sharing the store)
    def evict(self, key: str) -> None: ...  # this disk's copy only (room for others)
    # one upstream fetch for every unit sharing the store
    def available(self) -> bool: ...  # a shared store worth asking now (no I/O)
    def trip(self, why: str) -> None: ...  # it did not answer in time: leave it a while
    # None: fetch it; else who fetches it. `local`: among this disk's processes only (the
    # workers), for what each unit keeps for itself (volatile indexes)
    def claim(self, key: str, local: bool = False) -> str | None: ...
    def renew(self, key: str) -> None: ...
    def release(self, key: str, local: bool = False) -> None: ...
    # broken downloads kept for a Range request
    def keep_partial(self, temp: TempFile, info: dict[str, object]) -> None: ...
    def resume_partial(
        self, key: str, algorithms: Iterable[str] = ()
    ) -> tuple[TempFile, dict[str, object]] | None: ...
    # housekeeping
    # sweep=False: only list (a worker starting beside siblings that are writing)
    def scan(self, sweep: bool = True) -> Iterator[tuple[str, int, float, bool]]: ...
    def free_bytes(self) -> int | None: ...
    def problem(self) -> str | None: ...  # this disk cannot take entries: unhealthy
    def shared_status(self) -> dict[str, Any] | None: ...  # a shared store: up, counts
    def scratch(self, prefix: str = "work-") -> AbstractContextManager[Path]: ...


def _temp_suffix() -> str:
    """`.part-PID-RANDOM`: a temp file names its process, so that what a killed worker
    left is found and removed while its siblings' files are left alone (`sweep_dead`)."""
    return f"{_PART}{os.getpid()}-{secrets.token_hex(6)}"


def check_written(temp: TempFile, meta: Meta) -> None:
    """Refuse (and discard) a commit whose metadata is not the written bytes': every
    backend calls this first, so no entry exists whose size or sha256 was not checked."""
    got = temp.digests["sha256"].hexdigest()
    if meta.size != temp.size or meta.sha256 != got:
        discard_temp(temp)
        raise Mismatch(
            f"{temp.key}: {temp.size} bytes with sha256 {got} written, "
            f"{meta.size} bytes with sha256 {meta.sha256} to be recorded"
        )
    for name, value in (meta.digests or {}).items():
        if name in temp.digests and temp.digests[name].hexdigest() != value:
            discard_temp(temp)
            raise Mismatch(f"{temp.key}: {name} of the written bytes is not {value}")


def discard_temp(temp: TempFile) -> None:
    with contextlib.suppress(OSError):
        temp.close()
    with contextlib.suppress(OSError):
        temp.path.unlink(missing_ok=True)


def check_key(key: str) -> None:
    """Refuse keys that could leave the root or collide with internal files."""
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") or p.startswith(".") or "\0" in p for p in parts):
        raise InvalidKey(f"invalid cache key {key!r}")
    try:
        key.encode()
    except UnicodeEncodeError:  # a file name that is not UTF-8 (not one this store wrote)
        raise InvalidKey(f"invalid cache key {key!r}") from None


class _LeaseStripes:
    """The fetch locks of `FilesystemStore`: one download per key among the processes on one
    cache directory (its workers, a command), an exclusive `flock` on one of a bounded
    number of lock files under the unit's state (`StateDir.leases`), counted per process
    (`stripes.StripeLocks`). It uses the store's `holder` (named to the processes that
    wait) and `_locks` (the stripes it holds)."""

    holder: str
    _locks: StripeLocks

    def claim(self, key: str, local: bool = False) -> str | None:
        """None when this process should fetch `key`; else who holds it (another worker
        or command on this cache directory): wait for the entry. A process that dies lets
        go by itself. (Every claim here is `local`: this directory is all there is.)"""
        return self._locks.claim(key, self.holder)

    def renew(self, key: str) -> None:
        return None  # a lock lasts as long as its process

    def release(self, key: str, local: bool = False) -> None:
        self._locks.release(key)


class _PartialDownloads:
    """The broken downloads of `FilesystemStore`, parked beside their entry's place
    (`.<name>.resume`, with `.<name>.resume.json`) so that the next download of the key goes
    on from there with a Range request; the start-up sweep removes those older than
    `RESUME_MAX_AGE`. It uses the store's `path`."""

    def _resume_paths(self, key: str) -> tuple[Path, Path]:
        path = self.path(key)
        part = path.with_name(f".{path.name}{_RESUME}")
        return part, part.with_name(part.name + ".json")

    def keep_partial(self, temp: TempFile, info: dict[str, object]) -> None:
        """Park a broken download's bytes (fsynced) with what is needed to resume it."""
        part, info_path = self._resume_paths(temp.key)
        tmp = info_path.with_name(f"{info_path.name}{_temp_suffix()}")
        try:
            try:
                os.fsync(temp.fd)
            finally:
                temp.close()
            tmp.write_text(json.dumps(info))
            os.replace(temp.path, part)
            os.replace(tmp, info_path)
        except OSError:
            # a full disk: nothing to resume from, and nothing left behind
            for leftover in (temp.path, tmp, part, info_path):
                leftover.unlink(missing_ok=True)
            raise

    def resume_partial(
        self, key: str, algorithms: Iterable[str] = ()
    ) -> tuple[TempFile, dict[str, object]] | None:
        """Take a parked partial download back as a temp file positioned at its end,
        its digests (sha256 and `algorithms`) primed with the bytes it holds."""
        part, info_path = self._resume_paths(key)
        try:
            info = json.loads(info_path.read_text())
            written = min(int(info["written"]), part.stat().st_size)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        tmp = part.with_name(f".{self.path(key).name}{_temp_suffix()}")
        try:
            os.replace(part, tmp)  # claimed: nobody else resumes the same bytes
        except OSError:
            return None
        info_path.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CLOEXEC)
        temp = TempFile(key, tmp, fd, {n: hashlib.new(n) for n in {"sha256", *algorithms}})
        try:
            os.ftruncate(fd, written)
            os.lseek(fd, written, os.SEEK_SET)
            with open(tmp, "rb") as fh:
                remaining = written
                while remaining > 0 and (chunk := fh.read(min(1 << 22, remaining))):
                    for digest in temp.digests.values():
                        digest.update(chunk)
                    remaining -= len(chunk)
        except OSError:
            discard_temp(temp)
            return None
        temp.size = written
        info["written"] = written
        return temp, info


class _Sweeps:
    """The walks of `FilesystemStore` that clean up: the start-up sweep (`scan`) and what a
    dead worker left (`sweep_dead`). They use the store's `root`, `lookup` and `remove`."""

    root: Path

    def scan(self, sweep: bool = True) -> Iterator[tuple[str, int, float, bool]]:
        """Sweep leftovers (temp files, orphans, scratch) and yield (key, size, last use, keep).

        Never stops on a name it does not understand: such a file is left alone and
        logged; only what this module itself writes (temp files, sidecars without
        their file, staging folders) is removed. `sweep=False` removes nothing: other
        processes on this directory may be writing those temp files right now.
        """
        if not self.root.is_dir():
            return
        if sweep:
            shutil.rmtree(self.root / SCRATCH, ignore_errors=True)
        for dirpath, dirs, files in os.walk(self.root):
            d = Path(dirpath)
            for name in [n for n in dirs if sweep and n.startswith(_STAGING)]:  # old staging
                log.info("startup sweep: removing staging folder %s", d / name)
                shutil.rmtree(d / name, ignore_errors=True)
            dirs[:] = [n for n in dirs if not n.startswith(".")]  # the appliance's own state
            names = set(files)
            for name in files:
                try:
                    found = self._sweep_one(d, name, names, sweep)
                except (OSError, InvalidKey, UnicodeError) as exc:
                    log.warning("startup sweep: leaving %s alone (%s)", d / name, exc)
                    continue
                if found is not None:
                    yield found

    def sweep_dead(self, pid: int) -> int:
        """Remove the temp files of process `pid`, which died (a worker killed mid-download:
        nothing else would remove them before the next start); the count removed."""
        mark = f"{_PART}{pid}-"
        removed = 0
        for dirpath, dirs, files in os.walk(self.root):
            dirs[:] = [n for n in dirs if n not in (statedir.NAME, SCRATCH)]
            for name in files:
                if mark in name:
                    with contextlib.suppress(OSError):
                        (Path(dirpath) / name).unlink()
                        removed += 1
        return removed

    def _sweep_one(
        self, d: Path, name: str, names: set[str], sweep: bool = True
    ) -> tuple[str, int, float, bool] | None:
        full = d / name
        if not sweep:  # list what is whole, touch nothing
            if _PART in name or name.startswith(".") or name.endswith(_RESUME):
                return None
            key = str(full.relative_to(self.root))
            check_key(key)
            entry = self.lookup(key)
            if entry is None:
                return None
            st = full.stat()
            return (
                key,
                entry.meta.size,
                max(st.st_atime, st.st_mtime, entry.meta.checked),
                entry.meta.keep,
            )
        if _PART in name:
            log.info("startup sweep: removing partial download %s", full)
            full.unlink(missing_ok=True)
            return None
        if name.endswith((_RESUME, _RESUME + ".json")):
            if time.time() - full.stat().st_mtime > RESUME_MAX_AGE:
                full.unlink()
            return None
        if name.startswith("."):
            if name.endswith(_META) and name[1 : -len(_META)] not in names:
                full.unlink(missing_ok=True)  # sidecar of a file that is gone
            return None
        key = str(full.relative_to(self.root))
        check_key(key)
        if not full.is_file():
            raise InvalidKey("not a regular file")
        entry = self.lookup(key)
        if entry is None:
            if not self._meta_path(full).exists():
                log.info("startup sweep: removing %s (no metadata)", full)
            else:
                log.info("startup sweep: removing %s (metadata unreadable or wrong size)", full)
            self.remove(key)
            return None
        st = full.stat()
        last_use = max(st.st_atime, st.st_mtime, entry.meta.checked)
        return key, entry.meta.size, last_use, entry.meta.keep


class FilesystemStore(_LeaseStripes, _PartialDownloads, _Sweeps):
    """A directory tree; writes are temp file + fsync + rename. Its fetch locks, partial
    downloads and sweeps are the classes it is made of, above."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._locks = StripeLocks(self.root / LEASES)  # the fetch locks this process holds
        # what `claim` tells the others of this process (a worker names itself `worker-N`,
        # which its siblings can reach to stream the download it holds the lock for)
        self.holder = f"process {os.getpid()}"
        self.refusals = Refusals()

    def path(self, key: str) -> Path:
        check_key(key)
        return self.root / key

    @staticmethod
    def _meta_path(path: Path) -> Path:
        return path.with_name(f".{path.name}{_META}")

    def lookup(self, key: str) -> Entry | None:
        path = self.path(key)
        try:
            meta = Meta.from_json(self._meta_path(path).read_bytes())
            st = path.stat()
        except (OSError, ValueError, TypeError):
            return None
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block its reader
            return None
        size = st.st_size
        if size != meta.size:  # torn by something outside us: not trustworthy
            return None
        return Entry(key, path, meta)

    def held(self, key: str) -> Entry | None:
        """This disk's entry (here: the same as `lookup`)."""
        return self.lookup(key)

    def adopt(self, key: str, expect: object = None) -> Entry | None:
        """This disk's entry (a sibling worker's download is this unit's own)."""
        return self.lookup(key)

    def available(self) -> bool:
        return True

    def trip(self, why: str) -> None:
        return None

    def create_temp(self, key: str) -> TempFile:
        """A temp file beside the entry; `Unstorable` when the key cannot become a file."""
        path = self.path(key)
        try:
            if path.is_dir():  # `dists/x` asked for after `dists/x/InRelease` was stored
                raise OSError(errno.EISDIR, "a directory has this name")
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}{_temp_suffix()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise unstorable(key, exc) from None
        return TempFile(key, tmp, fd)

    def open_temp(self, temp: TempFile) -> BinaryIO:
        """A reader of a temp file being written: clients stream a download as it grows."""
        return open(temp.path, "rb")

    def commit(self, temp: TempFile, meta: Meta) -> Entry:
        """Check, fsync the data and a new sidecar, then rename both into place.

        `meta` must describe what was written (`check_written`), else nothing is stored.

        The sidecar is written before anything becomes visible, so a full disk fails
        the commit with nothing renamed; the old sidecar is removed before the data
        is replaced, so no reader ever pairs new bytes with old metadata. On any
        failure the temp file is gone and no orphan is left.
        """
        path = self.path(temp.key)
        check_written(temp, meta)
        target = self._meta_path(path)
        meta_tmp: Path | None = None
        try:
            try:
                os.fsync(temp.fd)
            finally:
                temp.close()
            meta_tmp = self._write_temp_meta(target, meta)
            target.unlink(missing_ok=True)
            os.replace(temp.path, path)
            try:
                os.replace(meta_tmp, target)
            except OSError:
                path.unlink(missing_ok=True)  # data without a sidecar would be an orphan
                raise
        except OSError as exc:
            temp.path.unlink(missing_ok=True)
            if meta_tmp is not None:
                meta_tmp.unlink(missing_ok=True)
            raise unstorable(temp.key, exc) from None
        return Entry(temp.key, path, meta)

    def share(self, entry: Entry) -> bool:
        """No other units here: nothing to do, and this disk holds the only copy."""
        return False

    def elsewhere(self, key: str) -> bool:
        return False

    def discard(self, temp: TempFile) -> None:
        discard_temp(temp)

    def update_meta(self, entry: Entry) -> None:
        self._write_meta(entry.path, entry.meta)

    def _write_meta(self, path: Path, meta: Meta) -> None:
        target = self._meta_path(path)
        tmp = self._write_temp_meta(target, meta)
        try:
            os.replace(tmp, target)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise

    @staticmethod
    def _write_temp_meta(target: Path, meta: Meta) -> Path:
        """The sidecar's new content, fsynced under a temp name (removed if that fails)."""
        tmp = target.with_name(f"{target.name}{_temp_suffix()}")
        try:
            with open(tmp, "wb") as fh:
                fh.write(json.dumps(meta.to_dict(), separators=(",", ":")).encode())
                fh.flush()
                os.fsync(fh.fileno())
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def remove(self, key: str) -> None:
        path = self.path(key)
        self._meta_path(path).unlink(missing_ok=True)
        path.unlink(missing_ok=True)

    def evict(self, key: str) -> None:
        """Make room: here the only copy, so the same as `remove`."""
        self.remove(key)

    def keys_under(self, prefix: str) -> Iterator[str]:
        """Keys of the complete files below `prefix` (no sweeping: safe while serving)."""
        check_key(prefix)
        base = self.root / prefix
        for dirpath, dirs, files in os.walk(base):
            dirs[:] = [n for n in dirs if not n.startswith(".")]
            d = Path(dirpath)
            for name in files:
                if not name.startswith("."):
                    yield str((d / name).relative_to(self.root))

    def entries(self) -> Iterator[Entry]:
        """Every complete entry (no sweeping: safe while serving and from another process)."""
        if not self.root.is_dir():
            return
        for dirpath, dirs, files in os.walk(self.root):
            dirs[:] = [n for n in dirs if not n.startswith(".")]
            d = Path(dirpath)
            for name in files:
                if name.startswith("."):
                    continue
                with contextlib.suppress(InvalidKey):
                    entry = self.lookup(str((d / name).relative_to(self.root)))
                    if entry is not None:
                        yield entry

    def listing(self) -> Iterator[tuple[str, int, float]]:
        """(key, size, when last written or confirmed) of every file with a sidecar, for
        an overview of a large cache (the status page): two `stat`s per entry and no
        metadata read, so nothing is checked (`entries` is the checked walk). The sidecar
        is rewritten by a commit and a revalidation: its time is the newer of the two."""
        pending = [(str(self.root), "")]
        while pending:
            folder, prefix = pending.pop()
            try:
                with os.scandir(folder) as it:
                    found = list(it)
            except OSError:
                continue
            names = {e.name for e in found}
            for e in found:
                name = e.name
                if name.startswith("."):
                    continue
                try:
                    name.encode()  # a name this store wrote (not one of undecodable bytes)
                    if e.is_dir(follow_symlinks=False):
                        pending.append((e.path, f"{prefix}{name}/"))
                        continue
                    sidecar = f".{name}{_META}"
                    if sidecar not in names or not e.is_file(follow_symlinks=False):
                        continue
                    size = e.stat(follow_symlinks=False).st_size
                    when = os.stat(f"{folder}/{sidecar}").st_mtime
                except (OSError, UnicodeError):
                    continue
                yield f"{prefix}{name}", size, when

    def open_read(self, entry: Entry) -> BinaryIO:
        """The committed bytes of `entry`, for reading (OSError when it is gone)."""
        return open(entry.path, "rb")

    def read_bytes(self, entry: Entry) -> bytes:
        """A small committed file whole (documents, not images)."""
        with self.open_read(entry) as fh:
            return fh.read()

    @contextlib.contextmanager
    def local_file(self, entry: Entry) -> Iterator[Path]:
        """A local path holding the bytes of `entry`, for tools that need a file
        (qemu-img): here the entry itself, read-only by convention."""
        yield entry.path

    def problem(self) -> str | None:
        """Why the store cannot take entries now (None: it can): a missing or read-only
        directory, a write that fails. A full disk is not a problem here (hits go on)."""
        probe = self.root / SCRATCH / f".probe-{secrets.token_hex(4)}"
        try:
            probe.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            os.close(fd)
            probe.unlink()
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                return None
            return f"{self.root}: {exc.strerror or exc}"
        return None

    def shared_status(self) -> dict[str, Any] | None:
        """No shared store behind this one."""
        return None

    def free_bytes(self) -> int | None:
        """Space left for new entries (None when the file system cannot tell)."""
        try:
            st = os.statvfs(self.root)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    @contextlib.contextmanager
    def scratch(self, prefix: str = "work-") -> Iterator[Path]:
        """A private directory for staging work (a raw disk for an EBS seed), on the
        store's file system and removed afterwards; the start-up sweep empties the
        scratch area, so an interrupted run leaves nothing behind for long."""
        base = self.root / SCRATCH
        base.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=base, prefix=prefix) as tmp:
            yield Path(tmp)
