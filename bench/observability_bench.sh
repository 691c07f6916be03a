#!/usr/bin/env bash
# Observability cost on the hot path: cache-hit throughput of two appliances in one run,
# one with metrics + access log (to a file) on, one with both off, measured alternately.
#   bench/observability_bench.sh        (env OBS_BENCH_RUNS=9, OBS_BENCH_SECONDS=5)
# Both appliances are pinned to CPU 0 and wrk to CPU 1 (taskset), so they do not trade places
# with the load generator between runs; the figure is the median of the paired per-round
# ratios. Needs wrk (make bench installs it). Loopback only.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${ARCHIVE_LOCAL_BIN:-$here/../.venv/bin/archive-local}
py=$(dirname "$bin")/python
work=${OBS_BENCH_DIR:-/tmp/al-obs-bench}
runs=${OBS_BENCH_RUNS:-9}
secs=${OBS_BENCH_SECONDS:-5}
up_port=${OBS_BENCH_UPSTREAM_PORT:-8094}
on_port=${OBS_BENCH_ON_PORT:-8095}
off_port=${OBS_BENCH_OFF_PORT:-8096}
# shellcheck source=lib/upstream.sh
source "$here/lib/upstream.sh"
loopback_upstream "$work" "$up_port" "$py"
start() {  # name port metrics access_log
  cat >"$work/$1.yaml" <<CONF
listen: 127.0.0.1:$2
cache: {dir: $work/cache-$1}
apt: {remaps: {debian: ["http://127.0.0.1:$up_port/debian"]}}
metrics: {enabled: $3}
logging: {access_log: $4}
admin: {token_file: $work/token-$1}
CONF
  taskset -c 0 "$bin" --config "$work/$1.yaml" serve >"$work/$1.log" 2>&1 &
  pids+=($!)
  echo $! >"$work/$1.pid"
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
total() { awk '/requests in/{print $1}'; }
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }  # utime + stime, clock ticks
for run in $(seq "$runs"); do
  for name in on off; do
    port=$([ $name = on ] && echo "$on_port" || echo "$off_port")
    pid=$(cat "$work/$name.pid")
    c0=$(cpu "$pid")
    taskset -c 1 wrk -t1 -c64 -d"${secs}s" "http://127.0.0.1:$port/debian/pool/small_1.0_all.deb" >"$work/wrk.txt"
    c1=$(cpu "$pid")
    small=$(rate <"$work/wrk.txt")
    # appliance CPU per small request (microseconds): steadier than throughput on a shared box
    small_cpu=$(echo "($c1 - $c0) * 1000000 / $(getconf CLK_TCK) / $(total <"$work/wrk.txt")" | bc -l)
    large=$(taskset -c 1 wrk -t1 -c16 -d"${secs}s" "http://127.0.0.1:$port/debian/pool/large_1.0_all.deb" | rate)
    echo "$run $name $small $large $small_cpu" >>"$work/results.tsv"
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
    ons = {r[0]: float(r[col]) for r in rows if r[1] == "on"}
    ratios = sorted(ons[r[0]] / float(r[col]) for r in rows if r[1] == "off")
    print(f"{what}: on {on:.0f} ({span('on', col)}), off {off:.0f} ({span('off', col)}); "
          f"on/off per round: median {statistics.median(ratios):.3f} "
          f"({ratios[0]:.2f}-{ratios[-1]:.2f}); ratio of medians {on / off:.3f}")
on_cpu, off_cpu = med("on", 4), med("off", 4)
print(f"appliance CPU per small hit: on {on_cpu:.1f} us ({span('on', 4)}), off {off_cpu:.1f} us "
      f"({span('off', 4)}); throughput-equivalent ratio off/on {off_cpu / on_cpu:.3f}")
print(f"access log written: {int(sys.argv[2])} lines, {int(sys.argv[3]) / 1e6:.0f} MB")
PY
