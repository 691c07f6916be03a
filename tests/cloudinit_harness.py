#!/usr/bin/python3
"""Run cloud-init modules through Debian's real cloud-init code, without a VM (test helper).

    /usr/bin/python3 tests/cloudinit_harness.py --workdir DIR --user-data FILE \
        --module-path cloud-init --modules archive_local,apt_configure

A NoCloud seed under DIR feeds the real datasource; cloud-init's directories point into
DIR through the CLOUD_CFG config. The run happens in a private mount namespace where
/etc/apt is a copy (DIR/etc-apt), /run is a fresh tmpfs and /var/log is DIR/var-log, so
modules write there and not to the machine. Prints a JSON report: the modules that ran
or failed, the files they wrote under /etc/apt and /run/archive-local, the log lines of
the archive_local module, and how long each module took.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

INSIDE = "_ARCHIVE_LOCAL_HARNESS_INSIDE"


def _files(root: str) -> dict:
    out = {}
    for base, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(base, name)
            with open(path, errors="replace") as f:
                out[path] = f.read()
    return out


def inside(args: argparse.Namespace) -> dict:
    wd = args.workdir
    for cmd in (
        ["mount", "--bind", f"{wd}/etc-apt", "/etc/apt"],
        ["mount", "-t", "tmpfs", "tmpfs", "/run"],
        ["mount", "--bind", f"{wd}/var-log", "/var/log"],
    ):
        subprocess.run(cmd, check=True)
    before = _files("/etc/apt")
    os.environ["CLOUD_CFG"] = f"{wd}/harness.cfg"
    sys.path.insert(0, args.module_path)
    import logging  # after cloudinit: importing it resets the root logger

    from cloudinit import sources, stages
    from cloudinit.config.modules import Modules
    from cloudinit.settings import PER_ALWAYS

    handler = logging.FileHandler(f"{wd}/cloud-init.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s[%(levelname)s]: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    lines = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "archive_local" in record.name:
                lines.append(f"{record.levelname} {record.getMessage()}")

    root.addHandler(Capture())
    init = stages.Init(ds_deps=[sources.DEP_FILESYSTEM])
    init.read_cfg()
    init.fetch()
    init.instancify()
    init.update()
    init.consume_data(PER_ALWAYS)
    modules = Modules(init)
    report = {"ran": [], "failed": {}, "seconds": {}, "log": lines}
    for name in args.modules.split(","):
        started = time.monotonic()
        ran, failures = modules.run_single(name, None, "always")
        report["seconds"][name] = round(time.monotonic() - started, 3)
        report["ran"] += ran
        report["failed"].update({n: repr(e) for n, e in failures})
        if not ran:
            report["failed"][name] = "not found or not run"
    after = _files("/etc/apt")
    report["etc_apt"] = {p: t for p, t in after.items() if before.get(p) != t}
    report["removed"] = sorted(set(before) - set(after))
    report["run_archive_local"] = _files("/run/archive-local")
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--user-data", required=True)
    ap.add_argument("--modules", required=True)
    ap.add_argument("--module-path", required=True)
    ap.add_argument("--apt-file", help="put this file into the copy of /etc/apt/apt.conf.d first")
    args = ap.parse_args()
    args.workdir = os.path.abspath(args.workdir)
    args.module_path = os.path.abspath(args.module_path)
    if os.environ.get(INSIDE):
        print(json.dumps(inside(args)))
        return
    wd = args.workdir
    seed = f"{wd}/var/lib/cloud/seed/nocloud"
    os.makedirs(seed, exist_ok=True)
    with open(f"{seed}/meta-data", "w") as f:
        f.write("instance-id: iid-archive-local-test\nlocal-hostname: client\n")
    shutil.copy(args.user_data, f"{seed}/user-data")
    with open(f"{wd}/harness.cfg", "w") as f:
        f.write(
            "system_info:\n  distro: debian\n  paths:\n"
            f"    cloud_dir: {wd}/var/lib/cloud/\n    run_dir: {wd}/run/cloud-init/\n"
            "datasource_list: [NoCloud]\nnetwork: {config: disabled}\npreserve_hostname: true\n"
            f"def_log_file: {wd}/cloud-init.log\n"
        )
    shutil.rmtree(f"{wd}/etc-apt", ignore_errors=True)
    shutil.copytree("/etc/apt", f"{wd}/etc-apt", symlinks=True)
    if args.apt_file:
        shutil.copy(args.apt_file, f"{wd}/etc-apt/apt.conf.d/")
    os.makedirs(f"{wd}/var-log", exist_ok=True)
    argv = ["unshare", "-m", "--propagation", "private", sys.executable, os.path.abspath(__file__)]
    proc = subprocess.run(argv + sys.argv[1:], env={**os.environ, INSIDE: "1"})
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
