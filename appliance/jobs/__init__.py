"""Sync and seed as jobs: typed outcomes, one exclusive lock each, run by the service or a
command alike. Above `streams` and `targets`, which never call each other."""
