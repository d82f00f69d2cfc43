#!/bin/sh
# Builds the Debian packages `weft` (weftd + weft CLI, weftd.service) and
# `weft-control` (server, weft-control.service, /etc/weft-control/config.toml)
# with dpkg-deb from binaries cargo has already built: CI packages the
# dev-profile binaries its test phase built, with no second compile; a release
# is `cargo build --release -p weftd -p weft -p weft-control` then
# `packaging/build-debs.sh target/release`.
# Binaries are stripped in the package; the version is the
# workspace's, the architecture dpkg's. systemd-analyze verify checks both
# units against the staged trees.
#
# Usage: packaging/build-debs.sh [BIN_DIR [OUT_DIR]]
#   BIN_DIR: where weftd, weft and weft-control are (default: target/debug)
#   OUT_DIR: where the .debs go (default: target/debian)
set -eu

die() {
    echo "build-debs.sh: $*" >&2
    exit 1
}

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
bin=${1:-$root/target/debug}
out=${2:-$root/target/debian}
for tool in dpkg-deb dpkg strip objdump md5sum gzip; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (apt-get install dpkg binutils coreutils)"
done
for b in weftd weft weft-control; do
    [ -x "$bin/$b" ] || die "$bin/$b is missing: build it first (cargo build -p weftd -p weft -p weft-control)"
done
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$root/Cargo.toml")
[ -n "$version" ] || die "no version in [workspace.package] of $root/Cargo.toml"
arch=$(dpkg --print-architecture)
mkdir -p "$out"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT INT TERM

# put_bin SRC DEST: installs a binary stripped as dh_strip does.
put_bin() {
    install -D -m 0755 "$1" "$2"
    strip --strip-unneeded --remove-section=.comment --remove-section=.note "$2"
}

# glibc_depends DIR: "libc6 (>= V)" for the newest GLIBC_ symbol version the
# binaries under DIR use.
glibc_depends() {
    v=$(find "$1" -type f -perm -0100 -exec objdump -T {} + 2>/dev/null \
        | sed -n 's/.*GLIBC_\([0-9][0-9.]*\).*/\1/p' | sort -t. -k1,1n -k2,2n -k3,3n | tail -n 1)
    [ -n "$v" ] || die "cannot find the glibc version the binaries need"
    echo "libc6 (>= $v)"
}

# finish PKG DIR DEPENDS EXTRA_FIELDS DESCRIPTION: control file, md5sums, .deb.
finish() {
    pkg=$1 dir=$2 depends=$3 extra=$4 description=$5
    install -d -m 0755 "$dir/usr/share/doc/$pkg"
    # docs/INSTALL.md as README.Debian: how this package is laid out and used.
    install -m 0644 "$root/docs/INSTALL.md" "$dir/usr/share/doc/$pkg/README.Debian"
    printf '%s (%s) unstable; urgency=medium\n\n  * Weft %s; the changes are in the git history.\n\n -- Weft developers <weft@example.invalid>  %s\n' \
        "$pkg" "$version" "$version" "$(LC_ALL=C date -u -R -d @"${SOURCE_DATE_EPOCH:-0}")" \
        | gzip -9n >"$dir/usr/share/doc/$pkg/changelog.gz"
    chmod 0644 "$dir/usr/share/doc/$pkg/changelog.gz"
    {
        echo "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
        echo "Upstream-Name: weft"
        echo ""
        echo "Files: *"
        echo "Copyright: 2025-2026 The Weft developers"
        echo "License: Apache-2.0"
        echo " On Debian systems, the full text of the Apache License 2.0 is in"
        echo " /usr/share/common-licenses/Apache-2.0."
    } >"$dir/usr/share/doc/$pkg/copyright"
    chmod 0644 "$dir/usr/share/doc/$pkg/copyright"
    install -D -m 0644 "$here/$pkg/lintian-overrides" "$dir/usr/share/lintian/overrides/$pkg"
    install -d -m 0755 "$dir/DEBIAN"
    for s in postinst prerm postrm; do
        install -m 0755 "$here/$pkg/$s" "$dir/DEBIAN/$s"
    done
    (cd "$dir" && find etc -type f 2>/dev/null | sed 's|^|/|' | sort) >"$dir/DEBIAN/conffiles"
    [ -s "$dir/DEBIAN/conffiles" ] || rm -f "$dir/DEBIAN/conffiles"
    (cd "$dir" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | sort \
        | xargs md5sum) >"$dir/DEBIAN/md5sums"
    size=$(du -sk --exclude=DEBIAN "$dir" | cut -f1)
    {
        echo "Package: $pkg"
        echo "Version: $version"
        echo "Architecture: $arch"
        echo "Maintainer: Weft developers <weft@example.invalid>"
        echo "Installed-Size: $size"
        echo "Depends: $depends"
        [ -z "$extra" ] || printf '%s\n' "$extra"
        echo "Section: net"
        echo "Priority: optional"
        echo "Homepage: https://example.invalid/weft"
        printf 'Description: %s\n' "$description"
    } >"$dir/DEBIAN/control"
    find "$dir" -type d -exec chmod 0755 {} +
    dpkg-deb --root-owner-group -Zxz -z3 --build "$dir" "$out/${pkg}_${version}_${arch}.deb" >/dev/null
    echo "$out/${pkg}_${version}_${arch}.deb"
}

# --- weft: the node
w=$stage/weft
put_bin "$bin/weftd" "$w/usr/sbin/weftd"
put_bin "$bin/weft" "$w/usr/bin/weft"
install -D -m 0644 "$here/weft/weftd.service" "$w/lib/systemd/system/weftd.service"
install -D -m 0644 "$here/weft/default-weftd" "$w/etc/default/weftd"
install -D -m 0644 "$here/weft/weftd-harden.conf" "$w/usr/share/doc/weft/examples/weftd-harden.conf"

# --- weft-control: the server
c=$stage/weft-control
put_bin "$bin/weft-control" "$c/usr/bin/weft-control"
install -D -m 0644 "$here/weft-control/weft-control.service" "$c/lib/systemd/system/weft-control.service"
install -D -m 0644 "$here/weft-control/config.toml" "$c/etc/weft-control/config.toml"
install -D -m 0600 "$here/weft-control/default-weft-control" "$c/etc/default/weft-control"

# The units, checked by systemd-analyze verify against the host's units, with
# ExecStart= pointing at the staged binaries (it must name an executable).
if command -v systemd-analyze >/dev/null 2>&1; then
    mkdir -p "$stage/verify"
    sed "s|/usr/sbin/weftd|$w/usr/sbin/weftd|" "$here/weft/weftd.service" >"$stage/verify/weftd.service"
    sed "s|/usr/bin/weft-control|$c/usr/bin/weft-control|" "$here/weft-control/weft-control.service" \
        >"$stage/verify/weft-control.service"
    systemd-analyze verify "$stage/verify/weftd.service" "$stage/verify/weft-control.service" \
        || die "systemd-analyze verify failed on the units in $here"
fi

weft_deb=$(finish weft "$w" "$(glibc_depends "$w/usr")" "Recommends: openssh-client" \
    "node of the Weft mesh VPN: weftd daemon and weft CLI
 Weft is a self-hosted mesh VPN in the spirit of Tailscale. This package has
 weftd (userspace WireGuard on TUN, packet filter, SSH server, LocalAPI) as the
 systemd service weftd.service, and the weft command line.")
echo "$weft_deb"
# The client package of the same version, served at /packages/ for /install.sh
# (packages-dir in the shipped config.toml).
install -D -m 0644 "$weft_deb" "$c/usr/share/weft-control/packages/$(basename "$weft_deb")"
finish weft-control "$c" "$(glibc_depends "$c/usr")" "" \
    "coordination server of the Weft mesh VPN
 weft-control coordinates a Weft mesh VPN: node registration, network maps,
 access policy, the embedded relay and STUN, and /install.sh for new nodes.
 It runs as the systemd service weft-control.service."
