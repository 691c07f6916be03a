"""One owner of `<cache.dir>/.state` (issue 24): `appliance.cache.statedir` names every path
in it, and no other source spells the folder's name."""

from __future__ import annotations

import re
from pathlib import Path

from appliance.cache.statedir import StateDir

# `.state` as a name (".state", "/.state/", `.state`), not an attribute (`download.state`)
# nor a longer name (`cache.statedir`)
SPELLED = re.compile(r"(?<![\w)\]])\.state\b")


def test_no_module_but_the_state_dir_spells_it() -> None:
    root = Path(__file__).resolve().parents[2] / "appliance"
    owner = root / "cache" / "statedir.py"
    offenders = [
        f"{path.relative_to(root)}:{n}: {line.strip()}"
        for path in sorted(root.rglob("*"))
        if path.is_file() and path != owner and "__pycache__" not in path.parts
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if SPELLED.search(line)
    ]
    assert offenders == []
    assert SPELLED.search(owner.read_text())  # the pattern finds what it is there for


def test_a_service_lock_is_known_by_its_path(tmp_path: Path) -> None:
    """`archive-local serve` refusing a port names the service holding it, found by its open
    lock file among another process's descriptors (`commands.claim.port_holder`)."""
    state = StateDir(tmp_path / "cache")
    assert StateDir.of_service_lock(state.service_lock) == state
    assert StateDir.of_service_lock(state.path / "sync.lock") is None
    assert StateDir.of_service_lock(tmp_path / "service.lock") is None
    assert StateDir.of_service_lock(Path("socket:[4242]")) is None  # /proc/PID/fd/N links
    assert StateDir(Path()).leases == Path(".state/leases")  # relative to the cache dir
