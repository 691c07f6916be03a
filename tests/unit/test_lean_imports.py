"""What a process imports is memory it keeps (issue 25's target: the whole service under
`workers: auto` in 100 MB of PSS): the master of several workers serves nothing and
imports neither aiohttp nor the engine; a worker without `tls` does not import
cryptography, nor one without mDNS zeroconf."""

from __future__ import annotations

import subprocess
import sys


def imported(*modules: str) -> set[str]:
    """The top-level packages a fresh interpreter holds after importing `modules`."""
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_master_of_workers_imports_no_web_stack() -> None:
    held = imported("appliance.cli", "appliance.commands.claim", "appliance.commands.workers")
    assert not held & {"aiohttp", "cryptography", "zeroconf", "prometheus_client", "gnupg"}


def test_a_worker_without_tls_or_mdns_imports_neither() -> None:
    held = imported("appliance.commands.serve", "appliance.runtime.service", "appliance.web.app")
    assert "aiohttp" in held  # (the check works)
    assert not held & {"cryptography", "zeroconf", "boto3", "botocore", "glanceclient"}
