"""What a process imports is memory it keeps (issue 25's target: the whole service under
`workers: auto` in 100 MB of PSS): the master of several workers imports what they run
and forks them, so that code's pages are shared; a worker without `tls` does not import
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


def test_the_master_preloads_what_workers_run_and_no_more() -> None:
    """The master imports the workers' code before it forks them, so its pages are shared
    (`commands.workers._preload`), and nothing a worker without `tls` or mDNS leaves out."""
    held = imported(
        "appliance.commands.workers",
        "appliance.config; appliance.commands.workers._preload("
        "appliance.config.parse({'discovery': {'mdns': False}}, 'test'))",
    )
    assert "aiohttp" in held and "prometheus_client" in held
    assert not held & {"cryptography", "zeroconf", "boto3", "botocore", "glanceclient"}


def test_a_worker_without_tls_or_mdns_imports_neither() -> None:
    held = imported("appliance.commands.serve", "appliance.runtime.service", "appliance.web.app")
    assert "aiohttp" in held  # (the check works)
    assert not held & {"cryptography", "zeroconf", "boto3", "botocore", "glanceclient"}
