"""The `Store` contract on an S3 bucket (OpenStack Swift, Ceph RGW, any S3 API), shared by
several units, with each unit's local disk as a bounded read cache in front of it.

What is shared: entries whose bytes never change under their name (`Meta.shared`: pool
files, by-hash indexes, mirrored images). They are uploaded when committed, after the same
verification as every entry, as one object each (multipart above a threshold: an object
exists whole or not at all), keyed like the local layout under `prefix`, with their size,
sha256 and metadata as object metadata. A unit missing one locally takes it from the store,
checks its size and sha256 while copying it to local disk, and serves it from there
(sendfile, as any local hit). Volatile indexes, the feed snapshots, the curated feed and the
partial downloads stay with each unit.

The store is a cache, not a dependency: when it fails or is slow, the unit serves what its
disk holds, fetches the rest upstream and keeps it locally; it stops asking the store for
`RETRY_AFTER` seconds after a failure and says so (`remote_problem`). All methods block.
"""

from __future__ import annotations

import base64
import configparser
import contextlib
import email.utils
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from appliance.cache.fleetkey import FleetKey
from appliance.cache.route import Expect
from appliance.cache.statedir import StateDir
from appliance.cache.store import (
    Entry,
    FilesystemStore,
    Meta,
    Mismatch,
    TempFile,
    Unstorable,
    check_key,
)
from appliance.config import redact

log = logging.getLogger(__name__)

RETRY_AFTER = 5.0  # seconds without asking a store that just failed
LEASE_SETTLE = 0.1  # seconds for concurrent lease creates to land before the read-back
LEASE_TTL = 30.0  # a fetch lease not renewed for this long is taken over (a dead unit)
LEASES = (
    ".leases/"  # lease objects: `<prefix>.leases/<key>`, never a key (keys have no dot segments)
)
MULTIPART_ABOVE = 64 * 1024 * 1024
PART_SIZE = 16 * 1024 * 1024
CHUNK = 1024 * 1024
# the entry's metadata as JSON, base64url, in pieces `x-amz-meta-al-meta-0`, `-1`...: Swift
# allows 256 bytes per value and 4 KiB in all; plus `sha256` and `size` for people
META_PIECE = 240
META_PIECES = 12


class StoreUnavailable(OSError):
    """The object store did not answer, or answered with an error."""


class BadObject(ValueError):
    """An object whose metadata no unit wrote (a bucket writer's, or damaged)."""


RECORD = "al-record"  # the fleet's HMAC over an object (`FleetKey.record`)


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str


def read_credentials(path: Path) -> Credentials:
    """An AWS-style credentials file (`[default]`, `aws_access_key_id`,
    `aws_secret_access_key`), as boto users keep them; EC2-style `access_key`/`secret_key`
    keys are read too. The error names the file, never a value."""
    # no interpolation: a secret key is any string, `%` included
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path) as fh:
            parser.read_file(fh)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the store's credentials ({exc.strerror})") from None
    except configparser.Error as exc:  # its message may quote a line: a secret
        raise ValueError(f"{path}: not an INI file of credentials ({type(exc).__name__})") from None
    section = parser["default"] if parser.has_section("default") else None
    if section is None and parser.sections():
        section = parser[parser.sections()[0]]
    if section is None:
        raise ValueError(f"{path}: no [default] section with the store's credentials")
    access = section.get("aws_access_key_id") or section.get("access_key")
    secret = section.get("aws_secret_access_key") or section.get("secret_key")
    if not access or not secret:
        raise ValueError(f"{path}: needs aws_access_key_id and aws_secret_access_key")
    return Credentials(access, secret)


class Bucket:
    """The objects of one bucket under `prefix`, through a boto3 client (blocking)."""

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix

    def name(self, key: str) -> str:
        return self.prefix + key

    def ensure(self) -> None:
        """Create the bucket when it does not exist; any other refusal is an error that
        names it (a 403 is not a reason to create one)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _status(exc) != 404:
                raise StoreUnavailable(f"bucket {self.bucket}: {_why(exc)}") from None
        except BotoCoreError as exc:
            raise StoreUnavailable(f"bucket {self.bucket}: {exc}") from None
        with _errors(f"create bucket {self.bucket}"):
            self.client.create_bucket(Bucket=self.bucket)

    def head(self, key: str) -> tuple[Meta, str | None] | None:
        """The object's metadata, checked like any metadata entering (`Meta.from_dict`),
        and its fleet record if it has one; None: no such object; `BadObject`: one whose
        metadata is not what a unit writes."""
        from botocore.exceptions import ClientError

        try:
            with _errors(f"HEAD {key}", passing=ClientError):
                answer = self.client.head_object(Bucket=self.bucket, Key=self.name(key))
        except ClientError as exc:
            if _status(exc) == 404:
                return None
            raise StoreUnavailable(f"HEAD {key}: {_why(exc)}") from None
        metadata = answer.get("Metadata")
        try:
            meta = _meta_from(metadata if isinstance(metadata, dict) else {})
        except (KeyError, ValueError, TypeError) as exc:  # BadMeta, base64's binascii.Error
            raise BadObject(f"unreadable metadata ({str(exc)[:200]})") from None
        if meta.size != answer.get("ContentLength"):
            raise BadObject(f"{answer.get('ContentLength')} bytes, its metadata says {meta.size}")
        record = metadata.get(RECORD) if isinstance(metadata, dict) else None
        return meta, record if isinstance(record, str) else None

    def download(self, key: str, temp: TempFile, limit: int | None = None) -> None:
        """The object's bytes into `temp` (hashed as they arrive), at most `limit` + 1
        (a longer body is refused by the size check, without filling the disk)."""
        with _errors(f"GET {key}"):
            body = self.client.get_object(Bucket=self.bucket, Key=self.name(key))["Body"]
            try:
                while chunk := body.read(CHUNK):
                    temp.write(chunk)
                    if limit is not None and temp.size > limit:
                        break
            finally:
                body.close()

    def upload(self, key: str, path: Path, meta: Meta, record: str | None = None) -> None:
        """One object from a committed file: a single PUT, or a multipart upload above
        `MULTIPART_ABOVE` (visible only once complete; aborted on failure). `record`: the
        fleet's HMAC over it (`FleetKey.record`), when the units share a key."""
        from boto3.s3.transfer import TransferConfig

        metadata = {**_meta_pieces(meta), "sha256": meta.sha256 or "", "size": str(meta.size)}
        if record is not None:
            metadata[RECORD] = record
        extra = {
            "Metadata": metadata,
            "ContentType": meta.content_type or "application/octet-stream",
        }
        config = TransferConfig(
            multipart_threshold=MULTIPART_ABOVE,
            multipart_chunksize=PART_SIZE,
            max_concurrency=2,
            use_threads=True,
        )
        with _errors(f"PUT {key}"):
            self.client.upload_file(
                str(path), self.bucket, self.name(key), ExtraArgs=extra, Config=config
            )

    def delete(self, key: str) -> None:
        with _errors(f"DELETE {key}"):
            self.client.delete_object(Bucket=self.bucket, Key=self.name(key))

    def create_lease(self, key: str, holder: str, only_new: bool = True) -> bool:
        """Write the lease for `key` naming `holder`; with `only_new` only if none exists
        (a conditional create, `If-None-Match: *`): False when another holds it."""
        from botocore.exceptions import ClientError

        args: dict[str, Any] = {"IfNoneMatch": "*"} if only_new else {}
        try:
            with _errors(f"PUT lease {key}", passing=ClientError):
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=self.name(LEASES + key),
                    Body=json.dumps({"holder": holder}).encode(),
                    ContentType="application/json",
                    **args,
                )
        except ClientError as exc:
            if _status(exc) == 412:
                return False
            raise StoreUnavailable(f"PUT lease {key}: {_why(exc)}") from None
        return True

    def lease(self, key: str) -> tuple[str, float] | None:
        """Who holds the lease for `key` and for how long it has not been renewed, by the
        store's own clock (its Date against the lease's Last-Modified: no clock skew)."""
        from botocore.exceptions import ClientError

        try:
            with _errors(f"GET lease {key}", passing=ClientError):
                answer = self.client.get_object(Bucket=self.bucket, Key=self.name(LEASES + key))
                body = answer["Body"].read(4096)
        except ClientError as exc:
            if _status(exc) == 404:
                return None
            raise StoreUnavailable(f"GET lease {key}: {_why(exc)}") from None
        headers = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        try:
            now = email.utils.parsedate_to_datetime(headers["date"]).timestamp()
            holder = json.loads(body)["holder"]
        except (KeyError, ValueError, TypeError):
            return ("?", LEASE_TTL)  # unreadable: treat as expired
        if not isinstance(holder, str) or len(holder) > 300 or not holder.isprintable():
            return ("?", LEASE_TTL)  # not what a unit writes: expired
        return holder, max(0.0, now - answer["LastModified"].timestamp())

    def delete_lease(self, key: str) -> None:
        with _errors(f"DELETE lease {key}"):
            self.client.delete_object(Bucket=self.bucket, Key=self.name(LEASES + key))

    def keys(self, prefix: str) -> Iterator[str]:
        with _errors(f"LIST {prefix}"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.name(prefix.rstrip("/") + "/")
            )
            for page in pages:
                for item in page.get("Contents", []):
                    key = item["Key"][len(self.prefix) :]
                    if not key.startswith(LEASES):
                        yield key


def _meta_pieces(meta: Meta) -> dict[str, str]:
    encoded = base64.urlsafe_b64encode(
        json.dumps(meta.to_dict(), separators=(",", ":")).encode()
    ).decode()
    pieces = [encoded[i : i + META_PIECE] for i in range(0, len(encoded), META_PIECE)]
    if len(pieces) > META_PIECES:  # a very long URL: keep what checks the bytes
        short = Meta(
            meta.url[:200],
            meta.size,
            meta.fetched,
            meta.checked,
            sha256=meta.sha256,
            keep=meta.keep,
            shared=meta.shared,
        )
        return _meta_pieces(short)
    return {f"al-meta-{i}": piece for i, piece in enumerate(pieces)}


def _meta_from(metadata: dict[str, str]) -> Meta:
    pieces = []
    for i in range(META_PIECES):
        if (piece := metadata.get(f"al-meta-{i}")) is None:
            break
        pieces.append(piece)
    if not pieces:
        raise KeyError("al-meta-0")
    return Meta.from_json(base64.urlsafe_b64decode("".join(pieces)))


def _status(exc: Exception) -> int | None:
    """The HTTP status of a botocore error (its `response` may be None or odd)."""
    response = getattr(exc, "response", None)
    meta = response.get("ResponseMetadata") if isinstance(response, dict) else None
    status = meta.get("HTTPStatusCode") if isinstance(meta, dict) else None
    return status if isinstance(status, int) else None


def _why(exc: Exception) -> str:
    """What went wrong, in one line without credentials. botocore's errors carry a
    `response` that may be None (a read timeout) or not a mapping."""
    response = getattr(exc, "response", None)
    error = response.get("Error") if isinstance(response, dict) else None
    if isinstance(error, dict):
        text = f"{error.get('Code', '')} {error.get('Message', '')}".strip()
    else:
        text = ""
    return redact(text or str(exc) or type(exc).__name__)


@contextlib.contextmanager
def _errors(
    what: str, passing: type[Exception] | tuple[type[Exception], ...] = ()
) -> Iterator[None]:
    """botocore's and the network's errors as one `StoreUnavailable` naming the call."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except passing:
        raise
    except (BotoCoreError, ClientError, Boto3Error, OSError) as exc:
        if isinstance(exc, StoreUnavailable):
            raise
        raise StoreUnavailable(f"{what}: {_why(exc)}") from None


class _CopyIn:
    """How `ObjectStore` takes what another unit uploaded: the object is copied to this
    disk only when it can be tied to upstream (a digest from a signed index or feed, or the
    fleet's record), checked while it is copied, one copy per key at a time. It uses the
    store's `local`, `bucket`, `fleet_key`, `refusals`, `counts`, `_in_store` and its
    health."""

    _locks: dict[str, threading.Lock]
    _guard: threading.Lock

    @contextlib.contextmanager
    def _one_at_a_time(self, key: str) -> Iterator[None]:
        """One copy from the store per key at a time on this unit."""
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield
        with self._guard:
            if not lock.locked():
                self._locks.pop(key, None)

    def adopt(self, key: str, expect: Expect) -> Entry | None:
        """This disk's entry, or the store's object copied in when it can be tied to
        upstream: its bytes match `expect` (a digest from a signed index or feed), or its
        fleet record verifies (`FleetKey`). Anything else is refused and counted."""
        entry = self.local.lookup(key)
        if entry is not None or not self._usable():
            return entry
        found = self.inspect(key)
        return None if found is None else self.copy_in(key, expect, found)

    def inspect(self, key: str) -> tuple[Meta, str | None] | None:
        """The store's object for `key` (its checked metadata and record), or None: none,
        one refused, or the store away. The quick half of `adopt` (one HEAD): callers
        that must not wait on a hung store give it a deadline."""
        try:
            found = self.bucket.head(key)
        except StoreUnavailable as exc:
            self._failed(exc)
            return None
        except BadObject as exc:
            self._answered()
            self.refusals.refuse("bucket", "metadata", key, f": {exc}")
            return None
        self._answered()
        if found is None:
            self.counts["misses"] += 1
        return found

    def copy_in(self, key: str, expect: Expect, found: tuple[Meta, str | None]) -> Entry | None:
        """The object `inspect` found, copied to this disk if it can be tied to upstream."""
        with self._one_at_a_time(key):
            entry = self.local.lookup(key)  # another request copied it meanwhile
            if entry is not None:
                return entry
            return self._copy_from_store(key, expect, found)

    def _copy_from_store(
        self, key: str, expect: Expect, found: tuple[Meta, str | None]
    ) -> Entry | None:
        meta, record = found
        name = self.bucket.name(key)
        vouched = self.fleet_key is not None and self.fleet_key.verifies(
            record, name, meta.size, meta.sha256 or "", meta.keep
        )
        checkable = expect.algorithm is not None and bool(expect.digest)
        if not vouched and not checkable:
            reason = "record" if record is not None and self.fleet_key is not None else None
            self.refusals.refuse("bucket", reason or "unverifiable", key)
            return None
        if expect.size is not None and meta.size != expect.size:
            self.refusals.refuse("bucket", "size", key, f": {meta.size}, not {expect.size}")
            return None
        try:
            temp = self.local.create_temp(key)
        except Unstorable as exc:
            log.warning("object store: %s not copied to local disk: %s", key, exc)
            return None
        if checkable and expect.algorithm not in temp.digests:
            temp.digests[str(expect.algorithm)] = hashlib.new(str(expect.algorithm))
        try:
            self.bucket.download(key, temp, limit=meta.size)
        except StoreUnavailable as exc:
            self.local.discard(temp)
            self._failed(exc)
            return None
        except OSError as exc:  # the local disk: full, or gone
            self.local.discard(temp)
            log.warning("object store: %s not copied to local disk: %s", key, exc)
            return None
        got = temp.hexdigests()
        if checkable and got[str(expect.algorithm)] != str(expect.digest).lower():
            self.local.discard(temp)
            self.refusals.refuse("bucket", "digest", key, f": not the {expect.source or 'index'}'s")
            return None
        if vouched and got["sha256"] != meta.sha256:  # the unit's record, other bytes
            self.local.discard(temp)
            self.counts["corrupt"] += 1
            self.refusals.refuse("bucket", "digest", key, ": not the bytes its record names")
            with contextlib.suppress(StoreUnavailable):
                self.bucket.delete(key)
            return None
        now = time.time()
        adopted = Meta(
            url=meta.url,
            size=temp.size,
            fetched=min(meta.fetched, now),
            checked=now,
            etag=meta.etag,
            last_modified=meta.last_modified,
            content_type=meta.content_type,
            sha256=got.pop("sha256"),
            digests={k: v for k, v in got.items() if k in ("md5", "sha1", "sha512")} or None,
            keep=meta.keep and vouched,  # only the fleet's own record says kept
            shared=True,
        )
        try:
            entry = self.local.commit(temp, adopted)
        except (Mismatch, OSError) as exc:  # the local disk: full, or gone
            log.warning("object store: %s not copied to local disk: %s", key, exc)
            return None
        self.counts["hits"] += 1
        self._in_store.add(key)
        return entry


class _PendingUploads:
    """The shared entries `ObjectStore` could not upload (the store away): kept in
    `_pending` and written down (`_journal`, one per process of the unit), so that they are
    uploaded once the store answers again, after a restart too. It uses the store's
    `local`, `bucket`, `counts`, `_in_store` and its health (`_usable`, `_failed`,
    `_answered`)."""

    _pending: set[str]
    _journal: Path

    def _read_journal(self) -> set[str]:
        try:
            return {line for line in self._journal.read_text().splitlines() if line}
        except OSError:
            return set()

    def _write_journal(self) -> None:
        """The pending keys, replaced atomically (a small file: the outage's new files)."""
        try:
            self._journal.parent.mkdir(parents=True, exist_ok=True)
            if not self._pending:
                self._journal.unlink(missing_ok=True)
                return
            tmp = self._journal.with_name(self._journal.name + ".tmp")
            tmp.write_text("".join(f"{k}\n" for k in sorted(self._pending)))
            os.replace(tmp, self._journal)
        except OSError as exc:
            log.warning("object store: cannot write %s: %s", self._journal, exc)

    def _pend(self, key: str) -> None:
        if key not in self._pending:
            self._pending.add(key)
            self._write_journal()

    def _upload_pending(self) -> None:
        """Shared entries committed while the store was away: uploaded now, so that the
        unit's disk is not their only copy (the journal keeps them across restarts)."""
        for key in sorted(self._pending):
            entry = self.local.held(key)
            if entry is not None:
                try:
                    self.bucket.upload(entry.key, entry.path, entry.meta, self._record(entry))
                except StoreUnavailable as exc:
                    self._failed(exc)
                    return
                self.counts["uploads"] += 1
                self._in_store.add(key)
            self._pending.discard(key)
        self._write_journal()

    def catch_up(self) -> bool:
        """Upload what waits (`share` during an outage) once the store may be asked
        again, without waiting for the next request that asks it: True when nothing is
        left to upload."""
        if not self._pending:
            return True
        if not self._usable():
            return False
        try:
            self.bucket.ensure()
        except StoreUnavailable as exc:
            self._failed(exc)
            return False
        self._answered()
        if self._pending:
            self._upload_pending()
        return not self._pending


class _FleetLeases:
    """One upstream fetch per key for the units sharing the bucket: a lease object per key
    (`Bucket.create_lease`), renewed while its download runs and taken over once it has
    not been for `lease_ttl` (its unit died). A `local` claim is the disk's lock among this
    unit's workers only (`FilesystemStore.claim`). It uses the store's `local`, `bucket`,
    `refusals` and its health."""

    unit: str  # named in the leases this unit holds
    lease_ttl: float
    _held: dict[str, float]

    def claim(self, key: str, local: bool = False) -> str | None:
        """None when this unit should fetch `key`: it now holds the lease (a conditional
        create), or the store is away (each unit for itself). Otherwise the holder's
        name: another unit is fetching it, wait for the object. A lease not renewed for
        `lease_ttl` (its unit died) is taken over. `local`: the disk's lock among this
        unit's workers only, never the bucket (a volatile index: each unit its own)."""
        if local:
            return self.local.claim(key)
        if not self._usable():
            return None
        try:
            if self._create(key):
                return None
            found = self.bucket.lease(key)
            if self._ours(key, found):
                self._answered()
                return None
            if found is None or found[1] >= self.lease_ttl:
                if found is not None:
                    log.info("object store: taking over %s from %s (lease expired)", key, found[0])
                    self.bucket.delete_lease(key)
                if self._create(key):
                    return None
                found = self.bucket.lease(key) or ("?", 0.0)
            self._answered()
            return found[0]
        except StoreUnavailable as exc:
            self._failed(exc)
            return None

    def _create(self, key: str) -> bool:
        """The conditional create, then a look at who holds it once concurrent creates
        have landed: Swift checks `If-None-Match` when a PUT starts, so two units asking
        at the same instant may both succeed; the newer write wins, and both read it."""
        started = time.monotonic()
        if not self.bucket.create_lease(key, self.unit):
            return False
        time.sleep(LEASE_SETTLE)
        found = self.bucket.lease(key)
        if found is not None and found[0] != self.unit:
            return False  # another unit's create landed after ours: it fetches
        self._held[key] = started
        return True

    def _ours(self, key: str, found: tuple[str, float] | None) -> bool:
        """A lease naming this unit that no request of ours holds: one a claim got after
        its caller stopped waiting. Taken, rather than waited on as if another's."""
        if found is None or found[0] != self.unit:
            return False
        self._held[key] = time.monotonic() - found[1]
        return True

    def renew(self, key: str) -> None:
        """Renew the lease while it is still ours: one taken over meanwhile (this unit
        was too slow to renew) is left to its new holder, never written back."""
        if key not in self._held or not self._usable():
            return
        try:
            if self._may_be_taken(key) and not self._still_mine(key):
                return
            started = time.monotonic()
            self.bucket.create_lease(key, self.unit, only_new=False)
            self._held[key] = started
        except StoreUnavailable as exc:
            self._failed(exc)

    def release(self, key: str, local: bool = False) -> None:
        if local:
            self.local.release(key)
            return
        if key not in self._held:
            return
        try:
            if not self._may_be_taken(key) or self._still_mine(key):
                self.bucket.delete_lease(key)
        except StoreUnavailable as exc:
            self._failed(exc)  # it expires by itself
        self._held.pop(key, None)

    def _may_be_taken(self, key: str) -> bool:
        """Whether another unit may have taken the lease over: not while our last write
        of it started less than half its time ago (a takeover needs it older than the
        whole), so the common case pays no read before a renewal or a release."""
        return time.monotonic() - self._held.get(key, 0.0) >= self.lease_ttl / 2

    def _still_mine(self, key: str) -> bool:
        found = self.bucket.lease(key)
        if found is not None and found[0] == self.unit:
            return True
        self._held.pop(key, None)
        holder = found[0] if found is not None else "nobody"
        self.refusals.refuse("lease", "stolen", key, f": now held by {holder}")
        return False


class ObjectStore(_CopyIn, _PendingUploads, _FleetLeases):
    """`Store` over a shared bucket, the local `FilesystemStore` in front (see the module).
    How it copies objects in, keeps what it could not upload and holds the fleet's leases
    are the classes it is made of, above."""

    def __init__(
        self,
        local: FilesystemStore,
        bucket: Bucket,
        clock: Any = time.monotonic,
        lease_ttl: float = LEASE_TTL,
        fleet_key: FleetKey | None = None,
    ) -> None:
        self.local = local
        self.bucket = bucket
        self.clock = clock
        self.lease_ttl = lease_ttl
        self.fleet_key = fleet_key
        self.refusals = local.refusals  # one count per unit, whichever side refused
        self.unit = f"{socket.gethostname()}:{os.getpid()}"  # named in the leases it holds
        # leases this unit holds: when its last write of each started (monotonic seconds)
        self._held: dict[str, float] = {}
        self._failed_at: float | None = None
        self.remote_error: str | None = None
        self.counts = {"hits": 0, "misses": 0, "uploads": 0, "errors": 0, "corrupt": 0}
        self._locks: dict[str, threading.Lock] = {}
        self._pending: set[str] = set()  # shared entries not uploaded yet (store away)
        # ... also written down, so that a restart during an outage still uploads them:
        # one journal per process of the unit (a worker's successor takes it over)
        name = local.holder if local.holder.startswith("worker-") else "main"
        self._journal = StateDir(local.root).pending_uploads(name)
        self._in_store: set[str] = set()  # keys this process uploaded or copied in
        self._guard = threading.Lock()

    # -- the store's health ----------------------------------------------------------
    def connect(self) -> None:
        """Make sure the bucket exists; a store that does not answer is noted, not fatal.
        Entries an earlier run could not upload (its journal) are uploaded now, or once
        the store answers."""
        self._pending |= {k for k in self._read_journal() if self.local.held(k) is not None}
        try:
            self.bucket.ensure()
            self._answered()
        except StoreUnavailable as exc:
            self._failed(exc)
            return
        if self._pending:
            log.info(
                "object store: uploading %d entries an earlier run could not", len(self._pending)
            )
            self._upload_pending()

    def _usable(self) -> bool:
        return self._failed_at is None or self.clock() - self._failed_at >= RETRY_AFTER

    def available(self) -> bool:
        """Worth asking now (no I/O): not failed in the last `RETRY_AFTER` seconds."""
        return self._usable()

    def trip(self, why: str) -> None:
        """The store did not answer in time (the caller gave up on it): not asked again
        for `RETRY_AFTER` seconds; hits and misses go on without it."""
        self._failed(why)

    def _record(self, entry: Entry) -> str | None:
        meta = entry.meta
        if self.fleet_key is None or meta.sha256 is None:
            return None
        return self.fleet_key.record(self.bucket.name(entry.key), meta.size, meta.sha256, meta.keep)

    def _failed(self, exc: Exception | str) -> None:
        why = redact(str(exc))
        if self.remote_error is None:
            log.warning("object store unavailable (%s): serving from local disk and upstream", why)
        self._failed_at, self.remote_error = self.clock(), why
        self.counts["errors"] += 1

    def _answered(self) -> None:
        was_down = self.remote_error is not None
        self._failed_at = self.remote_error = None
        if was_down:
            log.info("object store answers again; uploading %d entries", len(self._pending))
            self._upload_pending()

    def remote_problem(self) -> str | None:
        """Why the shared store is not used now (None: it is)."""
        return self.remote_error

    def shared_status(self) -> dict[str, Any]:
        """For /healthz, the status page and metrics: is the store used, what it did."""
        return {
            "type": "s3",
            "bucket": self.bucket.bucket,
            "up": self.remote_error is None,
            "problem": self.remote_error,
            "pending_uploads": len(self._pending),
            **self.counts,
        }

    # -- reading ---------------------------------------------------------------------
    def lookup(self, key: str) -> Entry | None:
        """This disk's entry: what this unit wrote or checked itself. Never the bucket's:
        what a unit keeps for itself (the curated feed, its key, snapshots, volatile
        indexes) is not taken from where anyone with the credentials can write."""
        return self.local.lookup(key)

    def held(self, key: str) -> Entry | None:
        return self.local.held(key)

    def open_read(self, entry: Entry) -> BinaryIO:
        return self.local.open_read(entry)

    def read_bytes(self, entry: Entry) -> bytes:
        return self.local.read_bytes(entry)

    def local_file(self, entry: Entry) -> AbstractContextManager[Path]:
        return self.local.local_file(entry)

    def keys_under(self, prefix: str) -> Iterator[str]:
        """This unit's keys and the store's (other units' downloads) below `prefix`."""
        check_key(prefix)
        keys = set(self.local.keys_under(prefix))
        if self._usable():
            try:
                keys.update(self.bucket.keys(prefix))
                self._answered()
            except StoreUnavailable as exc:
                self._failed(exc)
        yield from sorted(keys)

    def entries(self) -> Iterator[Entry]:
        """The entries on this unit's disk (the store's are listed by `keys_under`)."""
        return self.local.entries()

    def listing(self) -> Iterator[tuple[str, int, float]]:
        """This unit's disk, as `entries` (unchecked, cheap)."""
        return self.local.listing()

    # -- writing ---------------------------------------------------------------------
    def create_temp(self, key: str) -> TempFile:
        return self.local.create_temp(key)

    def open_temp(self, temp: TempFile) -> BinaryIO:
        return self.local.open_temp(temp)

    def commit(self, temp: TempFile, meta: Meta) -> Entry:
        """Commit locally (checked); `share` uploads it once its clients have it."""
        return self.local.commit(temp, meta)

    def share(self, entry: Entry) -> bool:
        """Upload a shared entry for the other units; True once the store holds it (then
        this disk's copy may be evicted, kept or not). A store that fails is logged and
        the entry stays local (the store is a cache), uploaded when the store is back."""
        if not entry.meta.shared:
            return False
        if not self._usable():
            self._pend(entry.key)
            return False
        try:
            self.bucket.upload(entry.key, entry.path, entry.meta, self._record(entry))
        except StoreUnavailable as exc:
            self._pend(entry.key)
            self._failed(exc)
            return False
        self.counts["uploads"] += 1
        self._in_store.add(entry.key)
        self._answered()
        return True

    def elsewhere(self, key: str) -> bool:
        """The store is known to hold `key` (uploaded or copied in by this process): this
        disk's copy may be evicted even when kept."""
        return key in self._in_store

    def discard(self, temp: TempFile) -> None:
        self.local.discard(temp)

    def update_meta(self, entry: Entry) -> None:
        self.local.update_meta(entry)

    def remove(self, key: str) -> None:
        """Gone for every unit: this disk's copy and the store's object."""
        self.local.remove(key)
        if key in self._pending:
            self._pending.discard(key)
            self._write_journal()
        self._in_store.discard(key)
        if self._usable():
            try:
                self.bucket.delete(key)
                self._answered()
            except StoreUnavailable as exc:
                self._failed(exc)

    def evict(self, key: str) -> None:
        """Only this disk's copy (the store keeps the object for every unit)."""
        self.local.evict(key)

    def keep_partial(self, temp: TempFile, info: dict[str, object]) -> None:
        self.local.keep_partial(temp, info)

    def resume_partial(
        self, key: str, algorithms: Iterable[str] = ()
    ) -> tuple[TempFile, dict[str, object]] | None:
        return self.local.resume_partial(key, algorithms)

    # -- housekeeping ----------------------------------------------------------------
    def scan(self, sweep: bool = True) -> Iterator[tuple[str, int, float, bool]]:
        return self.local.scan(sweep)

    def free_bytes(self) -> int | None:
        return self.local.free_bytes()

    def problem(self) -> str | None:
        """The local disk's problem only: with the store down the unit still serves."""
        return self.local.problem()

    def scratch(self, prefix: str = "work-") -> AbstractContextManager[Path]:
        return self.local.scratch(prefix)


def s3_client(endpoint: str, region: str, credentials: Credentials) -> Any:
    """A boto3 S3 client with short timeouts and one retry: a slow store must not hold a
    request for long (the unit then goes on without it)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=credentials.access_key,
        aws_secret_access_key=credentials.secret_key,
        config=Config(
            connect_timeout=3,
            read_timeout=20,
            retries={"max_attempts": 2, "mode": "standard"},
            max_pool_connections=32,
            s3={"addressing_style": "path"},
        ),
    )
