#!/usr/bin/env bash
# Packs the Debian 12 packages that shardtune builds with, beyond what a GPU machine's image has
# (a compiler, CMake, ninja, CUDA and PyTorch), into one archive for a machine without network:
#   bench/gpu/pack-deps.sh [OUT_DIR]        (default .device/, ignored by git)
# Run it on a Debian 12 machine that reaches Debian's archive. On the GPU machine,
# bench/gpu/device-check.sh unpacks OUT_DIR/shardtune-deps.tar.xz and builds against it.
# Documentation, manuals and static libraries are dropped: the archive is about 28 MB.
set -euo pipefail
out=$(realpath -m "${1:-$(dirname "$0")/../../.device}")
packages=(
  # headers, CMake and pkg-config files
  libyaml-cpp-dev libspdlog-dev libfmt-dev nlohmann-json3-dev libcli11-dev libpcre2-dev libicu-dev libeigen3-dev
  libopenmpi-dev libgrpc++-dev libgrpc-dev libprotobuf-dev libabsl-dev libre2-dev libc-ares-dev
  libsqlite3-dev libssl-dev zlib1g-dev libgtest-dev libgmock-dev libsentencepiece-dev libcpp-httplib-dev libbrotli-dev
  # programs the build runs
  protobuf-compiler libprotoc32 protobuf-compiler-grpc pkgconf pkgconf-bin libpkgconf3
  # shared libraries the programs load
  libyaml-cpp0.7 libspdlog1.10 libfmt9 libpcre2-8-0 libicu72 libgrpc++1.51 libgrpc29 libprotobuf32
  libabsl20220623 libre2-9 libc-ares2 libsqlite3-0 libssl3 libsentencepiece0 zlib1g libcpp-httplib0.11 libbrotli1
  # Open MPI and what it loads
  openmpi-bin openmpi-common libopenmpi3 libpmix2 libhwloc15 libevent-core-2.1-7 libevent-pthreads-2.1-7
  libfabric1 libucx0 libibverbs1 librdmacm1 libpsm2-2 libpsm-infinipath1 libnl-3-200 libnl-route-3-200
  libnuma1 libltdl7 libmunge2 libxnvctrl0
)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/debs" "$work/root" "$out"
(cd "$work/debs" && apt-get download "${packages[@]}" > /dev/null)
for deb in "$work"/debs/*.deb; do dpkg -x "$deb" "$work/root"; done
# Debian 12 merges /lib into /usr/lib; the packages still ship some files under /lib.
if [ -d "$work/root/lib" ]; then
  cp -a "$work/root/lib/." "$work/root/usr/lib/"
  rm -rf "$work/root/lib"
fi
# Links to absolute paths (libz.so -> /lib/x86_64-linux-gnu/libz.so.1.2.13) would point into
# the other machine's system: point them at the same file in the archive.
find "$work/root" -type l -lname '/*' | while read -r link; do
  target=$(readlink "$link")
  case $target in /lib/*) target=/usr$target ;; esac
  [ -e "$work/root$target" ] || { echo "pack-deps: $link -> $(readlink "$link") leaves the archive" >&2; exit 1; }
  ln -sfn "$(realpath -s --relative-to="$(dirname "$link")" "$work/root$target")" "$link"
done
rm -rf "$work"/root/usr/share/{doc,man,lintian,bug} "$work"/root/etc/alternatives
# (GoogleTest comes only as static libraries.)
find "$work/root" -name '*.a' ! -name 'libgtest*' ! -name 'libgmock*' -delete
# Debian's alternatives are made by maintainer scripts, which dpkg -x does not run.
ln -sf mpirun.openmpi "$work/root/usr/bin/mpirun"
ln -sf mpicc.openmpi "$work/root/usr/bin/mpicc"
ln -sf pkgconf "$work/root/usr/bin/pkg-config"
tar -C "$work/root" -cJf "$out/shardtune-deps.tar.xz" .
echo "$out/shardtune-deps.tar.xz: $(du -h "$out/shardtune-deps.tar.xz" | cut -f1), ${#packages[@]} packages"
