# archive-local with `workers: 1` as a forward proxy, for apt_bench: one process, the
# per-core figure (what one core does; the default profile uses every core), beside the
# default profile under another name and port.
# shellcheck source=archive-local.sh
source "$(dirname "${BASH_SOURCE[0]}")/archive-local.sh"
NAME=archive-local-w1
PORT=3145

eval "base_$(declare -f prepare)"
prepare() {
  base_prepare
  echo 'workers: 1' >>"$WORKDIR/config.yaml"
}
