#!/bin/sh
# trainctl job runner. Started detached (setsid, output to files, stdin from /dev/null) so
# the job outlives trainctl, the SSH connection and the laptop. Records, in JOB_DIR:
#   pid         the runner's pid, which is also the job's process group id
#   started_at  unix seconds when the command started
#   status      running | exited
#   stdout.log  the command's stdout and stderr
#   exit_code   the command's exit status (128+N when killed by signal N)
#   ended_at    unix seconds when it ended
#   interrupting  written when an interruption notice stopped the job (deadline, reason)
#   interrupted   unix seconds when the interrupted job had stopped
#   seen          unix seconds of trainctl's last poll (written by the poll)
#   phase         `setup` while the project's setup runs (setup.sh, once per machine
#                 for the hash in setup.sh's first line: ROOT/setup/HASH.done once
#                 it succeeded)
#   setup_failed  the setup's exit status when it failed (the command did not run)
#   gpu.csv       GPU samples while the job runs (see --gpu below)
#   rescued       the checkpoint this machine put in the store itself on a notice
#                 (rescue.err: why it could not)
# usage: sh runner.sh JOB_DIR WORK_DIR   (the command is JOB_DIR/cmd.sh)
#        TRAINCTL_GRACE=seconds to save on a notice (default 30)
#
# A notice watcher runs beside the job in its own session (so stopping the job's group
# never stops it): every second it looks for JOB_DIR/notice (one job: `trainctl migrate`)
# or ROOT/notice (the whole machine: an admin draining it). When ROOT/imds names an EC2
# instance metadata endpoint (the aws provider writes it), it also asks IMDSv2 every 2 s
# for a spot interruption (`spot/instance-action`, whose `time` becomes the deadline) and
# a rebalance recommendation (recorded in ROOT/rebalance), and writes ROOT/notice itself. A notice file may say `deadline=UNIX_SECONDS` and `reason=TEXT`. On a
# notice the machine itself, without trainctl: records `interrupting`, sends SIGTERM to
# the job's group, gives it the grace (ending 5 s before the deadline) to save, SIGKILL,
# records the exit if the runner could not, and records `interrupted`.
set -u

# True while process $1 is alive (a zombie nobody reaps counts as dead).
alive() {
    kill -0 "$1" 2>/dev/null || return 1
    if [ -r "/proc/$1/stat" ]; then
        read -r line < "/proc/$1/stat" 2>/dev/null || return 1
        set -- ${line##*) }
        [ "$1" != Z ] || return 1
    fi
    return 0
}

# http METHOD URL HEADER: the body on stdout; fails on any status but 2xx (curl, else
# python3, whichever the image has).
http() {
    if command -v curl >/dev/null 2>&1; then
        curl -sf -m 2 -X "$1" -H "$3" "$2"
    else
        python3 - "$1" "$2" "$3" <<'PY'
import sys, urllib.request
m, url, h = sys.argv[1:4]
k, v = h.split(": ", 1)
try:
    r = urllib.request.urlopen(urllib.request.Request(url, method=m, headers={k: v}), timeout=2)
    sys.stdout.write(r.read().decode())
except Exception:
    sys.exit(1)
PY
    fi
}

imds_token=
imds_token_at=0
imds_next=0
# Ask IMDSv2 (endpoint in ROOT/imds) for a spot interruption; write ROOT/notice on one.
imds_poll() {
    [ -s "$root/imds" ] || return 0
    now=$(date +%s)
    [ "$now" -ge "$imds_next" ] || return 0
    imds_next=$((now + 2))
    ep=$(head -n 1 "$root/imds")
    if [ -z "$imds_token" ] || [ $((now - imds_token_at)) -gt 3000 ]; then
        imds_token=$(http PUT "$ep/latest/api/token" "X-aws-ec2-metadata-token-ttl-seconds: 3600") || {
            imds_token=
            return 0
        }
        imds_token_at=$now
    fi
    if body=$(http GET "$ep/latest/meta-data/events/recommendations/rebalance" "X-aws-ec2-metadata-token: $imds_token"); then
        [ -f "$root/rebalance" ] || printf '%s\n' "$body" > "$root/rebalance"
    fi
    body=$(http GET "$ep/latest/meta-data/spot/instance-action" "X-aws-ec2-metadata-token: $imds_token") || return 0
    action=$(printf '%s' "$body" | sed -n 's/.*"action" *: *"\([a-z]*\)".*/\1/p')
    at=$(printf '%s' "$body" | sed -n 's/.*"time" *: *"\([^"]*\)".*/\1/p')
    deadline=$(date -d "$at" +%s 2>/dev/null) || deadline=$((now + 120))
    printf 'deadline=%s\nreason=EC2 spot interruption: %s at %s\n' "$deadline" "${action:-terminate}" "$at" \
        > "$root/notice.part" && mv "$root/notice.part" "$root/notice"
}

# On a notice with no trainctl watching (JOB_DIR/seen, written by every poll, older than
# 15 s), put the newest complete checkpoint where the job's checkpoint store is, before
# the deadline, then the log's last 64 MiB (the part no trainctl read may be anywhere in
# it): rescue.env (written by trainctl for S3) names where; the upload uses the
# machine's own credentials (its instance role) through the aws CLI, else python3 boto3.
# upload SRC KEY_SUFFIX META(k=v) ERRFILE
upload() {
    if command -v aws >/dev/null 2>&1; then
        timeout "$left" aws s3 cp --only-show-errors --metadata "$3" \
            "$1" "$TRAINCTL_RESCUE_URL$2" 2> "$4"
    elif python3 -c 'import boto3' 2>/dev/null; then
        timeout "$left" python3 - "$1" "$TRAINCTL_RESCUE_BUCKET" \
            "$TRAINCTL_RESCUE_PREFIX$2" "$3" 2> "$4" <<'PY'
import sys, boto3
src, bucket, key, meta = sys.argv[1:5]
k, v = meta.split("=", 1)
boto3.client("s3").upload_file(src, bucket, key, ExtraArgs={"Metadata": {k: v}})
PY
    else
        echo "neither the aws CLI nor python3 with boto3 is on the machine" > "$4"
        return 1
    fi
}

rescue() {
    [ -f rescue.env ] || return 0
    seen_at=$(cat seen 2>/dev/null || echo 0)
    [ $(($(date +%s) - seen_at)) -gt 15 ] || return 0
    . ./rescue.env
    left=$((deadline - $(date +%s) - 2))
    [ "$left" -gt 5 ] || left=5
    newest=
    if [ -n "${TRAINCTL_RESCUE_DIR:-}" ]; then
        for f in $(ls -t "$TRAINCTL_RESCUE_DIR" 2>/dev/null); do
            case "$f" in *.part | *.tmp | .*) continue ;; esac
            [ -f "$TRAINCTL_RESCUE_DIR/$f" ] || continue
            newest=$f
            break
        done
        [ -n "$newest" ] || echo "no checkpoint to rescue in $TRAINCTL_RESCUE_DIR" > rescue.err
    fi
    if [ -n "$newest" ]; then
        src="$TRAINCTL_RESCUE_DIR/$newest"
        mtime=$(date -r "$src" +%s 2>/dev/null || echo 0)
        upload "$src" "$newest" "mtime=$mtime" rescue.err && {
            printf 'name=%s\nat=%s\n' "$newest" "$(date +%s)" > rescued
            rm -f rescue.err
        }
    fi
    if [ -n "${TRAINCTL_RESCUE_LOG:-}" ] && [ -f stdout.log ]; then
        left=$((deadline - $(date +%s) - 1))
        [ "$left" -gt 3 ] || left=3
        size=$(wc -c < stdout.log)
        from=0
        [ "$size" -gt 67108864 ] && from=$((size - 67108864))
        tail -c +$((from + 1)) stdout.log | head -c $((size - from)) > log.rescue
        upload log.rescue "$TRAINCTL_RESCUE_LOG" "offset=$from" rescue-log.err && {
            echo "$from $size" > log_rescued
            rm -f rescue-log.err log.rescue
        }
    fi
    return 0
}

# The GPU sampler (when cmd.sh's `# gpu_every=N` line says seconds and the machine has nvidia-smi):
# one line per GPU every interval, `unix_seconds, index, utilization %, memory used MiB`,
# appended to JOB_DIR/gpu.csv while the job runs; trainctl follows it like the log.
if [ "${1:-}" = --gpu ]; then
    job_dir=$2
    runner=$3
    every=$4
    trap '' TERM INT HUP
    cd "$job_dir" || exit 111
    while alive "$runner" && [ "$(cat status 2>/dev/null)" != exited ]; do
        t=$(date +%s)
        nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader,nounits 2>/dev/null |
            while IFS= read -r l; do printf '%s, %s\n' "$t" "$l"; done >> gpu.csv
        sleep "$every"
    done
    exit 0
fi

if [ "${1:-}" = --watch ]; then
    job_dir=$2
    runner=$3
    grace=$4
    root=${job_dir%/jobs/*}
    trap '' TERM INT HUP
    cd "$job_dir" || exit 111
    while alive "$runner" && [ "$(cat status 2>/dev/null)" != exited ]; do
        imds_poll
        for n in "$job_dir/notice" "$root/notice"; do
            [ -f "$n" ] || continue
            now=$(date +%s)
            deadline=$(sed -n 's/^deadline=\([0-9][0-9]*\).*/\1/p' "$n" 2>/dev/null | head -n 1)
            [ -n "$deadline" ] || deadline=$((now + grace + 5))
            stop_by=$((deadline - 5))
            [ $((now + grace)) -lt "$stop_by" ] && stop_by=$((now + grace))
            [ "$stop_by" -gt "$now" ] || stop_by=$((now + 1))
            reason=$(sed -n 's/^reason=//p' "$n" 2>/dev/null | head -n 1)
            printf 'deadline=%s\nnoticed_at=%s\nsource=%s\nreason=%s\n' \
                "$deadline" "$now" "$n" "$reason" > interrupting.part && mv interrupting.part interrupting
            kill -TERM -"$runner" 2>/dev/null
            while alive "$runner" && [ "$(date +%s)" -lt "$stop_by" ]; do sleep 0.2; done
            if alive "$runner"; then
                kill -KILL -"$runner" 2>/dev/null
                sleep 0.2
            fi
            if [ ! -f exit_code ]; then
                echo 137 > exit_code.part && mv exit_code.part exit_code
                date +%s > ended_at
                echo exited > status
            fi
            date +%s > interrupted
            rescue
            exit 0
        done
        sleep 1
    done
    exit 0
fi

job_dir=$1
work_dir=$2
cd "$job_dir" || exit 111
# With a setup, the phase is known before the pid: whoever sees the job started sees it
# setting up (until the setup says it is skipped or done).
[ -f setup.sh ] && echo setup > phase
echo "$$" > pid.part && mv pid.part pid
date +%s > started_at
echo running > status
child=
stopping=
forward() {
    # The group signal reached everyone; make sure the direct child has it too.
    stopping=1
    [ -n "$child" ] && kill -TERM "$child" 2>/dev/null
}
trap forward TERM INT HUP
# True while a process of our group other than this runner is alive (zombies do not count:
# nothing may be left to reap them).
group_busy() {
    if [ -d /proc/self ]; then
        for st in /proc/[0-9]*/stat; do
            read -r line < "$st" 2>/dev/null || continue
            set -- ${line##*) }
            [ "$3" = "$$" ] || continue
            [ "$1" = Z ] && continue
            case "$st" in "/proc/$$/stat") continue ;; esac
            return 0
        done
        return 1
    fi
    return 1
}
# Run script $1 as the child (output to the log), wait for it; its status in $code.
run_step() {
    sh "$1" >> "$job_dir/stdout.log" 2>&1 < /dev/null &
    child=$!
    while :; do
        wait "$child"
        code=$?
        # A trapped signal interrupts wait with a status > 128 while the child still runs.
        if kill -0 "$child" 2>/dev/null; then
            continue
        fi
        break
    done
    child=
}
log() {
    printf '%s\n' "$1" >> "$job_dir/stdout.log"
}
# The project's setup, once per machine for its hash (`phase` says `setup` from before the
# pid is written until it ends): skipped when ROOT/setup/HASH.done
# exists; one job at a time runs a given hash (ROOT/setup/HASH.lock, its holder's pid
# inside: a dead holder's lock is taken over). The parser skips the lines between the
# `setup` marker and the `setup ended` one.
setup() {
    hash=$(sed -n 's/^# setup_hash=\([0-9a-f][0-9a-f]*\)$/\1/p' "$job_dir/setup.sh" | head -n 1)
    sdir=$root/setup
    mkdir -p "$sdir"
    lock=$sdir/$hash.lock
    waited=0
    mine=
    while [ ! -f "$sdir/$hash.done" ]; do
        if mkdir "$lock" 2>/dev/null; then
            echo "$$" > "$lock/pid"
            mine=1
            break
        fi
        holder=$(cat "$lock/pid" 2>/dev/null)
        if [ -n "$holder" ] && ! alive "$holder"; then
            rm -rf "$lock"
            continue
        fi
        # A lock without a pid for 10 s: its maker died between the two steps.
        if [ -z "$holder" ] && [ "$waited" -ge 10 ]; then
            rm -rf "$lock"
            continue
        fi
        [ "$waited" = 0 ] && log "── trainctl: setup $hash waits for another job on this machine running it ──"
        if [ -n "$stopping" ]; then
            code=143
            rm -f "$job_dir/phase"
            return
        fi
        sleep 1
        waited=$((waited + 1))
    done
    if [ -f "$sdir/$hash.done" ]; then
        [ -n "$mine" ] && rm -rf "$lock"
        log "── trainctl: setup skipped: this machine ran setup $hash already ──"
        rm -f "$job_dir/phase"
        return
    fi
    log "── trainctl: setup $hash ──"
    t0=$(date +%s)
    run_step "$job_dir/setup.sh"
    took=$(($(date +%s) - t0))
    if [ "$code" = 0 ]; then
        date +%s > "$sdir/$hash.done"
        log "── trainctl: setup ended: done in $took s ──"
    elif [ -n "$stopping" ]; then
        log "── trainctl: setup ended: stopped after $took s ──"
    else
        echo "$code" > "$job_dir/setup_failed"
        log "── trainctl: setup ended: failed with status $code after $took s ──"
    fi
    rm -rf "$lock"
    rm -f "$job_dir/phase"
}
root=${job_dir%/jobs/*}
if cd "$work_dir"; then
    if command -v setsid >/dev/null 2>&1; then
        setsid sh "$0" --watch "$job_dir" "$$" "${TRAINCTL_GRACE:-30}" < /dev/null > /dev/null 2>&1 &
    else
        sh "$0" --watch "$job_dir" "$$" "${TRAINCTL_GRACE:-30}" < /dev/null > /dev/null 2>&1 &
    fi
    watcher=$!
    every=$(sed -n 's/^# gpu_every=\([0-9][0-9]*\)$/\1/p' "$job_dir/cmd.sh" | head -n 1)
    sampler=
    if [ -n "$every" ] && [ "$every" != 0 ] && command -v nvidia-smi >/dev/null 2>&1; then
        if command -v setsid >/dev/null 2>&1; then
            setsid sh "$0" --gpu "$job_dir" "$$" "$every" < /dev/null > /dev/null 2>&1 &
        else
            sh "$0" --gpu "$job_dir" "$$" "$every" < /dev/null > /dev/null 2>&1 &
        fi
        sampler=$!
    fi
    code=0
    [ -f "$job_dir/setup.sh" ] && setup
    if [ "$code" = 0 ] && [ -z "$stopping" ]; then
        run_step "$job_dir/cmd.sh"
    fi
    # Stopped: the command's children got the signal too; let them finish writing (the
    # log's last lines, a checkpoint) before the exit is recorded. SIGKILL ends this wait.
    if [ -n "$stopping" ]; then
        while group_busy; do sleep 0.1; done
    fi
else
    echo "trainctl: workdir $work_dir does not exist" >> "$job_dir/stdout.log"
    code=127
fi
cd "$job_dir" || exit 111
echo "$code" > exit_code.part && mv exit_code.part exit_code
date +%s > ended_at
echo exited > status
[ -f interrupting ] && date +%s > interrupted
# The watcher ignores SIGTERM (it must outlive the job's stop): end it and its `sleep`
# (its own process group under setsid), so nothing is left behind; unless it is handling
# a notice, which it finishes (the rescue upload) and then exits by itself.
if [ -n "${sampler:-}" ]; then
    kill -KILL -"$sampler" 2>/dev/null || kill -KILL "$sampler" 2>/dev/null
fi
if [ -n "${watcher:-}" ] && [ ! -f interrupting ]; then
    kill -KILL -"$watcher" 2>/dev/null || kill -KILL "$watcher" 2>/dev/null
fi
exit 0
