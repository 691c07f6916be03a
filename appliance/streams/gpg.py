"""OpenPGP through python-gnupg: verify upstream feeds, sign the appliance's own.

Verification runs in a private, throwaway GNUPGHOME that holds only the configured
keyring (binary or armored), so a signature is good only if one of those keys made
it. The signed content of a `.sjson` is taken from gpg's own output, never from a
hand-written parser.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from pathlib import Path

import gnupg

# python-gnupg logs every gpg failure itself (with tracebacks for broken pipes); the
# caller reports a SignatureError instead, in words an operator can act on.
logging.getLogger("gnupg").setLevel(logging.CRITICAL)


class SignatureError(Exception):
    """A missing, bad or untrusted signature: nothing from that document is used."""


def _gpg(home: Path) -> gnupg.GPG:
    gpg = gnupg.GPG(gnupghome=str(home))
    gpg.encoding = "utf-8"
    return gpg


class Verifier:
    def __init__(self, keyring: Path) -> None:
        try:
            material = Path(keyring).read_bytes()
        except OSError as exc:
            raise SignatureError(f"keyring {keyring}: {exc.strerror}") from None
        self._home = Path(tempfile.mkdtemp(prefix="archive-local-verify-"))
        self._gpg = _gpg(self._home)
        imported = self._gpg.import_keys(material)
        self.fingerprints = {fp.upper() for fp in imported.fingerprints if fp}
        if not self.fingerprints:
            self.close()
            raise SignatureError(f"keyring {keyring}: no OpenPGP public key in it")

    @classmethod
    async def open(cls, keyring: Path) -> Verifier:
        """Built in a thread: importing the keyring runs gpg."""
        return await asyncio.to_thread(cls, keyring)

    def close(self) -> None:
        shutil.rmtree(self._home, ignore_errors=True)

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, result: gnupg.Verify, what: str) -> None:
        signer = {(result.fingerprint or "").upper(), (result.pubkey_fingerprint or "").upper()}
        if not result.valid or not (signer & self.fingerprints):
            why = result.status or "no valid signature"
            raise SignatureError(f"{what}: {why}")

    def clearsigned(self, data: bytes, what: str = "document") -> bytes:
        """The content of a clearsigned (`.sjson`) document, if a trusted key signed it."""
        if b"-----BEGIN PGP SIGNED MESSAGE-----" not in data[:200]:
            raise SignatureError(f"{what}: not clearsigned")
        try:
            result = self._gpg.decrypt(data)
        except OSError as exc:  # gpg quit while being fed a malformed message
            raise SignatureError(f"{what}: gpg rejected it ({exc})") from None
        self._check(result, what)
        return result.data

    def detached(self, data: bytes, signature: bytes, what: str = "document") -> None:
        """Check a `.json` against its `.json.gpg`."""
        fd, sig_path = tempfile.mkstemp(dir=self._home, suffix=".sig")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(signature)
            result = self._gpg.verify_data(sig_path, data)
        except OSError as exc:  # gpg quit before reading all of the data: no valid signature
            raise SignatureError(f"{what}: gpg rejected the signature ({exc})") from None
        finally:
            os.unlink(sig_path)
        self._check(result, what)


class Signer:
    """The appliance's own key, in a persistent GNUPGHOME (mode 0700)."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._gpg = _gpg(self.home)

    @classmethod
    async def open(cls, home: Path) -> Signer:
        """Built in a thread: python-gnupg runs gpg to learn its version."""
        return await asyncio.to_thread(cls, home)

    @property
    def fingerprint(self) -> str | None:
        keys = self._gpg.list_keys(secret=True)
        return keys[0]["fingerprint"] if keys else None

    def ensure_key(self, uid: str = "archive-local image feed <archive-local@localhost>") -> str:
        """The signing key's fingerprint, creating the key on first use."""
        if (fp := self.fingerprint) is not None:
            return fp
        params = self._gpg.gen_key_input(
            key_type="EDDSA",
            key_curve="ed25519",
            key_usage="sign",
            name_real=uid.split(" <")[0],
            name_email=uid.split("<")[-1].rstrip(">"),
            expire_date=0,
            no_protection=True,
        )
        key = self._gpg.gen_key(params)
        if not key.fingerprint:
            raise SignatureError(f"could not create a signing key: {key.stderr.strip()[-300:]}")
        return key.fingerprint

    def _sign(self, data: bytes, **kw: bool) -> bytes:
        fp = self.ensure_key()
        result = self._gpg.sign(data, keyid=fp, **kw)
        if not result.data:
            raise SignatureError(f"signing failed: {result.status}")
        return result.data

    def clearsign(self, data: bytes) -> bytes:
        return self._sign(data, clearsign=True)

    def detach_sign(self, data: bytes) -> bytes:
        """An armored detached signature (`.json.gpg`)."""
        return self._sign(data, clearsign=False, detach=True)

    def public_key(self, armor: bool) -> bytes:
        fp = self.ensure_key()
        exported = self._gpg.export_keys(fp, armor=armor)
        return exported if isinstance(exported, bytes) else exported.encode()
