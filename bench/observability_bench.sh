#!/usr/bin/env bash
# Observability cost on the hot path: cache-hit throughput of two appliances in one run,
# one with metrics + access log (to a file) on, one with both off, measured alternately.
#   bench/observability_bench.sh        (env OBS_BENCH_RUNS=3, OBS_BENCH_SECONDS=10)
# Needs wrk (make bench installs it). Loopback only.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${ARCHIVE_LOCAL_BIN:-$here/../.venv/bin/archive-local}
py=$(dirname "$bin")/python
work=${OBS_BENCH_DIR:-/tmp/al-obs-bench}
runs=${OBS_BENCH_RUNS:-3}
secs=${OBS_BENCH_SECONDS:-10}
up_port=${OBS_BENCH_UPSTREAM_PORT:-8094}
on_port=${OBS_BENCH_ON_PORT:-8095}
off_port=${OBS_BENCH_OFF_PORT:-8096}
rm -rf "$work"; mkdir -p "$work/up/debian/pool"
head -c 2048 /dev/urandom >"$work/up/debian/pool/small_1.0_all.deb"
head -c $((16 << 20)) /dev/urandom >"$work/up/debian/pool/large_1.0_all.deb"
"$py" -m http.server -b 127.0.0.1 -d "$work/up" "$up_port" >/dev/null 2>&1 &
pids=($!)
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
start() {  # name port metrics access_log
  cat >"$work/$1.yaml" <<CONF
listen: 127.0.0.1:$2
cache: {dir: $work/cache-$1}
apt: {remaps: {debian: ["http://127.0.0.1:$up_port/debian"]}}
metrics: {enabled: $3}
logging: {access_log: $4}
admin: {token_file: $work/token-$1}
CONF
  "$bin" --config "$work/$1.yaml" serve >"$work/$1.log" 2>&1 &
  pids+=($!)
}
start on "$on_port" true "$work/access.log"
start off "$off_port" false off
sleep 2
for port in "$on_port" "$off_port"; do
  for f in small large; do curl -sf -o /dev/null "http://127.0.0.1:$port/debian/pool/${f}_1.0_all.deb"; done
done
sleep 1
: >"$work/results.tsv"
rate() { awk '/Requests\/sec/{print $2}'; }
for run in $(seq "$runs"); do
  for name in on off; do
    port=$([ $name = on ] && echo "$on_port" || echo "$off_port")
    small=$(wrk -t1 -c64 -d"${secs}s" "http://127.0.0.1:$port/debian/pool/small_1.0_all.deb" | rate)
    large=$(wrk -t1 -c16 -d"${secs}s" "http://127.0.0.1:$port/debian/pool/large_1.0_all.deb" | rate)
    echo "$run $name $small $large" >>"$work/results.tsv"
  done
done
lines=$(wc -l <"$work/access.log")
"$py" - "$work/results.tsv" "$lines" "$(stat -c %s "$work/access.log")" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
def med(name, col): return statistics.median(float(r[col]) for r in rows if r[1] == name)
def span(name, col):
    v = [float(r[col]) for r in rows if r[1] == name]; return f"{min(v):.0f}-{max(v):.0f}"
runs = len(rows) // 2
print(f"{runs} alternating runs per setting (medians; min-max)")
for col, what in ((2, "small 2 KB hits, 64 keep-alive conns (req/s)"),
                  (3, "large 16 MiB hits, 16 conns (req/s)")):
    on, off = med("on", col), med("off", col)
    print(f"{what}: on {on:.0f} ({span('on', col)}), off {off:.0f} ({span('off', col)}), "
          f"on/off {on / off:.3f}")
print(f"access log written: {int(sys.argv[2])} lines, {int(sys.argv[3]) / 1e6:.0f} MB")
PY
