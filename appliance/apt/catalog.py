"""What the cached apt indexes say of every file they list: an on-disk table (SQLite).

The engine asks `expect(key)` before it downloads a file no expectation is known for;
a cached Packages, Sources or Release that lists the key answers with its size and
digest, and the download is checked against them before it enters the cache. Each
committed index is parsed in a worker thread (`committed`) and replaces what the
previous version of the same index (`IndexFile.logical`) said, so the table always
reflects the newest copy of every index. The same table tells which cached pool and
by-hash files no index references any more (`unreferenced`, for expiry).

The table is local state beside the cache (`StateDir.apt_index`), rebuilt
from the cached indexes when it is missing. A Packages file of 60,000 packages is
about 7 MB of rows on disk and none in memory: lookups are one indexed query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from appliance.apt.indexes import (
    FILE_FIELDS,
    IndexFile,
    Listed,
    classify,
    open_text,
    package_files,
    release_files,
    stanzas,
)
from appliance.apt.paths import by_hash_digest
from appliance.cache.route import Expect
from appliance.cache.statedir import StateDir
from appliance.cache.store import Entry, Store

log = logging.getLogger(__name__)

_BY_HASH_NAMES = {"sha256": "SHA256", "sha512": "SHA512", "md5": "MD5Sum"}
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS indexes (
    logical TEXT PRIMARY KEY, key TEXT NOT NULL, sha256 TEXT, root TEXT NOT NULL,
    fetched REAL NOT NULL, files INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    key TEXT NOT NULL, logical TEXT NOT NULL, size INTEGER NOT NULL,
    algorithm TEXT NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (key, logical)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS files_by_index ON files(logical);
CREATE TABLE IF NOT EXISTS unreferenced (key TEXT PRIMARY KEY, since REAL NOT NULL)
    WITHOUT ROWID;
"""


@dataclass
class ExpiryReport:
    """What an expiry run found: counts and bytes; `removed` are keys (bounded list)."""

    dry_run: bool
    checked: int = 0
    referenced: int = 0
    unindexed: int = 0  # pool files of repositories with no cached index: left alone
    waiting: int = 0  # unreferenced, within the grace period
    expired: int = 0
    expired_bytes: int = 0
    removed: list[str] = field(default_factory=list)
    seconds: float = 0.0


def candidate_root(key: str) -> str | None:
    """The repository root of a pool or by-hash file (what expiry may remove), else None."""
    segments = key.split("/")
    if by_hash_digest(tuple(segments)) is not None and "dists" in segments:
        return "/".join(segments[: segments.index("dists")])
    if "pool" in segments[1:-1]:
        return "/".join(segments[: segments.index("pool", 1)])
    return None


class IndexCatalog:
    """The engine's `Rules` for apt: expectations from cached indexes, and references."""

    def __init__(self, cache_dir: Path, store: Store) -> None:
        self.path = StateDir(cache_dir).apt_index  # the unit's own state, local
        self.store = store
        self._local = threading.local()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="apt-index")
        self._pending: set[asyncio.Future[None]] = set()
        self.parsed = 0  # index files parsed since start
        self.problems = 0  # index files that could not be read
        self._ready = False
        self._init_lock = threading.Lock()

    # -- connections (one per thread; WAL lets readers run while the writer writes) --
    def _db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            with self._init_lock:
                self._init(conn)
            self._local.conn = conn
        return conn

    def _init(self, conn: sqlite3.Connection) -> None:
        """Create (or replace an outdated) schema, once per process."""
        if self._ready:
            return
        if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            # another layout (an older version): the table is rebuilt from the cache
            conn.executescript(
                "DROP TABLE IF EXISTS files; DROP TABLE IF EXISTS indexes; "
                "DROP TABLE IF EXISTS unreferenced;"
            )
        conn.executescript(_SCHEMA)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._ready = True

    def close(self) -> None:
        self._writer.shutdown(wait=True, cancel_futures=True)

    async def drain(self) -> None:
        """Wait until every committed index has been parsed (tests, shutdown)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    # -- Rules ----------------------------------------------------------------------
    async def expect(self, key: str) -> Expect | None:
        index = classify(key)
        if index is not None and index.kind == "release":
            return None  # nothing lists a Release: no query
        if self._pending:  # an index committed here and not parsed yet may list `key`
            await self.drain()
        return await asyncio.get_running_loop().run_in_executor(None, self.lookup, key)

    def lookup(self, key: str) -> Expect | None:
        """What the newest cached index listing `key` says it must be (blocking)."""
        try:
            row = (
                self._db()
                .execute(
                    "SELECT f.size, f.algorithm, f.digest, i.key FROM files f "
                    "JOIN indexes i ON i.logical = f.logical WHERE f.key = ? "
                    "ORDER BY i.fetched DESC LIMIT 1",
                    (key,),
                )
                .fetchone()
            )
        except sqlite3.Error as exc:
            log.warning("apt index table: %s", exc)
            return None
        if row is None:
            return None
        return Expect(size=row[0], algorithm=row[1], digest=row[2], source=row[3])

    def committed(self, entry: Entry) -> None:
        index = classify(entry.key)
        if index is None:
            return
        future = asyncio.wrap_future(self._writer.submit(self._learn_safely, entry, index))
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)

    # -- learning -------------------------------------------------------------------
    def _learn_safely(self, entry: Entry, index: IndexFile) -> None:
        try:
            self._learn(entry, index)
        except sqlite3.DatabaseError as exc:  # full disk, or a damaged table: rebuilt later
            self.problems += 1
            log.warning("apt index table: cannot record %s: %s", entry.key, exc)
            if "not a database" in str(exc) or "malformed" in str(exc):
                self._reset()

    def _reset(self) -> None:
        """Start a new table (the old one is damaged); `rebuild` fills it again."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        self._ready = False

    def _learn(self, entry: Entry, index: IndexFile) -> None:
        """Parse one committed index and replace what its previous version said."""
        db = self._db()
        logical = index.logical
        if index.kind == "by-hash":  # Packages or Sources: the same folder holds both
            logical += "/" + _sniff_kind(self.store, entry)
        row = db.execute(
            "SELECT sha256, fetched FROM indexes WHERE logical = ?", (logical,)
        ).fetchone()
        if row is not None and (
            (row[0] == entry.meta.sha256 and entry.meta.sha256) or row[1] > entry.meta.fetched
        ):
            return  # read before, or an older copy than the one the table reflects
        try:
            with self.store.open_read(entry) as fh:
                kind, listed = _read(fh, index)
        except (OSError, ValueError, EOFError) as exc:
            self.problems += 1
            log.info("apt index %s not read: %s", entry.key, exc)
            return
        if kind is None:
            return
        rows = list(_rows(listed, index, kind))
        with _transaction(db):
            db.execute("DELETE FROM files WHERE logical = ?", (logical,))
            db.executemany(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)",
                ((key, logical, item.size, item.algorithm, item.digest) for key, item in rows),
            )
            db.execute(
                "INSERT OR REPLACE INTO indexes VALUES (?, ?, ?, ?, ?, ?)",
                (logical, entry.key, entry.meta.sha256, index.root, entry.meta.fetched, len(rows)),
            )
        self.parsed += 1
        log.info("apt index %s: %d files listed", entry.key, len(rows))

    async def rebuild(self, keys: Iterable[str] | None = None) -> int:
        """Learn every cached index the table does not know yet.

        `keys`: what is cached, when the caller already walked the store (the service's
        start-up sweep); otherwise the store is walked here.
        """

        store = self.store

        def learn() -> int:
            if keys is None:
                entries: Iterable[Entry] = store.entries()
            else:
                looked_up = (store.lookup(k) for k in keys if classify(k) is not None)
                entries = (e for e in looked_up if e is not None)
            n = 0
            for entry in entries:
                if (index := classify(entry.key)) is not None:
                    self._learn_safely(entry, index)
                    n += 1
            return n

        return await asyncio.get_running_loop().run_in_executor(self._writer, learn)

    def forget_missing(self, exists: Callable[[str], bool]) -> int:
        """Drop what indexes no longer in the cache said (blocking)."""
        db = self._db()
        gone = [
            logical
            for logical, key in db.execute("SELECT logical, key FROM indexes").fetchall()
            if not exists(key)
        ]
        with _transaction(db):
            for logical in gone:
                db.execute("DELETE FROM files WHERE logical = ?", (logical,))
                db.execute("DELETE FROM indexes WHERE logical = ?", (logical,))
        return len(gone)

    # -- references (expiry) ---------------------------------------------------------
    def expire_plan(
        self, entries: Iterable[Entry], now: float, grace: float, dry_run: bool
    ) -> tuple[ExpiryReport, list[Entry]]:
        """Which unkept pool/by-hash entries no cached index has listed for `grace` seconds.

        Records when each was first seen unreferenced (not in a dry run).
        """
        db = self._db()
        report = ExpiryReport(dry_run)
        roots = {r for (r,) in db.execute("SELECT DISTINCT root FROM indexes")}
        since = dict(db.execute("SELECT key, since FROM unreferenced").fetchall())
        victims: list[Entry] = []
        seen_unreferenced: dict[str, float] = {}
        for entry in entries:
            root = candidate_root(entry.key)
            if root is None or entry.meta.keep:
                continue
            report.checked += 1
            if root not in roots:
                report.unindexed += 1
                continue
            listed = db.execute(
                "SELECT 1 FROM files WHERE key = ? LIMIT 1", (entry.key,)
            ).fetchone()
            if listed is not None:
                report.referenced += 1
                continue
            first = since.get(entry.key, now)
            seen_unreferenced[entry.key] = first
            if now - first >= grace:
                victims.append(entry)
                report.expired += 1
                report.expired_bytes += entry.meta.size
                if len(report.removed) < 1000:
                    report.removed.append(entry.key)
            else:
                report.waiting += 1
        if not dry_run:
            with _transaction(db):
                db.execute("DELETE FROM unreferenced")
                db.executemany(
                    "INSERT INTO unreferenced VALUES (?, ?)",
                    ((k, t) for k, t in seen_unreferenced.items()),
                )
        return report, victims

    def listed_by(self, keys: Iterable[str]) -> dict[str, str]:
        """Which Packages or Sources index lists each of `keys` (its `logical` name, the
        first by name when several do), for the status page's "what is cached" (blocking;
        keys no index lists are left out). Asked in chunks: one query per 500 keys."""
        out: dict[str, str] = {}
        wanted = list(keys)
        try:
            db = self._db()
            for i in range(0, len(wanted), 500):
                chunk = wanted[i : i + 500]
                rows = db.execute(
                    "SELECT key, MIN(logical) FROM files WHERE key IN "
                    f"({','.join('?' * len(chunk))}) AND logical NOT LIKE '%/Release' "
                    "GROUP BY key",
                    chunk,
                )
                out.update(rows.fetchall())
        except sqlite3.Error as exc:
            log.warning("apt index table: %s", exc)
        return out

    def stats(self) -> dict[str, int]:
        try:
            db = self._db()
            indexes, files = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(files), 0) FROM indexes"
            ).fetchone()
        except sqlite3.Error:
            indexes = files = 0
        return {
            "indexes": indexes,
            "files": files,
            "parsing": len(self._pending),
            "unreadable": self.problems,
        }


def _sniff_kind(store: Store, entry: Entry) -> str:
    """Packages or Sources, from the first paragraph of a by-hash copy."""
    try:
        with store.open_read(entry) as fh:
            first = next(stanzas(open_text(fh), FILE_FIELDS), {})
    except (OSError, ValueError, EOFError):
        return "unknown"
    return "Sources" if "Directory" in first and "Filename" not in first else "Packages"


def _read(fh: object, index: IndexFile) -> tuple[str | None, list[Listed]]:
    """(kind, listed files) of an index file; a by-hash copy is recognised by content."""
    text = open_text(fh)  # type: ignore[arg-type]
    if index.kind == "release":
        listed, by_hash = release_files(text)
        return ("release-by-hash" if by_hash else "release"), listed
    paragraphs = stanzas(text, FILE_FIELDS)
    first = next(paragraphs, None)
    if first is None:
        return None, []
    if "Filename" in first:
        kind = "Packages"
    elif "Directory" in first:
        kind = "Sources"
    else:
        return None, []  # a by-hash copy of something else (a small Release)
    if index.kind in ("packages", "sources") and kind.lower() != index.kind:
        return None, []

    def everything() -> Iterator[dict[str, str]]:
        yield first
        yield from paragraphs

    return kind, list(package_files(everything()))


def _rows(listed: list[Listed], index: IndexFile, kind: str) -> Iterator[tuple[str, Listed]]:
    """(cache key, what it must be) of every listed file."""
    for item in listed:
        yield f"{index.base}/{item.path}", item
        if kind == "release-by-hash":  # the same bytes under their by-hash names
            directory, _, _name = item.path.rpartition("/")
            folder = f"{index.base}/{directory}" if directory else index.base
            for algorithm, digest in ((item.algorithm, item.digest), *item.also):
                name = _BY_HASH_NAMES.get(algorithm)
                if name:
                    by_hash = Listed(item.path, item.size, algorithm, digest)
                    yield f"{folder}/by-hash/{name}/{digest}", by_hash


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
