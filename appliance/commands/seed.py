"""`archive-local seed [TARGET...] [--dry-run] [--json]` (argument handling and output)."""

from __future__ import annotations

import argparse
import json
import sys

from appliance import config as configuration
from appliance import runtime
from appliance.commands.progress import Progress
from appliance.config import human_size as size
from appliance.jobs.seed import seed_targets
from appliance.targets.seeder import TargetOutcome


async def run_seed(args: argparse.Namespace, config: configuration.Config) -> int:
    names = set(args.targets)
    targets = [t for t in config.seed.targets if not names or t.name in names]
    unknown = names - {t.name for t in config.seed.targets}
    if unknown or not targets:
        what = f"no target named {', '.join(sorted(unknown))}" if unknown else "no seed.targets"
        print(f"archive-local: {what} in the configuration", file=sys.stderr)
        return 2
    async with runtime.core(config) as base:
        outcomes = await seed_targets(
            config,
            base.engine,
            targets,
            report=Progress(sys.stderr.isatty() and not args.json),
            dry_run=args.dry_run,
        )
    if args.json:
        print(json.dumps([o.as_dict() for o in outcomes], indent=1))
    else:
        for o in outcomes:
            print(summary(o, args.dry_run))
    return 0 if all(o.ok for o in outcomes) else 1


def summary(o: TargetOutcome, dry_run: bool = False) -> str:
    counts = o.summary(dry_run)
    state = "ok" if o.ok else f"FAILED: {o.error}"
    return f"{o.target}: {counts}; {size(o.bytes_uploaded)} in {o.seconds:.1f} s; {state}"
