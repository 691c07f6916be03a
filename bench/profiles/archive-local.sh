# archive-local as a forward proxy (Acquire::http::Proxy), for the apt_bench harness.
NAME=archive-local
PORT=3143
MODE=proxy
REMAP_PREFIX=/debian

prepare() { mkdir -p "$WORKDIR/cache"; }

start_cmd() {
  exec "$ARCHIVE_LOCAL_BIN" serve --listen "127.0.0.1:$PORT" \
    --cache-dir "$WORKDIR/cache" --remap "debian=$UPSTREAM_URL"
}
