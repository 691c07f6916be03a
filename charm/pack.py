#!/usr/bin/env python3
"""Pack the charm without charmcraft (which cannot build an Ubuntu base on Debian):
`python charm/pack.py OUT.charm`, run by `make charm`.

What a `.charm` holds and Juju reads: metadata.yaml, config.yaml, actions.yaml and
manifest.yaml (all from charmcraft.yaml, the one source), `dispatch` (and the old-Juju
hooks/ copies of it), src/, venv/ (the charm's own dependencies, flattened) and wheels/
(archive-local's own wheel and every wheel it needs, so a unit installs offline).
Wheels are fetched for the charm's base (Ubuntu 24.04: CPython 3.12, manylinux x86_64)
whatever Python runs this, at the versions pinned in charm/constraints.txt.

Reproducible: the zip's entries are sorted, dated 1980-01-01, mode 0755 (dispatch, hooks,
src/charm.py) or 0644; the archive-local wheel is rewritten the same way; no bytecode,
no venv/bin (its shebangs name the build machine). Two builds are byte-identical.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

CHARM = Path(__file__).resolve().parent
ROOT = CHARM.parent
EPOCH = (1980, 1, 1, 0, 0, 0)
EXECUTABLE = {"dispatch", "hooks/install", "hooks/start", "hooks/upgrade-charm", "src/charm.py"}
PLATFORMS = ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_28_x86_64")
# what charmcraft's metadata.yaml carries over from charmcraft.yaml
METADATA_KEYS = (
    "name",
    "summary",
    "description",
    "provides",
    "requires",
    "peers",
    "subordinate",
    "assumes",
    "links",
)
DISPATCH = """#!/bin/sh
JUJU_DISPATCH_PATH="${JUJU_DISPATCH_PATH:-$0}" PYTHONPATH=lib:venv:src \\
  exec ./src/charm.py
"""


def metadata(spec: dict) -> dict:
    data = {k: spec[k] for k in METADATA_KEYS if k in spec}
    if "title" in spec:
        data["display-name"] = spec["title"]
    return data


def manifest(spec: dict, python: str) -> dict:
    arches = sorted(spec.get("platforms") or {"amd64": None})
    name, _, channel = spec["base"].partition("@")
    return {
        "bases": [{"name": name, "channel": channel, "architectures": arches}],
        "analysis": {"attributes": [{"name": "framework", "result": "operator"}]},
        "archive-local-pack": {"python": python},
    }


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        errors = [ln for ln in out.stderr.splitlines() if not ln.startswith("WARNING:")]
        raise SystemExit(f"pack: pip {args[0]} failed:\n" + "\n".join(errors[-20:]))


def target_args(python: str) -> list[str]:
    """pip options that fetch wheels for the charm's Python, not the one running this."""
    tag = "cp" + python.replace(".", "")
    args = ["--only-binary=:all:", "--implementation", "cp", "--python-version", python]
    for abi in (tag, "abi3", "none"):
        args += ["--abi", abi]
    for platform in PLATFORMS:
        args += ["--platform", platform]
    return args


def appliance_wheel(work: Path, out: Path) -> Path:
    """archive-local's wheel, built from a copy of the package (never a stale build/ or
    egg-info of the tree) and rewritten with fixed dates and modes."""
    src = work / "src"
    shutil.copytree(
        ROOT / "appliance", src / "appliance", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    built = work / "built"
    os.environ["SOURCE_DATE_EPOCH"] = "315532800"
    pip("wheel", "--no-deps", "--wheel-dir", str(built), str(src))
    [wheel] = built.glob("archive_local-*.whl")
    target = out / wheel.name
    with zipfile.ZipFile(wheel) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():  # the wheel's order: RECORD stays last
            _add(new, info.filename, old.read(info.filename), 0o644)
    return target


def _add(archive: zipfile.ZipFile, name: str, data: bytes, mode: int) -> None:
    info = zipfile.ZipInfo(name, EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (0o100000 | mode) << 16
    info.create_system = 3  # unix, so that the mode is read
    archive.writestr(info, data)


def charm_venv(venv: Path, python: str) -> None:
    """The charm's dependencies for its Python, without scripts or bytecode."""
    pip(
        "install",
        "--target",
        str(venv),
        "--no-compile",
        "--no-warn-script-location",
        "--constraint",
        str(CHARM / "constraints.txt"),
        *target_args(python),
        "--requirement",
        str(CHARM / "requirements.txt"),
    )
    shutil.rmtree(venv / "bin", ignore_errors=True)
    for record in venv.glob("*.dist-info/RECORD"):
        lines = record.read_text().splitlines(keepends=True)
        record.write_text("".join(ln for ln in lines if not ln.startswith("../../bin/")))
    for cache in venv.rglob("__pycache__"):
        shutil.rmtree(cache)


def build(out: Path, python: str) -> None:
    spec = yaml.safe_load((CHARM / "charmcraft.yaml").read_text())
    with tempfile.TemporaryDirectory(prefix="charm-pack-") as tmp:
        work = Path(tmp)
        tree = work / "charm"
        wheels = tree / "wheels"
        wheels.mkdir(parents=True)
        own = appliance_wheel(work, wheels)
        pip(
            "download",
            "--dest",
            str(wheels),
            "--constraint",
            str(CHARM / "constraints.txt"),
            *target_args(python),
            str(own),
        )
        charm_venv(tree / "venv", python)
        shutil.copytree(CHARM / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__"))
        docs = {
            "metadata.yaml": metadata(spec),
            "config.yaml": spec.get("config", {}),
            "actions.yaml": spec.get("actions", {}),
            "manifest.yaml": manifest(spec, python),
        }
        for name, data in docs.items():
            (tree / name).write_text(yaml.safe_dump(data, sort_keys=True))
        (tree / "dispatch").write_text(DISPATCH)
        (tree / "hooks").mkdir()
        for hook in ("install", "start", "upgrade-charm"):
            (tree / "hooks" / hook).write_text(DISPATCH)
        shutil.copy2(CHARM / "README.md", tree / "README.md")
        files = sorted((p for p in tree.rglob("*") if p.is_file()), key=lambda p: p.as_posix())
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(f".{out.name}.part")
        with zipfile.ZipFile(partial, "w") as archive:
            for path in files:
                name = path.relative_to(tree).as_posix()
                _add(archive, name, path.read_bytes(), 0o755 if name in EXECUTABLE else 0o644)
        os.replace(partial, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the .charm to write")
    parser.add_argument(
        "--python", default="3.12", help="the unit's Python (default 3.12: Ubuntu 24.04)"
    )
    args = parser.parse_args()
    build(args.out.resolve(), args.python)
    print(args.out)


if __name__ == "__main__":
    main()
