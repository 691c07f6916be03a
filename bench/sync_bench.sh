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
sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
mkdir -p "$work/plain"
t0=$(date +%s.%N)
for f in "${files[@]}"; do curl -sf -o "$work/plain/$(basename "$f")" "$url/$f"; done
t1=$(date +%s.%N)
rm -rf "$work/plain"
cat >"$work/config.yaml" <<CONF
cache: {dir: $work/cache}
images:
  gnupg_home: $work/appliance-gnupg
  feeds: [{name: bench, url: "$url/", keyring: $work/keyring.gpg}]
CONF
t2=$(date +%s.%N)
/usr/bin/time -v -o "$work/time.txt" "$bin" --config "$work/config.yaml" sync --json >"$work/sync.json"
t3=$(date +%s.%N)
rss_kb=$(awk -F: '/Maximum resident set size/{gsub(/ /,"",$2); print $2}' "$work/time.txt")
awk -v b="$bytes" -v n="${#files[@]}" -v p="$(echo "$t1 - $t0" | bc)" -v s="$(echo "$t3 - $t2" | bc)" \
    -v r="$rss_kb" 'BEGIN {
  printf "items: %d, %.0f MiB\n", n, b / 1048576
  printf "plain download (curl, sequential, to disk): %.2f s, %.0f MB/s\n", p, b / p / 1e6
  printf "archive-local sync (verify + store + sign):  %.2f s, %.0f MB/s (%.2fx plain)\n", s, b / s / 1e6, p / s
  printf "sync peak RSS: %.1f MB\n", r / 1024 }'
