# archive-local with `workers: 2` (one per core here) as a forward proxy, for apt_bench:
# the archive-local profile with another name, port and its `workers` line changed.
# shellcheck source=archive-local.sh
source "$(dirname "${BASH_SOURCE[0]}")/archive-local.sh"
NAME=archive-local-w2
PORT=3145

eval "base_$(declare -f prepare)"
prepare() {
  base_prepare
  sed -i 's/^workers: 1$/workers: 2/' "$WORKDIR/config.yaml"
}
