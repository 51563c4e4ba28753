#!/usr/bin/env bash
# The .deb in a fresh Debian 12: `cpack` builds shardtune_<version>_amd64.deb from this build,
# `apt-get install ./shardtune_*.deb` installs it with its Depends from the Debian archive into a
# copy of a minimal Debian 12 root (debootstrap), and there: the shardtune user, /var/lib/shardtune,
# the conffile and the unit are in place; `shardtune --version`; `shardtune-server --config
# /etc/shardtune/server.yaml --check`; a short training job, and one through shardtune-server
# running as the shardtune user.
#
# Opt-in (it needs root, network access to the Debian archive and minutes): SHARDTUNE_TEST_DEB=1;
# skipped (exit 77) otherwise, or where debootstrap, chroot or the archive cannot be used. The
# debootstrapped root and the downloaded packages are kept in $SHARDTUNE_DEB_CACHE (default
# /var/cache/shardtune), so a rerun neither bootstraps nor downloads again.
# Usage: deb_test.sh BUILD_BIN_DIR SOURCE_DIR
set -uo pipefail
bin=$(cd "$1" && pwd)
src=$2
build=$(dirname "$bin")
source "$(dirname "$0")/checks.sh"
cache=${SHARDTUNE_DEB_CACHE:-/var/cache/shardtune}
mirror=${SHARDTUNE_DEBIAN_MIRROR:-http://deb.debian.org/debian}

skip_all() { skip "$1"; summary; }
[ "${SHARDTUNE_TEST_DEB:-0}" = 1 ] || skip_all "the .deb install test is opt-in: SHARDTUNE_TEST_DEB=1 (root, the Debian archive, minutes)"
[ "$(id -u)" -eq 0 ] || skip_all "the .deb install test needs root (debootstrap, chroot)"
command -v debootstrap > /dev/null || apt-get install -y -qq debootstrap > /dev/null 2>&1 ||
  skip_all "no debootstrap (apt-get install debootstrap)"
command -v unshare > /dev/null || skip_all "no unshare (util-linux)"

# The base root, made once: a minimal Debian 12 (bookworm).
base=$cache/debian12-root
if [ ! -x "$base/usr/bin/apt-get" ]; then
  mkdir -p "$cache" && rm -rf "$base.tmp"
  echo "debootstrap of Debian 12 into $base (once; minutes)"
  if ! debootstrap --variant=minbase bookworm "$base.tmp" "$mirror" > "$cache/debootstrap.log" 2>&1; then
    tail -5 "$cache/debootstrap.log"
    rm -rf "$base.tmp"
    skip_all "debootstrap failed (no access to $mirror?); see $cache/debootstrap.log"
  fi
  mv "$base.tmp" "$base"
fi

work=$(mktemp -d /var/tmp/shardtune-deb.XXXXXX)
trap 'rm -rf --one-file-system "$work"' EXIT
# The package, from this build.
(cd "$build" && cpack -G DEB -B "$work/pkg" > "$work/cpack.log" 2>&1) || { cat "$work/cpack.log"; fail "cpack failed"; summary; }
deb=$(ls "$work"/pkg/shardtune_*_amd64.deb 2>/dev/null | head -n 1)
if [ -n "$deb" ]; then pass "cpack wrote $(basename "$deb")"; else fail "no shardtune_*_amd64.deb in $work/pkg"; summary; fi

# A fresh copy of the root for this run; mounts live in a private mount namespace, so they end
# with it (nothing of the host's stays mounted under $work).
root=$work/root
cp -a "$base" "$root"
cp "$deb" "$root/tmp/"
cp /etc/resolv.conf "$root/etc/resolv.conf"
cp "$(dirname "$0")/checks.sh" "$root/tmp/checks.sh"
cp "$(dirname "$0")/deb_checks.sh" "$root/tmp/deb_checks.sh"
mkdir -p "$cache/apt-archives/partial"
unshare --mount --propagation private bash -s -- "$root" "$cache" "$(basename "$deb")" > "$work/chroot.log" 2>&1 <<'INNER'
set -u
root=$1 cache=$2 deb=$3
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount --bind "$cache/apt-archives" "$root/var/cache/apt/archives"
# CUDA and NCCL, where this build links them, are NVIDIA's (not Debian packages): as on a GPU host.
if [ -d /usr/local/cuda ]; then mkdir -p "$root/usr/local/cuda" && mount --bind -o ro /usr/local/cuda "$root/usr/local/cuda"; fi
chroot "$root" apt-get update -qq || { echo "ARCHIVE-UNREACHABLE"; exit 77; }
echo "== apt-get install ./$deb"
DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -q --no-install-recommends "/tmp/$deb" || exit 3
chroot "$root" bash /tmp/deb_checks.sh
INNER
status=$?
if grep -q ARCHIVE-UNREACHABLE "$work/chroot.log"; then skip_all "the Debian archive ($mirror) is unreachable from the root"; fi
grep -E "^(ok|FAILED|SKIPPED): " "$work/chroot.log"
checks=$((checks + $(grep -c "^ok: \|^FAILED: " "$work/chroot.log")))
failures=$((failures + $(grep -c "^FAILED: " "$work/chroot.log")))
if [ $status -eq 3 ]; then
  tail -30 "$work/chroot.log"
  fail "apt-get install of the .deb failed (its Depends)"
elif [ $status -ne 0 ] && [ $status -ne 77 ]; then
  tail -30 "$work/chroot.log"
  fail "the checks in the installed root ended with exit $status"
else
  pass "the .deb installs into a fresh Debian 12 with its Depends"
fi
summary
