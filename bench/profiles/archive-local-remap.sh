# archive-local in path-remap form (http://HOST:PORT/debian/), for the apt_bench harness:
# the forward-proxy profile with another name, port and mode.
# shellcheck source=archive-local.sh
source "$(dirname "${BASH_SOURCE[0]}")/archive-local.sh"
NAME=archive-local-remap
PORT=3144
MODE=remap
