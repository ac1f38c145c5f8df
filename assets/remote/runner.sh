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
forward() {
    # Stop the whole process group: the command and everything it started.
    [ -n "$child" ] && kill -TERM "$child" 2>/dev/null
}
trap forward TERM INT HUP
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
else
    echo "trainctl: workdir $work_dir does not exist" >> "$job_dir/stdout.log"
    code=127
fi
cd "$job_dir" || exit 111
echo "$code" > exit_code.part && mv exit_code.part exit_code
date +%s > ended_at
echo exited > status
