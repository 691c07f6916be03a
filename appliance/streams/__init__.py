"""The cloud-image feed: the simplestreams format, signatures, mirroring and publishing."""
