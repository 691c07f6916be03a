"""Seeding local clouds (Glance, EC2/Eucalyptus) from the mirrored image feeds."""
