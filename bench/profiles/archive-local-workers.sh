# archive-local with `workers: 2` (one per core here) as a forward proxy, for apt_bench.
NAME=archive-local-w2
PORT=3145
MODE=proxy
REMAP_PREFIX=/debian

prepare() {
  mkdir -p "$WORKDIR/cache"
  printf 'workers: 2\nadmin: {token_file: %s/admin-token}\nimages: {gnupg_home: %s/gnupg}\ndiscovery: {mdns: false}\n' \
    "$WORKDIR" "$WORKDIR" >"$WORKDIR/config.yaml"
}

start_cmd() {
  exec "$ARCHIVE_LOCAL_BIN" --config "$WORKDIR/config.yaml" serve --listen "127.0.0.1:$PORT" \
    --cache-dir "$WORKDIR/cache" --remap "debian=$UPSTREAM_URL"
}
