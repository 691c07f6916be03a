"""How instances find the appliance: mDNS records and the /.well-known/archive-local document."""
