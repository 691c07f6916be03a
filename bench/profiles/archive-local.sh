# archive-local as a forward proxy (Acquire::http::Proxy), for the apt_bench harness, with
# the defaults users run (`workers: auto`: one process per core); only what a benchmark must
# not touch is set: the admin token and the appliance's key stay in the run's directory.
NAME=archive-local
PORT=3143
MODE=proxy
REMAP_PREFIX=/debian

prepare() {
  mkdir -p "$WORKDIR/cache"
  printf 'admin: {token_file: %s/admin-token}\nimages: {gnupg_home: %s/gnupg}\ndiscovery: {mdns: false}\n' \
    "$WORKDIR" "$WORKDIR" >"$WORKDIR/config.yaml"
}

start_cmd() {
  exec "$ARCHIVE_LOCAL_BIN" --config "$WORKDIR/config.yaml" serve --listen "127.0.0.1:$PORT" \
    --cache-dir "$WORKDIR/cache" --remap "debian=$UPSTREAM_URL"
}
