#!/usr/bin/env bash
# tests/cluster/slurm.sh -- a throw-away single-node SLURM cluster on localhost for the test suite.
#
# Usage:  tests/cluster/slurm.sh start|stop|status|env
#   start   install slurm-wlm + munge with apt-get if missing, write the config into the state directory,
#           start munged, slurmctld and slurmd (unless already running) and wait until the node is idle.
#           Idempotent: running it again on a running cluster only re-checks that the node is idle.
#   stop    kill exactly the daemons that `start` started (by the PIDs recorded in the state directory).
#   status  print which daemons run, sinfo and squeue; exit 0 if the cluster is up, 3 if it is stopped.
#   env     print the `export` lines callers need (same content as $STATE_DIR/env.sh).
#   drmaa   build the SLURM DRMAA library (libdrmaa.so, for profiles/slurm-drmaa) from the slurm-drmaa
#           source in ../shared/vendor/slurm-drmaa, once (about two minutes on two cores; build tools and
#           libslurm-dev come from apt), and print its path. Idempotent: an existing build is reused.
#
# Environment:
#   SNAKESCOPE_SLURM_DIR      state directory (default /tmp/snakescope-slurm). Holds etc/slurm.conf,
#                             etc/gres.conf, etc/cgroup.conf, the munge key/socket, spool dirs, logs, pid files.
#   SNAKESCOPE_SLURM_MAXTIME  partition MaxTime in minutes (default 1440 = 1 day, so that the runtimes in
#                             profiles/slurm are accepted); jobs asking for more are rejected at submission
#                             (EnforcePartLimits=ALL) instead of pending forever. Time-limit tests should give
#                             the job itself a short runtime (SLURM's unit is 1 minute; TIMEOUT ~1-1.5 min later).
#   SNAKESCOPE_SLURM_DEFTIME  partition DefaultTime in minutes (default 5) for jobs that give no --time.
#   SNAKESCOPE_SLURM_CPUS     CPUs the node offers (default: nproc).
#   SNAKESCOPE_SLURM_MEM_MB   RealMemory the node offers in MB (default 65536, whatever the machine has:
#                             SlurmdParameters=config_overrides makes slurmd trust slurm.conf, so the
#                             profile's mem_mb requests are accepted on small CI machines; memory is neither
#                             consumed by jobs (CR_Core) nor enforced (no cgroups) on this test cluster).
#   SNAKESCOPE_SLURM_CTLD_PORT / SNAKESCOPE_SLURM_D_PORT   ports (default 6817 / 6818).
#   SNAKESCOPE_SLURM_DRMAA_SOURCE  the slurm-drmaa source archive (default: ../shared/vendor/slurm-drmaa/
#                             slurm-drmaa-src.tar.gz beside the repository); built into $STATE_DIR/drmaa.
# Callers should `export SLURM_CONF=$STATE_DIR/etc/slurm.conf` (or `source $STATE_DIR/env.sh`) before
# using sbatch/squeue/snakemake. munged listens on a private socket named in slurm.conf
# (AuthInfo=socket=...), so a system munged is untouched.
# /etc/slurm/slurm.conf: the ONE file written outside the state directory, a symlink to our slurm.conf,
# created only if no /etc/slurm/slurm.conf exists and removed again by `stop`. It is unavoidable:
# snakemake-executor-plugin-slurm-jobstep (0.6.1) runs each job's command through a nested `srun` with all
# SLURM_* variables except a few job ids stripped from the environment -- SLURM_CONF included -- so that
# srun only finds the config at the compiled-in default path (Debian: /etc/slurm/slurm.conf) and otherwise
# dies with "fetch_config: DNS SRV lookup failed". If a real /etc/slurm/slurm.conf exists, `start` warns:
# jobs submitted by snakemake would then talk to that other cluster's config.
#
# Job-status query -- why squeue and no slurmdbd:
#   snakemake-executor-plugin-slurm 2.8.0 polls job states with either `sacct` (default whenever the
#   `sacct` binary is on PATH, which Debian's slurm-client always ships) or `squeue --states=all`
#   (option --slurm-status-command squeue). `sacct` needs accounting storage; with
#   AccountingStorageType=accounting_storage/none it exits non-zero ("Slurm accounting storage is
#   disabled"), and the plugin then treats every job as still running -- the workflow hangs forever.
#   Making sacct work means slurmdbd + a MariaDB server (a second daemon, a database to initialise,
#   ~150 MB more packages, slower start). The lighter, robust option is squeue: slurmctld keeps finished
#   jobs (COMPLETED, FAILED, TIMEOUT, CANCELLED, OUT_OF_MEMORY...) in memory for MinJobAge seconds, so
#   with MinJobAge=3600 `squeue --states=all` reports the final state of every job of a test run. The
#   plugin only honours `squeue` if MinJobAge >= 3 * --slurm-init-seconds-before-status-checks
#   (default 40 s -> 120 s); 3600 satisfies that for any sensible value.
#   => callers MUST pass `--slurm-status-command squeue` to snakemake on this cluster.
#   Accounts: with accounting disabled there are no SLURM accounts; leave `slurm_account` unset (the
#   plugin then tries to guess one with sacct, fails harmlessly, warns and submits without -A). A set
#   slurm_account is checked with sacctmgr (fails here) and sshare (answers nothing here); the plugin
#   warns "Proceeding without account validation" and submits with -A NAME, which SLURM accepts.
#
# Plugins: ProctrackType=proctrack/linuxproc and TaskPlugin=task/none need no cgroup set-up (this runs in
# VMs/containers); select/cons_tres + GresTypes=gpu + gres.conf `Name=gpu File=/dev/null` fakes one GPU,
# so `--gres=gpu:1` / `--gpus=1` jobs get CUDA_VISIBLE_DEVICES=0 although the machine may have no GPU.
set -euo pipefail

STATE_DIR="${SNAKESCOPE_SLURM_DIR:-/tmp/snakescope-slurm}"
MAXTIME="${SNAKESCOPE_SLURM_MAXTIME:-1440}"
DEFTIME="${SNAKESCOPE_SLURM_DEFTIME:-5}"
CTLD_PORT="${SNAKESCOPE_SLURM_CTLD_PORT:-6817}"
D_PORT="${SNAKESCOPE_SLURM_D_PORT:-6818}"
NODE=localhost
ETC="$STATE_DIR/etc"
CONF="$ETC/slurm.conf"
MUNGE_DIR="$STATE_DIR/munge"
MUNGE_SOCKET="$MUNGE_DIR/munge.socket.2"
RUN_DIR="$STATE_DIR/run"
LOG_DIR="$STATE_DIR/log"
START_TIMEOUT=60   # seconds to wait for each daemon / for the node to become idle
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DRMAA_SOURCE="${SNAKESCOPE_SLURM_DRMAA_SOURCE:-$REPO/../shared/vendor/slurm-drmaa/slurm-drmaa-src.tar.gz}"
DRMAA_PREFIX="$STATE_DIR/drmaa"
DRMAA_LIB="$DRMAA_PREFIX/lib/libdrmaa.so"

say() { printf 'slurm.sh: %s\n' "$*"; }
die() { printf 'slurm.sh: ERROR: %s\n' "$*" >&2; exit 1; }

# pid_of NAME -> prints the PID recorded for daemon NAME if that process is alive and is that daemon.
pid_of() {
    local name="$1" pidfile="$RUN_DIR/$1.pid" pid comm
    [[ -s "$pidfile" ]] || return 1
    pid="$(tr -dc '0-9' <"$pidfile")"
    [[ -n "$pid" ]] || return 1
    comm="$(cat "/proc/$pid/comm" 2>/dev/null)" || return 1
    [[ "$comm" == "$name" ]] || return 1   # PID was recycled by another program
    printf '%s\n' "$pid"
}

install_packages() {
    local missing=()
    command -v munged >/dev/null 2>&1 || missing+=(munge)
    if ! command -v slurmctld >/dev/null 2>&1 || ! command -v slurmd >/dev/null 2>&1 \
        || ! command -v sbatch >/dev/null 2>&1; then
        missing+=(slurm-wlm)
    fi
    [[ ${#missing[@]} -eq 0 ]] && return 0
    [[ "$(id -u)" -eq 0 ]] || die "need root to apt-get install ${missing[*]}"
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install ${missing[*]} by hand"
    say "installing ${missing[*]} with apt-get (once per machine, takes a minute)..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # The packages' postinst scripts may try to start the system munge/slurm services (a policy-rc.d
    # exiting 101, as in Docker images, prevents it). A system munged uses its own socket, not ours; the
    # system slurmctld/slurmd cannot start without /etc/slurm/slurm.conf, which does not exist yet.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    say "installed ${missing[*]}"
}

write_config() {
    local cpus real_mem tmp
    mkdir -p "$ETC" "$MUNGE_DIR" "$RUN_DIR" "$LOG_DIR" "$STATE_DIR/spool/ctld" "$STATE_DIR/spool/d"
    chmod 0755 "$STATE_DIR" "$ETC" "$RUN_DIR" "$LOG_DIR"
    chmod 0755 "$MUNGE_DIR"   # socket must be reachable by every user; the key itself is 0600
    cpus="${SNAKESCOPE_SLURM_CPUS:-$(nproc)}"
    real_mem="${SNAKESCOPE_SLURM_MEM_MB:-65536}"
    [[ "$cpus" =~ ^[1-9][0-9]*$ ]] || die "SNAKESCOPE_SLURM_CPUS must be a positive integer, got '$cpus'"
    [[ "$real_mem" =~ ^[1-9][0-9]*$ ]] || die "SNAKESCOPE_SLURM_MEM_MB must be a positive integer, got '$real_mem'"
    tmp="$(mktemp "$ETC/slurm.conf.XXXXXX")"
    cat >"$tmp" <<EOF
# Generated by tests/cluster/slurm.sh -- single-node test cluster. Do not edit: rewritten on every start.
ClusterName=snakescope
SlurmctldHost=$NODE
SlurmctldPort=$CTLD_PORT
SlurmdPort=$D_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$STATE_DIR/spool/ctld
SlurmdSpoolDir=$STATE_DIR/spool/d
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups needed (works in containers/VMs).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# No slurmdbd: job states come from slurmctld via squeue (see the header of slurm.sh).
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# Keep finished jobs visible to 'squeue --states=all' for an hour (the plugin needs >= 120 s).
MinJobAge=3600
SchedulerType=sched/backfill
SelectType=select/cons_tres
# Cores (and the GPU) are consumable, memory is not: --mem is only checked against RealMemory.
SelectTypeParameters=CR_Core
# Trust the node description below instead of what slurmd detects (see SNAKESCOPE_SLURM_MEM_MB).
SlurmdParameters=config_overrides
GresTypes=gpu
# Reject (at sbatch time) jobs that exceed partition limits instead of leaving them pending forever.
EnforcePartLimits=ALL
# Time limits are enforced to the minute; SIGTERM, then SIGKILL KillWait seconds later.
OverTimeLimit=0
KillWait=5
InactiveLimit=0
ReturnToService=2
SlurmdTimeout=300
MpiDefault=none
MailProg=/bin/true
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mem Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=$MAXTIME DefaultTime=$DEFTIME State=UP
PartitionName=gpu Nodes=$NODE Default=NO MaxTime=$MAXTIME DefaultTime=$DEFTIME State=UP
EOF
    if [[ -f "$CONF" ]] && ! cmp -s "$tmp" "$CONF" && pid_of slurmctld >/dev/null; then
        # Keep the file the running daemons use; the new one applies after a restart.
        mv -f "$tmp" "$CONF.new"
        say "WARNING: settings differ from the running cluster's; run '$0 stop' then '$0 start' to apply them"
        say "         (running: $CONF, new: $CONF.new)"
    else
        mv -f "$tmp" "$CONF"
        rm -f "$CONF.new"
    fi
    chmod 0644 "$CONF"
    cat >"$ETC/gres.conf" <<EOF
# One fake GPU: SLURM hands it out and sets CUDA_VISIBLE_DEVICES=0; /dev/null stands in for /dev/nvidia0.
NodeName=$NODE Name=gpu File=/dev/null
EOF
    cat >"$ETC/cgroup.conf" <<EOF
# Unused (proctrack/linuxproc, task/none); present so that no daemon goes looking for /etc/slurm/cgroup.conf.
CgroupPlugin=autodetect
IgnoreSystemd=yes
EOF
    cat >"$STATE_DIR/env.sh" <<EOF
# source this file to talk to the snakescope test cluster
export SLURM_CONF=$CONF
EOF
    if [[ ! -s "$MUNGE_DIR/munge.key" ]]; then
        say "creating munge key"
        ( umask 077; dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1024 count=1 status=none )
    fi
    chmod 0600 "$MUNGE_DIR/munge.key"
}

# wait_for DESCRIPTION COMMAND... : retry COMMAND for START_TIMEOUT seconds.
wait_for() {
    local what="$1" i
    shift
    for (( i = 0; i < START_TIMEOUT * 2; i++ )); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    return 1
}

start_munged() {
    if pid_of munged >/dev/null; then say "munged already running (pid $(pid_of munged))"; return; fi
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    say "starting munged"
    munged --force --key-file="$MUNGE_DIR/munge.key" --socket="$MUNGE_SOCKET" \
        --pid-file="$RUN_DIR/munged.pid" --log-file="$LOG_DIR/munged.log" \
        --seed-file="$MUNGE_DIR/munged.seed" 9>&- \
        || { tail -n 20 "$LOG_DIR/munged.log" >&2 || true; die "munged failed to start"; }
    wait_for "munged" munge_ok || { tail -n 20 "$LOG_DIR/munged.log" >&2 || true; die "munged not answering"; }
}
munge_ok() { munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET"; }
pidfile_ok() { pid_of "$1"; }

start_daemon() {   # start_daemon NAME ARGS...
    local name="$1"
    shift
    if pid_of "$name" >/dev/null; then say "$name already running (pid $(pid_of "$name"))"; return; fi
    rm -f "$RUN_DIR/$name.pid"
    say "starting $name"
    "$name" "$@" 9>&- || { tail -n 30 "$LOG_DIR/$name.log" >&2 || true; die "$name failed to start"; }
    wait_for "$name" pidfile_ok "$name" \
        || { tail -n 30 "$LOG_DIR/$name.log" >&2 || true; die "$name did not stay up (log: $LOG_DIR/$name.log)"; }
}

node_state() { sinfo -h -n "$NODE" -o %t 2>/dev/null | head -n 1; }
node_idle() { [[ "$(node_state)" =~ ^(idle|mix|alloc)$ ]]; }

ETC_LINK=/etc/slurm/slurm.conf
link_etc_conf() {
    if [[ -L "$ETC_LINK" && "$(readlink "$ETC_LINK")" == "$CONF" ]]; then return 0; fi
    if [[ -e "$ETC_LINK" || -L "$ETC_LINK" ]]; then
        say "WARNING: $ETC_LINK exists and is not ours; srun inside snakemake jobs will read it, not $CONF"
        return 0
    fi
    if mkdir -p "$(dirname "$ETC_LINK")" 2>/dev/null && ln -s "$CONF" "$ETC_LINK" 2>/dev/null; then
        say "linked $ETC_LINK -> $CONF (needed by snakemake's nested srun; removed by stop)"
    else
        say "WARNING: cannot create $ETC_LINK (not root?); srun inside snakemake jobs will fail"
    fi
}
unlink_etc_conf() {
    if [[ -L "$ETC_LINK" && "$(readlink "$ETC_LINK")" == "$CONF" ]]; then
        rm -f "$ETC_LINK"
        rmdir "$(dirname "$ETC_LINK")" 2>/dev/null || true   # only if empty
        say "removed $ETC_LINK"
    fi
}

cmd_start() {
    local t0=$SECONDS
    # The daemons run as root (SlurmUser=root) and /etc/slurm/slurm.conf must be linked: root only.
    [[ "$(id -u)" -eq 0 ]] || die "start must run as root (CI containers/VMs run as root)"
    install_packages
    write_config
    link_etc_conf
    export SLURM_CONF="$CONF"
    start_munged
    # -c: forget jobs of an earlier run (a fresh, empty queue on every start); -i: ignore state-file errors.
    start_daemon slurmctld -c -i
    wait_for "slurmctld" scontrol ping \
        || { tail -n 30 "$LOG_DIR/slurmctld.log" >&2 || true; die "slurmctld not answering"; }
    start_daemon slurmd -N "$NODE"
    if ! wait_for "node idle" node_idle; then
        # A node left drained/down by an earlier crash: resume it once, then wait again.
        scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
        wait_for "node idle" node_idle || {
            sinfo -N -l >&2 || true
            tail -n 30 "$LOG_DIR/slurmd.log" >&2 || true
            die "node $NODE did not become idle within ${START_TIMEOUT}s (state: $(node_state))"
        }
    fi
    say "cluster up in $(( SECONDS - t0 ))s; node $NODE is $(node_state)"
    say "callers must: export SLURM_CONF=$CONF   (or: source $STATE_DIR/env.sh)"
}

cmd_stop() {
    local name pid stopped=0 i jobs
    # Cancel jobs still queued/running on our cluster first, so no job outlives its slurmd.
    if pid_of slurmctld >/dev/null; then
        export SLURM_CONF="$CONF"
        jobs="$(squeue -h -t PENDING,RUNNING,SUSPENDED,COMPLETING -o %i 2>/dev/null | tr '\n' ' ' || true)"
        if [[ -n "${jobs// /}" ]]; then
            say "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            for (( i = 0; i < 40; i++ )); do
                [[ -z "$(squeue -h -t RUNNING,COMPLETING -o %i 2>/dev/null)" ]] && break
                sleep 0.25
            done
        fi
    fi
    # Stop in reverse order of start.
    for name in slurmd slurmctld munged; do
        if pid="$(pid_of "$name")"; then
            say "stopping $name (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            for (( i = 0; i < 40; i++ )); do
                [[ -d "/proc/$pid" ]] || break
                sleep 0.25
            done
            if [[ -d "/proc/$pid" ]]; then
                say "$name (pid $pid) ignored SIGTERM for 10s, sending SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
            fi
            stopped=$(( stopped + 1 ))
        fi
        rm -f "$RUN_DIR/$name.pid"
    done
    # Safety net: a slurmstepd of OUR slurmd (it inherits SLURM_CONF=$CONF) that outlived it.
    for pid in $(pgrep -x slurmstepd 2>/dev/null || true); do
        if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qxF "SLURM_CONF=$CONF"; then
            say "stopping leftover slurmstepd (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    unlink_etc_conf
    if (( stopped == 0 )); then say "nothing was running"; else say "stopped $stopped daemon(s)"; fi
}

# Build slurm-drmaa (github natefoo/slurm-drmaa; Debian has no package) against Debian's SLURM, as the
# README beside the source says; a site installs it the same way or has it as a module.
cmd_drmaa() {
    local build packages=() tool
    if [[ -f "$DRMAA_LIB" ]]; then
        printf '%s\n' "$DRMAA_LIB"
        return 0
    fi
    [[ -f "$DRMAA_SOURCE" ]] || die "slurm-drmaa source not found at $DRMAA_SOURCE (set SNAKESCOPE_SLURM_DRMAA_SOURCE)"
    for tool in autoconf automake libtoolize bison gperf ragel make gcc pkg-config; do
        command -v "$tool" >/dev/null 2>&1 || packages+=("$tool")
    done
    [[ -f /usr/include/slurm/slurm.h ]] || packages+=(libslurm-dev)
    if [[ ${#packages[@]} -gt 0 ]]; then
        [[ "$(id -u)" -eq 0 ]] || die "need root to apt-get install the slurm-drmaa build tools"
        say "installing the slurm-drmaa build tools with apt-get..."
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends autoconf automake libtool bison gperf ragel \
            libslurm-dev build-essential pkg-config >/dev/null
    fi
    build="$(mktemp -d "$STATE_DIR/drmaa-build.XXXXXX")"
    say "building slurm-drmaa in $build (about two minutes)..."
    tar xzf "$DRMAA_SOURCE" -C "$build"
    (
        cd "$build/slurm-drmaa"
        ./autogen.sh >"$build/autogen.log" 2>&1
        ./configure --prefix="$DRMAA_PREFIX" --with-slurm-inc=/usr/include \
            --with-slurm-lib="/usr/lib/$(gcc -dumpmachine)" >"$build/configure.log" 2>&1
        make -j"$(nproc)" >"$build/make.log" 2>&1
        make install >"$build/install.log" 2>&1
    ) || { tail -n 30 "$build"/*.log >&2; die "slurm-drmaa build failed (logs in $build)"; }
    rm -rf "$build"
    [[ -f "$DRMAA_LIB" ]] || die "slurm-drmaa built, but $DRMAA_LIB is missing"
    say "built $DRMAA_LIB"
    printf '%s\n' "$DRMAA_LIB"
}

cmd_status() {
    local name pid
    for name in munged slurmctld slurmd; do
        if pid="$(pid_of "$name")"; then say "$name running (pid $pid)"; else say "$name not running"; fi
    done
    [[ -f "$CONF" ]] || { say "no config at $CONF (never started?)"; return 3; }
    pid_of slurmctld >/dev/null || { say "cluster is stopped"; return 3; }
    export SLURM_CONF="$CONF"
    echo "SLURM_CONF=$CONF"
    sinfo -o '%P %a %l %D %t %N %G' || return 1
    squeue --states=all -o '%i %P %j %T %M %l %R' || return 1
}

# Serialise concurrent start/stop calls (e.g. parallel test workers) on one state directory.
# The daemons are started with fd 9 closed (9>&-) so that they do not inherit, and hold, the lock.
with_lock() {
    mkdir -p "$STATE_DIR"
    exec 9>"$STATE_DIR/.lock"
    if command -v flock >/dev/null 2>&1; then flock 9; fi
    "$@"
}

case "${1:-}" in
    start) with_lock cmd_start ;;
    stop) with_lock cmd_stop ;;
    status) cmd_status ;;
    env)
        echo "export SLURM_CONF=$CONF"
        if [[ -f "$DRMAA_LIB" ]]; then echo "export DRMAA_LIBRARY_PATH=$DRMAA_LIB"; fi
        ;;
    drmaa) with_lock cmd_drmaa ;;
    *) echo "usage: $0 start|stop|status|env|drmaa" >&2; exit 2 ;;
esac
