# squid as squid-deb-proxy configures it (Debian 12 has squid, not the squid-deb-proxy
# wrapper): a forward proxy caching .deb files for long and indexes briefly, cache on
# disk under the run's directory, for the apt_bench harness.
NAME=squid-deb-proxy
PORT=8000
MODE=proxy

prepare() {
  mkdir -p "$WORKDIR/cache"
  cat >"$WORKDIR/squid.conf" <<EOF
http_port 127.0.0.1:$PORT
pid_filename $WORKDIR/squid.pid
cache_dir aufs $WORKDIR/cache 4000 16 256
cache_mem 200 MB
maximum_object_size 512 MB
maximum_object_size_in_memory 1 MB
access_log none
cache_store_log none
cache_log $WORKDIR/cache.log
coredump_dir $WORKDIR
acl local src 127.0.0.1/32
acl Safe_ports port 80 ${UPSTREAM_HOSTPORT##*:}
http_access deny !Safe_ports
http_access allow local
http_access deny all
refresh_pattern deb\$ 129600 100% 129600
refresh_pattern udeb\$ 129600 100% 129600
refresh_pattern (Packages|Sources)(\.gz|\.bz2|\.xz)?\$ 0 20% 4320
refresh_pattern (Release|InRelease|Release\.gpg)\$ 0 20% 4320
refresh_pattern . 0 20% 4320
EOF
  chown -R proxy:proxy "$WORKDIR"  # squid drops root for the proxy user
  /usr/sbin/squid -N -z -f "$WORKDIR/squid.conf" >/dev/null 2>&1
}

start_cmd() {
  exec /usr/sbin/squid -N -f "$WORKDIR/squid.conf"
}
