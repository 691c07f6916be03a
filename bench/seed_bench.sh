#!/usr/bin/env bash
# Seed benchmark: `archive-local seed` of one multi-GB image into a real Glance (glance 33,
# gunicorn, loopback) against a plain python-glanceclient upload of the same file from disk,
# and the seed's peak RSS.
#   bench/seed_bench.sh [IMAGE_MB]      (default 2048)
# Needs qemu-utils, gnupg, /usr/bin/time, the Glance venv (`make components`). Loopback only.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${ARCHIVE_LOCAL_BIN:-$here/../.venv/bin/archive-local}
py=$(dirname "$bin")/python
image_mb=${1:-2048}
work=${SEED_BENCH_DIR:-/tmp/al-seed-bench}
port=${SEED_BENCH_PORT:-8092}
gport=${SEED_BENCH_GLANCE_PORT:-8093}
runs=${SEED_BENCH_RUNS:-3}
rm -rf "$work"; mkdir -p "$work"
size=$("$py" "$here/make_seed_feed.py" "$work" "$image_mb" | tail -1)
"$py" -m http.server -b 127.0.0.1 -d "$work/feed" "$port" >/dev/null 2>&1 &
feed_pid=$!
"$py" "$here/glance_ctl.py" start "$work/glance" "$gport" >"$work/glance.out" 2>&1 &
ctl_pid=$!
trap 'kill $feed_pid $ctl_pid 2>/dev/null; kill $(cat "$work/glance/pid" 2>/dev/null) 2>/dev/null || true' EXIT
for _ in $(seq 300); do [ -s "$work/glance.out" ] && break; sleep 0.2; done
read -r endpoint token <"$work/glance.out"
printf '%s\n' "$token" >"$work/token"
cat >"$work/config.yaml" <<CONF
cache: {dir: $work/cache}
images:
  gnupg_home: $work/appliance-gnupg
  feeds: [{name: bench, url: "http://127.0.0.1:$port/", keyring: $work/keyring.gpg,
           filters: [arch=amd64, release=jammy, ftype=disk1.img]}]
seed:
  after_sync: false
  targets:
    - {name: bench, type: glance, feeds: [bench], auth: {endpoint: "$endpoint", token_file: $work/token}}
CONF
"$bin" --config "$work/config.yaml" sync --json >/dev/null
file=$(find "$work/cache" -path '*jammy*' -name '*amd64.disk1.img' -size +1M | head -1)
cat "$file" >/dev/null  # both sides read from the page cache
: >"$work/times.tsv"
now() { date +%s.%N; }
for run in $(seq "$runs"); do   # alternate, so drift on the machine hits both alike
  "$py" "$here/glance_ctl.py" wipe "$endpoint" "$token"
  t0=$(now)
  /usr/bin/time -v -o "$work/plain-time.txt" "$py" "$here/glance_upload.py" "$endpoint" "$token" "$file"
  t1=$(now)
  "$py" "$here/glance_ctl.py" wipe "$endpoint" "$token"
  t2=$(now)
  /usr/bin/time -v -o "$work/seed-time.txt" "$bin" --config "$work/config.yaml" seed --json \
    >"$work/seed.json" 2>"$work/seed.log"
  t3=$(now)
  grep -q '"uploaded"' "$work/seed.json" || { cat "$work/seed.log"; exit 1; }
  rss() { awk -F: '/Maximum resident set size/{gsub(/ /,"",$2); print $2}' "$1"; }
  echo "$(echo "$t1 - $t0" | bc) $(echo "$t3 - $t2" | bc) $(rss "$work/seed-time.txt") $(rss "$work/plain-time.txt")" \
    >>"$work/times.tsv"
done
"$py" - "$work/times.tsv" "$size" <<'PY'
import statistics, sys
rows = [list(map(float, line.split())) for line in open(sys.argv[1])]
size = int(sys.argv[2])
plain, seed, rss, plain_rss = ([r[i] for r in rows] for i in range(4))
mb = lambda t: size / t / 1e6
p, s = statistics.median(plain), statistics.median(seed)
print(f"image: {size / 2**20:.0f} MiB qcow2, {len(rows)} runs (medians; min-max)")
print(f"plain glanceclient upload from disk: {p:.2f} s, {mb(p):.0f} MB/s ({mb(max(plain)):.0f}-{mb(min(plain)):.0f})")
print(f"archive-local seed (list, upload, verify, image-ids): {s:.2f} s, {mb(s):.0f} MB/s "
      f"({mb(max(seed)):.0f}-{mb(min(seed)):.0f}), {p / s:.2f}x plain")
print(f"seed peak RSS: {statistics.median(rss) / 1024:.1f} MB (max {max(rss) / 1024:.1f}); "
      f"plain upload {statistics.median(plain_rss) / 1024:.1f} MB")
PY
