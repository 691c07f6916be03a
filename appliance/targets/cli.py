"""`archive-local seed [TARGET...] [--dry-run] [--json]` (argument handling and output)."""

from __future__ import annotations

import argparse
import json
import sys

from appliance import config as configuration
from appliance.cache.egress import policy_for
from appliance.cache.engine import CacheEngine
from appliance.cache.fetcher import Fetcher
from appliance.targets.plan import Plan
from appliance.targets.run import seed_targets
from appliance.targets.seeder import Action, TargetOutcome


class SeedProgress:
    """A bar for the current upload on a terminal; one line per action (stderr)."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.name = ""
        self.size = self.sent = 0

    def __call__(self, event: str, data: object) -> None:
        if event == "plan":
            target, region, plan = data  # type: ignore[misc]
            assert isinstance(plan, Plan)
            self._line(
                f"[{target}/{region}] plan: upload {len(plan.upload)}, present "
                f"{len(plan.present)}, remove {len(plan.remove)}, clean {len(plan.broken)}"
            )
        elif event == "upload":
            _target, _region, self.name, self.size = data  # type: ignore[misc]
            self.sent = 0
        elif event == "bytes":
            self.sent += data  # type: ignore[operator]
            self._bar()
        elif event == "action":
            a: Action = data  # type: ignore[assignment]
            line = f"[{a.target}/{a.region}] {a.action:<12} {a.name}"
            if a.image_id:
                line += f" ({a.image_id})"
            if a.error:
                line += f": {a.error}"
            self._line(line)
        elif event == "target":
            o: TargetOutcome = data  # type: ignore[assignment]
            if o.error:
                self._line(f"[{o.target}] FAILED: {o.error}")

    def _line(self, text: str) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K")
        print(text, file=sys.stderr)

    def _bar(self) -> None:
        if not self.tty or not self.size:
            return
        frac = min(1.0, self.sent / self.size)
        sys.stderr.write(
            f"\r{self.name[-40:]} [{'#' * int(frac * 30):<30}] {frac:4.0%} "
            f"{self.sent / 1e6:.1f}/{self.size / 1e6:.1f} MB"
        )
        sys.stderr.flush()


async def run_seed(args: argparse.Namespace, config: configuration.Config) -> int:
    names = set(args.targets)
    targets = [t for t in config.seed.targets if not names or t.name in names]
    unknown = names - {t.name for t in config.seed.targets}
    if unknown or not targets:
        what = f"no target named {', '.join(sorted(unknown))}" if unknown else "no seed.targets"
        print(f"archive-local: {what} in the configuration", file=sys.stderr)
        return 2
    fetcher = Fetcher.from_config(config.upstream, policy_for(config))
    engine = CacheEngine.from_config(config, fetcher)
    try:
        outcomes = await seed_targets(
            config,
            engine,
            targets,
            report=SeedProgress(sys.stderr.isatty() and not args.json),
            dry_run=args.dry_run,
        )
    finally:
        await engine.close()
        await fetcher.close()
    if args.json:
        print(json.dumps([o.as_dict() for o in outcomes], indent=1))
    else:
        for o in outcomes:
            print(summary(o, args.dry_run))
    return 0 if all(o.ok for o in outcomes) else 1


def summary(o: TargetOutcome, dry_run: bool = False) -> str:
    if dry_run:
        kinds = ("would-upload", "would-remove")
    else:
        kinds = ("uploaded", "present", "removed", "cleaned", "failed")
    counts = ", ".join(f"{k.replace('-', ' ')} {o.count(k)}" for k in kinds)
    state = "ok" if o.ok else f"FAILED: {o.error}"
    return f"{o.target}: {counts}; {o.bytes_uploaded / 1e6:.1f} MB in {o.seconds:.1f} s; {state}"
