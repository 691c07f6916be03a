"""Start a loopback Glance for the seed benchmark (`start DIR PORT`), or delete its images."""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if sys.argv[1] == "start":
    from tests.components import glance

    g = glance.start(Path(sys.argv[2]), int(sys.argv[3]))
    (Path(sys.argv[2]) / "pid").write_text(str(g.process.pid))
    print(g.endpoint, g.token, flush=True)
    while g.process.poll() is None:  # keep the parent alive: the server is its child
        time.sleep(1)
elif sys.argv[1] == "wipe":
    from glanceclient import Client

    c = Client(endpoint=sys.argv[2] + "/v2", token=sys.argv[3])
    for image in list(c.images.list()):
        c.images.delete(image.id)
