#!/usr/bin/env bash
# Installs the Debian 12 packages shardtune builds and tests with (and, with `bench`, benchmarks
# with; with `fuzz`, fuzzes with), only those that are missing.
# Idempotent: a second run installs nothing and takes a second.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config
  libtorch-dev libopenblas0-openmp
  libopenmpi-dev openmpi-bin
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libyaml-cpp-dev libspdlog-dev libfmt-dev libeigen3-dev
  libgtest-dev libgmock-dev
  libsqlite3-dev libssl-dev nlohmann-json3-dev libcli11-dev libcpp-httplib-dev
  libpcre2-dev libicu-dev libsentencepiece-dev
  python3-grpcio python3-protobuf
  systemd  # systemd-analyze verify on the service's unit (e2e.install); nothing is started
  prometheus  # promtool, which e2e.metrics checks GET /metrics with (the daemon is not started)
  wordnet-base  # WordNet's synonyms, for data.augment's synonym replacement and insertion
  bubblewrap python3  # the sandbox that runs generated code against its tests (pass@k)
)
# `install-deps.sh bench` adds what `make bench` needs: the PyTorch baseline, tcmalloc (the
# allocator PyTorch's CPU tuning guide recommends, under which the baseline also runs) and gnuplot.
if [ "${1:-}" = bench ]; then
  packages+=(python3-torch libtcmalloc-minimal4 gnuplot-nox)
fi
# `install-deps.sh fuzz` adds what `make fuzz` needs: clang and its libFuzzer (compiler-rt).
if [ "${1:-}" = fuzz ]; then
  packages+=(clang libclang-rt-14-dev)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "shardtune: installing missing Debian packages: ${missing[*]}"
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
# The tests need promtool only: a prometheus daemon this script's install started (on a machine
# with systemd) is stopped and disabled again.
if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
  "${sudo_cmd[@]}" systemctl disable --now prometheus.service > /dev/null 2>&1 || true
fi
