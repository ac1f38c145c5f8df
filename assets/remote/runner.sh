#!/bin/sh
# trainctl job runner. Started detached (setsid, output to files, stdin from /dev/null) so
# the job outlives trainctl, the SSH connection and the laptop. Records, in JOB_DIR:
#   pid         the runner's pid, which is also the job's process group id
#   started_at  unix seconds when the command started
#   status      running | exited
#   stdout.log  the command's stdout and stderr
#   exit_code   the command's exit status (128+N when killed by signal N)
#   ended_at    unix seconds when it ended
# usage: sh runner.sh JOB_DIR WORK_DIR   (the command is JOB_DIR/cmd.sh)
set -u
job_dir=$1
work_dir=$2
cd "$job_dir" || exit 111
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
if cd "$work_dir"; then
    sh "$job_dir/cmd.sh" >> "$job_dir/stdout.log" 2>&1 < /dev/null &
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
