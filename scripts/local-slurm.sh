#!/usr/bin/env bash
# local-slurm.sh: a real Slurm cluster of several nodes on this machine, with one command.
#
# Installs Debian's Slurm packages if missing, writes a private configuration, and
# starts/stops munged, MariaDB, slurmdbd, slurmctld and slurmd, all as root and all
# under one state directory. Used by wove's test suite, CI, benchmarks and the demo,
# and by anyone who wants to try their Slurm workflows on a laptop or CI runner.
#
# Usage: scripts/local-slurm.sh start|stop|status|restart|env|stop-node NAME|start-node NAME
#   start    install (if needed), configure and start what is not running; wait for the nodes
#   stop     cancel all jobs, then stop every daemon (by pid file) and wait until gone
#   status   print each daemon's state and sinfo; exit 0 only if every node is usable
#   restart  stop, then start (applies changed WOVE_SLURM_* settings)
#   env      print export lines:  eval "$(scripts/local-slurm.sh env)"
#   stop-node NAME / start-node NAME   kill one node's slurmd (SIGKILL, as a lost node) / start it again
#
# Environment (read by start/restart and written into the generated config):
#   WOVE_SLURM_STATE           state directory (default /var/tmp/wove-slurm)
#   WOVE_SLURM_NODES           nodes (slurmd daemons, n1 n2 ...; default 3; 1 = one node named after the host)
#   WOVE_SLURM_CPUS            CPUs advertised in all, split between the nodes (default 64)
#   WOVE_SLURM_REAL_MEMORY     memory in MB in all, split between the nodes (default 16000, less on small machines)
#   WOVE_SLURM_ACCOUNTING      1 = slurmdbd + MariaDB, sacct works (default); 0 = no accounting
#   WOVE_SLURM_MAX_ARRAY_SIZE  MaxArraySize (default 1001, Slurm's own default)
#   WOVE_SLURM_CGROUP          auto (default) = cgroup v1 memory enforcement when usable;
#                              0 = never use cgroups (polling-based OverMemoryKill instead)
#   WOVE_SLURM_TIMEOUT         seconds to wait for each daemon / the node (default 60)

set -euo pipefail

readonly PROG=wove-slurm
readonly STATE=${WOVE_SLURM_STATE:-/var/tmp/wove-slurm}
readonly ETC=$STATE/etc
readonly RUN=$STATE/run
readonly LOG=$STATE/log
readonly SPOOL=$STATE/spool
readonly MUNGE_DIR=$STATE/munge
readonly DB_DIR=$STATE/mariadb
readonly CONF=$ETC/slurm.conf
readonly SETTINGS=$ETC/settings
readonly MARKER=$STATE/.wove-slurm-state
readonly MUNGE_SOCKET=$MUNGE_DIR/munge.socket
readonly MUNGE_KEY=$MUNGE_DIR/munge.key
readonly DB_SOCKET=$DB_DIR/mysqld.sock
readonly SYSTEM_CONF=/etc/slurm/slurm.conf
readonly CLUSTER=wove
readonly PARTITION=debug
readonly TIMEOUT=${WOVE_SLURM_TIMEOUT:-60}
[[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] || { echo "wove-slurm: error: WOVE_SLURM_TIMEOUT must be a positive integer" >&2; exit 1; }
readonly PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)

HOST=$(hostname -s)
readonly HOST
NODES=${WOVE_SLURM_NODES:-3}
[[ $NODES =~ ^[1-9][0-9]?$ ]] || { echo "wove-slurm: error: WOVE_SLURM_NODES must be a number from 1 to 99, not '$NODES'" >&2; exit 1; }
# Node names: the host's own name for one node, else n1..nN (one slurmd each, `slurmd -N nK`).
NODE_NAMES=()
if ((NODES == 1)); then NODE_NAMES=("$HOST"); else for ((k = 1; k <= NODES; k++)); do NODE_NAMES+=("n$k"); done; fi
readonly NODE_NAMES
# As Slurm writes a node list (sinfo -n, squeue -w, the partition's Nodes=).
if ((NODES == 1)); then NODE="$HOST"; else NODE="n[1-$NODES]"; fi
readonly NODE

# Daemons in start order; stop goes in reverse.
readonly ALL_DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

# Clients and daemons read this; cgroup.conf and slurmdbd.conf are found beside it.
export SLURM_CONF=$CONF
# libmariadb (used by slurmdbd's MySQL plugin) connects to this socket when StorageHost is
# localhost: the private MariaDB needs no TCP port and root logs in by unix_socket auth.
export MYSQL_UNIX_PORT=$DB_SOCKET

T0=$EPOCHREALTIME

say() { printf '%s: %s\n' "$PROG" "$*"; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}

# Seconds since the script started, one decimal.
elapsed() {
    local now=$EPOCHREALTIME
    awk -v a="$T0" -v b="$now" 'BEGIN { printf "%.1f", b - a }'
}

log_tail() { # log_tail FILE...: show the end of daemon logs after a failure
    local f
    for f in "$@"; do
        [[ -s $f ]] || continue
        printf -- '--- last lines of %s ---\n' "$f" >&2
        tail -n 25 "$f" >&2
    done
}

need_root() {
    [[ $EUID -eq 0 ]] || die "must run as root (it installs packages and runs the Slurm daemons as root); try: sudo $0 $*"
}

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# ---------------------------------------------------------------- processes

# daemon_pid NAME: print the pid of the running daemon NAME, or fail.
# The pid file alone is not proof: pids get reused, and stopped daemons linger here as
# zombies (PID 1 does not reap them), so `kill -0` says yes for a dead daemon. Read
# /proc/PID/stat instead: the command name must match and the state must not be Z/X.
daemon_pid() {
    local name=$1 pidfile=${2:-$RUN/$1.pid} pid stat rest comm state
    if [[ $name == slurmd && -z ${2:-} ]]; then   # every node's slurmd: alive only if all are
        local n first=""
        for n in "${NODE_NAMES[@]}"; do
            pid=$(daemon_pid slurmd "$(slurmd_pidfile "$n")") || return 1
            first=${first:-$pid}
        done
        echo "$first"
        return 0
    fi
    [[ -r $pidfile ]] || return 1
    read -r pid 2>/dev/null <"$pidfile" || return 1
    is_uint "${pid:-}" || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    # Format: "PID (comm) STATE ...": comm may contain spaces, so split on the last ')'.
    comm=${stat#*(}
    comm=${comm%)*}
    rest=${stat##*) }
    state=${rest%% *}
    [[ $comm == "$name" && $state != [ZX] ]] || return 1
    echo "$pid"
}

daemon_alive() { daemon_pid "$@" >/dev/null; }

slurmd_pidfile() { echo "$RUN/slurmd-$1.pid"; }   # as SlurmdPidFile's %n makes it
slurmd_log() { echo "$LOG/slurmd-$1.log"; }

# Which daemons this configuration needs.
needed_daemons() {
    if [[ ${ACCOUNTING:-1} == 1 ]]; then
        echo munged mariadbd slurmdbd slurmctld slurmd
    else
        echo munged slurmctld slurmd
    fi
}

# stop_daemon NAME: SIGTERM, wait, SIGKILL if it will not go; idempotent.
stop_daemon() {
    local name=$1 pidfile=${2:-$RUN/$1.pid} pid i
    if [[ $name == slurmd && -z ${2:-} ]]; then
        local f
        # Every node's, also of a cluster started with other settings (and an older one-node slurmd.pid).
        for f in "$RUN"/slurmd-*.pid "$RUN/slurmd.pid"; do
            [[ -e $f ]] && stop_daemon slurmd "$f"
        done
        return 0
    fi
    if ! pid=$(daemon_pid "$name" "$pidfile"); then
        rm -f "$pidfile"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do # 15 s
        daemon_alive "$name" "$pidfile" || break
        sleep 0.1
    done
    if daemon_alive "$name" "$pidfile"; then
        warn "$name (pid $pid) ignored SIGTERM for 15 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            daemon_alive "$name" "$pidfile" || break
            sleep 0.1
        done
        daemon_alive "$name" "$pidfile" && die "could not stop $name (pid $pid)"
    fi
    rm -f "$pidfile"
    say "stopped $name (pid $pid)"
}

# Job step daemons (slurmstepd) of this cluster: they keep running when slurmd stops. They
# are ours if they hold a file under our state dir open (slurmd's log, the spool dir).
our_stepds() {
    local d pid comm fd target
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        comm=$(cat "$d/comm" 2>/dev/null) || continue
        [[ $comm == slurmstepd ]] || continue
        for fd in "$d"/fd/*; do
            target=$(readlink "$fd" 2>/dev/null) || continue
            if [[ $target == "$STATE"/* ]]; then
                echo "$pid"
                break
            fi
        done
    done
}

# descendants PID...: the given pids and all their descendants (by parent pid).
descendants() {
    ps -e -o pid=,ppid= | awk -v roots="$*" '
        BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
        { parent[$1] = $2 }
        END {
            do {
                changed = 0
                for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 }
            } while (changed)
            for (p in keep) print p
        }'
}

# kill_leftover_steps: job steps of this cluster that outlived slurmd (their jobs could not
# be cancelled, e.g. because slurmctld was down): kill them and the job processes under them.
kill_leftover_steps() {
    local stepds pids i
    stepds=$(our_stepds)
    [[ -n $stepds ]] || return 0
    # shellcheck disable=SC2086 # one pid per word
    pids=$(descendants $stepds)
    warn "killing leftover job steps and their processes (pids: ${pids//$'\n'/ })"
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        [[ -z $(our_stepds) ]] && break
        sleep 0.1
    done
}

# wait_for DESC DAEMON LOGFILE CMD...: poll CMD until it succeeds. Fail early with the log's
# tail if DAEMON dies, or after TIMEOUT seconds.
wait_for() {
    local desc=$1 daemon=$2 logfile=$3 start=${EPOCHREALTIME%.*} now
    shift 3
    while true; do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        now=${EPOCHREALTIME%.*}
        # Daemons write their pid file within a second or two of being launched.
        if [[ $daemon != - ]] && ((now - start >= 3)) && ! daemon_alive "$daemon"; then
            log_tail "$logfile"
            die "$daemon died while waiting for $desc (log: $logfile)"
        fi
        if ((now - start >= TIMEOUT)); then
            log_tail "$logfile"
            die "timed out after ${TIMEOUT}s waiting for $desc (log: $logfile)"
        fi
        sleep 0.1
    done
}

# --------------------------------------------------------------- packages

packages_present() {
    local bin
    for bin in slurmctld slurmd sbatch sinfo sacct sacctmgr munged mungekey slurmdbd \
        mariadbd mariadb-install-db; do
        command -v "$bin" >/dev/null 2>&1 || return 1
    done
}

install_packages() {
    packages_present && return 0
    local t=$EPOCHREALTIME apt_log=$LOG/apt.log created_policy=0
    command -v apt-get >/dev/null || die "Slurm is not installed and there is no apt-get: install ${PACKAGES[*]} by hand"
    say "installing Debian packages: ${PACKAGES[*]} (log: $apt_log)"
    # Installing must not start the distribution's own services (they would grab Slurm's
    # ports and the default munge socket with a config we do not use). policy-rc.d exit 101
    # = "action forbidden". Keep an existing one; remove only the one we created.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\n# temporary, from %s: start no services while installing\nexit 101\n' "$0" \
            >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        created_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT # also if interrupted
    fi
    local rc=0
    {
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q &&
            apt-get install -y -q --no-install-recommends \
                -o DPkg::Lock::Timeout=120 \
                -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
                "${PACKAGES[@]}"
    } >"$apt_log" 2>&1 </dev/null || rc=$?
    if ((created_policy)); then
        rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
    if ((rc != 0)); then
        log_tail "$apt_log"
        die "package installation failed (exit $rc)"
    fi
    packages_present || die "packages installed but some binaries are missing (see $apt_log)"
    say "packages installed in $(awk -v a="$t" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s"
}

# ----------------------------------------------------------------- settings

# Memory enforcement with Slurm 22.05's cgroup/v1 plugin needs the v1 memory, freezer
# (proctrack/cgroup) and cpuacct (jobacct_gather/cgroup) hierarchies mounted at
# /sys/fs/cgroup/<controller> and writable. A cgroup v2-only host (no systemd delegation
# here either) cannot use it: fall back to polling-based enforcement.
cgroup_v1_usable() {
    local c
    for c in memory freezer cpuacct; do
        awk -v c="$c" '$1 == c && $4 == 1 { found = 1 } END { exit !found }' /proc/cgroups 2>/dev/null ||
            return 1
        awk -v m="/sys/fs/cgroup/$c" -v c="$c" '
            { for (i = 1; i <= NF; i++) if ($i == "-") break }
            $5 == m && $(i + 1) == "cgroup" && ("," $(i + 3) ",") ~ ("," c ",") { found = 1 }
            END { exit !found }' /proc/self/mountinfo || return 1
    done
    local probe=/sys/fs/cgroup/memory/wove-slurm-probe.$$
    mkdir "$probe" 2>/dev/null || return 1
    rmdir "$probe" 2>/dev/null || true
    return 0
}

# Settings wanted by this invocation's environment.
desired_settings() {
    CPUS=${WOVE_SLURM_CPUS:-64}
    ACCOUNTING=${WOVE_SLURM_ACCOUNTING:-1}
    MAX_ARRAY_SIZE=${WOVE_SLURM_MAX_ARRAY_SIZE:-1001}
    # Association and QOS limits enforced, as on production clusters (needs accounting).
    ENFORCE=none
    if [[ $ACCOUNTING == 1 ]]; then ENFORCE=associations,limits,qos; fi
    local mem_total_mb
    mem_total_mb=$(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo)
    # 16000 MB by default, but never more than 3/4 of a smaller machine's memory.
    local default_mem=16000
    if ((mem_total_mb * 3 / 4 < default_mem)); then default_mem=$((mem_total_mb * 3 / 4)); fi
    REAL_MEMORY=${WOVE_SLURM_REAL_MEMORY:-$default_mem}
    local cg=${WOVE_SLURM_CGROUP:-auto}

    if ! is_uint "$CPUS" || ((CPUS < 1)); then
        die "WOVE_SLURM_CPUS must be a positive integer, not '$CPUS'"
    fi
    [[ $ACCOUNTING == [01] ]] || die "WOVE_SLURM_ACCOUNTING must be 0 or 1, not '$ACCOUNTING'"
    if ! is_uint "$MAX_ARRAY_SIZE" || ((MAX_ARRAY_SIZE < 1)); then
        die "WOVE_SLURM_MAX_ARRAY_SIZE must be a positive integer, not '$MAX_ARRAY_SIZE'"
    fi
    if ((CPUS < NODES)); then
        die "WOVE_SLURM_CPUS ($CPUS) must be at least WOVE_SLURM_NODES ($NODES): each node needs a CPU"
    fi
    if ! is_uint "$REAL_MEMORY" || ((REAL_MEMORY < CPUS)); then
        die "WOVE_SLURM_REAL_MEMORY must be an integer (MB) of at least WOVE_SLURM_CPUS, not '$REAL_MEMORY'"
    fi
    case $cg in
        auto) if cgroup_v1_usable; then MEMORY_MODE=cgroup; else MEMORY_MODE=linuxproc; fi ;;
        0 | no | off | linuxproc) MEMORY_MODE=linuxproc ;;
        *) die "WOVE_SLURM_CGROUP must be auto or 0, not '$cg'" ;;
    esac
}

settings_text() {
    printf 'NODES=%s\nCPUS=%s\nREAL_MEMORY=%s\nACCOUNTING=%s\nMAX_ARRAY_SIZE=%s\nMEMORY_MODE=%s\nENFORCE=%s\n' \
        "${HAVE_NODES:-$NODES}" "$CPUS" "$REAL_MEMORY" "$ACCOUNTING" "$MAX_ARRAY_SIZE" "$MEMORY_MODE" "$ENFORCE"
}

# Settings the existing configuration was written with (if any).
load_current_settings() {
    [[ -r $SETTINGS ]] || return 1
    local key value
    ENFORCE="(not set: written by an older local-slurm.sh)"
    HAVE_NODES=1
    while IFS='=' read -r key value; do
        case $key in
            CPUS | REAL_MEMORY | ACCOUNTING | MAX_ARRAY_SIZE | MEMORY_MODE | ENFORCE) printf -v "$key" '%s' "$value" ;;
            NODES) HAVE_NODES=$value ;;
        esac
    done <"$SETTINGS"
}

# ----------------------------------------------------------------- config

# node_lines: one NodeName line per node, the CPUs and memory split between them (the first
# nodes get what does not divide evenly), each slurmd on a port of its own.
node_lines() {
    local k cpus mem
    for ((k = 0; k < NODES; k++)); do
        cpus=$((CPUS / NODES + (k < CPUS % NODES ? 1 : 0)))
        mem=$((REAL_MEMORY / NODES + (k < REAL_MEMORY % NODES ? 1 : 0)))
        printf 'NodeName=%s NodeHostname=%s NodeAddr=127.0.0.1 Port=%s CPUs=%s RealMemory=%s State=UNKNOWN\n' \
            "${NODE_NAMES[$k]}" "$HOST" $((6821 + k)) "$cpus" "$mem"
    done
}

write_config() {
    local def_mem=$((REAL_MEMORY / CPUS)) max_jobs=200000
    # MaxArraySize must not exceed MaxJobCount.
    if ((MAX_ARRAY_SIZE + 1000 > max_jobs)); then max_jobs=$((MAX_ARRAY_SIZE + 1000)); fi

    local proctrack task gather gather_extra
    if [[ $MEMORY_MODE == cgroup ]]; then
        proctrack=proctrack/cgroup task=task/cgroup gather=jobacct_gather/cgroup
        gather_extra='# The cgroup memory limit kills a job over --mem within ~0.3 s: state OUT_OF_MEMORY.'
    else
        proctrack=proctrack/linuxproc task=task/none gather=jobacct_gather/linux
        gather_extra='# No usable cgroup v1: poll job memory every second and kill jobs over --mem
# (they end FAILED with signal 9 after about 1 s, not OUT_OF_MEMORY).
JobAcctGatherParams=OverMemoryKill
JobAcctGatherFrequency=1'
    fi

    local accounting
    if [[ $ACCOUNTING == 1 ]]; then
        accounting="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
# Not a password: with auth/munge this names the munge socket used to talk to slurmdbd.
# Without it slurmctld/sacct use the default socket and fail with \"Munge encode failed\".
AccountingStoragePass=$MUNGE_SOCKET
# Association limits (MaxSubmitJobs, MaxJobs, ...) and QOS limits are enforced, as on production
# clusters; register_cluster gives root (and the sudo user, if any) an association.
AccountingStorageEnforce=$ENFORCE"
    else
        accounting="# Accounting off (WOVE_SLURM_ACCOUNTING=0): plain sacct fails, as on clusters without slurmdbd.
AccountingStorageType=accounting_storage/none"
    fi

    local tmp=$CONF.tmp.$$
    cat >"$tmp" <<EOF
# Generated by scripts/local-slurm.sh ($(date -u +%Y-%m-%dT%H:%M:%SZ)); rewritten on start/restart.
# Change it with WOVE_SLURM_* variables and 'local-slurm.sh restart', not by hand.
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
# Everything runs as root under one state directory: no slurm user, no system paths.
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# socket: our private munged (the default /run/munge socket belongs to the system).
# cred_expire: a requeued job may start again only after this many seconds (default 120,
# which makes 'scontrol requeue' tests slow); it is also the lifetime of job launch
# credentials, which on one host are used within milliseconds.
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$SPOOL/ctld
# %n: each node's slurmd (several on this host) has its own spool, pid file and log.
SlurmdSpoolDir=$SPOOL/d/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
MpiDefault=none
# No mail on this machine; the default (/bin/mail) does not exist and slurmctld complains.
MailProg=/bin/true
ReturnToService=2

# Scheduling: the default batch_sched_delay starts queued jobs only every 3 s. Jobs that
# become eligible by the clock alone (a requeued job after its cred_expire delay, --begin)
# wait for the periodic full pass, every 60 s by default: sched_interval=2 makes that 2 s.
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,bf_interval=1,sched_interval=2
# CR_CPU_Memory: with plain CR_CPU, --mem is not enforced at all.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# $CPUS CPUs advertised (WOVE_SLURM_CPUS) although the machine has fewer: each job holds a
# CPU slot for ~0.5 s, so throughput scales with advertised CPUs (~60 trivial jobs/s with 64
# vs ~4/s with 2). Memory per CPU is small so that all CPUs fit in RealMemory.
DefMemPerCPU=$def_mem

# Memory enforcement: $MEMORY_MODE
ProctrackType=$proctrack
TaskPlugin=$task
JobAcctGatherType=$gather
$gather_extra

# Keep finished jobs visible for an hour (scontrol show job, squeue -t all).
MinJobAge=3600
# Benchmarks submit many thousands of jobs: the default cap is 10000.
MaxJobCount=$max_jobs
MaxArraySize=$MAX_ARRAY_SIZE
# Time limits and --signal=[B:]USR1@SECS need nothing more: the controller checks both
# about every 30 s, so a signal or TIMEOUT can come up to ~30 s off the exact second.
KillWait=5
MessageTimeout=10
InactiveLimit=0
Waittime=0
# Batch jobs may be requeued (scontrol requeue of a running job; node failure). A job in the
# "urgent" partition (PriorityTier 10, same nodes, never the default) preempts the default
# partition's jobs: requeued, or cancelled (state PREEMPTED) if submitted with --no-requeue.
JobRequeue=1
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE

$accounting
JobCompType=jobcomp/none

# Use the configured CPUs/RealMemory instead of draining the node because the hardware
# has fewer.
SlurmdParameters=config_overrides
# A node that stops answering is marked down after SlurmdTimeout (its batch jobs requeued or failed).
SlurmdTimeout=10
$(node_lines)
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=urgent Nodes=$NODE Default=NO MaxTime=INFINITE State=UP PriorityTier=10
EOF
    mv -f "$tmp" "$CONF"

    # A job over --mem must be killed, not swapped out, even where the host has swap; that
    # needs the kernel's swap accounting (memory.memsw.*).
    local swap='# No swap accounting (memory.memsw.*) on this kernel: RAM limit only.'
    if [[ -e /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes ]]; then
        swap='# A job over --mem is killed rather than swapped out.
ConstrainSwapSpace=yes'
    fi
    cat >"$ETC/cgroup.conf.tmp" <<EOF
# Generated by scripts/local-slurm.sh. Used only when memory enforcement is cgroup (it is: $MEMORY_MODE).
CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
ConstrainRAMSpace=yes
$swap
# The node advertises more CPUs than exist: do not pin jobs to cores.
ConstrainCores=no
ConstrainDevices=no
EOF
    mv -f "$ETC/cgroup.conf.tmp" "$ETC/cgroup.conf"

    # slurmdbd refuses a slurmdbd.conf readable by others.
    (
        umask 077
        cat >"$ETC/slurmdbd.conf.tmp" <<EOF
# Generated by scripts/local-slurm.sh.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdAddr=127.0.0.1
DbdHost=$HOST
DbdPort=6819
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
# "localhost" = the unix socket in MYSQL_UNIX_PORT (our private MariaDB, no TCP port);
# root is authenticated by MariaDB's unix_socket plugin, so there is no password.
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
    )
    mv -f "$ETC/slurmdbd.conf.tmp" "$ETC/slurmdbd.conf"

    settings_text >"$SETTINGS"
}

# /etc/slurm/slurm.conf -> ours, so plain sbatch/squeue work without SLURM_CONF. Never
# replace a real file or someone else's link; do replace a link to another wove state dir.
link_system_conf() {
    local target
    if [[ -L $SYSTEM_CONF ]]; then
        target=$(readlink "$SYSTEM_CONF")
        [[ $target == "$CONF" ]] && return 0
        if [[ $target == */etc/slurm.conf && (-e ${target%/etc/slurm.conf}/.wove-slurm-state || ! -e $target) ]]; then
            ln -sfn "$CONF" "$SYSTEM_CONF"
            say "note: $SYSTEM_CONF now links to $CONF (was $target)"
            return 0
        fi
        say "note: $SYSTEM_CONF links elsewhere ($target); left alone: use eval \"\$($0 env)\""
    elif [[ -e $SYSTEM_CONF ]]; then
        say "note: $SYSTEM_CONF exists and is not ours; left alone: use eval \"\$($0 env)\""
    else
        mkdir -p "${SYSTEM_CONF%/*}"
        ln -s "$CONF" "$SYSTEM_CONF"
        say "note: linked $SYSTEM_CONF -> $CONF, so plain sbatch/squeue/sacct work without SLURM_CONF"
    fi
}

# ---------------------------------------------------------------- daemons

make_dirs() {
    mkdir -p "$STATE" "$ETC" "$RUN" "$LOG" "$SPOOL/ctld" "$SPOOL/d" "$MUNGE_DIR" "$DB_DIR"
    # munged insists on "execute permissions for all" on its socket's directory, and refuses
    # group/world-writable directories on the paths to its key, pid and log files.
    chmod 0755 "$STATE" "$ETC" "$RUN" "$LOG" "$MUNGE_DIR"
    : >"$MARKER"
}

start_munged() {
    if [[ ! -s $MUNGE_KEY ]]; then
        rm -f "$MUNGE_KEY"
        mungekey --create --keyfile="$MUNGE_KEY" >>"$LOG/munged.log" 2>&1 ||
            die "mungekey failed (log: $LOG/munged.log)"
        chmod 0600 "$MUNGE_KEY"
    fi
    rm -f "$RUN/munged.pid"
    # --force: run as root, and take over a stale socket left by a killed munged.
    munged --force --socket="$MUNGE_SOCKET" --key-file="$MUNGE_KEY" \
        --pid-file="$RUN/munged.pid" --log-file="$LOG/munged.log" \
        --seed-file="$MUNGE_DIR/munge.seed" 9>&- </dev/null >>"$LOG/munged.log" 2>&1 ||
        {
            log_tail "$LOG/munged.log"
            die "munged failed to start"
        }
    wait_for "munged" munged "$LOG/munged.log" munge_ok
    say "started munged (pid $(daemon_pid munged))"
}

munge_ok() {
    daemon_alive munged && munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET"
}

start_mariadbd() {
    local data=$DB_DIR/data
    if [[ ! -d $data/mysql ]]; then
        say "initialising MariaDB data directory"
        rm -rf "$data" "$data.init"
        mariadb-install-db --no-defaults --datadir="$data.init" --user=root \
            --auth-root-authentication-method=socket --skip-test-db \
            >"$LOG/mariadb-install.log" 2>&1 </dev/null 9>&- || {
            log_tail "$LOG/mariadb-install.log"
            die "mariadb-install-db failed"
        }
        mv "$data.init" "$data"
    fi
    # A killed mariadbd leaves its socket: remove it, its reappearance means "ready".
    rm -f "$RUN/mariadbd.pid" "$DB_SOCKET"
    # --no-defaults: ignore /etc/mysql (system datadir, /run/mysqld socket, port 3306).
    # No network at all: slurmdbd connects through the unix socket.
    # Buffer pool 1G and lock wait 900 s: below these slurmdbd logs "Database settings not
    # recommended values" (the pool is touched lazily: ~120 MB resident). Flush the log once
    # a second instead of per commit (a test cluster, not a bank).
    setsid mariadbd --no-defaults --user=root --datadir="$data" --socket="$DB_SOCKET" \
        --pid-file="$RUN/mariadbd.pid" --log-error="$LOG/mariadb.log" --skip-networking \
        --innodb-buffer-pool-size=1G --innodb-lock-wait-timeout=900 \
        --innodb-flush-log-at-trx-commit=2 --max-allowed-packet=16M \
        </dev/null >>"$LOG/mariadb.log" 2>&1 9>&- &
    # mariadbd writes its pid file only after crash recovery, which can take longer than the
    # grace wait_for gives (seen: 6 s after an unclean stop). Record the pid now (setsid
    # execs in place: same pid); mariadbd rewrites the same number later.
    echo $! >"$RUN/mariadbd.pid"
    disown
    wait_for "MariaDB" mariadbd "$LOG/mariadb.log" test -S "$DB_SOCKET"
    # MariaDB makes its pid file 0660; let status work for non-root users too.
    chmod 0644 "$RUN/mariadbd.pid" 2>/dev/null || true
    say "started mariadbd (pid $(daemon_pid mariadbd))"
}

sacctmgr_ok() { timeout 10 sacctmgr -n -P list cluster format=cluster; }

start_slurmdbd() {
    rm -f "$RUN/slurmdbd.pid"
    slurmdbd 9>&- </dev/null >>"$LOG/slurmdbd.log" 2>&1 || {
        log_tail "$LOG/slurmdbd.log"
        die "slurmdbd failed to start"
    }
    wait_for "slurmdbd" slurmdbd "$LOG/slurmdbd.log" sacctmgr_ok
    say "started slurmdbd (pid $(daemon_pid slurmdbd))"
}

# slurmctld must find its cluster in the database when it starts, or the records of its
# first jobs are lost.
register_cluster() {
    local clusters
    clusters=$(sacctmgr_ok 2>/dev/null) || die "sacctmgr cannot reach slurmdbd"
    if ! grep -qx "$CLUSTER" <<<"$clusters"; then
        timeout 20 sacctmgr -i add cluster "$CLUSTER" >>"$LOG/sacctmgr.log" 2>&1 || {
            log_tail "$LOG/sacctmgr.log" "$LOG/slurmdbd.log"
            die "sacctmgr add cluster $CLUSTER failed"
        }
        say "registered cluster '$CLUSTER' with slurmdbd"
    fi
    # Enforced associations: a user without one could not submit at all. Adding the cluster
    # gave root one; give the user behind sudo one too.
    local user=${SUDO_USER:-}
    if [[ -n $user && $user != root ]] &&
        ! timeout 10 sacctmgr -n -P list assoc user="$user" format=user | grep -qx "$user"; then
        timeout 20 sacctmgr -i add user "$user" account=root >>"$LOG/sacctmgr.log" 2>&1 ||
            warn "could not give user '$user' an association; their jobs will be refused"
    fi
}

start_slurmctld() {
    rm -f "$RUN/slurmctld.pid"
    # Never -c (clean start): a restarted controller must recover the jobs in its state dir.
    # A fresh, empty StateSaveLocation needs no -c either.
    slurmctld 9>&- </dev/null >>"$LOG/slurmctld.log" 2>&1 || {
        log_tail "$LOG/slurmctld.log"
        die "slurmctld failed to start"
    }
    wait_for "slurmctld" slurmctld "$LOG/slurmctld.log" timeout 5 scontrol ping
    say "started slurmctld (pid $(daemon_pid slurmctld))"
}

start_slurmd() { # start_slurmd [NAME]: one node's slurmd, or every node's that is not running
    local n
    if [[ -z ${1:-} ]]; then
        for n in "${NODE_NAMES[@]}"; do
            daemon_alive slurmd "$(slurmd_pidfile "$n")" || start_slurmd "$n"
        done
        return 0
    fi
    n=$1
    local pidfile log
    pidfile=$(slurmd_pidfile "$n") log=$(slurmd_log "$n")
    rm -f "$pidfile"
    mkdir -p "$SPOOL/d/$n"
    slurmd -N "$n" 9>&- </dev/null >>"$log" 2>&1 || {
        log_tail "$log"
        die "slurmd of node $n failed to start"
    }
    # Give it a moment to write its pid file before the caller checks it.
    wait_for "slurmd of node $n" - "$log" daemon_alive slurmd "$pidfile"
    say "started slurmd of node $n (pid $(daemon_pid slurmd "$pidfile"))"
}

# hup_slurmds: every running slurmd re-reads its config and registers at once.
hup_slurmds() {
    local n pid
    for n in "${NODE_NAMES[@]}"; do
        if pid=$(daemon_pid slurmd "$(slurmd_pidfile "$n")"); then kill -HUP "$pid" 2>/dev/null || true; fi
    done
}

# Node states as sinfo prints them (idle, mixed, allocated, down*, drained, ...), one per node: the
# worst one first (an unusable node), so that callers looking at the first line see the problem.
node_state() {
    local states
    states=$(timeout 5 sinfo -h -N -n "$NODE" -o %T 2>/dev/null) || return 1
    [[ -n $states ]] || return 1
    grep -vE '^(idle|mixed|allocated|completing)$' <<<"$states" | head -n 1 | grep . || head -n 1 <<<"$states"
}

node_usable() {
    local states
    states=$(timeout 5 sinfo -h -N -n "$NODE" -o %T 2>/dev/null) || return 1
    [[ $(wc -l <<<"$states") -ge $NODES ]] || return 1
    ! grep -qvE '^(idle|mixed|allocated|completing)$' <<<"$states"
}

# wait_node_usable [recheck]: wait until the node can run jobs. Fails (with log tails) if a
# needed daemon dies or after TIMEOUT; with "recheck" a dead daemon returns 3 instead, so
# that the caller can start it. A node that an admin (or a test) set DRAIN/FAIL (or DOWN
# with slurmd not answering) stays so across restarts: do not wait for that, say how to
# resume it.
wait_node_usable() {
    local mode=${1:-} start=${EPOCHREALTIME%.*} now d s grace=5
    # Daemons that were already running are past their startup transients.
    [[ $mode == recheck ]] && grace=0
    while ! node_usable; do
        now=${EPOCHREALTIME%.*}
        for d in $(needed_daemons); do
            if ! daemon_alive "$d"; then
                [[ $mode == recheck ]] && return 3
                [[ $d == slurmd ]] && log_tail "$LOG"/slurmd-*.log || log_tail "$LOG/$d.log"
                die "$d died while waiting for node $NODE to become usable"
            fi
        done
        s=$(node_state || true)
        # No '*' suffix: slurmd responds, so the state is deliberate, not a startup transient.
        if ((now - start >= grace)) && [[ $s =~ ^(down|drained|draining|drain|fail|failing)$ ]]; then
            warn "node $NODE is '$s' (reason: $(timeout 5 sinfo -h -N -n "$NODE" -o %E 2>/dev/null || true))"
            warn "to return it to service:  scontrol update nodename=$NODE state=resume"
            return 0
        fi
        if ((now - start >= TIMEOUT)); then
            timeout 5 sinfo -N -l >&2 || true
            log_tail "$(slurmd_log "${NODE_NAMES[0]}")" "$LOG/slurmctld.log"
            die "node $NODE not usable after ${TIMEOUT}s (state: ${s:-no answer from slurmctld})"
        fi
        sleep 0.1
    done
}

# ---------------------------------------------------------------- commands

# Serialise start/stop/restart (e.g. parallel test workers all calling start).
LOCKED=0
lock() {
    ((LOCKED)) && return 0
    mkdir -p "$STATE"
    exec 9>"$STATE/.lock"
    flock -w 300 9 || die "another local-slurm.sh holds $STATE/.lock"
    LOCKED=1
}

cmd_start() {
    need_root start
    [[ ${#STATE} -le 60 ]] ||
        die "state dir path too long (${#STATE} > 60 chars): unix socket paths under it would not fit"
    [[ $STATE == /* && $STATE != *[[:space:]]* ]] ||
        die "WOVE_SLURM_STATE must be an absolute path without spaces (it goes into slurm.conf)"
    lock
    make_dirs
    install_packages

    desired_settings
    local want
    want=$(settings_text)

    local d any_running=0 all_running=1
    for d in "${ALL_DAEMONS[@]}"; do
        if daemon_alive "$d"; then any_running=1; fi
    done

    if ((any_running)) && load_current_settings; then
        local have
        have=$(settings_text)
        if [[ $have != "$want" ]]; then
            warn "the running cluster has other settings than requested; keeping them (use restart to apply):"
            diff <(echo "$have") <(echo "$want") | sed -n 's/^> /  wanted: /p' >&2 || true
        fi
    else
        write_config
    fi

    for d in $(needed_daemons); do
        daemon_alive "$d" || all_running=0
    done
    if ((all_running)); then
        # Usually answers at once. If not, a daemon may be on its way out (a test sent it
        # SIGTERM: slurmctld saves its state first): wait, and start it again if it goes.
        local rc=0
        wait_node_usable recheck || rc=$?
        if ((rc != 3)); then
            say "already running: node $NODE $(node_state || true) (${CPUS} CPUs, accounting $([[ $ACCOUNTING == 1 ]] && echo on || echo off))"
            link_system_conf
            return 0
        fi
    fi

    [[ -r $CONF ]] || write_config
    say "state dir $STATE; $NODES node(s) $NODE: $CPUS CPUs, $REAL_MEMORY MB in all, accounting $([[ $ACCOUNTING == 1 ]] && echo on || echo off)"
    if [[ $MEMORY_MODE == cgroup ]]; then
        say "memory enforcement: cgroup v1 (a job over --mem ends OUT_OF_MEMORY)"
    else
        say "memory enforcement: linuxproc + OverMemoryKill (no usable cgroup v1; a job over --mem ends FAILED 0:9)"
    fi

    # slurmd down and no job step of ours alive: no job can be running here, whatever the
    # controller recovered from its state (e.g. everything was killed at once, as at the
    # end of a CI run or by a reboot).
    local node_was_dead=0
    if ! daemon_alive slurmd && [[ -z $(our_stepds) ]]; then node_was_dead=1; fi

    daemon_alive munged || start_munged
    if [[ $ACCOUNTING == 1 ]]; then
        daemon_alive mariadbd || start_mariadbd
        daemon_alive slurmdbd || start_slurmdbd
        register_cluster
    fi
    if ! daemon_alive slurmctld; then
        start_slurmctld
        # A restarted controller marks the node "not responding" until slurmd registers
        # again, which it otherwise does only ~4 s later. SIGHUP makes a running slurmd
        # re-read its config and register at once; its running jobs are not affected.
        hup_slurmds
    fi
    start_slurmd
    wait_node_usable
    if ((node_was_dead)); then requeue_phantom_jobs; fi
    link_system_conf
    say "ready in $(elapsed) s: node $NODE $(node_state), partition $PARTITION"
    say "clients: eval \"\$($0 env)\"   (or rely on $SYSTEM_CONF)"
}

# Jobs the controller still believes running although their processes are gone would
# otherwise stay RUNNING (holding CPUs) indefinitely. Requeue them, as Slurm does for jobs
# on a failed node; cancel those that cannot be requeued.
requeue_phantom_jobs() {
    local ids id
    ids=$(timeout 10 squeue -h -w "$NODE" -t R,S -o %A 2>/dev/null) || return 0
    [[ -n $ids ]] || return 0
    warn "requeueing $(wc -w <<<"$ids") job(s) recorded as running whose processes are gone (daemons were killed)"
    for id in $ids; do
        timeout 10 scontrol requeue "$id" 2>/dev/null || timeout 10 scancel "$id" 2>/dev/null || true
    done
}

# Cancel every job, then wait (bounded) until none is running or completing, so that
# stopping slurmd leaves no slurmstepd behind.
cancel_all_jobs() {
    daemon_alive slurmctld || return 0
    local ids i users user
    ids=$(timeout 10 squeue -h -r -o %i 2>/dev/null) || return 0
    [[ -n $ids ]] || return 0
    # By user, not by id: a benchmark may leave ~100000 jobs queued.
    users=$(timeout 10 squeue -h -o %u 2>/dev/null | sort -u) || true
    for user in $users; do
        timeout 20 scancel --user="$user" 2>/dev/null || true
    done
    say "cancelled $(wc -w <<<"$ids") job(s)"
    for ((i = 0; i < 200; i++)); do # KillWait=5: SIGKILL follows SIGTERM after 5 s
        ids=$(timeout 10 squeue -h -t R,CG,S,CF,PD -o %i 2>/dev/null) || break
        [[ -z $ids ]] && break
        sleep 0.1
    done
}

cmd_stop() {
    need_root stop
    if [[ ! -d $STATE ]]; then
        say "nothing to stop ($STATE does not exist)"
        return 0
    fi
    lock
    local d any=0
    for d in "${ALL_DAEMONS[@]}"; do
        if daemon_alive "$d"; then any=1; fi
    done
    if ((!any)); then
        say "not running"
        return 0
    fi
    cancel_all_jobs
    stop_daemon slurmd
    kill_leftover_steps
    stop_daemon slurmctld
    stop_daemon slurmdbd
    stop_daemon mariadbd
    stop_daemon munged
    say "stopped in $(elapsed) s"
}

cmd_status() {
    local d pid ok=1 mode=""
    if load_current_settings; then
        mode="$CPUS CPUs, $REAL_MEMORY MB, accounting $([[ $ACCOUNTING == 1 ]] && echo on || echo off), memory enforcement $MEMORY_MODE"
    else
        ACCOUNTING=1
    fi
    say "state dir $STATE${mode:+ ($mode)}"
    local needed
    needed=" $(needed_daemons) "
    for d in "${ALL_DAEMONS[@]}"; do
        if [[ $d == slurmd ]]; then
            local n
            for n in "${NODE_NAMES[@]}"; do
                if pid=$(daemon_pid slurmd "$(slurmd_pidfile "$n")"); then
                    printf '  %-10s running (pid %s)\n' "slurmd $n" "$pid"
                else
                    printf '  %-10s stopped\n' "slurmd $n"
                    ok=0
                fi
            done
        elif pid=$(daemon_pid "$d"); then
            printf '  %-10s running (pid %s)\n' "$d" "$pid"
        elif [[ $needed == *" $d "* ]]; then
            printf '  %-10s stopped\n' "$d"
            ok=0
        else
            printf '  %-10s not used (accounting off)\n' "$d"
        fi
    done
    if [[ -r $CONF ]] && daemon_alive slurmctld; then
        timeout 10 sinfo -N -o '%N %P %T %c %m %E' 2>&1 | sed 's/^/  /' || true
        local s
        s=$(node_state || true)
        if [[ $s =~ ^(idle|mixed|allocated|completing)$ ]]; then
            say "node $NODE is usable ($s)"
        else
            say "node $NODE is not usable (${s:-no answer})"
            ok=0
        fi
    else
        say "slurmctld is not running: node unusable"
        ok=0
    fi
    ((ok))
}

cmd_env() {
    printf 'export SLURM_CONF=%q\n' "$CONF"
    printf 'export WOVE_SLURM_STATE=%q\n' "$STATE"
}

# stop-node NAME: kill that node's slurmd as a lost node would go (SIGKILL, no goodbye); its job
# steps keep running until the controller gives the node up (SlurmdTimeout) and requeues or fails them.
cmd_stop_node() {
    need_root stop-node
    local n=$1 pid
    [[ " ${NODE_NAMES[*]} " == *" $n "* ]] || die "no node '$n' (nodes: ${NODE_NAMES[*]})"
    pid=$(daemon_pid slurmd "$(slurmd_pidfile "$n")") || { say "slurmd of node $n is not running"; return 0; }
    kill -KILL "$pid"
    say "killed slurmd of node $n (pid $pid)"
}

cmd_start_node() {
    need_root start-node
    local n=$1
    [[ " ${NODE_NAMES[*]} " == *" $n "* ]] || die "no node '$n' (nodes: ${NODE_NAMES[*]})"
    daemon_alive slurmd "$(slurmd_pidfile "$n")" || start_slurmd "$n"
    timeout 10 scontrol update nodename="$n" state=resume >/dev/null 2>&1 || true
}

usage() {
    sed -n '9,16s/^# \{0,1\}//p' "$0" >&2
    exit 2
}

main() {
    if [[ $# -eq 2 && $1 == stop-node ]]; then cmd_stop_node "$2"; return; fi
    if [[ $# -eq 2 && $1 == start-node ]]; then cmd_start_node "$2"; return; fi
    [[ $# -eq 1 ]] || usage
    case $1 in
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        restart)
            need_root restart
            lock
            cmd_stop
            T0=$EPOCHREALTIME
            cmd_start
            ;;
        env) cmd_env ;;
        -h | --help | help) usage ;;
        *) usage ;;
    esac
}

main "$@"
