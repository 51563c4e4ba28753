#!/usr/bin/env bash
# What an operator installs and reads: `--version` on every executable, `shardtune-server
# --check` on good and bad configs, the systemd unit through `systemd-analyze verify`, and every
# example of examples/ validated (server configs with --check, job specs with validate-data
# and plan). Usage: install_test.sh BUILD_BIN_DIR SOURCE_DIR
set -uo pipefail
bin=$(cd "$1" && pwd)
src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
source "$(dirname "$0")/checks.sh"

# 1. --version: "PROGRAM VERSION" then "built with LibTorch X, CUDA X|none, NCCL X|none", the same
# figures from every executable (those without LibTorch report the build's).
first_second=""
for exe in shardtune shardtune-worker shardtune-server; do
  out=$("$bin/$exe" --version)
  expect_eq "$exe --version exits 0" "$?" "0"
  line1=$(sed -n 1p <<<"$out")
  line2=$(sed -n 2p <<<"$out")
  if [[ $line1 =~ ^$exe\ [0-9]+\.[0-9]+\.[0-9]+([-+.~][0-9A-Za-z.+~-]*)?$ ]]; then
    pass "$exe --version names the version: $line1"
  else
    fail "$exe --version's first line is not '$exe VERSION': '$line1'"
  fi
  version_re='([0-9]+(\.[0-9]+)+|none)'
  if [[ $line2 =~ ^built\ with\ LibTorch\ [0-9]+(\.[0-9]+)+,\ CUDA\ $version_re,\ NCCL\ $version_re$ ]]; then
    pass "$exe --version names LibTorch, CUDA and NCCL: $line2"
  else
    fail "$exe --version's second line is not 'built with LibTorch X, CUDA Y, NCCL Z': '$line2'"
  fi
  expect_eq "$exe --version prints two lines" "$(wc -l <<<"$out")" "2"
  [ -z "$first_second" ] && first_second="${line1#* }|$line2"
  expect_eq "$exe reports the same build as shardtune" "${line1#* }|$line2" "$first_second"
done

# 2. shardtune-server --check: a summary and exit 0, or every problem with its key and exit 2,
# and nothing started (no database written).
cat > "$work/good.yaml" <<YAML
listen: 127.0.0.1:50999
database: $work/db/jobs.db
api_keys: [{key: k1, tenant: team-a, role: user}, {key: k2, tenant: ops, role: admin}]
local: {hosts: [{host: localhost, slots: 3}]}
YAML
out=$("$bin/shardtune-server" --config "$work/good.yaml" --check --log-level error)
expect_eq "--check on a good config exits 0" "$?" "0"
expect_contains "--check says the config is valid" "$out" "$work/good.yaml: valid"
expect_contains "--check prints the listen address" "$out" "listen: 127.0.0.1:50999"
expect_contains "--check prints the slots" "$out" "backend: local, 3 slots (CPU ranks) on localhost:3"
expect_contains "--check counts keys and tenants" "$out" "api keys: 2 for 2 tenant(s)"
if [ -e "$work/db" ]; then fail "--check created the database directory"; else pass "--check writes nothing"; fi
printf 'listen: 127.0.0.1:50999\nbackend: locl\nretry: {max_attempt: 2}\n' > "$work/bad.yaml"
out=$("$bin/shardtune-server" --config "$work/bad.yaml" --check 2>&1)
expect_eq "--check on a bad config exits 2" "$?" "2"
expect_contains "--check names the bad value" "$out" "backend"
expect_contains "--check names the unknown key" "$out" "retry.max_attempt"
printf 'listen: 0.0.0.0:50999\ndatabase: %s/db2/jobs.db\n' "$work" > "$work/exposed.yaml"
out=$("$bin/shardtune-server" --config "$work/exposed.yaml" --check 2>&1)
expect_eq "--check refuses what the server would refuse to start with (no storage off loopback)" "$?" "2"

# 3. The systemd unit: `systemd-analyze verify` (with the build's executables in place of /usr/bin's).
unit=$src/deploy/systemd/shardtune-server.service
for key in "Restart=on-failure" "NoNewPrivileges=yes" "ProtectSystem=strict" "ReadWritePaths=/var/lib/shardtune" \
           "PrivateTmp=yes" "ProtectHome=yes" "User=shardtune"; do
  expect_eq "the unit sets $key" "$(grep -c "^$key$" "$unit")" "1"
done
if command -v systemd-analyze > /dev/null && systemd-analyze --version > /dev/null 2>&1; then
  mkdir -p "$work/unit"
  sed "s|/usr/bin/|$bin/|g" "$unit" > "$work/unit/shardtune-server.service"
  out=$(systemd-analyze verify "$work/unit/shardtune-server.service" 2>&1)
  status=$?
  # verify exits 0 on an unknown key too, with a warning naming the unit's file: any line naming
  # it fails. (Lines about the host's own units, outside a booted systemd, are not ours.)
  ours=$(grep "shardtune-server.service" <<<"$out")
  if [ $status -eq 0 ] && [ -z "$ours" ]; then pass "systemd-analyze verify passes on the unit"; else
    fail "systemd-analyze verify (exit $status): $out"; fi
else
  skip "systemd-analyze is not usable here (apt-get install systemd)"
fi

# 4. Every example: server configs with --check, job specs with validate-data (on a copy: it
# writes token caches under the job's output directory) and plan.
cp -r "$src/examples" "$work/examples"
mkdir -p "$work/deploy" && cp -r "$src/deploy/slurm" "$work/deploy/"
# As the service runs: not as root (a root server without run_as may serve on loopback only).
as_service=()
if [ "$(id -u)" -eq 0 ]; then
  as_service=(setpriv --reuid=65534 --regid=65534 --clear-groups)
  chmod -R a+rX "$work"
fi
for config in "$work"/examples/server*.yaml; do
  out=$("${as_service[@]}" "$bin/shardtune-server" --config "$config" --check --log-level error 2>&1)
  expect_eq "examples/$(basename "$config") passes --check" "$?" "0"
done
expect_contains "examples/server-slurm.yaml is a Slurm config" \
  "$("${as_service[@]}" "$bin/shardtune-server" --config "$work/examples/server-slurm.yaml" --check --log-level error)" \
  "backend: slurm"
specs=0
for spec in "$work"/examples/jobs/*.yaml; do
  specs=$((specs + 1))
  name=examples/jobs/$(basename "$spec")
  out=$("$bin/shardtune" validate-data "$spec" --log-level warn 2>&1)
  if [ $? -eq 0 ] && grep -q "^ok$" <<<"$out"; then pass "$name passes validate-data"; else
    fail "$name fails validate-data: $out"; fi
  out=$("$bin/shardtune" plan "$spec" --cpu --output json 2>&1)
  if [ $? -eq 0 ] && python3 -c 'import json,sys; json.load(sys.stdin)' <<<"$out" 2>/dev/null; then
    pass "$name plans"; else fail "$name does not plan: $out"; fi
done
expect_eq "examples/jobs has the full, LoRA, classification and multi-task specs" "$specs" "4"

summary
