#!/usr/bin/env bash
# A real single-node SLURM on this machine, for trying launchers/slurm/hdbl.sbatch and for the SLURM tests
# (tests/mpi/test_slurm_mpi.py). Debian/Ubuntu, as root.
#
#   launchers/slurm/local_slurm.sh install   # apt: slurm-wlm, munge, libpmix-dev (srun --mpi=pmix needs the -dev)
#   launchers/slurm/local_slurm.sh start     # munged, slurmctld and slurmd on localhost; prints SLURM_CONF=...
#   export SLURM_CONF=/tmp/hdbl-slurm/slurm.conf; sbatch ...; squeue; sinfo
#   launchers/slurm/local_slurm.sh stop
#
# Everything it writes (config, state, logs, pid files) stays under HDBL_SLURM_DIR (default /tmp/hdbl-slurm), so
# it does not touch /etc/slurm. One node (advertised with HDBL_SLURM_CPUS=32 CPUs whatever it has, so the test jobs
# can oversubscribe as mpirun does), one partition "debug", requeue allowed.
set -euo pipefail

dir="${HDBL_SLURM_DIR:-/tmp/hdbl-slurm}"
conf="$dir/slurm.conf"

need_root() {
    [ "$(id -u)" -eq 0 ] || { echo "local_slurm.sh: $1 needs root (it starts system daemons)" >&2; exit 2; }
}

install() {
    need_root install
    if command -v slurmctld >/dev/null && command -v munged >/dev/null && [ -e /usr/include/pmix.h ]; then
        echo "local_slurm.sh: slurm-wlm, munge and libpmix-dev are installed"
        return
    fi
    command -v apt-get >/dev/null || { echo "local_slurm.sh: no apt-get here; install slurm-wlm, munge and" \
        "libpmix-dev with your package manager" >&2; exit 2; }
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge libpmix-dev
}

write_conf() {
    local host cpus
    host="$(hostname -s)"
    cpus="${HDBL_SLURM_CPUS:-32}"   # more than the machine has: tests run 5 ranks on 2 cores, like mpirun --oversubscribe
    mkdir -p "$dir/spool" "$dir/state" "$dir/log"
    cat > "$conf" <<EOF
ClusterName=hdbl-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=${HDBL_SLURM_PORT:-6817}
SlurmdPort=$(( ${HDBL_SLURM_PORT:-6817} + 1 ))
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
ReturnToService=2
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmdSpoolDir=$dir/spool
StateSaveLocation=$dir/state
SlurmUser=root
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
SlurmdParameters=config_overrides
JobRequeue=1
KillWait=30
MinJobAge=600
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8
EOF
    # slurmd's PMIx plugin offers "munge,native" security; the PMIx inside PyPI's Open MPI wheel has no munge
    # component and prints a "find-available:not-valid" help block per rank before it falls back to native.
    echo "PMIxEnv=PMIX_SECURITY_MODE=native" > "$dir/mpi.conf"
}

start() {
    need_root start
    command -v slurmctld >/dev/null || { echo "local_slurm.sh: SLURM is not installed; run '$0 install' first" >&2
        exit 2; }
    write_conf
    if ! pgrep -x munged >/dev/null; then
        mkdir -p /run/munge && chown munge:munge /run/munge
        runuser -u munge -- munged
    fi
    export SLURM_CONF="$conf"
    slurmctld -f "$conf"
    slurmd -f "$conf"
    for _ in $(seq 1 60); do
        if sinfo -h -o %t 2>/dev/null | grep -qx idle; then
            echo "SLURM_CONF=$conf"
            return
        fi
        sleep 0.5
    done
    echo "local_slurm.sh: the node did not become idle within 30 s; see $dir/log/" >&2
    sinfo >&2 || true
    exit 1
}

stop() {
    for daemon in slurmd slurmctld; do
        if [ -f "$dir/$daemon.pid" ]; then
            kill "$(cat "$dir/$daemon.pid")" 2>/dev/null || true
            rm -f "$dir/$daemon.pid"
        fi
    done
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 install|start|stop   (state under HDBL_SLURM_DIR=$dir)" >&2; exit 2 ;;
esac
