"""The fetch locks among the processes on one cache directory: an exclusive `flock` on
one of `STRIPES` lock files, chosen by the key's hash (a bounded number of files; keys
that share a stripe rarely wait on each other). A process that dies lets go by itself.

Locks belong to an open file description, so a second `open()` + `flock` of a stripe
this process already holds would fail as if another process held it, and the process
would wait on itself. A stripe held here is therefore counted: each key under it is
ours at once, and the descriptor closes (the lock goes) with the last key released.
Other processes, and other `StripeLocks` on the same directory, still find it locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
from pathlib import Path

STRIPES = 4096


def stripe_of(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4]) % STRIPES


class StripeLocks:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._held: dict[int, tuple[int, set[str]]] = {}  # stripe -> (descriptor, its keys)
        self._opening: dict[int, threading.Event] = {}  # stripes a thread is locking now
        self._mutex = threading.Lock()  # claims run on executor threads; held for dicts only
        self._made = False  # the directory exists (made once, not stat'ed per claim)

    def claim(self, key: str, holder: str) -> str | None:
        """None: `key` is ours now. Else who holds it (what the holder wrote in the lock
        file; `holder` when it is this very key, held here already). The file system
        calls run outside the mutex: claims of other stripes never wait on them."""
        stripe = stripe_of(key)
        while True:
            with self._mutex:
                if (held := self._held.get(stripe)) is not None:
                    if key in held[1]:
                        return holder
                    held[1].add(key)
                    return None
                opening = self._opening.get(stripe)
                if opening is None:
                    self._opening[stripe] = threading.Event()
                    break
            opening.wait()  # another thread of ours is locking this stripe: then look again
        fd = None
        try:
            other, fd = self._lock_file(stripe, holder)
        finally:
            with self._mutex:
                if fd is not None:
                    self._held[stripe] = (fd, {key})
                self._opening.pop(stripe).set()
        return other

    def _lock_file(self, stripe: int, holder: str) -> tuple[str | None, int | None]:
        """(None, descriptor) once the stripe's file is locked and names `holder`;
        (who holds it, None) when another process does; (None, None) when there is no
        file to lock (fetch, at worst twice)."""
        path = self.directory / f"{stripe:04d}"
        try:
            if not self._made:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._made = True
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return None, None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:  # who wrote the file last: the holder, unless it has only just locked
                other = os.pread(fd, 200, 0).decode(errors="replace").strip()
            except OSError:
                other = ""
            os.close(fd)
            return other or "another process on this cache", None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode(), 0)
        return None, fd

    def release(self, key: str) -> None:
        stripe = stripe_of(key)
        with self._mutex:
            held = self._held.get(stripe)
            if held is None or key not in held[1]:
                return
            held[1].discard(key)
            if held[1]:
                return  # other keys of this stripe are still being fetched here
            del self._held[stripe]
        with contextlib.suppress(OSError):
            os.close(held[0])  # closing the descriptor unlocks it
