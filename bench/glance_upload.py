"""The baseline: a plain python-glanceclient upload of a file from disk (then deleted)."""

import os
import sys

from glanceclient import Client

endpoint, token, path = sys.argv[1:4]
client = Client(endpoint=endpoint + "/v2", token=token)
image = client.images.create(name="plain-upload", disk_format="qcow2", container_format="bare")
with open(path, "rb") as f:
    client.images.upload(image["id"], f, image_size=os.path.getsize(path))
assert client.images.get(image["id"])["status"] == "active"
