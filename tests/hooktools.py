#!/usr/bin/env python3
"""Stand-ins for Juju's hook tools, for running a packed charm's `dispatch` without Juju.

`install(dir)` writes one small script per tool in `dir` that runs this file with the
test's Python; put `dir` first on PATH.
Every call is appended as JSON (`{"tool": ..., "args": [...]}`) to `$HOOKTOOLS_LOG`;
`config-get` answers the charm's defaults from its config.yaml overlaid with
`$HOOKTOOLS_CONFIG` (JSON), `action-get` answers `$HOOKTOOLS_PARAMS` (JSON). The unit is the
leader and has no relations. A tool this file does not know fails loudly.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import yaml

TOOLS = (
    "juju-log",
    "is-leader",
    "relation-ids",
    "relation-list",
    "config-get",
    "status-set",
    "status-get",
    "application-version-set",
    "opened-ports",
    "open-port",
    "close-port",
    "action-get",
    "action-set",
    "action-log",
    "action-fail",
    "network-get",
    "goal-state",
)


def install(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    me = Path(__file__).resolve()
    for tool in TOOLS:
        script = directory / tool
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{me}" {tool} "$@"\n')
        script.chmod(0o755)
    return directory


def calls(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def _config() -> dict:
    charm = Path(os.environ["JUJU_CHARM_DIR"])
    options = yaml.safe_load((charm / "config.yaml").read_text()).get("options", {})
    values = {k: v["default"] for k, v in options.items() if "default" in v}
    values.update(json.loads(os.environ.get("HOOKTOOLS_CONFIG", "{}")))
    return values


def main() -> int:
    tool, args = sys.argv[1], sys.argv[2:]
    with open(os.environ["HOOKTOOLS_LOG"], "a") as log:
        log.write(json.dumps({"tool": tool, "args": args}) + "\n")
    answers = {
        "is-leader": True,
        "relation-ids": [],
        "relation-list": [],
        "opened-ports": [],
        "goal-state": {"units": {}, "relations": {}},
        "status-get": {"status": "unknown", "message": ""},
    }
    if tool == "config-get":
        print(json.dumps(_config()))
    elif tool == "action-get":
        print(os.environ.get("HOOKTOOLS_PARAMS", "{}"))
    elif tool in answers:
        print(json.dumps(answers[tool]))
    elif tool not in TOOLS:
        print(f"hooktools: no stand-in for {tool}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
