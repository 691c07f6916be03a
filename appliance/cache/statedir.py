"""The unit's own state in its cache directory, `<cache.dir>/.state/`: every path in it.

No other module spells the folder's name (`tests/unit/test_statedir.py` holds them to it):
each asks `StateDir(cache.dir)` for its path. What is here belongs to this unit alone
(never in a shared object store, never a cache key: keys have no dot segments, and the
store's walks skip the folder); each owner makes its files again when they are missing.

    service.lock               the running service's claim on the directory (commands.claim)
    sync.lock, seed.lock       one sync or publish, one seed at a time (jobs.lock)
    leases/<stripe>            one download per key among this directory's processes
                               (cache.store: `FilesystemStore.claim`)
    workers/<index>.sock       each worker's Unix socket, for its siblings (web.workers)
    tls/cert.pem, key.pem      the self-signed certificate (web.tls)
    apt-index.sqlite           what the cached apt indexes list (apt.catalog)
    history-<worker>.json      the status page's charts over 24 h (runtime, metrics)
    pending-uploads-<process>  shared entries a store outage kept local (cache.objectstore)

A `StateDir` of a relative directory (`StateDir(Path())`) gives the same names relative
to the cache directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

NAME = ".state"  # the folder in the cache directory


@dataclass(frozen=True)
class StateDir:
    """The paths of the state kept in `cache_dir`; nothing is created or read here."""

    cache_dir: Path

    @property
    def path(self) -> Path:
        return Path(self.cache_dir) / NAME

    @property
    def service_lock(self) -> Path:
        """Held (`flock`) by the service for its life; names the holder (JSON)."""
        return self.path / "service.lock"

    @classmethod
    def of_service_lock(cls, path: Path) -> StateDir | None:
        """The state directory whose service lock `path` is; None: `path` is not one."""
        state = cls(path.parent.parent)
        return state if state.service_lock == path else None

    def job_lock(self, job: str) -> Path:
        """Held (`flock`) while a job of this kind (`sync`, `seed`) runs."""
        return self.path / f"{job}.lock"

    @property
    def leases(self) -> Path:
        """A folder of lock files, keys sharing them by hash (`FilesystemStore.claim`)."""
        return self.path / "leases"

    def worker_socket(self, index: int) -> Path:
        """Where worker `index` listens for its siblings (mode 0600)."""
        return self.path / "workers" / f"{index}.sock"

    @property
    def tls(self) -> Path:
        """The self-signed certificate's folder: cert.pem, key.pem (0600)."""
        return self.path / "tls"

    @property
    def apt_index(self) -> Path:
        """The SQLite table of what the cached apt indexes list."""
        return self.path / "apt-index.sqlite"

    def history(self, worker: int | None) -> Path:
        """The status page's history of one worker process (a single process is worker 0):
        each writes its own."""
        return self.path / f"history-{worker or 0}.json"

    def pending_uploads(self, process: str) -> Path:
        """The journal of one process's shared entries not uploaded yet (`main`, or the
        worker's name: a worker's successor takes it over)."""
        return self.path / f"pending-uploads-{process}"
