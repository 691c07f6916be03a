"""moto's server with a RegisterImage that behaves like EC2 / Eucalyptus (test use only).

Stock moto 5.2.5 keeps only Name and Description of RegisterImage and checks nothing.
Here an image keeps ImageLocation, Architecture, kernel/ramdisk, root device and its
block device mappings, and registration fails as a real cloud would: a manifest that
is not in S3 (InvalidManifest), a snapshot that does not exist, or neither/both given.
Run as `python moto_server.py -H 127.0.0.1 -p PORT` (moto_server's options).
"""

import sys

from moto.core.responses import ActionResult
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models.amis import Ami
from moto.ec2.responses.amis import AmisResponse
from moto.ec2.utils import random_ami_id


class RegisteredAmi(Ami):
    __module__ = "moto.ec2.models.amis"  # moto derives the service from the module path
    mappings: list = []

    @property
    def block_device_mappings(self):  # type: ignore[override]
        return self.mappings

    def get_filter_value(self, filter_name, method_name=None):  # type: ignore[no-untyped-def]
        extra = {
            "manifest-location": lambda: self.image_location,
            "root-device-type": lambda: self.root_device_type,
            "block-device-mapping.snapshot-id": lambda: [
                m.get("Ebs", {}).get("SnapshotId") for m in self.mappings
            ],
        }
        if filter_name in extra:
            return extra[filter_name]()
        return super().get_filter_value(filter_name, method_name)


def _manifest_exists(account: str, location: str) -> bool:
    from moto.s3.models import s3_backends

    bucket, _, key = location.partition("/")
    try:
        return s3_backends[account]["aws"].get_object(bucket, key) is not None
    except Exception:
        return False


def register_image(self):  # type: ignore[no-untyped-def]
    param = self._get_param
    location = param("ImageLocation")
    mappings = param("BlockDeviceMappings", []) or []
    roots = [m for m in mappings if m.get("Ebs", {}).get("SnapshotId")]
    self.error_on_dryrun()
    if not param("Name"):
        raise EC2ClientError("MissingParameter", "The request must contain the parameter Name")
    if bool(location) == bool(roots):
        raise EC2ClientError(
            "InvalidParameterCombination", "give ImageLocation or a root snapshot mapping"
        )
    if location and not _manifest_exists(self.current_account, location):
        raise EC2ClientError("InvalidManifest", f"manifest {location} not found")
    for m in roots:
        self.ec2_backend.get_snapshot(m["Ebs"]["SnapshotId"])  # InvalidSnapshot.NotFound
    ami = RegisteredAmi(
        self.ec2_backend,
        random_ami_id(),
        name=param("Name"),
        description=param("Description", ""),
        architecture=param("Architecture") or "x86_64",
        virtualization_type=param("VirtualizationType") or "paravirtual",
        image_location=location,
        root_device_type="instance-store" if location else "ebs",
        root_device_name=param("RootDeviceName") or "/dev/sda1",
    )
    ami.kernel_id = param("KernelId")
    ami.ramdisk_id = param("RamdiskId")
    ami.mappings = mappings
    self.ec2_backend.amis[ami.id] = ami
    return ActionResult({"ImageId": ami.id})


AmisResponse.register_image = register_image

if __name__ == "__main__":
    from moto.server import main

    sys.exit(main())
