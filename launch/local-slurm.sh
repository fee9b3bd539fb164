#!/usr/bin/env bash
# A single-node SLURM cluster with accounting on this machine, for tests and for trying the SLURM
# launcher without a real cluster. Runs as root, without systemd: every daemon is started directly
# and stopped by its pid file.
#
#   launch/local-slurm.sh start     # install (Debian/Ubuntu packages) if needed, start, wait until the node is idle
#   launch/local-slurm.sh stop      # cancel every job, stop the daemons, remove /etc/slurm links
#   launch/local-slurm.sh status    # daemons, node and queue
#   launch/local-slurm.sh purge     # stop, then delete the run folder (accounting db, state, logs)
#
# Daemons: munged (as the munge user, with a key generated here), mariadbd (as mysql) <- slurmdbd
# (accounting: without it submitit cannot see a cancelled job's state and waits forever) <-
# slurmctld <- slurmd. Configs, keys, state, spool, logs and pid files live under the run folder
# ($MINESWEEP_SLURM_DIR, default /tmp/minesweep-slurm); /etc/slurm/slurm.conf and slurmdbd.conf are
# symlinks to it so that sbatch/srun/sacct/scontrol work without SLURM_CONF.
set -euo pipefail

RUN_DIR=${MINESWEEP_SLURM_DIR:-/tmp/minesweep-slurm}
CLUSTER=${MINESWEEP_SLURM_CLUSTER:-minesweep}
DB_PORT=${MINESWEEP_SLURM_DB_PORT:-3307}        # mariadb, on 127.0.0.1 only
DBD_PORT=${MINESWEEP_SLURM_DBD_PORT:-6819}
CTLD_PORT=${MINESWEEP_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${MINESWEEP_SLURM_SLURMD_PORT:-6818}
MEM_FRACTION=${MINESWEEP_SLURM_MEM_FRACTION:-90}  # % of the memory slurmd -C reports (more drains the node)
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
MARK="# written by minesweep launch/local-slurm.sh"
MUNGE_SOCKET=/run/munge/munge.socket.2

ETC=$RUN_DIR/etc LOG=$RUN_DIR/log PIDS=$RUN_DIR/pid
SLURM_CONF_FILE=$ETC/slurm.conf DBD_CONF_FILE=$ETC/slurmdbd.conf

say() { printf '[local-slurm %s] %s\n' "$(date +%T)" "$*"; }
die() { say "error: $*" >&2; exit 1; }

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.2 s until it succeeds.
wait_for() {
    local timeout=$1 what=$2; shift 2
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            say "timed out after ${timeout}s waiting for $what"; return 1
        fi
        sleep 0.2
    done
}

pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
    local missing=()
    for cmd in slurmctld slurmd slurmdbd sbatch sacct munged mungekey mariadbd mariadb-install-db; do
        command -v "$cmd" >/dev/null || missing+=("$cmd")
    done
    ((${#missing[@]} == 0)) && return 0
    say "installing ${PACKAGES[*]} (missing: ${missing[*]})"
    command -v apt-get >/dev/null || die "apt-get not found: install ${PACKAGES[*]} yourself"
    # Package scripts must not start services (no systemd here; we start the daemons ourselves).
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >"$LOG/apt.log" 2>&1; then
        apt-get update -q >>"$LOG/apt.log" 2>&1
        apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >>"$LOG/apt.log" 2>&1 ||
            { ((created_policy)) && rm -f "$policy"; die "apt-get install failed, see $LOG/apt.log"; }
    fi
    ((created_policy)) && rm -f "$policy"
    return 0
}

link_conf() {  # /etc/slurm/NAME -> run folder, refusing to replace a config this script did not write
    local name=$1 target=$ETC/$1 link=/etc/slurm/$1
    mkdir -p /etc/slurm
    if [[ -e $link || -L $link ]]; then
        # -e and grep follow the link: replace only a dangling link or a config carrying our mark.
        if [[ ! -e $link ]] || grep -q "$MARK" "$link"; then
            rm -f "$link"
        else
            die "$link exists and was not written by this script; refusing to replace it"
        fi
    fi
    ln -s "$target" "$link"
}

start_munge() {
    if pid_alive "$PIDS/munged.pid"; then return 0; fi
    install -d -o munge -g munge -m 0700 "$RUN_DIR/munge"
    install -d -o munge -g munge -m 0755 /run/munge
    if [[ ! -s $RUN_DIR/munge/munge.key ]]; then
        mungekey --create --keyfile="$RUN_DIR/munge/munge.key"
        chown munge:munge "$RUN_DIR/munge/munge.key"
        chmod 0400 "$RUN_DIR/munge/munge.key"
    fi
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    runuser -u munge -- munged --socket="$MUNGE_SOCKET" --key-file="$RUN_DIR/munge/munge.key" \
        --pid-file="$RUN_DIR/munge/munged.pid" --log-file="$RUN_DIR/munge/munged.log" \
        --seed-file="$RUN_DIR/munge/munged.seed"
    ln -sf "$RUN_DIR/munge/munged.pid" "$PIDS/munged.pid"
    wait_for 10 munged bash -c "munge -n -S '$MUNGE_SOCKET' | unmunge -S '$MUNGE_SOCKET'" || die "munged did not start: $RUN_DIR/munge/munged.log"
}

start_mariadb() {
    local data=$RUN_DIR/mysql/data sock=$RUN_DIR/mysql/mysqld.sock
    if pid_alive "$PIDS/mariadbd.pid"; then return 0; fi
    install -d -o mysql -g mysql -m 0750 "$RUN_DIR/mysql"
    if [[ ! -d $data/mysql ]]; then
        mariadb-install-db --no-defaults --user=mysql --datadir="$data" --skip-test-db \
            --auth-root-authentication-method=socket >"$LOG/mariadb-install.log" 2>&1 ||
            die "mariadb-install-db failed: $LOG/mariadb-install.log"
    fi
    chown -R mysql:mysql "$RUN_DIR/mysql"
    # --no-defaults: ignore /etc/mysql (its socket and data dir belong to a system service).
    nohup mariadbd --no-defaults --user=mysql --datadir="$data" --socket="$sock" \
        --pid-file="$RUN_DIR/mysql/mariadbd.pid" --port="$DB_PORT" --bind-address=127.0.0.1 \
        --log-error="$RUN_DIR/mysql/mariadb.log" --innodb-buffer-pool-size=128M --innodb-log-file-size=64M --innodb-lock-wait-timeout=900 \
        --skip-name-resolve >/dev/null 2>&1 &
    ln -sf "$RUN_DIR/mysql/mariadbd.pid" "$PIDS/mariadbd.pid"
    wait_for 60 mariadbd mariadb-admin --no-defaults --socket="$sock" ping || die "mariadbd did not start: $RUN_DIR/mysql/mariadb.log"
    mariadb --no-defaults --socket="$sock" -e "
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$(cat "$ETC/db.password")';
        CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
        FLUSH PRIVILEGES;"
}

write_configs() {
    local host cpus_line mem real_mem
    host=$(hostname -s)
    # slurmd -C: the node as slurmd sees it; RealMemory lowered (more than slurmd finds drains the node).
    cpus_line=$(slurmd -C | head -1)
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$cpus_line")
    real_mem=$((mem * MEM_FRACTION / 100))
    cpus_line=$(sed -e "s/RealMemory=[0-9]*/RealMemory=$real_mem/" -e "s/NodeName=[^ ]*/NodeName=$host/" <<<"$cpus_line")
    local cpus
    cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$cpus_line")
    [[ -s $ETC/db.password ]] || { head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$ETC/db.password"; chmod 600 "$ETC/db.password"; }

    cat >"$SLURM_CONF_FILE" <<EOF
$MARK
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job waits this long before it may start again (default 120 s).
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
StateSaveLocation=$RUN_DIR/state
SlurmdSpoolDir=$RUN_DIR/spool/slurmd
SlurmctldPidFile=$RUN_DIR/pid/slurmctld.pid
SlurmdPidFile=$RUN_DIR/pid/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups here (no systemd): plain process tracking, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((real_mem / cpus))
# Schedule at once and often, or every submission and requeue waits up to a minute.
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
JobCompType=jobcomp/none
JobRequeue=1
ReturnToService=2
KillWait=5
MinJobAge=300
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
PropagateResourceLimits=NONE
$cpus_line NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

    cat >"$DBD_CONF_FILE" <<EOF
$MARK
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=slurm
PidFile=$RUN_DIR/pid/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(cat "$ETC/db.password")
StorageLoc=slurm_acct_db
EOF
    chown slurm:slurm "$DBD_CONF_FILE"
    chmod 600 "$DBD_CONF_FILE"
    link_conf slurm.conf
    link_conf slurmdbd.conf
}

start() {
    [[ $(id -u) == 0 ]] || die "run as root (the daemons switch to the slurm, munge and mysql users themselves)"
    local t0=$SECONDS
    mkdir -p "$ETC" "$LOG" "$PIDS"
    install_packages
    install -d -o slurm -g slurm -m 0755 "$RUN_DIR/state" "$PIDS" "$LOG"
    install -d -m 0755 "$RUN_DIR/spool/slurmd"
    write_configs
    export SLURM_CONF=$SLURM_CONF_FILE
    start_munge
    start_mariadb
    if ! pid_alive "$PIDS/slurmdbd.pid"; then
        slurmdbd
        wait_for 30 slurmdbd bash -c "exec 3<>/dev/tcp/127.0.0.1/$DBD_PORT" || die "slurmdbd did not start: $LOG/slurmdbd.log"
    fi
    # Register the cluster before slurmctld starts (idempotent).
    sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
    if ! pid_alive "$PIDS/slurmctld.pid"; then slurmctld; fi
    wait_for 30 slurmctld scontrol ping || die "slurmctld did not start: $LOG/slurmctld.log"
    if ! pid_alive "$PIDS/slurmd.pid"; then slurmd; fi
    local host; host=$(hostname -s)
    wait_for 30 "node $host to be idle" bash -c "sinfo -h -n '$host' -o %T | grep -Eq '^(idle|mixed|allocated)'" || {
        # A node remembered as down/drained from an earlier run: bring it back.
        scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
        wait_for 20 "node $host to be idle" bash -c "sinfo -h -n '$host' -o %T | grep -Eq '^(idle|mixed|allocated)'" ||
            die "node $host is $(sinfo -h -n "$host" -o '%T %E'): see $LOG/slurmd.log and $LOG/slurmctld.log"
    }
    wait_for 20 "accounting (sacct)" sacct -n -X -S now-1minute || die "sacct cannot reach slurmdbd: $LOG/slurmdbd.log"
    say "cluster '$CLUSTER' up in $((SECONDS - t0))s: $(sinfo -h -o '%P %D node(s) %c cpus %m MB %T') (run folder $RUN_DIR)"
}

stop_pidfile() {  # stop_pidfile NAME: TERM the daemon whose pid is in $PIDS/NAME.pid, wait, KILL if needed
    local file=$PIDS/$1.pid pid
    [[ -s $file ]] || return 0
    pid=$(cat "$file" 2>/dev/null) || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then say "$1 ($pid) ignored TERM, killing"; kill -KILL "$pid" 2>/dev/null || true; fi
    fi
    rm -f "$file"
}

stop() {
    [[ $(id -u) == 0 ]] || die "run as root"
    export SLURM_CONF=$SLURM_CONF_FILE
    if pid_alive "$PIDS/slurmctld.pid"; then
        # Cancel every job first, so that no job step outlives slurmd.
        local jobs; jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
        if [[ -n ${jobs// } ]]; then
            say "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            wait_for 30 "jobs to end" bash -c '[[ -z $(squeue -h -o %A) ]]' || true
        fi
    fi
    # Each daemon takes ~2 s to exit: stop the SLURM ones together, then what they used.
    for daemon in slurmd slurmctld slurmdbd; do stop_pidfile "$daemon" & done
    wait
    for daemon in mariadbd munged; do stop_pidfile "$daemon" & done
    wait
    for name in slurm.conf slurmdbd.conf; do
        [[ -L /etc/slurm/$name && $(readlink "/etc/slurm/$name") == "$ETC/$name" ]] && rm -f "/etc/slurm/$name"
    done
    say "stopped (run folder kept: $RUN_DIR)"
}

status() {
    export SLURM_CONF=$SLURM_CONF_FILE
    for daemon in munged mariadbd slurmdbd slurmctld slurmd; do
        if pid_alive "$PIDS/$daemon.pid"; then echo "$daemon: running ($(cat "$PIDS/$daemon.pid"))"; else echo "$daemon: stopped"; fi
    done
    if pid_alive "$PIDS/slurmctld.pid"; then sinfo; squeue; fi
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    purge) stop; rm -rf "$RUN_DIR"; say "removed $RUN_DIR" ;;
    *) echo "usage: $0 start|stop|status|purge" >&2; exit 2 ;;
esac
