# archive-local in path-remap form (http://HOST:PORT/debian/), for the apt_bench harness.
NAME=archive-local-remap
PORT=3144
MODE=remap
REMAP_PREFIX=/debian

prepare() { mkdir -p "$WORKDIR/cache"; }

start_cmd() {
  exec "$ARCHIVE_LOCAL_BIN" serve --listen "127.0.0.1:$PORT" \
    --cache-dir "$WORKDIR/cache" --remap "debian=$UPSTREAM_URL"
}
