"""archive-local: a caching apt proxy and cloud-image mirror for private clouds."""

__version__ = "0.1.0"
