"""Run by the Swift venv's Python (tests/components/swift_aio.py starts it): one Swift WSGI
server, or the rings, with every file of the instance under its own folder.

    python swift_server.py rings ETC IP ACCOUNT_PORT CONTAINER_PORT OBJECT_PORT
    python swift_server.py serve ETC NAME CONF       (NAME: account-server ... proxy-server)

Swift reads swift.conf from a fixed /etc/swift; `use_dir` repoints it (and reloads the
storage policies and constraints read at import) so that instances run side by side and
the machine's /etc is never read or written. Swift logs to syslog, which does not exist
here: its syslog handler is replaced by one that drops records, and `verbose` sends the
same lines to stderr (the caller's log file).
"""

from __future__ import annotations

import logging
import sys


def use_dir(etc: str) -> None:
    from swift.common import constraints, storage_policy, utils

    utils.set_swift_dir(etc)
    storage_policy.reload_storage_policies()
    constraints.reload_constraints()


def without_syslog() -> None:
    from swift.common import utils

    class Dropped(logging.Handler):
        def __init__(self, *_args: object, **_kw: object) -> None:
            super().__init__()

        def emit(self, record: logging.LogRecord) -> None:
            return None

    sys.modules[utils.get_logger.__module__].ThreadSafeSysLogHandler = Dropped


def rings(etc: str, ip: str, *ports: str) -> int:
    """One device, one replica, 2**6 partitions per ring: an all-in-one Swift."""
    from swift.cli.ringbuilder import main

    for ring, port in zip(("account", "container", "object"), ports, strict=True):
        builder = f"{etc}/{ring}.builder"
        device = ["--region", "1", "--zone", "1", "--ip", ip, "--port", port]
        for step in (
            ["create", "6", "1", "1"],
            ["add", *device, "--device", "d1", "--weight", "100"],
            ["rebalance"],
        ):
            try:
                main(["swift-ring-builder", builder, *step])
            except SystemExit as done:  # 1 is a warning (one device), 2 an error
                if done.code not in (None, 0, 1):
                    raise
    return 0


def serve(etc: str, name: str, conf: str) -> int:
    use_dir(etc)
    without_syslog()
    from swift.common.wsgi import run_wsgi

    extra = {}
    if name == "object-server":
        from swift.obj.server import global_conf_callback

        extra["global_conf_callback"] = global_conf_callback
    return run_wsgi(conf, name, verbose=True, **extra)


if __name__ == "__main__":
    sys.path.pop(0)  # this folder: its modules are the tests', not swift's
    command, *rest = sys.argv[1:]
    sys.exit(rings(*rest) if command == "rings" else serve(*rest))
