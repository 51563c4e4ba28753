#!/usr/bin/env bash
# Builds and tests shardtune against the newest toolchain Debian has: a Debian unstable chroot
# (LibTorch 2.x, the newest GCC, CMake and Open MPI) made with debootstrap. GPU users build
# against the official LibTorch 2.x; this is how that API is checked on a machine without a GPU.
# Needs root and Debian's package archive; the chroot stays for the next run. To start over,
# `rm -rf --one-file-system ROOT` once no mount is left under it (`findmnt -R ROOT`). The Slurm
# test is left out: the chroot runs no Slurm.
#   scripts/check-debian-unstable.sh [ROOT]      (default /var/tmp/shardtune-unstable)
set -euo pipefail
root=${1:-/var/tmp/shardtune-unstable}
src=$(cd "$(dirname "$0")/.." && pwd)

if [ ! -x "$root/usr/bin/apt-get" ]; then
  command -v debootstrap > /dev/null || apt-get install -y -qq debootstrap
  debootstrap --variant=minbase --include=ca-certificates sid "$root" http://deb.debian.org/debian
  # Unstable's Release file can be older than its Valid-Until on a mirror snapshot.
  echo 'Acquire::Check-Valid-Until "false";' > "$root/etc/apt/apt.conf.d/99shardtune"
fi
cp /etc/resolv.conf "$root/etc/"
mounts=(proc sys dev dev/pts)
[ -d /usr/local/cuda ] && mounts+=(usr/local/cuda)  # NCCL's headers: the NCCL backend compiles too
[ -d "$src/../shared" ] && mounts+=(work/shared)
cleanup() {  # loudly: a mount left behind would take the host's files with a later rm -rf ROOT
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
    umount "$root/${mounts[i]}" || umount -l "$root/${mounts[i]}" || echo "WARNING: $root/${mounts[i]} is still mounted"
  done
}
trap cleanup EXIT
for m in "${mounts[@]}"; do
  mkdir -p "$root/$m"
  case $m in
    work/shared) mount --bind "$src/../shared" "$root/$m" && mount -o remount,bind,ro "$root/$m" ;;
    usr/local/cuda) mount --bind "/$m" "$root/$m" && mount -o remount,bind,ro "$root/$m" ;;
    *) mount --bind "/$m" "$root/$m" ;;
  esac
done

# The checkout's tracked files (with uncommitted changes) at /work/main, beside /work/shared; the
# previous run's copy goes first (a deleted file must not linger), its build folder stays.
mkdir -p "$root/work/main"
find "$root/work/main" -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
(cd "$src" && git ls-files -z | tar --null -T - -cf - | tar xf - -C "$root/work/main")
cp "$src/scripts/install-deps.sh" "$root/tmp/"
chroot "$root" bash -c 'apt-get update -qq && bash /tmp/install-deps.sh'
chroot "$root" bash -c 'cd /work/main && dpkg-query -W libtorch-dev g++ cmake libopenmpi-dev &&
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release > /dev/null && cmake --build build -j "$(nproc)" &&
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    ctest --test-dir build --output-on-failure --timeout 900 -j "$(nproc)" -E e2e.slurm'
