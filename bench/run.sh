#!/usr/bin/env bash
# make bench: archive-local side by side with nginx (the machine's limit for static files)
# and the peers users compare it with (apt-cacher-ng, squid as squid-deb-proxy sets it up),
# archive-local with its defaults (`workers: auto`) and with one worker (the per-core
# figure), on loopback only, with the apt_bench harness from ../shared/bench
# (override with APT_BENCH=/path/to/apt_bench.sh). Extra arguments go to the harness,
# e.g. `make bench BENCH_ARGS="--runs 1 --duration 3"`.
# Results: bench/results/results-STAMP.{tsv,md}; record figures in docs/benchmarks.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
harness=${APT_BENCH:-$here/../../shared/bench/apt_bench.sh}
[ -x "$harness" ] || { echo "bench: harness not found at $harness (set APT_BENCH)" >&2; exit 2; }
: "${ARCHIVE_LOCAL_BIN:?set ARCHIVE_LOCAL_BIN to the archive-local console script}"
export ARCHIVE_LOCAL_BIN
mkdir -p "$here/results"
profiles=${BENCH_PROFILES:-"nginx-direct apt-cacher-ng $here/profiles/squid-deb-proxy.sh $here/profiles/archive-local.sh $here/profiles/archive-local-w1.sh $here/profiles/archive-local-remap.sh"}
# shellcheck disable=SC2086
exec "$harness" --out "$here/results" "$@" $profiles
