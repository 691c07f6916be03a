"""A throwaway OpenPGP key driven through the gpg command line (test fixtures only)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


class ThrowawayKey:
    def __init__(self, base: Path, uid: str = "archive-local test <test@localhost>") -> None:
        self.home = base / "gnupg"
        self.home.mkdir(mode=0o700, parents=True)
        self.env = {**os.environ, "GNUPGHOME": str(self.home)}
        self._gpg("--quick-gen-key", uid, "ed25519", "sign", "never")
        self.keyring = base / "keyring.gpg"
        self.keyring.write_bytes(self._gpg("--export").stdout)
        self.armored = base / "keyring.asc"
        self.armored.write_bytes(self._gpg("--armor", "--export").stdout)

    def _gpg(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        cmd = ["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""]
        return subprocess.run([*cmd, *args], env=self.env, check=True, capture_output=True)

    def clearsign(self, src: Path, dest: Path) -> None:
        self._gpg("--yes", "--clearsign", "-o", str(dest), str(src))

    def detach_sign(self, src: Path, dest: Path, armor: bool = True) -> None:
        self._gpg("--yes", "-abs" if armor else "-bs", "-o", str(dest), str(src))

    def close(self) -> None:
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=self.env, capture_output=True)
