#!/usr/bin/env bash
# Image sync benchmark: `archive-local sync` of a multi-GB feed against a plain sequential
# download (curl) of the same item files from the same loopback nginx, and the sync's peak RSS.
#   bench/sync_bench.sh [ITEM_MB]      (default 128: 18 items of ITEM_MB plus 18 small ones)
# Needs nginx-light, curl, gnupg, /usr/bin/time (make bench installs them). Loopback only.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${ARCHIVE_LOCAL_BIN:-$here/../.venv/bin/archive-local}
py=$(dirname "$bin")/python
item_mb=${1:-128}
work=${SYNC_BENCH_DIR:-/tmp/al-sync-bench}
port=${SYNC_BENCH_PORT:-8091}
rm -rf "$work"; mkdir -p "$work/run"
"$py" "$here/make_feed.py" "$work" "$item_mb"
cat >"$work/run/nginx.conf" <<CONF
worker_processes 2; pid $work/run/nginx.pid; error_log $work/run/error.log warn;
events { worker_connections 1024; }
http { access_log off; sendfile on; tcp_nopush on; default_type application/octet-stream;
  client_body_temp_path $work/run; proxy_temp_path $work/run; fastcgi_temp_path $work/run;
  uwsgi_temp_path $work/run; scgi_temp_path $work/run;
  server { listen 127.0.0.1:$port; root $work/feed; } }
CONF
nginx -c "$work/run/nginx.conf"
trap 'kill -QUIT $(cat "$work/run/nginx.pid") 2>/dev/null || true' EXIT
sleep 0.5
url=http://127.0.0.1:$port
mapfile -t files < <(cd "$work/feed" && find server -type f | sort)
bytes=$(cd "$work/feed" && cat "${files[@]}" | wc -c)
cat >"$work/config.yaml" <<CONF
cache: {dir: $work/cache}
images:
  gnupg_home: $work/appliance-gnupg
  feeds: [{name: bench, url: "$url/", keyring: $work/keyring.gpg}]
CONF
runs=${SYNC_BENCH_RUNS:-3}
: >"$work/times.tsv"
fetch_all() { mkdir -p "$1"; for f in "${files[@]}"; do curl -sf -o "$1/$(basename "$f")" "$url/$f"; done; }
now() { date +%s.%N; }
for run in $(seq "$runs"); do   # alternate, so drift on the machine hits all three alike
  t0=$(now); fetch_all "$work/plain"; t1=$(now)
  rm -rf "$work/plain"
  t2=$(now); fetch_all "$work/plain"; sync -f "$work/plain"; t3=$(now)  # made durable
  rm -rf "$work/plain" "$work/cache"
  t4=$(now)
  /usr/bin/time -v -o "$work/time.txt" "$bin" --config "$work/config.yaml" sync --json \
    >"$work/sync.json" 2>"$work/sync.log"
  t5=$(now)
  rss_kb=$(awk -F: '/Maximum resident set size/{gsub(/ /,"",$2); print $2}' "$work/time.txt")
  echo "$(echo "$t1 - $t0" | bc) $(echo "$t5 - $t4" | bc) $rss_kb $(echo "$t3 - $t2" | bc)" \
    >>"$work/times.tsv"
done
"$py" - "$work/times.tsv" "$bytes" "${#files[@]}" <<'PY'
import statistics, sys
rows = [list(map(float, line.split())) for line in open(sys.argv[1])]
size, n = int(sys.argv[2]), int(sys.argv[3])
plain, sync, rss, durable = ([r[i] for r in rows] for i in range(4))
mb = lambda t: size / t / 1e6
p, s = statistics.median(plain), statistics.median(sync)
print(f"items: {n}, {size / 2**20:.0f} MiB, {len(rows)} runs (medians; min-max)")
print(f"plain download (curl, sequential, to disk): {p:.2f} s, {mb(p):.0f} MB/s "
      f"({mb(max(plain)):.0f}-{mb(min(plain)):.0f})")
print(f"archive-local sync (verify + store + sign):  {s:.2f} s, {mb(s):.0f} MB/s "
      f"({mb(max(sync)):.0f}-{mb(min(sync)):.0f}), {p / s:.2f}x plain")
d = statistics.median(durable)
print(f"plain download + flush to disk (sync -f):   {d:.2f} s, {mb(d):.0f} MB/s, "
      f"sync is {d / s:.2f}x that")
print(f"sync peak RSS: {statistics.median(rss) / 1024:.1f} MB (max {max(rss) / 1024:.1f})")
PY
