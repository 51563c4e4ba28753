#!/usr/bin/env bash
# `make test`: every test of the project through CTest, after `make build`.
set -euo pipefail
build_dir=${1:-build}
cd "$(dirname "$0")/.."
# Open MPI refuses to run as root without these; CI and fresh machines run as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
if [ ! -d ../shared/fixtures ]; then
  echo "note: ../shared/fixtures is absent; tests that need it will be reported as skipped"
fi
ctest --test-dir "$build_dir" --output-on-failure --timeout 900 -j "$(nproc)"
