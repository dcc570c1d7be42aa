#!/usr/bin/env bash
# Test helper: installs packages (Debian's slurm + munge, via apt-get) and writes /etc/slurm, for the tests and CI
# on a throwaway machine; never run it on a machine whose Slurm or /etc/slurm you care about (a users' cluster).
# It starts a real single-node Slurm on this machine:
#   bash tests/local_slurm.sh start   # installs Debian's slurm + munge if missing, starts them, waits for idle
#   bash tests/local_slurm.sh stop    # stops only the daemons this script started (PID files)
# No systemd is assumed: the daemons are started by hand. State lives in $GCB_SLURM_DIR (/tmp/gcb-slurm).
set -euo pipefail
dir=${GCB_SLURM_DIR:-/tmp/gcb-slurm}
node=$(hostname -s)

stop() {
  for d in slurmd slurmctld munged; do
    if [ -f "$dir/$d.pid" ]; then
      pid=$(cat "$dir/$d.pid"); kill "$pid" 2>/dev/null || true; rm -f "$dir/$d.pid"
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done   # gone before a new start
    fi
  done
}

start() {
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
  fi
  mkdir -p "$dir"/{state,spool,log} /run/munge /etc/slurm
  chown munge:munge /run/munge
  [ -f /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || create-munge-key -f; }
  if ! pgrep -x munged >/dev/null; then
    su -s /bin/sh munge -c munged
    for _ in $(seq 20); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
    cp /run/munge/munged.pid "$dir/munged.pid"
  fi
  hw=$(slurmd -C | head -n 1 | sed -e "s/^NodeName=[^ ]*//" -e "s/RealMemory=[0-9]*//")
  mem=$(( $(awk '/MemAvailable/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
  cat > /etc/slurm/slurm.conf <<CONF
ClusterName=gcb-local
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
NodeName=$node NodeAddr=127.0.0.1 $hw RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8
CONF
  pgrep -x slurmctld >/dev/null || slurmctld -c -f /etc/slurm/slurm.conf
  pgrep -x slurmd >/dev/null || slurmd -N "$node" -f /etc/slurm/slurm.conf
  for _ in $(seq 60); do
    state=$(sinfo -h -N -o %T 2>/dev/null | head -n 1)
    case "$state" in idle|mixed|allocated) echo "local slurm: node $node $state ($dir)"; return 0;; esac
    scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
    sleep 0.5
  done
  echo "local slurm: node $node did not become idle; see $dir/log" >&2
  return 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
