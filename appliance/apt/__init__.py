"""apt-specific rules: which requests are allowed, how they map to cache keys, and freshness."""
