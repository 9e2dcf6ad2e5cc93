#!/usr/bin/env bash
# Builds the tiny image the tests and benchmarks run, without a registry:
# a static busybox plus one symlink per applet, imported with `docker import`.
#
#   scripts/test-image.sh            # build benchwarden-test:busybox unless it exists
#   scripts/test-image.sh --force    # build it again
#
# BENCHWARDEN_TEST_BUSYBOX overrides the busybox (default /bin/busybox, from the
# Debian/Ubuntu package busybox-static). The integration tests build the same
# image themselves through the Engine API; this script is for the shell side.
set -euo pipefail

image=benchwarden-test:busybox
busybox=${BENCHWARDEN_TEST_BUSYBOX:-/bin/busybox}

if [[ ${1:-} != --force ]] && docker image inspect "$image" >/dev/null 2>&1; then
    echo "$image exists"
    exit 0
fi
if [[ ! -x $busybox ]]; then
    echo "error: $busybox not found; install it with: apt-get install -y busybox-static" >&2
    exit 2
fi
if ldd "$busybox" >/dev/null 2>&1; then
    echo "error: $busybox is dynamically linked; install busybox-static" >&2
    exit 2
fi

old=$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,etc,root,usr/bin,var,tmp}
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
chmod 0755 "$root/bin/busybox"
for applet in $("$busybox" --list); do
    [[ $applet == busybox || $applet == */* ]] || ln -s busybox "$root/bin/$applet"
done
tar --numeric-owner --owner=0 --group=0 -C "$root" -c . |
    docker import --change 'CMD ["/bin/sh"]' - "$image" >/dev/null
# The image it replaces, if nothing uses it any more.
[[ -z $old ]] || docker rmi "$old" >/dev/null 2>&1 || true
echo "built $image"
