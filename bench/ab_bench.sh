#!/usr/bin/env bash
# Two builds of archive-local side by side on the cache-hit paths, measured alternately:
#   bench/ab_bench.sh BASE_BIN NEW_BIN        (env AB_RUNS=9, AB_SECONDS=5)
# e.g. BASE_BIN = the console script of a clean checkout of the previous release in its own
# venv, NEW_BIN = this tree's. Both appliances are pinned to CPU 0 and wrk to CPU 1
# (taskset), run with the default configuration (metrics on, access log to a file); each
# round runs, against each build in turn: 2 KB hits over 64 keep-alive connections, 2 KB hits
# with a new connection per request (16 connections, `Connection: close`), 16 MiB hits over
# 16 connections. Reported: medians of req/s and of the appliance's CPU time per request
# (utime + stime of the master and its workers from /proc around the run: steadier than
# throughput on a shared machine), and NEW/BASE ratios. Needs wrk (make bench installs it). Loopback only.
set -euo pipefail
base=${1:?BASE_BIN}; new=${2:?NEW_BIN}
here=$(cd "$(dirname "$0")" && pwd)
py=$(dirname "$new")/python
work=${AB_DIR:-/tmp/al-ab-bench}
runs=${AB_RUNS:-9}
secs=${AB_SECONDS:-5}
up_port=8097
# shellcheck source=lib/upstream.sh
source "$here/lib/upstream.sh"
loopback_upstream "$work" "$up_port" "$py"
start() {  # name port bin
  cat >"$work/$1.yaml" <<CONF
listen: 127.0.0.1:$2
cache: {dir: $work/cache-$1}
apt: {remaps: {debian: ["http://127.0.0.1:$up_port/debian"]}}
logging: {access_log: $work/access-$1.log}
admin: {token_file: $work/token-$1}
discovery: {mdns: false}
CONF
  taskset -c 0 "$3" --config "$work/$1.yaml" serve >"$work/$1.log" 2>&1 &
  pids+=($!)
  echo $! >"$work/$1.pid"
}
start base 8098 "$base"
start new 8099 "$new"
for port in 8098 8099; do  # both answering (a slow start is not a failed priming)
  for _ in $(seq 150); do curl -s -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.2; done
done
for port in 8098 8099; do
  for f in small large; do curl -sf -o /dev/null "http://127.0.0.1:$port/debian/pool/${f}_1.0_all.deb"; done
done
sleep 1
: >"$work/results.tsv"
cpu() {  # utime + stime of the service: the master and its workers (workers: auto)
  local total=0 p
  for p in "$1" $(pgrep -P "$1"); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}
measure() {  # name port label wrk-args...
  local name=$1 port=$2 label=$3; shift 3
  local pid c0 c1
  pid=$(cat "$work/$name.pid")
  c0=$(cpu "$pid")
  taskset -c 1 wrk -t1 -d"${secs}s" "$@" >"$work/wrk.txt"
  c1=$(cpu "$pid")
  local rps total
  rps=$(awk '/Requests\/sec/{print $2}' "$work/wrk.txt")
  total=$(awk '/requests in/{print $1}' "$work/wrk.txt")
  echo "$run $name $label $rps $(echo "($c1 - $c0) * 1000000 / $(getconf CLK_TCK) / $total" | bc -l)" >>"$work/results.tsv"
}
for run in $(seq "$runs"); do
  for name in base new; do
    port=$([ $name = base ] && echo 8098 || echo 8099)
    measure $name $port tiny-keepalive-c64 -c64 "http://127.0.0.1:$port/debian/pool/small_1.0_all.deb"
    measure $name $port tiny-close-c16 -c16 -H "Connection: close" "http://127.0.0.1:$port/debian/pool/small_1.0_all.deb"
    measure $name $port large-c16 -c16 "http://127.0.0.1:$port/debian/pool/large_1.0_all.deb"
  done
done
"$py" - "$work/results.tsv" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
print(f"{len(rows) // 6} alternating rounds; medians (min-max)")
print("| load | base req/s | new req/s | new/base | base CPU us/req | new CPU us/req | base/new CPU |")
print("|---|---|---|---|---|---|---|")
for label in ("tiny-keepalive-c64", "tiny-close-c16", "large-c16"):
    def vals(name, col):
        return [float(r[col]) for r in rows if r[1] == name and r[2] == label]
    def cell(v):
        return f"{statistics.median(v):.0f} ({min(v):.0f}-{max(v):.0f})"
    def cellf(v):
        return f"{statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})"
    b, n = vals("base", 3), vals("new", 3)
    bc, nc = vals("base", 4), vals("new", 4)
    print(f"| {label} | {cell(b)} | {cell(n)} | {statistics.median(n) / statistics.median(b):.3f} "
          f"| {cellf(bc)} | {cellf(nc)} | {statistics.median(bc) / statistics.median(nc):.3f} |")
PY
