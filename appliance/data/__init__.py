"""Files installed with the package: the systemd unit (`make install` and the charm use it)."""
