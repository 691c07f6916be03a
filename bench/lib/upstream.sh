# shellcheck shell=bash
# A loopback upstream for the hit-path benchmarks: a 2 KB and a 16 MiB .deb under
# $work/up/debian/pool, served by Python's http.server on 127.0.0.1:$2 (its pid starts the
# caller's `pids` array, killed on exit).
#   source bench/lib/upstream.sh; loopback_upstream "$work" "$up_port" "$py"
loopback_upstream() {
  local work=$1 port=$2 py=$3
  rm -rf "$work"; mkdir -p "$work/up/debian/pool"
  head -c 2048 /dev/urandom >"$work/up/debian/pool/small_1.0_all.deb"
  head -c $((16 << 20)) /dev/urandom >"$work/up/debian/pool/large_1.0_all.deb"
  "$py" -m http.server -b 127.0.0.1 -d "$work/up" "$port" >/dev/null 2>&1 &
  pids=($!)
  trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
}
