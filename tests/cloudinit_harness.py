#!/usr/bin/python3
"""Boot cloud-init's real code without a VM (test helper): its own `cloud-init init` and
`cloud-init modules --mode config` entry points, one after the other, as systemd runs them.

    /usr/bin/python3 tests/cloudinit_harness.py --workdir DIR --user-data FILE \
        --module-path cloud-init --modules archive_local,apt_configure \
        [--cloudinit DIST_PACKAGES] [--vendor-data FILE] [--system-cfg FILE] \
        [--resolv TEXT] [--apt-file FILE]

A NoCloud seed under DIR (meta-data, user-data, vendor-data) feeds the real datasource;
cloud-init's configuration is DIR/harness.cfg (through CLOUD_CFG, read after
/etc/cloud/cloud.cfg and cloud.cfg.d/), and `--system-cfg` is copied to
/etc/cloud/cloud.cfg.d/90-archive-local.cfg, as an image build would put it.
`--cloudinit` imports another cloud-init (an unpacked package's dist-packages) instead of
the system's. The run happens in a private mount namespace where /etc is an overlay whose
writes land in DIR (its resolv.conf is `--resolv`), /run is a fresh tmpfs and /var/log is
DIR/var-log, so nothing of the machine changes.

Prints a JSON report: the cloud-init version; the modules that ran and failed; what
`cloud-init status` reads (status.json: errors and, from 23.4 on, recoverable_errors);
every WARNING or worse logged; the archive_local module's log lines and seconds; the files
written or removed under /etc/apt and written under /run/archive-local.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys

INSIDE = "_ARCHIVE_LOCAL_HARNESS_INSIDE"
LOG_FORMAT = "%(asctime)s %(name)s[%(levelname)s]: %(message)s"
LINE = re.compile(r"^\S+ \S+ (?P<logger>\S+)\[(?P<level>[A-Z]+)\]: (?P<message>.*)$")


def _files(root: str) -> dict:
    out = {}
    for base, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(base, name)
            with open(path, errors="replace") as f:
                out[path] = f.read()
    return out


def _mounts(wd: str) -> None:
    for d in ("etc-up", "etc-work", "var-log"):
        os.makedirs(f"{wd}/{d}", exist_ok=True)
    for cmd in (
        [
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir=/etc,upperdir={wd}/etc-up,workdir={wd}/etc-work",
            "/etc",
        ],
        ["mount", "-t", "tmpfs", "tmpfs", "/run"],
        ["mount", "--bind", f"{wd}/var-log", "/var/log"],
    ):
        subprocess.run(cmd, check=True)


def _log_records(path: str) -> list:
    records = []
    if os.path.exists(path):
        with open(path, errors="replace") as f:
            for line in f:
                m = LINE.match(line.rstrip("\n"))
                if m:
                    records.append(m.groupdict())
    return records


def inside(args: argparse.Namespace) -> dict:
    wd = args.workdir
    _mounts(wd)
    if os.path.exists("/etc/cloud/cloud-init.disabled"):  # `make test` disables the machine's
        os.unlink("/etc/cloud/cloud-init.disabled")  # only in the overlay
    if os.path.lexists("/etc/resolv.conf"):
        os.unlink("/etc/resolv.conf")  # a symlink into the host's /run, often
    with open("/etc/resolv.conf", "w") as f:
        f.write(args.resolv)
    if args.apt_file:
        shutil.copy(args.apt_file, "/etc/apt/apt.conf.d/")
    if args.system_cfg:  # as an image build puts it (the overlay keeps the machine's /etc)
        os.makedirs("/etc/cloud/cloud.cfg.d", exist_ok=True)
        shutil.copy(args.system_cfg, "/etc/cloud/cloud.cfg.d/90-archive-local.cfg")
    before = _files("/etc/apt")
    os.environ["CLOUD_CFG"] = f"{wd}/harness.cfg"
    sys.path.insert(0, args.module_path)
    if args.cloudinit:
        sys.path.insert(0, args.cloudinit)
    from cloudinit import version
    from cloudinit.cmd import main as cloudinit_main

    rcs = [
        cloudinit_main.main(["cloud-init", "init"]),
        cloudinit_main.main(["cloud-init", "modules", "--mode", "config"]),
        cloudinit_main.main(["cloud-init", "modules", "--mode", "final"]),
    ]
    with open(f"{wd}/var/lib/cloud/data/status.json") as f:
        status = json.load(f)["v1"]
    # what an operator sees: the same version's `cloud-init status`, in a fresh process
    code = (
        f"import sys; sys.path[:0] = {[p for p in (args.cloudinit,) if p]!r}; "
        "from cloudinit.cmd.main import main; "
        "sys.exit(main(['cloud-init', 'status', '--format', 'json']))"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    try:
        shown_status = json.loads(shown.stdout)
    except ValueError:
        shown_status = {"unreadable": shown.stdout[-2000:] + shown.stderr[-2000:]}
    records = _log_records(f"{wd}/cloud-init.log")
    ran, seconds = [], {}
    for r in records:
        m = re.match(r"Running module (\S+) \(", r["message"])
        if m:
            ran.append(m.group(1).replace("-", "_"))
        m = re.match(r"archive_local: .* in (\d+\.\d+) s", r["message"])
        if m:
            seconds["archive_local"] = float(m.group(1))
    failed = {}
    for stage in ("init", "modules-config"):
        for error in status.get(stage, {}).get("errors", []):
            m = re.search(r"Running module (\S+) ", error)
            failed[m.group(1).replace("-", "_") if m else stage] = error
    after = _files("/etc/apt")
    return {
        "version": version.version_string(),
        "exit_codes": rcs,
        "ran": ran,
        "failed": failed,
        "status": status,
        "cloud_init_status": {"exit_code": shown.returncode, **shown_status},
        "recoverable_errors": {
            stage: status.get(stage, {}).get("recoverable_errors", {})
            for stage in ("init", "modules-config")
        },
        "warnings": [
            f"{r['logger']}: {r['message']}"
            for r in records
            if r["level"] in ("WARNING", "ERROR", "CRITICAL")
        ],
        "seconds": seconds,
        "log": [f"{r['level']} {r['message']}" for r in records if "archive_local" in r["logger"]],
        "etc_apt": {p: t for p, t in after.items() if before.get(p) != t},
        "removed": sorted(set(before) - set(after)),
        "run_archive_local": _files("/run/archive-local"),
    }


def _harness_cfg(wd: str, modules: str) -> str:
    """cloud-init's own configuration for the run: NoCloud only, no network changes, the
    given modules alone in the config stage, its log to DIR/cloud-init.log."""
    listed = "".join(f"  - {m}\n" for m in modules.split(","))
    log_cfg = (
        # naming `cloudinit` keeps its loggers, made before this is read, enabled
        "[loggers]\nkeys=root,cloudinit\n[handlers]\nkeys=file\n[formatters]\nkeys=plain\n"
        "[logger_root]\nlevel=DEBUG\nhandlers=file\n"
        "[logger_cloudinit]\nlevel=DEBUG\nqualname=cloudinit\nhandlers=\npropagate=1\n"
        "[handler_file]\nclass=FileHandler\nlevel=DEBUG\nformatter=plain\n"
        f"args=('{wd}/cloud-init.log', 'a')\n"
        f"[formatter_plain]\nformat={LOG_FORMAT}\n"
    )
    indented = "".join(f"      {line}\n" for line in log_cfg.splitlines())
    return (
        "system_info:\n  distro: debian\n  paths:\n"
        f"    cloud_dir: {wd}/var/lib/cloud/\n    run_dir: /run/cloud-init/\n"
        "datasource_list: [NoCloud]\nnetwork: {config: disabled}\npreserve_hostname: true\n"
        "manage_etc_hosts: false\n"
        f"def_log_file: {wd}/cloud-init.log\n"
        "cloud_init_modules: []\ncloud_final_modules: []\n"
        f"cloud_config_modules:\n{listed}"
        "log_cfgs:\n  - - |\n" + indented
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--user-data", required=True)
    ap.add_argument("--vendor-data", help="NoCloud vendor-data (e.g. a cloud-config)")
    ap.add_argument("--system-cfg", help="a file for /etc/cloud/cloud.cfg.d (an image's)")
    ap.add_argument("--modules", required=True)
    ap.add_argument("--module-path", required=True)
    ap.add_argument("--cloudinit", help="dist-packages holding the cloud-init to run")
    ap.add_argument("--resolv", default="", help="the run's /etc/resolv.conf")
    ap.add_argument("--apt-file", help="put this file into /etc/apt/apt.conf.d first")
    args = ap.parse_args()
    for name in ("workdir", "module_path", "cloudinit"):
        if getattr(args, name):
            setattr(args, name, os.path.abspath(getattr(args, name)))
    if os.environ.get(INSIDE):
        print(json.dumps(inside(args)))
        return
    wd = args.workdir
    seed = f"{wd}/var/lib/cloud/seed/nocloud"
    os.makedirs(seed, exist_ok=True)
    with open(f"{seed}/meta-data", "w") as f:
        f.write("instance-id: iid-archive-local-test\nlocal-hostname: client\n")
    shutil.copy(args.user_data, f"{seed}/user-data")
    if args.vendor_data:
        shutil.copy(args.vendor_data, f"{seed}/vendor-data")
    with open(f"{wd}/harness.cfg", "w") as f:
        f.write(_harness_cfg(wd, args.modules))
    argv = ["unshare", "-m", "--propagation", "private", sys.executable, os.path.abspath(__file__)]
    proc = subprocess.run(
        argv + sys.argv[1:], env={**os.environ, INSIDE: "1"}, stdout=subprocess.PIPE, text=True
    )
    # cloud-init prints its own banner lines on stdout: the report is the last line
    lines = proc.stdout.strip().splitlines()
    print(lines[-1] if lines else "")
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
