#!/usr/bin/env bash
# Builds the Debian package of turn-bpf with cargo-deb into target/debian/ and prints its path:
# /usr/bin/turn-bpf, the systemd unit turn-bpf.service (packaging/), and /etc/default/turn-bpf
# (a conffile). README: "Installing it as a service".
#
#   scripts/package.sh      # as root on a fresh machine: installs what is missing first
#
# As root it installs the Debian packages the build needs (scripts/common.sh); as any user it
# installs cargo-deb (pinned in common.sh) with cargo when that version is missing.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
SCRIPT=package.sh
# shellcheck source=scripts/common.sh
source scripts/common.sh

if [[ $(id -u) -eq 0 ]]; then
    install_packages
    keep_coturn_service_off
else
    log "not root: assuming the build's Debian packages are installed (scripts/common.sh)"
fi
require_cargo
install_cargo_deb

# cargo-deb builds the release binary itself and prints the path of the .deb last.
out="$(cargo deb --package turn-bpf --output target/debian/)"
deb="$(tail -n 1 <<<"$out")"
if [[ ! -f $deb ]]; then
    echo "$SCRIPT: cargo deb did not name a package file (its output: $out)" >&2
    exit 1
fi
log "built $deb"
echo "$deb"
