#!/usr/bin/env bash
# Run by deb_test.sh inside the Debian 12 root the .deb was just installed into (as root): what
# the package put in place, and the installed executables at work.
set -uo pipefail
source /tmp/checks.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# 1. What the package and its maintainer scripts made.
expect_eq "the shardtune system user exists" "$(getent passwd shardtune | cut -d: -f6,7)" "/var/lib/shardtune:/usr/sbin/nologin"
expect_eq "/var/lib/shardtune belongs to it" "$(stat -c '%U:%G %a' /var/lib/shardtune)" "shardtune:shardtune 750"
expect_contains "/etc/shardtune/server.yaml is a conffile" "$(dpkg-query -W -f='${Conffiles}' shardtune)" \
  "/etc/shardtune/server.yaml"
expect_eq "the config is readable by the service only" "$(stat -c '%U:%G %a' /etc/shardtune/server.yaml)" "root:shardtune 640"
if [ -f /lib/systemd/system/shardtune-server.service ]; then pass "the unit is installed"; else fail "no unit"; fi
for f in /usr/share/shardtune/proto/shardtune/v1/jobs.proto /usr/share/shardtune/examples/server.yaml \
         /usr/share/shardtune/examples/jobs/lora.yaml /usr/share/doc/shardtune/docs/server.md; do
  if [ -f "$f" ]; then pass "installed: $f"; else fail "missing: $f"; fi
done

# 2. The executables.
for exe in shardtune shardtune-worker shardtune-server; do
  out=$("$exe" --version)
  expect_eq "$exe --version exits 0" "$?" "0"
  expect_contains "$exe --version names LibTorch" "$out" "built with LibTorch"
done
out=$(setpriv --reuid=shardtune --regid=shardtune --clear-groups shardtune-server --config /etc/shardtune/server.yaml --check 2>&1)
expect_eq "shardtune-server --check passes on the installed config, as the service's user" "$?" "0"
expect_contains "--check summarizes it" "$out" "/etc/shardtune/server.yaml: valid"

# 3. A short job with `shardtune train`, from the installed tiny model config and example data.
work=$(mktemp -d)
cd "$work"
shardtune init-model --config /usr/share/shardtune/examples/tiny-llama/config.json --out base --seed 1 --log-level warn
cat > job.yaml <<YAML
name: deb-smoke
model: {path: base}
data: {train: /usr/share/shardtune/examples/data/count-up.jsonl, validation_split: 0.1, format: tokens}
training: {max_steps: 4, micro_batch_size: 4, global_batch_size: 8, optimizer: {lr: 1.0e-3}}
output: {dir: runs/smoke}
YAML
out=$(shardtune train job.yaml --output json 2> train.log)
expect_eq "a short job trains in the installed root" "$?" "0"
# (no python3 in a minimal root: the one-line JSON read with sed)
expect_eq "its outcome on stdout" "$(sed -n 's/^{"ok":true.*"steps":\([0-9]*\).*/\1/p' <<<"$out")" "4"
if [ -f runs/smoke/final/model.safetensors ]; then pass "the job exported its model"; else fail "no final model: $(tail -5 train.log)"; fi

# 4. The same through shardtune-server running as the shardtune user (as the unit runs it), its
# ranks through the packaged mpirun.
state=/var/lib/shardtune/test
install -d -o shardtune -g shardtune -m 0750 "$state" "$state/data"
cp -r base "$state/base" && cp /usr/share/shardtune/examples/data/count-up.jsonl "$state/data/"
chown -R shardtune:shardtune "$state"
port=$(free_port)
cat > "$state/server.yaml" <<YAML
listen: 127.0.0.1:$port
database: $state/jobs.db
api_keys: [{key: deb-key, tenant: deb, role: user}]
local: {hosts: [{host: localhost, slots: 2}], extra_args: [--oversubscribe]}
YAML
sed -e "s|path: base|path: $state/base|" -e "s|/usr/share/shardtune/examples/data|$state/data|" \
    -e "s|dir: runs/smoke|dir: $state/runs/server|" -e "s|name: deb-smoke|name: deb-server|" job.yaml > "$state/job.yaml"
chown shardtune:shardtune "$state/server.yaml" "$state/job.yaml"
# In its state directory, as the unit starts it (WorkingDirectory=): the ranks start there too.
(cd /var/lib/shardtune && exec setpriv --reuid=shardtune --regid=shardtune --clear-groups shardtune-server \
  --config "$state/server.yaml" --log-level warn > "$state/server.log" 2>&1) &
server=$!
export SHARDTUNE_SERVER=127.0.0.1:$port SHARDTUNE_TOKEN=deb-key
for _ in $(seq 1 100); do shardtune list > /dev/null 2>&1 && break; sleep 0.1; done
id=$(shardtune submit "$state/job.yaml" 2>&1)
expect_eq "submit to the installed server exits 0" "$?" "0"
timeout 300 shardtune watch "$id" > /dev/null 2>&1
status=$(shardtune get "$id" --output json | sed -n 's/.*"status": *"\([A-Z_]*\)".*/\1/p' | head -n 1)
expect_eq "the job succeeded under the installed server" "$status" "JOB_STATUS_SUCCEEDED"
if [ "$status" != JOB_STATUS_SUCCEEDED ]; then
  shardtune get "$id"
  tail -n 20 "$state/server.log"
  find "$state" -name "*.log" -path "*jobs*" -exec tail -n 20 {} \;
fi
kill "$server" 2>/dev/null
wait "$server" 2>/dev/null
summary
