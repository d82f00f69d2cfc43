#!/bin/sh
# Installs Weft on Debian (12 or later) or Ubuntu (22.04 or later), amd64 or arm64:
#
#   curl -fsSL http://SERVER/install.sh | sh
#
# weft-control serves this script with its own URL filled in below, and the `weft` package
# from its package directory (docs/INSTALL.md). The script checks the system, downloads the
# package and its checksum, verifies it, installs it with apt-get (with sudo when not root),
# enables weftd.service and makes the server the default login server (/etc/default/weft), so
# `sudo weft up` needs no --login-server. It changes nothing before the download is verified;
# running it again is harmless.
#
# Options: --dry-run (check and download, say what would be done, change nothing),
#          --server URL (another server than the one this script came from).
# For tests: WEFT_INSTALL_OS_RELEASE (default /etc/os-release) and WEFT_INSTALL_DEFAULTS
# (default /etc/default/weft) replace those paths.
set -eu

SERVER="@WEFT_SERVER@"
OS_RELEASE=${WEFT_INSTALL_OS_RELEASE:-/etc/os-release}
DEFAULTS=${WEFT_INSTALL_DEFAULTS:-/etc/default/weft}
DRY_RUN=0

say() {
    printf '%s\n' "$*"
}

# fail MESSAGE: one sentence, then stop (nothing has been changed unless MESSAGE says so).
fail() {
    printf 'weft install: %s\n' "$*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) DRY_RUN=1 ;;
        --server)
            [ $# -ge 2 ] || fail "--server needs a URL, e.g. --server http://control.example.net:8080."
            SERVER=$2
            shift
            ;;
        --server=*) SERVER=${1#--server=} ;;
        -h | --help)
            say "usage: install.sh [--dry-run] [--server URL]"
            exit 0
            ;;
        *) fail "unknown option $1 (the options are --dry-run and --server URL)." ;;
    esac
    shift
done
SERVER=${SERVER%/}
case $SERVER in
    http://?* | https://?*) ;;
    @WEFT_SERVER*) fail "this copy of install.sh does not know its server: fetch it from one (curl -fsSL http://SERVER/install.sh | sh) or pass --server URL." ;;
    *) fail "the server URL '$SERVER' must start with http:// or https://." ;;
esac

# run CMD...: runs a command that changes the system (as root), or shows it with --dry-run.
run() {
    if [ "$DRY_RUN" = 1 ]; then
        say "would run: ${SUDO:+sudo }$*"
    elif [ -n "$SUDO" ]; then
        sudo "$@"
    else
        "$@"
    fi
}

# --- the system
[ -r "$OS_RELEASE" ] || fail "cannot read $OS_RELEASE: this installer supports Debian and Ubuntu only."
ID="" ID_LIKE="" VERSION_ID="" PRETTY_NAME=""
# shellcheck disable=SC1090 # os-release is a shell fragment by definition (os-release(5))
. "$OS_RELEASE"
[ -n "$PRETTY_NAME" ] || PRETTY_NAME="$ID $VERSION_ID"
# major VERSION: the number before the first dot (0 when there is none).
major() {
    v=${1%%.*}
    case $v in '' | *[!0-9]*) echo 0 ;; *) echo "$v" ;; esac
}
case $ID in
    debian)
        # testing and unstable have no VERSION_ID: newer than any release, supported.
        if [ -n "$VERSION_ID" ] && [ "$(major "$VERSION_ID")" -lt 12 ]; then
            fail "$PRETTY_NAME is too old: Weft needs Debian 12 or later."
        fi
        ;;
    ubuntu)
        if [ "$(major "$VERSION_ID")" -lt 22 ]; then
            fail "$PRETTY_NAME is too old: Weft needs Ubuntu 22.04 or later."
        fi
        ;;
    *)
        case " $ID_LIKE " in
            *" debian "* | *" ubuntu "*) ;;
            *) fail "$PRETTY_NAME is not supported: this installer supports Debian and Ubuntu (and their derivatives) only." ;;
        esac
        ;;
esac
command -v dpkg >/dev/null 2>&1 || fail "dpkg is missing: this installer supports Debian and Ubuntu only."
ARCH=$(dpkg --print-architecture)
case $ARCH in
    amd64 | arm64) ;;
    *) fail "the architecture $ARCH is not supported: Weft has packages for amd64 and arm64." ;;
esac
command -v curl >/dev/null 2>&1 || fail "curl is needed to download Weft: install it with 'apt-get install curl' and run this again."
command -v sha256sum >/dev/null 2>&1 || fail "sha256sum is needed to verify the download: install coreutils and run this again."
command -v apt-get >/dev/null 2>&1 || fail "apt-get is missing: this installer supports Debian and Ubuntu only."
if [ "$(id -u)" = 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO=sudo
else
    fail "installing needs root: run this as root, or install sudo and run it as a user who may use it."
fi

say "Installing Weft from $SERVER on $PRETTY_NAME ($ARCH)$([ "$DRY_RUN" = 1 ] && echo ', dry run: nothing will be changed')."

# --- the download, verified before anything changes
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT INT TERM
curl -fsSL --retry 2 -o "$TMP/SHA256SUMS" "$SERVER/packages/SHA256SUMS" \
    || fail "cannot fetch the package list $SERVER/packages/SHA256SUMS (is the server up?); nothing was changed."
# The newest weft_<version>_<arch>.deb listed.
LINE=$(grep -E "^[0-9a-f]{64}  weft_[^_ /]+_${ARCH}\.deb\$" "$TMP/SHA256SUMS" | sort -t_ -k2,2V | tail -n 1 || true)
[ -n "$LINE" ] || fail "$SERVER has no weft package for $ARCH (none in its packages/SHA256SUMS); nothing was changed."
SUM=${LINE%% *}
DEB=${LINE##* }
VERSION=${DEB#weft_}
VERSION=${VERSION%_*}
INSTALLED=$(dpkg-query -W -f='${Status} ${Version}' weft 2>/dev/null || true)
if [ "$INSTALLED" = "install ok installed $VERSION" ]; then
    say "weft $VERSION is installed already."
else
    curl -fsSL --retry 2 -o "$TMP/$DEB" "$SERVER/packages/$DEB" \
        || fail "cannot download $SERVER/packages/$DEB; nothing was changed."
    GOT=$(sha256sum "$TMP/$DEB" | cut -d' ' -f1)
    [ "$GOT" = "$SUM" ] \
        || fail "the download of $DEB is corrupt or incomplete (sha256 $GOT, the server lists $SUM); nothing was changed."
    # apt-get reads the file as the _apt user.
    chmod 0755 "$TMP"
    chmod 0644 "$TMP/$DEB"
    say "Installing $DEB (sha256 verified)."
    # No Recommends (openssh-client, for `weft ssh`): the package needs only libc6, so a node
    # installs from its control server even when it cannot reach a Debian mirror.
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$TMP/$DEB" \
        || fail "apt-get could not install $DEB (see its messages above)."
fi

# --- this server as the default login server
LOGIN_LINE="WEFT_LOGIN_SERVER=$SERVER"
if [ -f "$DEFAULTS" ] && grep -qxF "$LOGIN_LINE" "$DEFAULTS"; then
    say "$DEFAULTS names $SERVER already."
else
    : >"$TMP/defaults"
    if [ -f "$DEFAULTS" ]; then
        # The file's other lines stay; grep fails when it keeps none.
        grep -v '^\(export \)\{0,1\}WEFT_LOGIN_SERVER=' "$DEFAULTS" >"$TMP/defaults" || true
    fi
    say "$LOGIN_LINE" >>"$TMP/defaults"
    chmod 0644 "$TMP/defaults"
    say "Making $SERVER the default login server ($DEFAULTS)."
    run install -m 0644 "$TMP/defaults" "$DEFAULTS" || fail "cannot write $DEFAULTS."
fi

# --- the service
if [ -d /run/systemd/system ]; then
    run systemctl enable --now weftd.service || fail "cannot enable and start weftd.service (see systemctl status weftd)."
else
    say "systemd is not running here: weftd.service is enabled for the next boot; start weftd by hand until then."
fi

if [ "$DRY_RUN" = 1 ]; then
    say "Dry run complete: nothing was changed."
else
    say "Installation complete! Log in to start using Weft by running: sudo weft up"
fi
