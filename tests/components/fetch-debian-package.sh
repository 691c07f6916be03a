#!/bin/sh
# fetch-debian-package.sh SUITE PACKAGE DEST: download PACKAGE of another Debian release
# (e.g. trixie's cloud-init) into DEST with apt's own `apt-get download`, through an
# isolated apt configuration: sources, lists and cache live in a temporary folder, so the
# machine's sources, lists and cache are never touched. The mirror is the one the
# machine's own Debian sources use (or $DEBIAN_MIRROR); the keyring is Debian's.
set -eu
suite=$1 package=$2 dest=$3
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then  # deb822 sources: the URIs of the stanza with this release
  mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk -v c="$codename" '
    /^URIs:/ {u = $2}
    /^Suites:/ {for (i = 2; i <= NF; i++) if ($i == c) {print u; exit}}')
fi
if [ -z "$mirror" ]; then  # one-line sources
  mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk -v c="$codename" '
    $1 == "deb" {i = 2; if ($2 ~ /^\[/) {while ($i !~ /\]$/) i++; i++}
                 if ($(i + 1) == c) {print $i; exit}}')
fi
[ -n "$mirror" ] || { echo "$0: no Debian mirror in the apt sources; set DEBIAN_MIRROR" >&2; exit 1; }
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/sources.list.d" "$work/lists/partial" "$work/cache/archives/partial" "$dest"
printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: %s\n' \
  "$mirror" "$suite" "$keyring" > "$work/sources.list.d/$suite.sources"
set -- -o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$work/sources.list.d" \
  -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" \
  -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= -o APT::Sandbox::User=root -q
apt-get "$@" update
cd "$dest" && apt-get "$@" download "$package"
