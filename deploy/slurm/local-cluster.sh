#!/usr/bin/env bash
# A single-node Slurm cluster on loopback, for tests and demos: `local-cluster.sh start`
# installs what is missing (munge, slurmctld, slurmd, slurm-client), writes
# /etc/slurm/slurm.conf, starts munged, slurmctld and slurmd without systemd, and waits until
# the node is idle; `local-cluster.sh stop` cancels every job and stops only the daemons it
# started (pid files under /run/shardtune-slurm). Needs root. Exit 77 when Slurm cannot be
# installed here (the tests then skip).
set -euo pipefail
cpus=${SHARDTUNE_SLURM_CPUS:-8}
run=/run/shardtune-slurm
logs=/var/log/slurm
node=$(hostname -s)

alive() {  # alive NAME PIDFILE: the pid file names a live process called NAME
  [ -s "$2" ] || return 1
  local pid
  pid=$(cat "$2")
  [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$1" ]
}

stop() {
  # Only what this script started: shardtune's jobs, then our daemons.
  if alive slurmctld "$run/slurmctld.pid"; then
    squeue --noheader --format='%i %j' 2> /dev/null | awk '$2 ~ /^shardtune-/ {print $1}' | xargs -r scancel 2> /dev/null || true
  fi
  for daemon in slurmd slurmctld; do
    if alive "$daemon" "$run/$daemon.pid"; then
      kill "$(cat "$run/$daemon.pid")"
      for _ in $(seq 1 100); do alive "$daemon" "$run/$daemon.pid" || break; sleep 0.1; done
    fi
  done
}

start() {
  [ "$(id -u)" = 0 ] || { echo "local-cluster.sh: needs root" >&2; exit 77; }
  # The daemons outlive this script (munged stays up after stop): they must not keep the caller's
  # open files, such as a lock a build holds with flock, or a pipe a test runner reads to its end.
  local fd
  for fd in $(ls /proc/$$/fd); do
    [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2> /dev/null || true
  done
  local missing=()
  for p in munge slurmctld slurmd slurm-client; do
    dpkg-query -W -f='${Status}' "$p" 2> /dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    # No service starts during the install: there is no systemd, and we start them ourselves.
    local policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; policy=1; fi
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get -o DPkg::Lock::Timeout=600 update -qq && apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}"; } > /dev/null 2>&1; then
      [ "$policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
      echo "local-cluster.sh: cannot install ${missing[*]}" >&2
      exit 77
    fi
    [ "$policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  fi
  mkdir -p "$run" "$logs" /var/spool/slurmctld /var/spool/slurmd /etc/slurm
  # munged runs as the key's owner and needs its socket directory (systemd would make it).
  if [ ! -s /etc/munge/munge.key ]; then
    install -d -o munge -g munge -m 0700 /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
  if ! munge -n < /dev/null 2> /dev/null | unmunge > /dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    for _ in $(seq 1 100); do munge -n < /dev/null 2> /dev/null | unmunge > /dev/null 2>&1 && break; sleep 0.1; done
  fi
  local memory
  memory=$(slurmd -C 2> /dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  # Over-declared CPUs (config_overrides) let a 2-core machine run several ranks; cgroups,
  # accounting and mail are off; EnforcePartLimits refuses impossible requests at once.
  cat > /etc/slurm/slurm.conf.new <<CONF
ClusterName=shardtune
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$run/slurmctld.pid
SlurmdPidFile=$run/slurmd.pid
SlurmctldLogFile=$logs/slurmctld.log
SlurmdLogFile=$logs/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerParameters=batch_sched_delay=0
EnforcePartLimits=ALL
MpiDefault=pmix
ReturnToService=2
KillWait=5
MinJobAge=300
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$logs/jobcomp.log
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=${memory:-1000} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  if ! cmp -s /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf; then
    stop
    mv /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf
  else
    rm -f /etc/slurm/slurm.conf.new
  fi
  alive slurmctld "$run/slurmctld.pid" || /usr/sbin/slurmctld
  alive slurmd "$run/slurmd.pid" || /usr/sbin/slurmd -N "$node"
  for _ in $(seq 1 300); do
    sinfo -h -N -o %t 2> /dev/null | grep -qx idle && return 0
    scontrol update nodename="$node" state=resume > /dev/null 2>&1 || true
    sleep 0.2
  done
  echo "local-cluster.sh: the node did not become idle; see $logs" >&2
  exit 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: local-cluster.sh start|stop" >&2; exit 2 ;;
esac
