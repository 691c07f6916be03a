"""The fleet's record of a shared object: an HMAC over its name, size, sha256 and class,
keyed with a secret the units share that is *not* the bucket's credential.

The bucket's credentials are handed to every unit and may be held by other tools (backups,
other applications): anyone holding them can write any object and any metadata. A unit
copies an object in only when it can tie it to upstream itself (a digest from a signed
index or feed) or when this record verifies: then a unit of the fleet, which checked the
bytes against upstream, wrote it. Without a fleet key only the first kind is copied in.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

KEY_BYTES = 16  # at least this much secret in the file


class FleetKey:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < KEY_BYTES:
            raise ValueError(f"a fleet key needs at least {KEY_BYTES} bytes of secret")
        self._secret = secret

    @classmethod
    def read(cls, path: Path) -> FleetKey:
        """The secret in `path` (surrounding whitespace ignored); the error names the file."""
        try:
            secret = path.read_bytes().strip()
        except OSError as exc:
            raise ValueError(f"{path}: cannot read the fleet key ({exc.strerror})") from None
        try:
            return cls(secret)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    def record(self, name: str, size: int, sha256: str, kept: bool) -> str:
        """The record for the object `name` (its full name in the bucket)."""
        message = f"archive-local/1\n{name}\n{size}\n{sha256}\n{'kept' if kept else 'cached'}"
        return hmac.new(self._secret, message.encode(), hashlib.sha256).hexdigest()

    def verifies(self, record: object, name: str, size: int, sha256: str, kept: bool) -> bool:
        if not isinstance(record, str):
            return False
        return hmac.compare_digest(record, self.record(name, size, sha256, kept))
